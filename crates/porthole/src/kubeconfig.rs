//! Writing kubeconfig files that kubectl, the Python and JS clients, kube-rs and
//! `porthole port-forward` all read.
//!
//! Credentials are embedded (`*-data` fields) rather than referenced by path, so the file keeps
//! working when copied elsewhere, and is written 0600 through a temporary file and a rename so
//! that a reader polling for it (scripts wait for the file to appear) never sees half of it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::pki::CertPair;

/// Name of the cluster and context entries in every file porthole writes.
pub const CLUSTER_NAME: &str = "porthole";

/// How a kubeconfig's user authenticates.
pub enum Credentials<'a> {
    /// An X.509 client certificate and key (embedded).
    ClientCert(&'a CertPair),
    /// A bearer token (for users of the static token file).
    Token(&'a str),
}

/// Renders a kubeconfig with one cluster (`server`, trusting the cluster CA), one user and one
/// context, which is current.
pub fn render(
    ca_cert: &Path,
    server: &str,
    user: &str,
    credentials: Credentials<'_>,
) -> Result<String> {
    let ca = read_b64(ca_cert)?;
    let user_fields = match credentials {
        Credentials::ClientCert(pair) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            read_b64(&pair.cert)?,
            read_b64(&pair.key)?
        ),
        // The token is quoted as JSON, which YAML reads unchanged.
        Credentials::Token(token) => format!("    token: {}\n", serde_json::to_string(token)?),
    };
    let context = format!("{user}@{CLUSTER_NAME}");
    Ok(format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {CLUSTER_NAME}\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority-data: {ca}\n\
         users:\n\
         - name: {user}\n  \
           user:\n\
         {user_fields}\
         contexts:\n\
         - name: {context}\n  \
           context:\n    \
             cluster: {CLUSTER_NAME}\n    \
             user: {user}\n    \
             namespace: default\n\
         current-context: {context}\n"
    ))
}

/// Writes `contents` to `path` with mode 0600, atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

fn read_b64(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(B64.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Pki;

    #[test]
    fn kube_reads_what_we_write() {
        let dir = std::env::temp_dir().join(format!("porthole-kubeconfig-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pki = Pki::ensure(&dir.join("pki"), "n1").unwrap();

        let admin = render(
            &pki.ca.cert,
            "https://127.0.0.1:6443",
            "admin",
            Credentials::ClientCert(&pki.admin),
        )
        .unwrap();
        let parsed =
            kube::config::Kubeconfig::from_yaml(&admin).expect("kube parses the admin kubeconfig");
        assert_eq!(parsed.current_context.as_deref(), Some("admin@porthole"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        let auth = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(auth.client_certificate_data.is_some() && auth.client_key_data.is_some());

        let dev = render(
            &pki.ca.cert,
            "https://127.0.0.1:1",
            "developer",
            Credentials::Token("abc\"def"),
        )
        .unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(&dev).unwrap();
        let auth = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(auth.token.is_some());

        let path = dir.join("kubeconfig");
        write_atomic(&path, &admin).unwrap();
        write_atomic(&path, &admin).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), admin);
        fs::remove_dir_all(&dir).unwrap();
    }
}
