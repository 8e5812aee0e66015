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
//!
//! # Layout
//!
//! This file holds the [`Session`] struct, its timers and the application side (open, accept,
//! read, finish, reset, close). The rest is split by concern, so that reading one does not
//! take scrolling past the others (issue 16):
//!
//! - `config.rs`: [`Config`] and [`Role`], what the driver decides before the session starts.
//! - `events.rs`: what the session reports back: [`Event`], [`CloseReason`], [`ProtocolError`]
//!   and the results of the application calls.
//! - `recv.rs`: the input side: framing, back-pressure and the handling of each frame type.
//! - `tests.rs`: client/server pairs on fake time.
//!
//! Send scheduling (`write`, the per-stream queues) is `spdy/send.rs`.
#![allow(clippy::disallowed_types)] // `Instant` is only passed in, never read from the clock.

mod config;
mod events;
mod recv;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use super::flow::WINDOW_GROWTH_RATE;
use super::flow::{self, SessionRecvWindow, DEFAULT_WINDOW};
use super::frame::{
    self, kind, GoAway, GoAwayStatus, Head, Ping, RstStatus, RstStream, Setting, SettingId,
    Settings, StreamId, SynStream, WindowUpdate, FLAG_FIN, HEAD_LEN, MAX_STREAM_ID,
};
use super::header_block::{HeaderCompressor, HeaderDecompressor};
use super::stream::{ResetBy, State, StreamState};

pub use config::{Config, Role};
pub use events::{
    CloseReason, Event, OpenError, OpenState, ProtocolError, ReadOutcome, WriteError,
};
use recv::PartialData;

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

    /// The session receive window we advertise (at least SPDY's 64 KiB, at most 2^31-1).
    fn session_window(&self) -> usize {
        flow::session_window(self.cfg.session_window)
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
