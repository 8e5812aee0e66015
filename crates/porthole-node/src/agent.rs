//! Joining the cluster (ARCHITECTURE.md Contract 4): register the v1.Node, heartbeat, list and
//! watch the pods bound to this node, run/stop them to match, write their status back, and
//! finish deletions. Plain Kubernetes API semantics through the `kube` crate, authenticated
//! with the node's own client certificate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo, Pod,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::params::Preconditions;
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::metrics::Registration;
use crate::runtime::Runtime;

/// The node's Lease in `kube-node-lease` lasts this long (the kubelet's default); it is renewed
/// every heartbeat (10 s).
const NODE_LEASE_SECONDS: i32 = 40;
/// Full node status is posted at least this often even when nothing changed (the kubelet's
/// nodeStatusReportFrequency); the Lease is the cheap heartbeat in between.
const STATUS_REPORT_EVERY: Duration = Duration::from_secs(300);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Exponential back-off for API calls while the server is unreachable.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(RETRY_MIN)
    }
    /// Sleeps the current delay (or until shutdown; returns false then) and doubles it.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.0;
        self.0 = (self.0 * 2).min(RETRY_MAX);
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown.cancelled() => false,
        }
    }
    fn reset(&mut self) {
        self.0 = RETRY_MIN;
    }
}

/// Builds the API client from the node's flags (no kubeconfig involved).
pub(crate) fn client(api: &ApiConfig) -> anyhow::Result<Client> {
    let url: http::Uri = api
        .url
        .parse()
        .with_context(|| format!("--api-server {:?} is not a URL", api.url))?;
    let mut cfg = kube::Config::new(url);
    let roots = crate::tls::load_certs(&api.ca_file)?
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    cfg.root_cert = Some(roots);
    cfg.auth_info.client_certificate = Some(api.client_cert_file.to_string_lossy().into_owned());
    cfg.auth_info.client_key = Some(api.client_key_file.to_string_lossy().into_owned());
    cfg.connect_timeout = Some(Duration::from_secs(10));
    cfg.default_namespace = "default".into();
    Client::try_from(cfg).context(
        "build the API client (check --client-cert-file, --client-key-file, --api-ca-file)",
    )
}

/// Facts about this node for its v1.Node object.
#[derive(Clone)]
pub(crate) struct NodeFacts {
    pub(crate) name: String,
    pub(crate) ip: String,
    pub(crate) port: u16,
    /// Reached only through its tunnels (`--tunnel`): annotated on the Node.
    pub(crate) tunnel: bool,
}

fn meminfo_kib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn ready_condition(now: Timestamp, since: Timestamp) -> NodeCondition {
    NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("porthole node is posting ready status".into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    }
}

fn node_status(facts: &NodeFacts, since: Timestamp) -> NodeStatus {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_owned(), Quantity(cpus.to_string()));
    if let Some(kib) = meminfo_kib() {
        capacity.insert("memory".to_owned(), Quantity(format!("{kib}Ki")));
    }
    capacity.insert("pods".to_owned(), Quantity("110".into()));
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: facts.ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: facts.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(facts.port),
            }),
        }),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![ready_condition(Timestamp::now(), since)]),
        node_info: Some(NodeSystemInfo {
            architecture: arch.into(),
            boot_id: crate::runtime::recovery::boot_id(),
            container_runtime_version: format!("porthole://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: kernel,
            kubelet_version: format!("v1.37.0-porthole.{}", env!("CARGO_PKG_VERSION")),
            machine_id: machine_id.clone(),
            operating_system: "linux".into(),
            os_image: "porthole".into(),
            system_uuid: machine_id,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Node (or takes over an existing one) and writes its full status.
async fn register(client: &Client, facts: &NodeFacts, since: Timestamp) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), facts.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), arch.to_owned()),
    ]);
    let node = Node {
        metadata: ObjectMeta {
            name: Some(facts.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        status: Some(node_status(facts, since)),
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %facts.name, "registered node"),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::info!(node = %facts.name, "node already registered; updating it")
        }
        Err(e) => return Err(e),
    }
    // The tunnel annotation follows the flag, also for a node that was registered without it.
    let annotation = facts.tunnel.then_some("true");
    let meta = serde_json::json!({
        "metadata": {"annotations": {porthole_proto::tunnel::NODE_ANNOTATION: annotation}}
    });
    nodes
        .patch(&facts.name, &PatchParams::default(), &Patch::Merge(&meta))
        .await?;
    let patch = serde_json::json!({ "status": node_status(facts, since) });
    nodes
        .patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Runs the agent until `shutdown`. `first_attempt` is told whether the first registration
