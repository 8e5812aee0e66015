//! The rules for a node certificate request (`spec.request` is network input): one bounded
//! PEM `CERTIFICATE REQUEST` whose signature verifies with its own key, a subject of exactly
//! `O=system:nodes, CN=system:node:<name>`, SANs and usages as the signer allows, no attribute
//! but the extension request and no extension but SAN, key usage and extended key usage.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use super::{NODES_GROUP, NODE_CN_PREFIX, SIGNER_KUBELET_CLIENT, SIGNER_KUBELET_SERVING};

/// Largest `spec.request` accepted (decoded PEM). A P-256 request with a few SANs is ~600 B,
/// an RSA-4096 one ~2 KiB.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Most subject alternative names a serving request may carry.
pub const MAX_SANS: usize = 32;

/// A node certificate request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRequest {
    /// Which signer it is for.
    pub signer: &'static str,
    /// `<name>` of `CN=system:node:<name>`.
    pub node_name: String,
    /// DNS subject alternative names (serving only).
    pub dns_names: Vec<String>,
    /// IP subject alternative names (serving only).
    pub ip_addresses: Vec<IpAddr>,
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && crate::names::is_subdomain(s)
}

/// Check a request (`pem`: the decoded `spec.request`) against the rules of `signer_name`.
/// The error says exactly which rule failed.
pub fn validate_node_request(
    signer_name: &str,
    pem: &[u8],
    usages: &[String],
) -> Result<NodeRequest, String> {
    let signer = match signer_name {
        SIGNER_KUBELET_CLIENT => SIGNER_KUBELET_CLIENT,
        SIGNER_KUBELET_SERVING => SIGNER_KUBELET_SERVING,
        other => {
            return Err(format!(
                "signerName {other:?} is not one a node may use: use {SIGNER_KUBELET_CLIENT} or {SIGNER_KUBELET_SERVING}"
            ))
        }
    };
    let der = request_der(pem)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("spec.request is not a valid PKCS#10 certificate request: {e}"))?;
    if !rest.is_empty() {
        return Err("spec.request has bytes after the certificate request".into());
    }
    csr.verify_signature().map_err(|e| {
        format!("the certificate request's signature does not verify with its own public key: {e}")
    })?;
    let node_name = node_subject(&csr)?;
    let (dns_names, ip_addresses) = requested_sans(&csr)?;
    let (required, allowed) = if signer == SIGNER_KUBELET_CLIENT {
        if !dns_names.is_empty() || !ip_addresses.is_empty() {
            return Err(format!(
                "a {SIGNER_KUBELET_CLIENT} request may not have subject alternative names"
            ));
        }
        (
            "client auth",
            ["digital signature", "key encipherment", "client auth"],
        )
    } else {
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(format!(
                "a {SIGNER_KUBELET_SERVING} request needs at least one DNS name or IP address"
            ));
        }
        (
            "server auth",
            ["digital signature", "key encipherment", "server auth"],
        )
    };
    if !usages.iter().any(|u| u == required) {
        return Err(format!("spec.usages must include {required:?}"));
    }
    if let Some(bad) = usages.iter().find(|u| !allowed.contains(&u.as_str())) {
        return Err(format!(
            "spec.usages may only contain {allowed:?} for {signer}; {bad:?} is not allowed"
        ));
    }
    Ok(NodeRequest {
        signer,
        node_name,
        dns_names,
        ip_addresses,
    })
}

/// Exactly one PEM `CERTIFICATE REQUEST` block, and nothing but whitespace around it.
pub(super) fn request_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    if pem.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "spec.request is {} bytes; the limit is {MAX_REQUEST_BYTES}",
            pem.len()
        ));
    }
    let (rest, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| {
        "spec.request must be one PEM block of type CERTIFICATE REQUEST".to_string()
    })?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err(format!(
            "spec.request is a PEM {:?} block; want CERTIFICATE REQUEST",
            block.label
        ));
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err("spec.request must hold exactly one PEM block".into());
    }
    Ok(block.contents)
}

