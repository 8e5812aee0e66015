//! `split-roles`: porthole with its roles on different hosts, against the bare TLS relay chain
//! (path 2) laid on the same hosts, in one run (issue 12's benchmark).
//!
//! ```text
//! porthole:  client host: port-forward ─TLS→ lb: haproxy ─→ api1: apiserver ─TLS→ node1: node → pod
//! path 2:    client host: relay        ─TLS→ lb: haproxy ─→ api1: relay     ─TLS→ node1: relay → pod
//! ```
//!
//! Both chains cross the same veths and the same kind of balancer hop (haproxy in TCP mode;
//! one instance per route for the relays, which carry no protocol to multiplex on), and reach
//! the same echo and iperf3 servers inside the same pod. The cluster is
//! `porthole_test::ha::HaCluster` with one node; API server 2 is stopped so every porthole
//! session runs through api1, the host the relays use. Reps interleave the paths (each rep
//! measures every path in turn) so drift on a noisy machine hits them alike; the report gives
//! medians and ratios against path 2.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use porthole_test::ha::HaCluster;
use porthole_test::haproxy::Haproxy;
use porthole_test::testbed::Host;
use porthole_test::{Child, TempDir};
use serde_json::Value;

/// Arguments of `split-roles` and `tunnel`: how long to measure each route, and the binary.
#[derive(clap::Args)]
pub struct RouteArgs {
    /// Interleaved repetitions.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds per iperf3 test (one more second is omitted as warm-up).
    #[arg(long, default_value_t = 4)]
    iperf_secs: u32,
    /// Seconds per new-connections test.
    #[arg(long, default_value_t = 3.0)]
    conn_secs: f64,
    /// Round trips per latency test.
    #[arg(long, default_value_t = 5_000)]
    rtt_count: u64,
    /// The `porthole` binary (default: next to this one).
    #[arg(long)]
    porthole: Option<PathBuf>,
    /// Tiny sizes and one rep: checks that every route works (CI).
    #[arg(long)]
    smoke: bool,
}

impl RouteArgs {
    /// The measurement sizes (`--smoke`: tiny ones, one rep).
    pub(crate) fn sizes(&self) -> Sizes {
        if self.smoke {
            Sizes {
                reps: 1,
                iperf_secs: 1,
                conn_secs: 0.5,
                rtt_count: 200,
            }
        } else {
            Sizes {
                reps: self.reps,
                iperf_secs: self.iperf_secs,
                conn_secs: self.conn_secs,
                rtt_count: self.rtt_count,
            }
        }
    }

    /// This benchmark tool's own path and the `porthole` binary's.
    pub(crate) fn binaries(&self) -> Result<(PathBuf, PathBuf)> {
        crate::binaries(self.porthole.as_deref())
    }
}

/// One way from the client host to a pod's echo (7001) and iperf3 (5201) servers.
pub(crate) struct Route {
    pub(crate) name: &'static str,
    echo: u16,
    pub(crate) iperf: u16,
    _procs: Vec<Child>,
    _balancers: Vec<Haproxy>,
}

/// Pod `name` on `node`: echo on 7001, iperf3 on 5201.
pub(crate) fn pod_manifest(bench: &Path, name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  containers:
  - name: echo
    image: porthole-bench
    command: ["{bench}", "echo", "--listen", "127.0.0.1:7001"]
    readinessProbe:
      tcpSocket:
        port: 7001
      periodSeconds: 1
  - name: iperf
    image: iperf3
    command: ["iperf3", "-s", "-B", "127.0.0.1", "-p", "5201"]
"#,
        bench = bench.display()
    )
}