/// attempt worked (the node then keeps retrying in the background).
pub(crate) async fn run(
    client: Client,
    facts: NodeFacts,
    runtime: Runtime,
    heartbeat: Duration,
    shutdown: CancellationToken,
    registration: Arc<Registration>,
    first_attempt: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let since = Timestamp::now();
    let mut backoff = Backoff::new();
    let mut first_attempt = Some(first_attempt);
    loop {
        match register(&client, &facts, since).await {
            Ok(()) => {
                registration.set(true);
                if let Some(tx) = first_attempt.take() {
                    let _ = tx.send(Ok(()));
                }
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, api_server = true, "registering the node failed; retrying");
                if let Some(tx) = first_attempt.take() {
                    let _ = tx.send(Err(e.to_string()));
                }
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
    let deleting: Arc<std::sync::Mutex<HashSet<String>>> = Default::default();
    let resync = Arc::new(tokio::sync::Notify::new());
    tokio::join!(
        heartbeat_loop(
            client.clone(),
            facts.clone(),
            since,
            heartbeat,
            shutdown.clone(),
            registration,
            resync.clone(),
        ),
        pod_loop(
            client.clone(),
            facts.name.clone(),
            runtime.clone(),
            deleting,
            shutdown.clone()
        ),
        status_loop(client, runtime, shutdown, resync),
    );
}

/// Renews `kube-node-lease/NAME` (one small write per heartbeat; created when missing).
async fn renew_lease(leases: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    let now = MicroTime(Timestamp::now());
    let patch = serde_json::json!({
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": NODE_LEASE_SECONDS,
            "renewTime": now,
        }
    });
    match leases
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.to_owned()),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.to_owned()),
                    lease_duration_seconds: Some(NODE_LEASE_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The node's heartbeat, as the kubelet's: the Lease every `every`, and the Ready condition
/// when the API shows the node not Ready (the node lifecycle controller marked it while it was
/// unreachable: it is back now, and its pods' statuses are posted again) or at least every
/// [`STATUS_REPORT_EVERY`].
async fn heartbeat_loop(
    client: Client,
    facts: NodeFacts,
    since: Timestamp,
    every: Duration,
    shutdown: CancellationToken,
    registration: Arc<Registration>,
    resync: Arc<tokio::sync::Notify>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut last_report = tokio::time::Instant::now();
    // Ready since registration, or since the node came back after being marked unreachable.
    let mut ready_since = since;
    // The lease is created at once on start, like the kubelet's; then renewed every `every`.
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        first = false;
        if let Err(e) = renew_lease(&leases, &facts.name).await {
            tracing::warn!(error = %e, "renewing the node lease failed; will retry");
            continue;
        }
        let node = match nodes.get_opt(&facts.name).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the node failed; will retry");
                continue;
            }
        };
        let Some(node) = node else {
            tracing::warn!(node = %facts.name, "node object was deleted; registering again");
            let again = register(&client, &facts, since).await;
            registration.set(again.is_ok());
            if let Err(e) = again {
                tracing::warn!(error = %e, "re-registering the node failed; will retry");
            }
            continue;
        };
        let ready = is_ready(&node);
        if ready && last_report.elapsed() < STATUS_REPORT_EVERY {
            continue;
        }
        let now = Timestamp::now();
        if !ready {
            ready_since = now;
        }
        let patch = serde_json::json!({
            "status": { "conditions": [ready_condition(now, ready_since)] }
        });
        match nodes
            .patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                last_report = tokio::time::Instant::now();
                if !ready {
                    tracing::info!(node = %facts.name, "the API showed this node not Ready (it was unreachable); Ready again, posting pod statuses");
                    resync.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "posting node status failed; will retry"),
        }
    }
}

/// Stops a pod being deleted, then removes it from the API (grace 0, same UID only).
fn finish_deletion(
    client: &Client,
    runtime: &Runtime,
    pod: &Pod,
    deleting: &Arc<std::sync::Mutex<HashSet<String>>>,
    shutdown: &CancellationToken,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if !deleting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(uid.clone())
    {
        return;
    }
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64));
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let client = client.clone();
    let runtime = runtime.clone();
    let deleting = deleting.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tracing::info!(pod = %format!("{namespace}/{name}"), ?grace, "pod is being deleted; stopping it");
        runtime.stop(&uid, grace).await;
        let pods: Api<Pod> = Api::namespaced(client, &namespace);
        let dp = DeleteParams::default()
            .grace_period(0)
            .preconditions(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            });
        let mut backoff = Backoff::new();
        loop {
            match pods.delete(&name, &dp).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => break,
                Err(e) => {
                    tracing::warn!(error = %e, pod = %format!("{namespace}/{name}"), "deleting the stopped pod failed; retrying");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    });
}

/// Upserts one pod from the API into the runtime.
fn handle_pod(
    client: &Client,
    runtime: &Runtime,
    pod: &Pod,
    deleting: &Arc<std::sync::Mutex<HashSet<String>>>,
    shutdown: &CancellationToken,
) {
    if pod.metadata.deletion_timestamp.is_some() {
        finish_deletion(client, runtime, pod, deleting, shutdown);
        return;
    }
    let known = pod
        .metadata
        .uid
        .as_deref()
        .is_some_and(|u| runtime.get(u).is_some());
    if known {
        return;
    }
    // A pod that already finished (e.g. before an agent restart) is not run again.
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return;
    }
    if let Err(e) = runtime.apply(pod) {
        tracing::warn!(error = %e, "cannot run pod");
    }
}

