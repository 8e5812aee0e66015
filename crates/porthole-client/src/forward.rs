//! The forwarding loop: local listeners, one task per local connection, and the supervisor
//! that keeps sessions to pods alive.
//!
//! ```text
//!  listeners ──accept──▶ connection task ──wait for a session (bounded)──▶ PortForwarder::forward
//!                                 ▲                                              │
//!                      watch<sessions> ◀── supervisor: session closed, or its pod gone?
//!                                          → back-off, re-resolve the target, publish
//! ```
//!
//! kubectl ends everything when one connection gets an error text or the session drops
//! (PROTOCOL.md §4.3 step 10, §7.6). Here a failed connection fails alone, and a lost session is
//! replaced while the listeners stay open; `reconnect = false` restores kubectl's behaviour.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use porthole_relay::portforward::spdy_client::{take_ready_bytes, ForwardError, PortForwarder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::live::Live;
use crate::output::{Event, Output};
use crate::ports::ResolvedPort;

/// A freshly established session to one pod.
pub struct NewSession {
    /// The pod's name.
    pub pod: String,
    /// The pod port for each port spec (same order as the listeners' specs).
    pub ports: Vec<ResolvedPort>,
    /// The port-forward client.
    pub forwarder: PortForwarder,
    /// `websocket` or `spdy` (for messages).
    pub transport: &'static str,
}

/// Why [`Connector::connect`] failed.
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// The complete line to print if this ends the command (`error: ...` or
    /// `Error from server (NotFound): ...`).
    pub message: String,
    /// The target object no longer exists; after `--pod-running-timeout` of this we give up.
    pub gone: bool,
}

/// Resolves the target and opens sessions; the seam between the forwarding loop and the
/// Kubernetes API (tests plug in a loopback server here).
pub trait Connector: Send + Sync + 'static {
    /// Opens sessions to up to `max` pods, skipping pods named in `exclude` (already connected).
    /// An empty `Ok` means every candidate is already connected.
    fn connect<'a>(
        &'a self,
        max: usize,
        exclude: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<NewSession>, ConnectError>>;

    /// Resolves, with a reason, once `pod` stops being a good target (deleted, replaced,
    /// terminating, or not Ready behind a selector) even though its session may live on (a
    /// node keeps the connection when the pod goes, PROTOCOL.md §4.7). The default never
    /// resolves.
    fn pod_gone<'a>(&'a self, pod: String) -> BoxFuture<'a, String> {
        let _ = pod;
        Box::pin(std::future::pending())
    }
}

/// Behaviour knobs of the loop.
#[derive(Debug, Clone)]
pub struct Options {
    /// Reconnect after a lost session and isolate failed connections (our default); `false`
    /// behaves like kubectl.
    pub reconnect: bool,
    /// How many pods to spread new connections over (1 = no balancing).
    pub balance: usize,
    /// How long a new local connection waits for a session during a gap, and how long a deleted
    /// target may stay unresolvable before we give up.
    pub pod_running_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// In balance mode, how often to look for more Ready pods.
    pub rescan_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reconnect: true,
            balance: 1,
            pod_running_timeout: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            rescan_interval: Duration::from_secs(10),
        }
    }
}

/// One bound local port.
pub struct Listener {
    /// Index into the port specs (and into [`NewSession::ports`]).
    pub spec_index: usize,
    /// The bound local port (printed in `Handling connection for`).
    pub local_port: u16,
    /// The sockets (one per address).
    pub sockets: Vec<TcpListener>,
}

/// A session that ends sooner than this after connecting counts as flapping: the next
/// reconnect waits (growing back-off) instead of hammering a server that accepts and drops.
const STABLE_SESSION: Duration = Duration::from_secs(10);

fn push_live(lives: &mut Vec<Arc<Live>>, next_id: &mut u64, s: NewSession) {
    lives.push(Arc::new(Live::new(*next_id, s.pod, s.ports, s.forwarder)));
    *next_id += 1;
}

/// The back-off to apply before reconnecting after `live` ended: none after a stable session,
/// otherwise the previous one doubled (capped).
fn next_flap_delay(live: &Live, previous: Option<Duration>, options: &Options) -> Option<Duration> {
    if live.connected_for() >= STABLE_SESSION {
        return None;
    }
    Some(previous.map_or(options.backoff_initial, |d| {
        (d * 2).min(options.backoff_max)
    }))
}

/// Human form of a close reason (rustls appends a documentation URL to its EOF error).
fn tidy_reason(reason: &str) -> String {
    match reason.find(": https://") {
        Some(i) => reason[..i].to_string(),
        None => reason.to_string(),
    }
}