fn listening_lines(child: &mut Child, n: usize) -> Result<Vec<SocketAddr>> {
    (0..n)
        .map(|_| {
            child.wait_for_line(Duration::from_secs(30), |l| {
                l.strip_prefix("listening on ")?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .collect()
}

fn relay(host: &Host, bench: &Path, work: &Path, name: &str, args: &[String]) -> Result<Child> {
    let mut cmd = host.command(bench);
    cmd.arg("relay").args(args);
    Ok(Child::spawn(name, cmd, work)?.stop_with(nix::sys::signal::Signal::SIGTERM))
}

/// Path 2 on the cluster's hosts: client relay → haproxy (one per route) → api1 relay →
/// node1 relay (enters the pod's netns) → pod.
fn tls_relay_chain(cluster: &HaCluster, bench: &Path, work: &Path) -> Result<Route> {
    let certs = work.join("relay-certs");
    let out = Command::new(bench)
        .arg("gencerts")
        .arg("--dir")
        .arg(&certs)
        .output()?;
    porthole_test::expect_success("porthole-bench gencerts", &out)?;
    let cert = |f: &str| certs.join(f).display().to_string();
    // The pod's namespace through its echo process: the node agent's bind mount of it lives in
    // the node's own mount namespace (`ip netns exec` gives each command one).
    let node_pid = cluster.nodes[0]
        .as_ref()
        .context("node1 is not running")?
        .pid();
    let echo_pid = porthole_test::descendants(node_pid)
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .map(|c| String::from_utf8_lossy(&c).contains("echo\0--listen\x00127.0.0.1:7001"))
                .unwrap_or(false)
        })
        .context("the pod's echo process is not among node1's descendants")?;
    let netns = format!("/proc/{}/ns/net", echo_pid.pid);
    let (node, api, lb, client) = (
        cluster.bed.host("node1"),
        cluster.bed.host("api1"),
        cluster.bed.host("lb"),
        cluster.client(),
    );
    let listen_twice = |ip: std::net::IpAddr| -> Vec<String> {
        vec![
            "--listen".into(),
            format!("{ip}:0"),
            "--listen".into(),
            format!("{ip}:0"),
        ]
    };
    let connect = |targets: &[SocketAddr]| -> Vec<String> {
        targets
            .iter()
            .flat_map(|t| ["--connect".to_string(), t.to_string()])
            .collect()
    };
    let tls_in = vec![
        "--tls-cert".to_string(),
        cert("leaf.pem"),
        "--tls-key".into(),
        cert("leaf.key"),
    ];
    let tls_out = vec!["--tls-ca".to_string(), cert("ca.pem")];

    let mut args = listen_twice(node.ip().into());
    args.extend(connect(&[
        "127.0.0.1:7001".parse()?,
        "127.0.0.1:5201".parse()?,
    ]));
    args.extend(tls_in.clone());
    args.extend(["--netns".to_string(), netns]);
    let mut node_relay = relay(node, bench, work, "relay-node", &args)?;
    let node_addrs = listening_lines(&mut node_relay, 2)?;

    let mut args = listen_twice(api.ip().into());
    args.extend(connect(&node_addrs));
    args.extend(tls_in);
    args.extend(tls_out.clone());
    let mut api_relay = relay(api, bench, work, "relay-api", &args)?;
    let api_addrs = listening_lines(&mut api_relay, 2)?;

    let lb_echo = Haproxy::start_tcp_on(lb, work, "relay-lb-echo", &api_addrs[..1])?;
    let lb_iperf = Haproxy::start_tcp_on(lb, work, "relay-lb-iperf", &api_addrs[1..])?;
    let mut args = listen_twice([127, 0, 0, 1].into());
    args.extend(connect(&[lb_echo.addr(), lb_iperf.addr()]));
    args.extend(tls_out);
    let mut client_relay = relay(client, bench, work, "relay-client", &args)?;
    let local = listening_lines(&mut client_relay, 2)?;
    Ok(Route {
        name: "tls-relay",
        echo: local[0].port(),
        iperf: local[1].port(),
        _procs: vec![client_relay, api_relay, node_relay],
        _balancers: vec![lb_echo, lb_iperf],
    })
}

/// `porthole port-forward --transport T pod/POD :7001 :5201` on the client host, reported as
/// `name`.
pub(crate) fn porthole_forward(
    cluster: &HaCluster,
    transport: &str,
    pod: &str,
    name: &'static str,
    work: &Path,
) -> Result<Route> {
    let mut cmd = cluster.porthole_on_client();
    cmd.args(["port-forward", "--transport", transport]);
    forward_route(cmd, pod, name, work)
}

/// A route through a port-forward command (porthole's or kubectl's) given without its
/// arguments: `CMD pod/POD :7001 :5201`, ports read from its `Forwarding from` lines.
pub(crate) fn forward_route(
    mut cmd: Command,
    pod: &str,
    name: &'static str,
    work: &Path,
) -> Result<Route> {
    cmd.args([&format!("pod/{pod}"), ":7001", ":5201"]);
    let mut child = Child::spawn(name, cmd, work)?;
    let mut ports = BTreeMap::new();
    while ports.len() < 2 {
        let (local, remote) = child.wait_for_line(Duration::from_secs(60), |l| {
            let rest = l.strip_prefix("Forwarding from 127.0.0.1:")?;
            let (local, remote) = rest.split_once(" -> ")?;
            Some((local.parse::<u16>().ok()?, remote.parse::<u16>().ok()?))
        })?;
        ports.insert(remote, local);
    }
    Ok(Route {
        name,
        echo: ports[&7001],
        iperf: ports[&5201],
        _procs: vec![child],
        _balancers: Vec::new(),
    })
}

/// Runs a command on the client host that prints one JSON object.
fn json_of(mut cmd: Command, what: &str) -> Result<Value> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    let text = porthole_test::expect_success(what, &out)?;
    serde_json::from_str(text.trim()).with_context(|| format!("{what} printed {text:?}"))
}

/// Receiver-side MB/s of one iperf3 test (`reverse`: pod → client).
fn iperf(client: &Host, port: u16, secs: u32, reverse: bool) -> Result<f64> {
    iperf_to(client, "127.0.0.1", port, secs, 1, reverse)
}

/// Receiver-side MB/s of one iperf3 test from `client` to `server:port`, the first `omit`
/// seconds (slow start) left out (`reverse`: server → client).
pub(crate) fn iperf_to(
    client: &Host,
    server: &str,
    port: u16,
    secs: u32,
    omit: u32,
    reverse: bool,
) -> Result<f64> {
    let mut last = None;
    // iperf3's server closes its listener while a test runs and reopens it after: a test that
    // starts right after the previous one can find it busy. Retried a few times, not timed.
    for _ in 0..20 {
        let mut cmd = client.command("iperf3");
        cmd.args(["-c", server, "-p", &port.to_string()]).args([
            "-t",
            &secs.to_string(),
            "-O",
            &omit.to_string(),
            "-J",
        ]);
        if reverse {
            cmd.arg("-R");
        }
        let out = cmd.stdin(Stdio::null()).output().context("run iperf3")?;
        let j: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = j
            .pointer("/end/sum_received/bits_per_second")
            .and_then(Value::as_f64)
        {
            return Ok(bps / 8e6);
        }
        let err = j
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
        if !err.contains("busy") && !err.contains("refused") && !err.contains("reset") {
            bail!("iperf3 to {server}:{port}: {err}");
        }
        last = Some(err);
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 to {server}:{port} stayed busy: {last:?}")
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The metrics, in report order: (key, label, higher is better).
const METRICS: &[(&str, &str, bool)] = &[
    ("up_mbs", "1-conn throughput client→pod (MB/s)", true),
    ("down_mbs", "1-conn throughput pod→client (MB/s)", true),
    ("conn_s_1", "new connections/s, 1 client", true),
    ("conn_s_8", "new connections/s, 8 clients", true),
    ("rtt_p50_us", "64 B round trip p50 (µs)", false),
];

/// `split-roles`.
pub fn run(a: RouteArgs) -> Result<()> {
    let (bench, porthole) = a.binaries()?;
    let sizes = a.sizes();
    let work = TempDir::new("split-roles")?;
    let mut cluster = HaCluster::start(&porthole, work.path(), 1)?;
    let result = measure(&mut cluster, &bench, work.path(), &sizes);
    let report = cluster.report();
    let stopped = cluster.stop();
    if let Err(e) = result {
        bail!("{e:#}\n\n{report}");
    }
    stopped
}

/// Pod `pbench` ([`pod_manifest`]) on node1, Ready.
pub(crate) fn start_bench_pod(cluster: &HaCluster, bench: &Path, work: &Path) -> Result<()> {
    let pod =
        porthole_test::write_file(work, "pbench.yaml", &pod_manifest(bench, "pbench", "node1"))?;
    cluster.kubectl(&["apply", "-f", &pod.display().to_string()])?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/pbench",
        "--timeout=90s",
    ])?;
    Ok(())
}

fn measure(cluster: &mut HaCluster, bench: &Path, work: &Path, sizes: &Sizes) -> Result<()> {
    start_bench_pod(cluster, bench, work)?;
    // One API server: porthole's sessions and the relays then cross the same hosts.
    let lb_states = |states: &[(String, String)]| {
        states
            .iter()
            .any(|(n, s)| n == "api2" && s.starts_with("DOWN"))
    };
    cluster.kill_apiserver(1)?;
    cluster.lb.wait_for(Duration::from_secs(20), lb_states)?;

    let paths = vec![
        tls_relay_chain(cluster, bench, work)?,
        porthole_forward(cluster, "spdy", "pbench", "porthole-spdy", work)?,
        porthole_forward(cluster, "websocket", "pbench", "porthole-ws", work)?,
    ];
    let samples = measure_routes(cluster.client(), bench, &paths, sizes)?;
    print_report(
        "Split roles on simulated hosts",
        &paths,
        &samples,
        sizes.reps,
        1.0,
    );
    Ok(())
}

/// How long each measurement runs.
pub(crate) struct Sizes {
    pub(crate) reps: usize,
    pub(crate) iperf_secs: u32,
    pub(crate) conn_secs: f64,
    pub(crate) rtt_count: u64,
}

/// Samples by (route name, metric key).
pub(crate) type Samples = BTreeMap<(&'static str, &'static str), Vec<f64>>;

/// Every metric of [`METRICS`] on every route, reps interleaved (each rep measures every
/// route in turn, so drift on a noisy machine hits them alike).
pub(crate) fn measure_routes(
    client: &Host,
    bench: &Path,
    paths: &[Route],
    sizes: &Sizes,
) -> Result<Samples> {
    let Sizes {
        reps,
        iperf_secs,
        conn_secs,
        rtt_count,
    } = *sizes;
    let client = client.clone();
    let mut samples = Samples::new();
    for rep in 1..=reps {
        for path in paths {
            let mut add = |metric: &'static str, v: f64| {
                samples.entry((path.name, metric)).or_default().push(v);
            };
            add("up_mbs", iperf(&client, path.iperf, iperf_secs, false)?);
            add("down_mbs", iperf(&client, path.iperf, iperf_secs, true)?);
            for conc in [1, 8] {
                let mut cmd = client.command(bench);
                cmd.args(["connrate", "--connect", &format!("127.0.0.1:{}", path.echo)])
                    .args([
                        "--conc",
                        &conc.to_string(),
                        "--secs",
                        &conn_secs.to_string(),
                    ]);
                let j = json_of(cmd, "porthole-bench connrate")?;
                let errors = j["errors"].as_u64().unwrap_or(0);
                ensure!(
                    errors == 0,
                    "{}: {errors} connection errors (first: {})",
                    path.name,
                    j["first_error"]
                );
                let key = if conc == 1 { "conn_s_1" } else { "conn_s_8" };
                add(key, j["conn_per_s"].as_f64().unwrap_or(0.0));
            }
            let mut cmd = client.command(bench);
            cmd.args(["rtt", "--connect", &format!("127.0.0.1:{}", path.echo)])
                .args(["--count", &rtt_count.to_string(), "--warmup", "200"]);
            let j = json_of(cmd, "porthole-bench rtt")?;
            add("rtt_p50_us", j["p50_us"].as_f64().unwrap_or(f64::NAN));
            eprintln!("rep {rep}/{reps}: {} done", path.name);
        }
    }
    Ok(samples)
}

