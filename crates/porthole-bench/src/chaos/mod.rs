//! `chaos`: the soak of issue 13. Traffic runs through several forwards at once (HTTP
//! downloads compared with what the pods serve, redis-benchmark, long-lived echo streams) on
//! a whole cluster on simulated hosts (three etcd members, two API servers behind haproxy,
//! three joined nodes), while faults are injected at random, one at a time: kill -9 of an API
//! server, of a node agent, of a pod's process, an etcd member restart, partitions, loss.
//!
//! Accounting: every request is counted; a failed one must overlap a fault's window (from its
//! injection until traffic has recovered and the cluster is healthy again), else it is
//! unexplained; corrupted bytes must be 0; time to recover is measured per fault kind; leaks
//! are counted at the end against the steady state after a burn-in round of every fault kind. The verdict and all
//! figures are printed and written as JSON.

mod faults;
mod leaks;
mod traffic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use porthole_test::ha::{HaCluster, Layout};
use porthole_test::{Child, TempDir};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use faults::{FaultKind, Injector};
use traffic::{Targets, Traffic, Workload};

/// Size of the blob the HTTP pods serve.
const BLOB_BYTES: usize = 4 * 1024 * 1024;
/// Workers of each workload.
const WORKERS_PER_KIND: usize = 2;
/// Traffic before the first fault.
const WARMUP: Duration = Duration::from_secs(15);
/// Fault-free traffic over which the threads' steady state is sampled.
const THREADS_WINDOW: Duration = Duration::from_secs(10);
/// Bound on traffic coming back after a fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);
/// Bound on the cluster being whole again after a fault (a node's pods restart with the
/// kubelet's back-off).
const HEALTH_LIMIT: Duration = Duration::from_secs(180);
/// Quiet time between faults: shortest and longest.
const GAP_MS: (u64, u64) = (2_000, 6_000);
/// Soak pods: 3 HTTP, 2 redis, 2 echo.
const PODS: usize = 7;

/// Arguments of `chaos`.
#[derive(clap::Args)]
pub struct ChaosArgs {
    /// How long faults are injected (e.g. 20m, 180s); setup and the final checks come on top.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule (default: from the clock; the report prints it, so a run can
    /// be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the JSON report (it is printed on stdout as well).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The `porthole` binary (default: next to this one).
    #[arg(long)]
    porthole: Option<PathBuf>,
}

/// `20m`, `180s`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: give a duration such as 20m, 180s or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// Polls `check` until it is true, bounded by `timeout` (for conditions that have no line to
/// wait for); the last error or "not yet" on timeout.
pub fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(true) => return Ok(()),
            Ok(false) => "not yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?} (last: {last})");
        }
        // Bounds the polling rate; it orders nothing.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `chaos`.
