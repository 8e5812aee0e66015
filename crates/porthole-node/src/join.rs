//! Joining a cluster with a bootstrap token (`porthole node --join URL --token T
//! --ca-cert-hash H`), kubeadm's model (`docs/CLUSTER.md`, "Joining a node"):
//!
//! 1. **Discovery, trusting nothing yet.** Read `kube-public/cluster-info` anonymously over TLS
//!    without verifying the server (we do not know the CA yet). Take the CA out of its
//!    kubeconfig and accept it only if its public key hash equals `--ca-cert-hash` and the
//!    kubeconfig's detached JWS `jws-kubeconfig-<id>` verifies with the token's secret. The token
//!    has not left this process at this point: a wrong pin or an impostor ends the join here.
//! 2. **TLS bootstrap.** Make two ECDSA P-256 keys and send two CertificateSigningRequests
//!    (client: `kubernetes.io/kube-apiserver-client-kubelet`; serving:
//!    `kubernetes.io/kubelet-serving` for the node's IP and name) with the token as bearer,
//!    over TLS verified against the pinned CA only.
//! 3. **Wait** (bounded by `--join-timeout`) on a watch of each request for
//!    `status.certificate`, then write key, certificate and CA under `<data-dir>/pki/` (keys
//!    0600, written before the certificates, each file atomically).
//!
//! A later start finds the files ([`NodeFiles::present`]) and skips all of this: the token is
//! needed once and may have expired since. Every failure says what failed and what to do.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::TryStreamExt as _;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::Client;
use porthole_bootstrap::token as bt;
use porthole_bootstrap::{BootstrapToken, CaCertHash};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData as _};

use crate::config::{Config, JoinConfig, NodeFiles};

/// How long one HTTP exchange with the API server may take during the join.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Make sure the node has its certificates: reuse them, or join with the token.
pub(crate) async fn ensure_certificates(cfg: &Config, join: &JoinConfig) -> anyhow::Result<()> {
    let files = NodeFiles::layout(&join.pki_dir, &cfg.node_name);
    if files.present() {
        check_issued_for(&files.client_cert, &cfg.node_name)?;
        tracing::info!(pki = %join.pki_dir.display(), "reusing the node's certificates from an earlier join");
        return Ok(());
    }
    let (Some(token), Some(pin)) = (&join.token, &join.ca_cert_hash) else {
        bail!(
            "no node certificates under {} yet, and no --token to join with: run the join command \
             from `porthole token create` (with --token and --ca-cert-hash) once",
            join.pki_dir.display()
        );
    };
    let ca_pem = discover(&join.url, token, pin).await?;
    tracing::info!(url = %join.url, %pin, "the API server's CA matches --ca-cert-hash and cluster-info is signed with the token");
    let client = bootstrap_client(&join.url, &ca_pem, token)?;
    let issued = tokio::time::timeout(join.timeout, request_certificates(&client, cfg))
        .await
        .map_err(|_| {
            anyhow!(
                "the API server at {} did not sign the node's certificate requests within {:?}; \
                 check that it runs with --cluster-signing-cert-file and --cluster-signing-key-file \
                 (or approve them: kubectl certificate approve NAME), then join again",
                join.url,
                join.timeout
            )
        })??;
    write_files(&join.pki_dir, &files, &ca_pem, &issued)?;
    tracing::info!(pki = %join.pki_dir.display(), "joined: the node's certificates are signed and stored");
    Ok(())
}

/// The client certificate on disk must be the one of this node name: after a `--node-name`
/// change the files of the old name would authenticate as the old node.
fn check_issued_for(cert: &Path, node_name: &str) -> anyhow::Result<()> {
    let pem = fs::read(cert).with_context(|| format!("read {}", cert.display()))?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .with_context(|| format!("{} holds no certificate", cert.display()))?
        .with_context(|| format!("parse {}", cert.display()))?;
    let cn = crate::tls::common_name(&der).unwrap_or_default();
    let want = format!("system:node:{node_name}");
    if cn != want {
        bail!(
            "{} was issued to {cn:?}, not {want:?}; start with that node's --node-name or use another --data-dir",
            cert.display()
        );
    }
    Ok(())
}

