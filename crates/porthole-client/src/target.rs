//! Resource resolution (PROTOCOL.md §7.2): `TYPE/NAME` → the pod(s) to forward to.
//!
//! A pod target is used as named (it must be Running, kubectl's check). Every other kind is
//! turned into a label selector and the matching pods are ranked by kubectl's "activeness";
//! unlike kubectl we only ever choose a Running *and Ready* pod behind a selector
//! (kubectl#1416), and with `--balance` we return every such pod.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ReplicationController, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};

use crate::ports::{PortSpec, ResolvedPort};

/// The kinds `port-forward` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `pod`, `pods`, `po` or no type at all.
    Pod,
    /// `deployment`, `deployments`, `deploy`.
    Deployment,
    /// `service`, `services`, `svc`.
    Service,
    /// `statefulset`, `statefulsets`, `sts`.
    StatefulSet,
    /// `replicaset`, `replicasets`, `rs`.
    ReplicaSet,
    /// `replicationcontroller`, `replicationcontrollers`, `rc`.
    ReplicationController,
    /// `daemonset`, `daemonsets`, `ds`.
    DaemonSet,
    /// `job`, `jobs`.
    Job,
}

impl Kind {
    /// Lower-case singular name for messages.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Deployment => "deployment",
            Kind::Service => "service",
            Kind::StatefulSet => "statefulset",
            Kind::ReplicaSet => "replicaset",
            Kind::ReplicationController => "replicationcontroller",
            Kind::DaemonSet => "daemonset",
            Kind::Job => "job",
        }
    }
}

/// `TYPE/NAME` as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    /// The kind.
    pub kind: Kind,
    /// The object's name.
    pub name: String,
}

impl TargetRef {
    /// Parses `NAME` (a pod) or `TYPE/NAME`, with kubectl's short names.
    pub fn parse(s: &str) -> Result<TargetRef, String> {
        let (ty, name) = match s.split_once('/') {
            Some((ty, name)) => (Some(ty), name),
            None => (None, s),
        };
        if name.contains('/') {
            return Err("arguments in resource/name form may not have more than one slash".into());
        }
        if name.is_empty() || ty.is_some_and(str::is_empty) {
            return Err(
                "arguments in resource/name form must have a single resource and name".into(),
            );
        }
        let kind = match ty.map(|t| t.to_ascii_lowercase()).as_deref() {
            None | Some("pod" | "pods" | "po") => Kind::Pod,
            Some(
                "deployment" | "deployments" | "deploy" | "deployment.apps" | "deployments.apps",
            ) => Kind::Deployment,
            Some("service" | "services" | "svc") => Kind::Service,
            Some("statefulset" | "statefulsets" | "sts" | "statefulsets.apps") => Kind::StatefulSet,
            Some("replicaset" | "replicasets" | "rs" | "replicasets.apps") => Kind::ReplicaSet,
            Some("replicationcontroller" | "replicationcontrollers" | "rc") => {
                Kind::ReplicationController
            }
            Some("daemonset" | "daemonsets" | "ds" | "daemonsets.apps") => Kind::DaemonSet,
            Some("job" | "jobs" | "jobs.batch") => Kind::Job,
            Some(other) => {
                return Err(format!(
                    "the server doesn't have a resource type \"{other}\""
                ));
            }
        };
        Ok(TargetRef {
            kind,
            name: name.to_string(),
        })
    }
}

/// Why resolution failed. The API server's own lines (`Error from server ...`) are complete;
/// the others get kubectl's `error: ` prefix where they are printed
/// ([`crate::output::resolve_error_line`]).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The named object does not exist (the target is gone).
    #[error("Error from server (NotFound): {0}")]
    NotFound(String),
    /// Another API error (`Error from server (Reason): message`).
    #[error("{0}")]
    Api(String),
    /// The API server could not be reached or answered garbage. The message is the whole
    /// chain, because kube's and hyper's top-level texts ("client error (Connect)") say little
    /// on their own; the error stays the source so its I/O kind can be checked.
    #[error("{}", porthole_relay::error::chain(.0))]
    Transport(#[source] kube::Error),
    /// A pod exists but cannot be used yet (not Running, not Ready, none exist).
    #[error("{0}")]
    NotReady(String),
    /// A port or object definition problem that waiting will not fix.
    #[error("{0}")]
    Invalid(String),
}

impl ResolveError {
    /// Maps a kube error the way kubectl's `StandardErrorMessage` renders it.
    pub fn from_kube(e: kube::Error) -> ResolveError {
        match e {
            kube::Error::Api(status) => {
                if status.reason == "NotFound" || status.code == 404 {
                    ResolveError::NotFound(status.message)
                } else if status.reason.is_empty() {
                    ResolveError::Api(format!("Error from server: {}", status.message))
                } else {
                    ResolveError::Api(format!(
                        "Error from server ({}): {}",
                        status.reason, status.message
                    ))
                }
            }
            other => ResolveError::Transport(other),
        }
    }

