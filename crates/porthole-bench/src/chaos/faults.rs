//! The soak's faults: what each kind breaks on the cluster, for how long, and how it is undone.
//!
//! One fault is on at a time. Kills are SIGKILL (no goodbye); what a person or a supervisor
//! would restart (an API server, a node agent, an etcd member) is restarted after a few
//! seconds, a pod's process is restarted by its node, partitions and loss end by themselves.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::Signal;
use porthole_test::ha::{HaCluster, JoinLine};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

/// How long a killed API server, node agent or etcd member stays down before it is restarted.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// Loss during a loss fault.
const LOSS_PERCENT: f64 = 5.0;
/// How long a loss fault lasts.
const LOSS_FOR: Duration = Duration::from_secs(5);
/// Shortest and longest partition (below the client's 15 s keepalive timeout: a session that
/// only stalls should come through).
const PARTITION_SECS: (u64, u64) = (3, 8);

/// What a fault breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of an API server (restarted after [`DOWN_FOR`]).
    KillApiserver,
    /// kill -9 of a node agent (restarted after [`DOWN_FOR`]; its pods are left behind).
    KillNode,
    /// kill -9 of a pod's process (its node restarts it).
    KillPod,
    /// kill -9 of an etcd member (restarted after [`DOWN_FOR`]).
    RestartEtcd,
    /// Two hosts cannot reach each other for a few seconds.
    Partition,
    /// [`LOSS_PERCENT`] of the packets arriving at a host are lost for [`LOSS_FOR`].
    Loss,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::KillApiserver,
        FaultKind::KillNode,
        FaultKind::KillPod,
        FaultKind::RestartEtcd,
        FaultKind::Partition,
        FaultKind::Loss,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillApiserver => "kill-apiserver",
            FaultKind::KillNode => "kill-node-agent",
            FaultKind::KillPod => "kill-pod-process",
            FaultKind::RestartEtcd => "restart-etcd-member",
            FaultKind::Partition => "partition",
            FaultKind::Loss => "loss",
        }
    }
}

/// A fault that is on, and what undoing it takes.
#[derive(Debug)]
pub enum Active {
    /// API server index to restart.
    Apiserver(usize),
    /// Node index to restart.
    Node(usize),
    /// Nothing to undo: the node restarts the process.
    Pod,
    /// etcd member index to restart.
    Etcd(usize),
    /// Hosts to heal.
    Partition(String, String),
    /// Host whose loss to end.
    Loss(String),
}

/// Injects faults on a cluster.
pub struct Injector {
    join: JoinLine,
    rng: StdRng,
    /// Kills per pod name, so pod kills spread over the pods (a pod killed again and again
    /// would wait out the kubelet's growing back-off).
    pod_kills: BTreeMap<String, u32>,
    /// What is left of the current round of kinds.
    queue: Vec<FaultKind>,
}

/// The commands of the soak's pods (what tells a pod's process from the node's helpers).
const POD_COMMANDS: [&str; 3] = ["http.server", "redis-server", "socketserver"];

impl Injector {
    /// An injector that restarts nodes with `join`, choosing with `rng`.
    pub fn new(join: JoinLine, rng: StdRng) -> Injector {
        Injector {
            join,
            rng,
            pod_kills: BTreeMap::new(),
            queue: Vec::new(),
        }
    }

    /// The next kind: rounds of every kind once, each round in a random order (so a short
    /// run sees every kind, and the first round can be the burn-in).
    pub fn pick(&mut self) -> FaultKind {
        if self.queue.is_empty() {
            self.queue = FaultKind::ALL.to_vec();
            self.queue.shuffle(&mut self.rng);
        }
        self.queue.pop().expect("refilled above")
    }

