//! `porthole port-forward`: a drop-in for `kubectl port-forward` that survives what kills
//! kubectl's (docs/ARCHITECTURE.md; PROTOCOL.md §2.5, §4.3, §7; issue 5).
//!
//! Same arguments, stdout lines, error texts and exit codes as kubectl (§7), plus:
//! - per-connection isolation: a refused or reset pod port fails that local connection only;
//! - resilience: a lost session (API server or node restart, network cut, pod replaced) is
//!   re-established with back-off while the local listeners stay open, re-resolving the target;
//!   `--reconnect=false` restores kubectl's exit-on-first-error behaviour;
//! - only Running and Ready pods behind selectors, `--balance` across several of them;
//! - SPDY keepalive with a bounded dead-peer timeout; porthole flow control between porthole
//!   peers; `--output json` events.
//!
//! Layout:
//! - `args`: the command line ([`Args`]), kubectl's value parsers and usage checks (§7);
//! - [`ports`]: `[LOCAL:]REMOTE` specs and named-port resolution (§7.3);
//! - [`listen`]: `--address` expansion and listeners (§7.4);
//! - [`kubeconfig`]: kubeconfig loading and command-line overrides;
//! - [`target`]: `TYPE/NAME` → pods, activeness ranking (§7.2);
//! - [`transport`]: the upgrade, WebSocket tunnel then SPDY (§2.2, §2.4, §2.5);
//! - [`forward`]: listeners, connection tasks and the reconnecting supervisor;
//! - [`udp`]: `/udp` forwards (porthole extension): sockets, flows, idle timeout;
//! - [`reverse`]: `--reverse POD_PORT:LOCAL_HOST:LOCAL_PORT`, the pod's connections to us;
//! - [`output`]: kubectl's lines or JSON events;
//! - [`progress`]: byte counts of open connections, for the live view;
//! - [`set`]: `porthole forward`, many forwards at once (a file or every Service) with a live
//!   view, a status endpoint and optional /etc/hosts names.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::WatchEvent;
use tokio_util::sync::CancellationToken;

mod args;
pub mod forward;
pub mod kubeconfig;
pub mod listen;
mod live;
pub mod output;
pub mod ports;
pub mod progress;
pub mod reverse;
pub mod set;
pub mod target;
pub mod transport;
pub mod udp;

use crate::args::validate;
pub use crate::args::{parse_go_duration, Args};
use crate::forward::{ConnectError, Connector, NewSession};
use crate::output::Output;
use crate::target::{Kind, ResolveError, Resolver};
use crate::transport::{Keepalive, TransportMode};

/// Runs `port-forward` until Ctrl-C/SIGTERM (`shutdown`), a fatal error, or — with
/// `--reconnect=false` — the first lost session. Errors are printed here, as kubectl prints them
/// (`error: ...` on stderr), and turned into the exit code (0 after shutdown, 1 otherwise), so
/// the binary only needs to return the code.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let output = Output::new(args.output);
    Ok(run_with_output(args, output, shutdown).await)
}

/// [`run`] with a caller-made [`Output`] (e.g. [`Output::with_tap`] to observe the events of a
/// run in tests).
pub async fn run_with_output(args: Args, output: Output, shutdown: CancellationToken) -> ExitCode {
    match run_inner(args, output.clone(), shutdown).await {
        Ok(code) => code,
        Err(line) => {
            output.fatal(&line);
            ExitCode::FAILURE
        }
    }
}

/// The Kubernetes-backed [`Connector`]: resolve the target, then upgrade to each chosen pod.
struct KubeConnector {
    client: kube::Client,
    /// `host:port` of the API server, for messages.
    server: String,
    resolver: Resolver,
    transport: TransportMode,
    keepalive: Keepalive,
}