    /// Whether the API server refused the connection (nothing listens at its address), told by
    /// the I/O error's kind where the chain keeps one and by kube's text otherwise.
    pub fn is_connection_refused(&self) -> bool {
        let ResolveError::Transport(e) = self else {
            return false;
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::ConnectionRefused {
                    return true;
                }
            }
            cur = err.source();
        }
        self.to_string().contains("onnection refused")
    }
}

/// A pod to forward to with the ports resolved against it.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The pod.
    pub pod: Pod,
    /// One entry per port spec, same order.
    pub ports: Vec<ResolvedPort>,
}

impl Choice {
    /// The pod's name.
    pub fn pod_name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or("")
    }
}

/// Resolves one target in one namespace.
pub struct Resolver {
    client: kube::Client,
    namespace: String,
    target: TargetRef,
    specs: Vec<PortSpec>,
}

impl Resolver {
    /// A resolver for `target` in `namespace`.
    pub fn new(
        client: kube::Client,
        namespace: String,
        target: TargetRef,
        specs: Vec<PortSpec>,
    ) -> Self {
        Resolver {
            client,
            namespace,
            target,
            specs,
        }
    }

    /// The target.
    pub fn target(&self) -> &TargetRef {
        &self.target
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Looks up the target once. `max` is how many pods to return (1, or more with
    /// `--balance`). For a selector target, only Running and Ready pods qualify.
    pub async fn resolve(&self, max: usize) -> Result<Vec<Choice>, ResolveError> {
        let name = &self.target.name;
        let (service, selector) = match self.target.kind {
            Kind::Pod => {
                let pod = self
                    .api::<Pod>()
                    .get(name)
                    .await
                    .map_err(ResolveError::from_kube)?;
                let phase = pod_phase(&pod);
                if phase != "Running" {
                    return Err(ResolveError::NotReady(format!(
                        "unable to forward port because pod is not running. Current status={phase}"
                    )));
                }
                if is_deleting(&pod) {
                    // Its node is stopping it; a session would die within the grace period.
                    return Err(ResolveError::NotReady(format!(
                        "unable to forward port because pod {name} is being deleted"
                    )));
                }
                let ports = self.resolve_ports(None, &pod)?;
                return Ok(vec![Choice { pod, ports }]);
            }
            Kind::Service => {
                let svc = self
                    .api::<Service>()
                    .get(name)
                    .await
                    .map_err(ResolveError::from_kube)?;
                let sel = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.clone())
                    .unwrap_or_default();
                if sel.is_empty() {
                    return Err(ResolveError::Invalid(format!(
                        "invalid service '{name}': Service is defined without a selector"
                    )));
                }
                (Some(svc), map_selector(&sel))
            }
            Kind::Deployment => {
                let o = self
                    .api::<Deployment>()
                    .get(name)
                    .await
                    .map_err(ResolveError::from_kube)?;
                (None, self.label_selector(Some(o.spec.selector))?)
            }
            Kind::StatefulSet => {
                let o = self
                    .api::<StatefulSet>()
                    .get(name)
                    .await
                    .map_err(ResolveError::from_kube)?;
                (None, self.label_selector(Some(o.spec.selector))?)
            }
            Kind::ReplicaSet => {
                let o = self
                    .api::<ReplicaSet>()
                    .get(name)
                    .await
                    .map_err(ResolveError::from_kube)?;
                (None, self.label_selector(Some(o.spec.selector))?)
            }
            Kind::DaemonSet => {
                let o = self
                    .api::<DaemonSet>()
                    .get(name)
                    .await
                    .map_err(ResolveError::from_kube)?;
                (None, self.label_selector(Some(o.spec.selector))?)
            }
            Kind::Job => {
                let o = self
                    .api::<Job>()
                    .get(name)
                    .await
                    .map_err(ResolveError::from_kube)?;
                (None, self.label_selector(o.spec.and_then(|s| s.selector))?)
            }
            Kind::ReplicationController => {
                let o = self
                    .api::<ReplicationController>()
                    .get(name)
                    .await
                    .map_err(ResolveError::from_kube)?;
                let sel = o.spec.and_then(|s| s.selector).unwrap_or_default();
                if sel.is_empty() {
                    return Err(self.no_selector());
                }
                (None, map_selector(&sel))
            }
        };
        let list = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(ResolveError::from_kube)?;
        let mut pods = list.items;
        if pods.is_empty() {
            return Err(ResolveError::NotReady(format!(
                "no pods match {} {name} (selector {selector})",
                self.target.kind.singular()
            )));
        }
        sort_by_activeness(&mut pods);
        let usable: Vec<Pod> = pods
            .iter()
            .filter(|p| is_usable(p))
            .take(max.max(1))
            .cloned()
            .collect();
        if usable.is_empty() {
            let best = &pods[0];
            let phase = pod_phase(best);
            return Err(ResolveError::NotReady(if phase != "Running" {
                format!("unable to forward port because pod is not running. Current status={phase}")
            } else {
                format!(
                    "no Ready pod behind {} {name}: pod {} is Running but not Ready",
                    self.target.kind.singular(),
                    best.metadata.name.as_deref().unwrap_or("")
                )
            }));
        }
        let mut choices = Vec::with_capacity(usable.len());
        for pod in usable {
            let ports = self.resolve_ports(service.as_ref(), &pod)?;
            choices.push(Choice { pod, ports });
        }
        Ok(choices)
    }

    fn no_selector(&self) -> ResolveError {
        ResolveError::Invalid(format!(
            "cannot attach to {} {}: it has no pod selector",
            self.target.kind.singular(),
            self.target.name
        ))
    }

    fn label_selector(&self, sel: Option<LabelSelector>) -> Result<String, ResolveError> {
        match sel.as_ref().map(label_selector_string) {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.no_selector()),
        }
    }