type Sessions = Arc<Vec<Arc<Live>>>;

/// Shared state of the connection tasks.
struct Shared {
    output: Output,
    options: Options,
    sessions: watch::Receiver<Sessions>,
    next_conn: AtomicU64,
    round_robin: AtomicUsize,
    /// kubectl mode: the first error text ends the command.
    fatal: mpsc::UnboundedSender<String>,
    /// A connection saw the pod go away: replace the session now instead of waiting for it to
    /// notice.
    kill_session: mpsc::UnboundedSender<(u64, String)>,
    /// Cancelled when the command is ending (errors caused by our own shutdown stay quiet).
    stopping: CancellationToken,
}

/// Texts of errors that mean the pod (sandbox) is gone, not merely the port refusing
/// (PROTOCOL.md §4.5, §9.1): the session is useless and must be re-established.
fn means_pod_gone(text: &str) -> bool {
    const MARKERS: [&str; 8] = [
        "network namespace for sandbox",
        "is not running",
        "was deleted",
        "is terminating",
        "failed to find sandbox",
        "could not find sandbox",
        "not found",
        "pod is being deleted",
    ];
    MARKERS.iter().any(|m| text.contains(m))
}

/// Runs until shutdown (exit 0), a fatal error (1), or — without reconnect — a lost session.
/// `initial` are the sessions the caller already opened (so first-connection errors are the
/// caller's, with kubectl's texts).
pub async fn serve(
    listeners: Vec<Listener>,
    initial: Vec<NewSession>,
    connector: Arc<dyn Connector>,
    options: Options,
    output: Output,
    shutdown: CancellationToken,
) -> std::process::ExitCode {
    let udp = (Vec::new(), crate::udp::UdpOptions::default());
    serve_with_udp(
        listeners, udp, initial, connector, options, output, shutdown,
    )
    .await
}

