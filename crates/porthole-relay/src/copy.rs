//! Half-close-aware relay between two byte streams (PROTOCOL.md §4.6, §9.6).
//!
//! Unlike containerd/CRI-O (which cut the other direction 1 s after the first EOF), a
//! direction that reaches EOF half-closes its writer (`shutdown`, i.e. SPDY FIN or TCP FIN)
//! and the other direction keeps flowing for as long as it stays open. An error in either
//! direction ends both.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Copy buffer size per direction while data is in flight.
pub const BUF_SIZE: usize = 64 * 1024;

/// Buffers kept per thread for reuse. Enough for every direction that is mid-copy on one
/// worker thread at a time; the rest are freed.
const POOL_PER_THREAD: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Takes a copy buffer from this thread's pool (or allocates one).
fn take_buffer() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

/// Returns a copy buffer to this thread's pool.
fn give_back(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_PER_THREAD {
            pool.push(buf);
        }
    });
}

/// Bytes moved by [`relay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
}

/// One copy direction. It holds a buffer only while bytes it read are not yet written: an
/// idle forwarded connection (both readers pending) owns no buffer at all, which is what keeps
/// 10,000 idle connections cheap (issue 7's memory goal). `tokio::io::copy_bidirectional`
/// would pin 2 × 64 KiB per connection for its whole life.
#[derive(Default)]
struct Direction {
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_done: bool,
    done: bool,
    need_flush: bool,
    amount: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.amount));
            }
            // Write out what was read before reading more.
            if let Some(buf) = &self.buf {
                while self.pos < self.cap {
                    let n = ready!(writer.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "the receiving side accepted no bytes",
                        )));
                    }
                    self.pos += n;
                    self.amount += n as u64;
                    self.need_flush = true;
                }
                if let Some(buf) = self.buf.take() {
                    give_back(buf);
                }
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut buf = take_buffer();
            let mut read_buf = ReadBuf::new(&mut buf);
            match reader.as_mut().poll_read(cx, &mut read_buf) {
                Poll::Pending => {
                    // Nothing was read, so the buffer holds nothing of ours: hand it back.
                    give_back(buf);
                    if self.need_flush {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    give_back(buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        give_back(buf);
                        self.read_done = true;
                    } else {
                        self.pos = 0;
                        self.cap = n;
                        self.buf = Some(buf);
                    }
                }
            }
        }
    }
}

/// Copies `a → b` and `b → a` until both directions reached EOF, half-closing each writer
/// when its reader ends. Returns the byte counts, or the first error (which ends both).
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut moved = Transferred::default();
    relay_inner(a, b, None::<&mut tokio::io::Sink>, &mut moved).await?;
    Ok(moved)
}

/// Like [`relay`], and also finishes (`shutdown`) `companion` as soon as `b → a` has ended.
///
/// The port-forward server passes the pair's error stream here: once the pod has closed its
/// side there is nothing left to report, and clients such as kubectl 1.20 wait for the error
/// stream to end before they close the local connection, so holding it open until the
/// client→pod direction also ends would deadlock them. The client→pod direction itself stays
/// open (half-close).
pub async fn relay_finishing<A, B, C>(
    a: &mut A,
    b: &mut B,
    companion: &mut C,
) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    C: AsyncWrite + Unpin + ?Sized,
{
    let mut moved = Transferred::default();
    relay_inner(a, b, Some(companion), &mut moved).await?;
    Ok(moved)
}

/// Like [`relay_finishing`], but keeps `moved` up to date as bytes are written, so the counts
/// survive an error and a relay that is dropped half-way (a cancelled `select!` branch, an
/// aborted task). The port-forward servers report them per forward (`PodDialer::forward_ended`)
/// without counting anything per read themselves.
pub async fn relay_finishing_counted<A, B, C>(
    a: &mut A,
    b: &mut B,
    companion: &mut C,
    moved: &mut Transferred,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    C: AsyncWrite + Unpin + ?Sized,
{
    relay_inner(a, b, Some(companion), moved).await
}

async fn relay_inner<A, B, C>(
    a: &mut A,
    b: &mut B,
    mut companion: Option<&mut C>,
    moved: &mut Transferred,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    C: AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b));
        moved.a_to_b = a_to_b.amount;
        let forward = forward?;
        let backward = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a));
        moved.b_to_a = b_to_a.amount;
        let backward = backward?;
        if backward.is_ready() {
            if let Some(c) = companion.as_deref_mut() {
                // A failure to finish the companion does not concern the data relay.
                if Pin::new(c).poll_shutdown(cx).is_ready() {
                    companion = None;
                }
            }
        }
        match (forward, backward) {
            (Poll::Ready(_), Poll::Ready(_)) if companion.is_none() => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        let (mut a, mut a_peer) = tokio::io::duplex(1024);
        let (mut b, mut b_peer) = tokio::io::duplex(1024);
        let t = tokio::spawn(async move { relay(&mut a, &mut b).await });
        a_peer.write_all(b"request").await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut req = Vec::new();
        b_peer.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"request");
        // Long after the half-close the answer still flows.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        b_peer.write_all(b"answer").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut ans = Vec::new();
        a_peer.read_to_end(&mut ans).await.unwrap();
        assert_eq!(ans, b"answer");
        assert_eq!(
            t.await.unwrap().unwrap(),
            Transferred {
                a_to_b: 7,
                b_to_a: 6
            }
        );
    }

    #[tokio::test]
    async fn large_transfers_both_ways_through_small_pipes() {
        // 4 KiB pipes force partial writes and many pending reads on both sides.
        let (mut a, a_peer) = tokio::io::duplex(4096);
        let (mut b, b_peer) = tokio::io::duplex(4096);
        let t = tokio::spawn(async move { relay(&mut a, &mut b).await });
        let up: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
        let (mut a_read, mut a_write) = tokio::io::split(a_peer);
        let (mut b_read, mut b_write) = tokio::io::split(b_peer);
        let (up2, down2) = (up.clone(), down.clone());
        let w1 = tokio::spawn(async move {
            a_write.write_all(&up2).await.unwrap();
            a_write.shutdown().await.unwrap();
        });
        let w2 = tokio::spawn(async move {
            b_write.write_all(&down2).await.unwrap();
            b_write.shutdown().await.unwrap();
        });
        let mut got_up = Vec::new();
        let mut got_down = Vec::new();
        let (r1, r2) = tokio::join!(
            b_read.read_to_end(&mut got_up),
            a_read.read_to_end(&mut got_down)
        );
        r1.unwrap();
        r2.unwrap();
        w1.await.unwrap();
        w2.await.unwrap();
        assert_eq!(got_up, up);
        assert_eq!(got_down, down);
        assert_eq!(
            t.await.unwrap().unwrap(),
            Transferred {
                a_to_b: 1_000_000,
                b_to_a: 700_000
            }
        );
    }
}
