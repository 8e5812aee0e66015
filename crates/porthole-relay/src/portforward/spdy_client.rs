//! The port-forward client over SPDY (PROTOCOL.md §4.3), client-go's procedure step for step:
//! error stream (half-closed at once, read in the background), data stream, relay with
//! half-close, reset the data stream, then the error text decides the outcome.
//!
//! Unlike kubectl, an error text does not close the connection here: the caller decides
//! (`porthole port-forward` mirrors kubectl by calling [`PortForwarder::shutdown`]).

use std::io;

use porthole_proto::portforward::{self as pf, RequestIds, StreamType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::copy;
use crate::spdy::{self, CloseReason, Connection, Role, Stream, StreamOpenError, StreamStart};

/// Longest error text kept (the rest is read and dropped).
const MAX_ERROR_TEXT: usize = 64 * 1024;

/// Bytes moved by one forwarded connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardReport {
    /// Pod → local.
    pub bytes_in: u64,
    /// Local → pod.
    pub bytes_out: u64,
}

/// Why one forwarded connection failed (the SPDY connection itself stays up).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// SYN_STREAM for the error stream failed.
    #[error("error creating error stream")]
    CreateErrorStream(#[source] StreamOpenError),
    /// SYN_STREAM for the data stream failed.
    #[error("error creating forwarding stream")]
    CreateDataStream(#[source] StreamOpenError),
    /// Reading the error stream failed (the connection broke).
    #[error("error reading from error stream")]
    ReadErrorStream(#[source] io::Error),
    /// Copying between the local socket and the data stream failed.
    #[error("error copying data")]
    Copy(#[source] io::Error),
    /// The server sent an error text (e.g. `error forwarding port 80 to pod …, uid : …`).
    #[error("{0}")]
    Remote(String),
}

/// A port-forward client on one upgraded SPDY connection.
#[derive(Debug)]
pub struct PortForwarder {
    conn: Connection,
    ids: RequestIds,
    /// Send before the SYN_REPLYs arrive (see [`PortForwarder::forward`]).
    early_data: bool,
    /// The upgrade granted the `udp` extension ([`PortForwarder::open_udp`]).
    udp: bool,
}

impl PortForwarder {
    /// Starts the SPDY session (client role) over an upgraded connection. Use
    /// `spdy::Config::client()` (PING every 5 s) for raw SPDY, 10 s inside the WebSocket tunnel.
    ///
    /// With `cfg.session.flow_control` (negotiated, so the far end is a porthole node, which buffers
    /// every accepted stream within its window) each forward sends its data right behind the
    /// SYN_STREAMs instead of waiting a round trip for the replies. Go servers (spdystream)
    /// park a frame worker on data nobody reads yet, so towards them the client waits, as
    /// client-go does.
    pub fn new<T>(io: T, cfg: spdy::Config) -> PortForwarder
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let early_data = cfg.session.flow_control;
        // Servers never open streams in port-forward; dropping `Incoming` rejects any.
        let (conn, _incoming) = Connection::new(io, Role::Client, cfg);
        PortForwarder {
            conn,
            ids: RequestIds::new(),
            early_data,
            udp: false,
        }
    }

    /// Marks the connection as one whose upgrade granted the `udp` extension.
    pub fn with_udp(mut self, granted: bool) -> PortForwarder {
        self.udp = granted;
        self
    }

    /// Whether the server granted UDP forwarding (`X-Porthole-Extensions: udp`).
    pub fn supports_udp(&self) -> bool {
        self.udp
    }

    /// The next `requestid` of this connection.
    pub(crate) fn next_request_id(&self) -> u64 {
        self.ids.next_id()
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Whether [`PortForwarder::forward_with_prefix`] sends its prefix in the same flight as
    /// the SYN_STREAMs (porthole nodes); otherwise it follows the replies, as with client-go.
    pub fn sends_early_data(&self) -> bool {
        self.early_data
    }

    /// Forwards one accepted local connection to `remote_port` in the pod. Nothing is read
    /// from `local` before the streams are replied to, so after a `Create*Stream` error the
    /// caller can retry `local` on another connection.
    pub async fn forward<L>(
        &self,
        local: L,
        remote_port: u16,
    ) -> Result<ForwardReport, ForwardError>
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        self.forward_with_prefix(local, remote_port, &[]).await
    }

    /// [`PortForwarder::forward`], where `prefix` was already read from `local` (see
    /// [`take_ready_bytes`]) and is sent first: towards porthole nodes in the same flight as
    /// the SYN_STREAMs. After a `Create*Stream` error the caller can retry `local` with the
    /// same prefix (the node may have seen it: as with any client retry, the pod then sees
    /// the first connection die and the request again on a new one).
    pub async fn forward_with_prefix<L>(
        &self,
        mut local: L,
        remote_port: u16,
        prefix: &[u8],
    ) -> Result<ForwardReport, ForwardError>
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        let request_id = self.ids.next_id();
        let headers = |t| {
            pf::stream_headers(t, remote_port, request_id)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        };
        // Both SYN_STREAMs go out back to back and the replies are awaited together: one round
        // trip before data can flow instead of kubectl's two (it waits for each reply in turn).
        // With early data, the error stream's FIN and the prefix share that first flight.
        let (mut error, mut data, unsent) = if self.early_data {
            let mut opened = self
                .conn
                .start_streams(vec![
                    StreamStart {
                        headers: headers(StreamType::Error),
                        data: &[],
                        fin: true,
                    },
                    StreamStart {
                        headers: headers(StreamType::Data),
                        data: prefix,
                        fin: false,
                    },
                ])
                .map_err(ForwardError::CreateErrorStream)?;
            let (data, taken) = opened.pop().expect("two streams");
            let (error, _) = opened.pop().expect("two streams");
            (error, data, &prefix[taken..])
        } else {
            let error = self
                .conn
                .start_stream(headers(StreamType::Error))
                .map_err(ForwardError::CreateErrorStream)?;
            let data = self
                .conn
                .start_stream(headers(StreamType::Data))
                .map_err(ForwardError::CreateDataStream)?;
            (error, data, prefix)
        };
        if let Err(e) = error.opened().await {
            return Err(ForwardError::CreateErrorStream(e));
        }
        // The client never writes to the error stream (a second FIN is a no-op).
        let _ = error.shutdown().await;
        let error_reader = tokio::spawn(read_error_text(error));
        if let Err(e) = data.opened().await {
            error_reader.abort();
            return Err(ForwardError::CreateDataStream(e));
        }
        let copied = match data.write_all(unsent).await {
            Ok(()) => copy::relay(&mut local, &mut data).await.map(|mut t| {
                t.a_to_b += prefix.len() as u64;
                t
            }),
            Err(e) => Err(e),
        };
        // client-go ≥ 1.32: reset so unread data cannot wedge the connection (no RST if done).
        data.reset();
        drop(data);
        if copied.is_err() {
            // A finished relay has already half-closed `local` (pod → local reached EOF).
            let _ = local.shutdown().await;
        }
        let text = match error_reader.await {
            Ok(r) => r.map_err(ForwardError::ReadErrorStream)?,
            Err(e) => return Err(ForwardError::ReadErrorStream(io::Error::other(e))),
        };
        if !text.is_empty() {
            return Err(ForwardError::Remote(text));
        }
        match copied {
            Ok(t) => Ok(ForwardReport {
                bytes_in: t.b_to_a,
                bytes_out: t.a_to_b,
            }),
            Err(e) => Err(ForwardError::Copy(e)),
        }
    }

    /// Forwards a local TCP connection (the common case).
    pub async fn forward_tcp(
        &self,
        local: TcpStream,
        remote_port: u16,
    ) -> Result<ForwardReport, ForwardError> {
        let _ = local.set_nodelay(true);
        let prefix = if self.early_data {
            take_ready_bytes(&local)
        } else {
            Vec::new()
        };
        self.forward_with_prefix(local, remote_port, &prefix).await
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) -> CloseReason {
        self.conn.closed().await
    }

    /// RST every stream, GOAWAY, close (kubectl's Ctrl-C).
    pub async fn shutdown(&self) {
        self.conn.shutdown().await
    }
}

/// Most bytes [`take_ready_bytes`] reads (a first request of almost any protocol).
pub const READY_PREFIX_MAX: usize = 16 * 1024;

/// What `sock` has already received, read without waiting (empty if nothing yet, or on
/// error: the relay will see the error). A client that speaks first (HTTP, most protocols)
/// has usually sent its request by the time the connection is accepted; sending it with the
/// SYN_STREAMs saves a round trip and a write on every hop.
pub fn take_ready_bytes(sock: &TcpStream) -> Vec<u8> {
    use std::io::Read;
    // On the thread's stack (this is not an async fn), so each connection allocates only
    // what it actually received, and nothing when that is nothing.
    let mut buf = [0u8; READY_PREFIX_MAX];
    // A direct nonblocking recv: tokio's `try_read` would report WouldBlock until its
    // reactor has seen the socket's first readiness event.
    let n = (&*socket2::SockRef::from(sock)).read(&mut buf).unwrap_or(0);
    buf[..n].to_vec()
}

/// Reads the error stream to its end: FIN or RST both end the message (§4.5).
pub(crate) async fn read_error_text(mut s: Stream) -> io::Result<String> {
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let room = MAX_ERROR_TEXT.saturating_sub(text.len());
                text.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}
