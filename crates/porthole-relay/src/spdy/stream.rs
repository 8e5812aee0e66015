//! [`Stream`], one SPDY stream as `AsyncRead + AsyncWrite` with half-close: reads and writes
//! go straight to the shared session under its lock, never to the socket.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use porthole_proto::spdy::session::{OpenState, ReadOutcome, WriteError};
use porthole_proto::spdy::StreamId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{now, Shared};

/// Why opening a stream failed, including waiting for its SYN_REPLY (the protocol crate's
/// [`proto::OpenError`] covers only the local refusal). The texts are client-go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamOpenError {
    /// No SYN_REPLY within `open_timeout`.
    #[error("Timeout occurred")]
    Timeout,
    /// The peer answered with RST_STREAM.
    #[error("Stream reset")]
    Reset,
    /// The connection is closed or closing.
    #[error("connection closed: {0}")]
    Closed(String),
    /// No stream ids left.
    #[error("Unable to get new stream id")]
    IdsExhausted,
}

/// One SPDY stream as a byte stream with half-close.
pub struct Stream {
    id: StreamId,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl Stream {
    pub(super) fn new(id: StreamId, shared: Arc<Shared>) -> Stream {
        Stream { id, shared }
    }

    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Waits for the peer's SYN_REPLY to a stream we opened (at once if it already came), at
    /// most the connection's `open_timeout` (client-go's 30 s, `Timeout occurred`).
    pub async fn opened(&self) -> Result<(), StreamOpenError> {
        let (id, shared) = (self.id, &self.shared);
        let wait = poll_fn(|cx| {
            let mut inner = shared.lock();
            match inner.session.open_state(id) {
                OpenState::Pending => {
                    if let Some(w) = inner.wakers.get_mut(&id) {
                        w.open = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                OpenState::Replied => Poll::Ready(Ok(())),
                OpenState::Reset => Poll::Ready(Err(StreamOpenError::Reset)),
                OpenState::Closed => Poll::Ready(Err(StreamOpenError::Closed(
                    inner
                        .session
                        .close_reason()
                        .map_or("closed".to_string(), |r| r.to_string()),
                ))),
            }
        });
        match tokio::time::timeout(shared.open_timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StreamOpenError::Timeout),
        }
    }

    /// Sends RST_STREAM(CANCEL) unless already reset or finished both ways (Go's `Reset()`).
    pub fn reset(&mut self) {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.reset(now(), self.id);
        inner.kick(tx_before);
    }

    /// Drops all data received on this stream from now on (a stream nobody reads must never
    /// hold up the connection). Reads then see only FIN/RST.
    pub fn discard_input(&mut self) {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.discard_input(self.id);
        inner.kick(tx_before);
    }

    /// Queues `data` at once, ignoring the send-buffer bound (for short texts such as
    /// port-forward error messages). Returns how many bytes were taken (all, unless a
    /// negotiated flow-control window is closed).
    pub fn send_now(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        let r = inner.session.write_unbounded(now(), self.id, data);
        inner.kick(tx_before);
        r.map_err(write_error)
    }
}

fn write_error(e: WriteError) -> io::Error {
    let kind = match e {
        WriteError::Finished => io::ErrorKind::BrokenPipe,
        WriteError::Reset | WriteError::UnknownStream => io::ErrorKind::ConnectionReset,
        WriteError::ConnectionClosed => io::ErrorKind::ConnectionAborted,
        WriteError::NotAccepted => io::ErrorKind::NotConnected,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        // Straight into the caller's buffer (already advanced): no zeroing of its spare room.
        match inner.session.read_buf(now(), id, buf) {
            ReadOutcome::Data(_) => {
                inner.kick(tx_before);
                Poll::Ready(Ok(()))
            }
            ReadOutcome::Pending => {
                if let Some(w) = inner.wakers.get_mut(&id) {
                    w.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            ReadOutcome::Eof => Poll::Ready(Ok(())),
            ReadOutcome::Reset => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset",
            ))),
            ReadOutcome::Aborted => {
                let reason = inner
                    .session
                    .close_reason()
                    .map_or("connection closed".into(), |r| r.to_string());
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    reason,
                )))
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        match inner.session.write(now(), id, data) {
            Ok(0) if !data.is_empty() => {
                // This stream's send queue is full: woken by StreamChanged once it drains.
                if let Some(w) = inner.wakers.get_mut(&id) {
                    w.write = Some(cx.waker().clone());
                }
                inner.kick(tx_before);
                Poll::Pending
            }
            Ok(n) => {
                inner.kick(tx_before);
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(write_error(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.finish(now(), self.id);
        inner.kick(tx_before);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        let tx_before = inner.session.pending_transmit();
        inner.session.release(now(), self.id);
        inner.wakers.remove(&self.id);
        inner.kick(tx_before);
    }
}
