//! The port-forward server over SPDY (node side; PROTOCOL.md §4.4): validate each stream,
//! SYN_REPLY, pair error+data streams by `requestid`, dial the pod on a complete pair and relay
//! with half-close both ways.
//!
//! Differences from the Kubernetes streaming library, all on the safe side:
//! - every stream is either read, drained ([`Stream::discard_input`] on error streams) or
//!   reset, so an unread stream can never wedge the connection (§3.8, §9.2);
//! - half-close is honoured for as long as the other direction stays open (no 1 s cut, §4.6);
//! - a duplicate stream is reset (Go leaves it dangling);
//! - copy errors after a successful dial are logged, not sent as error text, because kubectl
//!   ends the whole session on any error text (§4.3 step 10).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use porthole_proto::portforward::{self as pf, Insert, Pair, PairTable, StreamType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::pair::finish_pair;
use crate::copy;
use crate::dial::{ForwardReport, PodDialer};
use crate::spdy::{self, CloseReason, Connection, Role, Stream};

/// Port-forward server settings (SPDY and, for the shared fields, the WebSocket server).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Time allowed between the first and second stream of a pair (Kubernetes: 30 s).
    pub stream_creation_timeout: Duration,
    /// Connection closed after this long without any frame (containerd/kubelet: 4 h).
    pub idle_timeout: Duration,
    /// SPDY/3.1 flow control, only when the upgrade negotiated it (`X-Porthole-Flow-Control`).
    pub flow_control: bool,
    /// Cancelled when the pod is deleted: active pairs end with an error text, new pairs fail
    /// with it; the connection itself lives on (as with a real node).
    pub pod_gone: CancellationToken,
    /// Server keepalive PINGs (Go servers send none).
    pub ping_interval: Option<Duration>,
    /// Peer declared dead when our PING stays unanswered this long (only with `ping_interval`).
    pub ping_timeout: Duration,
    /// Per-stream receive buffer / window.
    pub stream_buffer: usize,
    /// Serve `protocol: udp` pairs as UDP (the `udp` extension was granted in the upgrade).
    /// Off, pairs are TCP whatever their headers say, as on a kubelet.
    pub udp: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            stream_creation_timeout: pf::DEFAULT_STREAM_CREATION_TIMEOUT,
            idle_timeout: Duration::from_secs(4 * 3600),
            flow_control: false,
            pod_gone: CancellationToken::new(),
            ping_interval: None,
            ping_timeout: Duration::from_secs(30),
            stream_buffer: spdy::SessionConfig::default().stream_buffer,
            udp: false,
        }
    }
}

impl ServerConfig {
    /// The SPDY settings this server runs with.
    pub fn spdy_config(&self) -> spdy::Config {
        spdy::Config {
            session: spdy::SessionConfig {
                ping_interval: self.ping_interval,
                ping_timeout: self.ping_timeout,
                idle_timeout: Some(self.idle_timeout),
                flow_control: self.flow_control,
                stream_buffer: self.stream_buffer,
                ..spdy::SessionConfig::default()
            },
            ..spdy::Config::default()
        }
    }
}

