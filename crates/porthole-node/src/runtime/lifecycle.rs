//! The life of a pod and its containers: creating the namespace, running init containers
//! then the others, each container's restart loop with the kubelet's back-off, one run of its
//! process, and the readiness probe loop.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use porthole_netns::NetNs;
use porthole_relay::error::chain;
use tokio_util::sync::CancellationToken;

use super::env::{container_env, expand};
use super::logs::{LogRun, LogWriter};
use super::recovery::{self, Group};
use super::status::{ContainerRecord, RunState, Terminated};
use super::{containers_of, init_containers_of, lock, probe, PodHandle};

/// The kubelet's restart back-off: 10 s doubling to 5 min.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long gets its back-off reset.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// The life of one pod.
pub(super) async fn run_pod(h: Arc<PodHandle>) {
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
