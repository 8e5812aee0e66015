//! What `porthole apiserver` is told: the command-line flags ([`Args`], [`EtcdArgs`]) and the
//! [`Config`] loaded from them (certificates, tokens, the store to open) that
//! [`run`](crate::run) takes. Kept out of `lib.rs`, the HTTP front, because flags and file
//! loading change for different reasons than request handling does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::authn::TokenFile;
use crate::store::{self, EtcdStore, RedbStore, Store};
use crate::{csr, kubelet, leader, tls};

/// Command-line flags of `porthole apiserver` (names follow kube-apiserver where one exists).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on (HTTPS).
    #[arg(
        long,
        env = "PORTHOLE_APISERVER_LISTEN",
        default_value = "127.0.0.1:6443"
    )]
    pub listen: SocketAddr,
    /// The address nodes behind NAT (`porthole node --tunnel`) dial this server at directly,
    /// with the port of --listen (kube-apiserver's flag). Default: the --listen address, unless
    /// it is 0.0.0.0 or ::, in which case nodes reach this server only through the address
    /// they were given (a balancer).
    #[arg(long, env = "PORTHOLE_APISERVER_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<std::net::IpAddr>,
    /// Directory for the embedded store (one process per directory). Not used with
    /// `--etcd-servers`.
    #[arg(
        long,
        env = "PORTHOLE_APISERVER_DATA_DIR",
        required_unless_present = "etcd_servers"
    )]
    pub data_dir: Option<PathBuf>,
    /// Where the cluster state lives when it is not the embedded store: etcd.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Serving certificate (PEM).
    #[arg(long, env = "PORTHOLE_APISERVER_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,
    /// Serving private key (PEM).
    #[arg(long, env = "PORTHOLE_APISERVER_TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: PathBuf,
    /// CA that signs client certificates (CN = user, O = groups).
    #[arg(long, env = "PORTHOLE_APISERVER_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// Static token CSV: `token,user,uid,"group1,group2"`.
    #[arg(long, env = "PORTHOLE_APISERVER_TOKEN_AUTH_FILE")]
    pub token_auth_file: Option<PathBuf>,
    /// Let requests without credentials in as `system:anonymous`.
    #[arg(
        long,
        env = "PORTHOLE_APISERVER_ANONYMOUS_AUTH",
        default_value_t = false
    )]
    pub anonymous_auth: bool,
    /// Client certificate presented to node agents.
    #[arg(long, env = "PORTHOLE_APISERVER_KUBELET_CLIENT_CERTIFICATE")]
    pub kubelet_client_certificate: Option<PathBuf>,
    /// Key of `--kubelet-client-certificate`.
    #[arg(long, env = "PORTHOLE_APISERVER_KUBELET_CLIENT_KEY")]
    pub kubelet_client_key: Option<PathBuf>,
    /// CA that signs node agents' serving certificates.
    #[arg(long, env = "PORTHOLE_APISERVER_KUBELET_CERTIFICATE_AUTHORITY")]
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// JSON-lines audit log (port-forward sessions and requests).
    #[arg(long, env = "PORTHOLE_APISERVER_AUDIT_LOG_PATH")]
    pub audit_log_path: Option<PathBuf>,
    /// How long a node may go without a heartbeat before it is marked NotReady (`40s`, `2m`).
    #[arg(long, env = "PORTHOLE_APISERVER_NODE_MONITOR_GRACE_PERIOD", default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// Run the controllers (scheduler, Deployments, GC, namespaces, node lifecycle) only while
    /// this server holds the Lease kube-system/porthole-controllers, so that several API
    /// servers can share one store. --leader-elect=false runs them unconditionally: only for a
    /// server that is alone on its store.
    #[arg(long, env = "PORTHOLE_APISERVER_LEADER_ELECT", default_value = "true",
          num_args = 0..=1, default_missing_value = "true", require_equals = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub leader_elect: bool,
    /// How long the controllers' lease stays valid after its last renewal; another server
    /// waits this long before it takes over from a leader that stopped renewing.
    #[arg(long, env = "PORTHOLE_APISERVER_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops its controllers; shorter than
    /// the lease duration.
    #[arg(long, env = "PORTHOLE_APISERVER_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// Pause between attempts to acquire or renew the lease; shorter than the renew deadline.
    #[arg(long, env = "PORTHOLE_APISERVER_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// CA certificate (PEM) that signs the certificates joining nodes request
    /// (kube-controller-manager's flag); without it node certificate requests are refused.
    #[arg(
        long,
        env = "PORTHOLE_APISERVER_CLUSTER_SIGNING_CERT_FILE",
        requires = "cluster_signing_key_file"
    )]
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `--cluster-signing-cert-file`.
    #[arg(
        long,
        env = "PORTHOLE_APISERVER_CLUSTER_SIGNING_KEY_FILE",
        requires = "cluster_signing_cert_file"
    )]
    pub cluster_signing_key_file: Option<PathBuf>,
}

