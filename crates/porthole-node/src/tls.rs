//! TLS for the streaming endpoint: serving certificate, and client certificates checked
//! against the cluster CA. Which CNs may act is decided per request in the server (so a
//! refused caller gets a 401/403 with a reason, and a log line, instead of a bare TLS alert).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads every certificate of a PEM file.
pub(crate) fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} contains no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub(crate) fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .with_context(|| format!("parse PEM private key in {}", path.display()))?
        .with_context(|| format!("{} contains no PEM private key", path.display()))
}

/// The server configuration: HTTP/1.1 only (upgrades), client certificates verified against
/// `client_ca` when presented. A client without a certificate completes the handshake and is
/// answered 401, which tells a human more than an alert would.
pub(crate) fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: &Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(client_ca_file)? {
        roots
            .add(ca)
            .with_context(|| format!("use {} as client CA", client_ca_file.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("build the client certificate verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)
        .with_context(|| {
            format!(
                "use {} / {} as the serving certificate",
                cert_file.display(),
                key_file.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The subject common name of a DER certificate.
pub(crate) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}
