//! A client of the WebSocket channel protocol (PROTOCOL.md §5), over a connection that already
//! completed the upgrade (`porthole_proto::handshake::ws_channel_request_headers` and
//! `check_ws_channel_response`).
//!
//! [`ChannelClient::connect`] starts a driver task, waits until the server's port prefix has
//! arrived on every channel (and matches the requested port), and returns one [`PortChannel`]
//! per port. A `PortChannel` sends and receives that port's bytes, reports the node's error
//! text, and can [`PortChannel::forward`] a local TCP connection. With `v5.channel.k8s.io` a
//! local EOF is passed on as the close signal (half-close); the older protocols have none, so
//! the forward then waits for the server to finish.

use std::io;

use bytes::{Bytes, BytesMut};
use porthole_proto::ws::channel::{data_channel, ChannelError, ClientDemux, ClientInbound};
use porthole_proto::ws::frame::DataKind;
use porthole_proto::ws::{ChannelProtocol, CloseCode, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::ws::{Role, WsReader, WsWriter};

/// Largest chunk sent as one message, as the Kubernetes clients do (32 KiB).
const SEND_CHUNK: usize = 32 << 10;

/// Why the channel client failed.
#[derive(Debug, thiserror::Error)]
pub enum WsClientError {
    /// Reading the WebSocket failed (or the server broke the framing rules).
    #[error("reading from the WebSocket server failed")]
    ReadFromServer(#[source] io::Error),
    /// Writing the WebSocket failed.
    #[error("writing to the WebSocket server failed")]
    WriteToServer(#[source] io::Error),
    /// The server broke the channel protocol (bad port prefix, unknown channel, wrong type).
    #[error("the server broke the WebSocket channel protocol")]
    Protocol(#[source] ChannelError),
    /// The WebSocket ended before every channel's port prefix arrived.
    #[error("the WebSocket closed before the server confirmed every port; check the node's logs")]
    ClosedBeforeReady,
    /// The node reported an error for this port (`error forwarding port …`).
    #[error("{0}")]
    Remote(String),
    /// The WebSocket connection has ended; nothing more can be sent.
    #[error("the WebSocket connection is closed")]
    Closed,
    /// Half-close was requested on a protocol without the v5 close signal.
    #[error("cannot half-close: {0:?} has no close signal; negotiate v5.channel.k8s.io")]
    NoCloseSignal(ChannelProtocol),
    /// Reading the local connection failed.
    #[error("reading from the local connection failed")]
    ReadFromLocal(#[source] io::Error),
    /// Writing the local connection failed.
    #[error("writing to the local connection failed")]
    WriteToLocal(#[source] io::Error),
}

/// What a port receives from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortEvent {
    /// Bytes from the pod.
    Data(Bytes),
    /// Error text from the node; the forward of this port has failed.
    Error(String),
}

#[derive(Debug)]
enum ClientOut {
    Data { channel: u8, bytes: Bytes },
    CloseSignal(u8),
    Pong(Bytes),
    Close,
}

/// Handle on a channel-protocol connection: closes it and reports how it ended.
#[derive(Debug)]
pub struct ChannelClient {
    out: mpsc::Sender<ClientOut>,
    driver: tokio::task::JoinHandle<Result<(), WsClientError>>,
}

/// One forwarded port of a [`ChannelClient`].
#[derive(Debug)]
pub struct PortChannel {
    index: usize,
    port: u16,
    proto: ChannelProtocol,
    out: mpsc::Sender<ClientOut>,
    events: mpsc::Receiver<PortEvent>,
}

impl ChannelClient {
    /// Starts the client on an upgraded connection for `ports` (the query's order) and waits
    /// for the port prefixes of §5.4.
    pub async fn connect<T>(
        io: T,
        proto: ChannelProtocol,
        ports: Vec<u16>,
    ) -> Result<(ChannelClient, Vec<PortChannel>), WsClientError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let mut port_txs = Vec::with_capacity(ports.len());
        let mut channels = Vec::with_capacity(ports.len());
        for (index, &port) in ports.iter().enumerate() {
            let (tx, rx) = mpsc::channel(64);
            port_txs.push(tx);
            channels.push(PortChannel {
                index,
                port,
                proto,
                out: out_tx.clone(),
                events: rx,
            });
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        let writer = tokio::spawn(client_write_loop(
            WsWriter::new(wr, Role::Client),
            proto,
            out_rx,
        ));
        let reader = WsReader::new(rd, Role::Client);
        let demux = ClientDemux::new(proto, ports);
        let driver = tokio::spawn(client_read_loop(
            reader,
            demux,
            port_txs,
            out_tx.clone(),
            ready_tx,
            writer,
        ));
        match ready_rx.await {
            Ok(()) => Ok((
                ChannelClient {
                    out: out_tx,
                    driver,
                },
                channels,
            )),
            Err(_) => Err(match driver.await {
                Ok(Err(e)) => e,
                _ => WsClientError::ClosedBeforeReady,
            }),
        }
    }

    /// Sends Close 1000 and waits until the server answers and the connection ends.
    pub async fn close(self) -> Result<(), WsClientError> {
        let ChannelClient { out, driver } = self;
        let _ = out.send(ClientOut::Close).await;
        drop(out);
        ChannelClient::join(driver).await
    }

    /// Waits until the server ends the connection (for a single port: the pod connection
    /// ended), without closing it from this side.
    pub async fn wait(self) -> Result<(), WsClientError> {
        ChannelClient::join(self.driver).await
    }

    async fn join(
        driver: tokio::task::JoinHandle<Result<(), WsClientError>>,
    ) -> Result<(), WsClientError> {
        match driver.await {
            Ok(r) => r,
            Err(e) => Err(WsClientError::ReadFromServer(io::Error::other(format!(
                "WebSocket client task failed: {e}"
            )))),
        }
    }
}

async fn client_write_loop<W: AsyncWrite + Unpin>(
    mut ws: WsWriter<W>,
    proto: ChannelProtocol,
    mut rx: mpsc::Receiver<ClientOut>,
) -> io::Result<()> {
    while let Some(out) = rx.recv().await {
        match out {
            ClientOut::Data { channel, bytes } => ws.send_channel(proto, channel, &bytes).await?,
            ClientOut::CloseSignal(ch) => ws.send_close_signal(ch).await?,
            ClientOut::Pong(p) => ws.send(&Message::Pong(p)).await?,
            ClientOut::Close => return ws.close(CloseCode::NORMAL, "").await,
        }
    }
    Ok(())
}

async fn client_read_loop<R: AsyncRead + Unpin>(
    mut reader: WsReader<R>,
    mut demux: ClientDemux,
    port_txs: Vec<mpsc::Sender<PortEvent>>,
    out: mpsc::Sender<ClientOut>,
    ready: oneshot::Sender<()>,
    writer: tokio::task::JoinHandle<io::Result<()>>,
) -> Result<(), WsClientError> {
    let mut ready = Some(ready);
    let mut server_closed = false;
    let result = loop {
        let (kind, payload) = match reader.next().await {
            Ok(Some(Message::Binary(p))) => (DataKind::Binary, p),
            Ok(Some(Message::Text(p))) => (DataKind::Text, p),
            Ok(Some(Message::Ping(p))) => {
                let _ = out.send(ClientOut::Pong(p)).await;
                continue;
            }
            Ok(Some(Message::Pong(_))) => continue,
            Ok(Some(Message::Close(c))) => {
                debug!(close = ?c, "server closed the WebSocket");
                server_closed = true;
                let _ = out.send(ClientOut::Close).await;
                break match c {
                    Some(c) if c.code != CloseCode::NORMAL && c.code != CloseCode::GOING_AWAY => {
                        Err(WsClientError::ReadFromServer(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!(
                                "WebSocket closed by the server with status {}: {}",
                                c.code, c.reason
                            ),
                        )))
                    }
                    _ => Ok(()),
                };
            }
            Ok(None) => {
                break Err(WsClientError::ReadFromServer(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without a WebSocket Close frame",
                )))
            }
            Err(e) => break Err(WsClientError::ReadFromServer(e)),
        };
        match demux.handle(kind, &payload) {
            Ok(ClientInbound::PortPrefix { .. }) => {
                if demux.all_prefixes_seen() {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
            }
            Ok(ClientInbound::Data {
                port_index,
                payload,
            }) => {
                // A dropped PortChannel no longer wants data.
                let _ = port_txs[port_index].send(PortEvent::Data(payload)).await;
            }
            Ok(ClientInbound::Error { port_index, text }) => {
                let text = String::from_utf8_lossy(&text).into_owned();
                let _ = port_txs[port_index].send(PortEvent::Error(text)).await;
            }
            Ok(ClientInbound::Empty) => {}
            Err(e) => break Err(WsClientError::Protocol(e)),
        }
    };
    drop(port_txs);
    drop(out);
    if result.is_err() {
        // PortChannels still hold senders, so the writer would wait for them forever.
        writer.abort();
    }
    // Let the writer finish the Close it may have been asked to send.
    match writer.await {
        // After the server's Close our reply may find the socket gone; that is not an error.
        Ok(Err(e)) if result.is_ok() && !server_closed => Err(WsClientError::WriteToServer(e)),
        _ if ready.is_some() && result.is_ok() => Err(WsClientError::ClosedBeforeReady),
        _ => result,
    }
}

impl PortChannel {
    /// The remote port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends bytes to the pod (in messages of ≤ 32 KiB).
    pub async fn send(&self, data: &[u8]) -> Result<(), WsClientError> {
        for chunk in data.chunks(SEND_CHUNK) {
            self.out
                .send(ClientOut::Data {
                    channel: data_channel(self.index),
                    bytes: Bytes::copy_from_slice(chunk),
                })
                .await
                .map_err(|_| WsClientError::Closed)?;
        }
        Ok(())
    }

    /// Tells the node this side will send no more (v5 close signal; the node half-closes its
    /// pod connection). Fails on protocols without the signal.
    pub async fn close_write(&self) -> Result<(), WsClientError> {
        if !self.proto.has_close_signal() {
            return Err(WsClientError::NoCloseSignal(self.proto));
        }
        self.out
            .send(ClientOut::CloseSignal(data_channel(self.index)))
            .await
            .map_err(|_| WsClientError::Closed)
    }

    /// The next event; `None` once the WebSocket has ended.
    pub async fn recv(&mut self) -> Option<PortEvent> {
        self.events.recv().await
    }

    /// Relays a local TCP connection through this port until the server is done with it.
    /// Local EOF becomes the v5 close signal where available. Returns the node's error text
    /// as [`WsClientError::Remote`].
    pub async fn forward(mut self, local: TcpStream) -> Result<(), WsClientError> {
        let (mut local_rd, mut local_wr) = local.into_split();
        let out = self.out.clone();
        let (index, proto) = (self.index, self.proto);
        let local_to_ws = async move {
            let mut buf = BytesMut::with_capacity(SEND_CHUNK);
            loop {
                buf.reserve(SEND_CHUNK);
                let n = (&mut local_rd)
                    .take(SEND_CHUNK as u64)
                    .read_buf(&mut buf)
                    .await
                    .map_err(WsClientError::ReadFromLocal)?;
                if n == 0 {
                    if proto.has_close_signal() {
                        let _ = out.send(ClientOut::CloseSignal(data_channel(index))).await;
                    }
                    return Ok(());
                }
                let bytes = buf.split().freeze();
                out.send(ClientOut::Data {
                    channel: data_channel(index),
                    bytes,
                })
                .await
                .map_err(|_| WsClientError::Closed)?;
            }
        };
        let ws_to_local = async {
            while let Some(ev) = self.events.recv().await {
                match ev {
                    PortEvent::Data(b) => local_wr
                        .write_all(&b)
                        .await
                        .map_err(WsClientError::WriteToLocal)?,
                    PortEvent::Error(text) => return Err(WsClientError::Remote(text)),
                }
            }
            let _ = local_wr.shutdown().await;
            Ok(())
        };
        tokio::pin!(local_to_ws, ws_to_local);
        let mut local_done = false;
        loop {
            tokio::select! {
                r = &mut local_to_ws, if !local_done => {
                    r?;
                    local_done = true;
                }
                r = &mut ws_to_local => return r,
            }
        }
    }
}
