//! Half-close-aware relay between two byte streams (PROTOCOL.md §4.6, §9 item 6).
//!
//! Unlike containerd/CRI-O (which cut the other direction 1 s after the first EOF), a
//! direction that reaches EOF half-closes its writer (`shutdown`, i.e. SPDY FIN or TCP FIN)
//! and the other direction keeps flowing for as long as it stays open. An error in either
//! direction ends both.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// Copy buffer size per direction.
pub const BUF_SIZE: usize = 64 * 1024;

/// Bytes moved by [`relay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
}

/// Copies `a → b` and `b → a` until both directions reached EOF, half-closing each writer
/// when its reader ends. Returns the byte counts, or the first error (which ends both).
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a_to_b, b_to_a) =
        tokio::io::copy_bidirectional_with_sizes(a, b, BUF_SIZE, BUF_SIZE).await?;
    Ok(Transferred { a_to_b, b_to_a })
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
}
