//! SPDY/3.1 session driver (PROTOCOL.md §3): runs a [`porthole_proto::spdy::Session`] over any
//! `AsyncRead + AsyncWrite` in one spawned task.
//!
//! ```text
//!  Stream (AsyncRead/AsyncWrite) ─┐
//!  Connection::open_stream ───────┼── Arc<Shared{ Mutex<Inner{ Session, wakers }> }> ── driver task ── io
//!  Incoming::next ────────────────┘
//! ```
//!
//! The application side never talks to the socket: a write copies the bytes once, encoded as
//! DATA frames, straight into the session's transmit buffer; a read copies once out of the
//! `Bytes` chunks the session split off the receive buffer. The driver swaps the whole transmit
//! buffer out under the lock and writes it with one `write` call (coalescing every frame queued
//! meanwhile), and is woken at most once per poll however many frames were queued. Time comes
//! from `tokio::time` only, so `tokio::time::pause()` drives every timeout.
//!
//! Semantics for users of [`Stream`]:
//! - `shutdown()` sends FIN (half-close); reads return EOF once the peer's FIN arrived and
//!   everything buffered was read.
//! - After an RST_STREAM (either side) buffered data is still read, then reads fail with
//!   `ConnectionReset`; if the connection ends before the peer's FIN, `ConnectionAborted`.
//! - Dropping a stream without having finished both directions sends RST_STREAM(CANCEL).

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use porthole_proto::spdy::session::{self as proto, Event, OpenState, ReadOutcome, WriteError};
use porthole_proto::spdy::StreamId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use porthole_proto::spdy::session::CloseReason;
pub use porthole_proto::spdy::session::Role;

