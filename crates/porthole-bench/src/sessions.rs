//! `porthole-bench sessions`: many port-forward sessions at once, each its own client process,
//! on one API server and one node agent (separate processes, so each role's memory is its own),
//! beside kubectl's figure for the same, in one run. Each client kind gets an API server and a
//! node of its own, started afresh, so no role reuses memory the other kind grew and freed.
//!
//! For porthole's client and then kubectl:
//! - **setup rate**: N clients started at once; sessions/s from the first start until every
//!   client has printed its `Forwarding from` line and answered one 64 B echo (which needs the
//!   upgraded session to the pod);
//! - **memory per session**: the clients' Pss each, and the growth of the API server's and the
//!   node's Pss divided by N (`/proc/PID/smaps_rollup`);
//! - **API requests per idle session**: `apiserver_request_total` summed over its labels, before
//!   and after `--idle-secs` with every session open and idle, less the same count over the same
//!   time with no session (the node's heartbeats). A client that re-reads its pod every 2 s
//!   costs 0.5 requests/s per session here; one that watches it costs ~0.
//!
//! Every session is checked once more by an echo at the end of its idle time, so a figure is
//! never taken from sessions that had died. Prints one JSON object on stdout and a table on
//! stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use porthole_test::{Child, Roles, TempDir};
use serde_json::{json, Value};

/// Flags of `porthole-bench sessions`.
#[derive(clap::Args)]
pub struct SessionsArgs {
    /// porthole port-forward sessions (client processes) at once.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// kubectl port-forward sessions at once (each kubectl holds tens of MB: as many as the
    /// machine can hold); 0 leaves kubectl out.
    #[arg(long, default_value_t = 200)]
    kubectl_sessions: usize,
    /// How long every session stays open and idle while the API server's requests are counted.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// The porthole binary (default: next to this tool).
    #[arg(long)]
    porthole: Option<PathBuf>,
    /// kubectl for the comparison (default `$PORTHOLE_KUBECTL`, else /usr/bin/kubectl).
    #[arg(long)]
    kubectl: Option<PathBuf>,
}

/// How long one client may take to print its ready line: with a thousand starting at once on
/// two cores this is far beyond what any of them needs.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The echo pod every session forwards to.
const POD: &str = "sessions-echo";
const POD_PORT: u16 = 7001;

/// Figures of one client kind.
struct Phase {
    sessions: usize,
    setup_secs: f64,
    client_pss_kib: Vec<u64>,
    apiserver_growth_kib: i64,
    node_growth_kib: i64,
    idle_requests_per_s: f64,
}

impl Phase {
    fn json(&self, baseline_requests_per_s: f64) -> Value {
        let n = self.sessions.max(1) as f64;
        let mut pss = self.client_pss_kib.clone();
        pss.sort_unstable();
        let median_client = pss.get(pss.len() / 2).copied().unwrap_or(0);
        json!({
            "sessions": self.sessions,
            "setup_secs": self.setup_secs,
            "setup_sessions_per_s": n / self.setup_secs,
            "client_pss_kib_median": median_client,
            "apiserver_kib_per_session": self.apiserver_growth_kib as f64 / n,
            "node_kib_per_session": self.node_growth_kib as f64 / n,
            "idle_requests_per_s": self.idle_requests_per_s,
            "baseline_idle_requests_per_s": baseline_requests_per_s,
            "idle_requests_per_s_per_session":
                (self.idle_requests_per_s - baseline_requests_per_s).max(0.0) / n,
        })
    }
}

