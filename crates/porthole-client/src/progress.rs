//! Byte counts of a connection while it is open, for `porthole forward`'s live view.
//!
//! The engine reports a connection's bytes when it closes ([`Event::ConnectionClosed`]); a
//! long-lived connection (a database session, a gRPC channel) would show nothing until then.
//! [`Counted`] counts what passes through the local socket, and [`forward_reporting`] emits an
//! [`Event::ConnectionProgress`] at most once per [`PROGRESS_INTERVAL`] while the counts move,
//! only for printers that ask for it ([`Output::wants_progress`]), so `port-forward -o json`
//! prints what it always printed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::output::{Event, Output};

/// How often an open connection's counts are reported.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes through one local connection so far.
#[derive(Debug, Default)]
pub struct LiveBytes {
    /// Read from the local socket (on the way to the pod).
    to_pod: AtomicU64,
    /// Written to the local socket (from the pod).
    from_pod: AtomicU64,
}

impl LiveBytes {
    /// Counts that start with `prefix_len` bytes already read from the local socket (the early
    /// data sent with the stream headers).
    pub fn with_prefix(prefix_len: usize) -> Self {
        LiveBytes {
            to_pod: AtomicU64::new(prefix_len as u64),
            from_pod: AtomicU64::new(0),
        }
    }

    /// `(to_pod, from_pod)`.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.to_pod.load(Ordering::Relaxed),
            self.from_pod.load(Ordering::Relaxed),
        )
    }
}

/// A local socket that counts into a [`LiveBytes`].
pub struct Counted<'a, S> {
    inner: &'a mut S,
    counts: &'a LiveBytes,
}

impl<'a, S> Counted<'a, S> {
    /// Counts what passes through `inner`.
    pub fn new(inner: &'a mut S, counts: &'a LiveBytes) -> Self {
        Counted { inner, counts }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        this.counts.to_pod.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.counts.from_pod.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What [`forward_reporting`] says about the connection.
pub struct ProgressOf {
    /// Connection number.
    pub id: u64,
    /// Local port.
    pub local_port: u16,
    /// Pod port.
    pub remote_port: u16,
    /// The pod serving it.
    pub pod: String,
}

/// Awaits `forward` (which counts into `counts`), reporting progress on `output` meanwhile if
/// it wants that.
pub async fn forward_reporting<T>(
    forward: impl Future<Output = T>,
    counts: &LiveBytes,
    output: &Output,
    of: ProgressOf,
) -> T {
    if !output.wants_progress() {
        return forward.await;
    }
    let mut forward = std::pin::pin!(forward);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + PROGRESS_INTERVAL,
        PROGRESS_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (0, 0);
    loop {
        tokio::select! {
            r = &mut forward => return r,
            _ = tick.tick() => {
                let now = counts.snapshot();
                if now != last {
                    last = now;
                    output.event(Event::ConnectionProgress {
                        id: of.id,
                        local_port: of.local_port,
                        remote_port: of.remote_port,
                        pod: of.pod.clone(),
                        bytes_to_pod: now.0,
                        bytes_from_pod: now.1,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_ways() {
        let (mut a, mut peer) = tokio::io::duplex(64);
        let counts = LiveBytes::default();
        let mut c = Counted::new(&mut a, &counts);
        peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        c.write_all(b"abc").await.unwrap();
        assert_eq!(counts.snapshot(), (5, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_while_open_only_for_taps() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let output = Output::tap_only(tx);
        let counts = LiveBytes::default();
        let of = || ProgressOf {
            id: 1,
            local_port: 2,
            remote_port: 3,
            pod: "p".into(),
        };
        let work = async {
            counts.to_pod.fetch_add(10, Ordering::Relaxed);
            tokio::time::sleep(PROGRESS_INTERVAL * 3 + Duration::from_millis(10)).await;
        };
        forward_reporting(work, &counts, &output, of()).await;
        // One event: the counts moved once, then stood still.
        match rx.try_recv() {
            Ok(Event::ConnectionProgress {
                bytes_to_pod: 10,
                bytes_from_pod: 0,
                id: 1,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err());
        // A printer without a tap gets nothing (and the future still completes).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let plain = Output::new(crate::output::OutputFormat::Text).with_tap(tx);
        forward_reporting(
            tokio::time::sleep(PROGRESS_INTERVAL * 2),
            &counts,
            &plain,
            of(),
        )
        .await;
        assert!(rx.try_recv().is_err());
    }
}
