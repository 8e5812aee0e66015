//! Echo servers, the "pod" or app behind most forwards in the tests, and the client side of an
//! echo round trip.
//!
//! Three servers, one per shape the tests need:
//! - [`tcp`]: a tokio task on 127.0.0.1, for tests that already run a runtime.
//! - [`udp`]: the same for datagrams; each one goes back whole to its sender.
//! - [`Threads`]: std threads on a listener the test binds (a testbed host's, a fixed port),
//!   counting what it received, for tests without a runtime.
//!
//! Each TCP server echoes every connection until EOF and then half-closes, so a client that
//! half-closes reads everything back and then EOF: the shape the forwards must carry through.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::AsyncWriteExt;

/// A TCP echo server on 127.0.0.1 (any port), on tasks of the current tokio runtime; returns
/// where it listens. It lives as long as the runtime.
pub async fn tcp() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an echo server on 127.0.0.1:0");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP echo server on `bind` (port 0: any), on a task of the current tokio runtime; returns
/// where it listens. Every datagram goes back, whole, to the address it came from.
pub async fn udp(bind: SocketAddr) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .unwrap_or_else(|e| panic!("bind a UDP echo server on {bind}: {e}"));
    let addr = sock.local_addr().expect("a bound socket has an address");
    tokio::spawn(async move {
        // The largest UDP payload, so no datagram is cut short.
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A TCP echo server on std threads (one per connection) that counts the bytes it received.
/// It stops accepting when dropped, unless [`Threads::detach`]ed.
pub struct Threads {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    /// `None` once detached: then nothing stops it.
    stop: Option<Arc<AtomicBool>>,
}

impl Threads {
    /// Serves `listener` (bound by the caller: in a testbed host's namespace, on a fixed port).
    pub fn serve(listener: TcpListener) -> Result<Threads> {
        let addr = listener
            .local_addr()
            .context("the echo listener's address")?;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                r.fetch_add(n as u64, Ordering::Relaxed);
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
        Ok(Threads {
            addr,
            received,
            stop: Some(stop),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bytes received so far, over all connections.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Keeps it serving for the rest of the test process; returns where it listens. For
    /// listeners the test cannot reach to wake the accept loop (another namespace's address).
    pub fn detach(mut self) -> SocketAddr {
        self.stop = None;
        self.addr
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Relaxed);
            // Wake the accept loop so it sees the flag.
            let _ = TcpStream::connect(self.addr);
        }
    }
}

/// Sends `payload` to 127.0.0.1:`port`, half-closes, and returns everything read back
/// (a read stalled for a minute fails).
pub fn echo_roundtrip(port: u16, payload: &[u8]) -> Result<Vec<u8>> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    roundtrip_over(stream, payload)
}

/// Sends `payload` over `stream`, half-closes, and returns everything read back. The caller
/// connects (from a testbed host, say) and sets the read timeout.
pub fn roundtrip_over(stream: TcpStream, payload: &[u8]) -> Result<Vec<u8>> {
    let mut writer = stream.try_clone()?;
    let owned = payload.to_vec();
    // Write on another thread: an echo server answers while we are still sending.
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&owned)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::with_capacity(payload.len());
    let mut reader = stream;
    reader.read_to_end(&mut back).context("read the echo")?;
    sender
        .join()
        .map_err(|_| anyhow!("writer thread panicked"))?
        .context("send the payload")?;
    Ok(back)
}
