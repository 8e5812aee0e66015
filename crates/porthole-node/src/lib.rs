//! porthole-node: the kubelet of porthole.
//!
//! It runs pods as real host processes, each pod in its own network namespace (privileged as
//! root, or rootless in a user namespace of its own: `--pod-isolation`, [`PodIsolation`],
//! decided and logged once at start), and serves the kubelet-compatible streaming endpoint
//! that the API server proxies port-forward requests to (PROTOCOL.md §6.8, §8;
//! ARCHITECTURE.md Contracts 2 and 4).
//!
//! Layout:
//! - [`config`]: flags ([`Args`]) and the validated [`Config`].
//! - [`runtime`]: pods, containers, restart back-off, readiness probes, logs, cleanup of a
//!   previous run (state files under `<state_dir>/pods`, namespaces under `<state_dir>/netns`).
//! - `server`: HTTPS (mutual TLS) endpoint: `/portForward`, `/containerLogs`, `/metrics`,
//!   and the unauthenticated `/healthz`, `/livez`, `/readyz`.
//! - `metrics`: the Prometheus metrics and the readiness (registration) state.
//! - `agent`: registration, heartbeat, pod list+watch, status write-back, deletion.
//! - `tunnel`: `--tunnel`, for a node no API server can dial (behind NAT): it dials a tunnel
//!   to every API server and serves the endpoint over them.
//! - `join`: `--join` with a bootstrap token: discovery of the CA pinned by
//!   `--ca-cert-hash`, certificate requests signed by the API server, files under
//!   `<data-dir>/pki/`.
//!
//! Images are recorded in the pod status but never pulled: a container's `command` is run from
//! the host filesystem. `status.podIP` is left empty because the pod's only address is its own
//! loopback, which is not reachable from outside (port-forward is the way in).

pub mod config;
pub mod runtime;

mod agent;
mod endpoint;
mod join;
mod metrics;
mod reverse;
mod server;
mod session;
mod tls;
mod tunnel;

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ApiConfig, Args, Config, JoinConfig, PodIsolation};
pub use porthole_netns::Isolation;
pub use runtime::{PodHandle, Runtime};

/// The node side of an in-process link to an API server running in the same process
/// (`porthole up`): each connection the API server would dial over TCP and TLS arrives as one
/// end of an in-memory pipe instead, and is served as if it came with an allowed client
/// certificate. Saves the encryption, the socket writes and the wakeups of one hop on every
/// byte. Pair it with the sender given to the API server ([`in_process_link`]).
#[derive(Debug, Clone)]
pub struct InProcessListener(
    Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>>>>,
);

impl InProcessListener {
    /// Takes the receiving end (the first serving endpoint gets it).
    fn take(&self) -> Option<tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A new in-process link: the sender goes to the API server, the listener into the node's
/// [`Config::in_process`].
pub fn in_process_link() -> (
    tokio::sync::mpsc::Sender<tokio::io::DuplexStream>,
    InProcessListener,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    (
        tx,
        InProcessListener(Arc::new(std::sync::Mutex::new(Some(rx)))),
    )
}

/// Holds an exclusive `flock` on the state directory for the life of the agent, so two agents
/// never clean up each other's pods.
fn lock_state_dir(dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create node state directory {}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "state directory {} is in use by another porthole node ({e}); give each node its own --state-dir or --data-dir",
            dir.display()
        )
    })
}

/// Serves the streaming endpoint on `listener` for the pods of `runtime`, with the TLS and
/// timeout settings of `cfg`, until `shutdown`; then closes every connection and session and
/// returns. [`run`] uses it; tests and embedders can run it next to their own [`Runtime`].
pub async fn serve_endpoint(
    runtime: Runtime,
    listener: TcpListener,
    cfg: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registration = Arc::new(metrics::Registration::new(false));
    serve(runtime, listener, cfg, shutdown, registration).await
}