/// Step 1: `cluster-info`, the pin, the JWS. Returns the pinned CA certificates as PEM.
async fn discover(url: &str, token: &BootstrapToken, pin: &CaCertHash) -> anyhow::Result<String> {
    let uri: http::Uri = url.parse().with_context(|| format!("--join {url:?}"))?;
    let mut cfg = kube::Config::new(uri);
    // Nothing is trusted yet and nothing secret is sent: what comes back is checked below.
    cfg.accept_invalid_certs = true;
    cfg.connect_timeout = Some(REQUEST_TIMEOUT);
    cfg.read_timeout = Some(REQUEST_TIMEOUT);
    let client = Client::try_from(cfg).context("build the discovery client")?;
    let api: Api<ConfigMap> = Api::namespaced(client, bt::CLUSTER_INFO_NAMESPACE);
    let cm = match api.get(bt::CLUSTER_INFO_NAME).await {
        Ok(cm) => cm,
        Err(kube::Error::Api(s)) if s.code == 404 => bail!(
            "the API server at {url} has no {}/{} yet: create a token with `porthole token create` on a control-plane host first",
            bt::CLUSTER_INFO_NAMESPACE,
            bt::CLUSTER_INFO_NAME
        ),
        Err(kube::Error::Api(s)) => bail!(
            "the API server at {url} refused to show {}/{} to a client without credentials (HTTP {}: {}); is --join the URL of a porthole API server?",
            bt::CLUSTER_INFO_NAMESPACE,
            bt::CLUSTER_INFO_NAME,
            s.code,
            s.message
        ),
        Err(e) => bail!(
            "cannot reach the API server at {url}: {e}; check the --join URL, that the API server is running and that this host can reach it"
        ),
    };
    let data = cm.data.unwrap_or_default();
    let kubeconfig = data.get(bt::CLUSTER_INFO_KUBECONFIG_KEY).with_context(|| {
        format!(
            "{}/{} has no kubeconfig entry; recreate it with `porthole token create`",
            bt::CLUSTER_INFO_NAMESPACE,
            bt::CLUSTER_INFO_NAME
        )
    })?;
    let ca_ders = ca_certificates(kubeconfig)?;
    let pinned: Vec<&Vec<u8>> = ca_ders
        .iter()
        .filter(|der| pin.matches_certificate(der))
        .collect();
    if pinned.is_empty() {
        let actual: Vec<String> = ca_ders
            .iter()
            .filter_map(|d| CaCertHash::of_certificate(d).ok())
            .map(|h| h.to_string())
            .collect();
        bail!(
            "the API server's CA does not match --ca-cert-hash {pin} (it presents {}); check the join command. The token was not sent.",
            actual.join(", ")
        );
    }
    let jws_key = format!("{}{}", bt::CLUSTER_INFO_JWS_PREFIX, token.id());
    let Some(signature) = data.get(&jws_key) else {
        bail!(
            "bootstrap token {} is not valid on this cluster: it is unknown, has expired or was deleted \
             (cluster-info has no signature for it); create a new one with `porthole token create` on a control-plane host. \
             The token was not sent.",
            token.id()
        );
    };
    if !porthole_bootstrap::jws::verify_detached(signature, kubeconfig, token.id(), token.secret())
    {
        bail!(
            "the secret of bootstrap token {} does not match the cluster's signature for it: check --token \
             (copy the join command exactly). The token was not sent.",
            token.id()
        );
    }
    let mut pem = String::new();
    for der in pinned {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = B64.encode(der);
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Ok(pem)
}

/// The DER certificates in a kubeconfig's (first) cluster `certificate-authority-data`.
fn ca_certificates(kubeconfig: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig)
        .context("the kubeconfig in cluster-info does not parse")?;
    let data = parsed
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.as_deref())
        .context("the kubeconfig in cluster-info has no certificate-authority-data")?;
    let pem = B64
        .decode(data.trim())
        .context("certificate-authority-data in cluster-info is not base64")?;
    let ders: Vec<Vec<u8>> = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .context("certificate-authority-data in cluster-info is not PEM certificates")?;
    if ders.is_empty() {
        bail!("certificate-authority-data in cluster-info holds no certificate");
    }
    Ok(ders)
}

