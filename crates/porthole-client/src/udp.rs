//! UDP forwards (`5353:53/udp`, a porthole extension; framing and negotiation in
//! `porthole_proto::portforward::datagram` and `handshake`).
//!
//! ```text
//!  local UdpSocket ──recv_from──▶ flow table (one flow per source address:port, capped)
//!        ▲                              │ bounded queue (full → drop, counted)
//!        └──────── send_to(source) ◀── flow task ◀──▶ UdpFlow (protocol: udp pair) on a session
//! ```
//!
//! A flow opens its stream pair on its first datagram, on whichever session is live, and ends
//! after `--udp-idle-timeout` without datagrams either way, when its session ends, when the pod
//! refuses the port, or at shutdown. The next datagram from the same source makes a new flow,
//! so after a reconnect flows come back on the new session by themselves. Sessions whose server
//! did not grant the `udp` extension get no UDP flows, only one clear error per session.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listen::{go_errno_text, ListenAddress};
use crate::live::Live;
use crate::output::{Event, Output};

/// Receive buffer asked for on each local UDP socket.
const RECV_BUFFER: usize = 4 * 1024 * 1024;

/// Limits of the UDP forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOptions {
    /// A flow with no datagram either way for this long ends (`--udp-idle-timeout`).
    pub idle_timeout: Duration,
    /// Most flows per local socket; datagrams from further sources are dropped.
    pub max_flows: usize,
    /// Datagrams queued per flow while its streams open or the session is slow; more are
    /// dropped.
    pub queue: usize,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            idle_timeout: Duration::from_secs(60),
            max_flows: 4096,
            queue: 256,
        }
    }
}

/// The bound sockets of one UDP port spec.
#[derive(Debug)]
pub struct UdpListener {
    /// Index into the port specs (and into each session's resolved ports).
    pub spec_index: usize,
    /// The spec as typed (`5353:53/udp`), for messages.
    pub spec: String,
    /// The bound local port.
    pub local_port: u16,
    /// One socket per address.
    pub sockets: Vec<UdpSocket>,
}

fn bind(ip: IpAddr, port: u16) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Room for a burst while flows open their streams (the kernel caps it at rmem_max).
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket
        .bind(&SocketAddr::new(ip, port).into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind: {}", go_errno_text(&e))))?;
    UdpSocket::from_std(socket.into())
}

/// Binds one UDP port on every address with the TCP listeners' rules (`localhost` needs one of
/// its two addresses, explicit addresses all; port 0 is chosen once and reused).
/// `on_bound(address_text, local_port)` runs after each bind.
pub fn bind_port(
    addresses: &[ListenAddress],
    requested: u16,
    on_bound: impl FnMut(&str, u16),
) -> Result<(u16, Vec<UdpSocket>), String> {
    let (port, sockets) = crate::listen::bind_each(addresses, requested, "udp", bind, on_bound)?;
    Ok((port, sockets.into_iter().map(|(_, s)| s).collect()))
}

/// The error printed when a server did not grant the `udp` extension.
pub fn unsupported_text(specs: &[&str]) -> String {
    let (list, verb) = match specs {
        [one] => (one.to_string(), "is"),
        many => (many.join(", "), "are"),
    };
    format!(
        "error: the server does not support UDP forwarding (a porthole extension): {list} {verb} \
         not forwarded; upgrade the node to porthole or use TCP"
    )
}

/// State shared by every UDP socket's tasks.
struct Shared {
    output: Output,
    options: UdpOptions,
    pod_running_timeout: Duration,
    sessions: watch::Receiver<Arc<Vec<Arc<Live>>>>,
    stop: CancellationToken,
    next_flow: AtomicU64,
    /// The last session told it cannot do UDP (one message per session, not per datagram).
    warned_session: Mutex<Option<u64>>,
}

/// A flow as the receive loop sees it.
struct FlowHandle {
    id: u64,
    queue: mpsc::Sender<Bytes>,
    dropped: Arc<AtomicU64>,
}