pub fn run(a: ChaosArgs) -> Result<()> {
    ensure!(
        porthole_test::is_root(),
        "the chaos soak makes network namespaces and firewall rules: run it as root (sudo bash scripts/chaos.sh)"
    );
    for tool in ["redis-server", "redis-benchmark", "etcd", "haproxy", "nft"] {
        ensure!(
            which(tool),
            "{tool} is not installed: run scripts/install-test-deps.sh (apt: redis-server redis-tools etcd-server haproxy nftables)"
        );
    }
    let (_, porthole) = crate::binaries(a.porthole.as_deref())?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let work = TempDir::new("chaos")?;
    eprintln!(
        "chaos: seed {seed}, {:?} of faults; work dir {}",
        a.duration,
        work.path().display()
    );
    let layout = Layout {
        nodes: 3,
        etcd_members: 3,
        etcd_election_timeout: None,
    };
    let mut cluster = HaCluster::start_with(&porthole, work.path(), layout)
        .context("start the cluster on simulated hosts")?;
    let outcome = soak(&mut cluster, work.path(), a.duration, seed);
    let logs = cluster.report();
    let stopped = cluster.stop();
    let mut report = match outcome {
        Ok(r) => r,
        Err(e) => bail!("chaos soak: {e:#}\n\n{logs}"),
    };
    let clean_stop = match &stopped {
        Ok(()) => Value::Null,
        Err(e) => Value::String(format!("{e:#}")),
    };
    report["teardown_problems"] = clean_stop.clone();
    if !clean_stop.is_null() {
        report["pass"] = json!(false);
    }
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &a.json {
        std::fs::write(path, &text).with_context(|| format!("write {}", path.display()))?;
    }
    print_summary(&report);
    ensure!(
        report["pass"] == json!(true),
        "chaos soak failed (seed {seed}): see the report above"
    );
    Ok(())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// One fault as it happened.
struct FaultRecord {
    kind: FaultKind,
    target: String,
    start: Instant,
    /// Traffic back: every worker succeeded after the fault and its own last failure.
    recovered: Instant,
    /// The longest any worker went without a completed request while the fault was on.
    interruption: Duration,
    /// End of the window failures may fall in.
    window_end: Instant,
}

fn soak(cluster: &mut HaCluster, work: &Path, duration: Duration, seed: u64) -> Result<Value> {
    let blob_dir = work.join("blob");
    std::fs::create_dir_all(&blob_dir)?;
    let blob = porthole_test::pattern(BLOB_BYTES, seed | 0x5eed);
    std::fs::write(blob_dir.join("blob.bin"), &blob)?;
    let manifest = porthole_test::write_file(work, "chaos.yaml", &manifest(&blob_dir))?;
    cluster.kubectl(&["apply", "-f", &manifest.display().to_string()])?;
    wait_healthy(cluster).context("the soak's pods did not come up")?;

    let mut forwards = Vec::new();
    let mut ports = BTreeMap::new();
    for (svc, port) in [
        ("chaos-blob", 8000),
        ("chaos-echo", 7000),
        ("chaos-redis", 6379),
    ] {
        let (child, local) = forward(cluster, svc, port)?;
        forwards.push(child);
        ports.insert(svc, local);
    }
    let targets = Targets {
        http: ports["chaos-blob"],
        echo: ports["chaos-echo"],
        redis: ports["chaos-redis"],
        blob: std::sync::Arc::new(blob),
        blob_path: "/blob.bin".into(),
    };
    let mut traffic = Traffic::start(cluster.client(), &targets, WORKERS_PER_KIND)?;
    let res = run_faults(cluster, &mut traffic, &forwards, duration, seed);
    traffic.stop();
    let forward_logs: Vec<String> = forwards.iter().map(Child::report).collect();
    for f in &mut forwards {
        let _ = f.interrupt(Duration::from_secs(20));
    }
    res.map_err(|e| e.context(forward_logs.join("\n\n")))
}

/// What leaks are counted on: porthole's processes by role (descriptors, threads, memory) and
/// the soak's own processes, namespaces and mounts.
fn roles(cluster: &HaCluster, forwards: &[Child]) -> leaks::Scope {
    let mut roles = BTreeMap::new();
    roles.insert(
        "apiserver".to_string(),
        cluster
            .apiservers
            .iter()
            .filter_map(|a| a.child.as_ref().map(Child::pid))
            .collect(),
    );
    roles.insert(
        "node".to_string(),
        cluster.nodes.iter().flatten().map(Child::pid).collect(),
    );
    roles.insert(
        "forward".to_string(),
        forwards.iter().map(Child::pid).collect(),
    );
    leaks::Scope {
        roles,
        work: cluster.work.display().to_string(),
        bed: format!("{}-", cluster.bed.id()),
    }
}

fn run_faults(
    cluster: &mut HaCluster,
    traffic: &mut Traffic,
    forwards: &[Child],
    duration: Duration,
    seed: u64,
) -> Result<Value> {
    // Warm-up: every worker gets through once, then traffic runs a while before the steady
    // state is counted.
    until(
        "every traffic worker's first success",
        Duration::from_secs(120),
        || Ok(traffic.successes().iter().all(|n| *n > 0)),
    )?;
    traffic.mark(Instant::now());
    // Warm-up, no faults; it also gives the longest wait between two requests' ends with no
    // fault at all (the floor of every recovery figure).
    std::thread::sleep(WARMUP);
    let steady_gap = traffic.interruption();
    traffic.unmark();
    let soak_start = Instant::now();

    let join = cluster.token_create(&["--ttl", "24h"])?;
    let mut injector = Injector::new(join, rand::rngs::StdRng::seed_from_u64(seed));
    let mut gap_rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9a9);
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut not_recovered = Vec::new();
    let mut base = None;
    // Threads seen during the burn-in, faults and fail-overs included.
    let mut burn_in_threads = leaks::Snapshot::default();
    // Until there is a steady state and at least one fault after it, the soak goes on.
    while soak_start.elapsed() < duration || records.len() <= FaultKind::ALL.len() {
        if records.len() == FaultKind::ALL.len() && base.is_none() {
            base = Some(steady_state(cluster, traffic, forwards, &burn_in_threads)?);
        }
        let kind = injector.pick();
        let start = Instant::now();
        traffic.mark(start);
        let (target, active) = injector.inject(cluster, kind)?;
        eprintln!(
            "chaos: {:>6.1}s {} {target}",
            soak_start.elapsed().as_secs_f64(),
            kind.name()
        );
        // The fault's duration: what is broken stays broken this long.
        std::thread::sleep(injector.hold(&active));
        injector.heal(cluster, active)?;
        wait_healthy(cluster).with_context(|| format!("after {} {target}", kind.name()))?;
        let recovered = match until("traffic to recover", RECOVERY_LIMIT, || {
            Ok(traffic.recovered().is_some())
        }) {
            Ok(()) => traffic.recovered().unwrap_or_else(Instant::now),
            Err(e) => {
                not_recovered.push(format!("{} {target}: {e:#}", kind.name()));
                Instant::now()
            }
        };
        let interruption = traffic.interruption();
        traffic.unmark();
        records.push(FaultRecord {
            kind,
            target,
            start,
            recovered,
            interruption,
            window_end: Instant::now(),
        });
        if base.is_none() {
            leaks::with_threads_seen(
                &mut burn_in_threads,
                &leaks::snapshot(&roles(cluster, forwards)),
            );
        }
        let gap = gap_rng.random_range(GAP_MS.0..=GAP_MS.1);
        std::thread::sleep(Duration::from_millis(gap));
    }
    let soak_secs = soak_start.elapsed().as_secs_f64();

    traffic.pause(Duration::from_secs(60))?;
    let base = base.expect("the loop runs until there is a steady state");
    let end = leaks::settled(&roles(cluster, forwards), &base);
    let (leak_report, leak_count) = leaks::compare(&base, &end);
    Ok(report(
        traffic,
        &records,
        &not_recovered,
        soak_start,
        soak_secs,
        seed,
        steady_gap,
        leak_report,
        leak_count,
    ))
}

