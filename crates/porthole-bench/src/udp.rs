//! `udp`: UDP forwarding (a porthole extension) against the physical limit, in one run.
//!
//! ```text
//! direct:   sender ─UDP─→ echo (loopback, this host)
//! spdy/ws:  sender ─UDP─→ porthole port-forward :P/udp ─→ porthole up ─→ pod: echo
//! ```
//!
//! The same UDP echo server (`udp-echo`, this tool) runs on the host and in a pod of
//! `porthole up`. Two loads per route, reps interleaved across routes, medians reported:
//! - closed loop: `window` datagrams in flight, each echo lets the next one go, for `secs`:
//!   round trips per second and throughput (both directions counted once);
//! - open loop: datagrams paced at `rate` per second for `secs`: the share lost (sent but not
//!   echoed within a grace period), as an app sending at a fixed rate sees it.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use porthole_test::{Child, Cluster, TempDir};

/// Options of `porthole-bench udp`.
#[derive(Debug, clap::Args)]
pub struct UdpArgs {
    /// The porthole binary (default: next to this tool).
    #[arg(long)]
    pub porthole: Option<PathBuf>,
    /// Repetitions per route (interleaved).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Seconds per load per rep.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Datagram payload in bytes.
    #[arg(long, default_value_t = 1200)]
    pub size: usize,
    /// Closed loop: datagrams in flight.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Open loop: datagrams per second offered.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
}

/// `udp-echo`: echo every datagram to its sender; a TCP listener on the same port answers
/// readiness probes (UDP cannot be probed).
pub fn echo(listen: SocketAddr) -> Result<()> {
    let sock = UdpSocket::bind(listen).with_context(|| format!("bind udp {listen}"))?;
    let addr = sock.local_addr()?;
    let probe = TcpListener::bind(addr).with_context(|| format!("bind tcp {addr}"))?;
    std::thread::spawn(move || for _ in probe.incoming() {});
    println!("listening on {addr}");
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let _ = sock.send_to(&buf[..n], from);
    }
}

/// One route's figures for one rep.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    round_trips_per_s: f64,
    mbit_per_s: f64,
    open_loss_percent: f64,
    open_received_per_s: f64,
}

fn socket_to(target: SocketAddr) -> Result<UdpSocket> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(target)?;
    Ok(sock)
}