    fn resolve_ports(
        &self,
        svc: Option<&Service>,
        pod: &Pod,
    ) -> Result<Vec<ResolvedPort>, ResolveError> {
        self.specs
            .iter()
            .map(|s| match svc {
                Some(svc) => s.resolve_for_service(svc, pod),
                None => s.resolve_for_pod(pod),
            })
            .collect::<Result<_, _>>()
            .map_err(ResolveError::Invalid)
    }
}

fn map_selector(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `metav1.LabelSelector` in label-selector query syntax.
pub fn label_selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, values.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, values.join(",")),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            // An unknown operator would make the API server reject the list with its own text.
            other => format!("{} {} ({})", e.key, other.to_lowercase(), values.join(",")),
        });
    }
    parts.join(",")
}

fn pod_phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// The `Ready` condition's transition time when the pod is Ready.
fn ready_since(p: &Pod) -> Option<Option<jiff::Timestamp>> {
    let conds = p.status.as_ref()?.conditions.as_ref()?;
    let c = conds
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(c.last_transition_time.as_ref().map(|t| t.0))
}

fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

fn is_deleting(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Running, Ready and not being deleted: the only pods we forward to behind a selector.
pub fn is_usable(p: &Pod) -> bool {
    pod_phase(p) == "Running" && is_ready(p) && !is_deleting(p)
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// kubectl's `afterOrZero(a, b)`: a zero time counts as the latest.
fn after_or_zero(a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => a.is_none(),
        (Some(a), Some(b)) => a > b,
    }
}

/// kubectl's `ActivePods.Less`: `Less` when `a` is *less* active than `b`.
fn less_active(a: &Pod, b: &Pod) -> bool {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let (na, nb) = (node(a), node(b));
    // 1. unassigned < assigned
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return na.is_empty();
    }
    // 2. Pending < Unknown < Running
    let rank = |p: &Pod| match pod_phase(p).as_str() {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    };
    if rank(a) != rank(b) {
        return rank(a) < rank(b);
    }
    // 3. not ready < ready
    if is_ready(a) != is_ready(b) {
        return !is_ready(a);
    }
    // 4. deleting < not deleting
    if is_deleting(a) != is_deleting(b) {
        return is_deleting(a);
    }
    // 5. ready for less time < ready longer
    if let (Some(ra), Some(rb)) = (ready_since(a), ready_since(b)) {
        if ra != rb {
            return after_or_zero(ra, rb);
        }
    }
    // 6. more restarts < fewer restarts
    if max_restarts(a) != max_restarts(b) {
        return max_restarts(a) > max_restarts(b);
    }
    // 7. newer < older
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if created(a) != created(b) {
        return after_or_zero(created(a), created(b));
    }
    false
}

