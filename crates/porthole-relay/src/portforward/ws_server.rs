//! The node side of the WebSocket channel protocol (PROTOCOL.md §5): one WebSocket, a fixed
//! list of ports, one pod connection per port.
//!
//! Sequence (as the Kubernetes streaming library): write the 2-byte port prefix on every
//! channel, dial every port at once, then relay `2i` ⇄ the pod connection of `ports[i]`. A
//! failed dial or copy writes `error forwarding port P to pod ID, uid : CAUSE` on channel
//! `2i+1`; a port whose pod connection ended is closed internally without telling the client;
//! when every port is done the WebSocket is closed (Close 1000). Additions over Kubernetes:
//! the v5 close signal `0xFF, 2i` half-closes the pod connection (the client will send no
//! more), and a pod that closes its side gets up to [`POD_EOF_GRACE`] for the client's last
//! bytes, as containerd allows.
//!
//! Tasks: this function reads client messages; a writer task owns the socket's write half
//! and serialises everything sent (port prefixes first); one task per port owns its pod
//! connection.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use porthole_proto::ws::channel::{
    data_channel, error_channel, port_prefix, Dropped, ServerDemux, ServerInbound, MAX_PORTS,
};
use porthole_proto::ws::{ChannelProtocol, CloseCode, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, trace, warn, Instrument};

use super::spdy_server::{ServeError, ServerConfig};
use crate::copy::Transferred;
use crate::dial::{ForwardReport, PodDialer};
use crate::ws::{Role, WsReader, WsWriter};

/// How long a port's forward keeps accepting client bytes after the pod closed its side.
pub const POD_EOF_GRACE: Duration = Duration::from_secs(1);

/// How long we wait for the client's Close reply after closing, before dropping the socket.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest pod read forwarded as one message (Kubernetes copies with 32 KiB buffers).
const POD_READ_CHUNK: usize = 32 << 10;

/// Client messages queued per port before the reader waits for that pod connection.
const TO_POD_QUEUE: usize = 32;

/// Messages queued for the writer task.
const OUTBOUND_QUEUE: usize = 64;

/// What the port tasks and the reader ask the writer task to send.
#[derive(Debug)]
enum Outbound {
    Data { channel: u8, bytes: Bytes },
    Pong(Bytes),
    Close(CloseCode, &'static str),
}

/// What the reader hands a port task.
#[derive(Debug)]
enum ToPod {
    Data(Bytes),
    /// v5 close signal: the client sends no more on this port.
    Close,
}

/// Last time a message went either way, for the idle timeout.
#[derive(Debug, Clone)]
struct Activity(Arc<Mutex<Instant>>);

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(Mutex::new(Instant::now())))
    }
    fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Instant::now();
        }
    }
    fn last(&self) -> Instant {
        self.0
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|p| *p.into_inner())
    }
}

