//! `links`: one forwarded connection over a link with a real round trip (issue 15, target 5),
//! against a plain TCP connection over the same link, in one run.
//!
//! The cluster is the split-roles one (client host → haproxy → API server → node1 → pod); the
//! client host's link gets the round trip (its outgoing packets are held that long: netem where
//! the kernel has it, else the testbed's NFQUEUE delay) and a rate (see [`shape`]). A plain TCP connection from the client host to an iperf3
//! server on node1 crosses the same link and the same shaping; so do porthole's SPDY and
//! WebSocket forwards and kubectl's. Forwards start after the link is set, as a user's would,
//! so their sessions measure the round trip they run over.
//!
//! What it shows: SPDY flow-control windows grow to the path's bandwidth-delay product
//! (`porthole_proto::spdy::Config::max_window`); a fixed 256 KiB session window would cap
//! one connection at 256 KiB per round trip (26 MB/s at 10 ms, 5 MB/s at 50 ms).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use porthole_test::ha::HaCluster;
use porthole_test::testbed::Host;
use porthole_test::{Child, TempDir};

use crate::split::{forward_route, iperf_to, median, porthole_forward, start_bench_pod, Route};

/// Arguments of `links`.
#[derive(clap::Args)]
pub struct LinksArgs {
    /// Round trips to measure, in milliseconds.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 10, 50])]
    rtt_ms: Vec<u32>,
    /// Interleaved repetitions per round trip.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds per iperf3 test, after the omitted slow start (which is 2 s plus 20 round
    /// trips).
    #[arg(long, default_value_t = 5)]
    iperf_secs: u32,
    /// Link rate (tc syntax) each way.
    #[arg(long, default_value = "1gbit")]
    rate: String,
    /// The `porthole` binary (default: next to this one).
    #[arg(long)]
    porthole: Option<std::path::PathBuf>,
    /// One round trip (10 ms), one rep, 1 s tests: checks that every route works (CI).
    #[arg(long)]
    smoke: bool,
}

/// The goal: a forwarded connection reaches this share of plain TCP on the same link.
const GOAL: f64 = 0.8;

/// `links`.
pub fn run(a: LinksArgs) -> Result<()> {
    let (bench, porthole) = crate::binaries(a.porthole.as_deref())?;
    let work = TempDir::new("links")?;
    let mut cluster = HaCluster::start(&porthole, work.path(), 1)?;
    let result = measure(&mut cluster, &bench, work.path(), &a);
    let report = cluster.report();
    // After a failure the link may still be shaped: put it back before the cluster stops, so
    // stopping is not slowed by it (the testbed goes with the cluster anyway).
    if result.is_err() {
        unshape(&cluster);
    }
    let stopped = cluster.stop();
    if let Err(e) = result {
        bail!("{e:#}\n\n{report}");
    }
    stopped
}

fn measure(cluster: &mut HaCluster, bench: &Path, work: &Path, a: &LinksArgs) -> Result<()> {
    start_bench_pod(cluster, bench, work)?;
    // The plain TCP reference: iperf3 on node1 itself, across the same shaped link.
    let node = cluster.bed.host("node1").clone();
    let port = node.free_port()?;
    let mut cmd = node.command("iperf3");
    cmd.args(["-s", "-B", &node.ip().to_string(), "-p", &port.to_string()]);
    let _tcp_server = Child::spawn("iperf3-node1", cmd, work)?;
    wait_listening(&node, port)?;

    let (rtts, reps, secs) = if a.smoke {
        (vec![10], 1, 1)
    } else {
        (a.rtt_ms.clone(), a.reps, a.iperf_secs)
    };
    println!(
        "## One connection over a link with a round trip ({} each way), medians of {reps} \
         interleaved reps; ✓: ≥ {GOAL}× plain TCP on the same link\n",
        a.rate
    );
    println!("| round trip | direction | plain TCP (MB/s) | porthole-spdy | porthole-ws | kubectl | porthole-spdy ÷ TCP | porthole-ws ÷ TCP | porthole-spdy ÷ kubectl |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for rtt in rtts {
        let uploads = shape(cluster, rtt, &a.rate)?;
        let directions: &[bool] = if uploads { &[false, true] } else { &[true] };
        let routes = vec![
            porthole_forward(cluster, "spdy", "pbench", "porthole-spdy", work)?,
            porthole_forward(cluster, "websocket", "pbench", "porthole-ws", work)?,
            kubectl_route(cluster, work)?,
        ];
        // Slow start at a long round trip takes many round trips: leave them out.
        let omit = 2 + (20 * rtt).div_ceil(1000);
        let client = cluster.client().clone();
        let mut samples: std::collections::BTreeMap<(&str, bool), Vec<f64>> = Default::default();
        for rep in 1..=reps {
            for &reverse in directions {
                let tcp = iperf_to(&client, &node.ip().to_string(), port, secs, omit, reverse)?;
                samples.entry(("tcp", reverse)).or_default().push(tcp);
                for r in &routes {
                    let v = iperf_to(&client, "127.0.0.1", r.iperf, secs, omit, reverse)?;
                    samples.entry((r.name, reverse)).or_default().push(v);
                }
            }
            eprintln!("links: {rtt} ms, rep {rep}/{reps} done");
        }
        if !uploads {
            println!("| {rtt} ms | client→pod | not measured: no netem in this kernel (see links.rs, `shape`) | | | | | | |");
        }
        for &reverse in directions {
            let med = |name: &str| median(samples[&(name, reverse)].clone());
            let (tcp, spdy, ws, kubectl) = (
                med("tcp"),
                med("porthole-spdy"),
                med("porthole-ws"),
                med("kubectl"),
            );
            let mark = |r: f64| if r >= GOAL { "✓" } else { "✗" };
            println!(
                "| {rtt} ms | {} | {tcp:.1} | {spdy:.1} | {ws:.1} | {kubectl:.1} | {:.2}× {} | {:.2}× {} | {:.2}× |",
                if reverse { "pod→client" } else { "client→pod" },
                spdy / tcp,
                mark(spdy / tcp),
                ws / tcp,
                mark(ws / tcp),
                spdy / kubectl,
            );
        }
        drop(routes);
        unshape(cluster);
    }
    println!("\nraw samples: run with RUST_LOG unset; per-rep figures are on stderr (links: ...)");
    Ok(())
}

