//! The cluster's PKI (docs/ARCHITECTURE.md, Contract 3): one CA and the serving and client
//! certificates of every identity, created under `DIR/pki/` on first start and reused after.
//!
//! Keys are ECDSA P-256 (rcgen's default with ring), written 0600 as PKCS#8 PEM, which rustls,
//! Go (kubectl) and Python's ssl module all read.
//!
//! Every file is created only when missing, so a later start with another `--node-name` adds
//! that node's certificates under the same CA without touching the others. The CA certificate
//! is not parsed back: signing needs only the CA's subject and key, and both are fixed here.
//!
//! Two entry points share the code: [`ControlPlane::ensure`] makes what API server hosts need
//! (`porthole certs create`; nodes then join with a token and get their certificates from the
//! API server), and [`Pki::ensure`] adds one node's pairs for `porthole up`.

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

/// The names every API server certificate carries, whatever else is asked for.
fn local_names() -> Vec<String> {
    vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ]
}

/// What the API server hosts share (`porthole certs create`): no node certificates.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// `ca.crt`, `ca.key`.
    pub ca: CertPair,
    /// `apiserver.crt/.key`: the API server's serving certificate.
    pub apiserver: CertPair,
    /// `apiserver-kubelet-client.crt/.key`: the API server's client certificate for nodes.
    pub apiserver_kubelet_client: CertPair,
    /// `admin.crt/.key`: the admin kubeconfig's user (`system:masters`).
    pub admin: CertPair,
}

fn pair(dir: &Path, stem: &str) -> CertPair {
    CertPair {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    }
}

impl ControlPlane {
    /// The file layout under `dir` (nothing is read or written).
    pub fn layout(dir: &Path) -> ControlPlane {
        ControlPlane {
            ca: pair(dir, "ca"),
            apiserver: pair(dir, "apiserver"),
            apiserver_kubelet_client: pair(dir, "apiserver-kubelet-client"),
            admin: pair(dir, "admin"),
        }
    }

    /// Creates whatever is missing under `dir` (the CA first) and returns the layout. The API
    /// server's serving certificate names `localhost`, `127.0.0.1`, `::1` and every entry of
    /// `apiserver_sans` (IP addresses or DNS names); an existing one that lacks one of them is
    /// an error naming the files to remove, because clients would fail to verify it.
    ///
    /// Existing files are kept as they are, so clients holding the old CA keep working across
    /// restarts. A certificate without its key (or the reverse) is an error rather than being
    /// silently replaced, because replacing half a pair would break whoever uses the other half.
    pub fn ensure(dir: &Path, apiserver_sans: &[String]) -> Result<ControlPlane> {
        let cp = ControlPlane::layout(dir);
        let ca_key = ensure_ca(dir, &cp.ca)?;
        let issuer = Issuer::new(ca_params(), &ca_key);
        let mut sans = local_names();
        for san in apiserver_sans {
            let san = san.trim().to_string();
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        ensure_leaf(
            &cp.apiserver,
            &Spec {
                common_name: APISERVER_COMMON_NAME.into(),
                organization: None,
                subject_alt_names: sans.clone(),
                usage: Usage::Server,
            },
            &issuer,
        )?;
        check_sans(&cp.apiserver, &sans)?;
        ensure_leaf(
            &cp.apiserver_kubelet_client,
            &Spec {
                common_name: APISERVER_COMMON_NAME.into(),
                organization: Some("system:masters"),
                subject_alt_names: Vec::new(),
                usage: Usage::Client,
            },
            &issuer,
        )?;
        ensure_leaf(
            &cp.admin,
            &Spec {
                common_name: "admin".into(),
                organization: Some("system:masters"),
                subject_alt_names: Vec::new(),
                usage: Usage::Client,
            },
            &issuer,
        )?;
        Ok(cp)
    }
}

/// The CA key under `dir`, creating the CA (and `dir`, mode 0700) when missing.
fn ensure_ca(dir: &Path, ca: &CertPair) -> Result<KeyPair> {
    fs::create_dir_all(dir).with_context(|| format!("create PKI directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {} to its owner", dir.display()))?;
    match load_pair_state(ca)? {
        PairState::Present => {
            let pem = fs::read_to_string(&ca.key)
                .with_context(|| format!("read {}", ca.key.display()))?;
            KeyPair::from_pem(&pem).with_context(|| format!("parse CA key {}", ca.key.display()))
        }
        PairState::Missing => {
            let key = KeyPair::generate().context("generate the CA key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("self-sign the CA certificate")?;
            write_pair(ca, &cert.pem(), &key.serialize_pem())?;
            Ok(key)
        }
    }
}

/// Issue `pair` from `spec` unless both files exist.
fn ensure_leaf(pair: &CertPair, spec: &Spec<'_>, issuer: &Issuer<'_, &KeyPair>) -> Result<()> {
    if let PairState::Missing = load_pair_state(pair)? {
        let key = KeyPair::generate()
            .with_context(|| format!("generate a key for {}", spec.common_name))?;
        let cert = leaf_params(spec)?
            .signed_by(&key, issuer)
            .with_context(|| format!("sign the certificate of {}", spec.common_name))?;
        write_pair(pair, &cert.pem(), &key.serialize_pem())?;
    }
    Ok(())
}

/// Fails, naming the files, when the certificate at `pair` lacks one of `wanted`.
fn check_sans(pair: &CertPair, wanted: &[String]) -> Result<()> {
    let pem = fs::read(&pair.cert).with_context(|| format!("read {}", pair.cert.display()))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not PEM: {e}", pair.cert.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
        .map_err(|e| anyhow::anyhow!("{} is not a certificate: {e}", pair.cert.display()))?;
    let mut have: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => have.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(raw) => {
                    let ip = match raw.len() {
                        4 => <[u8; 4]>::try_from(*raw).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*raw).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    have.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let normal = |s: &str| {
        s.parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .unwrap_or_else(|_| s.to_ascii_lowercase())
    };
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !have.contains(&normal(w)))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} exists but does not name {missing:?}; remove {} and {} to have it issued again with every --apiserver-san",
            pair.cert.display(),
            pair.cert.display(),
            pair.key.display()
        );
    }
    Ok(())
}

