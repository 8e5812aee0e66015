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
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use logs::LogOptions;
use logs::{LogRun, LogWriter};
use recovery::{Group, PodStateFile};
use status::{ContainerRecord, PodFacts, RunState, Terminated};

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long gets its back-off reset.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// PATH given to containers, which do not inherit the agent's environment.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// The life of one pod.
async fn run_pod(h: Arc<PodHandle>) {
    let ns_path = h.rt.netns_dir.join(&h.uid);
    if let Err(e) = std::fs::create_dir_all(&h.dir) {
        tracing::error!(error = %e, dir = %h.dir.display(), "creating pod directory");
    }
    // Record the pod before the namespace exists, so a crash in between is still cleaned up
    // (the namespace file itself is found by scanning the netns directory).
    h.write_state();
    let uid = h.uid.clone();
    let isolation = h.rt.isolation;
    let created =
        tokio::task::spawn_blocking(move || NetNs::create(&ns_path, &uid, isolation)).await;
    let ns = match created {
        Ok(Ok(ns)) => ns,
        Ok(Err(e)) => {
            fail_sandbox(
                &h,
                format!("failed to create pod network namespace: {}", chain(&e)),
            )
            .await;
            return;
        }
        Err(e) => {
            fail_sandbox(&h, format!("failed to create pod network namespace: {e}")).await;
            return;
        }
    };
    *lock(&h.netns) = Some(ns.clone());
    h.update(|s| s.facts.sandbox_error = None);
    h.write_state();

    // Init containers, one at a time, each to success; a failure that will not be retried
    // (restartPolicy Never) fails the pod and no app container starts.
    let mut initialized = true;
    for c in init_containers_of(&h.pod).iter().cloned() {
        if !run_container(h.clone(), c, ns.clone(), true).await {
            initialized = false;
            break;
        }
    }
    let mut containers = tokio::task::JoinSet::new();
    if initialized {
        for c in containers_of(&h.pod).iter().cloned() {
            containers.spawn(run_container(h.clone(), c, ns.clone(), false));
        }
    }
    while containers.join_next().await.is_some() {}
    // Containers that will never restart leave the pod (and its namespace) in place until it
    // is deleted, like a Succeeded/Failed pod in Kubernetes.
    h.stop.cancelled().await;

    h.pod_gone.cancel();
    *lock(&h.netns) = None;
    if let Err(e) = ns.remove() {
        tracing::error!(error = %chain(&e), pod = %h.key(), "removing pod network namespace");
    }
    drop(ns);
    if let Err(e) = std::fs::remove_dir_all(&h.dir) {
        tracing::warn!(error = %e, dir = %h.dir.display(), "removing pod directory");
    }
    tracing::info!(pod = %h.key(), uid = %h.uid, "pod stopped and cleaned up");
    h.finished.cancel();
    h.rt.notify();
}

async fn fail_sandbox(h: &Arc<PodHandle>, message: String) {
    tracing::error!(pod = %h.key(), error = %message, "pod sandbox");
    h.update(|s| {
        s.facts.sandbox_error = Some(message.clone());
        for c in &mut s.containers {
            c.state = RunState::Waiting {
                reason: "CreatePodSandboxError".into(),
                message: Some(message.clone()),
            };
        }
    });
    h.stop.cancelled().await;
    h.pod_gone.cancel();
    let _ = std::fs::remove_dir_all(&h.dir);
    h.finished.cancel();
    h.rt.notify();
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Expands `$(VAR)` references like Kubernetes: defined variables are substituted, `$$(X)`
/// escapes to a literal `$(X)`, undefined references stay as written.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: a minimal base (containers do not inherit the agent's
/// environment, which could hold credentials) plus the spec's `env`, in order.
fn container_env(h: &PodHandle, c: &Container) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), h.name.clone()),
    ];
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            expand(v, &env)
        } else if let Some(field) = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
            match field.field_path.as_str() {
                "metadata.name" => h.name.clone(),
                "metadata.namespace" => h.namespace.clone(),
                "metadata.uid" => h.uid.clone(),
                "spec.nodeName" => h.rt.node_name.clone(),
                "spec.serviceAccountName" => h
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                "status.hostIP" | "status.hostIPs" => h.rt.host_ip.clone(),
                other => {
                    tracing::warn!(pod = %h.key(), container = %c.name, field = other, "unsupported env fieldRef; variable left empty");
                    String::new()
                }
            }
        } else if var.value_from.is_some() {
            tracing::warn!(pod = %h.key(), container = %c.name, var = %var.name, "only value and fieldRef env sources are supported; variable left empty");
            String::new()
        } else {
            String::new()
        };
        env.retain(|(k, _)| k != &var.name);
        env.push((var.name.clone(), value));
    }
    env
}

