//! The sans-IO SPDY/3.1 session (PROTOCOL.md §3.5–§3.10).
//!
//! Bytes from the socket go in through [`Session::handle_input`]; bytes for the socket come
//! out of [`Session::poll_transmit`]; what happened comes out of [`Session::poll_event`]; time
//! is passed in (`now`) and [`Session::poll_timeout`] says when to call
//! [`Session::handle_timeout`]. The application side reads and writes stream data through
//! [`Session::read`] / [`Session::write`]; frames are encoded straight into the transmit buffer.
//!
//! # Back-pressure and flow control
//!
//! Go peers (moby/spdystream) implement no flow control: they never send WINDOW_UPDATE and
//! ignore ours (§3.7). So by default this session never waits for a window, and a receiving
//! stream is bounded by [`Config::stream_buffer`] (and the whole connection by
//! [`Config::connection_buffer`]). When the next frame in the input is DATA for a stream whose
//! buffer is full, input processing pauses *at that frame* (the driver stops reading the
//! socket once its read buffer fills): that is TCP back-pressure towards the peer, exactly what
//! a Go peer itself applies, and the only option that neither drops data nor lets memory
//! grow. While paused, everything on the write side keeps flowing (data, SYN_REPLY, RST,
//! our keepalive PINGs), the dead-peer and idle timers are suspended (the peer's answers may be
//! queued behind the blocked frame), and processing resumes as soon as the application reads.
//! Control frames that arrived before the blocked frame have all been processed.
//!
//! With [`Config::flow_control`] (negotiated between porthole peers, `X-Porthole-Flow-Control`)
//! real SPDY/3.1 flow control runs instead: SETTINGS INITIAL_WINDOW_SIZE = `stream_buffer`,
//! WINDOW_UPDATE as the reader consumes, sends limited by the peer's windows. Input never
//! pauses then: a stream whose reader stops only stops that stream, and a peer overrunning a
//! window gets RST_STREAM(FLOW_CONTROL_ERROR).
//!
//! # Streams
//!
//! Each stream's lifecycle (a state enum, with its diagram), buffers and windows live in
//! `stream.rs`; the window arithmetic, the credit-return rule and window growth in `flow.rs`.
#![allow(clippy::disallowed_types)] // `Instant` is only passed in, never read from the clock.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use super::flow::WINDOW_GROWTH_RATE;
use super::flow::{self, SessionRecvWindow, DEFAULT_WINDOW, MAX_WINDOW};
use super::frame::{
    self, kind, FrameError, GoAway, GoAwayStatus, Head, Ping, RstStatus, RstStream, Setting,
    SettingId, Settings, StreamId, SynStream, WindowUpdate, FLAG_FIN, HEAD_LEN, MAX_STREAM_ID,
};
use super::header_block::{self, HeaderCompressor, HeaderDecompressor, HeaderError, HeaderList};
use super::stream::{ResetBy, State, StreamState};

/// Which end of the HTTP upgrade this session is (decides stream- and ping-id parity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sent the upgrade request: odd stream and ping ids.
    Client,
    /// Answered it: even ids.
    Server,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client or server.
    pub role: Role,
    /// Send a PING this often (client-go: 5 s raw SPDY, 10 s in the WebSocket tunnel).
    pub ping_interval: Option<Duration>,
    /// Declare the peer dead when a PING is unanswered, and nothing at all was received,
    /// for this long.
    pub ping_timeout: Duration,
    /// Close (RST all, GOAWAY) after this long without any frame in or out.
    pub idle_timeout: Option<Duration>,
    /// Cap on one inflated header block.
    pub max_header_block: usize,
    /// Per-stream receive bound (and the advertised window under flow control).
    pub stream_buffer: usize,
    /// Bound on all buffered receive data (no flow control).
    pub connection_buffer: usize,
    /// Real SPDY/3.1 flow control (only when both ends are porthole).
    pub flow_control: bool,
    /// Session (stream 0) receive window under flow control. Credit goes back as soon as a
    /// frame is *read off the socket*, not when its stream's reader consumes it, so it bounds
    /// the bytes queued in the FIFO between the peers (socket buffers, proxies) without
    /// coupling streams: a stalled stream holds only its own window. Every stream's frames
    /// wait behind that FIFO, so it is what a small request waits behind while other streams
    /// upload (head-of-line latency ≈ session_window / throughput).
    pub session_window: usize,
    /// Under flow control, the most the session and stream windows grow to (0: they never
    /// grow). A window sized for one machine's loopback caps a long path at window / round
    /// trip (64 KiB at 10 ms is 6.5 MB/s), so each window grows, when its credit goes back,
    /// to the bandwidth-delay product of the path at [`WINDOW_GROWTH_RATE`] and the smallest
    /// round trip measured (a PING at the start, then the keepalives). The smallest, not the
    /// latest: queueing behind a full window inflates the latest and would grow the window
    /// that causes it; on loopback the product stays below the configured windows, so
    /// nothing changes there.
    pub max_window: usize,
    /// Largest DATA frame written.
    pub max_data_frame: usize,
    /// `write` frames straight into the transmit buffer only below this; beyond it, data
    /// waits in per-stream send queues framed in turn (see [`Session::write`]).
    pub send_buffer: usize,
    /// Most streams the peer may have open at once; more are refused (REFUSED_STREAM).
    pub max_incoming_streams: usize,
    /// zlib level for our header blocks.
    pub compression_level: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::Client,
            ping_interval: None,
            ping_timeout: Duration::from_secs(30),
            idle_timeout: None,
            max_header_block: header_block::DEFAULT_MAX_HEADER_BLOCK,
            stream_buffer: 1 << 20,
            connection_buffer: 32 << 20,
            flow_control: false,
            // Measured (BENCHMARKS.md, 2 cores): 256 KiB keeps a 64-byte round trip under
            // 8-stream upload at ~0.15 ms (1 MiB: 3.4 ms; unbounded: 10 ms) for ~20% less bulk
            // throughput on a CPU-bound machine.
            session_window: 256 * 1024,
            max_window: 16 << 20,
            max_data_frame: 32 * 1024,
            send_buffer: 256 * 1024,
            max_incoming_streams: 65_536,
            compression_level: header_block::SESSION_LEVEL,
        }
    }
}

