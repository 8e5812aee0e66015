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
//!
//! Layout:
//! - `connection`: [`Connection`] (opening streams, closing) and its [`Config`], which wraps
//!   the protocol crate's [`SessionConfig`] with the driver's own settings;
//! - `stream`: [`Stream`], one stream as `AsyncRead + AsyncWrite` with half-close, and
//!   [`StreamOpenError`], why opening one failed;
//! - `incoming`: [`Incoming`] and [`IncomingStream`], the streams the peer opens;
//! - `driver`: the spawned task that pumps socket ⇄ session and wakes the handles;
//! - this file: the state all of them share under one lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use porthole_proto::spdy::session as proto;
use porthole_proto::spdy::StreamId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod connection;
mod driver;
mod incoming;
mod stream;

pub use connection::{Config, Connection, Stats, StreamStart};
pub use incoming::{Incoming, IncomingStream};
pub use porthole_proto::spdy::session::CloseReason;
pub use porthole_proto::spdy::session::Config as SessionConfig;
pub use porthole_proto::spdy::session::Role;
pub use stream::{Stream, StreamOpenError};

/// Who waits on one stream: woken by the driver when the session reports the stream changed.
#[derive(Default)]
struct StreamWakers {
    read: Option<Waker>,
    write: Option<Waker>,
    open: Option<Waker>,
}

/// Everything behind the connection's one lock: the session and who waits on it. One lock
/// rather than one per stream, because every read and write changes session-wide state
/// (windows, the transmit buffer) anyway.
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

/// What the handles and the driver share.
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