/// A Markdown table of medians, with each route's ratio against the first, marked ✓ where it
/// meets `goal` (a ratio at least `goal` where higher is better, at most `1 / goal` where lower
/// is better: latency).
pub(crate) fn print_report(
    title: &str,
    paths: &[Route],
    samples: &Samples,
    reps: usize,
    goal: f64,
) {
    let base_name = paths[0].name;
    println!("## {title} (medians of {reps} interleaved reps; ✓: ratio meets {goal}×, 1/{goal}× for latency)\n");
    let mut header = String::from("| metric |");
    for p in paths {
        header.push_str(&format!(" {} |", p.name));
    }
    for p in &paths[1..] {
        header.push_str(&format!(" {} ÷ {base_name} |", p.name));
    }
    println!("{header}");
    println!("|{}", "---|".repeat(1 + paths.len() * 2 - 1));
    for (key, label, higher_better) in METRICS {
        let med = |name: &str| median(samples.get(&(name, *key)).cloned().unwrap_or_default());
        let base = med(paths[0].name);
        let mut row = format!("| {label} |");
        for p in paths {
            row.push_str(&format!(" {:.1} |", med(p.name)));
        }
        for p in &paths[1..] {
            let ratio = med(p.name) / base;
            // For latency, lower is better: the ratio still reads route ÷ first route.
            let mark =
                if (*higher_better && ratio >= goal) || (!higher_better && ratio <= 1.0 / goal) {
                    "✓"
                } else {
                    "✗"
                };
            row.push_str(&format!(" {ratio:.2}× {mark} |"));
        }
        println!("{row}");
    }
    println!();
    println!("raw samples (route, metric: values):");
    for ((path, metric), v) in samples {
        if paths.iter().any(|p| p.name == *path) {
            println!("  {path} {metric}: {v:.1?}");
        }
    }
    println!();
}