async fn pod_loop(
    client: Client,
    node: String,
    runtime: Runtime,
    deleting: Arc<std::sync::Mutex<HashSet<String>>>,
    shutdown: CancellationToken,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = format!("spec.nodeName={node}");
    let mut backoff = Backoff::new();
    'relist: loop {
        let lp = ListParams::default().fields(&selector);
        let list = tokio::select! {
            r = pods.list(&lp) => r,
            _ = shutdown.cancelled() => return,
        };
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing pods failed; retrying");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let wanted: HashSet<String> = list
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        for p in &list.items {
            handle_pod(&client, &runtime, p, &deleting, &shutdown);
        }
        // Pods that disappeared while we were not watching.
        for p in runtime.pods() {
            if !wanted.contains(p.uid()) && !p.is_stopping() {
                let rt = runtime.clone();
                let uid = p.uid().to_owned();
                tracing::info!(pod = %format!("{}/{}", p.namespace(), p.name()), "pod no longer bound to this node; stopping it");
                tokio::spawn(async move { rt.stop(&uid, None).await });
            }
        }
        let mut rv = list.metadata.resource_version.unwrap_or_default();
        loop {
            let wp = WatchParams::default().fields(&selector).timeout(290);
            let stream = tokio::select! {
                r = pods.watch(&wp, &rv) => r,
                _ = shutdown.cancelled() => return,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "watching pods failed; listing again");
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    continue 'relist;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let ev = tokio::select! {
                    ev = stream.try_next() => ev,
                    _ = shutdown.cancelled() => return,
                };
                match ev {
                    Ok(Some(WatchEvent::Added(p))) | Ok(Some(WatchEvent::Modified(p))) => {
                        if let Some(v) = &p.metadata.resource_version {
                            rv = v.clone();
                        }
                        handle_pod(&client, &runtime, &p, &deleting, &shutdown);
                    }
                    Ok(Some(WatchEvent::Deleted(p))) => {
                        if let Some(v) = &p.metadata.resource_version {
                            rv = v.clone();
                        }
                        if let Some(uid) = p.metadata.uid.clone() {
                            let rt = runtime.clone();
                            tokio::spawn(async move { rt.stop(&uid, Some(Duration::ZERO)).await });
                        }
                    }
                    Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                    Ok(Some(WatchEvent::Error(status))) => {
                        if status.code == 410 {
                            tracing::debug!("watch expired (410); listing again");
                        } else {
                            tracing::warn!(code = status.code, message = %status.message, "watch error; listing again");
                        }
                        continue 'relist;
                    }
                    // The server ended the watch (timeout): resume from the last version.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch failed; listing again");
                        if !backoff.wait(&shutdown).await {
                            return;
                        }
                        continue 'relist;
                    }
                }
            }
        }
    }
}

/// Writes pod status changes to the API server (merge patch on the status subresource).
async fn status_loop(
    client: Client,
    runtime: Runtime,
    shutdown: CancellationToken,
    resync: Arc<tokio::sync::Notify>,
) {
    let mut changes = runtime.subscribe();
    let mut sent: HashMap<String, serde_json::Value> = HashMap::new();
    let mut retry_pending;
    loop {
        let current = runtime.pods();
        let live: HashSet<String> = current.iter().map(|p| p.uid().to_owned()).collect();
        sent.retain(|uid, _| live.contains(uid));
        retry_pending = false;
        for pod in current {
            if pod.is_finished() {
                continue;
            }
            let status = match serde_json::to_value(pod.status()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "serialising pod status");
                    continue;
                }
            };
            if sent.get(pod.uid()) == Some(&status) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(client.clone(), pod.namespace());
            let patch = serde_json::json!({ "status": status });
            match api
                .patch_status(pod.name(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    sent.insert(pod.uid().to_owned(), status);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // Gone from the API; the watch will stop it.
                    sent.insert(pod.uid().to_owned(), status);
                }
                Err(e) => {
                    tracing::warn!(error = %e, pod = %format!("{}/{}", pod.namespace(), pod.name()), "writing pod status failed; will retry");
                    retry_pending = true;
                }
            }
        }
        let retry = async {
            if retry_pending {
                tokio::time::sleep(Duration::from_secs(2)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = retry => {}
            // The API's copy may differ from what was sent (the node was marked unreachable).
            _ = resync.notified() => sent.clear(),
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_has_contract_fields() {
        let facts = NodeFacts {
            name: "n1".into(),
            ip: "127.0.0.1".into(),
            port: 4321,
            tunnel: false,
        };
        let s = node_status(&facts, Timestamp::now());
        let addrs = s.addresses.expect("addresses");
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "127.0.0.1");
        assert_eq!(addrs[1].type_, "Hostname");
        assert_eq!(
            s.daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|k| k.port),
            Some(4321)
        );
    }
}