async fn serve(
    runtime: Runtime,
    listener: TcpListener,
    cfg: &Config,
    shutdown: CancellationToken,
    registration: Arc<metrics::Registration>,
) -> anyhow::Result<()> {
    let tls = tls::server_config(
        &cfg.tls_cert_file,
        &cfg.tls_private_key_file,
        &cfg.client_ca_file,
    )?;
    let tasks = TaskTracker::new();
    let ep = Arc::new(endpoint::Endpoint {
        runtime,
        allowed_names: cfg
            .apiserver_client_names
            .iter()
            .cloned()
            .collect::<HashSet<_>>(),
        idle_timeout: cfg.idle_timeout,
        stream_creation_timeout: cfg.stream_creation_timeout,
        node_name: cfg.node_name.clone(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        metrics: Arc::new(metrics::NodeMetrics::new()),
        registration,
    });
    let tunnels = match (&cfg.api, cfg.tunnel) {
        (Some(api), true) => Some(tokio::spawn(tunnel::run(
            tunnel::Dialer::new(api, &cfg.node_name)?,
            ep.clone(),
            shutdown.clone(),
        ))),
        _ => None,
    };
    match cfg.in_process.as_ref().and_then(InProcessListener::take) {
        Some(rx) => {
            tokio::join!(
                server::serve(listener, tls, ep.clone()),
                server::serve_in_process(rx, ep)
            );
        }
        None => server::serve(listener, tls, ep).await,
    }
    if let Some(t) = tunnels {
        let _ = t.await;
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Runs the node agent: cleans up a previous run's leftovers, serves the endpoint on
/// `listener`, joins the cluster (if `cfg.api` is set), runs the pods bound to this node.
///
/// How long the API loops may take to end on shutdown before they are abandoned.
const AGENT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Prints one line to stdout when ready: `porthole node NAME listening on https://ADDR`, once
/// the endpoint is serving and the first registration attempt has finished (successfully, or
/// not — then registration keeps retrying in the background, which is logged).
/// On `shutdown` it stops every pod (SIGTERM, grace, SIGKILL), removes their namespaces and
/// files, closes every connection, and only then returns.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _lock = lock_state_dir(&cfg.state_dir)?;
    let local = listener
        .local_addr()
        .context("read the listening address")?;
    if let Some(join) = &cfg.join {
        tokio::select! {
            r = join::ensure_certificates(&cfg, join) => r?,
            _ = shutdown.cancelled() => {
                tracing::info!("stopped while joining the cluster");
                return Ok(());
            }
        }
    }
    let client = cfg.api.as_ref().map(agent::client).transpose()?;
    // Check the TLS files before touching anything else, so a typo fails fast.
    tls::server_config(
        &cfg.tls_cert_file,
        &cfg.tls_private_key_file,
        &cfg.client_ca_file,
    )?;
    let isolation = {
        let netns_dir = cfg.state_dir.join("netns");
        std::fs::create_dir_all(&netns_dir)
            .with_context(|| format!("create node state directory {}", netns_dir.display()))?;
        let requested = cfg.pod_isolation;
        tokio::task::spawn_blocking(move || requested.resolve(&netns_dir))
            .await
            .context("the pod isolation check panicked")??
    };
    // A target of its own, so that a log filter can keep this line alone.
    tracing::info!(
        target: "porthole_node::isolation",
        "{}",
        config::isolation_line(isolation, cfg.pod_isolation)
    );
    let runtime = Runtime::new(
        &cfg.state_dir,
        &cfg.node_name,
        &cfg.node_ip.to_string(),
        isolation,
    )?;

    let registration = Arc::new(metrics::Registration::new(client.is_some()));
    let server_stop = CancellationToken::new();
    let server = {
        let runtime = runtime.clone();
        let cfg = cfg.clone();
        let stop = server_stop.clone();
        let registration = registration.clone();
        tokio::spawn(async move { serve(runtime, listener, &cfg, stop, registration).await })
    };

    let agent_stop = CancellationToken::new();
    let agent = match client {
        Some(client) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let facts = agent::NodeFacts {
                name: cfg.node_name.clone(),
                ip: cfg.node_ip.to_string(),
                port: local.port(),
                tunnel: cfg.tunnel,
            };
            let handle = tokio::spawn(agent::run(
                client,
                facts,
                runtime.clone(),
                cfg.heartbeat_interval,
                agent_stop.clone(),
                registration,
                tx,
            ));
            tokio::select! {
                r = rx => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "serving, but not registered with the API server yet; retrying in the background"),
                    Err(_) => tracing::warn!("the agent ended before registering"),
                },
                _ = shutdown.cancelled() => {}
            }
            Some(handle)
        }
        None => {
            tracing::info!("no --api-server: running standalone (no pods from a control plane)");
            None
        }
    };

    if !shutdown.is_cancelled() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "porthole node {} listening on https://{local}",
            cfg.node_name
        );
        let _ = out.flush();
    }

    shutdown.cancelled().await;
    tracing::info!("shutting down: stopping every pod");
    agent_stop.cancel();
    if let Some(mut agent) = agent {
        // The agent's loops end at the cancel, unless a request to an API server that is cut
        // off (silent) is in flight: the pods are stopped without waiting for it.
        match tokio::time::timeout(AGENT_STOP_GRACE, &mut agent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "agent task failed"),
            Err(_) => {
                tracing::warn!(
                    "the API server did not answer while stopping; stopping the pods without it"
                );
                agent.abort();
            }
        }
    }
    runtime.shutdown().await;
    server_stop.cancel();
    match server.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "server task failed"),
    }
    tracing::info!("node stopped; every pod and namespace cleaned up");
    Ok(())
}
