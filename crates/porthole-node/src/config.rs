//! Command-line flags ([`Args`]) and the validated configuration ([`Config`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// `porthole node` flags. Every flag can also be set through the environment variable named
/// in its help.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Name of this node (the v1.Node object). Default: the host name.
    #[arg(long, env = "PORTHOLE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Data directory; the node keeps its state (namespaces, pod logs, process records) in
    /// `<data-dir>/node/` unless `--state-dir` says otherwise.
    #[arg(long, env = "PORTHOLE_DATA_DIR", default_value = "/var/lib/porthole")]
    pub data_dir: PathBuf,
    /// Explicit state directory (overrides `<data-dir>/node`).
    #[arg(long, env = "PORTHOLE_NODE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the HTTPS streaming endpoint (port 0 picks a free port).
    #[arg(long, env = "PORTHOLE_NODE_LISTEN", default_value = "127.0.0.1:10250")]
    pub listen: SocketAddr,
    /// Address the API server uses to reach this node (`status.addresses` InternalIP).
    #[arg(long, env = "PORTHOLE_NODE_IP", default_value = "127.0.0.1")]
    pub node_ip: IpAddr,
    /// API server URL, e.g. `https://127.0.0.1:6443`. Without it the node runs standalone
    /// (serving, but with no pods from a control plane).
    #[arg(long, env = "PORTHOLE_API_SERVER")]
    pub api_server: Option<String>,
    /// CA bundle (PEM) that signed the API server's serving certificate.
    #[arg(long, env = "PORTHOLE_API_CA_FILE")]
    pub api_ca_file: Option<PathBuf>,
    /// The node's client certificate for the API server (CN=system:node:NAME, O=system:nodes).
    #[arg(long, env = "PORTHOLE_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,
    /// Private key of `--client-cert-file`.
    #[arg(long, env = "PORTHOLE_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,
    /// Serving certificate of the streaming endpoint (PEM, chain allowed). Required unless
    /// `--join` is given.
    #[arg(long, env = "PORTHOLE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of `--tls-cert-file`.
    #[arg(long, env = "PORTHOLE_TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA (PEM) whose client certificates may call the endpoint. Required unless `--join` is
    /// given.
    #[arg(long, env = "PORTHOLE_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// Join the cluster whose API server is at this URL (`https://HOST:PORT`), as printed by
    /// `porthole token create`: the node makes its own keys, has the API server sign its
    /// certificates with `--token`, and keeps them under `<data-dir>/pki/`. A later start with
    /// the same data dir reuses them and needs no token. Replaces `--api-server` and the
    /// certificate flags.
    #[arg(
        long,
        env = "PORTHOLE_JOIN",
        value_name = "URL",
        conflicts_with_all = ["api_server", "api_ca_file", "client_cert_file", "client_key_file", "tls_cert_file", "tls_private_key_file", "client_ca_file"]
    )]
    pub join: Option<String>,
    /// Bootstrap token (`<id>.<secret>`) for the first `--join`.
    #[arg(
        long,
        env = "PORTHOLE_JOIN_TOKEN",
        requires = "join",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// `sha256:<hex>` of the cluster CA's public key: the node trusts the CA it downloads only
    /// if it matches, and sends the token only to an API server with a certificate from it.
    #[arg(long, env = "PORTHOLE_CA_CERT_HASH", requires = "join")]
    pub ca_cert_hash: Option<String>,
    /// How long `--join` waits for the API server to sign the node's certificates.
    #[arg(long, env = "PORTHOLE_JOIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// Certificate common names allowed to call `/portForward` and `/containerLogs`.
    #[arg(
        long,
        env = "PORTHOLE_APISERVER_CLIENT_NAMES",
        value_delimiter = ',',
        default_value = "porthole-apiserver"
    )]
    pub apiserver_client_names: Vec<String>,
    /// Close a port-forward connection after this long without traffic (e.g. `4h`, `90s`).
    #[arg(long, env = "PORTHOLE_IDLE_TIMEOUT", default_value = "4h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How long the second stream of a port-forward pair may take to arrive.
    #[arg(long, env = "PORTHOLE_STREAM_CREATION_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stream_creation_timeout: Duration,
    /// This node cannot be dialed by the API servers (behind NAT, a firewall): keep a tunnel
    /// to every API server instead, and serve port-forwards and logs over them. Needs
    /// `--join` or `--api-server`; the address may be a load balancer.
    #[arg(long, env = "PORTHOLE_NODE_TUNNEL", default_value_t = false)]
    pub tunnel: bool,
    /// How pods get their network namespaces: `privileged` (bind-mounted, needs root),
    /// `rootless` (each pod in a user namespace owned by this user, no privilege needed) or
    /// `auto` (privileged as root, rootless otherwise). Checked once at start.
    #[arg(
        long,
        env = "PORTHOLE_POD_ISOLATION",
        value_enum,
        default_value_t = PodIsolation::Auto
    )]
    pub pod_isolation: PodIsolation,
}