/// The steady state leaks are counted against, taken after the burn-in (one fault of every
/// kind: every component has been killed and restarted once, every client has failed over
/// once, so connection pools and the like are at the size they keep). Threads: the most seen
/// during the burn-in and a fault-free stretch of traffic after it (tokio's blocking pool,
/// where the API server's store calls run, grows to the most calls at once, as when every
/// client fails over to one server, and keeps that size while calls keep coming more often
/// than its 1 s idle timeout); the rest: traffic paused.
fn steady_state(
    cluster: &HaCluster,
    traffic: &Traffic,
    forwards: &[Child],
    burn_in_threads: &leaks::Snapshot,
) -> Result<leaks::Snapshot> {
    let mut threads_seen = burn_in_threads.clone();
    let end = Instant::now() + THREADS_WINDOW;
    while Instant::now() < end {
        // Samples spread over the window; they synchronise nothing.
        std::thread::sleep(Duration::from_millis(300));
        leaks::with_threads_seen(
            &mut threads_seen,
            &leaks::snapshot(&roles(cluster, forwards)),
        );
    }
    traffic.pause(Duration::from_secs(60))?;
    let mut base = leaks::baseline(&roles(cluster, forwards));
    leaks::with_threads_seen(&mut base, &threads_seen);
    traffic.resume();
    eprintln!("chaos: steady state taken after the burn-in round");
    Ok(base)
}