/// [`serve`] with UDP forwards too: `udp` is their bound sockets and limits.
pub async fn serve_with_udp(
    listeners: Vec<Listener>,
    udp: (Vec<crate::udp::UdpListener>, crate::udp::UdpOptions),
    initial: Vec<NewSession>,
    connector: Arc<dyn Connector>,
    options: Options,
    output: Output,
    shutdown: CancellationToken,
) -> std::process::ExitCode {
    let mut next_session_id = 0u64;
    let mut lives: Vec<Arc<Live>> = Vec::new();
    for s in initial {
        push_live(&mut lives, &mut next_session_id, s);
    }
    let (sessions_tx, sessions_rx) = watch::channel::<Sessions>(Arc::new(lives.clone()));
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let (kill_tx, mut kill_rx) = mpsc::unbounded_channel();
    // Listeners stop accepting at shutdown; connection tasks then end as their streams are
    // reset by `PortForwarder::shutdown`.
    let stop_accepting = shutdown.child_token();
    let shared = Arc::new(Shared {
        output: output.clone(),
        options: options.clone(),
        sessions: sessions_rx,
        next_conn: AtomicU64::new(0),
        round_robin: AtomicUsize::new(0),
        fatal: fatal_tx,
        kill_session: kill_tx,
        stopping: stop_accepting.clone(),
    });

    let tracker = TaskTracker::new();
    crate::udp::spawn(
        udp.0,
        shared.sessions.clone(),
        output.clone(),
        udp.1,
        options.pod_running_timeout,
        stop_accepting.clone(),
        &tracker,
    );
    for l in listeners {
        for sock in l.sockets {
            let shared = shared.clone();
            let tracker2 = tracker.clone();
            let stop = stop_accepting.clone();
            let (spec_index, local_port) = (l.spec_index, l.local_port);
            tracker.spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return,
                        a = sock.accept() => a,
                    };
                    match accepted {
                        Ok((stream, peer)) => {
                            let shared = shared.clone();
                            tracker2.spawn(handle_connection(
                                shared, stream, peer, spec_index, local_port,
                            ));
                        }
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, local_port, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
    }

    let code = supervise(
        &mut lives,
        &mut next_session_id,
        &sessions_tx,
        &mut fatal_rx,
        &mut kill_rx,
        connector.as_ref(),
        &options,
        &output,
        &shutdown,
    )
    .await;

    stop_accepting.cancel();
    tracing::debug!("closing sessions");
    // Close every session: RST every stream, GOAWAY, close the connection (kubectl's Ctrl-C).
    // `lives` is authoritative; sessions removed from it were shut down when removed.
    sessions_tx.send_replace(Arc::new(Vec::new()));
    for live in lives.iter() {
        live.forwarder.shutdown().await;
    }
    tracker.close();
    tracing::debug!("sessions closed; waiting for connection tasks");
    // Connection tasks end once their streams are reset; don't let a stuck local peer hold the
    // exit hostage.
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    tracing::debug!("forwarding stopped");
    code
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    lives: &mut Vec<Arc<Live>>,
    next_session_id: &mut u64,
    sessions_tx: &watch::Sender<Sessions>,
    fatal_rx: &mut mpsc::UnboundedReceiver<String>,
    kill_rx: &mut mpsc::UnboundedReceiver<(u64, String)>,
    connector: &dyn Connector,
    options: &Options,
    output: &Output,
    shutdown: &CancellationToken,
) -> std::process::ExitCode {
    let mut rescan = tokio::time::interval(options.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await;
    // Back-off carried across sessions that die right after connecting.
    let mut flap: Option<Duration> = None;
    let mut last_flap: Option<Duration> = None;
    // The pod whose session just ended: another Ready pod of the target is tried first (its
    // node may be cut off while the pod still looks Ready).
    let mut avoid: Vec<String> = Vec::new();
    loop {
        sessions_tx.send_replace(Arc::new(lives.clone()));
        if lives.is_empty() {
            let avoid = std::mem::take(&mut avoid);
            match reconnect(connector, options, output, shutdown, flap.take(), avoid).await {
                Reconnect::Sessions(new) => {
                    for s in new {
                        output.notice(
                            &format!("Reconnected to pod {} ({})", s.pod, s.transport),
                            Event::Reconnected {
                                pod: s.pod.clone(),
                                transport: s.transport.to_string(),
                            },
                        );
                        push_live(lives, next_session_id, s);
                    }
                    continue;
                }
                Reconnect::Shutdown => return std::process::ExitCode::SUCCESS,
                Reconnect::GaveUp(msg) => {
                    output.fatal(&msg);
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        // Each session ends when its connection closes or (with reconnect) its pod goes away.
        let ended = futures_util::future::select_all(lives.iter().map(|l| {
            let l = l.clone();
            let gone = options.reconnect.then(|| connector.pod_gone(l.pod.clone()));
            Box::pin(async move {
                let reason = match gone {
                    Some(gone) => tokio::select! {
                        r = l.forwarder.closed() => r.to_string(),
                        r = gone => r,
                    },
                    None => l.forwarder.closed().await.to_string(),
                };
                (l.id, reason)
            })
        }));
        tokio::select! {
            _ = shutdown.cancelled() => return std::process::ExitCode::SUCCESS,
            Some(_text) = fatal_rx.recv() => {
                // kubectl closes the connection after an error text and reports it as lost.
                output.fatal("error: lost connection to pod");
                return std::process::ExitCode::FAILURE;
            }
            Some((id, why)) = kill_rx.recv() => {
                if let Some(pos) = lives.iter().position(|l| l.id == id) {
                    let live = lives.remove(pos);
                    let reason = if live.forwarder.connection().is_closed() {
                        live.forwarder.closed().await.to_string()
                    } else {
                        why
                    };
                    live.forwarder.shutdown().await;
                    if !options.reconnect {
                        output.fatal("error: lost connection to pod");
                        return std::process::ExitCode::FAILURE;
                    }
                    flap = next_flap_delay(&live, last_flap, options);
                    last_flap = flap;
                    lost(output, &live.pod, &reason);
                    avoid = vec![live.pod.clone()];
                }
            }
            ((id, reason), _, _) = ended => {
                if let Some(pos) = lives.iter().position(|l| l.id == id) {
                    let live = lives.remove(pos);
                    // A no-op when the connection already closed; otherwise (pod gone) RST the
                    // streams and GOAWAY.
                    live.forwarder.shutdown().await;
                    if !options.reconnect {
                        output.fatal("error: lost connection to pod");
                        return std::process::ExitCode::FAILURE;
                    }
                    flap = next_flap_delay(&live, last_flap, options);
                    last_flap = flap;
                    lost(output, &live.pod, &reason);
                    avoid = vec![live.pod.clone()];
                }
            }
            _ = rescan.tick(), if options.balance > 1 && options.reconnect => {
                let exclude: Vec<String> = lives.iter().map(|l| l.pod.clone()).collect();
                let room = options.balance.saturating_sub(lives.len());
                if room > 0 {
                    let found = tokio::select! {
                        _ = shutdown.cancelled() => return std::process::ExitCode::SUCCESS,
                        r = connector.connect(room, &exclude) => r,
                    };
                    if let Ok(new) = found {
                        for s in new {
                            output.notice(
                                &format!("Connected to pod {} ({})", s.pod, s.transport),
                                Event::Reconnected { pod: s.pod.clone(), transport: s.transport.to_string() },
                            );
                            push_live(lives, next_session_id, s);
                        }
                    }
                }
            }
        }
    }
}

fn lost(output: &Output, pod: &str, reason: &str) {
    let reason = tidy_reason(reason);
    output.notice(
        &format!("Lost connection to pod {pod}: {reason}; reconnecting"),
        Event::Reconnecting {
            pod: pod.to_string(),
            reason: reason.to_string(),
        },
    );
}

enum Reconnect {
    Sessions(Vec<NewSession>),
    Shutdown,
    GaveUp(String),
}

/// Capped exponential back-off with jitter until a session is up, shutdown, or the target has
/// been gone for `pod_running_timeout`. Pods in `avoid` are skipped while the target has
/// others (a service or deployment moves to a pod on another node at once); a pod target, or
/// one with no other pod, gets them back at once.
async fn reconnect(
    connector: &dyn Connector,
    options: &Options,
    output: &Output,
    shutdown: &CancellationToken,
    flap: Option<Duration>,
    mut avoid: Vec<String>,
) -> Reconnect {
    if let Some(wait) = flap {
        tokio::select! {
            _ = shutdown.cancelled() => return Reconnect::Shutdown,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let mut delay = flap.unwrap_or(options.backoff_initial);
    let mut gone_since: Option<Instant> = None;
    let mut last_message = String::new();
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Reconnect::Shutdown,
            r = connector.connect(options.balance, &avoid) => r,
        };
        match attempt {
            Ok(new) if !new.is_empty() => return Reconnect::Sessions(new),
            Ok(_) if !avoid.is_empty() => {
                // Only the avoided pods are candidates: try them again, now.
                avoid.clear();
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                if e.gone {
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= options.pod_running_timeout {
                        return Reconnect::GaveUp(e.message);
                    }
                } else {
                    gone_since = None;
                }
                // Say why we are still waiting, once per distinct reason.
                if e.message != last_message {
                    output.notice(
                        &format!(
                            "Still reconnecting: {}",
                            e.message.trim_start_matches("error: ")
                        ),
                        Event::Error {
                            message: e.message.clone(),
                            fatal: false,
                        },
                    );
                    last_message = e.message;
                }
            }
        }
        // Full jitter on the upper half, so many clients restarted together spread out.
        let jitter = rand::random_range(0.5..=1.0);
        let sleep = delay.mul_f64(jitter);
        tokio::select! {
            _ = shutdown.cancelled() => return Reconnect::Shutdown,
            _ = tokio::time::sleep(sleep) => {}
        }
        delay = (delay * 2).min(options.backoff_max);
    }
}

/// Waits (bounded) for a live session and picks one, round robin when balancing. Sessions
/// already known dead are skipped even before the supervisor has replaced them.
async fn pick_session(shared: &Shared, deadline: Instant) -> Option<Arc<Live>> {
    let mut rx = shared.sessions.clone();
    loop {
        {
            let sessions = rx.borrow_and_update();
            let alive: Vec<&Arc<Live>> = sessions
                .iter()
                .filter(|l| !l.forwarder.connection().is_closed())
                .collect();
            if !alive.is_empty() {
                let n = shared.round_robin.fetch_add(1, Ordering::Relaxed);
                return Some(alive[n % alive.len()].clone());
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            // Sender gone (shutting down) or out of patience.
            _ => return None,
        }
    }
}

async fn handle_connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    spec_index: usize,
    local_port: u16,
) {
    let output = &shared.output;
    output.accepted(local_port);
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + shared.options.pod_running_timeout;
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut announced = false;
    let mut attempts = 0;
    // Read at most once, kept across retries (see `forward_with_prefix`).
    let mut prefix: Option<Vec<u8>> = None;
    let (live, remote, result) = loop {
        attempts += 1;
        let Some(live) = pick_session(&shared, deadline).await else {
            if !shared.stopping.is_cancelled() {
                output.warn(&format!(
                    "error: no session to the pod became available within {}; closing the local \
                     connection on port {local_port}",
                    humantime(shared.options.pod_running_timeout)
                ));
            }
            return;
        };
        let Some(port) = live.ports.get(spec_index).copied() else {
            return;
        };
        if !announced {
            output.opened(id, local_port, port.remote, peer.to_string(), &live.pod);
            announced = true;
        }
        // Borrowed, so the socket survives a failure to open streams and can be retried on the
        // next session, with the same prefix.
        if prefix.is_none() && live.forwarder.sends_early_data() {
            prefix = Some(take_ready_bytes(&stream));
        }
        let counts = crate::progress::LiveBytes::with_prefix(prefix.as_ref().map_or(0, Vec::len));
        let forward = live.forwarder.forward_with_prefix(
            crate::progress::Counted::new(&mut stream, &counts),
            port.remote,
            prefix.as_deref().unwrap_or(&[]),
        );
        let of = crate::progress::ProgressOf {
            id,
            local_port,
            remote_port: port.remote,
            pod: live.pod.clone(),
        };
        let result = crate::progress::forward_reporting(forward, &counts, output, of).await;
        let session_died = matches!(
            result,
            Err(ForwardError::CreateErrorStream(_) | ForwardError::CreateDataStream(_))
        ) && live.forwarder.connection().is_closed();
        // Retry on the next session, a few times at most (a server that accepts and drops
        // every session must not keep this connection spinning).
        if session_died
            && shared.options.reconnect
            && !shared.stopping.is_cancelled()
            && attempts < 5
        {
            let _ = shared.kill_session.send((live.id, String::new()));
            continue;
        }
        break (live, port.remote, result);
    };
    let (to_pod, from_pod, error) = match &result {
        Ok(report) => (report.bytes_out, report.bytes_in, None),
        Err(e) => (0, 0, Some(porthole_relay::error::chain(e))),
    };
    output.event(Event::ConnectionClosed {
        id,
        local_port,
        remote_port: remote,
        pod: live.pod.clone(),
        bytes_to_pod: to_pod,
        bytes_from_pod: from_pod,
        error,
    });
    let Err(e) = result else { return };
    // Streams reset by our own shutdown are not worth a message.
    if shared.stopping.is_cancelled() {
        return;
    }
    match e {
        ForwardError::Remote(text) => {
            output.warn(&format!(
                "an error occurred forwarding {local_port} -> {remote}: {text}"
            ));
            if !shared.options.reconnect {
                let _ = shared.fatal.send(text);
            } else if means_pod_gone(&text) {
                let _ = shared
                    .kill_session
                    .send((live.id, format!("the pod is gone ({text})")));
            }
        }
        other => {
            let text = porthole_relay::error::chain(&other);
            output.warn(&format!(
                "error forwarding {local_port} -> {remote}: {text}"
            ));
        }
    }
}

/// `1m0s`-style rendering of a duration, as kubectl prints them.
fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let frac = d.subsec_millis();
    let s = if frac > 0 {
        format!("{s}.{frac:03}s")
    } else {
        format!("{s}s")
    };
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_gone_texts() {
        assert!(means_pod_gone("error forwarding port 80 to pod abc, uid : network namespace for sandbox \"abc\" is closed"));
        assert!(means_pod_gone("sandbox abc is not running"));
        assert!(!means_pod_gone(
            "error forwarding port 80 to pod abc, uid : failed to connect to localhost:80 inside namespace \"abc\", \
             IPv4: dial tcp4 127.0.0.1:80: connect: connection refused IPv6 dial tcp6 [::1]:80: connect: connection refused "
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_sessions_back_off() {
        let options = Options::default();
        let (io, _peer) = tokio::io::duplex(64);
        let live = Live::new(
            0,
            "p".into(),
            Vec::new(),
            PortForwarder::new(io, porthole_relay::spdy::Config::default()),
        );
        let first = next_flap_delay(&live, None, &options);
        assert_eq!(first, Some(options.backoff_initial));
        assert_eq!(
            next_flap_delay(&live, first, &options),
            Some(options.backoff_initial * 2)
        );
        assert_eq!(
            next_flap_delay(&live, Some(Duration::from_secs(4)), &options),
            Some(options.backoff_max)
        );
        tokio::time::advance(STABLE_SESSION).await;
        assert_eq!(
            next_flap_delay(&live, Some(options.backoff_max), &options),
            None
        );
    }

    #[test]
    fn close_reasons_are_tidied() {
        assert_eq!(
            tidy_reason("i/o error: peer closed connection without sending TLS close_notify: https://docs.rs/x"),
            "i/o error: peer closed connection without sending TLS close_notify"
        );
        assert_eq!(
            tidy_reason("peer closed the connection"),
            "peer closed the connection"
        );
    }

    #[test]
    fn durations_like_go() {
        assert_eq!(humantime(Duration::from_secs(60)), "1m0s");
        assert_eq!(humantime(Duration::from_secs(5)), "5s");
        assert_eq!(humantime(Duration::from_millis(1500)), "1.500s");
        assert_eq!(humantime(Duration::from_secs(3661)), "1h1m1s");
    }
}
