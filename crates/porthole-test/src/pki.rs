//! Throw-away PKI for tests: a CA and the leaf certificates it signs, made with rcgen and
//! written as PEM files, and the rustls loading of those files.
//!
//! - [`Ca`]: a self-signed CA that signs [`Leaf`]s into [`Pem`] pairs.
//! - [`load_certs`], [`load_key`], [`client_config`]: PEM files back into rustls types.
//!
//! The product's own PKI (`porthole/src/pki.rs`, `porthole init`) is not this: it writes 0600
//! files with the names and lifetimes a cluster needs. Tests only need certificates that chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed CA.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A CA named `cn`, with a fresh key.
    pub fn new(cn: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().context("CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("self-sign CA")?;
        Ok(Ca { issuer })
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/NAME`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        write_file(dir, name, &self.pem())
    }

    /// Signs `leaf` with a fresh key.
    pub fn sign(&self, leaf: &Leaf) -> Result<Pem> {
        let key = KeyPair::generate().context("leaf key")?;
        let mut params = CertificateParams::new(leaf.sans.clone()).context("leaf params")?;
        params.distinguished_name.push(DnType::CommonName, &leaf.cn);
        for o in &leaf.orgs {
            params
                .distinguished_name
                .push(DnType::OrganizationName, o.as_str());
        }
        if let Some(usage) = &leaf.usage {
            params.extended_key_usages = vec![usage.clone()];
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("sign {}", leaf.cn))?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// What a leaf certificate says: common name, organisations (Kubernetes groups), subject
/// alternative names and at most one extended key usage.
#[derive(Debug, Clone)]
pub struct Leaf {
    cn: String,
    orgs: Vec<String>,
    sans: Vec<String>,
    usage: Option<ExtendedKeyUsagePurpose>,
}

impl Leaf {
    /// A leaf named `cn`, without organisations, names or extended key usage.
    pub fn new(cn: &str) -> Leaf {
        Leaf {
            cn: cn.to_owned(),
            orgs: Vec::new(),
            sans: Vec::new(),
            usage: None,
        }
    }

    /// Adds the organisations `orgs`.
    pub fn orgs(mut self, orgs: &[&str]) -> Leaf {
        self.orgs.extend(orgs.iter().map(|o| o.to_string()));
        self
    }

    /// Adds DNS names or IP addresses (rcgen tells them apart by parsing).
    pub fn sans(mut self, sans: &[&str]) -> Leaf {
        self.sans.extend(sans.iter().map(|s| s.to_string()));
        self
    }

    /// Marks the certificate for servers only.
    pub fn server_auth(mut self) -> Leaf {
        self.usage = Some(ExtendedKeyUsagePurpose::ServerAuth);
        self
    }

    /// Marks the certificate for clients only.
    pub fn client_auth(mut self) -> Leaf {
        self.usage = Some(ExtendedKeyUsagePurpose::ClientAuth);
        self
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The PKCS#8 private key.
    pub key: String,
}

impl Pem {
    /// Writes `dir/NAME.crt` and `dir/NAME.key`; returns their paths in that order.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        Ok((
            write_file(dir, &format!("{name}.crt"), &self.cert)?,
            write_file(dir, &format!("{name}.key"), &self.key)?,
        ))
    }
}

fn write_file(dir: &Path, name: &str, data: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Every certificate in the PEM file at `path`.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse certificates in {}", path.display()))
}

/// The first private key in the PEM file at `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parse key in {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

/// A TLS client (ring, safe default versions) trusting the CA certificates in `ca` and
/// presenting the `(certificate, key)` files in `identity` if given.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).context("add CA certificate")?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .context("client certificate")?,
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_leaf_loads_back() -> Result<()> {
        let dir = crate::TempDir::new("pki")?;
        let ca = Ca::new("test-ca")?;
        let ca_path = ca.write(dir.path(), "ca.crt")?;
        let leaf = Leaf::new("alice")
            .orgs(&["devs"])
            .sans(&["localhost", "127.0.0.1"])
            .client_auth();
        let (cert, key) = ca.sign(&leaf)?.write(dir.path(), "alice")?;
        assert_eq!(load_certs(&cert)?.len(), 1);
        load_key(&key)?;
        client_config(&ca_path, Some((&cert, &key)))?;
        Ok(())
    }
}
