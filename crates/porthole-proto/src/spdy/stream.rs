//! One stream's state inside a [`Session`](super::session::Session) (PROTOCOL.md §3.5–§3.6):
//! its lifecycle as a [`State`] enum whose transitions are named for what happened, the data
//! received and not yet read, the data written and not yet framed, and its flow-control
//! windows.
//!
//! # Stream states
//!
//! ```text
//!            open_stream / SYN_STREAM in
//!                     │
//!     local: Opening ─┴─ remote: Pending ──reject──▶ (RST CANCEL, forgotten)
//!       │ SYN_REPLY in        │ accept (SYN_REPLY out)
//!       ▼                     ▼
//!     Open (send: open|fin_queued|fin_sent, recv: open|fin_received) ──RST in/out──▶ Reset
//!       │ both FINs, or release()
//!       ▼
//!     forgotten (DATA for it is ignored, like Go)
//! ```
//!
//! An Opening stream already has both halves: the application may write and finish before
//! the SYN_REPLY, and the peer may finish (HEADERS with FIN) before it. A Pending stream can
//! only have received a FIN (on its SYN_STREAM). Any state but Reset goes to Reset on
//! RST_STREAM in or out, or when the session ends.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::flow::StreamWindows;
use super::frame::RstStatus;

/// Bytes one stream may have queued for sending (two Go-sized DATA frames). What a writer
/// cannot queue waits in its own task: per-stream back-pressure.
pub(super) const STREAM_SEND_QUEUE: usize = 64 * 1024;

/// Who ended a stream with a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResetBy {
    /// We sent RST_STREAM.
    Local,
    /// The peer sent RST_STREAM with this status.
    Remote(RstStatus),
    /// The session ended first.
    Connection,
}

/// Our sending direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendHalf {
    /// The application may write.
    Open,
    /// `finish` was called with data still queued: FIN follows the last queued byte.
    FinQueued,
    /// FIN is in the transmit buffer.
    FinSent,
}

/// The peer's sending direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvHalf {
    /// More data may come.
    Open,
    /// The peer sent FIN.
    FinReceived,
}

/// A stream's lifecycle (see the diagram in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Opened by us, waiting for SYN_REPLY.
    Opening { send: SendHalf, recv: RecvHalf },
    /// Opened by the peer, not accepted yet (nothing may be sent on it).
    Pending { recv: RecvHalf },
    /// Replied (local) or accepted (remote).
    Open { send: SendHalf, recv: RecvHalf },
    /// Reset by either side or by the end of the session. Remembers whether the stream had
    /// been replied (it did open, see `Session::open_state`) and whether the peer had
    /// finished (reads then end with EOF, not a reset).
    Reset {
        by: ResetBy,
        replied: bool,
        fin_received: bool,
    },
}

impl State {
    /// A stream we open.
    pub(super) fn opening() -> Self {
        State::Opening {
            send: SendHalf::Open,
            recv: RecvHalf::Open,
        }
    }

    /// A stream the peer opened, with FIN already when `fin`.
    pub(super) fn pending(fin: bool) -> Self {
        State::Pending {
            recv: if fin {
                RecvHalf::FinReceived
            } else {
                RecvHalf::Open
            },
        }
    }

    /// Who reset the stream, once it was.
    pub(super) fn reset_by(&self) -> Option<ResetBy> {
        match *self {
            State::Reset { by, .. } => Some(by),
            _ => None,
        }
    }

    /// Whether it was reset.
    pub(super) fn is_reset(&self) -> bool {
        matches!(self, State::Reset { .. })
    }

    /// Whether the stream opened: SYN_REPLY received (local) or sent (remote), also when it
    /// was reset later.
    pub(super) fn is_replied(&self) -> bool {
        match *self {
            State::Open { .. } => true,
            State::Reset { replied, .. } => replied,
            State::Opening { .. } | State::Pending { .. } => false,
        }
    }

    /// Whether the peer sent FIN (also when the stream was reset after it).
    pub(super) fn is_fin_received(&self) -> bool {
        match *self {
            State::Opening { recv, .. } | State::Pending { recv } | State::Open { recv, .. } => {
                recv == RecvHalf::FinReceived
            }
            State::Reset { fin_received, .. } => fin_received,
        }
    }

    /// Our sending half, while the stream is not reset and may send (not Pending).
    fn send_half(&self) -> Option<SendHalf> {
        match *self {
            State::Opening { send, .. } | State::Open { send, .. } => Some(send),
            State::Pending { .. } | State::Reset { .. } => None,
        }
    }

    /// Whether `finish` was called (FIN queued or sent), on a stream not reset.
    pub(super) fn is_send_finished(&self) -> bool {
        matches!(
            self.send_half(),
            Some(SendHalf::FinQueued | SendHalf::FinSent)
        )
    }

    /// Whether a FIN waits for the send queue to drain.
    pub(super) fn is_fin_queued(&self) -> bool {
        self.send_half() == Some(SendHalf::FinQueued)
    }