/// A client that trusts only the pinned CA and authenticates with the token.
fn bootstrap_client(url: &str, ca_pem: &str, token: &BootstrapToken) -> anyhow::Result<Client> {
    let uri: http::Uri = url.parse().with_context(|| format!("--join {url:?}"))?;
    let mut cfg = kube::Config::new(uri);
    let roots = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .context("parse the pinned CA")?;
    cfg.root_cert = Some(roots);
    cfg.auth_info.token = Some(secrecy::SecretString::from(token.expose()));
    cfg.connect_timeout = Some(REQUEST_TIMEOUT);
    cfg.read_timeout = Some(REQUEST_TIMEOUT);
    Client::try_from(cfg).context("build the bootstrap client")
}

/// One issued certificate and its key.
struct Issued {
    key_pem: String,
    chain_pem: String,
}

/// The node's client and serving certificates.
struct IssuedPair {
    client: Issued,
    serving: Issued,
}

/// Steps 2 and 3.
async fn request_certificates(client: &Client, cfg: &Config) -> anyhow::Result<IssuedPair> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let client_key = KeyPair::generate().context("generate the node's client key")?;
    let serving_key = KeyPair::generate().context("generate the node's serving key")?;
    let names = vec![cfg.node_ip.to_string(), cfg.node_name.clone()];
    let client_name = submit(
        &api,
        cfg,
        &client_key,
        Vec::new(),
        porthole_bootstrap::SIGNER_KUBELET_CLIENT,
        "client auth",
    )
    .await?;
    let serving_name = submit(
        &api,
        cfg,
        &serving_key,
        names,
        porthole_bootstrap::SIGNER_KUBELET_SERVING,
        "server auth",
    )
    .await?;
    let client_chain = wait_for_certificate(&api, &client_name, &client_key).await?;
    let serving_chain = wait_for_certificate(&api, &serving_name, &serving_key).await?;
    Ok(IssuedPair {
        client: Issued {
            key_pem: client_key.serialize_pem(),
            chain_pem: client_chain,
        },
        serving: Issued {
            key_pem: serving_key.serialize_pem(),
            chain_pem: serving_chain,
        },
    })
}

/// Create one request; returns its name.
async fn submit(
    api: &Api<CertificateSigningRequest>,
    cfg: &Config,
    key: &KeyPair,
    subject_alt_names: Vec<String>,
    signer: &str,
    usage: &str,
) -> anyhow::Result<String> {
    let mut params = CertificateParams::new(subject_alt_names)
        .context("the node's IP or name is not a valid certificate name")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "system:nodes");
    dn.push(DnType::CommonName, format!("system:node:{}", cfg.node_name));
    params.distinguished_name = dn;
    let pem = params
        .serialize_request(key)
        .context("build the certificate request")?
        .pem()
        .context("encode the certificate request")?;
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(format!("node-csr-{}-", cfg.node_name)),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(pem.into_bytes()),
            signer_name: signer.to_string(),
            usages: Some(vec!["digital signature".into(), usage.into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 401 => anyhow!(
                "the API server refused the bootstrap token (401 Unauthorized): it is wrong, has expired or was deleted; \
                 create a new one with `porthole token create` on a control-plane host"
            ),
            kube::Error::Api(s) => anyhow!(
                "the API server refused the node's {signer} certificate request (HTTP {}): {}",
                s.code,
                s.message
            ),
            e => anyhow!("sending the node's certificate request to the API server failed: {e}; check that this host can reach it"),
        })?;
    let name = created
        .metadata
        .name
        .context("the API server answered the certificate request without a name")?;
    tracing::info!(csr = %name, %signer, "sent a certificate request");
    Ok(name)
}