/// Why the session ended.
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// We closed it ([`Session::close`]).
    Local,
    /// The peer sent GOAWAY.
    GoAway(GoAwayStatus),
    /// The peer closed the socket.
    Eof,
    /// No frame in either direction for `idle_timeout`.
    IdleTimeout,
    /// Keepalive PING unanswered for `ping_timeout`.
    PingTimeout,
    /// The peer broke the protocol (fatal per PROTOCOL.md §3.10).
    Protocol(String),
    /// The transport failed (reported by the driver). `Arc` because the reason is handed to
    /// every task waiting on the session's end, and `io::Error` cannot be cloned.
    Io(Arc<io::Error>),
}

/// Equal when the variants are; two transport failures are equal when they are the same error
/// or have the same kind and text, since `io::Error` has no equality of its own.
impl PartialEq for CloseReason {
    fn eq(&self, other: &Self) -> bool {
        use CloseReason::*;
        match (self, other) {
            (Local, Local) | (Eof, Eof) | (IdleTimeout, IdleTimeout) => true,
            (PingTimeout, PingTimeout) => true,
            (GoAway(a), GoAway(b)) => a == b,
            (Protocol(a), Protocol(b)) => a == b,
            (Io(a), Io(b)) => {
                Arc::ptr_eq(a, b) || (a.kind() == b.kind() && a.to_string() == b.to_string())
            }
            _ => false,
        }
    }
}

impl Eq for CloseReason {}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::GoAway(s) => write!(f, "peer sent GOAWAY ({s})"),
            CloseReason::Eof => f.write_str("peer closed the connection"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::PingTimeout => f.write_str("peer did not answer pings"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for CloseReason {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CloseReason::Io(e) => Some(&**e),
            _ => None,
        }
    }
}

/// A fatal protocol error by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Malformed frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Unusable header block.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Something the driver or application must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream; answer with [`Session::accept`] or [`Session::reject`].
    Incoming {
        /// Stream id.
        id: StreamId,
        /// Decoded headers.
        headers: HeaderList,
    },
    /// A stream became readable, writable, replied, reset or finished: wake its users.
    StreamChanged(StreamId),
    /// The peer sent GOAWAY (the session is now closed).
    GoAway {
        /// Last stream id the peer accepted.
        last_good: StreamId,
        /// Status.
        status: GoAwayStatus,
    },
}

/// Why [`Session::open_stream`] failed (caller-side, no frame was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The session is closed or closing.
    #[error("connection closed")]
    Closed,
    /// No stream ids left (§9.17).
    #[error("Unable to get new stream id")]
    IdsExhausted,
}

/// Why a stream cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Unknown or forgotten stream.
    #[error("unknown stream")]
    UnknownStream,
    /// We already sent FIN.
    #[error("Write on closed stream")]
    Finished,
    /// The stream was reset (by either side).
    #[error("stream reset")]
    Reset,
    /// The session ended.
    #[error("connection closed")]
    ConnectionClosed,
    /// An incoming stream that has not been accepted yet.
    #[error("stream not accepted")]
    NotAccepted,
}

/// Result of [`Session::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// `n > 0` bytes were copied.
    Data(usize),
    /// Nothing buffered yet.
    Pending,
    /// The peer finished its direction (FIN) and everything was read.
    Eof,
    /// The stream was reset (either side) and everything buffered was read.
    Reset,
    /// The connection ended before the peer finished this stream.
    Aborted,
}

/// Whether a locally opened stream got its SYN_REPLY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenState {
    /// Waiting for SYN_REPLY.
    Pending,
    /// SYN_REPLY received.
    Replied,
    /// RST_STREAM received (or sent) first.
    Reset,
    /// Session ended first.
    Closed,
}

/// A DATA frame whose payload is still arriving (DATA is delivered as it comes, in chunks).
#[derive(Debug, Clone, Copy)]
struct PartialData {
    stream_id: StreamId,
    remaining: usize,
    fin: bool,
    discard: bool,
}

/// One SPDY/3.1 connection, without I/O.
#[derive(Debug)]
pub struct Session {
    pub(super) cfg: Config,
    compressor: HeaderCompressor,
    decompressor: HeaderDecompressor,
    pub(super) tx: BytesMut,
    /// Streams with queued data, served one DATA frame each in turn (see `fill_tx`).
    pub(super) ready: VecDeque<StreamId>,
    pub(super) spare_queues: Vec<BytesMut>,
    events: VecDeque<Event>,
    pub(super) streams: HashMap<StreamId, StreamState>,
    next_local_id: StreamId,
    next_remote_id: StreamId,
    last_good_remote: StreamId,
    remote_open: usize,
    partial: Option<PartialData>,
    buffered: usize,
    input_blocked: bool,
    pub(super) closed: Option<CloseReason>,
    goaway_sent: bool,
    // Flow control (only with cfg.flow_control).
    peer_initial_window: i64,
    pub(super) session_send_window: i64,
    /// The session receive window advertised (starts at `session_window`, may grow).
    session_recv_window: SessionRecvWindow,
    /// Smallest PING round trip seen (sizes grown windows, see [`Config::max_window`]).
    min_rtt: Option<Duration>,
    // Timers.
    pub(super) last_activity: Instant,
    last_received: Instant,
    next_ping_at: Option<Instant>,
    next_ping_id: u32,
    outstanding_ping: Option<(u32, Instant)>,
    /// Round-trip time of the last answered keepalive PING.
    pub last_rtt: Option<Duration>,
}