/// Builds the JSON report and its verdict.
#[allow(clippy::too_many_arguments)]
fn report(
    traffic: &Traffic,
    records: &[FaultRecord],
    not_recovered: &[String],
    soak_start: Instant,
    soak_secs: f64,
    seed: u64,
    steady_gap: Duration,
    leaks: Value,
    leak_count: u64,
) -> Value {
    let mut by_workload: BTreeMap<Workload, (u64, u64, u64, u64, u64)> = BTreeMap::new();
    let mut corrupted = 0;
    let mut unexplained = Vec::new();
    let mut matched: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut warmup_failures = 0;
    let mut per_worker = serde_json::Map::new();
    for w in &traffic.workers {
        let a = w.account.lock().unwrap_or_else(|p| p.into_inner());
        per_worker.insert(
            w.name.clone(),
            json!({"requests_done": a.done, "requests_failed": a.failures.len()}),
        );
        let e = by_workload.entry(w.workload).or_default();
        e.0 += a.done;
        e.1 += a.ops;
        e.2 += a.failures.len() as u64;
        e.3 += a.bytes;
        e.4 += a.streams_broken;
        corrupted += a.corrupted;
        for f in &a.failures {
            if f.end < soak_start {
                warmup_failures += 1;
                continue;
            }
            match records
                .iter()
                .find(|r| f.end >= r.start && f.start <= r.window_end)
            {
                Some(r) => *matched.entry(r.kind).or_default() += 1,
                None => unexplained.push(format!(
                    "{} at {:.1}s (after {:.1}s): {}",
                    f.worker,
                    f.start.saturating_duration_since(soak_start).as_secs_f64(),
                    f.end.duration_since(f.start).as_secs_f64(),
                    f.error
                )),
            }
        }
    }
    let workloads: serde_json::Map<String, Value> = by_workload
        .iter()
        .map(|(w, (done, ops, failed, bytes, broken))| {
            (
                w.name().to_string(),
                json!({"requests_done": done, "operations": ops, "requests_failed": failed,
                       "bytes_checked": bytes, "streams_broken": broken}),
            )
        })
        .collect();
    let faults: serde_json::Map<String, Value> = FaultKind::ALL
        .iter()
        .filter_map(|k| {
            let mut ms: Vec<f64> = records
                .iter()
                .filter(|r| r.kind == *k)
                .map(|r| r.interruption.as_secs_f64() * 1e3)
                .collect();
            if ms.is_empty() {
                return None;
            }
            ms.sort_by(f64::total_cmp);
            Some((
                k.name().to_string(),
                json!({"injected": ms.len(), "failures_matched": matched.get(k).copied().unwrap_or(0),
                       "recovery_ms_p50": ms[ms.len() / 2].round(),
                       "recovery_ms_max": ms[ms.len() - 1].round()}),
            ))
        })
        .collect();
    let timeline: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({"at_s": (r.start.duration_since(soak_start).as_secs_f64() * 10.0).round() / 10.0,
                   "fault": r.kind.name(), "target": r.target,
                   "recovery_ms": (r.interruption.as_secs_f64() * 1e3).round(),
                   "all_workers_past_it_ms": (r.recovered.saturating_duration_since(r.start).as_secs_f64() * 1e3).round()})
        })
        .collect();
    let done: u64 = by_workload.values().map(|v| v.0).sum();
    let failed: u64 = by_workload.values().map(|v| v.2).sum::<u64>() - warmup_failures;
    let pass = unexplained.is_empty()
        && corrupted == 0
        && not_recovered.is_empty()
        && leak_count == 0
        && !records.is_empty();
    json!({
        "seed": seed,
        "recovery_is": "per fault: the longest any traffic worker went without a completed request while the fault was on (from the last success before it to the first after); steady_gap_ms is that figure with no fault, during warm-up",
        "steady_gap_ms": (steady_gap.as_secs_f64() * 1e3).round(),
        "soak_seconds": soak_secs.round(),
        "requests_done": done,
        "requests_failed": failed,
        "requests_failed_unexplained": unexplained.len(),
        "unexplained_failures": unexplained.iter().take(50).collect::<Vec<_>>(),
        "warmup_failures": warmup_failures,
        "corrupted_bytes": corrupted,
        "workloads": workloads,
        "workers": per_worker,
        "faults": faults,
        "not_recovered": not_recovered,
        "timeline": timeline,
        "leaks": leaks,
        "leak_count": leak_count,
        "pass": pass,
    })
}

