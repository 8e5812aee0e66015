//! Container and pod status as Kubernetes reports it (phase, conditions, containerStatuses).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// State of one container run, mirroring `v1.ContainerState`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

/// A finished run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Terminated {
    pub(crate) exit_code: i32,
    pub(crate) signal: Option<i32>,
    pub(crate) reason: String,
    pub(crate) message: Option<String>,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) finished_at: Timestamp,
    pub(crate) container_id: String,
}

/// Everything the runtime tracks about one container.
#[derive(Debug, Clone)]
pub(crate) struct ContainerRecord {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) state: RunState,
    pub(crate) last_terminated: Option<Terminated>,
    pub(crate) ready: bool,
    pub(crate) restart_count: i32,
    pub(crate) container_id: Option<String>,
    /// No restart will follow the current terminated state.
    pub(crate) done: bool,
}

/// Pod-level facts beyond the containers.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodFacts {
    pub(crate) start_time: Option<Timestamp>,
    pub(crate) restart_policy: String,
    /// When each condition last changed, so `lastTransitionTime` is stable across syncs.
    pub(crate) transitions: std::collections::BTreeMap<String, (bool, Timestamp)>,
    pub(crate) sandbox_error: Option<String>,
    pub(crate) host_ip: String,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn terminated_to_k8s(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        container_id: Some(t.container_id.clone()),
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(time),
        finished_at: Some(time(t.finished_at)),
    }
}

impl ContainerRecord {
    pub(crate) fn to_k8s(&self) -> ContainerStatus {
        let state = match &self.state {
            RunState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            RunState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(time(*started_at)),
                }),
                ..Default::default()
            },
            RunState::Terminated(t) => ContainerState {
                terminated: Some(terminated_to_k8s(t)),
                ..Default::default()
            },
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: self.container_id.clone(),
            state: Some(state),
            last_state: Some(
                self.last_terminated
                    .as_ref()
                    .map(|t| ContainerState {
                        terminated: Some(terminated_to_k8s(t)),
                        ..Default::default()
                    })
                    .unwrap_or_default(),
            ),
            ready: self.ready,
            restart_count: self.restart_count,
            started: Some(matches!(self.state, RunState::Running { .. })),
            ..Default::default()
        }
    }
}

/// The pod phase, following the kubelet's `getPhase`: a container that never ran keeps the pod
/// Pending; one running makes it Running; when all stopped, the restart policy decides.
pub(crate) fn phase(facts: &PodFacts, containers: &[ContainerRecord]) -> &'static str {
    let mut waiting = 0;
    let mut running = 0;
    let mut stopped = 0;
    let mut succeeded = 0;
    for c in containers {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            RunState::Waiting { .. } => {
                if c.last_terminated.is_some() {
                    // Waiting to restart after a run: counts as stopped, not as never started.
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if containers.is_empty() || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    let all_done = containers.iter().all(|c| c.done);
    if stopped > 0 && !all_done {
        // Some container will be restarted.
        return "Running";
    }
    match facts.restart_policy.as_str() {
        "Always" if !all_done => "Running",
        _ if stopped == succeeded => "Succeeded",
        _ => "Failed",
    }
}

/// Whether every init container has run to success.
fn initialized(init: &[ContainerRecord]) -> bool {
    init.iter()
        .all(|c| c.done && matches!(&c.state, RunState::Terminated(t) if t.exit_code == 0))
}

/// Builds the full `v1.PodStatus` and records condition transitions in `facts`. Init
/// containers run first, one by one: until all succeeded the pod is Pending (Failed if one
/// failed for good) and not Initialized.
pub(crate) fn pod_status(
    facts: &mut PodFacts,
    init: &[ContainerRecord],
    containers: &[ContainerRecord],
) -> PodStatus {
    let now = Timestamp::now();
    let init_done = initialized(init);
    let init_failed = init
        .iter()
        .any(|c| c.done && matches!(&c.state, RunState::Terminated(t) if t.exit_code != 0));
    let phase = if init_failed {
        "Failed"
    } else if !init_done {
        "Pending"
    } else {
        phase(facts, containers)
    };
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let not_ready: Vec<&str> = containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let mut conditions = Vec::new();
    let mut cond = |facts: &mut PodFacts, type_: &str, ok: bool, reason: Option<&str>| {
        let entry = facts
            .transitions
            .entry(type_.to_owned())
            .or_insert((ok, now));
        if entry.0 != ok {
            *entry = (ok, now);
        }
        let message = (!ok && (type_ == "Ready" || type_ == "ContainersReady"))
            .then(|| format!("containers with unready status: [{}]", not_ready.join(" ")));
        conditions.push(PodCondition {
            type_: type_.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            last_transition_time: Some(time(entry.1)),
            reason: reason.map(str::to_owned),
            message: if ok { None } else { message },
            ..Default::default()
        });
    };
    let ready_reason = if terminal {
        Some("PodCompleted")
    } else if all_ready {
        None
    } else {
        Some("ContainersNotReady")
    };
    cond(
        facts,
        "PodReadyToStartContainers",
        facts.sandbox_error.is_none(),
        None,
    );
    cond(
        facts,
        "Initialized",
        init_done,
        (!init_done).then_some("ContainersNotInitialized"),
    );
    cond(facts, "Ready", all_ready && !terminal, ready_reason);
    cond(
        facts,
        "ContainersReady",
        all_ready && !terminal,
        ready_reason,
    );
    cond(facts, "PodScheduled", true, None);
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        container_statuses: Some(containers.iter().map(ContainerRecord::to_k8s).collect()),
        init_container_statuses: (!init.is_empty())
            .then(|| init.iter().map(ContainerRecord::to_k8s).collect()),
        host_ip: Some(facts.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: facts.host_ip.clone(),
        }]),
        start_time: facts.start_time.map(time),
        message: facts.sandbox_error.clone(),
        qos_class: Some("BestEffort".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: RunState, done: bool, last: bool) -> ContainerRecord {
        let t = Terminated {
            exit_code: 1,
            signal: None,
            reason: "Error".into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::now(),
            container_id: "x".into(),
        };
        ContainerRecord {
            name: "c".into(),
            image: "i".into(),
            state,
            last_terminated: last.then_some(t),
            ready: false,
            restart_count: 0,
            container_id: None,
            done,
        }
    }

    fn term(code: i32) -> RunState {
        RunState::Terminated(Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::now(),
            container_id: "x".into(),
        })
    }

    #[test]
    fn phases() {
        let facts = PodFacts {
            restart_policy: "Always".into(),
            ..Default::default()
        };
        let waiting = RunState::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        assert_eq!(
            phase(&facts, &[rec(waiting.clone(), false, false)]),
            "Pending"
        );
        assert_eq!(phase(&facts, &[rec(waiting, false, true)]), "Running");
        assert_eq!(
            phase(
                &facts,
                &[rec(
                    RunState::Running {
                        started_at: Timestamp::now()
                    },
                    false,
                    false
                )]
            ),
            "Running"
        );
        let never = PodFacts {
            restart_policy: "Never".into(),
            ..Default::default()
        };
        assert_eq!(phase(&never, &[rec(term(0), true, false)]), "Succeeded");
        assert_eq!(
            phase(
                &never,
                &[rec(term(0), true, false), rec(term(2), true, false)]
            ),
            "Failed"
        );
    }
}
