//! Reverse forwarding (`porthole port-forward --reverse POD_PORT:HOST:PORT`): after the
//! upgrade of `pods/{pod}/reverseforward` the SPDY roles are swapped.
//!
//! - The node is the SPDY *client*: for every connection accepted by its listener inside the
//!   pod it opens an error + data stream pair (headers `streamtype`, `port`, `requestid`, as in
//!   port-forward) with [`PortForwarder`](super::spdy_client::PortForwarder), whose error text
//!   then closes that in-pod connection.
//! - The porthole client is the SPDY *server*: [`ReverseAcceptor`] pairs the streams by
//!   `requestid` (port-forward's [`PairTable`], with its creation timeout) and hands out one
//!   [`ReverseConnection`] per pair, which the caller either relays to its local target
//!   ([`ReverseConnection::relay`], half-close both ways) or refuses with an error text
//!   ([`ReverseConnection::refuse`]).
//!
//! Both ends send keepalive PINGs, so either notices a dead peer.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use porthole_proto::portforward::{self as pf, Insert, PairTable, StreamType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::copy::{self, Transferred};
use crate::spdy::{self, Connection, Incoming, Role, Stream};

static CONN_SEQ: AtomicU64 = AtomicU64::new(1);

/// The client's side of a reverse session: accepts the stream pairs the node opens.
pub struct ReverseAcceptor {
    conn: Connection,
    incoming: Incoming,
    table: PairTable<Stream>,
}

/// One connection made inside the pod, delivered as its stream pair.
#[derive(Debug)]
pub struct ReverseConnection {
    /// The pod port it was made to (the `port` header).
    pub port: u16,
    /// The node's `requestid`.
    pub request_id: String,
    error: Stream,
    data: Stream,
}

