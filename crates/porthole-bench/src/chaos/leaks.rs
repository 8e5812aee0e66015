//! What the soak counts to find leaks: descriptors, threads and memory of porthole's processes
//! (summed per role, since forwards move between API servers and nodes as faults come and go),
//! and the soak's own processes (on its hosts, in its pods, anything left behind), network
//! namespaces and mounts (not the machine's: other tests may run beside it).
//!
//! The steady state is measured after a burn-in round of faults, with traffic paused (the
//! highest of a few samples; for threads, the most seen under fault-free traffic); the end,
//! with traffic paused after the last fault (the lowest of samples taken until it is back at
//! the steady state, bounded). A leak is what stays above. How many of the threads are the async
//! runtimes' is reported beside (see [`ProcStat::runtime_threads`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Samples of the steady state.
const BASELINE_SAMPLES: usize = 5;
/// Pause between samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(300);
/// How long the end may take to come back down: idle blocking-pool threads end after 1 s; a
/// connection left half-open by a partition ends when TCP keepalive gives up on it, 30 s
/// after it went silent (porthole_relay::keepalive).
const SETTLE: Duration = Duration::from_secs(45);
/// Memory growth of one process beyond which it counts as leaked: allocators keep what they
/// once used, so some growth after a burst is not a leak; a leak grows with the traffic.
pub const RSS_LEAK_KIB: u64 = 32 * 1024;

/// One process's figures.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    /// Its pid (a restarted process has a new one).
    pub pid: u32,
    /// Open descriptors.
    pub fds: u64,
    /// Threads, all of them: these must come back to the steady state.
    pub threads: u64,
    /// Of those, the tokio runtimes' (workers and blocking pool), to tell in a report whether
    /// extra threads are porthole's own or a pool's. Store calls run on the blocking pool;
    /// porthole's runtimes end an idle pool thread after 1 s (tokio's default, 10 s, let the
    /// periodic calls of an idle API server, lease renewals and heartbeats, keep a few alive
    /// in turn: 16 threads at the steady state, 19 at the end, all idle).
    pub runtime_threads: u64,
    /// Resident memory.
    pub rss_kib: u64,
}

/// Everything counted at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Figures per process, by role (`apiserver`, `node`, `forward`).
    pub roles: BTreeMap<String, Vec<ProcStat>>,
    /// Counters that must come back to the steady state: per-role descriptor and thread sums,
    /// processes, namespaces, mounts.
    pub counters: BTreeMap<String, u64>,
    /// The soak's processes (on its hosts, in its pods): pid and command line (to name what
    /// was left behind).
    pub outside: BTreeMap<u32, String>,
    /// Runtime threads per role (part of the thread counts; see [`ProcStat::runtime_threads`]).
    pub runtime_threads: BTreeMap<String, u64>,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let threads = field("Threads:")?;
    Some(ProcStat {
        pid,
        fds,
        threads,
        runtime_threads: runtime_threads(pid).min(threads),
        rss_kib: field("VmRSS:")?,
    })
}

/// Threads of a tokio runtime's pools, by the names porthole's runtimes give them (the main
/// runtime keeps tokio's default, the etcd client's is `porthole-etcd`).
fn runtime_threads(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| is_runtime_thread(c.trim_end()))
                .unwrap_or(false)
        })
        .count() as u64
}

fn is_runtime_thread(comm: &str) -> bool {
    // The kernel keeps 15 bytes of a thread's name: "tokio-runtime-worker" is cut.
    comm.starts_with("tokio-runtime-w") || comm.starts_with("porthole-etcd")
}

fn net_ns_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.display().to_string())
}

/// What is watched: porthole's processes by role, and what names the soak's own resources.
pub struct Scope {
    /// Each role's pids.
    pub roles: BTreeMap<String, Vec<u32>>,
    /// The soak's work dir (pods' namespaces are mounted under it; its processes name it).
    pub work: String,
    /// `ID-` of the testbed (its hosts' namespaces are /run/netns/ID-HOST).
    pub bed: String,
}

/// Counts now.
pub fn snapshot(scope: &Scope) -> Snapshot {
    let mut snap = Snapshot::default();
    for (role, pids) in &scope.roles {
        let stats: Vec<ProcStat> = pids.iter().filter_map(|p| proc_stat(*p)).collect();
        snap.counters.insert(
            format!("{role}_fds"),
            stats.iter().map(|s| s.fds).sum::<u64>(),
        );
        snap.counters.insert(
            format!("{role}_threads"),
            stats.iter().map(|s| s.threads).sum::<u64>(),
        );
        snap.runtime_threads.insert(
            role.clone(),
            stats.iter().map(|s| s.runtime_threads).sum::<u64>(),
        );
        snap.roles.insert(role.clone(), stats);
    }
    // Only what is the soak's counts (other tests may run on the machine): namespaces mounted
    // under its work dir (pods') or by its testbed (/run/netns/ID-HOST), processes in them or
    // naming its work dir or with a soak pod's HOSTNAME (a pod left behind whose namespace was
    // unmounted still shows), the namespaces those processes are in, mounts naming either.
    let ours = |text: &str| text.contains(&scope.work) || text.contains(&scope.bed);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let our_mounts: Vec<&str> = mountinfo.lines().filter(|l| ours(l)).collect();
    let mut namespaces: BTreeSet<String> = our_mounts
        .iter()
        // A namespace kept by a bind mount: its root field is net:[N].
        .filter_map(|l| l.split(' ').nth(3).filter(|r| r.starts_with("net:[")))
        .map(str::to_string)
        .collect();
    let mounted = namespaces.clone();
    let mut processes = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        let Some(ns) = net_ns_of(&name) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        let soak_pod = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|e| {
                e.split(|b| *b == 0)
                    .any(|kv| kv.starts_with(b"HOSTNAME=chaos-"))
            })
            .unwrap_or(false);
        if mounted.contains(&ns) || ours(&cmdline) || soak_pod {
            processes += 1;
            namespaces.insert(ns);
            snap.outside.insert(pid, cmdline);
        }
    }
    snap.counters.insert("processes".into(), processes);
    snap.counters
        .insert("network_namespaces".into(), namespaces.len() as u64);
    snap.counters
        .insert("mounts".into(), our_mounts.len() as u64);
    snap
}

