//! The cluster's PKI (docs/ARCHITECTURE.md, Contract 3): one CA and the serving and client
//! certificates of every identity, created under `DIR/pki/` on first start and reused after.
//!
//! Keys are ECDSA P-256 (rcgen's default with ring), written 0600 as PKCS#8 PEM, which rustls,
//! Go (kubectl) and Python's ssl module all read.
//!
//! Every file is created only when missing, so a later start with another `--node-name` adds
//! that node's certificates under the same CA without touching the others. The CA certificate
//! is not parsed back: signing needs only the CA's subject and key, and both are fixed here.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Common name of the cluster CA.
pub const CA_COMMON_NAME: &str = "porthole-ca";
/// Common name the API server uses when it serves and when it calls a node.
pub const APISERVER_COMMON_NAME: &str = "porthole-apiserver";

/// Paths of one certificate and its key.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key (mode 0600).
    pub key: PathBuf,
}

/// Every file of Contract 3 for one node name.
#[derive(Debug, Clone)]
pub struct Pki {
    /// `ca.crt`, `ca.key`.
    pub ca: CertPair,
    /// `apiserver.crt/.key`: the API server's serving certificate.
    pub apiserver: CertPair,
    /// `apiserver-kubelet-client.crt/.key`: the API server's client certificate for nodes.
    pub apiserver_kubelet_client: CertPair,
    /// `node-NAME.crt/.key`: the node agent's serving certificate.
    pub node_serving: CertPair,
    /// `node-NAME-client.crt/.key`: the node agent's client certificate for the API server.
    pub node_client: CertPair,
    /// `admin.crt/.key`: the kubeconfig's user (`system:masters`).
    pub admin: CertPair,
}

/// What one certificate is for.
enum Usage {
    Server,
    Client,
}

/// The identity and names of one certificate to issue.
struct Spec<'a> {
    common_name: String,
    organization: Option<&'a str>,
    /// DNS names and IP addresses (rcgen tells them apart by parsing).
    subject_alt_names: Vec<String>,
    usage: Usage,
}

impl Pki {
    /// The file layout under `dir` for node `node_name` (nothing is read or written).
    pub fn layout(dir: &Path, node_name: &str) -> Pki {
        let pair = |stem: &str| CertPair {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        Pki {
            ca: pair("ca"),
            apiserver: pair("apiserver"),
            apiserver_kubelet_client: pair("apiserver-kubelet-client"),
            node_serving: pair(&format!("node-{node_name}")),
            node_client: pair(&format!("node-{node_name}-client")),
            admin: pair("admin"),
        }
    }

    /// Creates whatever is missing under `dir` (the CA first) and returns the layout.
    ///
    /// Existing files are kept as they are, so clients holding the old CA keep working across
    /// restarts. A certificate without its key (or the reverse) is an error rather than being
    /// silently replaced, because replacing half a pair would break whoever uses the other half.
    pub fn ensure(dir: &Path, node_name: &str) -> Result<Pki> {
        fs::create_dir_all(dir)
            .with_context(|| format!("create PKI directory {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restrict {} to its owner", dir.display()))?;
        let pki = Pki::layout(dir, node_name);

        let ca_key = match load_pair_state(&pki.ca)? {
            PairState::Present => {
                let pem = fs::read_to_string(&pki.ca.key)
                    .with_context(|| format!("read {}", pki.ca.key.display()))?;
                KeyPair::from_pem(&pem)
                    .with_context(|| format!("parse CA key {}", pki.ca.key.display()))?
            }
            PairState::Missing => {
                let key = KeyPair::generate().context("generate the CA key")?;
                let cert = ca_params()
                    .self_signed(&key)
                    .context("self-sign the CA certificate")?;
                write_pair(&pki.ca, &cert.pem(), &key.serialize_pem())?;
                key
            }
        };
        let issuer = Issuer::new(ca_params(), &ca_key);

        let local_names = || {
            vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ]
        };
        let specs = [
            (
                &pki.apiserver,
                Spec {
                    common_name: APISERVER_COMMON_NAME.into(),
                    organization: None,
                    subject_alt_names: local_names(),
                    usage: Usage::Server,
                },
            ),
            (
                &pki.apiserver_kubelet_client,
                Spec {
                    common_name: APISERVER_COMMON_NAME.into(),
                    organization: Some("system:masters"),
                    subject_alt_names: Vec::new(),
                    usage: Usage::Client,
                },
            ),
            (
                &pki.node_serving,
                Spec {
                    common_name: format!("system:node:{node_name}"),
                    organization: None,
                    subject_alt_names: {
                        let mut names = local_names();
                        names.push(node_name.to_string());
                        names
                    },
                    usage: Usage::Server,
                },
            ),
            (
                &pki.node_client,
                Spec {
                    common_name: format!("system:node:{node_name}"),
                    organization: Some("system:nodes"),
                    subject_alt_names: Vec::new(),
                    usage: Usage::Client,
                },
            ),
            (
                &pki.admin,
                Spec {
                    common_name: "admin".into(),
                    organization: Some("system:masters"),
                    subject_alt_names: Vec::new(),
                    usage: Usage::Client,
                },
            ),
        ];
        for (pair, spec) in specs {
            if let PairState::Missing = load_pair_state(pair)? {
                let key = KeyPair::generate()
                    .with_context(|| format!("generate a key for {}", spec.common_name))?;
                let cert = leaf_params(&spec)?
                    .signed_by(&key, &issuer)
                    .with_context(|| format!("sign the certificate of {}", spec.common_name))?;
                write_pair(pair, &cert.pem(), &key.serialize_pem())?;
            }
        }
        Ok(pki)
    }
}

