//! Throughput of the WebSocket tunnel byte stream over loopback TCP (client masks, server
//! unmasks). Ignored by default; run in release:
//! `cargo test --release -p porthole-relay --test relay ws_throughput:: -- --ignored --nocapture`.

use porthole_relay::ws::{Role, WsStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run in release"]
async fn tunnel_throughput() {
    const TOTAL: usize = 512 << 20;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut ws = WsStream::new(s, Role::Server);
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0usize;
        loop {
            let r = ws.read(&mut buf).await.unwrap();
            if r == 0 {
                return n;
            }
            n += r;
        }
    });
    let mut ws = WsStream::new(TcpStream::connect(addr).await.unwrap(), Role::Client);
    let chunk = vec![0x5au8; 32 << 10];
    let start = tokio::time::Instant::now();
    let mut sent = 0;
    while sent < TOTAL {
        ws.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    ws.shutdown().await.unwrap();
    let received = server.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(received, TOTAL);
    println!(
        "WsStream client→server: {} MiB in {secs:.2} s = {:.0} MiB/s",
        TOTAL >> 20,
        (TOTAL >> 20) as f64 / secs
    );
}