/// `kubectl port-forward` on the client host (the WebSocket tunnel, kubectl's default).
fn kubectl_route(cluster: &HaCluster, work: &Path) -> Result<Route> {
    let mut cmd = cluster.kubectl_cmd();
    cmd.arg("port-forward").stdin(Stdio::null());
    forward_route(cmd, "pbench", "kubectl", work)
}

/// The client host's link: `rtt_ms` of round trip (its outgoing packets held that long) and
/// `rate` each way. Where the kernel has netem, one netem qdisc on the client does both ways'
/// delay and its sending rate; without netem (this project's CI kernels) the testbed's NFQUEUE
/// delay holds the client's packets, and the client's sending side is left at the veth's
/// speed: tbf behind the NFQUEUE delay collapsed to under 1 MB/s (the held packets come out in
/// bursts that overflow it), so only node1's sending side (pod → client, and the plain TCP
/// reference's downloads) is shaped then. Both routes of a row cross the same shaping.
///
/// Returns whether uploads (client → pod) measure anything: not over the NFQUEUE delay, where
/// TCP small queues count the client's held packets as still in its queue and let it send only
/// a few KB per round trip (0.5 MB/s at 10 ms, plain TCP alike); netem frees them from the
/// socket's account for that reason, NFQUEUE does not.
fn shape(cluster: &HaCluster, rtt_ms: u32, rate: &str) -> Result<bool> {
    let client = cluster.client();
    let node = cluster.bed.host("node1");
    let delay = format!("{rtt_ms}ms");
    let netem = client.run(
        "tc",
        &[
            "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay, "rate", rate,
        ],
    );
    let uploads = netem.is_ok();
    if !uploads {
        client
            .netem(&format!("delay {delay}"))
            .with_context(|| format!("add {rtt_ms} ms to the client host's link"))?;
    }
    // A 256 KiB bucket: GSO packets (up to 64 KiB) pass whole.
    node.run(
        "tc",
        &[
            "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb",
            "latency", "100ms",
        ],
    )
    .with_context(|| format!("shape node1's link to {rate} with tbf"))?;
    Ok(uploads)
}

/// Takes the shaping and the delay off again (what is not there is skipped).
fn unshape(cluster: &HaCluster) {
    let client = cluster.client();
    if let Err(e) = client.clear_netem() {
        // Nothing set (tc: no root qdisc) is the usual reason.
        eprintln!("links: clearing the client's delay: {e:#}");
    }
    let _ = cluster
        .bed
        .host("node1")
        .run("tc", &["qdisc", "del", "dev", "eth0", "root"]);
}

/// Waits until something listens on `port` on `host` (iperf3 prints nothing machine-readable
/// when ready).
fn wait_listening(host: &Host, port: u16) -> Result<()> {
    let addr = std::net::SocketAddr::from((host.ip(), port));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if host.tcp_connect(addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "iperf3 on {} did not listen on {addr} within 10 s",
                host.name()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
