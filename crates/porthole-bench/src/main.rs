//! `porthole-bench`: the measuring tools of porthole's benchmark suite (`bench/run.sh`).
//!
//! The workloads follow `docs/PERF_BASELINES.md` §5 (the `nb` tool there), so that our
//! figures can be set beside its anchors:
//!
//! - `echo`: the pod's echo server (a thread per connection, like `nb echo`);
//! - `rtt`: 64 B ping-pong over one persistent connection, p50/p99 in µs;
//! - `connrate`: connect, 64 B request, 64 B echo, close, with C concurrent clients;
//! - `idle`: open N connections, check each with a 64 B echo, hold them until told (the runner
//!   reads the forwarders' memory meanwhile), then check them again;
//! - `relay` and `gencerts`: a minimal TLS byte relay, for the "same chain with no protocol"
//!   path (client relay → "apiserver" relay → "node" relay → pod), with throwaway certificates;
//! - `ttfb`: start a port-forward command, connect as soon as it prints its
//!   `Forwarding from 127.0.0.1:N -> M` line, time the first echoed byte;
//! - `freeport`: a free loopback port chosen by the kernel (for tools that need a number);
//! - `store`: the API server's store backends, redb and a real etcd, side by side;
//! - `udp`, `udp-echo`: UDP forwarding (porthole extension) against a direct loopback echo;
//! - `chaos`: the soak of issue 13 (faults at random under traffic, everything accounted);
//! - `sessions`: many port-forward sessions at once, one client process each, against kubectl's.
//!
//! Bulk throughput is iperf3's job (the baselines used it too). Every measuring subcommand
//! prints exactly one JSON object on stdout; servers print one `listening on ADDR` line.
//!
//! The load generators are plain blocking threads: one thread per client connection has the
//! lowest latency and cannot become the bottleneck of a forwarder that costs tens of µs per hop.

// A benchmark measures real elapsed time; there is no pausable tokio clock to honour here.
#![allow(clippy::disallowed_types)]

mod chaos;
mod links;
mod load;
mod relay;
mod sessions;
mod split;
mod store;
mod ttfb;
mod tunnel;
mod udp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Command line of `porthole-bench`.
#[derive(Parser)]
#[command(version, about = "porthole's benchmark tools (see bench/README.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo server: a thread per connection echoes every byte back.
    Echo {
        /// Address to listen on (port 0: the kernel picks; the line on stdout tells).
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Round-trip latency of SIZE-byte ping-pongs over one persistent connection.
    Rtt(load::RttArgs),
    /// New connections per second, each doing one SIZE-byte exchange.
    Connrate(load::ConnrateArgs),
    /// Open N connections, verify each with one echo, hold them idle until stdin says `check`.
    Idle(load::IdleArgs),
    /// A byte relay, optionally terminating TLS on its listener and/or speaking TLS to its target.
    Relay(relay::RelayArgs),
    /// Write a throwaway CA and a leaf for localhost/127.0.0.1 (ECDSA P-256) into DIR.
    Gencerts {
        /// Directory for ca.pem, leaf.pem, leaf.key.
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Time from starting a port-forward command to the first byte echoed through it.
    Ttfb(ttfb::TtfbArgs),
    /// Print a free TCP port on 127.0.0.1 chosen by the kernel.
    Freeport,
    /// The API server's store backends side by side: redb and a real etcd on loopback.
    Store(store::StoreArgs),
    /// porthole's roles on separate simulated hosts vs the bare TLS relay chain on the same
    /// hosts (needs root).
    SplitRoles(split::RouteArgs),
    /// A node behind NAT through its tunnel against a direct node, on simulated hosts.
    Tunnel(split::RouteArgs),
    /// One forwarded connection over links with 1, 10 and 50 ms of round trip at 1 Gbit/s,
    /// against plain TCP over the same link and kubectl (needs root; bench/links.sh).
    Links(links::LinksArgs),
    /// UDP forwarding through `porthole up` vs the same UDP echo on loopback: round trips/s,
    /// throughput and loss at a fixed rate.
    Udp(udp::UdpArgs),
    /// UDP echo server (and a TCP listener on the same port for readiness probes).
    UdpEcho {
        /// Address to listen on (port 0: the kernel picks; the line on stdout tells).
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The chaos soak: traffic through forwards on a cluster on simulated hosts while faults
    /// are injected at random; everything accounted (needs root; scripts/chaos.sh).
    Chaos(chaos::ChaosArgs),
    /// Many port-forward sessions at once (one client process each) on one API server and
    /// node: setup rate, memory per session in each role, API requests per idle session;
    /// beside kubectl's figures (bench/sessions.sh).
    Sessions(sessions::SessionsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Echo { listen } => echo(listen),
        Cmd::Rtt(a) => load::rtt(a),
        Cmd::Connrate(a) => load::connrate(a),
        Cmd::Idle(a) => load::idle(a),
        Cmd::Relay(a) => relay::run(a),
        Cmd::Gencerts { dir } => relay::gencerts(&dir),
        Cmd::Store(a) => store::run(a),
        Cmd::SplitRoles(a) => split::run(a),
        Cmd::Tunnel(a) => tunnel::run(a),
        Cmd::Links(a) => links::run(a),
        Cmd::Chaos(a) => chaos::run(a),
        Cmd::Sessions(a) => sessions::run(a),
        Cmd::Udp(a) => udp::run(a),
        Cmd::UdpEcho { listen } => udp::echo(listen),
        Cmd::Ttfb(a) => ttfb::run(a),
        Cmd::Freeport => {
            let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
    }
}

/// This tool's own path and the `porthole` binary's: `porthole`, or the one next to this
/// tool (where `cargo build --release` puts both).
pub(crate) fn binaries(
    porthole: Option<&std::path::Path>,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let bench = std::env::current_exe().context("find porthole-bench's own path")?;
    let porthole = porthole.map_or_else(|| bench.with_file_name("porthole"), |p| p.to_path_buf());
    anyhow::ensure!(
        porthole.exists(),
        "no porthole binary at {}: build it (cargo build --release -p porthole) or pass --porthole",
        porthole.display()
    );
    Ok((bench, porthole))
}

/// Stack of each echo thread: the loop needs little, and 10,000 idle connections must fit.
const ECHO_STACK: usize = 64 * 1024;

fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let spawned = std::thread::Builder::new()
            .stack_size(ECHO_STACK)
            .spawn(move || echo_conn(conn));
        if let Err(e) = spawned {
            eprintln!("echo: cannot spawn a thread: {e}");
        }
    }
    Ok(())
}

fn echo_conn(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    // Half-close answered: the peer's FIN ends our side too.
    let _ = conn.shutdown(std::net::Shutdown::Write);
}