impl Session {
    /// A new session; `now` starts the idle and ping timers.
    pub fn new(cfg: Config, now: Instant) -> Self {
        let (next_local_id, next_remote_id, next_ping_id) = match cfg.role {
            Role::Client => (1, 2, 1),
            Role::Server => (2, 1, 2),
        };
        let mut s = Session {
            compressor: HeaderCompressor::new(cfg.compression_level),
            decompressor: HeaderDecompressor::new(cfg.max_header_block),
            tx: BytesMut::with_capacity(64 * 1024),
            ready: VecDeque::new(),
            spare_queues: Vec::new(),
            events: VecDeque::new(),
            streams: HashMap::new(),
            next_local_id,
            next_remote_id,
            last_good_remote: 0,
            remote_open: 0,
            partial: None,
            buffered: 0,
            input_blocked: false,
            closed: None,
            goaway_sent: false,
            peer_initial_window: DEFAULT_WINDOW,
            session_send_window: DEFAULT_WINDOW,
            session_recv_window: SessionRecvWindow::new(0),
            min_rtt: None,
            last_activity: now,
            last_received: now,
            next_ping_at: cfg.ping_interval.map(|p| now + p),
            next_ping_id,
            outstanding_ping: None,
            last_rtt: None,
            cfg,
        };
        if s.cfg.flow_control {
            let window = flow::stream_window(s.cfg.stream_buffer) as u32;
            Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 0,
                    id: SettingId::INITIAL_WINDOW_SIZE,
                    value: window,
                }],
            }
            .encode(&mut s.tx);
            // The session window starts at SPDY/3.1's 64 KiB; open it to ours.
            let delta = s.session_window() as i64 - DEFAULT_WINDOW;
            if delta > 0 {
                WindowUpdate {
                    stream_id: 0,
                    delta: delta as u32,
                }
                .encode(&mut s.tx);
            }
            // A round trip to size windows by: a PING now, while nothing queues on the path.
            // Only porthole peers negotiate flow control, and they answer PINGs.
            if s.cfg.max_window > 0 {
                s.send_ping(now);
            }
        }
        s.session_recv_window = SessionRecvWindow::new(s.session_window() as u64);
        s
    }

    /// The smallest PING round trip seen on this session.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    fn send_ping(&mut self, now: Instant) {
        let id = self.next_ping_id;
        self.next_ping_id = if id >= u32::MAX - 2 {
            2 - id % 2
        } else {
            id + 2
        };
        Ping { id }.encode(&mut self.tx);
        if self.outstanding_ping.is_none() {
            self.outstanding_ping = Some((id, now));
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// Whether the session has ended (flush [`Session::poll_transmit`], then close the socket).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Whether input processing is paused by a full stream buffer (see the module docs).
    pub fn is_input_blocked(&self) -> bool {
        self.input_blocked
    }

    /// Whether a paused input could make progress now that readers made room: true once the
    /// blocking stream's buffer is at most half full (hysteresis, so a driver is not woken for
    /// every small read).
    pub fn input_resumable(&self) -> bool {
        if !self.input_blocked {
            return false;
        }
        let Some(p) = self.partial else { return true };
        match self.streams.get(&p.stream_id) {
            Some(s) => {
                s.state.is_reset()
                    || s.discard
                    || (s.recv_len * 2 <= self.cfg.stream_buffer
                        && self.buffered * 2 <= self.cfg.connection_buffer)
            }
            None => true,
        }
    }

    /// Whether the driver should keep reading the socket.
    pub fn wants_input(&self) -> bool {
        self.closed.is_none() && !self.input_blocked
    }

    /// Bytes waiting in the transmit buffer, plus one if streams have data queued that the
    /// windows let out: non-zero means [`Session::poll_transmit`] has something to give.
    pub fn pending_transmit(&self) -> usize {
        self.tx.len() + usize::from(!self.ready.is_empty())
    }

    /// Number of known streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Bytes buffered for the application across all streams.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Moves everything waiting to be sent into `dst` (swapping buffers when `dst` is empty,
    /// so no copy is made).
    pub fn poll_transmit(&mut self, dst: &mut BytesMut) {
        self.fill_tx();
        if self.tx.is_empty() {
            return;
        }
        if dst.is_empty() {
            std::mem::swap(dst, &mut self.tx);
        } else {
            dst.extend_from_slice(&self.tx);
            self.tx.clear();
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if let Event::StreamChanged(id) = ev {
            if let Some(s) = self.streams.get_mut(&id) {
                s.notify_queued = false;
            }
        }
        Some(ev)
    }

    pub(super) fn notify(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.notify_queued {
                return;
            }
            s.notify_queued = true;
        }
        self.events.push_back(Event::StreamChanged(id));
    }

    fn activity(&mut self, now: Instant) {
        self.last_activity = now;
    }

    // ----------------------------------------------------------------------------------------
    // Input

    fn max_control_len(&self) -> usize {
        // A compressed block can be slightly larger than its inflated form (stored blocks).
        self.cfg.max_header_block + self.cfg.max_header_block / 8 + 1024
    }

    /// Processes as much of `src` as possible: complete control frames, and DATA payload as it
    /// arrives. Consumed bytes are removed from `src`; the rest stays for the next call. On a
    /// fatal error the session is closed (GOAWAY PROTOCOL_ERROR queued) and the error returned.
    pub fn handle_input(&mut self, now: Instant, src: &mut BytesMut) -> Result<(), ProtocolError> {
        if self.closed.is_some() {
            src.clear();
            return Ok(());
        }
        if !src.is_empty() {
            self.last_received = now;
        }
        match self.process_input(now, src) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.fail(now, &e);
                src.clear();
                Err(e)
            }
        }
    }

    fn process_input(&mut self, now: Instant, src: &mut BytesMut) -> Result<(), ProtocolError> {
        self.input_blocked = false;
        loop {
            if self.closed.is_some() {
                src.clear();
                return Ok(());
            }
            if let Some(mut p) = self.partial {
                if p.remaining > 0 && src.is_empty() {
                    return Ok(());
                }
                if !p.discard && p.remaining > 0 && self.recv_blocked(p.stream_id) {
                    self.input_blocked = true;
                    return Ok(());
                }
                let take = p.remaining.min(src.len());
                if take > 0 {
                    let chunk = src.split_to(take);
                    p.remaining -= take;
                    if !p.discard {
                        self.deliver(p.stream_id, chunk.freeze());
                    }
                }
                if p.remaining == 0 {
                    self.partial = None;
                    if p.fin && !p.discard {
                        self.deliver_fin(p.stream_id);
                    }
                } else {
                    self.partial = Some(p);
                }
                continue;
            }
            if src.len() < HEAD_LEN {
                return Ok(());
            }
            let head = Head::parse(&src[..HEAD_LEN]);
            head.check(self.max_control_len())?;
            match head {
                Head::Data {
                    stream_id,
                    flags,
                    len,
                } => {
                    src.advance(HEAD_LEN);
                    self.activity(now);
                    let discard = !self.accept_data(now, stream_id, len);
                    self.partial = Some(PartialData {
                        stream_id,
                        remaining: len,
                        fin: flags & FLAG_FIN != 0,
                        discard,
                    });
                }
                Head::Control {
                    kind, flags, len, ..
                } => {
                    if src.len() < HEAD_LEN + len {
                        src.reserve(HEAD_LEN + len - src.len());
                        return Ok(());
                    }
                    src.advance(HEAD_LEN);
                    let payload = src.split_to(len).freeze();
                    self.activity(now);
                    self.handle_control(now, kind, flags, payload)?;
                }
            }
        }
    }

    fn recv_blocked(&self, id: StreamId) -> bool {
        if self.cfg.flow_control {
            return false;
        }
        match self.streams.get(&id) {
            Some(s) => {
                s.recv_len >= self.cfg.stream_buffer || self.buffered >= self.cfg.connection_buffer
            }
            None => false,
        }
    }

    /// The session receive window we advertise (at least SPDY's 64 KiB, at most 2^31-1).
    fn session_window(&self) -> usize {
        flow::session_window(self.cfg.session_window)
    }

    /// Decides whether a DATA frame of `len` bytes for `id` is delivered (true) or dropped.
    fn accept_data(&mut self, now: Instant, id: StreamId, len: usize) -> bool {
        let flow = self.cfg.flow_control;
        if flow {
            if let Some(delta) =
                self.session_recv_window
                    .on_data(len, self.min_rtt, self.cfg.max_window)
            {
                WindowUpdate {
                    stream_id: 0,
                    delta,
                }
                .encode(&mut self.tx);
                self.activity(now);
            }
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // Unknown or forgotten stream: ignored, like Go.
            return false;
        };
        if s.state.is_reset() || s.state.is_fin_received() || s.discard {
            return false;
        }
        // A peer overrunning the window loses the stream, not the session.
        if flow && !s.windows.on_data(len) {
            self.reset_stream(now, id, RstStatus::FLOW_CONTROL_ERROR);
            return false;
        }
        true
    }

    fn deliver(&mut self, id: StreamId, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.state.is_reset() || s.discard {
            return;
        }
        s.recv_len += chunk.len();
        self.buffered += chunk.len();
        s.recv.push_back(chunk);
        self.notify(id);
    }

    fn deliver_fin(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.state.on_recv_fin() {
            return;
        }
        self.notify(id);
        self.maybe_forget(id);
    }

    fn handle_control(
        &mut self,
        now: Instant,
        kind: u16,
        flags: u8,
        payload: Bytes,
    ) -> Result<(), ProtocolError> {
        match kind {
            kind::SYN_STREAM => {
                let f = SynStream::decode(flags, payload)?;
                // Always inflate, even for streams we refuse: the zlib context must stay in step.
                let headers = self.decompressor.decompress(&f.header_block)?;
                header_block::check_forbidden(&headers, false)?;
                self.on_syn_stream(now, f.stream_id, f.flags, headers);
            }
            kind::SYN_REPLY => {
                let f = frame::SynReply::decode(flags, payload)?;
                let headers = self.decompressor.decompress(&f.header_block)?;
                header_block::check_forbidden(&headers, true)?;
                if let Some(s) = self.streams.get_mut(&f.stream_id) {
                    if s.state.on_syn_reply() {
                        self.notify(f.stream_id);
                        if f.flags & FLAG_FIN != 0 {
                            self.deliver_fin(f.stream_id);
                        }
                    }
                }
            }
            kind::HEADERS => {
                let f = frame::Headers::decode(flags, payload)?;
                let _ = self.decompressor.decompress(&f.header_block)?;
                if f.flags & FLAG_FIN != 0 && self.streams.contains_key(&f.stream_id) {
                    self.deliver_fin(f.stream_id);
                }
            }
            kind::RST_STREAM => {
                let f = RstStream::decode(&payload)?;
                if let Some(s) = self.streams.get_mut(&f.stream_id) {
                    if s.state.on_reset(ResetBy::Remote(f.status)) {
                        s.send_q.clear();
                        self.notify(f.stream_id);
                    }
                }
            }
            kind::SETTINGS => {
                let f = Settings::decode(flags, &payload)?;
                if self.cfg.flow_control {
                    for e in f
                        .entries
                        .iter()
                        .filter(|e| e.id == SettingId::INITIAL_WINDOW_SIZE)
                    {
                        let new = i64::from(e.value.min(MAX_WINDOW as u32));
                        let delta = new - self.peer_initial_window;
                        self.peer_initial_window = new;
                        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
                        for id in ids {
                            if let Some(s) = self.streams.get_mut(&id) {
                                s.windows.send += delta;
                            }
                            if delta > 0 {
                                self.unblock_window(id);
                            }
                        }
                    }
                }
            }
            kind::PING => {
                let f = Ping::decode(flags, &payload)?;
                let own_parity = match self.cfg.role {
                    Role::Client => 1,
                    Role::Server => 0,
                };
                if f.id % 2 != own_parity {
                    f.encode(&mut self.tx);
                } else if let Some((id, sent)) = self.outstanding_ping {
                    if id == f.id {
                        self.outstanding_ping = None;
                        let rtt = now.saturating_duration_since(sent);
                        self.last_rtt = Some(rtt);
                        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                    }
                }
            }
            kind::GOAWAY => {
                let f = GoAway::decode(flags, &payload)?;
                self.events.push_back(Event::GoAway {
                    last_good: f.last_good_stream_id,
                    status: f.status,
                });
                // Go stops reading at once and ends every stream (§3.9): do the same.
                self.end(CloseReason::GoAway(f.status));
            }
            kind::WINDOW_UPDATE => {
                let f = WindowUpdate::decode(flags, &payload)?;
                if self.cfg.flow_control {
                    self.on_window_update(now, f);
                }
            }
            kind => return Err(FrameError::UnknownControlType { kind }.into()),
        }
        Ok(())
    }

    fn on_syn_stream(&mut self, now: Instant, id: StreamId, flags: u8, headers: HeaderList) {
        let remote_parity = match self.cfg.role {
            Role::Client => 0,
            Role::Server => 1,
        };
        if id < self.next_remote_id || id > MAX_STREAM_ID || id % 2 != remote_parity {
            RstStream {
                stream_id: id,
                status: RstStatus::PROTOCOL_ERROR,
            }
            .encode(&mut self.tx);
            self.activity(now);
            return;
        }
        self.next_remote_id = id.saturating_add(2);
        if self.goaway_sent {
            return;
        }
        if self.remote_open >= self.cfg.max_incoming_streams {
            RstStream {
                stream_id: id,
                status: RstStatus::REFUSED_STREAM,
            }
            .encode(&mut self.tx);
            self.activity(now);
            return;
        }
        self.last_good_remote = id;
        self.remote_open += 1;
        let recv_window = flow::stream_window(self.cfg.stream_buffer);
        let state = State::pending(flags & FLAG_FIN != 0);
        let st = StreamState::new(false, state, self.peer_initial_window, recv_window);
        self.streams.insert(id, st);
        self.events.push_back(Event::Incoming { id, headers });
    }

    fn on_window_update(&mut self, now: Instant, f: WindowUpdate) {
        let delta = i64::from(f.delta);
        if f.stream_id == 0 {
            self.session_send_window = (self.session_send_window + delta).min(MAX_WINDOW);
            let mut blocked: Vec<StreamId> = self
                .streams
                .iter()
                .filter(|(_, s)| s.window_blocked)
                .map(|(id, _)| *id)
                .collect();
            // Oldest streams first, so the order of the ready ring does not depend on hashing.
            blocked.sort_unstable();
            for id in blocked {
                self.unblock_window(id);
            }
            return;
        }
        let Some(s) = self.streams.get_mut(&f.stream_id) else {
            return;
        };
        s.windows.send += delta;
        if s.windows.send > MAX_WINDOW {
            self.reset_stream(now, f.stream_id, RstStatus::FLOW_CONTROL_ERROR);
            return;
        }
        self.unblock_window(f.stream_id);
    }

    /// A window of `id` opened: queued data may go out again.
    fn unblock_window(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.window_blocked {
                s.window_blocked = false;
                if s.has_queued() && !s.in_ready {
                    s.in_ready = true;
                    self.ready.push_back(id);
                }
            }
        }
    }

    /// The peer closed the socket.
    pub fn handle_eof(&mut self) {
        self.end(CloseReason::Eof);
    }

    /// The transport failed.
    pub fn handle_io_error(&mut self, error: io::Error) {
        self.end(CloseReason::Io(Arc::new(error)));
    }

    fn fail(&mut self, now: Instant, e: &ProtocolError) {
        if self.closed.is_none() && !self.goaway_sent {
            GoAway {
                last_good_stream_id: self.last_good_remote,
                status: GoAwayStatus::PROTOCOL_ERROR,
            }
            .encode(&mut self.tx);
            self.goaway_sent = true;
            self.activity(now);
        }
        self.end(CloseReason::Protocol(e.to_string()));
    }

    /// Marks the session closed and every stream reset by the connection.
    fn end(&mut self, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason);
        self.partial = None;
        self.input_blocked = false;
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.streams.get_mut(&id) {
                s.state.on_reset(ResetBy::Connection);
            }
            self.notify(id);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Timers

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(idle) = self.cfg.idle_timeout {
            min(self.last_activity + idle);
        }
        if let Some(p) = self.next_ping_at {
            min(p);
        }
        if let Some((_, sent)) = self.outstanding_ping {
            min(sent.max(self.last_received) + self.cfg.ping_timeout);
        }
        t
    }

    /// Fires due timers: keepalive PINGs, dead-peer detection, idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if self.input_blocked {
            // The peer's frames are queued behind a full stream: it is not idle nor dead.
            self.last_received = now;
            self.last_activity = now;
        }
        if let Some(idle) = self.cfg.idle_timeout {
            if now >= self.last_activity + idle {
                self.close_with(now, CloseReason::IdleTimeout);
                return;
            }
        }
        if let Some((_, sent)) = self.outstanding_ping {
            if now >= sent.max(self.last_received) + self.cfg.ping_timeout {
                self.end(CloseReason::PingTimeout);
                return;
            }
        }
        if let (Some(at), Some(period)) = (self.next_ping_at, self.cfg.ping_interval) {
            if now >= at {
                self.send_ping(now);
                self.activity(now);
                self.next_ping_at = Some(now + period);
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Application side

    /// Opens a stream: SYN_STREAM with `headers` (names lower-cased). Wait for
    /// [`OpenState::Replied`] before writing.
    pub fn open_stream<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        now: Instant,
        headers: &[(N, V)],
    ) -> Result<StreamId, OpenError> {
        if self.closed.is_some() || self.goaway_sent {
            return Err(OpenError::Closed);
        }
        let id = self.next_local_id;
        if id > MAX_STREAM_ID {
            return Err(OpenError::IdsExhausted);
        }
        self.next_local_id = id.saturating_add(2);
        let f = SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            header_block: Bytes::new(),
        };
        let start = self.tx.len();
        frame::Head::encode_control(kind::SYN_STREAM, 0, 0, &mut self.tx);
        f.encode_fields(&mut self.tx);
        self.compressor.compress(headers, &mut self.tx);
        patch_len(&mut self.tx, start);
        self.activity(now);
        let recv_window = flow::stream_window(self.cfg.stream_buffer);
        self.streams.insert(
            id,
            StreamState::new(
                true,
                State::opening(),
                self.peer_initial_window,
                recv_window,
            ),
        );
        Ok(id)
    }

    /// Where a locally opened stream stands.
    pub fn open_state(&self, id: StreamId) -> OpenState {
        match self.streams.get(&id) {
            None => {
                if self.closed.is_some() {
                    OpenState::Closed
                } else {
                    OpenState::Reset
                }
            }
            // Replied first: the stream opened; a later RST shows up on read.
            Some(s) if s.state.is_replied() => OpenState::Replied,
            Some(s) => match s.state.reset_by() {
                Some(ResetBy::Connection) => OpenState::Closed,
                Some(_) => OpenState::Reset,
                None => OpenState::Pending,
            },
        }
    }

    /// Accepts an incoming stream: SYN_REPLY with empty headers.
    pub fn accept(&mut self, now: Instant, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if self.closed.is_some() || !s.state.accept() {
            return;
        }
        let start = self.tx.len();
        frame::Head::encode_control(kind::SYN_REPLY, 0, 0, &mut self.tx);
        self.tx.put_u32(id);
        self.compressor.compress::<&str, &str>(&[], &mut self.tx);
        patch_len(&mut self.tx, start);
        self.activity(now);
        self.notify(id);
    }

    /// Rejects an incoming stream: RST_STREAM CANCEL, and forgets it.
    pub fn reject(&mut self, now: Instant, id: StreamId) {
        self.reset(now, id);
        self.forget(id);
    }

    /// Copies buffered data of stream `id` into `dst`.
    pub fn read(&mut self, now: Instant, id: StreamId, mut dst: &mut [u8]) -> ReadOutcome {
        self.read_buf(now, id, &mut dst)
    }

    /// [`Session::read`] into any buffer, such as tokio's `ReadBuf`: its spare room may be
    /// uninitialised, and writing into it directly spares zeroing the whole of it on every
    /// read (what a `&mut [u8]` would need), which showed up as a tenth of a bulk stream's
    /// CPU when SPDY is carried inside a tunnel stream.
    pub fn read_buf(&mut self, now: Instant, id: StreamId, dst: &mut impl BufMut) -> ReadOutcome {
        let flow = self.cfg.flow_control;
        let room = dst.remaining_mut();
        let Some(s) = self.streams.get_mut(&id) else {
            return if self.closed.is_some() {
                ReadOutcome::Aborted
            } else {
                ReadOutcome::Reset
            };
        };
        let mut n = 0;
        while n < room {
            let Some(front) = s.recv.front_mut() else {
                break;
            };
            let k = front.len().min(room - n);
            dst.put_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                s.recv.pop_front();
            }
            n += k;
        }
        if n > 0 {
            s.recv_len -= n;
            self.buffered -= n;
            if flow && !s.state.is_reset() && !s.state.is_fin_received() {
                if let Some(delta) = s.windows.on_read(n, self.min_rtt, self.cfg.max_window) {
                    WindowUpdate {
                        stream_id: id,
                        delta,
                    }
                    .encode(&mut self.tx);
                    self.last_activity = now;
                }
            }
            return ReadOutcome::Data(n);
        }
        if room == 0 {
            return ReadOutcome::Data(0);
        }
        let fin = s.state.is_fin_received();
        match s.state.reset_by() {
            Some(ResetBy::Connection) if !fin => ReadOutcome::Aborted,
            Some(ResetBy::Local) | Some(ResetBy::Remote(_)) if !fin => ReadOutcome::Reset,
            _ if fin => ReadOutcome::Eof,
            _ => ReadOutcome::Pending,
        }
    }

    /// Bytes buffered for stream `id`.
    pub fn readable(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.recv_len)
    }

    /// Drops everything buffered for `id` and everything that arrives later (for streams the
    /// application never reads, such as the port-forward error stream on the server).
    pub fn discard_input(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.discard = true;
            self.buffered -= s.recv_len;
            s.recv_len = 0;
            s.recv.clear();
        }
    }

    /// Half-closes our direction of `id` (empty DATA with FLAG_FIN). Idempotent; a no-op on a
    /// reset stream.
    pub fn finish(&mut self, now: Instant, id: StreamId) {
        if self.closed.is_some() {
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.state.queue_fin(!s.send_q.is_empty()) {
            return;
        }
        // With data queued, the FIN follows it (fill_tx sends both).
        if !s.state.is_fin_queued() {
            Head::encode_data(id, FLAG_FIN, 0, &mut self.tx);
        }
        self.activity(now);
        self.maybe_forget(id);
    }

    /// Resets `id` with CANCEL unless it is already reset or finished both ways (Go's
    /// `Reset()`). Buffered data is dropped; reads then return [`ReadOutcome::Reset`].
    pub fn reset(&mut self, now: Instant, id: StreamId) {
        self.reset_stream(now, id, RstStatus::CANCEL);
    }

    fn reset_stream(&mut self, now: Instant, id: StreamId, status: RstStatus) {
        let closed = self.closed.is_some();
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.state.is_reset() {
            return;
        }
        // What was written before the reset goes first, as with Go's synchronous writes (an
        // error text, then RST); only what a closed window holds back is dropped.
        let flushed = closed || self.flush_stream(id);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let fin_out = s.state.is_fin_sent();
        s.send_q = BytesMut::new();
        s.state.on_reset(ResetBy::Local);
        self.buffered -= s.recv_len;
        s.recv_len = 0;
        s.recv.clear();
        if !(closed || flushed && fin_out && s.state.is_fin_received()) {
            RstStream {
                stream_id: id,
                status,
            }
            .encode(&mut self.tx);
            self.activity(now);
        }
        self.notify(id);
    }

    /// The application dropped its handle: reset unless finished both ways, then forget.
    pub fn release(&mut self, now: Instant, id: StreamId) {
        if let Some(s) = self.streams.get(&id) {
            if !(s.state.is_send_finished() && s.state.is_fin_received()) {
                self.reset(now, id);
            } else if !s.state.is_reset() && !self.flush_stream(id) {
                // Finished both ways but a window holds back the tail: it and the FIN still go
                // out (fill_tx forgets the stream after the FIN).
                if let Some(s) = self.streams.get_mut(&id) {
                    s.released = true;
                }
                return;
            }
        }
        self.forget(id);
    }

    fn maybe_forget(&mut self, _id: StreamId) {
        // Streams stay until released by the application (it still holds a handle).
    }

    pub(super) fn forget(&mut self, id: StreamId) {
        if let Some(s) = self.streams.remove(&id) {
            self.buffered -= s.recv_len;
            if !s.local {
                self.remote_open -= 1;
            }
        }
    }

    /// Closes the session as Go's `Close()` after Kubernetes reset every stream: RST_STREAM
    /// CANCEL on every open stream, GOAWAY(last good, OK). Flush, then close the socket.
    pub fn close(&mut self, now: Instant) {
        self.close_with(now, CloseReason::Local);
    }

    fn close_with(&mut self, now: Instant, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        let mut ids: Vec<StreamId> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.reset(now, id);
        }
        if !self.goaway_sent {
            GoAway {
                last_good_stream_id: self.last_good_remote,
                status: GoAwayStatus::OK,
            }
            .encode(&mut self.tx);
            self.goaway_sent = true;
        }
        self.end(reason);
    }
}