/// Sorts most active first (kubectl `sort.Reverse(ActivePods)`; stable, so ties keep the list
/// order).
pub fn sort_by_activeness(pods: &mut [Pod]) {
    pods.sort_by(|a, b| {
        if less_active(b, a) {
            Ordering::Less
        } else if less_active(a, b) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn ts(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[derive(Default)]
    struct P {
        node: bool,
        phase: &'static str,
        ready_at: Option<i64>,
        deleting: bool,
        restarts: i32,
        created: i64,
    }

    fn pod(name: &str, p: P) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(ts(p.created)),
                deletion_timestamp: p.deleting.then(|| ts(1)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: p.node.then(|| "n1".to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(p.phase.into()),
                conditions: p.ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(ts(t)),
                        ..Default::default()
                    }]
                }),
                container_statuses: Some(vec![ContainerStatus {
                    restart_count: p.restarts,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn order(mut pods: Vec<Pod>) -> Vec<String> {
        sort_by_activeness(&mut pods);
        pods.into_iter().map(|p| p.metadata.name.unwrap()).collect()
    }

    #[test]
    fn activeness_order() {
        let running_ready = |ready_at, restarts, created| P {
            node: true,
            phase: "Running",
            ready_at: Some(ready_at),
            restarts,
            created,
            ..Default::default()
        };
        let got = order(vec![
            pod(
                "unassigned",
                P {
                    phase: "Pending",
                    created: 1,
                    ..Default::default()
                },
            ),
            pod(
                "pending",
                P {
                    node: true,
                    phase: "Pending",
                    created: 1,
                    ..Default::default()
                },
            ),
            pod(
                "unknown",
                P {
                    node: true,
                    phase: "Unknown",
                    created: 1,
                    ..Default::default()
                },
            ),
            pod(
                "running-notready",
                P {
                    node: true,
                    phase: "Running",
                    created: 1,
                    ..Default::default()
                },
            ),
            pod(
                "deleting",
                P {
                    deleting: true,
                    ..running_ready(100, 0, 1)
                },
            ),
            pod("ready-late", running_ready(500, 0, 1)),
            pod("ready-early", running_ready(100, 0, 1)),
            pod("restarty", running_ready(100, 3, 1)),
            pod("ready-early-older", running_ready(100, 0, 0)),
        ]);
        assert_eq!(
            got,
            vec![
                "ready-early-older",
                "ready-early",
                "restarty",
                "ready-late",
                "deleting",
                "running-notready",
                "unknown",
                "pending",
                "unassigned"
            ]
        );
    }

    #[test]
    fn only_running_ready_pods_are_usable() {
        assert!(is_usable(&pod(
            "a",
            P {
                node: true,
                phase: "Running",
                ready_at: Some(1),
                ..Default::default()
            }
        )));
        assert!(!is_usable(&pod(
            "b",
            P {
                node: true,
                phase: "Running",
                ..Default::default()
            }
        )));
        assert!(!is_usable(&pod(
            "c",
            P {
                node: true,
                phase: "Pending",
                ready_at: Some(1),
                ..Default::default()
            }
        )));
        assert!(!is_usable(&pod(
            "d",
            P {
                node: true,
                phase: "Running",
                ready_at: Some(1),
                deleting: true,
                ..Default::default()
            }
        )));
    }

    #[test]
    fn target_ref_forms() {
        let t = |s: &str| TargetRef::parse(s).map(|t| (t.kind, t.name));
        assert_eq!(t("web").unwrap(), (Kind::Pod, "web".into()));
        assert_eq!(t("pod/web").unwrap(), (Kind::Pod, "web".into()));
        assert_eq!(t("pods/web").unwrap(), (Kind::Pod, "web".into()));
        assert_eq!(t("deploy/web").unwrap(), (Kind::Deployment, "web".into()));
        assert_eq!(
            t("deployment/web").unwrap(),
            (Kind::Deployment, "web".into())
        );
        assert_eq!(t("svc/web").unwrap(), (Kind::Service, "web".into()));
        assert_eq!(t("service/web").unwrap(), (Kind::Service, "web".into()));
        assert_eq!(t("sts/web").unwrap(), (Kind::StatefulSet, "web".into()));
        assert_eq!(t("rs/web").unwrap(), (Kind::ReplicaSet, "web".into()));
        assert_eq!(
            t("foo/web").unwrap_err(),
            "the server doesn't have a resource type \"foo\""
        );
        assert_eq!(
            t("pod/web/x").unwrap_err(),
            "arguments in resource/name form may not have more than one slash"
        );
        assert_eq!(
            t("pod/").unwrap_err(),
            "arguments in resource/name form must have a single resource and name"
        );
    }

    #[test]
    fn selector_strings() {
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app".into(), "web".into()),
                ("tier".into(), "fe".into()),
            ])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "env".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            label_selector_string(&sel),
            "app=web,tier=fe,env in (a,b),!canary"
        );
    }

    #[test]
    fn refusal_is_told_by_the_io_kind_not_the_text() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "os said no");
        let e = ResolveError::from_kube(kube::Error::Service(Box::new(io)));
        assert!(e.is_connection_refused(), "{e}");
        assert_eq!(e.to_string(), "ServiceError: os said no");
        let other = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        assert!(
            !ResolveError::from_kube(kube::Error::Service(Box::new(other))).is_connection_refused()
        );
    }
}
