//! Controllers inside the server: scheduler, Deployment controller (with garbage collection
//! of orphaned pods), namespace finalization, node lifecycle, and for joining nodes the
//! bootstrap token cleaner, the `cluster-info` signer and CSR approval and signing.
//!
//! They run in one API server at a time, the holder of the controllers' lease (`leader`).
//! All of them are level-triggered: one pass reads the current objects and writes only what
//! differs, so running a pass too often is harmless. A pass runs after any store change
//! (debounced), when a handler kicks it, and every second for time-based rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::registry::{self, DeleteOptions};
use crate::request::ResourceRequest;
use crate::resources::{self, RESOURCES};
use crate::store::{resource_version, Store};
use crate::time;
use crate::State;

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn is_deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|x| !x.is_null())
}

fn condition<'a>(v: &'a Value, ty: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

fn req_for(plural: &str, obj: &Value) -> ResourceRequest {
    ResourceRequest {
        info: resources::core(plural),
        namespace: s(obj, "/metadata/namespace").to_string(),
        name: s(obj, "/metadata/name").to_string(),
        subresource: String::new(),
        rest: String::new(),
    }
}

/// Is a node Ready and schedulable?
pub fn node_ready(node: &Value) -> bool {
    condition(node, "Ready")
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
        && node.pointer("/spec/unschedulable").and_then(Value::as_bool) != Some(true)
}

/// Run the controllers until `stop` is cancelled (server shutdown, or this server lost the
/// controllers' lease: `leader`). A pass in flight always finishes first: `stop` is looked at
/// only between passes, so whoever awaits this future knows no write of ours is still coming.
pub async fn run(state: Arc<State>, node_grace: Duration, stop: CancellationToken) {
    let mut w = match state.store.watch(0) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "controllers cannot watch the store; they are not running");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        registry::run_blocking(|| pass(&state, node_grace));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.kick_signal.notified() => {}
            _ = tick.tick() => {}
            r = w.live.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return; }
                // Debounce: drain whatever else is queued.
                while w.live.try_recv().is_ok() {}
            }
        }
    }
}

fn pass(state: &State, node_grace: Duration) {
    let store = state.store.as_ref();
    let list = |plural: &str| {
        store
            .list(&format!("{plural}/"))
            .map(|(v, _)| v)
            .unwrap_or_default()
    };
    let nodes = list("nodes");
    let pods = list("pods");
    let node_leases = list("leases/kube-node-lease");
    node_lifecycle(store, &nodes, &node_leases, &pods, node_grace);
    orphaned_terminating_pods(store, &nodes, &pods);
    schedule(store, &nodes, &pods);
    crate::endpoints::reconcile(store, &list("services"), &pods, &nodes);
    let deployments = list("deployments");
    deployments_pass(state, &deployments, &pods);
    garbage_collect(state, &deployments, &pods);
    namespaces(state, &list("namespaces"));
    // kube-controller-manager's tokencleaner, bootstrapsigner, csrapproving and csrsigning.
    let now = jiff::Timestamp::now();
    crate::bootstrap::remove_expired_tokens(store, now);
    crate::bootstrap::sign_cluster_info(store, now);
    crate::csr::approve_and_sign(store, state.signer.as_ref());
}