    /// Breaks something of `kind`; returns what it broke (for the report) and how to undo it.
    pub fn inject(&mut self, cluster: &mut HaCluster, kind: FaultKind) -> Result<(String, Active)> {
        match kind {
            FaultKind::KillApiserver => {
                let i = self.rng.random_range(0..cluster.apiservers.len());
                cluster.kill_apiserver(i)?;
                Ok((cluster.apiservers[i].name.clone(), Active::Apiserver(i)))
            }
            FaultKind::KillNode => {
                let i = self.rng.random_range(0..cluster.nodes.len());
                let mut node = cluster.nodes[i]
                    .take()
                    .ok_or_else(|| anyhow!("node{} is not running", i + 1))?;
                node.signal(Signal::SIGKILL)?;
                node.wait_timeout(Duration::from_secs(20))?;
                Ok((format!("node{}", i + 1), Active::Node(i)))
            }
            FaultKind::KillPod => {
                let (name, pid) = self.pod_process(cluster)?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL)
                    .with_context(|| format!("kill pod {name}'s process {pid}"))?;
                *self.pod_kills.entry(name.clone()).or_default() += 1;
                Ok((format!("pod {name} (pid {pid})"), Active::Pod))
            }
            FaultKind::RestartEtcd => {
                let i = self.rng.random_range(0..cluster.etcd.len());
                cluster.etcd[i].kill();
                Ok((cluster.etcd[i].name().to_string(), Active::Etcd(i)))
            }
            FaultKind::Partition => {
                let mut pairs = Vec::new();
                let apis: Vec<String> = cluster.apiservers.iter().map(|a| a.name.clone()).collect();
                for api in &apis {
                    for n in 1..=cluster.nodes.len() {
                        pairs.push((api.clone(), format!("node{n}")));
                    }
                    pairs.push(("lb".to_string(), api.clone()));
                    for e in &cluster.etcd {
                        pairs.push((api.clone(), e.name().to_string()));
                    }
                }
                let (a, b) = pairs
                    .choose(&mut self.rng)
                    .cloned()
                    .expect("a cluster has API servers");
                cluster.bed.partition(&a, &b)?;
                Ok((format!("{a} | {b}"), Active::Partition(a, b)))
            }
            FaultKind::Loss => {
                let mut hosts: Vec<String> =
                    cluster.apiservers.iter().map(|a| a.name.clone()).collect();
                hosts.extend((1..=cluster.nodes.len()).map(|n| format!("node{n}")));
                hosts.push("lb".into());
                let host = hosts
                    .choose(&mut self.rng)
                    .cloned()
                    .expect("hosts is not empty");
                cluster.bed.host(&host).set_loss(LOSS_PERCENT)?;
                Ok((format!("{LOSS_PERCENT}% into {host}"), Active::Loss(host)))
            }
        }
    }

    /// How long the fault stays on before [`Injector::heal`].
    pub fn hold(&mut self, active: &Active) -> Duration {
        match active {
            Active::Apiserver(_) | Active::Node(_) | Active::Etcd(_) => DOWN_FOR,
            Active::Pod => Duration::ZERO,
            Active::Partition(..) => {
                Duration::from_secs(self.rng.random_range(PARTITION_SECS.0..=PARTITION_SECS.1))
            }
            Active::Loss(_) => LOSS_FOR,
        }
    }

    /// Undoes the fault (restarts what was killed, heals, ends loss).
    pub fn heal(&mut self, cluster: &mut HaCluster, active: Active) -> Result<()> {
        match active {
            Active::Apiserver(i) => cluster.start_apiserver(i),
            Active::Node(i) => {
                let child = cluster.start_node(i + 1, &self.join)?;
                cluster.nodes[i] = Some(child);
                Ok(())
            }
            Active::Pod => Ok(()),
            Active::Etcd(i) => cluster.etcd[i].start(),
            Active::Partition(a, b) => cluster.bed.heal(&a, &b),
            Active::Loss(host) => cluster.bed.host(&host).set_loss(0.0),
        }
    }

    /// The pod process to kill: one of the least-killed pods', at random among those.
    fn pod_process(&mut self, cluster: &HaCluster) -> Result<(String, u32)> {
        let mut candidates: Vec<(u32, String, u32)> = Vec::new();
        for node in cluster.nodes.iter().flatten() {
            for p in porthole_test::descendants(node.pid()) {
                let Some(pod) = pod_of(p.pid) else { continue };
                let kills = self.pod_kills.get(&pod).copied().unwrap_or(0);
                candidates.push((kills, pod, p.pid));
            }
        }
        let fewest = candidates
            .iter()
            .map(|c| c.0)
            .min()
            .ok_or_else(|| anyhow!("no pod process runs under any node agent"))?;
        candidates.retain(|c| c.0 == fewest);
        let (_, pod, pid) = candidates
            .choose(&mut self.rng)
            .cloned()
            .expect("candidates is not empty");
        Ok((pod, pid))
    }
}

/// The pod name of a soak pod's process (`HOSTNAME` in its environment), if `pid` is one.
fn pod_of(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !POD_COMMANDS.iter().any(|c| cmdline.contains(c)) {
        return None;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"HOSTNAME="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
