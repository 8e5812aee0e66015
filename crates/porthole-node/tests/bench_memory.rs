//! Memory benchmark (issue 3, "Show"): RSS of the node endpoint with 10,000 idle forwarded
//! connections on one SPDY session, per connection. The node runs in a child process (this
//! test binary re-executed), so only its memory is measured. Run as root:
//! `cargo test -p porthole-node --test bench_memory -- --ignored --nocapture`.

mod common;

use std::io::BufRead as _;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use porthole_proto::handshake;
use porthole_relay::portforward::spdy_client::PortForwarder;
use porthole_relay::spdy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: usize = 10_000;
const SESSIONS: usize = 1;

/// One SPDY port-forward session to the child's pod, as the API server would open it.
async fn session(pki: &Pki, addr: std::net::SocketAddr) -> PortForwarder {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = pki
        .connector(Some(&pki.apiserver))
        .connect(name, tcp)
        .await
        .expect("tls");
    let mut req =
        "POST /portForward/default/web HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
            .to_string();
    for (k, v) in &handshake::spdy_request_headers(false) {
        req.push_str(&format!("{k}: {}\r\n", v.to_str().expect("ascii")));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut b).await.expect("head"), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    PortForwarder::new(tls, spdy::Config::client())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Child half: a node with one app pod; prints `ADDR <addr>` and serves until stdin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: run by idle_connection_memory"]
async fn bench_node_child() {
    let Ok(dir) = std::env::var("PORTHOLE_NODE_BENCH_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let node = Node::start(&dir).await;
    let h = node.rt.apply(&app_pod(&dir, "web")).expect("apply");
    wait_status(
        &node.rt,
        h.uid(),
        Duration::from_secs(30),
        "Ready",
        is_ready,
    )
    .await;
    println!("ADDR {}", node.addr);
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1];
    let _ = stdin.read(&mut buf).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 10,000 connections, run with --ignored --nocapture"]
async fn idle_connection_memory() {
    let dir = TempDir::new("node-bench").expect("temp dir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "bench_node_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PORTHOLE_NODE_BENCH_DIR", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn node child");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let addr: std::net::SocketAddr = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.expect("read child");
            if let Some((_, a)) = line.split_once("ADDR ") {
                // Keep draining, or the child's later output would hit a closed pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return a.trim().parse().expect("addr");
            }
        }
        panic!("node child exited early");
    })
    .await
    .expect("reader");
    let pki = Pki::load(&dir.path().join("pki"));
    // The relay's SPDY session admits 4096 open streams (2048 forwarded connections) per
    // connection, so the 10,000 are spread over 10 sessions, as 10 port-forward clients would.
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(Arc::new(session(&pki, addr).await));
    }
    let pf = sessions[0].clone();
    let mut b = [0u8; 1];
    // One warm-up connection so lazily allocated state is in the baseline.
    let mut ends = Vec::with_capacity(CONNECTIONS);
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    let open = |pf: Arc<PortForwarder>| {
        let (mine, local) = tokio::io::duplex(4096);
        let t = tokio::spawn(async move { pf.forward(local, ECHO_PORT).await });
        (mine, t)
    };
    let (mut m, t) = open(pf.clone());
    m.write_all(b"x").await.expect("write");
    m.read_exact(&mut b).await.expect("echo");
    ends.push(m);
    tasks.push(t);
    let before = rss_kib(pid);
    let started = tokio::time::Instant::now();
    for i in 0..CONNECTIONS {
        let (m, t) = open(sessions[i % sessions.len()].clone());
        ends.push(m);
        tasks.push(t);
    }
    // Every connection carries one byte each way, so all are established end to end.
    for m in ends.iter_mut().skip(1) {
        m.write_all(b"x").await.expect("write");
    }
    for (i, m) in ends.iter_mut().enumerate().skip(1) {
        if let Err(e) = m.read_exact(&mut b).await {
            let t = tasks.swap_remove(i);
            panic!("connection {i}: {e}; forward: {:?}", t.await);
        }
    }
    let setup = started.elapsed();
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before) as f64) * 1024.0 / CONNECTIONS as f64;
    eprintln!(
        "node RSS: {before} KiB before, {after} KiB with {CONNECTIONS} idle forwarded connections \
         (+{per_conn:.0} bytes each, incl. one pod-side socket per connection); \
         setup of all {CONNECTIONS} took {setup:?} ({:.0} connections/s)",
        CONNECTIONS as f64 / setup.as_secs_f64()
    );
    for mut m in ends {
        let _ = m.shutdown().await;
    }
    for t in tasks {
        let _ = t.await;
    }
    for pf in sessions {
        pf.shutdown().await;
    }
    drop(child.stdin.take());
    let status = child.wait().expect("node child");
    assert!(status.success(), "node child failed: {status}");
}