fn set_container(h: &PodHandle, name: &str, f: impl FnOnce(&mut ContainerRecord)) {
    h.update(|s| {
        if let Some(c) = s
            .containers
            .iter_mut()
            .chain(s.init.iter_mut())
            .find(|c| c.name == name)
        {
            f(c);
        }
    });
}

/// Exit code and signal of a finished process, in Kubernetes' convention (128 + signal).
fn exit_of(status: &std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (128, None),
    }
}

/// The restart loop of one container. Returns whether it ended with success (what an init
/// container must do before the next one starts).
async fn run_container(h: Arc<PodHandle>, c: Container, ns: NetNs, init: bool) -> bool {
    let env = container_env(&h, &c);
    let argv: Vec<String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| expand(a, &env))
        .collect();
    if c.command.as_ref().is_none_or(|cmd| cmd.is_empty()) {
        let message = format!(
            "container {:?} has no command: porthole runs programs from the host filesystem and does not pull images (image {:?} is only recorded), so set `command`",
            c.name,
            c.image.as_deref().unwrap_or_default()
        );
        tracing::warn!(pod = %h.key(), "{message}");
        set_container(&h, &c.name, |r| {
            r.state = RunState::Waiting {
                reason: "CreateContainerConfigError".into(),
                message: Some(message),
            }
        });
        // Nothing will ever run; wait here so an init container blocks the pod, like the
        // kubelet, until the pod is deleted.
        h.stop.cancelled().await;
        return false;
    }
    let mut restart_policy = h
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    if init && restart_policy == "Always" {
        // An init container that succeeded is done; only failures are retried.
        restart_policy = "OnFailure".into();
    }
    let mut backoff: Option<Duration> = None;
    let mut run_index: i32 = 0;
    loop {
        if h.stop.is_cancelled() {
            set_container(&h, &c.name, |r| r.done = true);
            return false;
        }
        let container_id = format!("porthole://{}/{}/{}", h.uid, c.name, run_index);
        let log_run = LogRun::new(
            h.dir
                .join("logs")
                .join(&c.name)
                .join(format!("{run_index}.log")),
        );
        h.update(|s| {
            s.logs
                .entry(c.name.clone())
                .or_default()
                .push(log_run.clone())
        });
        let started_at = Timestamp::now();
        let started_instant = tokio::time::Instant::now();
        let outcome = run_once(&h, &c, &ns, &env, &argv, &log_run, &container_id).await;
        let (exit_code, signal, reason, message) = match outcome {
            Ok(status) => {
                let (code, sig) = exit_of(&status);
                let reason = if code == 0 { "Completed" } else { "Error" };
                (code, sig, reason.to_owned(), None)
            }
            Err(message) => {
                log_run.finished.cancel();
                (128, None, "StartError".to_owned(), Some(message))
            }
        };
        let ran_for = started_instant.elapsed();
        let term = Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at: Some(started_at),
            finished_at: Timestamp::now(),
            container_id: container_id.clone(),
        };
        tracing::info!(pod = %h.key(), container = %c.name, exit_code, "container exited");
        let restart = !h.stop.is_cancelled()
            && match restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => exit_code != 0,
                _ => true,
            };
        if !restart {
            let succeeded = exit_code == 0 && !h.stop.is_cancelled();
            set_container(&h, &c.name, |r| {
                r.state = RunState::Terminated(term);
                // Kubernetes reports a completed init container as ready.
                r.ready = init && succeeded;
                r.done = true;
            });
            return succeeded;
        }
        if ran_for >= BACKOFF_RESET_AFTER {
            backoff = None;
        }
        let delay = backoff.unwrap_or(Duration::ZERO);
        backoff = Some(backoff.map_or(BACKOFF_INITIAL, |d| (d * 2).min(BACKOFF_MAX)));
        run_index += 1;
        let pod_desc = format!("{}_{}({})", h.name, h.namespace, h.uid);
        set_container(&h, &c.name, |r| {
            r.last_terminated = Some(term.clone());
            r.restart_count += 1;
            r.ready = false;
            r.state = if delay.is_zero() {
                RunState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                }
            } else {
                RunState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container={} pod={pod_desc}",
                        delay.as_secs(),
                        c.name
                    )),
                }
            };
        });
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = h.stop.cancelled() => {
                    set_container(&h, &c.name, |r| {
                        r.state = RunState::Terminated(term);
                        r.done = true;
                    });
                    return false;
                }
            }
        }
    }
}