/// Runs the benchmark.
pub fn run(a: SessionsArgs) -> anyhow::Result<()> {
    let (bench, porthole) = crate::binaries(a.porthole.as_deref())?;
    let work = TempDir::new("porthole-bench-sessions")?;
    let idle = Duration::from_secs(a.idle_secs);
    let porthole_bin = porthole.clone();
    let (p, p_baseline) = on_fresh_roles(
        &porthole,
        &bench,
        &work.path().join("porthole"),
        idle,
        |roles, work| {
            let kubeconfig = roles.data_dir.join("kubeconfig");
            let server = roles.server.clone();
            phase(roles, "porthole", a.sessions, idle, work, |i| {
                let mut cmd = Command::new(&porthole_bin);
                cmd.args(["port-forward", POD, &format!(":{POD_PORT}")])
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .arg(format!("--server={server}"))
                    .env_remove("KUBECONFIG");
                (format!("porthole-{i}"), cmd)
            })
        },
    )?;
    let p = p.json(p_baseline);
    let k = if a.kubectl_sessions > 0 {
        let (k, k_baseline) = on_fresh_roles(
            &porthole,
            &bench,
            &work.path().join("kubectl"),
            idle,
            |roles, work| {
                let kubeconfig = roles.data_dir.join("kubeconfig");
                let server = roles.server.clone();
                let kubectl = a.kubectl.clone().unwrap_or_else(|| roles.kubectl.clone());
                phase(roles, "kubectl", a.kubectl_sessions, idle, work, |i| {
                    let mut cmd = Command::new(&kubectl);
                    cmd.args([
                        "port-forward",
                        &format!("pod/{POD}"),
                        &format!(":{POD_PORT}"),
                    ])
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .arg(format!("--server={server}"))
                    .arg(format!("--cache-dir={}", work.join("kube-cache").display()));
                    (format!("kubectl-{i}"), cmd)
                })
            },
        )?;
        Some(k.json(k_baseline))
    } else {
        None
    };
    let ratio = |key: &str| {
        k.as_ref()
            .and_then(|k| Some(p[key].as_f64()? / k[key].as_f64()?))
            .map_or(Value::Null, |r| json!(r))
    };
    let report = json!({
        "idle_secs": a.idle_secs,
        "porthole": p,
        "kubectl": k,
        "porthole_over_kubectl": {
            "setup_sessions_per_s": ratio("setup_sessions_per_s"),
            "client_pss_kib_median": ratio("client_pss_kib_median"),
            "apiserver_kib_per_session": ratio("apiserver_kib_per_session"),
            "node_kib_per_session": ratio("node_kib_per_session"),
        },
    });
    print_table(&report);
    println!("{report}");
    Ok(())
}

/// Runs one client kind on an API server and a node of its own, so neither role reuses memory
/// the other kind's sessions grew and freed. Returns the phase and the baseline request rate
/// (no session) measured on the same roles.
fn on_fresh_roles(
    porthole: &Path,
    bench: &Path,
    work: &Path,
    idle: Duration,
    run_phase: impl FnOnce(&Roles, &Path) -> anyhow::Result<Phase>,
) -> anyhow::Result<(Phase, f64)> {
    std::fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
    let roles = Roles::start(porthole, work)?;
    let result = (|| -> anyhow::Result<(Phase, f64)> {
        start_echo_pod(&roles, bench, work)?;
        eprintln!("sessions: counting the API server's requests with no session ({idle:?})");
        let baseline = idle_request_rate(&roles, idle)?;
        Ok((run_phase(&roles, work)?, baseline))
    })();
    let stopped = roles.stop();
    let phase = result?;
    stopped.context("stop the API server and the node")?;
    Ok(phase)
}

fn start_echo_pod(roles: &Roles, bench: &Path, work: &Path) -> anyhow::Result<()> {
    let manifest = porthole_test::write_file(
        work,
        "echo-pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {POD}\nspec:\n  containers:\n  - name: echo\n    image: porthole-bench\n    command: [{bench:?}, echo, --listen, \"127.0.0.1:{POD_PORT}\"]\n    ports:\n    - containerPort: {POD_PORT}\n",
            bench = bench.display().to_string()
        ),
    )?;
    roles.kubectl(&["apply", "-f", &manifest.display().to_string()])?;
    roles.kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{POD}"),
        "--timeout=90s",
    ])?;
    Ok(())
}