/// Read chunk size of the driver.
const READ_CHUNK: usize = 64 * 1024;
/// The driver stops reading the socket while this much input is unprocessed.
const RX_HIGH_WATER: usize = 256 * 1024;
/// How long a closing session may take to flush before the socket is dropped.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection settings. `Default` suits a server talking to kubectl; clients set
/// `ping_interval` (5 s raw, 10 s inside the WebSocket tunnel).
#[derive(Debug, Clone)]
pub struct Config {
    /// Keepalive PING period; `None` sends none (Go servers send none).
    pub ping_interval: Option<Duration>,
    /// Peer declared dead when a PING stays unanswered, and nothing at all arrives, this long.
    pub ping_timeout: Duration,
    /// Close after this long without any frame in or out (RST all, GOAWAY).
    pub idle_timeout: Option<Duration>,
    /// Cap on an inflated header block (zlib-bomb guard).
    pub max_header_block: usize,
    /// Per-stream receive buffer bound, and the window advertised under flow control.
    pub stream_buffer: usize,
    /// Bound on all buffered receive data of the connection (without flow control).
    pub connection_buffer: usize,
    /// Real SPDY/3.1 flow control; only when both ends agreed (`X-Porthole-Flow-Control: 1`).
    pub flow_control: bool,
    /// Session receive window under flow control: bounds the bytes queued between the peers,
    /// which every stream waits behind (see [`proto::Config::session_window`]).
    pub session_window: usize,
    /// Largest DATA frame written (Go writes ≤ 32 KiB).
    pub max_data_frame: usize,
    /// Transmit-buffer bound; beyond it, stream writes wait in per-stream send queues.
    pub send_buffer: usize,
    /// Streams the peer may have open at once; more get RST_STREAM(REFUSED_STREAM).
    pub max_incoming_streams: usize,
    /// How long [`Connection::open_stream`] waits for SYN_REPLY (client-go: 30 s).
    pub open_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let p = proto::Config::default();
        Config {
            ping_interval: None,
            ping_timeout: p.ping_timeout,
            idle_timeout: None,
            max_header_block: p.max_header_block,
            stream_buffer: p.stream_buffer,
            connection_buffer: p.connection_buffer,
            flow_control: false,
            session_window: p.session_window,
            max_data_frame: p.max_data_frame,
            send_buffer: p.send_buffer,
            max_incoming_streams: p.max_incoming_streams,
            open_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// client-go's settings for a raw SPDY connection: PING every 5 s.
    pub fn client() -> Self {
        Config {
            ping_interval: Some(Duration::from_secs(5)),
            ..Config::default()
        }
    }

    /// client-go's settings inside the WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`):
    /// PING every 10 s.
    pub fn client_ws_tunnel() -> Self {
        Config {
            ping_interval: Some(Duration::from_secs(10)),
            ..Config::default()
        }
    }

    /// Both ends of a node tunnel (`porthole_proto::tunnel`): real flow control, so one
    /// stream that is not read never stalls another; PINGs every 5 s from each side, so a
    /// silent partition ends the tunnel within 5 + 10 s (the node then redials, the API
    /// server stops routing through it). Windows as for port-forward sessions between
    /// porthole peers.
    pub fn tunnel() -> Self {
        Config {
            ping_interval: Some(Duration::from_secs(5)),
            ping_timeout: Duration::from_secs(10),
            flow_control: true,
            open_timeout: Duration::from_secs(10),
            // Every forwarded connection of the node shares the tunnel's session window: a
            // larger one than a single port-forward session's keeps a bulk stream from running
            // dry on each round trip (per-stream windows still bound each stream).
            session_window: 4 << 20,
            // A forwarded connection's own frames (32 KiB of data and an 8-byte head) cross
            // the tunnel as data: with 32 KiB tunnel frames each became a full frame and an
            // 8-byte one, twice the per-frame work.
            max_data_frame: 64 * 1024,
            ..Config::default()
        }
    }

    fn session_config(&self, role: Role) -> proto::Config {
        proto::Config {
            role,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            idle_timeout: self.idle_timeout,
            max_header_block: self.max_header_block,
            stream_buffer: self.stream_buffer,
            connection_buffer: self.connection_buffer,
            flow_control: self.flow_control,
            session_window: self.session_window,
            max_data_frame: self.max_data_frame,
            send_buffer: self.send_buffer,
            max_incoming_streams: self.max_incoming_streams,
            ..proto::Config::default()
        }
    }
}

/// A snapshot from [`Connection::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Streams the session still tracks (finished streams are forgotten once released).
    pub streams: usize,
    /// Received bytes waiting for stream readers.
    pub buffered: usize,
}

/// Why [`Connection::open_stream`] failed. The texts are client-go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No SYN_REPLY within `open_timeout`.
    #[error("Timeout occurred")]
    Timeout,
    /// The peer answered with RST_STREAM.
    #[error("Stream reset")]
    Reset,
    /// The connection is closed or closing.
    #[error("connection closed: {0}")]
    Closed(String),
    /// No stream ids left.
    #[error("Unable to get new stream id")]
    IdsExhausted,
}

#[derive(Default)]
struct StreamWakers {
    read: Option<Waker>,
    write: Option<Waker>,
    open: Option<Waker>,
}

struct Inner {
    session: proto::Session,
    wakers: HashMap<StreamId, StreamWakers>,
    driver: Option<Waker>,
    incoming: VecDeque<(StreamId, Vec<(String, String)>)>,
    incoming_waker: Option<Waker>,
    incoming_alive: bool,
    reason: Option<CloseReason>,
}