fn patch_len(tx: &mut BytesMut, start: usize) {
    let len = tx.len() - start - HEAD_LEN;
    debug_assert!(len <= frame::MAX_PAYLOAD_LEN);
    tx[start + 5] = (len >> 16) as u8;
    tx[start + 6] = (len >> 8) as u8;
    tx[start + 7] = len as u8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::stream::STREAM_SEND_QUEUE;

    fn pair(flow: bool) -> (Session, Session, Instant) {
        let now = Instant::now();
        let c = Session::new(
            Config {
                role: Role::Client,
                flow_control: flow,
                ..Config::default()
            },
            now,
        );
        let s = Session::new(
            Config {
                role: Role::Server,
                flow_control: flow,
                ..Config::default()
            },
            now,
        );
        (c, s, now)
    }

    /// A flow-controlled pair whose stream windows are 1000 bytes, SETTINGS already exchanged.
    fn pair_with_1000_byte_windows() -> (Session, Session, Instant) {
        let now = Instant::now();
        let cfg = |role| Config {
            role,
            flow_control: true,
            stream_buffer: 1000,
            ..Config::default()
        };
        let mut c = Session::new(cfg(Role::Client), now);
        let mut s = Session::new(cfg(Role::Server), now);
        pump(&mut s, &mut c, now); // SETTINGS
        (c, s, now)
    }

    fn pump(from: &mut Session, to: &mut Session, now: Instant) {
        let mut buf = BytesMut::new();
        from.poll_transmit(&mut buf);
        to.handle_input(now, &mut buf).unwrap();
    }

    #[test]
    fn open_accept_data_fin() {
        let (mut c, mut s, now) = pair(false);
        let id = c
            .open_stream(now, &[("streamtype", "data"), ("port", "80")])
            .unwrap();
        assert_eq!(id, 1);
        pump(&mut c, &mut s, now);
        let Some(Event::Incoming { id: sid, headers }) = s.poll_event() else {
            panic!()
        };
        assert_eq!(sid, 1);
        assert_eq!(headers[1], ("port".into(), "80".into()));
        s.accept(now, 1);
        pump(&mut s, &mut c, now);
        assert_eq!(c.open_state(1), OpenState::Replied);
        assert_eq!(c.write(now, 1, b"hello").unwrap(), 5);
        c.finish(now, 1);
        pump(&mut c, &mut s, now);
        let mut buf = [0u8; 16];
        assert_eq!(s.read(now, 1, &mut buf), ReadOutcome::Data(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(s.read(now, 1, &mut buf), ReadOutcome::Eof);
    }

    #[test]
    fn ping_echo_and_timeout() {
        let now = Instant::now();
        let mut c = Session::new(
            Config {
                ping_interval: Some(Duration::from_secs(5)),
                ping_timeout: Duration::from_secs(10),
                ..Config::default()
            },
            now,
        );
        let t1 = now + Duration::from_secs(5);
        assert_eq!(c.poll_timeout(), Some(t1));
        c.handle_timeout(t1);
        let mut out = BytesMut::new();
        c.poll_transmit(&mut out);
        assert_eq!(&out[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        // Server echoes.
        let mut s = Session::new(
            Config {
                role: Role::Server,
                ..Config::default()
            },
            now,
        );
        s.handle_input(t1, &mut out).unwrap();
        let mut echo = BytesMut::new();
        s.poll_transmit(&mut echo);
        assert_eq!(&echo[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        // No answer: dead after ping_timeout.
        c.handle_timeout(t1 + Duration::from_secs(5));
        assert!(!c.is_closed());
        c.handle_timeout(t1 + Duration::from_secs(10));
        assert_eq!(c.close_reason(), Some(&CloseReason::PingTimeout));
    }

    #[test]
    fn bad_syn_stream_id_gets_protocol_error_and_session_lives() {
        let (mut c, mut s, now) = pair(false);
        c.next_local_id = 2; // wrong parity
        c.open_stream(now, &[("a", "b")]).unwrap();
        pump(&mut c, &mut s, now);
        assert!(s.poll_event().is_none());
        let mut out = BytesMut::new();
        s.poll_transmit(&mut out);
        assert_eq!(
            &out[..],
            &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 1]
        );
        // Next properly numbered stream still works (context stayed in step).
        c.next_local_id = 3;
        c.open_stream(now, &[("a", "c")]).unwrap();
        pump(&mut c, &mut s, now);
        assert!(matches!(
            s.poll_event(),
            Some(Event::Incoming { id: 3, .. })
        ));
    }

    #[test]
    fn flow_control_blocks_sender_and_window_update_reopens() {
        let (mut c, mut s, now) = pair_with_1000_byte_windows();
        let id = c.open_stream(now, &[("x", "y")]).unwrap();
        pump(&mut c, &mut s, now);
        assert!(matches!(s.poll_event(), Some(Event::Incoming { .. })));
        s.accept(now, id);
        pump(&mut s, &mut c, now);
        // The window lets 1000 bytes out; the rest waits in the stream's queue (64 KiB), and
        // a writer beyond that is told to wait.
        let data = vec![7u8; 70_000];
        assert_eq!(c.write(now, id, &data).unwrap(), 1000 + STREAM_SEND_QUEUE);
        assert_eq!(c.write(now, id, &data).unwrap(), 0);
        pump(&mut c, &mut s, now);
        assert_eq!(s.readable(id), 1000);
        let mut buf = vec![0u8; 600];
        assert_eq!(s.read(now, id, &mut buf), ReadOutcome::Data(600));
        pump(&mut s, &mut c, now); // WINDOW_UPDATE 600
        pump(&mut c, &mut s, now);
        assert_eq!(s.readable(id), 400 + 600);
    }

    /// A flow-controlled pair whose first PINGs were answered `rtt` after they left (so
    /// each side's smallest round trip is `rtt`), with `max_window` as the growth cap.
    fn pair_after_first_ping(rtt: Duration, max_window: usize) -> (Session, Session, Instant) {
        let start = Instant::now();
        let cfg = |role| Config {
            role,
            flow_control: true,
            max_window,
            ..Config::default()
        };
        let mut c = Session::new(cfg(Role::Client), start);
        let mut s = Session::new(cfg(Role::Server), start);
        let now = start + rtt;
        pump(&mut c, &mut s, now); // c's SETTINGS, WINDOW_UPDATE, PING; s's answer queued
        pump(&mut s, &mut c, now); // s's own, and the answer to c's PING
        pump(&mut c, &mut s, now); // the answer to s's PING
        (c, s, now)
    }

    #[test]
    fn windows_grow_to_the_bandwidth_delay_product_of_a_long_round_trip() {
        // 4 ms: 2.5 MB/ms × 4 = 10 MB, between the configured windows and the 16 MiB cap.
        let (mut c, mut s, now) = pair_after_first_ping(Duration::from_millis(4), 16 << 20);
        assert_eq!(c.min_rtt(), Some(Duration::from_millis(4)));
        assert_eq!(s.min_rtt(), Some(Duration::from_millis(4)));
        let id = open_streams(&mut c, &mut s, now, 1)[0];
        let bdp = 10_000_000;
        // Session: the first credit returned (an eighth of 256 KiB received) opens it to the
        // product at once; the sender sees the whole of it less what is in flight.
        let sent = c.write(now, id, &[5u8; 40_000]).unwrap();
        assert_eq!(sent, 40_000);
        pump(&mut c, &mut s, now);
        pump(&mut s, &mut c, now);
        assert_eq!(s.session_recv_window.size, bdp);
        // Credit went back for the first 32 KiB frame; the second (7,232 B) waits for more.
        assert_eq!(c.session_send_window, bdp as i64 - (40_000 - 32 * 1024));
        // Stream: its first credit (half of 1 MiB read) grows its window the same way.
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0;
        while read < 600_000 {
            while c.write(now, id, &[5u8; 64 * 1024]).unwrap() > 0 {}
            pump(&mut c, &mut s, now);
            match s.read(now, id, &mut buf) {
                ReadOutcome::Data(n) => read += n,
                other => panic!("read: {other:?}"),
            }
            pump(&mut s, &mut c, now);
        }
        assert_eq!(s.streams[&id].windows.recv_size, bdp as u32);
        let in_flight = c.streams[&id].windows.send;
        assert!(
            in_flight > (1 << 20),
            "the sender's stream window grew past 1 MiB: {in_flight}"
        );
    }

    #[test]
    fn windows_stay_as_configured_on_a_short_round_trip_or_with_growth_off() {
        // Loopback-like: 40 µs is 100 KB, under the 256 KiB session and 1 MiB stream windows.
        for (rtt, max_window) in [
            (Duration::from_micros(40), 16 << 20),
            (Duration::from_millis(50), 0),
        ] {
            let (mut c, mut s, now) = pair_after_first_ping(rtt, max_window);
            let id = open_streams(&mut c, &mut s, now, 1)[0];
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..20 {
                while c.write(now, id, &[5u8; 64 * 1024]).unwrap() > 0 {}
                pump(&mut c, &mut s, now);
                let _ = s.read(now, id, &mut buf);
                pump(&mut s, &mut c, now);
            }
            assert_eq!(s.session_recv_window.size, 256 * 1024, "rtt {rtt:?}");
            assert_eq!(s.streams[&id].windows.recv_size, 1 << 20, "rtt {rtt:?}");
            // Growth off: no PING is sent to measure anything.
            if max_window == 0 {
                assert_eq!(s.min_rtt(), None);
            }
        }
    }

    /// Opens `n` streams from `c`, accepted by `s`.
    fn open_streams(c: &mut Session, s: &mut Session, now: Instant, n: usize) -> Vec<StreamId> {
        let ids: Vec<StreamId> = (0..n)
            .map(|_| c.open_stream(now, &[("x", "y")]).unwrap())
            .collect();
        pump(c, s, now);
        while let Some(ev) = s.poll_event() {
            if let Event::Incoming { id, .. } = ev {
                s.accept(now, id);
            }
        }
        pump(s, c, now);
        ids
    }

    #[test]
    fn a_small_write_waits_behind_one_frame_of_a_bulk_stream_not_its_backlog() {
        let (mut c, mut s, now) = pair(false);
        let ids = open_streams(&mut c, &mut s, now, 2);
        let (bulk, small) = (ids[0], ids[1]);
        let big = vec![1u8; 1 << 20];
        let mut taken = 0;
        loop {
            let n = c.write(now, bulk, &big[taken..]).unwrap();
            if n == 0 {
                break;
            }
            taken += n;
        }
        // The transmit buffer and the bulk stream's queue are full.
        assert_eq!(taken, c.cfg.send_buffer + STREAM_SEND_QUEUE);
        assert_eq!(c.write(now, small, b"ping").unwrap(), 4);
        // First batch: what was framed before the small write.
        pump(&mut c, &mut s, now);
        assert_eq!(s.readable(small), 0);
        // Second batch: the small write goes after at most one bulk frame.
        let mut batch = BytesMut::new();
        c.poll_transmit(&mut batch);
        let first_small = batch
            .windows(4)
            .position(|w| w == b"ping")
            .expect("the small write is in the next batch");
        assert!(
            first_small <= 2 * HEAD_LEN + c.cfg.max_data_frame,
            "at {first_small}"
        );
        s.handle_input(now, &mut batch).unwrap();
        assert_eq!(s.readable(small), 4);
    }

    #[test]
    fn a_closed_window_holds_only_its_own_stream() {
        let (mut c, mut s, now) = pair_with_1000_byte_windows();
        let ids = open_streams(&mut c, &mut s, now, 2);
        assert_eq!(c.write(now, ids[0], &[5u8; 5000]).unwrap(), 5000);
        assert_eq!(c.write(now, ids[1], b"hello").unwrap(), 5);
        pump(&mut c, &mut s, now);
        assert_eq!(s.readable(ids[0]), 1000);
        assert_eq!(s.readable(ids[1]), 5);
    }

    #[test]
    fn fin_and_reset_go_after_queued_data() {
        let (mut c, mut s, now) = pair(false);
        let ids = open_streams(&mut c, &mut s, now, 2);
        // Fill the transmit buffer so the next writes queue.
        let filler = vec![0u8; c.cfg.send_buffer];
        assert_eq!(c.write(now, ids[0], &filler).unwrap(), filler.len());
        assert_eq!(c.write(now, ids[1], b"last words").unwrap(), 10);
        c.finish(now, ids[1]);
        assert_eq!(c.write(now, ids[0], b"then reset").unwrap(), 10);
        c.reset(now, ids[0]);
        pump(&mut c, &mut s, now);
        pump(&mut c, &mut s, now);
        let mut buf = vec![0u8; 1 << 20];
        assert_eq!(s.read(now, ids[1], &mut buf), ReadOutcome::Data(10));
        assert_eq!(&buf[..10], b"last words");
        assert_eq!(s.read(now, ids[1], &mut buf), ReadOutcome::Eof);
        let mut got = 0;
        while let ReadOutcome::Data(n) = s.read(now, ids[0], &mut buf[got..]) {
            got += n;
        }
        assert_eq!(got, filler.len() + 10);
        assert_eq!(&buf[got - 10..got], b"then reset");
        assert_eq!(s.read(now, ids[0], &mut buf), ReadOutcome::Reset);
    }

    #[test]
    fn transport_failure_keeps_the_io_error() {
        use std::error::Error as _;
        let (mut c, _s, _now) = pair(false);
        c.handle_io_error(io::Error::from(io::ErrorKind::ConnectionReset));
        let reason = c.close_reason().expect("closed").clone();
        let source = reason.source().expect("source kept");
        let io = source.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(Some(&reason), c.close_reason());
    }
}