/// `--pod-isolation`: what the operator asked for; [`PodIsolation::resolve`] turns it into the
/// [`porthole_netns::Isolation`] the pods use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodIsolation {
    /// Privileged as root, rootless otherwise.
    Auto,
    /// Bind-mounted network namespaces (root, CAP_SYS_ADMIN).
    Privileged,
    /// User namespaces owned by the agent's user.
    Rootless,
}

impl PodIsolation {
    /// The way pods will be isolated, after checking that it works here by making one
    /// namespace that way (in `probe_dir`, which must exist). The error is that way's own:
    /// `auto` as root never hides a privileged failure behind a rootless attempt.
    ///
    /// Blocks for the few system calls it takes.
    pub fn resolve(self, probe_dir: &Path) -> anyhow::Result<porthole_netns::Isolation> {
        use porthole_netns::Isolation;
        let (isolation, why) = match self {
            PodIsolation::Auto => {
                let isolation = Isolation::for_this_process();
                let why = if isolation == Isolation::Privileged {
                    "root; --pod-isolation rootless runs them without privilege"
                } else {
                    "not root; --pod-isolation privileged needs root"
                };
                (isolation, why)
            }
            PodIsolation::Privileged => (Isolation::Privileged, "--pod-isolation privileged"),
            PodIsolation::Rootless => (Isolation::Rootless, "--pod-isolation rootless"),
        };
        isolation
            .probe(probe_dir)
            .with_context(|| format!("cannot run pods {} ({why})", isolation.name()))?;
        Ok(isolation)
    }
}

/// The line the node agent logs once at start, naming how its pods run.
pub fn isolation_line(isolation: porthole_netns::Isolation, requested: PodIsolation) -> String {
    let how = match isolation {
        porthole_netns::Isolation::Privileged => "bind-mounted network namespaces",
        porthole_netns::Isolation::Rootless => "user namespaces",
    };
    let why = match (requested, nix::unistd::geteuid().is_root()) {
        (PodIsolation::Auto, true) => "root".to_owned(),
        (PodIsolation::Auto, false) => "not root".to_owned(),
        (forced, _) => format!("--pod-isolation {}", isolation_flag_value(forced)),
    };
    format!("pods run {}: {how} ({why})", isolation.name())
}

fn isolation_flag_value(p: PodIsolation) -> &'static str {
    match p {
        PodIsolation::Auto => "auto",
        PodIsolation::Privileged => "privileged",
        PodIsolation::Rootless => "rootless",
    }
}

/// Where and how the node reaches the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// API server base URL.
    pub url: String,
    /// CA bundle for the API server's certificate.
    pub ca_file: PathBuf,
    /// Node client certificate.
    pub client_cert_file: PathBuf,
    /// Node client key.
    pub client_key_file: PathBuf,
}