/// Whether both files of a pair exist.
enum PairState {
    Present,
    Missing,
}

fn load_pair_state(pair: &CertPair) -> Result<PairState> {
    match (pair.cert.exists(), pair.key.exists()) {
        (true, true) => Ok(PairState::Present),
        (false, false) => Ok(PairState::Missing),
        (cert, _) => bail!(
            "{} exists but {} does not; remove the remaining file to have both created again",
            if cert {
                pair.cert.display()
            } else {
                pair.key.display()
            },
            if cert {
                pair.key.display()
            } else {
                pair.cert.display()
            },
        ),
    }
}

/// The CA's parameters. Used both to self-sign it and, on later starts, as the issuer of new
/// certificates: the issuer name and key identifier must match the stored CA certificate, and
/// both derive only from what is here plus the stored key.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(CA_COMMON_NAME, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(spec: &Spec<'_>) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(spec.subject_alt_names.clone())
        .with_context(|| format!("subject alternative names of {}", spec.common_name))?;
    params.distinguished_name = dn(&spec.common_name, spec.organization);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match spec.usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    Ok(params)
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes the key (0600, created exclusively so an existing key is never overwritten) and then
/// the certificate (0644).
fn write_pair(pair: &CertPair, cert_pem: &str, key_pem: &str) -> Result<()> {
    write_new(&pair.key, key_pem, 0o600)?;
    write_new(&pair.cert, cert_pem, 0o644)?;
    Ok(())
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("porthole-pki-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_every_file_with_private_keys_and_reuses_them() {
        let dir = temp_dir("reuse");
        let pki = Pki::ensure(&dir, "n1").expect("first ensure");
        let all = [
            &pki.ca,
            &pki.apiserver,
            &pki.apiserver_kubelet_client,
            &pki.node_serving,
            &pki.node_client,
            &pki.admin,
        ];
        for pair in all {
            let mode = fs::metadata(&pair.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", pair.key.display());
            assert!(fs::read_to_string(&pair.cert)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"));
        }
        assert!(dir.join("node-n1.crt").exists() && dir.join("node-n1-client.key").exists());
        let ca_before = fs::read(&pki.ca.cert).unwrap();
        let admin_before = fs::read(&pki.admin.key).unwrap();

        // A second start keeps everything and adds a new node's pair under the same CA.
        let again = Pki::ensure(&dir, "n2").expect("second ensure");
        assert_eq!(fs::read(&again.ca.cert).unwrap(), ca_before);
        assert_eq!(fs::read(&again.admin.key).unwrap(), admin_before);
        assert!(dir.join("node-n2.crt").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn half_a_pair_is_an_error() {
        let dir = temp_dir("half");
        let pki = Pki::ensure(&dir, "n1").unwrap();
        fs::remove_file(&pki.admin.key).unwrap();
        let err = Pki::ensure(&dir, "n1").unwrap_err().to_string();
        assert!(err.contains("admin.crt exists but"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