/// kube-apiserver's etcd flags. With `--etcd-servers` the API server keeps its state in etcd,
/// and several API servers can share it; without, it uses the embedded store in `--data-dir`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma separated (`http://10.0.0.5:2379,https://...`).
    #[arg(long, env = "PORTHOLE_ETCD_SERVERS", value_delimiter = ',')]
    pub etcd_servers: Option<Vec<String>>,
    /// The prefix every key lives under in etcd.
    #[arg(long, env = "PORTHOLE_ETCD_PREFIX", default_value = "/registry")]
    pub etcd_prefix: String,
    /// CA bundle (PEM) that signed etcd's serving certificate (https:// endpoints).
    #[arg(long, env = "PORTHOLE_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "PORTHOLE_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Key of `--etcd-certfile`.
    #[arg(long, env = "PORTHOLE_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// How long etcd may stay silent on one attempt of a request before the attempt goes to
    /// the next member; after three such attempts the API request fails with 503.
    #[arg(long, env = "PORTHOLE_ETCD_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub etcd_request_timeout: Duration,
    /// How often etcd's history older than this interval is compacted (kube-apiserver's
    /// default); `0` never compacts (leave it to etcd's `--auto-compaction-retention`).
    #[arg(long, env = "PORTHOLE_ETCD_COMPACTION_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub etcd_compaction_interval: Duration,
}

/// Which backend holds the cluster state.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// The embedded redb file in this directory.
    Embedded(PathBuf),
    /// etcd.
    Etcd(store::EtcdConfig),
}

impl StorageConfig {
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        let e = &args.etcd;
        match (&e.etcd_servers, &args.data_dir) {
            (Some(servers), _) => {
                let endpoints: Vec<String> = servers
                    .iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                for url in &endpoints {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        anyhow::bail!(
                            "--etcd-servers: {url:?} is not a URL; write it as http://HOST:PORT or https://HOST:PORT"
                        );
                    }
                }
                if !e.etcd_prefix.starts_with('/') {
                    anyhow::bail!(
                        "--etcd-prefix {:?} must start with '/' (the default is /registry)",
                        e.etcd_prefix
                    );
                }
                let mut cfg = store::EtcdConfig::new(endpoints);
                cfg.prefix = e.etcd_prefix.clone();
                cfg.ca_file = e.etcd_cafile.clone();
                cfg.cert_file = e.etcd_certfile.clone();
                cfg.key_file = e.etcd_keyfile.clone();
                cfg.request_timeout = e.etcd_request_timeout;
                cfg.compaction_interval =
                    (!e.etcd_compaction_interval.is_zero()).then_some(e.etcd_compaction_interval);
                Ok(StorageConfig::Etcd(cfg))
            }
            (None, Some(dir)) => Ok(StorageConfig::Embedded(dir.clone())),
            (None, None) => anyhow::bail!(
                "no store: give --data-dir DIR for the embedded store or --etcd-servers URL for etcd"
            ),
        }
    }

    /// Open the store this names.
    pub fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            StorageConfig::Embedded(dir) => Arc::new(RedbStore::open(dir)?),
            StorageConfig::Etcd(cfg) => Arc::new(EtcdStore::connect(cfg)?),
        })
    }
}