/// Starts `n` clients at once, waits for each one's session, measures, idles, checks them
/// all again, and stops them.
fn phase(
    roles: &Roles,
    what: &str,
    n: usize,
    idle: Duration,
    work: &Path,
    command: impl Fn(usize) -> (String, Command),
) -> anyhow::Result<Phase> {
    let api_pid = role_pid(&roles.apiserver, "API server")?;
    let node_pid = role_pid(&roles.node, "node")?;
    let api_before = pss_kib(api_pid)?;
    let node_before = pss_kib(node_pid)?;
    let logs = work.join(format!("{what}-logs"));
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;

    eprintln!("sessions: starting {n} {what} clients at once");
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let (name, cmd) = command(i);
        let child = Child::spawn(&name, cmd, &logs)
            .with_context(|| format!("start {what} client {i} of {n}"))?;
        clients.push(child);
    }
    let mut ports = Vec::with_capacity(n);
    for c in &mut clients {
        let port = c.wait_for_line(READY_TIMEOUT, forwarding_port)?;
        echo_check(port).with_context(|| format!("first echo through {what} on port {port}"))?;
        ports.push(port);
    }
    let setup_secs = started.elapsed().as_secs_f64();
    eprintln!("sessions: {n} {what} sessions up in {setup_secs:.2} s");

    let idle_requests_per_s = idle_request_rate(roles, idle)?;
    for (port, c) in ports.iter().zip(&clients) {
        echo_check(*port).with_context(|| {
            format!(
                "echo after {idle:?} idle through {what} on port {port}\n{}",
                c.report()
            )
        })?;
    }
    let client_pss_kib = clients
        .iter()
        .map(|c| pss_kib(c.pid()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let apiserver_growth_kib = pss_kib(api_pid)? as i64 - api_before as i64;
    let node_growth_kib = pss_kib(node_pid)? as i64 - node_before as i64;

    for c in &clients {
        let _ = c.signal(Signal::SIGINT);
    }
    for mut c in clients {
        c.wait_timeout(Duration::from_secs(30))
            .with_context(|| format!("{what} client did not stop on SIGINT"))?;
    }
    Ok(Phase {
        sessions: n,
        setup_secs,
        client_pss_kib,
        apiserver_growth_kib,
        node_growth_kib,
        idle_requests_per_s,
    })
}

fn role_pid(child: &Option<Child>, what: &str) -> anyhow::Result<u32> {
    child
        .as_ref()
        .map(Child::pid)
        .with_context(|| format!("the {what} is not running"))
}

/// kubectl's and porthole's `Forwarding from 127.0.0.1:PORT -> 7001`.
fn forwarding_port(line: &str) -> Option<u16> {
    line.strip_prefix("Forwarding from 127.0.0.1:")?
        .split_once(" -> ")?
        .0
        .parse()
        .ok()
}

/// One 64 B exchange through a forward.
fn echo_check(port: u16) -> anyhow::Result<()> {
    let payload = porthole_test::pattern(64, u64::from(port));
    let got = porthole_test::echo_roundtrip(port, &payload)?;
    if got != payload {
        bail!("the echo through port {port} came back different");
    }
    Ok(())
}

/// Requests the API server served per second over `idle` (its own `/metrics` reads excluded).
fn idle_request_rate(roles: &Roles, idle: Duration) -> anyhow::Result<f64> {
    let before = requests_served(roles)?;
    let t = Instant::now();
    std::thread::sleep(idle);
    let after = requests_served(roles)?;
    // The first read is counted by the second; itself, not.
    Ok((after - before - 1.0).max(0.0) / t.elapsed().as_secs_f64())
}

/// `apiserver_request_total` summed over every verb, resource and code.
fn requests_served(roles: &Roles) -> anyhow::Result<f64> {
    let text = roles.kubectl(&["get", "--raw", "/metrics"])?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// Proportional set size of one process, KiB.
fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Pss:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no Pss line in {path}"))
}

fn print_table(r: &Value) {
    let row = |label: &str, key: &str| {
        let p = &r["porthole"][key];
        let k = &r["kubectl"][key];
        let ratio = &r["porthole_over_kubectl"][key];
        let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.3}"));
        eprintln!("{label:<44} {:>12} {:>12} {:>8}", f(p), f(k), f(ratio));
    };
    eprintln!(
        "\n{:<44} {:>12} {:>12} {:>8}",
        "sessions benchmark", "porthole", "kubectl", "ratio"
    );
    row("sessions", "sessions");
    row("setup, sessions/s", "setup_sessions_per_s");
    row(
        "client Pss per session (median, KiB)",
        "client_pss_kib_median",
    );
    row(
        "API server growth per session (KiB)",
        "apiserver_kib_per_session",
    );
    row("node growth per session (KiB)", "node_kib_per_session");
    row(
        "API requests/s while idle (all sessions)",
        "idle_requests_per_s",
    );
    row(
        "API requests/s per idle session",
        "idle_requests_per_s_per_session",
    );
    eprintln!("(per idle session: less the same count with no session, on the same roles)");
}
