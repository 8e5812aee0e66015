//! Fuzz target [`csr_request`](super::csr_request): node certificate signing requests through
//! admission.
//!
//! One file per target so each invariant reads with its own generator; the shared input
//! helpers are in [`super`].

use serde_json::json;

use super::patches::resource_of;
use crate::resources::{self};

/// A node's certificate request. First byte: signer (bit 0: kubelet client or serving; bit 1:
/// some other signer) and usages (bits 2–4); the rest is the request, PEM if it starts with
/// `-----`, else DER that is wrapped into a `CERTIFICATE REQUEST` PEM block (so mutations hit
/// the ASN.1, not the base64). An accepted request names a node whose name is a DNS subdomain
/// of at most 253 bytes; a client request has no SANs, a serving one has 1–32 valid ones;
/// the usages include the signer's required one and nothing it forbids; and the CSR object
/// that carries it is well formed (`check_well_formed`, the check every create runs).
pub fn csr_request(data: &[u8]) {
    use base64::Engine as _;
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let signer = match (first & 3, first & 1) {
        (2 | 3, _) if first & 0x80 != 0 => "example.com/other",
        (_, 0) => crate::csr::SIGNER_KUBELET_CLIENT,
        _ => crate::csr::SIGNER_KUBELET_SERVING,
    };
    let usage_sets: &[&[&str]] = &[
        &["digital signature", "client auth"],
        &["digital signature", "key encipherment", "client auth"],
        &["digital signature", "server auth"],
        &["digital signature", "key encipherment", "server auth"],
        &["client auth", "server auth"],
        &[],
        &["digital signature"],
        &["client auth", "cert sign"],
    ];
    let usages: Vec<String> = usage_sets[usize::from(first >> 2) & 7]
        .iter()
        .map(|u| u.to_string())
        .collect();
    let pem = if rest.starts_with(b"-----") {
        rest.to_vec()
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(rest);
        let mut p = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            p.push_str(&String::from_utf8_lossy(chunk));
            p.push('\n');
        }
        p.push_str("-----END CERTIFICATE REQUEST-----\n");
        p.into_bytes()
    };
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "node-csr-x"},
        "spec": {"signerName": signer, "usages": usages,
                 "request": base64::engine::general_purpose::STANDARD.encode(&pem)}
    });
    let well_formed = crate::csr::check_well_formed(&csr);
    let _ = resources::validate(resource_of(&csr, 0), &csr);
    let Ok(req) = crate::csr::validate_node_request(signer, &pem, &usages) else {
        return;
    };
    assert!(
        well_formed.is_ok(),
        "a node request passed the node checks but not check_well_formed: {well_formed:?}"
    );
    assert_eq!(req.signer, signer);
    assert!(
        !req.node_name.is_empty()
            && req.node_name.len() <= 253
            && crate::names::is_subdomain(&req.node_name),
        "accepted node name {:?}",
        req.node_name
    );
    let sans = req.dns_names.len() + req.ip_addresses.len();
    if signer == crate::csr::SIGNER_KUBELET_CLIENT {
        assert_eq!(sans, 0, "a client request with SANs was accepted");
        assert!(usages.iter().any(|u| u == "client auth"));
        assert!(!usages.iter().any(|u| u == "server auth"));
    } else {
        assert!(
            (1..=crate::csr::MAX_SANS).contains(&sans),
            "{sans} SANs accepted"
        );
        assert!(req
            .dns_names
            .iter()
            .all(|d| d.len() <= 253 && crate::names::is_subdomain(d)));
        assert!(usages.iter().any(|u| u == "server auth"));
        assert!(!usages.iter().any(|u| u == "client auth"));
    }
    assert!(!usages.iter().any(|u| u == "cert sign"));
}
