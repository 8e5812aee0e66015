//! The cluster CA (`--cluster-signing-cert-file`, `--cluster-signing-key-file`) as the signer of
//! validated node requests: the issued certificate's subject, SANs and extensions are built
//! here from the checked request, never copied from it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::request::{request_der, NodeRequest};
use super::{NODES_GROUP, NODE_CN_PREFIX, SIGNER_KUBELET_CLIENT};

/// Default validity of an issued certificate.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Shortest validity a request may ask for (Kubernetes' minimum `expirationSeconds`).
pub const MIN_VALIDITY: Duration = Duration::from_secs(600);
/// How far back `notBefore` is set, for clocks that are a little behind (as Kubernetes does).
const BACKDATE: Duration = Duration::from_secs(300);

/// The cluster CA as a signer.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Signer {
    /// Load `--cluster-signing-cert-file` and `--cluster-signing-key-file`; errors name the
    /// file and the fix.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let ca_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("read --cluster-signing-cert-file {}", cert.display()))?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("read --cluster-signing-key-file {}", key.display()))?;
        let key_pair = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("parse the private key in {} (PKCS#8 PEM)", key.display()))?;
        let (_, block) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", cert.display()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| anyhow::anyhow!("{} is not a valid certificate: {e}", cert.display()))?;
        anyhow::ensure!(
            parsed.tbs_certificate.subject_pki.raw
                == rcgen::PublicKeyData::subject_public_key_info(&key_pair).as_slice(),
            "the key {} does not belong to the certificate {}; pass the CA's own key",
            key.display(),
            cert.display()
        );
        anyhow::ensure!(
            parsed.is_ca(),
            "{} is not a CA certificate (no basicConstraints CA:TRUE)",
            cert.display()
        );
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key_pair)
            .with_context(|| format!("use {} as the signing CA", cert.display()))?;
        Ok(Self { issuer, ca_pem })
    }

    /// Issue the certificate for a validated request; returns the PEM chain (leaf, CA).
    pub fn sign(
        &self,
        request_pem: &[u8],
        checked: &NodeRequest,
        validity: Duration,
    ) -> anyhow::Result<String> {
        let der = request_der(request_pem).map_err(anyhow::Error::msg)?;
        let mut csr = CertificateSigningRequestParams::from_der(&der.as_slice().into())
            .context("parse the certificate request")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, NODES_GROUP);
        dn.push(
            DnType::CommonName,
            format!("{NODE_CN_PREFIX}{}", checked.node_name),
        );
        params.distinguished_name = dn;
        for d in &checked.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into().context("DNS name")?));
        }
        for ip in &checked.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if checked.signer == SIGNER_KUBELET_CLIENT {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        let mut serial: [u8; 16] = rand::random();
        // A positive, non-zero-leading serial.
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .context("sign the certificate")?;
        let mut chain = cert.pem();
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.ca_pem);
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::test_requests::*;
    use super::super::request::validate_node_request;
    use super::super::SIGNER_KUBELET_SERVING;
    use super::*;

    #[test]
    fn signs_with_our_extensions_and_the_chain() {
        let dir = std::env::temp_dir().join(format!("porthole-csr-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "porthole-ca");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("ca.key"), ca_key.serialize_pem()).unwrap();
        let signer = Signer::load(&dir.join("ca.crt"), &dir.join("ca.key")).expect("load");
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.join("other.key"), other.serialize_pem()).unwrap();
        let err = Signer::load(&dir.join("ca.crt"), &dir.join("other.key"))
            .err()
            .expect("mismatched key")
            .to_string();
        assert!(err.contains("does not belong to the certificate"), "{err}");

        let pem = pem_for("n1", &["n1", "127.0.0.1"]);
        let checked = validate_node_request(
            SIGNER_KUBELET_SERVING,
            pem.as_bytes(),
            &usage_list(&["server auth"]),
        )
        .unwrap();
        let chain = signer
            .sign(pem.as_bytes(), &checked, DEFAULT_VALIDITY)
            .unwrap();
        let blocks: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(chain.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(blocks.len(), 2, "leaf then CA");
        assert_eq!(blocks[1].contents, ca_cert.der().to_vec());
        let (_, leaf) = x509_parser::parse_x509_certificate(&blocks[0].contents).unwrap();
        assert_eq!(
            leaf.subject().to_string(),
            "O=system:nodes, CN=system:node:n1"
        );
        assert_eq!(leaf.issuer().to_string(), "CN=porthole-ca");
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let days = (leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp())
            / 86400;
        assert_eq!(days, 365, "one year plus the 5 minute backdate");
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca_cert.der()).unwrap();
        leaf.verify_signature(Some(ca_parsed.public_key()))
            .expect("signed by the CA");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