/// Runs one process of a container to its end (or until the pod is stopped). `Err` is a
/// start failure, described for the status message.
async fn run_once(
    h: &Arc<PodHandle>,
    c: &Container,
    ns: &NetNs,
    env: &[(String, String)],
    argv: &[String],
    log_run: &LogRun,
    container_id: &str,
) -> Result<std::process::ExitStatus, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let writer = LogWriter::create(log_run.clone())
        .map_err(|e| format!("create log file {}: {e}", log_run.path.display()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(
            c.working_dir
                .as_deref()
                .filter(|d| !d.is_empty())
                .unwrap_or("/"),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // Own process group: signals reach everything the container started, not the agent.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    ns.enter_on_spawn(&mut cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "failed to start container {:?}: exec {program:?}: {}",
            c.name,
            porthole_netns::describe_io_error(&e)
        )
    })?;
    let Some(pid) = child.id().map(|p| p as i32) else {
        return Err("the container process exited before it could be tracked".into());
    };
    let group = Group {
        pgid: pid,
        start_ticks: recovery::proc_stat(pid).map_or(0, |(_, t)| t),
    };
    h.update(|s| s.groups.push(group));
    h.write_state();

    let mut pumps = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        pumps.spawn(writer.clone().pump(out, "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        pumps.spawn(writer.clone().pump(err, "stderr"));
    }
    let finished = log_run.finished.clone();
    tokio::spawn(async move {
        while pumps.join_next().await.is_some() {}
        finished.cancel();
    });

    let started_at = Timestamp::now();
    let has_probe = c.readiness_probe.is_some();
    set_container(h, &c.name, |r| {
        r.state = RunState::Running { started_at };
        r.container_id = Some(container_id.to_owned());
        r.ready = !has_probe;
    });
    tracing::info!(pod = %h.key(), container = %c.name, pid, "container started");

    let probe_stop = CancellationToken::new();
    if let Some(probe) = c.readiness_probe.clone() {
        tokio::spawn(readiness_loop(
            h.clone(),
            c.clone(),
            probe,
            ns.clone(),
            env.to_vec(),
            probe_stop.clone(),
        ));
    }
    let _probe_guard = probe_stop.drop_guard();

    let status = tokio::select! {
        s = child.wait() => s,
        _ = h.stop.cancelled() => {
            let grace = *lock(&h.grace);
            // A forced stop cuts connections instead of letting the app drain them: end the
            // pod's forwarded streams with an error text first, so clients learn why, rather
            // than seeing what looks like a clean close by the app. (With a grace period the
            // app closes its connections itself and clients see a normal end.)
            if grace.is_zero() {
                h.pod_gone.cancel();
            }
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    tracing::info!(pod = %h.key(), container = %c.name, grace_s = grace.as_secs(), "grace period over; killing");
                    h.pod_gone.cancel();
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    // The leader is gone; kill whatever else it left in its group (Kubernetes kills the whole
    // container), so nothing outlives the container.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    h.update(|s| s.groups.retain(|g| *g != group));
    h.write_state();
    status.map_err(|e| format!("waiting for container {:?}: {e}", c.name))
}

/// Runs the readiness probe every period, updating `ready` per the thresholds.
async fn readiness_loop(
    h: Arc<PodHandle>,
    c: Container,
    probe: k8s_openapi::api::core::v1::Probe,
    ns: NetNs,
    env: Vec<(String, String)>,
    stop: CancellationToken,
) {
    let timing = probe::ProbeTiming::of(&probe);
    let sleep = |d| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => true,
                _ = stop.cancelled() => false,
            }
        }
    };
    if !sleep(timing.initial_delay).await {
        return;
    }
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut ready = false;
    loop {
        let result = tokio::select! {
            r = probe::run_once(&probe, &c, &ns, &env) => r,
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if !ready && successes >= timing.success_threshold {
                    ready = true;
                    set_container(&h, &c.name, |r| r.ready = true);
                    tracing::debug!(pod = %h.key(), container = %c.name, "readiness probe succeeded");
                }
            }
            Err(reason) => {
                failures += 1;
                successes = 0;
                if ready && failures >= timing.failure_threshold {
                    ready = false;
                    set_container(&h, &c.name, |r| r.ready = false);
                }
                tracing::debug!(pod = %h.key(), container = %c.name, %reason, "readiness probe failed");
            }
        }
        if !sleep(timing.period).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }
}
