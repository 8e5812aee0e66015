//! Throughput comparison (run with `cargo test --release -p porthole-relay --test relay
//! spdy_throughput:: -- --ignored --nocapture`): raw loopback TCP vs. one SPDY stream over an
//! in-memory pipe vs. over loopback TCP, and 64 streams in parallel.

use std::time::Duration;

use porthole_relay::spdy::{Config, Connection, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOTAL: usize = 1 << 30;

async fn pump<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    mut w: W,
    mut r: R,
    total: usize,
) -> Duration {
    let t0 = tokio::time::Instant::now();
    let writer = async move {
        let buf = vec![5u8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len());
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        w
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    };
    let (_w, got) = tokio::join!(writer, reader);
    assert_eq!(got, total);
    t0.elapsed()
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1u64 << 30) as f64
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

async fn spdy_streams<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    a: T,
    b: T,
    streams: usize,
) -> Duration {
    let (c, _ci) = Connection::new(a, Role::Client, Config::default());
    let (_s, mut si) = Connection::new(b, Role::Server, Config::default());
    let acceptor = tokio::spawn(async move {
        let mut v = Vec::new();
        for _ in 0..streams {
            v.push(si.next().await.unwrap().accept());
        }
        (v, si)
    });
    let mut out = Vec::new();
    for _ in 0..streams {
        out.push(c.open_stream(vec![]).await.unwrap());
    }
    let (ins, _si) = acceptor.await.unwrap();
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (w, r) in out.into_iter().zip(ins) {
        tasks.push(tokio::spawn(pump(w, r, TOTAL / streams)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release"]
async fn throughput() {
    let (a, b) = tcp_pair().await;
    let d = pump(a, b, TOTAL).await;
    let tcp = gbps(TOTAL, d);
    println!("loopback TCP, 1 connection:       {tcp:.2} GiB/s");
    let (a, b) = tokio::io::duplex(1 << 20);
    let d = spdy_streams(a, b, 1).await;
    println!(
        "SPDY in-memory, 1 stream:         {:.2} GiB/s ({:.1}x TCP)",
        gbps(TOTAL, d),
        gbps(TOTAL, d) / tcp
    );
    let (a, b) = tokio::io::duplex(1 << 20);
    let d = spdy_streams(a, b, 64).await;
    println!(
        "SPDY in-memory, 64 streams:       {:.2} GiB/s",
        gbps(TOTAL, d)
    );
    let (a, b) = tcp_pair().await;
    let d = spdy_streams(a, b, 1).await;
    println!(
        "SPDY over loopback TCP, 1 stream: {:.2} GiB/s",
        gbps(TOTAL, d)
    );
    let (a, b) = tcp_pair().await;
    let d = spdy_streams(a, b, 64).await;
    println!(
        "SPDY over loopback TCP, 64 streams: {:.2} GiB/s",
        gbps(TOTAL, d)
    );
}
