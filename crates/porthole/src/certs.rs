//! `porthole certs create`: the control-plane PKI in a directory, for API servers run as their
//! own processes (kubeadm's `init phase certs` and `kubeconfig admin`).
//!
//! It writes the CA, the API server's serving certificate (with every `--apiserver-san`), the
//! API server's client certificate for nodes and the admin client certificate, plus
//! `DIR/admin.kubeconfig`. Several API servers may share the directory (copy it to each API
//! server host). Nodes get nothing from here: they join with `porthole token create`'s command
//! and have the API server sign their certificates.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::kubeconfig::{self, Credentials};
use crate::pki::ControlPlane;

/// `porthole certs` subcommands.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    /// Create the control-plane PKI (files that exist are kept) and the admin kubeconfig.
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Directory for the certificates, keys and `admin.kubeconfig` (created 0700).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Another name of the API server for its serving certificate: an IP address or DNS name
    /// clients and nodes use (repeatable; localhost, 127.0.0.1 and ::1 are always included).
    #[arg(long = "apiserver-san", value_name = "IP_OR_DNS")]
    apiserver_sans: Vec<String>,
    /// The API server URL written into `DIR/admin.kubeconfig` (rewritten when given; default
    /// https://<first --apiserver-san or 127.0.0.1>:6443 for a new file).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
}

/// Runs `porthole certs ...`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        CertsCommand::Create(c) => create(c),
    }
}

fn create(args: CreateArgs) -> Result<()> {
    for san in &args.apiserver_sans {
        if !valid_san(san) {
            bail!("--apiserver-san {san:?} is neither an IP address nor a DNS name");
        }
    }
    if let Some(server) = &args.server {
        let uri: http::Uri = server
            .parse()
            .with_context(|| format!("--server {server:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            bail!("--server {server:?} must be an https://HOST:PORT URL");
        }
    }
    let cp = ControlPlane::ensure(&args.dir, &args.apiserver_sans)?;
    let kubeconfig_path = args.dir.join("admin.kubeconfig");
    let server = match (&args.server, kubeconfig_path.exists()) {
        (Some(s), _) => Some(s.clone()),
        (None, false) => Some(default_server(&args.apiserver_sans)),
        (None, true) => None,
    };
    if let Some(server) = &server {
        let text = kubeconfig::render(
            &cp.ca.cert,
            server,
            "admin",
            Credentials::ClientCert(&cp.admin),
        )?;
        kubeconfig::write_atomic(&kubeconfig_path, &text)?;
    }
    let ca_pem =
        std::fs::read(&cp.ca.cert).with_context(|| format!("read {}", cp.ca.cert.display()))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&ca_pem)
        .map_err(|e| anyhow::anyhow!("{} is not PEM: {e}", cp.ca.cert.display()))?;
    let hash = porthole_bootstrap::CaCertHash::of_certificate(&block.contents)?;
    println!(
        "porthole certs: control-plane PKI in {} (ca, apiserver, apiserver-kubelet-client, admin)",
        args.dir.display()
    );
    match server {
        Some(s) => println!(
            "porthole certs: admin kubeconfig at {} (server {s})",
            kubeconfig_path.display()
        ),
        None => println!(
            "porthole certs: admin kubeconfig at {} (kept; pass --server to rewrite it)",
            kubeconfig_path.display()
        ),
    }
    println!("porthole certs: CA public key hash {hash}");
    Ok(())
}

fn valid_san(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
        || (!s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }))
}

fn default_server(sans: &[String]) -> String {
    match sans.first().map(|s| s.parse::<IpAddr>()) {
        Some(Ok(IpAddr::V6(ip))) => format!("https://[{ip}]:6443"),
        Some(_) => format!("https://{}:6443", sans[0]),
        None => "https://127.0.0.1:6443".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_and_default_server() {
        assert!(valid_san("198.18.0.2") && valid_san("::1") && valid_san("api.example"));
        assert!(!valid_san("") && !valid_san("a b") && !valid_san("-a") && !valid_san("a..b"));
        assert_eq!(default_server(&[]), "https://127.0.0.1:6443");
        assert_eq!(
            default_server(&["198.18.0.2".into()]),
            "https://198.18.0.2:6443"
        );
        assert_eq!(
            default_server(&["fd00::2".into()]),
            "https://[fd00::2]:6443"
        );
        assert_eq!(
            default_server(&["api.example".into()]),
            "https://api.example:6443"
        );
    }
}