impl Inner {
    /// Wakes the driver if an operation gave it something new to do: the transmit buffer went
    /// from empty to non-empty (when it was already non-empty the driver is busy writing and
    /// takes it next), paused input can resume, or the session closed. Edge-triggered, so a
    /// busy stream does not wake the driver once per read or write.
    fn kick(&mut self, tx_before: usize) {
        let s = &self.session;
        if (tx_before == 0 && s.pending_transmit() > 0) || s.input_resumable() || s.is_closed() {
            if let Some(w) = self.driver.take() {
                w.wake();
            }
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    closed: CancellationToken,
    open_timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the session half-updated in a way that
        // matters more than losing the connection; keep going rather than poisoning every user.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The proto's `now`, read from tokio's (pausable) clock.
#[allow(clippy::disallowed_types)]
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Closes the session when the last `Connection`/`Incoming` handle goes away.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.close(now());
        inner.kick(tx_before);
    }
}

/// A SPDY connection; cheap to clone. Dropping every clone (and the [`Incoming`]) closes it.
#[derive(Clone)]
pub struct Connection {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts a session over `io` (already upgraded) and spawns its driver task.
    pub fn new<T>(io: T, role: Role, cfg: Config) -> (Connection, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let session = proto::Session::new(cfg.session_config(role), now());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                session,
                wakers: HashMap::new(),
                driver: None,
                incoming: VecDeque::new(),
                incoming_waker: None,
                incoming_alive: true,
                reason: None,
            }),
            closed: CancellationToken::new(),
            open_timeout: cfg.open_timeout,
        });
        let driver = Driver {
            io,
            shared: shared.clone(),
            rx: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::new(),
            sleep: Box::pin(tokio::time::sleep_until(
                Instant::now() + Duration::from_secs(86400),
            )),
            sleep_at: None,
            read_done: false,
            eof_pending: false,
            io_err_pending: None,
            write_broken: false,
            want_read: true,
            flush_needed: false,
            flush_deadline: None,
            wake_list: Vec::new(),
        };
        tokio::spawn(driver.instrument(tracing::debug_span!("spdy", ?role)));
        let handle = Arc::new(Handle { shared });
        (
            Connection {
                handle: handle.clone(),
            },
            Incoming { handle },
        )
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Opens a stream (SYN_STREAM with `headers`) and waits for its SYN_REPLY, at most
    /// `open_timeout` (client-go's 30 s, `Timeout occurred`).
    pub async fn open_stream(&self, headers: Vec<(String, String)>) -> Result<Stream, OpenError> {
        let stream = self.start_stream(headers)?;
        stream.opened().await?;
        Ok(stream)
    }

    /// Sends SYN_STREAM with `headers` and returns the stream at once; [`Stream::opened`]
    /// waits for the SYN_REPLY. Starting several streams before waiting costs one round trip
    /// for all of them instead of one each. Dropping the stream before the reply resets it.
    pub fn start_stream(&self, headers: Vec<(String, String)>) -> Result<Stream, OpenError> {
        let shared = self.shared().clone();
        let mut inner = shared.lock();
        let tx_before = inner.session.pending_transmit();
        let id = match inner.session.open_stream(now(), &headers) {
            Ok(id) => id,
            Err(proto::OpenError::IdsExhausted) => return Err(OpenError::IdsExhausted),
            Err(proto::OpenError::Closed) => {
                let reason = inner
                    .session
                    .close_reason()
                    .map_or("closing".to_string(), |r| r.to_string());
                return Err(OpenError::Closed(reason));
            }
        };
        inner.wakers.insert(id, StreamWakers::default());
        inner.kick(tx_before);
        drop(inner);
        Ok(Stream { id, shared })
    }

    /// Opens several streams in one go: each SYN_STREAM, its first data and its FIN are queued
    /// under one lock, so they leave in one socket write (SPDY lets the opener send before the
    /// reply). Returns each stream with how many bytes of its data were taken (all unless the
    /// send buffer or a window is full; FIN is sent only if all were). On error the streams
    /// already opened are reset.
    pub fn start_streams(
        &self,
        starts: Vec<StreamStart<'_>>,
    ) -> Result<Vec<(Stream, usize)>, OpenError> {
        let shared = self.shared().clone();
        let mut inner = shared.lock();
        let tx_before = inner.session.pending_transmit();
        let mut opened = Vec::with_capacity(starts.len());
        let mut failure = None;
        for start in starts {
            let id = match inner.session.open_stream(now(), &start.headers) {
                Ok(id) => id,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            inner.wakers.insert(id, StreamWakers::default());
            let taken = if start.data.is_empty() {
                0
            } else {
                inner.session.write(now(), id, start.data).unwrap_or(0)
            };
            if start.fin && taken == start.data.len() {
                inner.session.finish(now(), id);
            }
            opened.push((id, taken));
        }
        let reason = || {
            inner
                .session
                .close_reason()
                .map_or("closing".to_string(), |r| r.to_string())
        };
        let error = match failure {
            None => None,
            Some(proto::OpenError::IdsExhausted) => Some(OpenError::IdsExhausted),
            Some(proto::OpenError::Closed) => Some(OpenError::Closed(reason())),
        };
        inner.kick(tx_before);
        drop(inner);
        let streams = opened
            .into_iter()
            .map(|(id, taken)| {
                (
                    Stream {
                        id,
                        shared: shared.clone(),
                    },
                    taken,
                )
            })
            .collect::<Vec<_>>();
        match error {
            None => Ok(streams),
            Some(e) => {
                for (mut s, _) in streams {
                    s.reset();
                }
                Err(e)
            }
        }
    }

    /// Resets every open stream, sends GOAWAY, flushes and closes the socket; returns once the
    /// connection has ended.
    pub async fn shutdown(&self) {
        {
            let mut inner = self.shared().lock();
            let tx_before = inner.session.pending_transmit();
            inner.session.close(now());
            inner.kick(tx_before);
        }
        self.closed().await;
    }

    /// Resolves once the connection has ended, with the reason.
    pub async fn closed(&self) -> CloseReason {
        self.shared().closed.cancelled().await;
        self.shared()
            .lock()
            .reason
            .clone()
            .unwrap_or(CloseReason::Local)
    }

    /// Current bookkeeping, for tests and metrics: open streams and buffered receive bytes.
    pub fn stats(&self) -> Stats {
        let inner = self.shared().lock();
        Stats {
            streams: inner.session.stream_count(),
            buffered: inner.session.buffered(),
        }
    }

    /// Whether the connection has ended (or is ending).
    pub fn is_closed(&self) -> bool {
        self.shared().lock().session.is_closed()
    }
}

