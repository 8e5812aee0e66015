//! Send scheduling of a [`Session`]: what `write` does with the application's data, the
//! per-stream send queues and their spare buffers, and the `ready` ring that frames the
//! queues into the transmit buffer one DATA frame per stream in turn (`fill_tx`), within the
//! flow-control windows (PROTOCOL.md §3.6–§3.7).
//!
//! The lifecycle checks and the FIN are the stream's ([`super::stream`]), the window
//! arithmetic is [`super::flow`]'s; this file decides only what goes into the transmit buffer
//! when.
#![allow(clippy::disallowed_types)] // `Instant` is only passed in, never read from the clock.

use std::time::Instant;

use bytes::{Buf, BufMut};

use super::flow;
use super::frame::{self, Head, StreamId, FLAG_FIN};
use super::session::{Session, WriteError};
use super::stream::{ResetBy, STREAM_SEND_QUEUE};

/// Drained send-queue buffers kept for reuse (at most 512 KiB per connection).
const SPARE_QUEUES: usize = 8;

impl Session {
    /// Takes up to `data.len()` bytes for stream `id`. Returns how many were taken; `Ok(0)` for
    /// non-empty `data` means "blocked" (this stream's send queue is full): wait for
    /// [`Event::StreamChanged`]. Never blocks on windows without flow control (§3.7).
    ///
    /// # Fair sending
    ///
    /// When nothing else is waiting, data is framed straight into the transmit buffer (no
    /// copy beyond that one). Otherwise, or when the transmit buffer is at
    /// [`Config::send_buffer`] or a window is closed, it joins this stream's own send queue
    /// (at most 64 KiB), and [`Session::poll_transmit`] frames the queues one DATA frame per
    /// stream in turn. So a 64-byte request on one stream waits behind at most one frame of
    /// each busy stream, not behind everything they wrote first, and one stream with a closed
    /// window holds only its own queue.
    ///
    /// [`Event::StreamChanged`]: super::session::Event::StreamChanged
    /// [`Config::send_buffer`]: super::session::Config::send_buffer
    pub fn write(&mut self, now: Instant, id: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        self.check_writable(id)?;
        let mut n = 0;
        if self.streams[&id].send_q.is_empty() && self.ready.is_empty() {
            n = self.frame_direct(id, data, self.cfg.send_buffer);
        }
        let s = self.streams.get_mut(&id).expect("checked");
        let room = STREAM_SEND_QUEUE.saturating_sub(s.send_q.len());
        let k = (data.len() - n).min(room);
        if k > 0 {
            if s.send_q.capacity() == 0 {
                s.send_q = self.spare_queues.pop().unwrap_or_default();
                // Empty and unshared: reclaims the space `advance` left at the front.
                s.send_q.reserve(STREAM_SEND_QUEUE);
            }
            s.send_q.extend_from_slice(&data[n..n + k]);
            n += k;
            if !s.in_ready && !s.window_blocked {
                s.in_ready = true;
                self.ready.push_back(id);
            }
        }
        if n < data.len() {
            s.write_blocked = true;
        }
        if n > 0 {
            self.last_activity = now;
        }
        Ok(n)
    }

    /// Like [`Session::write`] but framed at once, whatever the transmit buffer holds: for short
    /// messages (error texts) that must be on the wire before a reset that follows. Still
    /// limited by flow-control windows (what they hold back is queued).
    pub fn write_unbounded(
        &mut self,
        now: Instant,
        id: StreamId,
        data: &[u8],
    ) -> Result<usize, WriteError> {
        self.check_writable(id)?;
        if !self.flush_stream(id) {
            return self.write(now, id, data);
        }
        let n = self.frame_direct(id, data, usize::MAX);
        if n < data.len() {
            return Ok(n + self.write(now, id, &data[n..])?);
        }
        self.last_activity = now;
        Ok(n)
    }

    fn check_writable(&self, id: StreamId) -> Result<(), WriteError> {
        if self.closed.is_some() {
            return Err(WriteError::ConnectionClosed);
        }
        let Some(s) = self.streams.get(&id) else {
            return Err(WriteError::UnknownStream);
        };
        if let Some(r) = s.state.reset_by() {
            return Err(if r == ResetBy::Connection {
                WriteError::ConnectionClosed
            } else {
                WriteError::Reset
            });
        }
        if s.state.is_send_finished() {
            return Err(WriteError::Finished);
        }
        if !s.state.can_send() {
            return Err(WriteError::NotAccepted);
        }
        Ok(())
    }