fn print_summary(r: &Value) {
    eprintln!(
        "\nchaos: {}s of faults, {} requests done, {} failed ({} unexplained), {} corrupted bytes, {} leaks: {}",
        r["soak_seconds"],
        r["requests_done"],
        r["requests_failed"],
        r["requests_failed_unexplained"],
        r["corrupted_bytes"],
        r["leak_count"],
        if r["pass"] == json!(true) { "PASS" } else { "FAIL" }
    );
    if let Some(faults) = r["faults"].as_object() {
        eprintln!(
            "  {:<22} {:>8} {:>9} {:>16} {:>16}   (steady gap {} ms)",
            "fault",
            "injected",
            "failures",
            "recovery p50 ms",
            "recovery max ms",
            r["steady_gap_ms"]
        );
        for (k, v) in faults {
            let cell = |key: &str| v[key].to_string();
            eprintln!(
                "  {:<22} {:>8} {:>9} {:>16} {:>16}",
                k,
                cell("injected"),
                cell("failures_matched"),
                cell("recovery_ms_p50"),
                cell("recovery_ms_max")
            );
        }
    }
    print_leaks(&r["leaks"]);
}

/// Names every leaked counter and process, so a failed run says what to look at without the
/// JSON report (which CI does not keep).
fn print_leaks(leaks: &Value) {
    if let Some(counters) = leaks["counters"].as_object() {
        for (k, v) in counters.iter().filter(|(_, v)| v["leaked"] != json!(0)) {
            eprintln!(
                "  leaked: {k}: steady {} → end {} (+{})",
                v["steady"], v["end"], v["leaked"]
            );
        }
    }
    for m in leaks["memory"].as_array().into_iter().flatten() {
        if m["leaked"] == json!(true) {
            eprintln!(
                "  leaked: memory of {} pid {}: {} KiB → {} KiB (+{} KiB, limit {} KiB)",
                m["role"],
                m["pid"],
                m["steady_kib"],
                m["end_kib"],
                m["growth_kib"],
                leaks["rss_leak_kib"]
            );
        }
    }
    let threads_leaked = leaks["counters"].as_object().is_some_and(|c| {
        c.iter()
            .any(|(k, v)| k.ends_with("_threads") && v["leaked"] != json!(0))
    });
    if let Some(pools) = leaks["runtime_threads"]
        .as_object()
        .filter(|_| threads_leaked)
    {
        let line: Vec<String> = pools
            .iter()
            .map(|(role, v)| format!("{role} {} → {}", v["steady"], v["end"]))
            .collect();
        eprintln!(
            "  of the threads, the tokio runtimes' (steady → end): {}",
            line.join(", ")
        );
    }
    let new = leaks["processes_new_since_steady_state"].as_array();
    if leaks["counters"]["processes"]["leaked"] != json!(0) {
        for p in new.into_iter().flatten() {
            eprintln!(
                "  process new since the steady state: {}",
                p.as_str().unwrap_or_default()
            );
        }
    }
}