/// Starts a receive loop per socket on `tracker`; they end when `stop` is cancelled.
pub(crate) fn spawn(
    listeners: Vec<UdpListener>,
    sessions: watch::Receiver<Arc<Vec<Arc<Live>>>>,
    output: Output,
    options: UdpOptions,
    pod_running_timeout: Duration,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let shared = Arc::new(Shared {
        output,
        options,
        pod_running_timeout,
        sessions,
        stop,
        next_flow: AtomicU64::new(0),
        warned_session: Mutex::new(None),
    });
    for l in listeners {
        let spec = Arc::new(l.spec);
        for sock in l.sockets {
            tracker.spawn(receive_loop(
                shared.clone(),
                Arc::new(sock),
                l.spec_index,
                spec.clone(),
                l.local_port,
                tracker.clone(),
            ));
        }
    }
}

async fn receive_loop(
    shared: Arc<Shared>,
    sock: Arc<UdpSocket>,
    spec_index: usize,
    spec: Arc<String>,
    local_port: u16,
    tracker: TaskTracker,
) {
    let mut flows: HashMap<SocketAddr, FlowHandle> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut buf = vec![0u8; porthole_proto::portforward::datagram::MAX_DATAGRAM];
    let mut dropped_no_room = 0u64;
    loop {
        let (n, src) = tokio::select! {
            _ = shared.stop.cancelled() => return,
            Some((src, id)) = ended_rx.recv() => {
                if flows.get(&src).is_some_and(|f| f.id == id) {
                    flows.remove(&src);
                }
                continue;
            }
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ECONNREFUSED from an earlier send_to to a source that went away, and
                    // the like: nothing to do for the socket itself.
                    tracing::debug!(error = %e, local_port, "udp receive failed");
                    continue;
                }
            },
        };
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        if let Some(flow) = flows.get(&src) {
            match flow.queue.try_send(datagram) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    flow.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Ended, its notice not yet read: start a new flow.
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    flows.remove(&src);
                    start_flow(
                        &shared, &sock, &tracker, &ended_tx, &mut flows, spec_index, &spec,
                        local_port, src, d,
                    );
                }
            }
            continue;
        }
        if flows.len() >= shared.options.max_flows {
            dropped_no_room += 1;
            if dropped_no_room.is_power_of_two() {
                tracing::warn!(
                    local_port,
                    flows = flows.len(),
                    dropped = dropped_no_room,
                    "udp flow limit reached; datagrams from new sources are dropped"
                );
            }
            continue;
        }
        start_flow(
            &shared, &sock, &tracker, &ended_tx, &mut flows, spec_index, &spec, local_port, src,
            datagram,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn start_flow(
    shared: &Arc<Shared>,
    sock: &Arc<UdpSocket>,
    tracker: &TaskTracker,
    ended: &mpsc::UnboundedSender<(SocketAddr, u64)>,
    flows: &mut HashMap<SocketAddr, FlowHandle>,
    spec_index: usize,
    spec: &Arc<String>,
    local_port: u16,
    src: SocketAddr,
    first: Bytes,
) {
    let id = shared.next_flow.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(shared.options.queue.max(1));
    let _ = tx.try_send(first);
    let dropped = Arc::new(AtomicU64::new(0));
    flows.insert(
        src,
        FlowHandle {
            id,
            queue: tx,
            dropped: dropped.clone(),
        },
    );
    let flow = Flow {
        shared: shared.clone(),
        sock: sock.clone(),
        spec_index,
        spec: spec.clone(),
        local_port,
        src,
        id,
        dropped,
    };
    let ended = ended.clone();
    tracker.spawn(async move {
        flow.run(rx).await;
        let _ = ended.send((src, id));
    });
}

/// One flow's task.
struct Flow {
    shared: Arc<Shared>,
    sock: Arc<UdpSocket>,
    spec_index: usize,
    spec: Arc<String>,
    local_port: u16,
    src: SocketAddr,
    id: u64,
    dropped: Arc<AtomicU64>,
}

impl Flow {
    /// A live session, waiting (bounded) through a reconnect gap.
    async fn session(&self) -> Option<Arc<Live>> {
        let mut rx = self.shared.sessions.clone();
        let deadline = Instant::now() + self.shared.pod_running_timeout;
        loop {
            {
                let sessions = rx.borrow_and_update();
                let alive: Vec<&Arc<Live>> = sessions
                    .iter()
                    .filter(|l| !l.forwarder.connection().is_closed())
                    .collect();
                if !alive.is_empty() {
                    // Spread flows over balanced sessions by flow number.
                    return Some(alive[self.id as usize % alive.len()].clone());
                }
            }
            tokio::select! {
                _ = self.shared.stop.cancelled() => return None,
                r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                    Ok(Ok(())) => continue,
                    _ => return None,
                },
            }
        }
    }

    async fn run(self, mut queue: mpsc::Receiver<Bytes>) {
        let output = &self.shared.output;
        let Some(live) = self.session().await else {
            return;
        };
        if !live.forwarder.supports_udp() {
            let mut warned = self
                .shared
                .warned_session
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if *warned != Some(live.id) {
                *warned = Some(live.id);
                output.warn(&unsupported_text(&[&self.spec]));
            }
            return;
        }
        let Some(port) = live.ports.get(self.spec_index).copied() else {
            return;
        };
        let mut flow = match live.forwarder.open_udp(port.remote).await {
            Ok(f) => f,
            Err(e) => {
                if !self.shared.stop.is_cancelled() {
                    output.warn(&format!(
                        "error forwarding {} -> {}/udp: {}",
                        self.local_port,
                        port.remote,
                        porthole_relay::error::chain(&e)
                    ));
                }
                return;
            }
        };
        output.event(Event::UdpFlowOpened {
            id: self.id,
            local_port: self.local_port,
            remote_port: port.remote,
            peer: self.src.to_string(),
            pod: live.pod.clone(),
        });
        let idle = self.shared.options.idle_timeout;
        let (mut to_pod, mut from_pod) = (0u64, 0u64);
        let mut deadline = Instant::now() + idle;
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                d = queue.recv() => {
                    let Some(d) = d else { break };
                    if flow.send(&d).await.is_err() {
                        break;
                    }
                    to_pod += 1;
                    deadline = Instant::now() + idle;
                }
                r = flow.recv() => match r {
                    Ok(Some(d)) => {
                        // A failed send_to (the source closed its socket) is UDP as usual.
                        if let Err(e) = self.sock.send_to(&d, self.src).await {
                            tracing::debug!(error = %e, src = %self.src, "udp reply not delivered");
                        }
                        from_pod += 1;
                        deadline = Instant::now() + idle;
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
        // Stop taking datagrams before reading the outcome, so none queue up for nothing.
        queue.close();
        let result = flow.finish().await;
        let error = match &result {
            Err(porthole_relay::portforward::spdy_client::ForwardError::Remote(text)) => {
                Some(text.clone())
            }
            _ => None,
        };
        if let Some(text) = &error {
            if !self.shared.stop.is_cancelled() {
                output.warn(&format!(
                    "an error occurred forwarding {} -> {}/udp: {text}",
                    self.local_port, port.remote
                ));
            }
        }
        output.event(Event::UdpFlowClosed {
            id: self.id,
            local_port: self.local_port,
            remote_port: port.remote,
            datagrams_to_pod: to_pod,
            datagrams_from_pod: from_pod,
            dropped: self.dropped.load(Ordering::Relaxed),
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_text_names_the_specs() {
        assert_eq!(
            unsupported_text(&["5353:53/udp"]),
            "error: the server does not support UDP forwarding (a porthole extension): \
             5353:53/udp is not forwarded; upgrade the node to porthole or use TCP"
        );
        assert!(unsupported_text(&["53/udp", "54/udp"]).contains("53/udp, 54/udp are not"));
    }

    #[tokio::test]
    async fn port_zero_is_shared_across_addresses() {
        let addrs = crate::listen::parse_addresses(&["localhost"]).unwrap();
        let mut seen = Vec::new();
        let (port, socks) = bind_port(&addrs, 0, |a, p| seen.push((a.to_string(), p))).unwrap();
        assert_ne!(port, 0);
        assert!(!socks.is_empty());
        assert!(seen.iter().all(|(_, p)| *p == port));
    }

    #[tokio::test]
    async fn busy_port_fails_with_go_text() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addrs = crate::listen::parse_addresses(&["127.0.0.1"]).unwrap();
        let err = bind_port(&addrs, port, |_, _| {}).unwrap_err();
        assert_eq!(
            err,
            format!(
                "Listeners failed to create with the following errors: [unable to create listener: \
                 Error listen udp4 127.0.0.1:{port}: bind: address already in use]"
            )
        );
    }
}