/// Closed loop: `window` datagrams in flight; a datagram not echoed within 200 ms counts as
/// lost and is replaced.
fn closed_loop(target: SocketAddr, a: &UdpArgs) -> Result<(f64, f64)> {
    let sock = socket_to(target)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let payload = vec![0x5au8; a.size.max(8)];
    // Prime (the flow opens its streams on the first datagram).
    sock.send(&payload)?;
    let mut buf = vec![0u8; 65536];
    sock.recv(&mut buf)
        .context("no echo of the first datagram")?;
    for _ in 0..a.window {
        sock.send(&payload)?;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.secs);
    let mut echoed = 0u64;
    while Instant::now() < end {
        match sock.recv(&mut buf) {
            Ok(_) => echoed += 1,
            // Timed out: the window shrank by loss; refill it.
            Err(_) => {
                for _ in 0..a.window {
                    sock.send(&payload)?;
                }
                continue;
            }
        }
        sock.send(&payload)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = echoed as f64 / secs;
    Ok((rate, rate * (a.size as f64) * 8.0 / 1e6))
}

/// Open loop: `rate` datagrams per second with sequence numbers for `secs`, echoes counted by
/// a receiver thread until 500 ms after the last send.
fn open_loop(target: SocketAddr, a: &UdpArgs) -> Result<(f64, f64)> {
    let sock = Arc::new(socket_to(target)?);
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut payload = vec![0u8; a.size.max(8)];
    sock.send(&payload)?;
    let mut buf = vec![0u8; 65536];
    sock.recv(&mut buf)
        .context("no echo of the first datagram")?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (sock, received, done) = (sock.clone(), received.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !done.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let total = (a.rate as f64 * a.secs) as u64;
    let start = Instant::now();
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(seq as f64 / a.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        // ENOBUFS/ECONNREFUSED: counted as lost.
        let _ = sock.send(&payload);
    }
    let sent_secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    let got = received.load(Ordering::Relaxed).min(total);
    let loss = 100.0 * (total - got) as f64 / total.max(1) as f64;
    Ok((loss, got as f64 / sent_secs))
}

fn measure(target: SocketAddr, a: &UdpArgs) -> Result<Sample> {
    let (round_trips_per_s, mbit_per_s) = closed_loop(target, a)?;
    let (open_loss_percent, open_received_per_s) = open_loop(target, a)?;
    Ok(Sample {
        round_trips_per_s,
        mbit_per_s,
        open_loss_percent,
        open_received_per_s,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The local port of a `Forwarding from 127.0.0.1:N -> 7001/udp` line.
fn start_forward(cluster: &Cluster, transport: &str, work: &Path) -> Result<(Child, u16)> {
    let mut cmd = cluster.porthole_cmd();
    cmd.args([
        "port-forward",
        "pod/udpecho",
        ":7001/udp",
        "--address",
        "127.0.0.1",
    ])
    .args(["--transport", transport]);
    let mut child = Child::spawn(&format!("pf-{transport}"), cmd, work)?;
    let port = child.wait_for_line(Duration::from_secs(60), |l| {
        l.strip_prefix("Forwarding from 127.0.0.1:")?
            .strip_suffix(" -> 7001/udp")?
            .parse()
            .ok()
    })?;
    Ok((child, port))
}

/// `udp`.
pub fn run(a: UdpArgs) -> Result<()> {
    let (bench, porthole) = crate::binaries(a.porthole.as_deref())?;
    ensure!(
        a.reps >= 1 && a.secs > 0.0 && a.rate > 0,
        "reps, secs and rate must be positive"
    );
    let work = TempDir::new("udp-bench")?;
    // The physical limit: the same echo server on the host's loopback.
    let mut direct = {
        let mut cmd = std::process::Command::new(&bench);
        cmd.args(["udp-echo", "--listen", "127.0.0.1:0"]);
        Child::spawn("udp-echo-direct", cmd, work.path())?
    };
    let direct_addr: SocketAddr = direct.wait_for_line(Duration::from_secs(10), |l| {
        l.strip_prefix("listening on ")?.parse().ok()
    })?;
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: udpecho\nspec:\n  containers:\n  - name: echo\n    \
         image: none\n    command: [\"{}\", \"udp-echo\", \"--listen\", \"127.0.0.1:7001\"]\n    \
         readinessProbe:\n      tcpSocket:\n        port: 7001\n      periodSeconds: 1\n",
        bench.display()
    );
    let file = porthole_test::write_file(work.path(), "udpecho.yaml", &pod)?;
    let cluster = Cluster::up(&porthole, work.path(), &[file])?;
    let result = (|| -> Result<Vec<(String, Vec<Sample>)>> {
        cluster.wait_pod_ready("default", "udpecho")?;
        let (_spdy, spdy_port) = start_forward(&cluster, "spdy", work.path())?;
        let (_ws, ws_port) = start_forward(&cluster, "websocket", work.path())?;
        let routes = [
            ("direct".to_string(), direct_addr),
            (
                "forward-spdy".to_string(),
                SocketAddr::from(([127, 0, 0, 1], spdy_port)),
            ),
            (
                "forward-websocket".to_string(),
                SocketAddr::from(([127, 0, 0, 1], ws_port)),
            ),
        ];
        let mut samples: Vec<(String, Vec<Sample>)> = routes
            .iter()
            .map(|(n, _)| (n.clone(), Vec::new()))
            .collect();
        for rep in 0..a.reps {
            for (i, (name, addr)) in routes.iter().enumerate() {
                let s = measure(*addr, &a).with_context(|| format!("{name}, rep {rep}"))?;
                eprintln!("udp bench: rep {rep} {name}: {s:?}");
                samples[i].1.push(s);
            }
        }
        Ok(samples)
    })();
    let report = cluster.child.report();
    let stopped = cluster.stop();
    drop(direct);
    let samples = match result {
        Ok(s) => s,
        Err(e) => bail!("{e:#}\n\n{report}"),
    };
    stopped?;
    let mut routes = serde_json::Map::new();
    for (name, s) in &samples {
        routes.insert(
            name.clone(),
            serde_json::json!({
                "round_trips_per_s": median(s.iter().map(|x| x.round_trips_per_s).collect()),
                "mbit_per_s": median(s.iter().map(|x| x.mbit_per_s).collect()),
                "open_loss_percent": median(s.iter().map(|x| x.open_loss_percent).collect()),
                "open_received_per_s": median(s.iter().map(|x| x.open_received_per_s).collect()),
            }),
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "reps": a.reps, "secs": a.secs, "size": a.size, "window": a.window, "rate": a.rate,
            "routes": routes,
        })
    );
    Ok(())
}