impl std::fmt::Debug for ReverseAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseAcceptor")
            .field("pending_pairs", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl ReverseAcceptor {
    /// Starts the SPDY session in the server role over the upgraded connection. `cfg` should
    /// carry a `ping_interval`: the client must notice a dead node too.
    pub fn new<T>(io: T, cfg: spdy::Config) -> ReverseAcceptor
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (conn, incoming) = Connection::new(io, Role::Server, cfg);
        // Only in the timeout text, like the port-forward server's label.
        let label = format!("0xd{:09x}", CONN_SEQ.fetch_add(1, Ordering::Relaxed) << 8);
        ReverseAcceptor {
            conn,
            incoming,
            table: PairTable::new(label, pf::DEFAULT_STREAM_CREATION_TIMEOUT),
        }
    }

    /// The SPDY connection (to wait for its end, or shut it down).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The next complete stream pair, or `None` once the connection has ended. A stream with
    /// bad headers is refused; a pair whose second stream does not arrive in time gets
    /// Kubernetes' timeout text on its error stream.
    pub async fn accept(&mut self) -> Option<ReverseConnection> {
        loop {
            let deadline = self.table.next_deadline().map(Instant::from_std);
            tokio::select! {
                s = self.incoming.next() => {
                    let s = s?;
                    let info = match pf::parse_stream_headers(s.id(), s.headers()) {
                        Ok(info) => info,
                        Err(e) => {
                            tracing::warn!(stream = s.id(), error = %e, "refusing a reverse stream with bad headers");
                            s.reject();
                            continue;
                        }
                    };
                    let mut stream = s.accept();
                    if info.stream_type == StreamType::Error {
                        // The node only reads its error stream; it never writes to it.
                        stream.discard_input();
                    }
                    match self.table.insert(Instant::now().into_std(), &info, stream) {
                        Insert::Pending => {}
                        Insert::Duplicate { mut stream, message } => {
                            tracing::warn!(request = %info.request_id, "{message}");
                            stream.reset();
                        }
                        Insert::Complete(pair) => {
                            return Some(ReverseConnection {
                                port: pair.port,
                                request_id: pair.request_id,
                                error: pair.error,
                                data: pair.data,
                            });
                        }
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    for ex in self.table.expire(Instant::now().into_std()) {
                        tracing::warn!(request = %ex.request_id, "{}", ex.message);
                        if let Some(mut e) = ex.error {
                            let _ = e.send_now(ex.message.as_bytes());
                            e.reset();
                        }
                        if let Some(mut d) = ex.data {
                            d.reset();
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl ReverseConnection {
    /// Relays the connection to `local` with half-close both ways until both directions have
    /// ended. The error stream is finished (empty: no error) once `local` has closed its side,
    /// as the port-forward server does towards kubectl.
    pub async fn relay<L>(mut self, local: &mut L) -> io::Result<Transferred>
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        let mut moved = Transferred::default();
        let r =
            copy::relay_finishing_counted(&mut self.data, local, &mut self.error, &mut moved).await;
        match r {
            Ok(()) => {
                let _ = self.data.shutdown().await;
                let _ = self.error.shutdown().await;
                Ok(moved)
            }
            Err(e) => {
                self.data.reset();
                self.error.reset();
                Err(e)
            }
        }
    }

    /// Refuses the connection: `text` on the error stream (the node closes the in-pod
    /// connection when it reads it), then both streams reset (the text precedes the RST on
    /// the wire).
    pub async fn refuse(mut self, text: &str) {
        let _ = self.error.write_all(text.as_bytes()).await;
        let _ = self.error.flush().await;
        self.data.reset();
        self.error.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portforward::spdy_client::{ForwardError, PortForwarder};
    use tokio::io::AsyncReadExt;

    /// The node's side (a `PortForwarder` on the SPDY client role) against the acceptor over
    /// an in-memory pipe: a relayed connection carries bytes both ways with half-close, and a
    /// refused one reaches the node as its error text.
    #[tokio::test]
    async fn node_opens_pairs_and_client_relays_or_refuses() {
        let (node_io, client_io) = tokio::io::duplex(256 * 1024);
        let node = PortForwarder::new(node_io, spdy::Config::default());
        let mut acceptor = ReverseAcceptor::new(client_io, spdy::Config::default());

        // Relayed: the "in-pod" side writes, half-closes, and reads the echo back.
        let (mut in_pod, pod_end) = tokio::io::duplex(64 * 1024);
        let node_task = tokio::spawn(async move {
            let r = node.forward(pod_end, 9000).await;
            (node, r)
        });
        let conn = acceptor.accept().await.expect("pair");
        assert_eq!(conn.port, 9000);
        assert_eq!(conn.request_id, "0");
        let (mut local, mut local_peer) = tokio::io::duplex(64 * 1024);
        let echo = tokio::spawn(async move {
            let mut buf = Vec::new();
            local_peer.read_to_end(&mut buf).await.expect("read");
            local_peer.write_all(&buf).await.expect("echo");
            local_peer.shutdown().await.expect("fin");
        });
        let relay = tokio::spawn(async move { conn.relay(&mut local).await });
        in_pod.write_all(b"hello reverse").await.expect("write");
        in_pod.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        in_pod.read_to_end(&mut back).await.expect("read back");
        assert_eq!(back, b"hello reverse");
        echo.await.expect("echo task");
        let moved = relay.await.expect("relay task").expect("relay");
        assert_eq!((moved.a_to_b, moved.b_to_a), (13, 13));
        let (node, r) = node_task.await.expect("node task");
        let report = r.expect("forward ok");
        assert_eq!((report.bytes_out, report.bytes_in), (13, 13));

        // Refused: the node's forward fails with the client's text and the in-pod side sees
        // its connection closed.
        let (mut in_pod, pod_end) = tokio::io::duplex(64 * 1024);
        let node_task = tokio::spawn(async move { node.forward(pod_end, 9000).await });
        let conn = acceptor.accept().await.expect("second pair");
        assert_eq!(conn.request_id, "1");
        conn.refuse("dial tcp 127.0.0.1:5432: connect: connection refused")
            .await;
        match node_task.await.expect("node task") {
            Err(ForwardError::Remote(text)) => {
                assert_eq!(text, "dial tcp 127.0.0.1:5432: connect: connection refused")
            }
            other => panic!("expected the refusal text, got {other:?}"),
        }
        let mut rest = Vec::new();
        let n = in_pod.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "the in-pod connection is closed without data");
    }
}
