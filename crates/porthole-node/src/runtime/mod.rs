//! The pod runtime: runs `v1.Pod` specs as host processes, each pod in its own network
//! namespace, and tracks their status the way the kubelet reports it.
//!
//! - One tokio task per pod creates the namespace (porthole-netns), starts one task per
//!   container and, once the pod is stopped, removes the namespace and the pod's directory.
//! - A container task runs `command` + `args` (with `env`, `workingDir`) from the host
//!   filesystem in its own process group inside the pod's namespace, pipes stdout/stderr into
//!   CRI-format log files, runs the readiness probe and restarts the process according to
//!   `restartPolicy` with the kubelet's back-off (10 s doubling to 5 min, reset after 10 min
//!   of running). `image` is recorded in the status, never pulled.
//! - Stopping sends SIGTERM to each container's process group, SIGKILL after the grace
//!   period, and reaps every child (tokio's `Child::wait`).
//! - `<root>/pods/<uid>/state.json` records the process groups, so that a crashed agent's
//!   processes are killed at the next start (`recovery`), along with leftover namespaces.

mod env;
mod lifecycle;
pub(crate) mod logs;
mod probe;
pub(crate) mod recovery;
mod status;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use porthole_netns::NetNs;
use porthole_relay::error::chain;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use lifecycle::run_pod;
pub use logs::LogOptions;
use logs::LogRun;
use recovery::{Group, PodStateFile};
use status::{ContainerRecord, PodFacts, RunState};

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The pod runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RtInner>,
}

struct RtInner {
    isolation: porthole_netns::Isolation,
    pods_dir: PathBuf,
    netns_dir: PathBuf,
    host_ip: String,
    node_name: String,
    pods: Mutex<HashMap<String, Arc<PodHandle>>>,
    changed: watch::Sender<u64>,
    tasks: TaskTracker,
}

impl RtInner {
    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

struct PodShared {
    facts: PodFacts,
    /// Init containers, run one after the other before `containers`.
    init: Vec<ContainerRecord>,
    containers: Vec<ContainerRecord>,
    /// Log runs per container name, one per restart.
    logs: HashMap<String, Vec<LogRun>>,
    groups: Vec<Group>,
}

/// One pod known to the runtime.
pub struct PodHandle {
    uid: String,
    namespace: String,
    name: String,
    pod: Pod,
    dir: PathBuf,
    netns: Mutex<Option<NetNs>>,
    shared: Mutex<PodShared>,
    stop: CancellationToken,
    grace: Mutex<Duration>,
    pod_gone: CancellationToken,
    finished: CancellationToken,
    rt: Arc<RtInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PodHandle {
    /// The pod's UID (also the namespace name and the `pod` in port-forward error texts).
    pub fn uid(&self) -> &str {
        &self.uid
    }
    /// The pod's Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The pod object this runtime was given.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }
    /// The pod's network namespace, once created and until removed.
    pub fn netns(&self) -> Option<NetNs> {
        lock(&self.netns).clone()
    }
    /// The network namespace a forward (either way) may use now, or why not, worded to follow
    /// "pod NAMESPACE/NAME ": a terminating pod takes no new forwards.
    pub fn forwardable_netns(&self) -> Result<NetNs, &'static str> {
        if self.is_stopping() {
            return Err("is terminating");
        }
        self.netns()
            .ok_or("is not running yet (its network namespace does not exist)")
    }
    /// Cancelled when the pod is gone (stopped, namespace removed): port-forward streams end.
    pub fn pod_gone(&self) -> CancellationToken {
        self.pod_gone.clone()
    }
    /// Whether the pod is being stopped (or has been).
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }
    /// Whether the pod was stopped and cleaned up completely.
    pub fn is_finished(&self) -> bool {
        self.finished.is_cancelled()
    }
    /// Resolves once the pod was stopped and cleaned up completely.
    pub async fn finished(&self) {
        self.finished.cancelled().await
    }
    /// The current status, as the kubelet would report it.
    pub fn status(&self) -> PodStatus {
        let mut shared = lock(&self.shared);
        let PodShared {
            facts,
            init,
            containers,
            ..
        } = &mut *shared;
        status::pod_status(facts, init, containers)
    }
    /// Log of `container`'s current run, or the previous one.
    pub(crate) fn log_run(&self, container: &str, previous: bool) -> Option<LogRun> {
        let shared = lock(&self.shared);
        let runs = shared.logs.get(container)?;
        if previous {
            runs.len().checked_sub(2).and_then(|i| runs.get(i)).cloned()
        } else {
            runs.last().cloned()
        }
    }
    /// Whether the pod spec has a container with this name.
    pub fn has_container(&self, name: &str) -> bool {
        containers_of(&self.pod)
            .iter()
            .chain(init_containers_of(&self.pod))
            .any(|c| c.name == name)
    }