/// The node name of a subject that is exactly `O=system:nodes, CN=system:node:<name>`.
fn node_subject(csr: &X509CertificationRequest<'_>) -> Result<String, String> {
    let subject = &csr.certification_request_info.subject;
    let mut cn = Vec::new();
    let mut org = Vec::new();
    for attr in subject.iter_attributes() {
        let value = attr
            .as_str()
            .map_err(|_| "the request's subject has a value that is not a string".to_string())?;
        if *attr.attr_type() == x509_parser::oid_registry::OID_X509_COMMON_NAME {
            cn.push(value);
        } else if *attr.attr_type() == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
            org.push(value);
        } else {
            return Err(format!(
                "the request's subject may only have CN and O; it has {}",
                attr.attr_type()
            ));
        }
    }
    if org != [NODES_GROUP] {
        return Err(format!(
            "the request's subject must have exactly O={NODES_GROUP} (has {org:?})"
        ));
    }
    let name = match cn.as_slice() {
        [one] => one.strip_prefix(NODE_CN_PREFIX).unwrap_or(""),
        _ => "",
    };
    if name.is_empty() || !is_dns_subdomain(name) {
        return Err(format!(
            "the request's subject must have exactly CN={NODE_CN_PREFIX}<node name>, with a valid node name (has {cn:?})"
        ));
    }
    Ok(name.to_string())
}

type Sans = (Vec<String>, Vec<IpAddr>);

/// The requested DNS and IP SANs; any other attribute, extension or name type is refused.
fn requested_sans(csr: &X509CertificationRequest<'_>) -> Result<Sans, String> {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let mut extension_requests = 0;
    for attr in csr.certification_request_info.iter_attributes() {
        match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(_) => extension_requests += 1,
            _ => {
                return Err(
                    "the request may carry no attribute other than an extension request".into(),
                )
            }
        }
    }
    if extension_requests > 1 {
        return Err("the request has more than one extension request".into());
    }
    let Some(extensions) = csr.requested_extensions() else {
        return Ok((dns, ips));
    };
    for ext in extensions {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => {
                            if !is_dns_subdomain(d) {
                                return Err(format!(
                                    "DNS name {d:?} is not a valid lowercase DNS name (no wildcards)"
                                ));
                            }
                            dns.push(d.to_string());
                        }
                        GeneralName::IPAddress(raw) => ips.push(match raw.len() {
                            4 => IpAddr::from(<[u8; 4]>::try_from(*raw).map_err(|_| "bad IPv4")?),
                            16 => IpAddr::from(<[u8; 16]>::try_from(*raw).map_err(|_| "bad IPv6")?),
                            n => return Err(format!("an IP address SAN of {n} bytes is invalid")),
                        }),
                        _ => {
                            return Err(
                                "subject alternative names may only be DNS names and IP addresses"
                                    .into(),
                            )
                        }
                    }
                }
            }
            // Requested usages are ignored (ours come from spec.usages), but must parse.
            ParsedExtension::KeyUsage(_) | ParsedExtension::ExtendedKeyUsage(_) => {}
            _ => {
                return Err(
                    "the request may only ask for subject alternative names, key usage and extended key usage extensions"
                        .into(),
                )
            }
        }
        if dns.len() + ips.len() > MAX_SANS {
            return Err(format!(
                "the request has more than {MAX_SANS} subject alternative names"
            ));
        }
    }
    Ok((dns, ips))
}

/// The decoded `spec.request` of a stored or submitted CSR.
pub(super) fn request_bytes(csr: &Value) -> Result<Vec<u8>, String> {
    let b64 = csr
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .ok_or("spec.request is required")?;
    // Bound before decoding: base64 is 4/3 of the bytes.
    if b64.len() > MAX_REQUEST_BYTES * 4 / 3 + 4 {
        return Err(format!(
            "spec.request is larger than the limit of {MAX_REQUEST_BYTES} bytes"
        ));
    }
    B64.decode(b64)
        .map_err(|_| "spec.request is not valid base64".to_string())
}