/// How often a connected pod is re-read when the API server will not watch it.
const POD_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long one watch of the pod lasts before it is re-established (kube-rs and client-go
/// reflectors use about five minutes), so a server that forgot the watch is noticed.
const POD_WATCH_SECONDS: u32 = 290;

/// Why a connected pod no longer serves this session, if it does not.
fn pod_unusable(
    p: &Pod,
    pod: &str,
    uid: &mut Option<String>,
    require_ready: bool,
) -> Option<String> {
    let this_uid = p.metadata.uid.clone();
    if uid.is_none() {
        *uid = this_uid.clone();
    }
    if this_uid != *uid {
        return Some(format!("pod {pod} was replaced"));
    }
    if p.metadata.deletion_timestamp.is_some() {
        return Some(format!("pod {pod} is being deleted"));
    }
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase != "Running" {
        return Some(format!("pod {pod} is no longer running (phase {phase})"));
    }
    if require_ready && !target::is_usable(p) {
        return Some(format!("pod {pod} is no longer Ready"));
    }
    None
}

impl KubeConnector {
    /// Follows the pod until it is deleted, replaced, terminating, no longer Running, or —
    /// behind a selector — no longer Ready.
    ///
    /// One GET, then a watch of that one pod (`fieldSelector=metadata.name=POD`) from the
    /// GET's resourceVersion, as Kubernetes clients do: an idle session costs the API server
    /// one request every few minutes instead of one every two seconds. A server that refuses
    /// the watch is polled instead. API errors are not judged here: the session's own
    /// keepalive judges connectivity.
    async fn watch_pod(&self, pod: String) -> String {
        let api: kube::Api<Pod> =
            kube::Api::namespaced(self.client.clone(), self.resolver.namespace());
        let require_ready = self.resolver.target().kind != Kind::Pod;
        let mut uid: Option<String> = None;
        let params = kube::api::WatchParams::default()
            .fields(&format!("metadata.name={pod}"))
            .timeout(POD_WATCH_SECONDS);
        loop {
            let version = match api.get_opt(&pod).await {
                Ok(None) => return format!("pod {pod} was deleted"),
                Ok(Some(p)) => {
                    if let Some(why) = pod_unusable(&p, &pod, &mut uid, require_ready) {
                        return why;
                    }
                    p.metadata.resource_version.unwrap_or_default()
                }
                Err(e) => {
                    tracing::debug!(pod, error = %e, "pod check failed");
                    tokio::time::sleep(POD_CHECK_INTERVAL).await;
                    continue;
                }
            };
            let events = match api.watch(&params, &version).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::debug!(pod, error = %e, "cannot watch the pod; polling it");
                    tokio::time::sleep(POD_CHECK_INTERVAL).await;
                    continue;
                }
            };
            let mut events = std::pin::pin!(events);
            // Until the watch ends (its timeout, a 410, a broken connection); then GET again.
            while let Some(ev) = futures_util::StreamExt::next(&mut events).await {
                match ev {
                    Ok(WatchEvent::Added(p)) | Ok(WatchEvent::Modified(p)) => {
                        if let Some(why) = pod_unusable(&p, &pod, &mut uid, require_ready) {
                            return why;
                        }
                    }
                    Ok(WatchEvent::Deleted(p)) if p.metadata.uid == uid => {
                        return format!("pod {pod} was deleted")
                    }
                    Ok(WatchEvent::Error(status)) => {
                        tracing::debug!(pod, code = status.code, message = %status.message, "pod watch ended");
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(pod, error = %e, "pod watch broke");
                        break;
                    }
                }
            }
        }
    }

    async fn connect_inner(
        &self,
        max: usize,
        exclude: &[String],
    ) -> Result<Vec<NewSession>, ConnectError> {
        let choices = self
            .resolver
            .resolve(max + exclude.len())
            .await
            .map_err(|e| ConnectError {
                gone: matches!(e, ResolveError::NotFound(_)),
                message: refused_text(&self.server, &e)
                    .unwrap_or_else(|| output::resolve_error_line(&e)),
            })?;
        let mut sessions = Vec::new();
        let mut last_err = None;
        for c in choices
            .into_iter()
            .filter(|c| !exclude.iter().any(|p| p == c.pod_name()))
            .take(max)
        {
            match transport::dial(
                &self.client,
                self.resolver.namespace(),
                c.pod_name(),
                self.transport,
                self.keepalive,
            )
            .await
            {
                Ok(d) => sessions.push(NewSession {
                    pod: c.pod_name().to_string(),
                    ports: c.ports.clone(),
                    forwarder: d.forwarder,
                    transport: d.transport,
                }),
                Err(e) => {
                    last_err = Some(ConnectError {
                        message: output::error_line(e),
                        gone: false,
                    })
                }
            }
        }
        match (sessions.is_empty(), last_err) {
            (true, Some(e)) => Err(e),
            _ => Ok(sessions),
        }
    }
}

