//! The driver task: the one owner of the socket. It reads into the session, writes what the
//! session queued, fires its timers and wakes the stream handles the session's events name.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use porthole_proto::spdy::session::Event;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::{Inner, Shared};

/// Read chunk size of the driver.
const READ_CHUNK: usize = 64 * 1024;
/// The driver stops reading the socket while this much input is unprocessed.
const RX_HIGH_WATER: usize = 256 * 1024;
/// How long a closing session may take to flush before the socket is dropped.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The driver task: socket I/O, timers, event dispatch.
pub(super) struct Driver<T> {
    io: T,
    shared: Arc<Shared>,
    rx: BytesMut,
    out: BytesMut,
    sleep: Pin<Box<Sleep>>,
    sleep_at: Option<Instant>,
    read_done: bool,
    eof_pending: bool,
    io_err_pending: Option<io::Error>,
    write_broken: bool,
    want_read: bool,
    flush_needed: bool,
    flush_deadline: Option<Instant>,
    wake_list: Vec<Waker>,
}

impl<T> Driver<T> {
    pub(super) fn new(io: T, shared: Arc<Shared>) -> Driver<T> {
        Driver {
            io,
            shared,
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
        }
    }
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
            self.io_err_pending.get_or_insert(e);
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