/// Watch request `name` until it has a certificate (for `key`), or is denied or failed.
async fn wait_for_certificate(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    key: &KeyPair,
) -> anyhow::Result<String> {
    loop {
        let current = api
            .get(name)
            .await
            .with_context(|| format!("read certificate request {name}"))?;
        if let Some(chain) = outcome(&current, name, key)? {
            return Ok(chain);
        }
        let rv = current.metadata.resource_version.unwrap_or_default();
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(60);
        let stream = api
            .watch(&wp, &rv)
            .await
            .with_context(|| format!("watch certificate request {name}"))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream
            .try_next()
            .await
            .with_context(|| format!("watch certificate request {name}"))?
        {
            match ev {
                WatchEvent::Added(c) | WatchEvent::Modified(c) => {
                    if let Some(chain) = outcome(&c, name, key)? {
                        return Ok(chain);
                    }
                }
                WatchEvent::Deleted(_) => {
                    bail!("certificate request {name} was deleted before it was signed; join again")
                }
                WatchEvent::Bookmark(_) => {}
                // An expired watch: read and watch again.
                WatchEvent::Error(_) => break,
            }
        }
    }
}

/// `Some(chain)` once issued (checked to be for our key), an error when denied or failed.
fn outcome(
    csr: &CertificateSigningRequest,
    name: &str,
    key: &KeyPair,
) -> anyhow::Result<Option<String>> {
    let Some(status) = &csr.status else {
        return Ok(None);
    };
    for c in status.conditions.iter().flatten() {
        if (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True" {
            bail!(
                "certificate request {name} was {}: {} {}",
                c.type_.to_lowercase(),
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            );
        }
    }
    let Some(cert) = status.certificate.as_ref().filter(|c| !c.0.is_empty()) else {
        return Ok(None);
    };
    let chain = String::from_utf8(cert.0.clone())
        .with_context(|| format!("the certificate of request {name} is not PEM text"))?;
    let leaf = rustls_pemfile::certs(&mut chain.as_bytes())
        .next()
        .with_context(|| format!("the certificate of request {name} holds no certificate"))?
        .with_context(|| format!("the certificate of request {name} does not parse"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow!("the certificate of request {name} does not parse: {e}"))?;
    if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        bail!("the certificate issued for request {name} is not for the node's key; join again");
    }
    Ok(Some(chain))
}

/// Write everything under `pki_dir` (0700): keys 0600 first, then the certificates, each file
/// through a temporary file and a rename, so a crash never leaves a half-written file that a
/// later start would take for a finished join.
fn write_files(
    pki_dir: &Path,
    files: &NodeFiles,
    ca_pem: &str,
    issued: &IssuedPair,
) -> anyhow::Result<()> {
    fs::create_dir_all(pki_dir).with_context(|| format!("create {}", pki_dir.display()))?;
    fs::set_permissions(pki_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {} to its owner", pki_dir.display()))?;
    write_atomic(&files.client_key, &issued.client.key_pem, 0o600)?;
    write_atomic(&files.serving_key, &issued.serving.key_pem, 0o600)?;
    write_atomic(&files.client_cert, &issued.client.chain_pem, 0o644)?;
    write_atomic(&files.serving_cert, &issued.serving.chain_pem, 0o644)?;
    // Last: with it every file is there.
    write_atomic(&files.ca, ca_pem, 0o644)
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_certificates_come_from_the_kubeconfig() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://198.18.0.2:6443\n    certificate-authority-data: {}\n",
            B64.encode(cert.pem())
        );
        let ders = ca_certificates(&kubeconfig).unwrap();
        assert_eq!(ders, vec![cert.der().to_vec()]);
        let err = ca_certificates("apiVersion: v1\nkind: Config\nclusters: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no certificate-authority-data"), "{err}");
    }

    #[test]
    fn layout_uses_contract_3_names() {
        let f = NodeFiles::layout(Path::new("/d/pki"), "n1");
        assert_eq!(f.client_cert, Path::new("/d/pki/node-n1-client.crt"));
        assert_eq!(f.serving_key, Path::new("/d/pki/node-n1.key"));
        assert_eq!(f.ca, Path::new("/d/pki/ca.crt"));
    }
}