fn schedule(store: &dyn Store, nodes: &[Value], pods: &[Value]) {
    let ready: Vec<&Value> = nodes.iter().filter(|n| node_ready(n)).collect();
    let mut load: HashMap<&str, usize> =
        ready.iter().map(|n| (s(n, "/metadata/name"), 0)).collect();
    for p in pods {
        if let Some(c) = load.get_mut(s(p, "/spec/nodeName")) {
            *c += 1;
        }
    }
    // Like kube-scheduler, only pods asking for the default scheduler are ours.
    let ours = |p: &Value| matches!(s(p, "/spec/schedulerName"), "" | "default-scheduler");
    for p in pods
        .iter()
        .filter(|p| s(p, "/spec/nodeName").is_empty() && !is_deleting(p) && ours(p))
    {
        let r = req_for("pods", p);
        let Some((&node, _)) = load.iter().min_by_key(|(name, c)| (**c, **name)) else {
            if condition(p, "PodScheduled").is_none() {
                let mut c = p.clone();
                let cond = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/0 nodes are available: no Ready node.", "lastTransitionTime": time::now_rfc3339()});
                match c
                    .pointer_mut("/status/conditions")
                    .and_then(Value::as_array_mut)
                {
                    Some(l) => l.push(cond),
                    None => c["status"]["conditions"] = json!([cond]),
                }
                let _ = store.update(
                    &r.info.key(&r.namespace, &r.name),
                    c,
                    Some(resource_version(p)),
                );
            }
            continue;
        };
        let node = node.to_string();
        match registry::bind_pod(store, &r, p, &node) {
            Ok(_) => {
                tracing::debug!(pod = %r.name, namespace = %r.namespace, node = %node, "scheduled");
                if let Some(c) = load.get_mut(node.as_str()) {
                    *c += 1;
                }
            }
            Err(e) => tracing::debug!(error = %e, pod = %r.name, "binding raced; will retry"),
        }
    }
}

/// Like Kubernetes' PodGC: a pod marked for deletion on a node that no longer exists has
/// nobody to finish it, so it is removed here (otherwise `kubectl delete` would wait forever).
fn orphaned_terminating_pods(store: &dyn Store, nodes: &[Value], pods: &[Value]) {
    let names: Vec<&str> = nodes.iter().map(|n| s(n, "/metadata/name")).collect();
    for p in pods.iter().filter(|p| is_deleting(p)) {
        let node = s(p, "/spec/nodeName");
        if !node.is_empty() && !names.contains(&node) {
            let r = req_for("pods", p);
            let key = r.info.key(&r.namespace, &r.name);
            if store.delete(&key, Some(resource_version(p))).is_ok() {
                tracing::info!(pod = %r.name, namespace = %r.namespace, node = %node, "removed a terminating pod whose node is gone");
            }
        }
    }
}

/// The node lifecycle controller (kube-controller-manager's): a node is alive while it renews
/// its Lease `kube-node-lease/NAME` (every 10 s) or posts its status; after `grace` (40 s,
/// `--node-monitor-grace-period`) without either, its Ready condition turns Unknown and its
/// pods' Ready turns False, so endpoints drop them. The node sets Ready again itself when it
/// is back.
fn node_lifecycle(
    store: &dyn Store,
    nodes: &[Value],
    leases: &[Value],
    pods: &[Value],
    grace: Duration,
) {
    let now = jiff::Timestamp::now();
    let timestamp = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    for n in nodes {
        let Some(ready) = condition(n, "Ready") else {
            continue;
        };
        let status = ready.get("status").and_then(Value::as_str).unwrap_or("");
        let name = s(n, "/metadata/name");
        let renewed = leases
            .iter()
            .find(|l| s(l, "/metadata/name") == name)
            .and_then(|l| timestamp(l.pointer("/spec/renewTime")));
        let beat = timestamp(ready.get("lastHeartbeatTime")).max(renewed);
        let Some(beat) = beat else { continue };
        let stale = now.as_second() - beat.as_second() > grace.as_secs() as i64;
        if stale && status != "Unknown" {
            let mut c = n.clone();
            if let Some(list) = c
                .pointer_mut("/status/conditions")
                .and_then(Value::as_array_mut)
            {
                for cond in list.iter_mut() {
                    if cond.get("type").and_then(Value::as_str) == Some("Ready") {
                        cond["status"] = json!("Unknown");
                        cond["reason"] = json!("NodeStatusUnknown");
                        cond["message"] = json!("Kubelet stopped posting node status.");
                        cond["lastTransitionTime"] = json!(time::now_rfc3339());
                    }
                }
            }
            tracing::warn!(node = %name, "node stopped sending heartbeats; marking it NotReady");
            let _ = store.update(
                &resources::core("nodes").key("", name),
                c,
                Some(resource_version(n)),
            );
        }
        if stale || status == "Unknown" {
            for p in pods.iter().filter(|p| s(p, "/spec/nodeName") == name) {
                let is_ready = condition(p, "Ready")
                    .and_then(|c| c.get("status"))
                    .and_then(Value::as_str)
                    == Some("True");
                if !is_ready {
                    continue;
                }
                let mut c = p.clone();
                if let Some(list) = c
                    .pointer_mut("/status/conditions")
                    .and_then(Value::as_array_mut)
                {
                    for cond in list.iter_mut() {
                        let t = cond.get("type").and_then(Value::as_str).unwrap_or("");
                        if t == "Ready" || t == "ContainersReady" {
                            cond["status"] = json!("False");
                            cond["reason"] = json!("NodeNotReady");
                            cond["lastTransitionTime"] = json!(time::now_rfc3339());
                        }
                    }
                }
                let r = req_for("pods", p);
                let _ = store.update(
                    &r.info.key(&r.namespace, &r.name),
                    c,
                    Some(resource_version(p)),
                );
            }
        }
    }
}