pub(super) fn usages(csr: &Value) -> Vec<String> {
    csr.pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every CSR, whoever creates it: `spec.request` is one bounded PEM certificate request that
/// parses and whose signature verifies (Kubernetes' `ParseCSR` plus `CheckSignature`).
pub fn check_well_formed(csr: &Value) -> Result<(), String> {
    let der = request_der(&request_bytes(csr)?)?;
    let (rest, parsed) = X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("not a valid PKCS#10 certificate request: {e}"))?;
    if !rest.is_empty() {
        return Err("bytes after the certificate request".into());
    }
    parsed
        .verify_signature()
        .map_err(|e| format!("the request's signature does not verify: {e}"))
}

pub(super) fn validate_stored(csr: &Value) -> Result<NodeRequest, String> {
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or("");
    validate_node_request(signer, &request_bytes(csr)?, &usages(csr))
}

#[cfg(test)]
pub(super) mod test_requests {
    //! Requests made with rcgen, for the tests of this module and of the signer.
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    pub(crate) fn csr_pem(dn: &[(DnType, &str)], sans: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    pub(crate) fn node_dn(name: &str) -> Vec<(DnType, String)> {
        vec![
            (DnType::OrganizationName, "system:nodes".to_string()),
            (DnType::CommonName, format!("system:node:{name}")),
        ]
    }

    pub(crate) fn pem_for(name: &str, sans: &[&str]) -> String {
        let dn = node_dn(name);
        let dn: Vec<(DnType, &str)> = dn.iter().map(|(t, v)| (t.clone(), v.as_str())).collect();
        csr_pem(&dn, sans)
    }

    pub(crate) fn usage_list(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_requests::*;
    use super::*;
    use rcgen::DnType;
    use serde_json::json;

    #[test]
    fn accepts_the_two_node_request_shapes() {
        let client = pem_for("n1", &[]);
        let ok = validate_node_request(
            SIGNER_KUBELET_CLIENT,
            client.as_bytes(),
            &usage_list(&["digital signature", "client auth"]),
        )
        .expect("client request");
        assert_eq!(ok.node_name, "n1");
        let serving = pem_for("n1", &["n1", "198.18.0.5", "::1"]);
        let ok = validate_node_request(
            SIGNER_KUBELET_SERVING,
            serving.as_bytes(),
            &usage_list(&["digital signature", "server auth"]),
        )
        .expect("serving request");
        assert_eq!(ok.dns_names, vec!["n1"]);
        assert_eq!(
            ok.ip_addresses,
            vec![
                "198.18.0.5".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn refuses_wrong_subjects_sans_usages_and_signers() {
        let client_usages = usage_list(&["digital signature", "client auth"]);
        let check = |pem: &str, signer: &str, u: &[String], want: &str| {
            let err = validate_node_request(signer, pem.as_bytes(), u).unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        };
        check(
            &csr_pem(
                &[
                    (DnType::OrganizationName, "system:nodes"),
                    (DnType::CommonName, "admin"),
                ],
                &[],
            ),
            SIGNER_KUBELET_CLIENT,
            &client_usages,
            "CN=system:node:<node name>",
        );
        check(
            &csr_pem(
                &[
                    (DnType::OrganizationName, "system:masters"),
                    (DnType::CommonName, "system:node:n1"),
                ],
                &[],
            ),
            SIGNER_KUBELET_CLIENT,
            &client_usages,
            "O=system:nodes",
        );
        check(
            &csr_pem(
                &[
                    (DnType::OrganizationName, "system:nodes"),
                    (DnType::OrganizationName, "system:masters"),
                    (DnType::CommonName, "system:node:n1"),
                ],
                &[],
            ),
            SIGNER_KUBELET_CLIENT,
            &client_usages,
            "O=system:nodes",
        );
        check(
            &csr_pem(
                &[
                    (DnType::OrganizationName, "system:nodes"),
                    (DnType::CommonName, "system:node:n1"),
                    (DnType::OrganizationalUnitName, "x"),
                ],
                &[],
            ),
            SIGNER_KUBELET_CLIENT,
            &client_usages,
            "only have CN and O",
        );
        check(
            &csr_pem(
                &[
                    (DnType::OrganizationName, "system:nodes"),
                    (DnType::CommonName, "system:node:Bad_Name"),
                ],
                &[],
            ),
            SIGNER_KUBELET_CLIENT,
            &client_usages,
            "valid node name",
        );
        // Extra SANs on a client certificate.
        check(
            &pem_for("n1", &["n1"]),
            SIGNER_KUBELET_CLIENT,
            &client_usages,
            "may not have subject alternative names",
        );
        // A serving request without names, or with a wildcard.
        check(
            &pem_for("n1", &[]),
            SIGNER_KUBELET_SERVING,
            &usage_list(&["server auth"]),
            "at least one DNS name or IP",
        );
        check(
            &pem_for("n1", &["*.example.com"]),
            SIGNER_KUBELET_SERVING,
            &usage_list(&["server auth"]),
            "not a valid lowercase DNS name",
        );
        // Usages.
        check(
            &pem_for("n1", &[]),
            SIGNER_KUBELET_CLIENT,
            &usage_list(&["digital signature"]),
            "must include \"client auth\"",
        );
        check(
            &pem_for("n1", &[]),
            SIGNER_KUBELET_CLIENT,
            &usage_list(&["client auth", "server auth"]),
            "\"server auth\" is not allowed",
        );
        check(
            &pem_for("n1", &[]),
            "kubernetes.io/kube-apiserver-client",
            &client_usages,
            "is not one a node may use",
        );
    }

    #[test]
    fn refuses_bad_signatures_and_malformed_or_oversize_input() {
        let u = usage_list(&["client auth"]);
        let pem = pem_for("n1", &[]);
        // Flip one bit of the signature (the last bytes of the DER).
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = block.contents.clone();
        let last = der.len() - 2;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            B64.encode(&der)
        );
        let err =
            validate_node_request(SIGNER_KUBELET_CLIENT, tampered.as_bytes(), &u).unwrap_err();
        assert!(err.contains("signature does not verify"), "{err}");

        // Change the subject after signing: the signature no longer covers it.
        let swapped = pem.replace("A", "B");
        assert!(validate_node_request(SIGNER_KUBELET_CLIENT, swapped.as_bytes(), &u).is_err());

        let err = validate_node_request(SIGNER_KUBELET_CLIENT, b"garbage", &u).unwrap_err();
        assert!(err.contains("one PEM block"), "{err}");
        let cert_block = pem.replace("CERTIFICATE REQUEST", "CERTIFICATE");
        let err =
            validate_node_request(SIGNER_KUBELET_CLIENT, cert_block.as_bytes(), &u).unwrap_err();
        assert!(err.contains("want CERTIFICATE REQUEST"), "{err}");
        let two = format!("{pem}{pem}");
        let err = validate_node_request(SIGNER_KUBELET_CLIENT, two.as_bytes(), &u).unwrap_err();
        assert!(err.contains("exactly one PEM block"), "{err}");
        let huge = vec![b'A'; MAX_REQUEST_BYTES + 1];
        let err = validate_node_request(SIGNER_KUBELET_CLIENT, &huge, &u).unwrap_err();
        assert!(err.contains("the limit is"), "{err}");
        let csr = json!({"spec": {"request": "A".repeat(MAX_REQUEST_BYTES * 2)}});
        assert!(request_bytes(&csr)
            .unwrap_err()
            .contains("larger than the limit"));
    }
}
