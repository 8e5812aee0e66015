//! `tunnel`: a node behind NAT reached through the tunnel it dials (`porthole node --tunnel`)
//! against a node the API server dials directly, in one run (issue 13's figure: tunnel ≥ 80 %
//! of direct).
//!
//! ```text
//! direct:  client ─→ lb ─→ api1 ─TLS→ node1 → pod pbench-direct
//! tunnel:  client ─→ lb ─→ api1 ═tunnel═ lb ← nat router ← natnode → pod pbench-nat
//! ```
//!
//! Both pods run the same echo and iperf3 servers; API server 2 is stopped so both routes go
//! through api1. The tunnel route also crosses what a real NAT node's does: its tunnel is a
//! connection it dialed through the NAT router and the balancer. Reps interleave the routes;
//! the report gives medians and ratios against the direct node.

use std::time::Duration;

use anyhow::{bail, Result};
use porthole_test::ha::HaCluster;
use porthole_test::TempDir;

use crate::split::{
    measure_routes, pod_manifest, porthole_forward, print_report, RouteArgs, Sizes,
};

/// Issue 13: a node behind NAT through its tunnel reaches at least 80 % of a direct node.
const TUNNEL_GOAL: f64 = 0.8;

/// `tunnel`.
pub fn run(a: RouteArgs) -> Result<()> {
    let (bench, porthole) = a.binaries()?;
    let sizes = a.sizes();
    let work = TempDir::new("tunnel-bench")?;
    let mut cluster = HaCluster::start(&porthole, work.path(), 1)?;
    let result = measure(&mut cluster, &bench, work.path(), &sizes);
    let report = cluster.report();
    let stopped = cluster.stop();
    if let Err(e) = result {
        bail!("{e:#}\n\n{report}");
    }
    stopped
}

fn measure(
    cluster: &mut HaCluster,
    bench: &std::path::Path,
    work: &std::path::Path,
    sizes: &Sizes,
) -> Result<()> {
    let join = cluster.token_create(&[])?;
    cluster.start_nat_node("natnode", &join)?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "node/natnode",
        "--timeout=90s",
    ])?;
    let mut manifests = pod_manifest(bench, "pbench-direct", "node1");
    manifests.push_str("---\n");
    manifests.push_str(&pod_manifest(bench, "pbench-nat", "natnode"));
    let file = porthole_test::write_file(work, "pbench.yaml", &manifests)?;
    cluster.kubectl(&["apply", "-f", &file.display().to_string()])?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/pbench-direct",
        "pod/pbench-nat",
        "--timeout=90s",
    ])?;
    // One API server: both routes then cross api1, and its tunnel is the one used.
    cluster.kill_apiserver(1)?;
    cluster.lb.wait_for(Duration::from_secs(20), |states| {
        states
            .iter()
            .any(|(n, s)| n == "api2" && s.starts_with("DOWN"))
    })?;
    porthole_test::ha::eventually(
        "api1 holds the NAT node's tunnel",
        Duration::from_secs(60),
        || Ok((cluster.metric(0, "porthole_tunnels_active")? >= 1.0).then_some(())),
    )?;
    let routes = vec![
        porthole_forward(cluster, "spdy", "pbench-direct", "direct-spdy", work)?,
        porthole_forward(cluster, "spdy", "pbench-nat", "tunnel-spdy", work)?,
        porthole_forward(cluster, "websocket", "pbench-direct", "direct-ws", work)?,
        porthole_forward(cluster, "websocket", "pbench-nat", "tunnel-ws", work)?,
    ];
    let samples = measure_routes(cluster.client(), bench, &routes, sizes)?;
    // One table per protocol: each tunnel route against the direct route of its protocol.
    let (spdy, ws) = routes.split_at(2);
    print_report(
        "SPDY: node behind NAT through its tunnel vs a direct node",
        spdy,
        &samples,
        sizes.reps,
        TUNNEL_GOAL,
    );
    print_report(
        "WebSocket tunnel: node behind NAT through its tunnel vs a direct node",
        ws,
        &samples,
        sizes.reps,
        TUNNEL_GOAL,
    );
    Ok(())
}