    /// Whether our FIN is out (in the transmit buffer).
    pub(super) fn is_fin_sent(&self) -> bool {
        self.send_half() == Some(SendHalf::FinSent)
    }

    /// Whether the application may write or finish: Opening or Open, not reset. (A Pending
    /// stream must be accepted first.)
    pub(super) fn can_send(&self) -> bool {
        self.send_half().is_some()
    }

    /// SYN_REPLY arrived. Returns false, changing nothing, unless the stream was Opening.
    pub(super) fn on_syn_reply(&mut self) -> bool {
        let State::Opening { send, recv } = *self else {
            return false;
        };
        *self = State::Open { send, recv };
        true
    }

    /// The application accepted a Pending stream (SYN_REPLY goes out). Returns false,
    /// changing nothing, in any other state.
    pub(super) fn accept(&mut self) -> bool {
        let State::Pending { recv } = *self else {
            return false;
        };
        *self = State::Open {
            send: SendHalf::Open,
            recv,
        };
        true
    }

    /// The peer sent FIN. Returns false, changing nothing, on a reset stream.
    pub(super) fn on_recv_fin(&mut self) -> bool {
        match self {
            State::Opening { recv, .. } | State::Pending { recv } | State::Open { recv, .. } => {
                *recv = RecvHalf::FinReceived;
                true
            }
            State::Reset { .. } => false,
        }
    }

    /// The application finished its direction; `data_queued` says whether written data still
    /// waits in the send queue (then the FIN waits too). Returns false, changing nothing,
    /// when the stream cannot send or was already finished.
    pub(super) fn queue_fin(&mut self, data_queued: bool) -> bool {
        match self {
            State::Opening { send, .. } | State::Open { send, .. } if *send == SendHalf::Open => {
                *send = if data_queued {
                    SendHalf::FinQueued
                } else {
                    SendHalf::FinSent
                };
                true
            }
            _ => false,
        }
    }

    /// The FIN that waited for the send queue was framed.
    pub(super) fn on_fin_sent(&mut self) {
        if let State::Opening { send, .. } | State::Open { send, .. } = self {
            if *send == SendHalf::FinQueued {
                *send = SendHalf::FinSent;
            }
        }
    }

    /// RST_STREAM went out or came in, or the session ended. Returns false, changing
    /// nothing, when it already was reset.
    pub(super) fn on_reset(&mut self, by: ResetBy) -> bool {
        if self.is_reset() {
            return false;
        }
        *self = State::Reset {
            by,
            replied: self.is_replied(),
            fin_received: self.is_fin_received(),
        };
        true
    }
}

/// Everything the session keeps for one stream.
#[derive(Debug)]
pub(super) struct StreamState {
    /// Opened by us (decides the peer's open-stream count when forgotten).
    pub(super) local: bool,
    /// The lifecycle.
    pub(super) state: State,

    // Receiving.
    /// Data received and not yet read.
    pub(super) recv: VecDeque<Bytes>,
    /// Bytes in `recv`.
    pub(super) recv_len: usize,
    /// The application never reads this stream: received data is dropped
    /// (`Session::discard_input`).
    pub(super) discard: bool,

    // Sending.
    /// Data accepted by `write` but not yet framed into `tx` (see `Session::fill_tx`).
    /// Unallocated while empty; the buffer goes back to `Session::spare_queues` once drained,
    /// so a busy stream costs no allocation per write and an idle one holds no memory.
    pub(super) send_q: BytesMut,
    /// The application dropped its handle while data was still queued (finished both ways
    /// otherwise): forget the stream once the queue and FIN are out.
    pub(super) released: bool,

    /// Flow-control windows (used only with `Config::flow_control`).
    pub(super) windows: StreamWindows,

    // Queue membership and wake-ups: not lifecycle, each says where the stream is listed or
    // who must be told.
    /// An `Event::StreamChanged` for it is queued and not yet polled.
    pub(super) notify_queued: bool,
    /// The application's last write found the send queue full: notify when it drains.
    pub(super) write_blocked: bool,
    /// In `Session::ready` (has queued data the windows allow).
    pub(super) in_ready: bool,
    /// Has queued data but a flow-control window is closed: back in `ready` on WINDOW_UPDATE.
    pub(super) window_blocked: bool,
}

impl StreamState {
    /// A stream in `state` with the given initial send and receive windows.
    pub(super) fn new(local: bool, state: State, send_window: i64, recv_window: i64) -> Self {
        StreamState {
            local,
            state,
            recv: VecDeque::new(),
            recv_len: 0,
            discard: false,
            send_q: BytesMut::new(),
            released: false,
            windows: StreamWindows::new(send_window, recv_window),
            notify_queued: false,
            write_blocked: false,
            in_ready: false,
            window_blocked: false,
        }
    }

    /// Whether it has queued data or a queued FIN to frame.
    pub(super) fn has_queued(&self) -> bool {
        !self.send_q.is_empty() || self.state.is_fin_queued()
    }
}
