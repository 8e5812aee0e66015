//! What a [`Session`] hands back to its driver and application: [`Event`]s, why it
//! ended ([`CloseReason`], [`ProtocolError`]) and the outcomes of `open_stream`, `write` and
//! `read`. These are the public vocabulary of the session, kept apart from its internals.

use std::io;
use std::sync::Arc;

#[cfg(doc)]
use super::Session;
use crate::spdy::frame::{FrameError, GoAwayStatus, StreamId};
use crate::spdy::header_block::{HeaderError, HeaderList};

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