/// Joining with a bootstrap token (`--join`).
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The API server URL from the join command.
    pub url: String,
    /// The bootstrap token; `None` when the certificates already exist.
    pub token: Option<porthole_bootstrap::BootstrapToken>,
    /// The CA pin (always given with a token).
    pub ca_cert_hash: Option<porthole_bootstrap::CaCertHash>,
    /// `<data-dir>/pki`: where the node's key, certificates and the CA are kept.
    pub pki_dir: PathBuf,
    /// Bound on waiting for the certificates.
    pub timeout: Duration,
}

/// Validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node name.
    pub node_name: String,
    /// State directory (namespaces, pod directories).
    pub state_dir: PathBuf,
    /// Address to reach the node at (InternalIP).
    pub node_ip: IpAddr,
    /// The control plane, if any.
    pub api: Option<ApiConfig>,
    /// Serving certificate (PEM).
    pub tls_cert_file: PathBuf,
    /// Serving key (PEM).
    pub tls_private_key_file: PathBuf,
    /// CA for client certificates.
    pub client_ca_file: PathBuf,
    /// Allowed client certificate CNs.
    pub apiserver_client_names: Vec<String>,
    /// Port-forward idle timeout.
    pub idle_timeout: Duration,
    /// Port-forward stream-pair creation timeout.
    pub stream_creation_timeout: Duration,
    /// Dial tunnels to the API servers (`--tunnel`).
    pub tunnel: bool,
    /// Node heartbeat period.
    pub heartbeat_interval: Duration,
    /// Connections handed over inside this process by an embedded API server (`porthole up`),
    /// served next to the TLS listener.
    pub in_process: Option<crate::InProcessListener>,
    /// Join with a bootstrap token first (the certificate paths above are then the files the
    /// join writes).
    pub join: Option<JoinConfig>,
    /// `--pod-isolation`, resolved at start.
    pub pod_isolation: PodIsolation,
}

impl Config {
    /// Validates `args` into a configuration.
    pub fn from_args(args: Args) -> anyhow::Result<Config> {
        let node_name = match args.node_name {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .context("read the host name for the default --node-name")?
                .to_string_lossy()
                .into_owned(),
        };
        if node_name.is_empty()
            || node_name.len() > 253
            || !node_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            anyhow::bail!(
                "node name {node_name:?} is not a valid Kubernetes object name (lower-case letters, digits, '-', '.'); set --node-name"
            );
        }
        let (api, join, tls_cert_file, tls_private_key_file, client_ca_file) = match args.join {
            Some(url) => {
                let join = join_config(
                    &url,
                    args.token,
                    args.ca_cert_hash,
                    &args.data_dir,
                    args.join_timeout,
                )?;
                let files = NodeFiles::layout(&join.pki_dir, &node_name);
                let api = ApiConfig {
                    url: join.url.clone(),
                    ca_file: files.ca.clone(),
                    client_cert_file: files.client_cert.clone(),
                    client_key_file: files.client_key.clone(),
                };
                (
                    Some(api),
                    Some(join),
                    files.serving_cert,
                    files.serving_key,
                    files.ca,
                )
            }
            None => {
                let api = match args.api_server {
                    None => None,
                    Some(url) => {
                        let need = |v: Option<PathBuf>, flag: &str| {
                            v.with_context(|| format!("--api-server needs {flag}"))
                        };
                        Some(ApiConfig {
                            url,
                            ca_file: need(args.api_ca_file, "--api-ca-file")?,
                            client_cert_file: need(args.client_cert_file, "--client-cert-file")?,
                            client_key_file: need(args.client_key_file, "--client-key-file")?,
                        })
                    }
                };
                let need = |v: Option<PathBuf>, flag: &str| {
                    v.with_context(|| format!("{flag} is required (or use --join URL --token T --ca-cert-hash H to have the cluster issue the node's certificates)"))
                };
                (
                    api,
                    None,
                    need(args.tls_cert_file, "--tls-cert-file")?,
                    need(args.tls_private_key_file, "--tls-private-key-file")?,
                    need(args.client_ca_file, "--client-ca-file")?,
                )
            }
        };
        let names: Vec<String> = args
            .apiserver_client_names
            .into_iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            anyhow::bail!("--apiserver-client-names is empty: nobody could call the node");
        }
        if args.tunnel && api.is_none() {
            anyhow::bail!(
                "--tunnel needs an API server to dial: add --join URL --token T --ca-cert-hash H (or --api-server URL with its certificate flags)"
            );
        }
        Ok(Config {
            node_name,
            state_dir: args.state_dir.unwrap_or_else(|| args.data_dir.join("node")),
            node_ip: args.node_ip,
            api,
            tls_cert_file,
            tls_private_key_file,
            client_ca_file,
            apiserver_client_names: names,
            idle_timeout: args.idle_timeout,
            stream_creation_timeout: args.stream_creation_timeout,
            tunnel: args.tunnel,
            heartbeat_interval: Duration::from_secs(10),
            in_process: None,
            join,
            pod_isolation: args.pod_isolation,
        })
    }
}