/// Serves the channel protocol on an upgraded connection until every port is done, the client
/// closes or the connection fails (PROTOCOL.md §5). `proto` and `ports` come from
/// `porthole_proto::handshake::negotiate_server`.
///
/// From `cfg` this uses `idle_timeout` (no message either way → Close 1001, `Ok`) and
/// `pod_gone` (every active port gets `error forwarding port P to pod ID, uid : pod ID was
/// deleted`, as the SPDY server writes, and so ends; then the WebSocket closes). A client
/// Close, EOF, or the end of every port is `Ok`; framing violations are
/// [`ServeError::Protocol`], transport failures [`ServeError::ReadFromClient`] and
/// [`ServeError::WriteToClient`].
pub async fn serve<T>(
    io: T,
    proto: ChannelProtocol,
    ports: Vec<u16>,
    dialer: Arc<dyn PodDialer>,
    cfg: ServerConfig,
) -> Result<(), ServeError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if ports.len() > MAX_PORTS {
        // The handshake refuses this; reaching here is caller misuse, reported, not panicked.
        return Err(ServeError::Protocol(format!(
            "{} ports requested; one WebSocket carries at most {MAX_PORTS}",
            ports.len()
        )));
    }
    let (rd, wr) = tokio::io::split(io);
    let mut reader = WsReader::new(rd, Role::Server);
    let activity = Activity::new();
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let mut writer = tokio::spawn(
        write_loop(
            WsWriter::new(wr, Role::Server),
            proto,
            ports.clone(),
            out_rx,
            activity.clone(),
        )
        .in_current_span(),
    );

    let demux = ServerDemux::new(proto, ports.len());
    let pod_id = dialer.pod_id();
    let mut to_pod = Vec::with_capacity(ports.len());
    let mut forwards = JoinSet::new();
    for (index, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel(TO_POD_QUEUE);
        to_pod.push(tx);
        let fwd = PortForward {
            index,
            port,
            pod_id: pod_id.clone(),
            out: out_tx.clone(),
            from_client: rx,
        };
        forwards.spawn(
            fwd.run(dialer.clone(), cfg.pod_gone.clone())
                .instrument(debug_span!("ws_port", port, index)),
        );
    }

    let mut idle = std::pin::pin!(tokio::time::sleep(cfg.idle_timeout));
    let outcome: Result<(CloseCode, &'static str), ServeError> = loop {
        tokio::select! {
            msg = reader.next() => {
                activity.touch();
                match msg {
                    Ok(Some(Message::Binary(p) | Message::Text(p))) => {
                        match demux.handle(&p) {
                            ServerInbound::Data { port_index, payload } => {
                                // A port whose forward ended drops its receiver: the bytes go
                                // to a closed pipe, as in Kubernetes.
                                if to_pod[port_index].send(ToPod::Data(payload)).await.is_err() {
                                    trace!(port_index, "data for a finished port dropped");
                                }
                            }
                            ServerInbound::CloseSignal { port_index } => {
                                debug!(port_index, "client close signal: half-closing toward the pod");
                                let _ = to_pod[port_index].send(ToPod::Close).await;
                            }
                            ServerInbound::Dropped(why) => log_dropped(&why),
                        }
                    }
                    Ok(Some(Message::Ping(p))) => {
                        let _ = out_tx.send(Outbound::Pong(p)).await;
                    }
                    Ok(Some(Message::Pong(_))) => {}
                    Ok(Some(Message::Close(c))) => {
                        debug!(close = ?c, "client closed the WebSocket");
                        // Echo the status as RFC 6455 §5.5.1 asks; no status → 1000.
                        let code = c.map(|c| c.code).unwrap_or(CloseCode::NORMAL);
                        forwards.abort_all();
                        let _ = out_tx.send(Outbound::Close(code, "")).await;
                        drop(out_tx);
                        // The client may drop the socket right after its Close; a failed
                        // reply is then expected, not an error.
                        if let Err(e) = finish_writer(&mut writer).await {
                            debug!(error = %e, "could not answer the client's Close");
                        }
                        return Ok(());
                    }
                    Ok(None) => {
                        // Like EOF on a SPDY connection: the client went away; not our error.
                        debug!("client closed the connection without a WebSocket Close frame");
                        forwards.abort_all();
                        drop(out_tx);
                        let _ = finish_writer(&mut writer).await;
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        warn!(error = %e, "WebSocket client broke the protocol");
                        let _ = out_tx.send(Outbound::Close(CloseCode::PROTOCOL_ERROR, "")).await;
                        break Err(ServeError::Protocol(e.to_string()));
                    }
                    Err(e) => {
                        break Err(ServeError::ReadFromClient(e));
                    }
                }
            }
            done = forwards.join_next() => match done {
                Some(_) => {}
                None => {
                    debug!("every port finished; closing the WebSocket");
                    break Ok((CloseCode::NORMAL, ""));
                }
            },
            () = &mut idle => {
                let deadline = activity.last() + cfg.idle_timeout;
                if deadline > Instant::now() {
                    idle.as_mut().reset(deadline);
                } else {
                    // As for SPDY connections, an idle timeout is a normal end.
                    debug!(timeout = ?cfg.idle_timeout, "no WebSocket traffic; closing the idle connection");
                    break Ok((CloseCode::GOING_AWAY, "idle timeout"));
                }
            }
        }
    };
    forwards.abort_all();
    drop(to_pod);
    match outcome {
        Ok((code, reason)) => {
            let _ = out_tx.send(Outbound::Close(code, reason)).await;
            drop(out_tx);
            let written = finish_writer(&mut writer).await;
            // RFC 6455 §7.1.1: let the client answer our Close before the socket goes, so
            // unread client bytes do not turn our close into a reset that hides the Close.
            let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
                while let Ok(Some(msg)) = reader.next().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
            written
        }
        Err(e) => {
            drop(out_tx);
            let _ = finish_writer(&mut writer).await;
            Err(e)
        }
    }
}

async fn finish_writer(
    writer: &mut tokio::task::JoinHandle<io::Result<()>>,
) -> Result<(), ServeError> {
    match writer.await {
        Ok(r) => r.map_err(ServeError::WriteToClient),
        Err(e) => Err(ServeError::WriterTask(e)),
    }
}

fn log_dropped(why: &Dropped) {
    match why {
        Dropped::BadBase64 { channel } => {
            warn!(channel, "client message is not valid base64; dropped")
        }
        Dropped::ErrorChannel { port_index } => {
            debug!(port_index, "client wrote to an error channel; dropped")
        }
        other => trace!(?other, "client message dropped"),
    }
}