    /// How many bytes of `len` stream `id` may send now (flow-control windows).
    fn send_allowance(&self, id: StreamId, len: usize) -> usize {
        if !self.cfg.flow_control {
            return len;
        }
        let s = &self.streams[&id];
        flow::send_allowance(s.windows.send, self.session_send_window, len)
    }

    /// Frames `data` on `id` straight into `tx` while it is below `bound` and the windows
    /// allow; returns the bytes taken.
    fn frame_direct(&mut self, id: StreamId, data: &[u8], bound: usize) -> usize {
        let max_frame = self.cfg.max_data_frame.clamp(1, frame::MAX_PAYLOAD_LEN);
        let mut n = 0;
        while n < data.len() && self.tx.len() < bound {
            let k = self.send_allowance(id, (data.len() - n).min(max_frame));
            if k == 0 {
                break;
            }
            self.charge_windows(id, k);
            Head::encode_data(id, 0, k, &mut self.tx);
            self.tx.put_slice(&data[n..n + k]);
            n += k;
        }
        n
    }

    fn charge_windows(&mut self, id: StreamId, k: usize) {
        if self.cfg.flow_control {
            if let Some(s) = self.streams.get_mut(&id) {
                s.windows.send -= k as i64;
            }
            self.session_send_window -= k as i64;
        }
    }

    /// Frames up to one DATA frame from the front of `id`'s send queue into `tx`; then the
    /// FIN if it was waiting for the queue. Returns false, marking the stream window-blocked,
    /// when a window stopped it.
    fn frame_queued(&mut self, id: StreamId) -> bool {
        let max_frame = self.cfg.max_data_frame.clamp(1, frame::MAX_PAYLOAD_LEN);
        let queued = self.streams[&id].send_q.len();
        if queued > 0 {
            let k = self.send_allowance(id, queued.min(max_frame));
            if k == 0 {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.window_blocked = true;
                }
                return false;
            }
            self.charge_windows(id, k);
            Head::encode_data(id, 0, k, &mut self.tx);
            let s = self.streams.get_mut(&id).expect("caller checked");
            self.tx.put_slice(&s.send_q[..k]);
            s.send_q.advance(k);
            if s.send_q.is_empty() && self.spare_queues.len() < SPARE_QUEUES {
                self.spare_queues.push(std::mem::take(&mut s.send_q));
            }
            if s.write_blocked && s.send_q.len() <= STREAM_SEND_QUEUE / 2 {
                s.write_blocked = false;
                self.notify(id);
            }
        }
        let s = self.streams.get_mut(&id).expect("caller checked");
        if s.send_q.is_empty() && s.state.is_fin_queued() {
            s.state.on_fin_sent();
            Head::encode_data(id, FLAG_FIN, 0, &mut self.tx);
            if s.released {
                self.forget(id);
            }
        }
        true
    }

    /// Frames everything queued on `id` now (windows permitting), ahead of other streams: before
    /// a reset or an urgent message, so what was written first still goes first. Returns
    /// whether the queue is empty.
    pub(super) fn flush_stream(&mut self, id: StreamId) -> bool {
        loop {
            let Some(s) = self.streams.get(&id) else {
                return true;
            };
            if !s.has_queued() {
                return true;
            }
            if !self.frame_queued(id) {
                return false;
            }
        }
    }

    /// Moves queued stream data into `tx`, one DATA frame per ready stream in turn, until `tx`
    /// holds [`Config::send_buffer`] bytes or nothing more may go.
    ///
    /// [`Config::send_buffer`]: super::session::Config::send_buffer
    pub(super) fn fill_tx(&mut self) {
        while self.tx.len() < self.cfg.send_buffer {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.in_ready = false;
            if s.state.is_reset() || !s.has_queued() {
                continue;
            }
            if !self.frame_queued(id) {
                continue;
            }
            if let Some(s) = self.streams.get_mut(&id) {
                if s.has_queued() {
                    s.in_ready = true;
                    self.ready.push_back(id);
                }
            }
        }
    }
}
