//! SPDY/3.1 flow-control windows (PROTOCOL.md §3.7), used only with [`Config::flow_control`].
//!
//! The arithmetic of the send and receive windows of a stream and of the session (stream 0),
//! when credit goes back to the peer (a stream: half its window; the session: an eighth), and
//! how a receive window grows towards the path's bandwidth-delay product
//! ([`Config::max_window`]). The session decides when to call these and encodes the
//! WINDOW_UPDATE frames.
//!
//! [`Config::flow_control`]: super::session::Config::flow_control
//! [`Config::max_window`]: super::session::Config::max_window
#![allow(clippy::disallowed_types)] // No clock is read here; `Duration` only.

use std::time::Duration;

/// SPDY/3.1 default initial window (both stream and session).
pub(super) const DEFAULT_WINDOW: i64 = 65_536;
/// The rate a grown window is sized for, in bytes per second ([`Config::max_window`]): twice
/// 10 Gbit/s, so that a window never caps a path that fast, at 2.5 MB per millisecond of
/// round trip.
///
/// [`Config::max_window`]: super::session::Config::max_window
pub const WINDOW_GROWTH_RATE: u64 = 2_500_000_000;
/// Largest window SPDY/3.1 allows (2^31-1).
pub(super) const MAX_WINDOW: i64 = 0x7fff_ffff;

/// The window to give when credit goes back, for one now `current` in size: the path's
/// bandwidth-delay product at [`WINDOW_GROWTH_RATE`] and `min_rtt` when that is larger, at most
/// `max_window` (see [`Config::max_window`]).
///
/// [`Config::max_window`]: super::session::Config::max_window
pub(super) fn grown_window(current: u64, min_rtt: Option<Duration>, max_window: usize) -> u64 {
    let Some(rtt) = min_rtt.filter(|_| max_window > 0) else {
        return current;
    };
    let bdp = rtt.as_nanos() * u128::from(WINDOW_GROWTH_RATE) / 1_000_000_000;
    let cap = (max_window as u64).min(MAX_WINDOW as u64);
    current.max((bdp.min(u128::from(cap))) as u64)
}

/// The session receive window we advertise for a configured `session_window`: at least
/// SPDY's 64 KiB, at most 2^31-1.
pub(super) fn session_window(session_window: usize) -> usize {
    session_window.clamp(DEFAULT_WINDOW as usize, MAX_WINDOW as usize)
}

/// The receive window a new stream is given for a configured `stream_buffer`.
pub(super) fn stream_window(stream_buffer: usize) -> i64 {
    stream_buffer.min(MAX_WINDOW as usize) as i64
}

/// How many bytes of `len` may be sent with the stream's and the session's send windows at
/// `stream` and `session` (either may be negative after a SETTINGS shrank it).
pub(super) fn send_allowance(stream: i64, session: i64, len: usize) -> usize {
    let window = stream.min(session);
    if window <= 0 {
        0
    } else {
        len.min(window as usize)
    }
}

/// The session's (stream 0) receive window.
#[derive(Debug)]
pub(super) struct SessionRecvWindow {
    /// Bytes read off the socket since credit last went back.
    unacked: u64,
    /// The window advertised (starts at `session_window`, may grow).
    pub(super) size: u64,
}

impl SessionRecvWindow {
    pub(super) fn new(size: u64) -> Self {
        SessionRecvWindow { unacked: 0, size }
    }

    /// A DATA frame of `len` bytes was read off the socket. Returns the WINDOW_UPDATE delta
    /// for stream 0 when credit goes back.
    pub(super) fn on_data(
        &mut self,
        len: usize,
        min_rtt: Option<Duration>,
        max_window: usize,
    ) -> Option<u32> {
        self.unacked += len as u64;
        // An eighth at a time: credit flows back steadily, the sender rarely runs dry.
        if self.unacked < self.size / 8 {
            return None;
        }
        let grown = grown_window(self.size, min_rtt, max_window);
        let delta = (self.unacked + grown - self.size).min(MAX_WINDOW as u64) as u32;
        self.size = grown;
        self.unacked = 0;
        Some(delta)
    }
}

/// A stream's flow-control windows.
#[derive(Debug)]
pub(super) struct StreamWindows {
    /// What the peer lets us send (SETTINGS and WINDOW_UPDATE add, DATA sent takes).
    pub(super) send: i64,
    /// What the peer may still send before overrunning.
    pub(super) recv: i64,
    /// Bytes the reader consumed since credit last went back.
    pub(super) recv_unacked: u32,
    /// The receive window this stream was given (starts at `stream_buffer`, may grow).
    pub(super) recv_size: u32,
}

impl StreamWindows {
    pub(super) fn new(send: i64, recv: i64) -> Self {
        StreamWindows {
            send,
            recv,
            recv_unacked: 0,
            recv_size: recv.clamp(0, MAX_WINDOW) as u32,
        }
    }

    /// The peer sent `len` bytes of DATA. Returns false when that overran the window (the
    /// stream is then reset with FLOW_CONTROL_ERROR).
    pub(super) fn on_data(&mut self, len: usize) -> bool {
        self.recv -= len as i64;
        self.recv >= 0
    }

    /// The reader consumed `n` bytes. Returns the WINDOW_UPDATE delta when credit goes back:
    /// once half the window was consumed.
    pub(super) fn on_read(
        &mut self,
        n: usize,
        min_rtt: Option<Duration>,
        max_window: usize,
    ) -> Option<u32> {
        self.recv_unacked += n as u32;
        self.recv += n as i64;
        if self.recv_unacked * 2 < self.recv_size {
            return None;
        }
        let size = u64::from(self.recv_size);
        // Only a stream that moves data grows (an idle one keeps its window).
        let grown = grown_window(size, min_rtt, max_window);
        let extra = (grown - size) as u32;
        let delta = self.recv_unacked + extra;
        self.recv += i64::from(extra);
        self.recv_size += extra;
        self.recv_unacked = 0;
        Some(delta)
    }
}