/// A short stable hash of the pod template (Kubernetes' `pod-template-hash` role).
fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf29ce484222325;
    for b in serde_json::to_vec(template).unwrap_or_default() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

fn owned_by(p: &Value, uid: &str) -> bool {
    p.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

fn pod_ready(p: &Value) -> bool {
    condition(p, "Ready")
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

fn remove_pod(state: &State, p: &Value, grace: Option<i64>) {
    let opts = DeleteOptions {
        grace_period_seconds: grace,
        ..Default::default()
    };
    if let Err(e) = registry::delete(state, &req_for("pods", p), &opts) {
        tracing::debug!(error = %e, pod = %s(p, "/metadata/name"), "deleting a pod failed; will retry");
    }
}

fn deployments_pass(state: &State, deployments: &[Value], pods: &[Value]) {
    let store = state.store.as_ref();
    let pods_info = resources::core("pods");
    for d in deployments.iter().filter(|d| !is_deleting(d)) {
        let uid = s(d, "/metadata/uid");
        let ns = s(d, "/metadata/namespace");
        let name = s(d, "/metadata/name");
        let replicas = d
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template);
        let owned: Vec<&Value> = pods.iter().filter(|p| owned_by(p, uid)).collect();
        for p in owned
            .iter()
            .filter(|p| matches!(s(p, "/status/phase"), "Failed" | "Succeeded") && !is_deleting(p))
        {
            remove_pod(state, p, Some(0));
        }
        let active: Vec<&Value> = owned
            .iter()
            .copied()
            .filter(|p| !is_deleting(p) && !matches!(s(p, "/status/phase"), "Failed" | "Succeeded"))
            .collect();
        let (current, old): (Vec<&Value>, Vec<&Value>) = active
            .iter()
            .partition(|p| s(p, "/metadata/labels/pod-template-hash") == hash);
        for _ in current.len()..replicas {
            let mut labels = template
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            labels["pod-template-hash"] = json!(hash);
            let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
            meta["labels"] = labels;
            meta["generateName"] = json!(format!("{name}-{hash}-"));
            meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
            if let Some(m) = meta.as_object_mut() {
                m.remove("name");
                m.remove("namespace");
            }
            let pod = json!({"metadata": meta, "spec": template.get("spec").cloned().unwrap_or(json!({}))});
            match registry::prepare_new(pods_info, ns, pod) {
                Ok(pod) => {
                    let pname = s(&pod, "/metadata/name").to_string();
                    if let Err(e) = store.create(&pods_info.key(ns, &pname), pod) {
                        tracing::debug!(error = %e, deployment = %name, "creating a pod failed; will retry");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, deployment = %name, "deployment template does not make a valid pod");
                    break;
                }
            }
        }
        if current.len() > replicas {
            let mut extra = current.clone();
            // Remove the youngest, not-ready first.
            extra.sort_by_key(|p| {
                (
                    pod_ready(p),
                    std::cmp::Reverse(s(p, "/metadata/creationTimestamp").to_string()),
                )
            });
            for p in extra.iter().take(current.len() - replicas) {
                remove_pod(state, p, None);
            }
        }
        let ready_current = current.iter().filter(|p| pod_ready(p)).count();
        if ready_current >= replicas {
            for p in &old {
                remove_pod(state, p, None);
            }
        }
        let ready = active.iter().filter(|p| pod_ready(p)).count();
        let available = ready >= replicas;
        let mut status = json!({
            "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": active.len(),
            "updatedReplicas": current.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
        });
        if active.len() > ready {
            status["unavailableReplicas"] = json!(active.len() - ready);
        }
        let old_status = d.get("status").cloned().unwrap_or(json!({}));
        let avail_status = if available { "True" } else { "False" };
        let prev_cond = condition(d, "Available");
        let same_cond = prev_cond
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some(avail_status);
        let cond = if same_cond {
            prev_cond.cloned().unwrap_or(json!({}))
        } else {
            json!({"type": "Available", "status": avail_status,
                "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                "message": if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                "lastUpdateTime": time::now_rfc3339(), "lastTransitionTime": time::now_rfc3339()})
        };
        status["conditions"] = json!([cond]);
        let mut cmp_old = old_status.clone();
        let mut cmp_new = status.clone();
        for v in [&mut cmp_old, &mut cmp_new] {
            if let Some(m) = v.as_object_mut() {
                for k in [
                    "readyReplicas",
                    "availableReplicas",
                    "unavailableReplicas",
                    "updatedReplicas",
                    "replicas",
                ] {
                    if m.get(k) == Some(&json!(0)) {
                        m.remove(k);
                    }
                }
            }
        }
        if cmp_old != cmp_new {
            let mut c = (*d).clone();
            c["status"] = status;
            let key = RESOURCES
                .iter()
                .find(|r| r.kind == "Deployment")
                .map(|r| r.key(ns, name))
                .unwrap_or_default();
            let _ = store.update(&key, c, Some(resource_version(d)));
        }
    }
}

fn garbage_collect(state: &State, deployments: &[Value], pods: &[Value]) {
    let live: Vec<&str> = deployments.iter().map(|d| s(d, "/metadata/uid")).collect();
    for p in pods.iter().filter(|p| !is_deleting(p)) {
        let Some(refs) = p
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
        else {
            continue;
        };
        let dangling = refs.iter().any(|r| {
            r.get("kind").and_then(Value::as_str) == Some("Deployment")
                && !live.contains(&r.get("uid").and_then(Value::as_str).unwrap_or(""))
        });
        if dangling {
            remove_pod(state, p, None);
        }
    }
}

fn namespaces(state: &State, namespaces: &[Value]) {
    let store = state.store.as_ref();
    for ns in namespaces.iter().filter(|n| is_deleting(n)) {
        let name = s(ns, "/metadata/name");
        let mut remaining = 0usize;
        for info in RESOURCES.iter().filter(|r| r.namespaced) {
            let Ok((items, _)) = store.list(&info.prefix(name)) else {
                remaining += 1;
                continue;
            };
            for o in &items {
                remaining += 1;
                if info.kind == "Pod" && is_deleting(o) {
                    continue;
                }
                let r = ResourceRequest {
                    info,
                    namespace: name.to_string(),
                    name: s(o, "/metadata/name").to_string(),
                    subresource: String::new(),
                    rest: String::new(),
                };
                if let Err(e) = registry::delete(state, &r, &DeleteOptions::default()) {
                    tracing::debug!(error = %e, namespace = %name, "namespace cleanup raced; will retry");
                }
            }
        }
        if remaining == 0 {
            let _ = store.delete(&resources::core("namespaces").key("", name), None);
        }
    }
}