impl Pki {
    /// The file layout under `dir` for node `node_name` (nothing is read or written).
    pub fn layout(dir: &Path, node_name: &str) -> Pki {
        let cp = ControlPlane::layout(dir);
        Pki {
            ca: cp.ca,
            apiserver: cp.apiserver,
            apiserver_kubelet_client: cp.apiserver_kubelet_client,
            node_serving: pair(dir, &format!("node-{node_name}")),
            node_client: pair(dir, &format!("node-{node_name}-client")),
            admin: cp.admin,
        }
    }

    /// The control-plane files of [`ControlPlane::ensure`] plus node `node_name`'s serving and
    /// client pairs, under one CA (what `porthole up` runs on).
    pub fn ensure(dir: &Path, node_name: &str) -> Result<Pki> {
        ControlPlane::ensure(dir, &[])?;
        let pki = Pki::layout(dir, node_name);
        let ca_key = ensure_ca(dir, &pki.ca)?;
        let issuer = Issuer::new(ca_params(), &ca_key);
        let specs = [
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
        ];
        for (pair, spec) in specs {
            ensure_leaf(pair, &spec, &issuer)?;
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
    fn control_plane_has_no_node_pairs_and_checks_its_sans() {
        let dir = temp_dir("control-plane");
        let cp = ControlPlane::ensure(&dir, &["198.18.0.2".into(), "api.example".into()])
            .expect("first ensure");
        let names: Vec<String> = {
            let mut v: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names,
            [
                "admin.crt",
                "admin.key",
                "apiserver-kubelet-client.crt",
                "apiserver-kubelet-client.key",
                "apiserver.crt",
                "apiserver.key",
                "ca.crt",
                "ca.key"
            ]
        );
        // Asking again for the same names (in another spelling of the IP) is fine ...
        ControlPlane::ensure(&dir, &["api.example".into()]).expect("same SANs");
        // ... a new name is refused with the files to remove, and nothing is replaced.
        let before = fs::read(&cp.apiserver.cert).unwrap();
        let err = ControlPlane::ensure(&dir, &["198.18.0.3".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not name [\"198.18.0.3\"]"), "{err}");
        assert!(err.contains("apiserver.key"), "{err}");
        assert_eq!(fs::read(&cp.apiserver.cert).unwrap(), before);
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
