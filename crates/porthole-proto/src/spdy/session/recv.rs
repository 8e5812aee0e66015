//! The input side of a [`Session`]: bytes from the socket cut into frames, DATA delivered
//! in chunks as it arrives (pausing at a full stream buffer, see the module docs of
//! [`super`]), and the handling of each control frame type (PROTOCOL.md §3.5–§3.10).
//! The receive windows' arithmetic is `spdy/flow.rs`'s; this file decides when it applies.
#![allow(clippy::disallowed_types)] // `Instant` is only passed in, never read from the clock.

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use super::{CloseReason, Event, ProtocolError, Role, Session};
use crate::spdy::flow::{self, MAX_WINDOW};
use crate::spdy::frame::{
    self, kind, FrameError, GoAway, Head, Ping, RstStatus, RstStream, SettingId, Settings,
    StreamId, SynStream, WindowUpdate, FLAG_FIN, HEAD_LEN, MAX_STREAM_ID,
};
use crate::spdy::header_block::{self, HeaderList};
use crate::spdy::stream::{ResetBy, State, StreamState};

/// A DATA frame whose payload is still arriving (DATA is delivered as it comes, in chunks).
#[derive(Debug, Clone, Copy)]
pub(super) struct PartialData {
    pub(super) stream_id: StreamId,
    remaining: usize,
    fin: bool,
    discard: bool,
}

impl Session {
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

    pub(super) fn process_input(
        &mut self,
        now: Instant,
        src: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
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

    /// Decodes one control frame and hands it to its handler. Decoding (and inflating every
    /// header block) happens here for every frame, whatever the handler then makes of it.
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
                self.on_syn_reply(f.stream_id, f.flags);
            }
            kind::HEADERS => {
                let f = frame::Headers::decode(flags, payload)?;
                let _ = self.decompressor.decompress(&f.header_block)?;
                self.on_headers(f.stream_id, f.flags);
            }
            kind::RST_STREAM => {
                let f = RstStream::decode(&payload)?;
                self.on_rst_stream(f);
            }
            kind::SETTINGS => {
                let f = Settings::decode(flags, &payload)?;
                if self.cfg.flow_control {
                    self.on_settings(&f);
                }
            }
            kind::PING => {
                let f = Ping::decode(flags, &payload)?;
                self.on_ping(now, f);
            }
            kind::GOAWAY => {
                let f = GoAway::decode(flags, &payload)?;
                self.on_goaway(f);
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

    fn on_syn_reply(&mut self, id: StreamId, flags: u8) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.state.on_syn_reply() {
                self.notify(id);
                if flags & FLAG_FIN != 0 {
                    self.deliver_fin(id);
                }
            }
        }
    }

    fn on_headers(&mut self, id: StreamId, flags: u8) {
        if flags & FLAG_FIN != 0 && self.streams.contains_key(&id) {
            self.deliver_fin(id);
        }
    }

    fn on_rst_stream(&mut self, f: RstStream) {
        if let Some(s) = self.streams.get_mut(&f.stream_id) {
            if s.state.on_reset(ResetBy::Remote(f.status)) {
                s.send_q.clear();
                self.notify(f.stream_id);
            }
        }
    }

    /// Only INITIAL_WINDOW_SIZE matters, and only with flow control.
    fn on_settings(&mut self, f: &Settings) {
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

    /// The peer's PINGs are echoed; ours, when answered, measure the round trip.
    fn on_ping(&mut self, now: Instant, f: Ping) {
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

    fn on_goaway(&mut self, f: GoAway) {
        self.events.push_back(Event::GoAway {
            last_good: f.last_good_stream_id,
            status: f.status,
        });
        // Go stops reading at once and ends every stream (§3.9): do the same.
        self.end(CloseReason::GoAway(f.status));
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
}