/// Owns the write half: port prefixes first (§5.4), then whatever the other tasks send.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut ws: WsWriter<W>,
    proto: ChannelProtocol,
    ports: Vec<u16>,
    mut rx: mpsc::Receiver<Outbound>,
    activity: Activity,
) -> io::Result<()> {
    for (i, &port) in ports.iter().enumerate() {
        ws.send_channel(proto, data_channel(i), &port_prefix(port))
            .await?;
        ws.send_channel(proto, error_channel(i), &port_prefix(port))
            .await?;
    }
    while let Some(out) = rx.recv().await {
        activity.touch();
        match out {
            Outbound::Data { channel, bytes } => ws.send_channel(proto, channel, &bytes).await?,
            Outbound::Pong(p) => ws.send(&Message::Pong(p)).await?,
            Outbound::Close(code, reason) => return ws.close(code, reason).await,
        }
    }
    // Every sender is gone without a Close: the server is being torn down.
    ws.close(CloseCode::NORMAL, "").await
}

/// One port: dial, then relay both directions; error text on failure.
struct PortForward {
    index: usize,
    port: u16,
    pod_id: String,
    out: mpsc::Sender<Outbound>,
    from_client: mpsc::Receiver<ToPod>,
}

impl PortForward {
    async fn run(mut self, dialer: Arc<dyn PodDialer>, pod_gone: CancellationToken) {
        let gone = format!("pod {} was deleted", self.pod_id);
        let failure = if pod_gone.is_cancelled() {
            Some(gone)
        } else {
            tokio::select! {
                r = dialer.dial(self.port) => match r {
                    Err(e) => {
                        debug!(error = %e, "dial failed");
                        Some(e.to_string())
                    }
                    Ok(conn) => {
                        let mut report = ForwardReport::new(dialer.clone(), self.port);
                        let _ = conn.set_nodelay(true);
                        tokio::select! {
                            f = self.relay(conn, &mut report.moved) => f,
                            () = pod_gone.cancelled() => Some(gone),
                        }
                    }
                },
                () = pod_gone.cancelled() => Some(gone),
            }
        };
        if let Some(cause) = failure {
            debug!(%cause, "forward failed");
            self.report(&cause).await;
        }
    }

    /// Relays until the pod connection ends; `Some(cause)` when a copy failed. `moved` counts
    /// the bytes written each way (`a_to_b` = to the pod) as they go.
    async fn relay(&mut self, conn: TcpStream, moved: &mut Transferred) -> Option<String> {
        debug!("connected to the pod");
        let (mut pod_rd, mut pod_wr) = conn.into_split();
        let to_pod = &mut moved.a_to_b;
        let from_pod = &mut moved.b_to_a;
        let data_ch = data_channel(self.index);
        let out = self.out.clone();
        let from_client = &mut self.from_client;

        let pod_to_client = async {
            let mut buf = BytesMut::with_capacity(POD_READ_CHUNK);
            loop {
                buf.reserve(POD_READ_CHUNK);
                let n = (&mut pod_rd)
                    .take(POD_READ_CHUNK as u64)
                    .read_buf(&mut buf)
                    .await?;
                if n == 0 {
                    return Ok::<(), io::Error>(());
                }
                *from_pod += n as u64;
                let bytes = buf.split().freeze();
                if out
                    .send(Outbound::Data {
                        channel: data_ch,
                        bytes,
                    })
                    .await
                    .is_err()
                {
                    // The writer is gone: the WebSocket is closing.
                    return Ok(());
                }
            }
        };
        let client_to_pod = async {
            while let Some(msg) = from_client.recv().await {
                match msg {
                    ToPod::Data(b) => {
                        pod_wr.write_all(&b).await?;
                        *to_pod += b.len() as u64;
                    }
                    ToPod::Close => break,
                }
            }
            pod_wr.shutdown().await
        };
        let failure = {
            tokio::pin!(pod_to_client, client_to_pod);
            let mut client_done = false;
            loop {
                tokio::select! {
                    r = &mut pod_to_client => match r {
                        Ok(()) => {
                            debug!("pod closed its side");
                            if !client_done {
                                // containerd gives the other direction ≤ 1 s; so do we.
                                match tokio::time::timeout(POD_EOF_GRACE, &mut client_to_pod).await {
                                    Ok(Err(e)) if e.kind() != io::ErrorKind::BrokenPipe
                                        && e.kind() != io::ErrorKind::ConnectionReset => {
                                        debug!(error = %e, "writing to the pod after its EOF failed");
                                    }
                                    _ => {}
                                }
                            }
                            break None;
                        }
                        Err(e) => break Some(format!("error reading from the pod: {e}")),
                    },
                    r = &mut client_to_pod, if !client_done => match r {
                        Ok(()) => {
                            debug!("client finished sending; pod write side shut down");
                            client_done = true;
                        }
                        Err(e) => break Some(format!("error writing to the pod: {e}")),
                    },
                }
            }
        };
        failure
    }

    /// Writes the Kubernetes error text on this port's error channel (§5.5, §4.5).
    async fn report(&self, cause: &str) {
        let text = format!(
            "error forwarding port {} to pod {}, uid : {}",
            self.port, self.pod_id, cause
        );
        let _ = self
            .out
            .send(Outbound::Data {
                channel: error_channel(self.index),
                bytes: Bytes::from(text),
            })
            .await;
    }
}
