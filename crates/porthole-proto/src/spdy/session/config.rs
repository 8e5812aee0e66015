//! The settings a driver picks for a [`Session`] before it starts: which end of the upgrade it
//! is, timers, buffer sizes and whether flow control was negotiated. Kept apart so the defaults
//! and their reasons can be read without the state machine.

use std::time::Duration;

#[cfg(doc)]
use super::{Session, WINDOW_GROWTH_RATE};
use crate::spdy::header_block;

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