/// How a served connection ended badly. EOF, GOAWAY, idle timeout and local shutdown are `Ok`.
/// I/O failures keep the `io::Error` as their source, so a caller logging the chain sees the
/// cause and one matching on the kind need not parse text.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The peer broke the SPDY protocol.
    #[error("spdy protocol error from client: {0}")]
    Protocol(String),
    /// The SPDY connection's transport failed. `Arc` because the session shares one error
    /// with every task waiting on its end ([`CloseReason::Io`]).
    #[error("connection to client failed")]
    Io(#[source] Arc<io::Error>),
    /// Reading a WebSocket message from the client failed.
    #[error("reading from the WebSocket client failed")]
    ReadFromClient(#[source] io::Error),
    /// Writing a WebSocket message to the client failed.
    #[error("writing to the WebSocket client failed")]
    WriteToClient(#[source] io::Error),
    /// The task writing to the WebSocket client panicked or was cancelled.
    #[error("WebSocket writer task failed")]
    WriterTask(#[source] tokio::task::JoinError),
    /// Our keepalive PINGs went unanswered.
    #[error("client stopped answering pings")]
    PingTimeout,
}

static CONN_SEQ: AtomicU64 = AtomicU64::new(1);

/// Serves one upgraded SPDY port-forward connection until it ends.
pub async fn serve<T>(
    io: T,
    dialer: Arc<dyn PodDialer>,
    cfg: ServerConfig,
) -> Result<(), ServeError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (conn, mut incoming) = Connection::new(io, Role::Server, cfg.spdy_config());
    // Only used in the timeout text, which clients must not parse (Go prints a pointer).
    let conn_label = format!("0xc{:09x}", CONN_SEQ.fetch_add(1, Ordering::Relaxed) << 8);
    let mut table: PairTable<Stream> = PairTable::new(conn_label, cfg.stream_creation_timeout);
    let mut tasks = JoinSet::new();
    // Request ids whose data stream asked for UDP (only when the extension was granted).
    let mut udp_requests = std::collections::HashSet::new();
    loop {
        let deadline = table.next_deadline().map(Instant::from_std);
        tokio::select! {
            s = incoming.next() => {
                let Some(s) = s else { break };
                let info = match pf::parse_stream_headers(s.id(), s.headers()) {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::warn!(stream = s.id(), error = %e, "rejecting port-forward stream");
                        s.reject();
                        continue;
                    }
                };
                if cfg.udp && info.stream_type == StreamType::Data && pf::datagram::is_udp(s.headers()) {
                    udp_requests.insert(info.request_id.clone());
                }
                let mut stream = s.accept();
                if info.stream_type == StreamType::Error {
                    // Clients never write to the error stream; never let it fill up.
                    stream.discard_input();
                }
                match table.insert(Instant::now().into_std(), &info, stream) {
                    Insert::Pending => {}
                    Insert::Duplicate { mut stream, message } => {
                        tracing::warn!(request = %info.request_id, "{message}");
                        if let Some(es) = table.error_stream_mut(&info.request_id) {
                            let _ = es.send_now(message.as_bytes());
                        }
                        stream.reset();
                    }
                    Insert::Complete(pair) => {
                        let span = tracing::debug_span!("pair", request = %pair.request_id, port = pair.port);
                        if udp_requests.remove(&pair.request_id) {
                            tasks.spawn(super::udp::forward_pair(pair, dialer.clone(), cfg.pod_gone.clone()).instrument(span));
                        } else {
                            tasks.spawn(forward_pair(pair, dialer.clone(), cfg.pod_gone.clone()).instrument(span));
                        }
                    }
                }
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                for ex in table.expire(Instant::now().into_std()) {
                    udp_requests.remove(&ex.request_id);
                    tracing::warn!(request = %ex.request_id, "{}", ex.message);
                    if let Some(mut e) = ex.error {
                        let _ = e.send_now(ex.message.as_bytes());
                        let _ = e.shutdown().await;
                    }
                    if let Some(mut d) = ex.data {
                        d.reset();
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(table);
    let reason = conn.closed().await;
    // In-flight forwards see their streams fail; let them end on their own but not outlive
    // the connection by much.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    tracing::debug!(%reason, "port-forward connection ended");
    match reason {
        CloseReason::Protocol(e) => Err(ServeError::Protocol(e)),
        CloseReason::Io(e) => Err(ServeError::Io(e)),
        CloseReason::PingTimeout => Err(ServeError::PingTimeout),
        CloseReason::Local
        | CloseReason::GoAway(_)
        | CloseReason::Eof
        | CloseReason::IdleTimeout => Ok(()),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn forward_pair(pair: Pair<Stream>, dialer: Arc<dyn PodDialer>, pod_gone: CancellationToken) {
    let Pair {
        port,
        mut error,
        mut data,
        ..
    } = pair;
    let pod_id = dialer.pod_id();
    let gone = || format!("pod {pod_id} was deleted");
    let outcome: Result<(), String> = if pod_gone.is_cancelled() {
        Err(gone())
    } else {
        // `biased`, pod first: the node cancels `pod_gone` before it kills the pod's
        // processes, so when both are ready the deletion, not the socket close it caused, is
        // what the client is told.
        tokio::select! {
            biased;
            _ = pod_gone.cancelled() => Err(gone()),
            r = dialer.dial(port) => match r {
                Err(e) => Err(e.to_string()),
                Ok(mut sock) => {
                    let mut report = ForwardReport::new(dialer.clone(), port);
                    let _ = sock.set_nodelay(true);
                    tokio::select! {
                        biased;
                        _ = pod_gone.cancelled() => Err(gone()),
                        r = copy::relay_finishing_counted(&mut data, &mut sock, &mut error, &mut report.moved) => {
                            match r {
                                Ok(()) => tracing::debug!(to_pod = report.moved.a_to_b, from_pod = report.moved.b_to_a, "forward finished"),
                                // Not sent as error text: kubectl would end the whole session.
                                Err(e) => tracing::debug!(error = %e, "forward ended with an error"),
                            }
                            Ok(())
                        }
                    }
                }
            },
        }
    };
    finish_pair(data, error, outcome, port, &pod_id).await;
}
