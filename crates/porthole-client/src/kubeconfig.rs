//! Builds the `kube` client the way kubectl loads its configuration: `--kubeconfig` or the
//! `KUBECONFIG` list (merged) or `~/.kube/config`, then `--context/--cluster/--user`, then the
//! command-line overrides (`--server`, `--token`, `--certificate-authority`,
//! `--insecure-skip-tls-verify`). Authentication (tokens, client certificates, exec plugins)
//! stays kube's, so every request we make, the upgrade included, is authenticated the same way.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// The kubeconfig-related flags (a subset of kubectl's global flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeconfigArgs {
    /// Path to the kubeconfig file to use for CLI requests.
    #[arg(long, env = "PORTHOLE_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The name of the kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// The name of the kubeconfig cluster to use.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The name of the kubeconfig user to use.
    #[arg(long)]
    pub user: Option<String>,
    /// The address and port of the Kubernetes API server.
    #[arg(long, short = 's')]
    pub server: Option<String>,
    /// Bearer token for authentication to the API server.
    #[arg(long)]
    pub token: Option<String>,
    /// Path to a cert file for the certificate authority.
    #[arg(long, value_name = "PATH")]
    pub certificate_authority: Option<PathBuf>,
    /// If true, the server's certificate will not be checked for validity. This will make your
    /// HTTPS connections insecure.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub insecure_skip_tls_verify: Option<bool>,
}

fn load_kubeconfig(args: &KubeconfigArgs) -> Result<Option<Kubeconfig>, String> {
    if let Some(path) = &args.kubeconfig {
        return Kubeconfig::read_from(path)
            .map(Some)
            .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()));
    }
    match Kubeconfig::from_env() {
        Ok(Some(k)) => return Ok(Some(k)),
        Ok(None) => {}
        Err(e) => {
            return Err(format!(
                "cannot read the kubeconfig files in $KUBECONFIG: {e}"
            ))
        }
    }
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(None);
    };
    let path = PathBuf::from(home).join(".kube").join("config");
    if !path.exists() {
        return Ok(None);
    }
    Kubeconfig::read_from(&path)
        .map(Some)
        .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))
}

/// Loads the configuration. Errors are complete user-facing messages (without `error: `).
pub async fn load(args: &KubeconfigArgs) -> Result<kube::Config, String> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        cluster: args.cluster.clone(),
        user: args.user.clone(),
    };
    let mut config = match load_kubeconfig(args)? {
        Some(kc) => kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| {
                // With --server the kubeconfig may legitimately lack a cluster.
                format!("invalid configuration: {e}")
            }),
        None => Err(String::new()),
    };
    if config.is_err() {
        if let Some(server) = &args.server {
            config = server
                .parse::<http::Uri>()
                .map(kube::Config::new)
                .map_err(|e| format!("invalid --server {server:?}: {e}"));
        } else if config.as_ref().err().is_some_and(String::is_empty) {
            // No kubeconfig at all: inside a pod use the service account, like kubectl.
            config = kube::Config::incluster().map_err(|_| {
                "no configuration has been provided: pass --kubeconfig or --server, set \
                 KUBECONFIG, or create ~/.kube/config"
                    .to_string()
            });
        }
    }
    let mut config = config?;
    if let Some(server) = &args.server {
        config.cluster_url = server
            .parse()
            .map_err(|e| format!("invalid --server {server:?}: {e}"))?;
    }
    if let Some(token) = &args.token {
        // --token replaces every other bearer-token source, as kubectl's override does.
        config.auth_info.token = Some(token.clone().into());
        config.auth_info.token_file = None;
        config.auth_info.exec = None;
        config.auth_info.auth_provider = None;
        config.auth_info.username = None;
        config.auth_info.password = None;
    }
    let insecure = args.insecure_skip_tls_verify.unwrap_or(false);
    if let Some(ca) = &args.certificate_authority {
        if insecure {
            return Err(
                "specifying a root certificates file with the insecure flag is not allowed".into(),
            );
        }
        let pem = std::fs::read(ca).map_err(|e| {
            format!(
                "unable to read certificate-authority {} for the cluster: {e}",
                ca.display()
            )
        })?;
        config.root_cert =
            Some(pem_certificates(&pem).map_err(|e| {
                format!("unable to read certificate-authority {}: {e}", ca.display())
            })?);
    }
    if insecure {
        config.accept_invalid_certs = true;
        config.root_cert = None;
    }
    Ok(config)
}

/// DER certificates from a PEM bundle.
fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: a
clusters:
- name: ca
  cluster: {server: "https://127.0.0.1:1111", insecure-skip-tls-verify: true}
- name: cb
  cluster: {server: "https://127.0.0.1:2222"}
contexts:
- name: a
  context: {cluster: ca, user: ua, namespace: team-a}
- name: b
  context: {cluster: cb, user: ub}
users:
- name: ua
  user: {token: tok-a}
- name: ub
  user: {token: tok-b}
"#;

    /// The test kubeconfig in its own directory, removed when dropped (even on a failed
    /// assertion), so test runs leave nothing in /tmp.
    struct TestConfig {
        dir: PathBuf,
    }

    impl Drop for TestConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn write_config() -> (TestConfig, PathBuf) {
        let dir = std::env::temp_dir().join(format!("porthole-client-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(&path, KUBECONFIG).unwrap();
        (TestConfig { dir }, path)
    }

    #[tokio::test]
    async fn context_and_overrides() {
        let (_cleanup, path) = write_config();
        let args = KubeconfigArgs {
            kubeconfig: Some(path.clone()),
            ..Default::default()
        };
        let c = load(&args).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "https://127.0.0.1:1111/");
        assert_eq!(c.default_namespace, "team-a");
        assert!(c.accept_invalid_certs);

        let args = KubeconfigArgs {
            kubeconfig: Some(path.clone()),
            context: Some("b".into()),
            server: Some("https://10.0.0.1:6443".into()),
            token: Some("override".into()),
            ..Default::default()
        };
        let c = load(&args).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "https://10.0.0.1:6443/");
        assert_eq!(c.default_namespace, "default");
        use secrecy::ExposeSecret;
        assert_eq!(
            c.auth_info
                .token
                .as_ref()
                .map(|t| t.expose_secret().to_string()),
            Some("override".into())
        );

        let args = KubeconfigArgs {
            kubeconfig: Some(path),
            certificate_authority: Some("/nonexistent".into()),
            insecure_skip_tls_verify: Some(true),
            ..Default::default()
        };
        assert_eq!(
            load(&args).await.err().unwrap(),
            "specifying a root certificates file with the insecure flag is not allowed"
        );
    }
}