/// Check the `--join` flags: an `https://` URL, a well-formed token and pin, given together.
fn join_config(
    url: &str,
    token: Option<String>,
    ca_cert_hash: Option<String>,
    data_dir: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<JoinConfig> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--join {url:?} is not a URL; want https://HOST:PORT"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        anyhow::bail!("--join {url:?} must be an https://HOST:PORT URL of the API server");
    }
    let token = token
        .map(|t| porthole_bootstrap::BootstrapToken::parse(&t))
        .transpose()?;
    let ca_cert_hash = ca_cert_hash
        .map(|h| porthole_bootstrap::CaCertHash::parse(&h))
        .transpose()?;
    if token.is_some() && ca_cert_hash.is_none() {
        anyhow::bail!(
            "--token needs --ca-cert-hash sha256:<hex> (printed by `porthole token create`): without the pin the node could send its token to an impostor"
        );
    }
    Ok(JoinConfig {
        url: url.trim_end_matches('/').to_string(),
        token,
        ca_cert_hash,
        pki_dir: data_dir.join("pki"),
        timeout,
    })
}

/// Parses `90`, `90s`, `5m`, `4h`, `1h30m`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: expected e.g. 30s, 5m, 4h"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m, h)"
                ))
            }
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("4x").is_err());
        assert!(parse_duration("").is_err());
    }
}

/// The files a joined node keeps under `<data-dir>/pki/` (the names of Contract 3).
#[derive(Debug, Clone)]
pub(crate) struct NodeFiles {
    /// `ca.crt`: the pinned cluster CA.
    pub(crate) ca: PathBuf,
    /// `node-NAME-client.crt`: client certificate chain for the API server.
    pub(crate) client_cert: PathBuf,
    /// `node-NAME-client.key`.
    pub(crate) client_key: PathBuf,
    /// `node-NAME.crt`: serving certificate chain of the streaming endpoint.
    pub(crate) serving_cert: PathBuf,
    /// `node-NAME.key`.
    pub(crate) serving_key: PathBuf,
}

impl NodeFiles {
    /// The layout for node `name` under `pki_dir` (nothing is read).
    pub(crate) fn layout(pki_dir: &Path, name: &str) -> Self {
        Self {
            ca: pki_dir.join("ca.crt"),
            client_cert: pki_dir.join(format!("node-{name}-client.crt")),
            client_key: pki_dir.join(format!("node-{name}-client.key")),
            serving_cert: pki_dir.join(format!("node-{name}.crt")),
            serving_key: pki_dir.join(format!("node-{name}.key")),
        }
    }

    fn all(&self) -> [&PathBuf; 5] {
        [
            &self.ca,
            &self.client_cert,
            &self.client_key,
            &self.serving_cert,
            &self.serving_key,
        ]
    }

    /// Whether every file exists (a join finished earlier).
    pub(crate) fn present(&self) -> bool {
        self.all().iter().all(|p| p.exists())
    }
}