/// Waits until every API server is up behind the balancer, every node is Ready and every
/// soak pod is Ready.
fn wait_healthy(cluster: &HaCluster) -> Result<()> {
    let servers = cluster.apiservers.len();
    cluster.lb.wait_for(HEALTH_LIMIT, |states| {
        states.len() == servers && states.iter().all(|(_, s)| s.starts_with("UP"))
    })?;
    until("every node and soak pod Ready", HEALTH_LIMIT, || {
        let nodes: Value =
            serde_json::from_str(&cluster.kubectl(&["get", "nodes", "-o", "json"])?)?;
        let pods: Value = serde_json::from_str(&cluster.kubectl(&[
            "get",
            "pods",
            "-l",
            "chaos=soak",
            "-o",
            "json",
        ])?)?;
        let ready = |o: &Value| {
            o["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        };
        let all_ready = |list: &Value, want: usize| {
            list["items"].as_array().is_some_and(|items| {
                items.len() == want
                    && items
                        .iter()
                        .all(|o| ready(o) && o["metadata"]["deletionTimestamp"].is_null())
            })
        };
        Ok(all_ready(&nodes, cluster.nodes.len()) && all_ready(&pods, PODS))
    })
}

/// `porthole port-forward -o json svc/SERVICE :PORT` on the client host; returns it with its
/// 127.0.0.1 listener's port.
fn forward(cluster: &HaCluster, service: &str, port: u16) -> Result<(Child, u16)> {
    cluster.forward_json(
        &format!("forward-{service}"),
        &[&format!("svc/{service}"), &format!(":{port}")],
    )
}

/// The soak's workloads: 3 HTTP pods serving the blob, 2 redis, 2 echo, each behind a service.
fn manifest(blob_dir: &Path) -> String {
    let deployment = |name: &str, replicas: usize, port: u16, command: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  \
             selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        \
             app: {name}\n        chaos: soak\n    spec:\n      containers:\n      - name: main\n        \
             image: debian:stable-slim\n        command: {command}\n        ports:\n        - containerPort: {port}\n        \
             readinessProbe:\n          tcpSocket:\n            port: {port}\n          periodSeconds: 1\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {name}\n  \
             ports:\n  - port: {port}\n    targetPort: {port}\n---\n"
        )
    };
    let echo = "import socketserver\\n\
        class Echo(socketserver.BaseRequestHandler):\\n    def handle(self):\\n        while True:\\n            \
        data = self.request.recv(65536)\\n            if not data:\\n                return\\n            \
        self.request.sendall(data)\\n\
        socketserver.ThreadingTCPServer.allow_reuse_address = True\\n\
        socketserver.ThreadingTCPServer.daemon_threads = True\\n\
        socketserver.ThreadingTCPServer(('127.0.0.1', 7000), Echo).serve_forever()\\n";
    let mut m = deployment(
        "chaos-blob",
        3,
        8000,
        &format!(
            "[python3, -m, http.server, \"8000\", --bind, 127.0.0.1, --directory, \"{}\"]",
            blob_dir.display()
        ),
    );
    m += &deployment(
        "chaos-redis",
        2,
        6379,
        "[redis-server, --port, \"6379\", --bind, 127.0.0.1, --save, \"\", --appendonly, \"no\", --protected-mode, \"no\"]",
    );
    m += &deployment(
        "chaos-echo",
        2,
        7000,
        &format!("[python3, -u, -c, \"{echo}\"]"),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse_duration("180s"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn the_manifest_is_valid_yaml_with_seven_pods() {
        let m = manifest(Path::new("/tmp/blob"));
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&m)
            .map(|d| serde::Deserialize::deserialize(d).expect("each document parses"))
            .filter(|d: &serde_yaml::Value| !d.is_null())
            .collect();
        assert_eq!(docs.len(), 6);
        let replicas: u64 = docs
            .iter()
            .filter_map(|d| d["spec"]["replicas"].as_u64())
            .sum();
        assert_eq!(replicas as usize, PODS);
    }
}