impl Connector for KubeConnector {
    fn connect<'a>(
        &'a self,
        max: usize,
        exclude: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<NewSession>, ConnectError>> {
        Box::pin(self.connect_inner(max, exclude))
    }

    fn pod_gone<'a>(&'a self, pod: String) -> BoxFuture<'a, String> {
        Box::pin(self.watch_pod(pod))
    }
}

/// kubectl's wording for an API server that refuses connections (it prints it without
/// `error: `).
fn refused_text(server: &str, e: &ResolveError) -> Option<String> {
    e.is_connection_refused().then(|| format!(
        "The connection to the server {server} was refused - did you specify the right host or port?"
    ))
}

async fn run_inner(
    args: Args,
    output: Output,
    shutdown: CancellationToken,
) -> Result<ExitCode, String> {
    let v = validate(&args)?;
    let config = kubeconfig::load(&args.kube)
        .await
        .map_err(output::error_line)?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config
        .cluster_url
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let client = transport::api_client(config).map_err(|e| {
        format!(
            "error: cannot create the API client: {}",
            porthole_relay::error::chain(&e)
        )
    })?;
    let keepalive = Keepalive {
        interval: args.keepalive.filter(|d| !d.is_zero()),
        timeout: args.keepalive_timeout,
        enabled: args.keepalive.is_none_or(|d| !d.is_zero()),
    };
    let balance = if args.balance && v.target.kind != Kind::Pod {
        32
    } else {
        1
    };
    let connector = KubeConnector {
        client: client.clone(),
        server: server.clone(),
        resolver: Resolver::new(
            client.clone(),
            namespace.clone(),
            v.target.clone(),
            v.specs.clone(),
        ),
        transport: args.transport,
        keepalive,
    };

    // 1. Resolve (kubectl: GET object, LIST pods, wait ≤ --pod-running-timeout for a pod).
    //    A named pod is checked once, like kubectl; behind a selector we wait for a Ready pod.
    let deadline = tokio::time::Instant::now() + args.pod_running_timeout;
    let mut delay = Duration::from_millis(100);
    let choices = loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            r = connector.resolver.resolve(balance) => r,
        };
        match attempt {
            Ok(c) => break c,
            Err(ResolveError::NotReady(_))
                if v.target.kind != Kind::Pod && tokio::time::Instant::now() < deadline =>
            {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(
                    refused_text(&server, &e).unwrap_or_else(|| output::resolve_error_line(&e))
                )
            }
        }
    };

    // Reverse forwards: one session per spec to the pod the forwards use (re-resolved on
    // reconnect). Alone, they are the whole command.
    let reverse_ctx = (!v.reverse.is_empty()).then(|| {
        Arc::new(reverse::Context {
            client: client.clone(),
            resolver: Resolver::new(
                client.clone(),
                namespace.clone(),
                v.target.clone(),
                Vec::new(),
            ),
            transport: args.transport,
            keepalive,
            output: output.clone(),
            reconnect: args.reconnect,
            pod_running_timeout: args.pod_running_timeout,
        })
    });
    let reverse_pod = choices[0].pod_name().to_string();
    if v.specs.is_empty() {
        let Some(ctx) = reverse_ctx else {
            return Err("error: TYPE/NAME and list of ports are required for port-forward".into());
        };
        let end = reverse::run(ctx, v.reverse, reverse_pod, true, shutdown).await;
        return Ok(reverse::exit_code(end, &output));
    }

    // 2. Upgrade (kubectl dials before it listens, §7.5).
    let mut initial = Vec::new();
    for (i, c) in choices.iter().enumerate() {
        let dialed = tokio::select! {
            _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            d = transport::dial(&connector.client, connector.resolver.namespace(), c.pod_name(), args.transport, keepalive) => d,
        };
        match dialed {
            Ok(d) => {
                tracing::debug!(
                    pod = c.pod_name(),
                    transport = d.transport,
                    flow_control = d.flow_control,
                    "connected"
                );
                output.event(output::Event::Connected {
                    pod: c.pod_name().to_string(),
                    transport: d.transport.to_string(),
                });
                initial.push(NewSession {
                    pod: c.pod_name().to_string(),
                    ports: c.ports.clone(),
                    forwarder: d.forwarder,
                    transport: d.transport,
                });
            }
            Err(e) if i == 0 => return Err(output::error_line(e)),
            Err(e) => output.warn(&format!(
                "error: {e} (pod {}; balancing over the others)",
                c.pod_name()
            )),
        }
    }

    // UDP needs the extension from the node; without it the TCP forwards go on alone.
    let udp_specs: Vec<&str> = v
        .specs
        .iter()
        .filter(|s| s.udp)
        .map(|s| s.raw.as_str())
        .collect();
    let udp_granted = initial.first().is_some_and(|s| s.forwarder.supports_udp());
    if !udp_specs.is_empty() && !udp_granted {
        let text = udp::unsupported_text(&udp_specs);
        if udp_specs.len() == v.specs.len() {
            for s in &initial {
                s.forwarder.shutdown().await;
            }
            return Err(text);
        }
        output.warn(&text);
    }

    // 3. Listen, printing `Forwarding from` per bound address as kubectl does.
    let first = &choices[0];
    let mut listeners = Vec::new();
    let mut udp_listeners = Vec::new();
    for (i, port) in first.ports.iter().enumerate() {
        if v.specs[i].udp {
            if !udp_granted {
                continue;
            }
            match udp::bind_port(&v.addresses, port.local, |addr, local| {
                output.listening_udp(addr, local, port.remote)
            }) {
                Ok((local_port, sockets)) => udp_listeners.push(udp::UdpListener {
                    spec_index: i,
                    spec: v.specs[i].raw.clone(),
                    local_port,
                    sockets,
                }),
                Err(e) => output.warn(&format!("Unable to listen on port {}/udp: {e}", port.local)),
            }
            continue;
        }
        let bound = listen::listen_port(&v.addresses, port.local, |addr, local| {
            output.listening(addr, local, port.remote);
        });
        match bound {
            Ok(b) => listeners.push(forward::Listener {
                spec_index: i,
                local_port: b.local_port,
                sockets: b.listeners.into_iter().map(|(_, l)| l).collect(),
            }),
            Err(e) => output.warn(&format!("Unable to listen on port {}: {e}", port.local)),
        }
    }
    if listeners.is_empty() && udp_listeners.is_empty() {
        let ports: Vec<String> = first
            .ports
            .iter()
            .map(|p| format!("{{{} {}}}", p.local, p.remote))
            .collect();
        for s in &initial {
            s.forwarder.shutdown().await;
        }
        return Err(format!(
            "error: unable to listen on any of the requested ports: [{}]",
            ports.join(" ")
        ));
    }

    let options = forward::Options {
        reconnect: args.reconnect,
        balance,
        pod_running_timeout: args.pod_running_timeout,
        ..Default::default()
    };
    let udp_options = udp::UdpOptions {
        idle_timeout: args.udp_idle_timeout,
        ..Default::default()
    };
    let forward_stop = shutdown.child_token();
    let serve = forward::serve_with_udp(
        listeners,
        (udp_listeners, udp_options),
        initial,
        Arc::new(connector),
        options,
        output.clone(),
        forward_stop.clone(),
    );
    let Some(ctx) = reverse_ctx else {
        return Ok(serve.await);
    };
    // The reverse specs run beside the forwards; only a fatal end of theirs (with
    // --reconnect=false) ends the forwards too.
    let reverse_stop = shutdown.child_token();
    let mut reverse = tokio::spawn(reverse::run(
        ctx,
        v.reverse,
        reverse_pod,
        false,
        reverse_stop.clone(),
    ));
    tokio::pin!(serve);
    tokio::select! {
        code = &mut serve => {
            reverse_stop.cancel();
            let _ = reverse.await;
            Ok(code)
        }
        end = &mut reverse => match end {
            Ok(Err(line)) => {
                output.fatal(&line);
                forward_stop.cancel();
                let _ = serve.await;
                Ok(ExitCode::FAILURE)
            }
            _ => Ok(serve.await),
        },
    }
}