    fn update(&self, f: impl FnOnce(&mut PodShared)) {
        f(&mut lock(&self.shared));
        self.rt.notify();
    }

    fn write_state(&self) {
        let state = {
            let shared = lock(&self.shared);
            PodStateFile {
                boot_id: recovery::boot_id(),
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                netns: self
                    .netns()
                    .map(|n| n.path().to_string_lossy().into_owned()),
                groups: shared.groups.clone(),
            }
        };
        if let Err(e) = recovery::write_state(&self.dir.join("state.json"), &state) {
            tracing::error!(error = %e, pod = %self.key(), "writing pod state file; a crash now could leak processes");
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn containers_of(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map_or(&[], |s| s.containers.as_slice())
}

fn init_containers_of(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
}

fn new_record(c: &Container, reason: &str) -> ContainerRecord {
    ContainerRecord {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        state: RunState::Waiting {
            reason: reason.into(),
            message: None,
        },
        last_terminated: None,
        ready: false,
        restart_count: 0,
        container_id: None,
        done: false,
    }
}

impl Runtime {
    /// Opens the runtime at `root` (created if missing), first cleaning up whatever a previous
    /// run left there: processes recorded in state files, namespace mounts, pod directories.
    /// Pods get their network namespaces the way `isolation` says.
    pub fn new(
        root: &Path,
        node_name: &str,
        host_ip: &str,
        isolation: porthole_netns::Isolation,
    ) -> anyhow::Result<Runtime> {
        let pods_dir = root.join("pods");
        let netns_dir = root.join("netns");
        for dir in [&pods_dir, &netns_dir] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create node state directory {}", dir.display()))?;
        }
        recovery::cleanup_previous_run(&pods_dir, &netns_dir)?;
        Ok(Runtime {
            inner: Arc::new(RtInner {
                isolation,
                pods_dir,
                netns_dir,
                host_ip: host_ip.to_owned(),
                node_name: node_name.to_owned(),
                pods: Mutex::new(HashMap::new()),
                changed: watch::channel(0).0,
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// A receiver that changes whenever any pod's status may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Starts `pod` unless a pod with its UID is already known (pod specs are immutable, so an
    /// update of a known pod changes nothing here). A pod without `metadata.uid` gets one.
    pub fn apply(&self, pod: &Pod) -> anyhow::Result<Arc<PodHandle>> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod
            .metadata
            .name
            .clone()
            .context("pod has no metadata.name")?;
        let uid = pod
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
            anyhow::bail!("pod {namespace}/{name} has an unusable uid {uid:?}");
        }
        let mut pods = lock(&self.inner.pods);
        if let Some(existing) = pods.get(&uid) {
            return Ok(existing.clone());
        }
        let spec = pod
            .spec
            .as_ref()
            .with_context(|| format!("pod {namespace}/{name} has no spec"))?;
        if spec.containers.is_empty() {
            anyhow::bail!("pod {namespace}/{name} has no containers");
        }
        let mut pod = pod.clone();
        pod.metadata.uid = Some(uid.clone());
        let has_init = !init_containers_of(&pod).is_empty();
        let app_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let containers = spec
            .containers
            .iter()
            .map(|c| new_record(c, app_reason))
            .collect();
        let init = init_containers_of(&pod)
            .iter()
            .map(|c| new_record(c, "PodInitializing"))
            .collect();
        let handle = Arc::new(PodHandle {
            dir: self.inner.pods_dir.join(&uid),
            uid: uid.clone(),
            namespace,
            name,
            netns: Mutex::new(None),
            shared: Mutex::new(PodShared {
                facts: PodFacts {
                    start_time: Some(Timestamp::now()),
                    restart_policy: spec
                        .restart_policy
                        .clone()
                        .unwrap_or_else(|| "Always".into()),
                    host_ip: self.inner.host_ip.clone(),
                    ..Default::default()
                },
                init,
                containers,
                logs: HashMap::new(),
                groups: Vec::new(),
            }),
            stop: CancellationToken::new(),
            grace: Mutex::new(
                spec.termination_grace_period_seconds
                    .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64)),
            ),
            pod_gone: CancellationToken::new(),
            finished: CancellationToken::new(),
            rt: self.inner.clone(),
            pod,
        });
        pods.insert(uid, handle.clone());
        drop(pods);
        tracing::info!(pod = %handle.key(), uid = %handle.uid, "starting pod");
        self.inner.tasks.spawn(run_pod(handle.clone()));
        self.inner.notify();
        Ok(handle)
    }

    /// The pod named `namespace/name`: the newest one that is not stopping, else any.
    pub fn lookup(&self, namespace: &str, name: &str) -> Option<Arc<PodHandle>> {
        let pods = lock(&self.inner.pods);
        let mut found: Option<&Arc<PodHandle>> = None;
        for p in pods.values() {
            if p.namespace == namespace && p.name == name {
                match found {
                    Some(f) if !f.is_stopping() => {}
                    _ => found = Some(p),
                }
            }
        }
        found.cloned()
    }

    /// The pod with this UID.
    pub fn get(&self, uid: &str) -> Option<Arc<PodHandle>> {
        lock(&self.inner.pods).get(uid).cloned()
    }

    /// Every pod currently known (running or stopping).
    pub fn pods(&self) -> Vec<Arc<PodHandle>> {
        lock(&self.inner.pods).values().cloned().collect()
    }

    /// Stops the pod with `uid`: SIGTERM to every container's process group, SIGKILL after
    /// `grace` (default: the pod's `terminationGracePeriodSeconds`), then removes its
    /// namespace and files. Returns once all that is done; unknown UIDs return at once.
    pub async fn stop(&self, uid: &str, grace: Option<Duration>) {
        let Some(handle) = self.get(uid) else {
            return;
        };
        if let Some(g) = grace {
            let mut cur = lock(&handle.grace);
            // A second, shorter deletion request shortens the grace period, never lengthens it.
            if !handle.stop.is_cancelled() || g < *cur {
                *cur = g;
            }
        }
        handle.stop.cancel();
        handle.finished().await;
        lock(&self.inner.pods).remove(uid);
        self.inner.notify();
    }

    /// Stops every pod (concurrently) and waits for all runtime tasks to end.
    pub async fn shutdown(&self) {
        let pods = self.pods();
        let stops = pods.iter().map(|p| self.stop(&p.uid, None));
        futures_util::future::join_all(stops).await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Emergency stop that does not wait (for panic and drop paths, where nothing async can
    /// run any more): marks every pod stopping with no grace, so nothing restarts, SIGKILLs
    /// every container process group and removes every namespace. Prefer [`Runtime::shutdown`].
    pub fn abort(&self) {
        for pod in self.pods() {
            *lock(&pod.grace) = Duration::ZERO;
            pod.stop.cancel();
            pod.pod_gone.cancel();
            let groups = lock(&pod.shared).groups.clone();
            for g in groups {
                let _ = killpg(Pid::from_raw(g.pgid), Signal::SIGKILL);
            }
            if let Some(ns) = lock(&pod.netns).take() {
                if let Err(e) = ns.remove() {
                    tracing::error!(error = %chain(&e), "removing a namespace during abort");
                }
            }
        }
    }

    /// Where pod network namespaces are mounted (for cleanup checks).
    pub fn netns_dir(&self) -> &Path {
        &self.inner.netns_dir
    }

    /// Where per-pod state and logs live.
    pub fn pods_dir(&self) -> &Path {
        &self.inner.pods_dir
    }
}