impl std::fmt::Display for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Embedded(dir) => write!(f, "embedded store in {}", dir.display()),
            StorageConfig::Etcd(cfg) => write!(
                f,
                "etcd at {} (prefix {})",
                cfg.endpoints.join(","),
                cfg.prefix
            ),
        }
    }
}

/// Parse `500ms`, `40s`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: want e.g. 40s, 2m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    })
}

/// Everything `run` needs, parsed and loaded.
pub struct Config {
    /// Address the binary should bind (tests pass their own listener).
    pub listen: SocketAddr,
    /// `--advertise-address`.
    pub advertise_address: Option<std::net::IpAddr>,
    /// Where the cluster state lives.
    pub storage: StorageConfig,
    /// Serving TLS (certificate, optional client CA).
    pub tls: Arc<rustls::ServerConfig>,
    /// Static tokens.
    pub tokens: TokenFile,
    /// Anonymous access allowed.
    pub anonymous_auth: bool,
    /// TLS client config for node agents.
    pub kubelet_tls: Arc<rustls::ClientConfig>,
    /// Audit log path.
    pub audit_log_path: Option<PathBuf>,
    /// Heartbeat grace period.
    pub node_monitor_grace_period: Duration,
    /// A node agent in this same process (`porthole up`), reached through in-memory pipes
    /// instead of TCP and TLS: its name and where to hand each connection.
    pub in_process_node: Option<kubelet::InProcessNode>,
    /// Leader election for the controllers (`None`: `--leader-elect=false`, they always run).
    pub leader_election: Option<leader::ElectionConfig>,
    /// A store to serve instead of opening `DATA_DIR/store.redb` (embedders, and tests that
    /// run several API servers on one store).
    pub store: Option<Arc<dyn Store>>,
    /// The cluster CA that signs node certificates (`--cluster-signing-*`).
    pub signer: Option<Arc<csr::Signer>>,
}

impl Config {
    /// Load files named by the flags; errors name the file and what is wrong.
    pub fn from_args(args: &Args) -> anyhow::Result<Self> {
        let tls = tls::server_config(
            &args.tls_cert_file,
            &args.tls_private_key_file,
            args.client_ca_file.as_deref(),
        )?;
        let tokens = match &args.token_auth_file {
            Some(p) => TokenFile::load(p)?,
            None => TokenFile::default(),
        };
        let kubelet_tls = tls::kubelet_client_config(
            args.kubelet_client_certificate.as_deref(),
            args.kubelet_client_key.as_deref(),
            args.kubelet_certificate_authority.as_deref(),
        )?;
        let election = leader::ElectionConfig {
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        };
        election.validate().map_err(|e| {
            anyhow::anyhow!("invalid leader election durations: {e} (defaults: 15s, 10s, 2s)")
        })?;
        let signer = match (
            &args.cluster_signing_cert_file,
            &args.cluster_signing_key_file,
        ) {
            (Some(cert), Some(key)) => Some(Arc::new(csr::Signer::load(cert, key)?)),
            (None, None) => None,
            _ => anyhow::bail!(
                "--cluster-signing-cert-file and --cluster-signing-key-file must be given together"
            ),
        };
        Ok(Self {
            listen: args.listen,
            advertise_address: args.advertise_address,
            storage: StorageConfig::from_args(args)?,
            tls: Arc::new(tls),
            tokens,
            anonymous_auth: args.anonymous_auth,
            kubelet_tls: Arc::new(kubelet_tls),
            audit_log_path: args.audit_log_path.clone(),
            node_monitor_grace_period: args.node_monitor_grace_period,
            in_process_node: None,
            leader_election: args.leader_elect.then_some(election),
            store: None,
            signer,
        })
    }
}