/// The steady state: the highest of a few samples of each counter.
pub fn baseline(roles: &Scope) -> Snapshot {
    let mut high = snapshot(roles);
    for _ in 1..BASELINE_SAMPLES {
        // Samples spread over a short window; they synchronise nothing.
        std::thread::sleep(SAMPLE_EVERY);
        let s = snapshot(roles);
        for (k, v) in s.counters {
            let e = high.counters.entry(k).or_default();
            *e = (*e).max(v);
        }
        high.roles = s.roles;
        high.outside = s.outside;
        high.runtime_threads = s.runtime_threads;
    }
    high
}

/// Raises `base`'s thread counts to what `during` shows: threads come and go with load (the
/// API server's store calls run on tokio's blocking pool, whose threads live 1 s idle), so
/// their steady state is the most seen under the soak's traffic without faults, not a count
/// taken while idle. Descriptors, processes, namespaces and mounts keep the idle count.
pub fn with_threads_seen(base: &mut Snapshot, during: &Snapshot) {
    for (k, v) in &during.counters {
        if k.ends_with("_threads") {
            let e = base.counters.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// The end: the lowest of samples taken until every counter is back at `base` (or
/// [`SETTLE`] has passed).
pub fn settled(roles: &Scope, base: &Snapshot) -> Snapshot {
    let deadline = Instant::now() + SETTLE;
    let mut low = snapshot(roles);
    loop {
        let back = low
            .counters
            .iter()
            .all(|(k, v)| *v <= base.counters.get(k).copied().unwrap_or(0));
        if back || Instant::now() >= deadline {
            return low;
        }
        std::thread::sleep(SAMPLE_EVERY);
        let s = snapshot(roles);
        for (k, v) in s.counters {
            let e = low.counters.entry(k).or_insert(v);
            *e = (*e).min(v);
        }
        low.roles = s.roles;
        low.outside = s.outside;
        low.runtime_threads = s.runtime_threads;
    }
}

/// Base, end and leak of every counter, memory growth of every process that lived through
/// the soak; and how many leaks there are.
pub fn compare(base: &Snapshot, end: &Snapshot) -> (Value, u64) {
    let mut leaks = 0;
    let mut counters = serde_json::Map::new();
    for (k, b) in &base.counters {
        let e = end.counters.get(k).copied().unwrap_or(0);
        let leaked = e.saturating_sub(*b);
        leaks += u64::from(leaked > 0);
        counters.insert(k.clone(), json!({"steady": b, "end": e, "leaked": leaked}));
    }
    let mut memory = Vec::new();
    for (role, stats) in &base.roles {
        for b in stats {
            let Some(e) = end
                .roles
                .get(role)
                .and_then(|s| s.iter().find(|e| e.pid == b.pid))
            else {
                continue;
            };
            let growth = e.rss_kib.saturating_sub(b.rss_kib);
            let leaked = growth > RSS_LEAK_KIB;
            leaks += u64::from(leaked);
            memory.push(json!({"role": role, "pid": b.pid, "steady_kib": b.rss_kib,
                "end_kib": e.rss_kib, "growth_kib": growth, "leaked": leaked}));
        }
    }
    // Processes that were not there in the steady state (restarted components are among
    // them, with new pids); named when there are more processes than then.
    let new_processes: Vec<String> = end
        .outside
        .iter()
        .filter(|(pid, _)| !base.outside.contains_key(pid))
        .map(|(pid, cmd)| format!("{pid}: {}", cmd.chars().take(160).collect::<String>()))
        .collect();
    let gone = base
        .outside
        .keys()
        .filter(|pid| !end.outside.contains_key(pid))
        .count();
    let runtime_threads: serde_json::Map<String, Value> = base
        .runtime_threads
        .iter()
        .map(|(role, b)| {
            let e = end.runtime_threads.get(role).copied().unwrap_or(0);
            (role.clone(), json!({"steady": b, "end": e}))
        })
        .collect();
    (
        json!({"counters": counters, "memory": memory, "rss_leak_kib": RSS_LEAK_KIB,
               "runtime_threads": runtime_threads,
               "processes_new_since_steady_state": new_processes,
               "processes_gone_since_steady_state": gone}),
        leaks,
    )
}