/// Streams the peer opens. `next()` returns `None` once the connection has ended.
pub struct Incoming {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Incoming {
    /// The next stream the peer opened (validate its headers, then accept or reject it).
    pub async fn next(&mut self) -> Option<IncomingStream> {
        let shared = self.handle.shared.clone();
        poll_fn(|cx| {
            let mut inner = shared.lock();
            if let Some((id, headers)) = inner.incoming.pop_front() {
                return Poll::Ready(Some(IncomingStream {
                    id,
                    headers,
                    shared: Some(shared.clone()),
                }));
            }
            if inner.session.is_closed() {
                return Poll::Ready(None);
            }
            inner.incoming_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// A handle to the connection this belongs to.
    pub fn connection(&self) -> Connection {
        Connection {
            handle: self.handle.clone(),
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let mut inner = self.handle.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.incoming_alive = false;
        let t = now();
        while let Some((id, _)) = inner.incoming.pop_front() {
            inner.session.reject(t, id);
        }
        inner.kick(tx_before);
    }
}

/// A stream the peer opened, not yet answered. Dropping it rejects it.
pub struct IncomingStream {
    id: StreamId,
    headers: Vec<(String, String)>,
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl IncomingStream {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The SYN_STREAM headers (names lower case).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Sends SYN_REPLY (empty headers) and returns the stream.
    pub fn accept(mut self) -> Stream {
        let shared = self
            .shared
            .take()
            .expect("accept/reject consume the stream");
        {
            let mut inner = shared.lock();
            let tx_before = inner.session.pending_transmit();
            inner.session.accept(now(), self.id);
            inner.wakers.insert(self.id, StreamWakers::default());
            inner.kick(tx_before);
        }
        Stream {
            id: self.id,
            shared,
        }
    }

    /// Sends RST_STREAM(CANCEL) (how Kubernetes rejects invalid streams).
    pub fn reject(mut self) {
        if let Some(shared) = self.shared.take() {
            reject(&shared, self.id);
        }
    }
}

fn reject(shared: &Shared, id: StreamId) {
    let mut inner = shared.lock();
    let tx_before = inner.session.pending_transmit();
    inner.session.reject(now(), id);
    inner.kick(tx_before);
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            reject(&shared, self.id);
        }
    }
}

/// One stream for [`Connection::start_streams`].
#[derive(Debug)]
pub struct StreamStart<'a> {
    /// SYN_STREAM headers.
    pub headers: Vec<(String, String)>,
    /// Data sent right behind the SYN_STREAM.
    pub data: &'a [u8],
    /// Half-close (FIN) after `data`.
    pub fin: bool,
}

/// One SPDY stream as a byte stream with half-close.
pub struct Stream {
    id: StreamId,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Waits for the peer's SYN_REPLY to a stream we opened (at once if it already came), at
    /// most the connection's `open_timeout` (client-go's 30 s, `Timeout occurred`).
    pub async fn opened(&self) -> Result<(), OpenError> {
        let (id, shared) = (self.id, &self.shared);
        let wait = poll_fn(|cx| {
            let mut inner = shared.lock();
            match inner.session.open_state(id) {
                OpenState::Pending => {
                    if let Some(w) = inner.wakers.get_mut(&id) {
                        w.open = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                OpenState::Replied => Poll::Ready(Ok(())),
                OpenState::Reset => Poll::Ready(Err(OpenError::Reset)),
                OpenState::Closed => Poll::Ready(Err(OpenError::Closed(
                    inner
                        .session
                        .close_reason()
                        .map_or("closed".to_string(), |r| r.to_string()),
                ))),
            }
        });
        match tokio::time::timeout(shared.open_timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(OpenError::Timeout),
        }
    }

    /// Sends RST_STREAM(CANCEL) unless already reset or finished both ways (Go's `Reset()`).
    pub fn reset(&mut self) {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.reset(now(), self.id);
        inner.kick(tx_before);
    }

    /// Drops all data received on this stream from now on (a stream nobody reads must never
    /// hold up the connection). Reads then see only FIN/RST.
    pub fn discard_input(&mut self) {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.discard_input(self.id);
        inner.kick(tx_before);
    }

    /// Queues `data` at once, ignoring the send-buffer bound (for short texts such as
    /// port-forward error messages). Returns how many bytes were taken (all, unless a
    /// negotiated flow-control window is closed).
    pub fn send_now(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        let r = inner.session.write_unbounded(now(), self.id, data);
        inner.kick(tx_before);
        r.map_err(write_error)
    }
}

fn write_error(e: WriteError) -> io::Error {
    let kind = match e {
        WriteError::Finished => io::ErrorKind::BrokenPipe,
        WriteError::Reset | WriteError::UnknownStream => io::ErrorKind::ConnectionReset,
        WriteError::ConnectionClosed => io::ErrorKind::ConnectionAborted,
        WriteError::NotAccepted => io::ErrorKind::NotConnected,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        // Straight into the caller's buffer (already advanced): no zeroing of its spare room.
        match inner.session.read_buf(now(), id, buf) {
            ReadOutcome::Data(_) => {
                inner.kick(tx_before);
                Poll::Ready(Ok(()))
            }
            ReadOutcome::Pending => {
                if let Some(w) = inner.wakers.get_mut(&id) {
                    w.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            ReadOutcome::Eof => Poll::Ready(Ok(())),
            ReadOutcome::Reset => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset",
            ))),
            ReadOutcome::Aborted => {
                let reason = inner
                    .session
                    .close_reason()
                    .map_or("connection closed".into(), |r| r.to_string());
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    reason,
                )))
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        match inner.session.write(now(), id, data) {
            Ok(0) if !data.is_empty() => {
                // This stream's send queue is full: woken by StreamChanged once it drains.
                if let Some(w) = inner.wakers.get_mut(&id) {
                    w.write = Some(cx.waker().clone());
                }
                inner.kick(tx_before);
                Poll::Pending
            }
            Ok(n) => {
                inner.kick(tx_before);
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(write_error(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.finish(now(), self.id);
        inner.kick(tx_before);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.release(now(), self.id);
        inner.wakers.remove(&self.id);
        inner.kick(tx_before);
    }
}

/// The driver task: socket I/O, timers, event dispatch.
struct Driver<T> {
    io: T,
    shared: Arc<Shared>,
    rx: BytesMut,
    out: BytesMut,
    sleep: Pin<Box<Sleep>>,
    sleep_at: Option<Instant>,
    read_done: bool,
    eof_pending: bool,
    io_err_pending: Option<String>,
    write_broken: bool,
    want_read: bool,
    flush_needed: bool,
    flush_deadline: Option<Instant>,
    wake_list: Vec<Waker>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    /// One locked pass: feed input, fire timers, collect wakers, take the transmit buffer.
    /// Returns (closed, deadline).
    fn step(
        &mut self,
        cx: &mut Context<'_>,
        eof: bool,
        io_err: Option<io::Error>,
        timer: bool,
    ) -> (bool, Option<Instant>) {
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        match &inner.driver {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.driver = Some(cx.waker().clone()),
        }
        let t = Instant::now();
        let now = t.into_std();
        if !self.rx.is_empty() {
            if let Err(e) = inner.session.handle_input(now, &mut self.rx) {
                tracing::warn!(error = %e, "spdy protocol error from peer");
            }
        }
        // A peer may send its last frames and close at once; while input is paused behind a
        // slow reader those frames are still in `rx`, so EOF counts only once they are in.
        self.eof_pending |= eof;
        if self.eof_pending && self.rx.is_empty() {
            self.eof_pending = false;
            inner.session.handle_eof();
        }
        if let Some(e) = io_err {
            tracing::debug!(error = %e, "spdy transport error");
            self.io_err_pending.get_or_insert(e.to_string());
        }
        // Likewise a transport error ends the session only once everything already received
        // has been processed (a peer that sent its data and vanished loses nothing).
        if self.io_err_pending.is_some() && self.read_done && self.rx.is_empty() {
            if let Some(e) = self.io_err_pending.take() {
                inner.session.handle_io_error(e);
            }
        }
        if timer {
            inner.session.handle_timeout(now);
        }
        let inner = &mut *inner;
        self.dispatch_events(inner, now);
        if self.out.is_empty() {
            // Frames queued stream data fairly; writers whose queues drained get StreamChanged.
            inner.session.poll_transmit(&mut self.out);
            self.dispatch_events(inner, now);
        }
        self.want_read = inner.session.wants_input();
        let closed = inner.session.is_closed();
        if closed {
            if inner.reason.is_none() {
                inner.reason = inner.session.close_reason().cloned();
                tracing::debug!(reason = ?inner.reason, "spdy connection closing");
                self.wake_list.extend(inner.incoming_waker.take());
                for w in inner.wakers.values_mut() {
                    self.wake_list.extend(w.read.take());
                    self.wake_list.extend(w.write.take());
                    self.wake_list.extend(w.open.take());
                }
                self.flush_deadline = Some(t + CLOSE_FLUSH_TIMEOUT);
            }
            return (true, self.flush_deadline);
        }
        (false, inner.session.poll_timeout().map(Instant::from_std))
    }

    /// Hands the session's events to the tasks waiting for them.
    #[allow(clippy::disallowed_types)] // the proto's clock type, passed in
    fn dispatch_events(&mut self, inner: &mut Inner, now: std::time::Instant) {
        while let Some(ev) = inner.session.poll_event() {
            match ev {
                Event::StreamChanged(id) => {
                    if let Some(w) = inner.wakers.get_mut(&id) {
                        self.wake_list.extend(w.read.take());
                        self.wake_list.extend(w.write.take());
                        self.wake_list.extend(w.open.take());
                    }
                }
                Event::Incoming { id, headers } => {
                    if inner.incoming_alive {
                        inner.incoming.push_back((id, headers));
                        self.wake_list.extend(inner.incoming_waker.take());
                    } else {
                        inner.session.reject(now, id);
                    }
                }
                Event::GoAway { last_good, status } => {
                    tracing::debug!(last_good, ?status, "peer sent GOAWAY");
                }
            }
        }
    }

    fn finish(&mut self) {
        let mut inner = self.shared.lock();
        if inner.reason.is_none() {
            inner.reason = inner.session.close_reason().cloned();
        }
        drop(inner);
        self.shared.closed.cancel();
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut timer = false;
        loop {
            let mut progress = false;
            // Read (outside the lock).
            let mut eof = false;
            let mut io_err = None;
            let mut read_registered = false;
            if this.want_read && !this.read_done && this.rx.len() < RX_HIGH_WATER {
                this.rx.reserve(READ_CHUNK);
                // `read_buf` fills the spare capacity without zeroing it; the future is
                // cancellation-safe, so building one per poll is fine.
                let read = tokio::io::AsyncReadExt::read_buf(&mut this.io, &mut this.rx);
                match std::pin::pin!(read).poll(cx) {
                    Poll::Ready(Ok(0)) => {
                        this.read_done = true;
                        eof = true;
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => {
                        this.read_done = true;
                        io_err = Some(e);
                    }
                    Poll::Pending => read_registered = true,
                }
            }
            let (closed, deadline) = this.step(cx, eof, io_err, std::mem::take(&mut timer));
            // `step` may have unblocked input (a reader made room) or drained `rx`: if the
            // socket should be read but was not polled this round, go round again, or nothing
            // would wake us when the peer's bytes arrive.
            if !read_registered
                && this.want_read
                && !this.read_done
                && this.rx.len() < RX_HIGH_WATER
            {
                progress = true;
            }
            for w in this.wake_list.drain(..) {
                w.wake();
            }
            // Write (outside the lock): everything queued goes out in as few writes as possible.
            let mut write_failed = None;
            if this.write_broken {
                // Nothing can be sent any more; keep reading what the peer already sent.
                this.out.clear();
            }
            while !this.out.is_empty() {
                match Pin::new(&mut this.io).poll_write(cx, &this.out) {
                    Poll::Ready(Ok(0)) => {
                        write_failed = Some(io::Error::from(io::ErrorKind::WriteZero));
                        break;
                    }
                    Poll::Ready(Ok(n)) => {
                        this.out.advance(n);
                        this.flush_needed = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        write_failed = Some(e);
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if this.out.is_empty() && this.flush_needed {
                match Pin::new(&mut this.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => this.flush_needed = false,
                    Poll::Ready(Err(e)) => write_failed = Some(e),
                    Poll::Pending => {}
                }
            }
            if let Some(e) = write_failed {
                this.out.clear();
                this.flush_needed = false;
                if closed {
                    this.finish();
                    return Poll::Ready(());
                }
                this.write_broken = true;
                let _ = this.step(cx, false, Some(e), false);
                for w in this.wake_list.drain(..) {
                    w.wake();
                }
                continue;
            }
            if closed && this.out.is_empty() && !this.flush_needed {
                // Everything queued has been handed to the socket: close our side.
                let pending_tx = this.shared.lock().session.pending_transmit();
                if pending_tx == 0 {
                    let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                    this.finish();
                    return Poll::Ready(());
                }
                continue;
            }
            // Timer.
            if deadline != this.sleep_at {
                this.sleep_at = deadline;
                let at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86400));
                this.sleep.as_mut().reset(at);
            }
            if this.sleep_at.is_some() && this.sleep.as_mut().poll(cx).is_ready() {
                if closed {
                    // Could not flush in time: give up on the peer.
                    this.finish();
                    return Poll::Ready(());
                }
                this.sleep_at = None;
                timer = true;
                progress = true;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}
