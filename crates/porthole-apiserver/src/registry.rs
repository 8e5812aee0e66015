//! The registry: object-level operations on the store with Kubernetes' semantics, for the
//! HTTP handlers and for background callers (controllers, endpoints, identity and leader
//! leases, the node tunnel, port-forward) alike, so that no background task calls an HTTP
//! handler. It reads the current object ([`get`]), prepares a new one ([`prepare_new`]),
//! updates with optimistic concurrency ([`update_with`], [`merge_update`]), deletes with
//! Kubernetes' graceful and orphaning rules ([`delete`]) and binds pods ([`bind_pod`]).
//!
//! Every function here is synchronous and may wait for the disk (fsync); async callers go
//! through [`run_blocking`]. The handlers depend on this module, never the reverse.

use http::StatusCode;
use serde_json::{json, Value};

use crate::body::{require_object, with_kind};
use crate::error::ApiError;
use crate::request::ResourceRequest;
use crate::resources::{self, ResourceInfo};
use crate::store::{resource_version, Store};
use crate::time::{later_rfc3339, now_rfc3339};
use crate::State;

/// Run store-bound work without stalling the async workers: on a multi-threaded runtime the
/// worker hands its other tasks off first (`block_in_place`); elsewhere it runs inline.
pub fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Current object or 404.
pub fn get(store: &dyn Store, req: &ResourceRequest) -> Result<Value, ApiError> {
    store
        .get(&req.key())
        .map_err(|e| ApiError::from_store(e, req.target()))?
        .map(|o| with_kind(req.info, o))
        .ok_or_else(|| ApiError::NotFound(req.target()))
}

/// Fill server-set metadata, default, normalise and validate a new object.
pub fn prepare_new(info: &ResourceInfo, namespace: &str, obj: Value) -> Result<Value, ApiError> {
    let mut obj = require_object(obj)?;
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        if let Some(g) = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
        {
            let base: String = g.chars().take(58).collect();
            meta["name"] = json!(format!("{base}{}", random_suffix(5)));
        }
    }
    if info.namespaced {
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => meta["namespace"] = json!(namespace),
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now_rfc3339());
    meta["generation"] = json!(1);
    if let Some(m) = meta.as_object_mut() {
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            m.remove(f);
        }
    }
    if matches!(
        info.kind,
        "Pod" | "Deployment" | "CertificateSigningRequest"
    ) {
        // Status is the system's to write (Kubernetes' PrepareForCreate resets it).
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    let mut obj = resources::normalize(info, obj)?;
    resources::apply_defaults(info, &mut obj);
    resources::validate(info, &obj)?;
    Ok(obj)
}

fn random_suffix(n: usize) -> String {
    // Kubernetes' alphabet for generated names: no vowels, no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Fields the object's request preconditions and metadata must not change on update.
fn carry_metadata(old: &Value, new: &mut Value) {
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
        "generation",
    ] {
        match old.pointer(&format!("/metadata/{f}")) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove(f);
                }
            }
        }
    }
}

/// Build the object to store for an update of `sub` ("" or "status").
pub fn merge_update(info: &ResourceInfo, sub: &str, old: &Value, new: Value) -> Value {
    let has_status = info.subresources.iter().any(|(s, _, _)| *s == "status");
    let mut out = if sub == "status" {
        let mut o = old.clone();
        o["status"] = new.get("status").cloned().unwrap_or(json!({}));
        o
    } else if sub == "approval" {
        // A CSR's approval subresource changes only the conditions (Kubernetes'
        // `csrApprovalStrategy`); the certificate stays the signer's to write.
        let mut o = old.clone();
        if !o.get("status").is_some_and(Value::is_object) {
            o["status"] = json!({});
        }
        o["status"]["conditions"] = new
            .pointer("/status/conditions")
            .cloned()
            .unwrap_or(json!([]));
        o
    } else {
        let mut o = new;
        if !o.get("metadata").is_some_and(Value::is_object) {
            o["metadata"] = json!({});
        }
        carry_metadata(old, &mut o);
        if has_status {
            match old.get("status") {
                Some(s) => o["status"] = s.clone(),
                None => {
                    if let Some(m) = o.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if old.get("spec") != o.get("spec") {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            o["metadata"]["generation"] = json!(g + 1);
        }
        o
    };
    if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    out
}

/// Read-modify-write with optimistic concurrency; `change` maps the current object to the
/// requested new one. Retries internal races when the caller gave no precondition.
pub fn update_with<F>(
    store: &dyn Store,
    req: &ResourceRequest,
    expected: Option<u64>,
    dry_run: bool,
    change: F,
) -> Result<Value, ApiError>
where
    F: Fn(&Value) -> Result<Value, ApiError>,
{
    let info = req.info;
    for _ in 0..5 {
        let current = get(store, req)?;
        let rv = resource_version(&current);
        if expected.is_some_and(|e| e != rv) {
            return Err(ApiError::Conflict(req.target()));
        }
        let requested = require_object(change(&current)?)?;
        let merged = merge_update(info, &req.subresource, &current, requested);
        let mut obj = resources::normalize(info, merged)?;
        resources::apply_defaults(info, &mut obj);
        resources::validate(info, &obj)?;
        if dry_run {
            return Ok(obj);
        }
        match store.update(&req.key(), obj, Some(rv)) {
            Ok(o) => return Ok(with_kind(info, o)),
            Err(crate::store::StoreError::Conflict) if expected.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, req.target())),
        }
    }
    Err(ApiError::Conflict(req.target()))
}

/// Parsed `DeleteOptions` from query and body.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    /// `propagationPolicy` (`Orphan`, `Background`, `Foreground`).
    pub propagation_policy: Option<String>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<u64>,
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
}

/// Delete one object with Kubernetes' semantics: bound pods get a deletionTimestamp and are
/// removed when the node deletes them again with grace 0; namespaces are finalized by the
/// namespace controller; dependents are orphaned or left to garbage collection.
pub fn delete(
    state: &State,
    req: &ResourceRequest,
    opts: &DeleteOptions,
) -> Result<(StatusCode, Value), ApiError> {
    let info = req.info;
    let store = state.store.as_ref();
    let current = get(store, req)?;
    if opts
        .precondition_rv
        .is_some_and(|rv| rv != resource_version(&current))
    {
        return Err(ApiError::Conflict(req.target()));
    }
    if let Some(uid) = &opts.precondition_uid {
        let have = current
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if have != uid {
            return Err(ApiError::PreconditionFailed(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
            )));
        }
    }
    let deleting = current
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    match info.kind {
        "Namespace" => {
            if matches!(req.name.as_str(), "default" | "kube-system" | "kube-public") {
                return Err(ApiError::Forbidden {
                    message: format!(
                        "namespaces \"{}\" is forbidden: this namespace may not be deleted",
                        req.name
                    ),
                    target: req.target(),
                });
            }
            if deleting {
                return Ok((StatusCode::OK, current));
            }
            // Written directly: an update through merge_update would keep the old metadata.
            let mut c = current.clone();
            c["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            c["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            c["status"] = json!({"phase": "Terminating"});
            let stored = store
                .update(&req.key(), c, None)
                .map_err(|e| ApiError::from_store(e, req.target()))?;
            state.kick();
            return Ok((StatusCode::OK, with_kind(info, stored)));
        }
        "Pod" => {
            let bound = current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let phase = current
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            let terminal = matches!(phase, "Succeeded" | "Failed");
            let grace = opts.grace_period_seconds.unwrap_or_else(|| {
                current
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            });
            if bound && !terminal && grace > 0 {
                if deleting {
                    return Ok((StatusCode::OK, current));
                }
                let mut c = current.clone();
                c["metadata"]["deletionTimestamp"] = json!(later_rfc3339(grace));
                c["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                let stored = store
                    .update(&req.key(), c, Some(resource_version(&current)))
                    .map_err(|e| ApiError::from_store(e, req.target()))?;
                return Ok((StatusCode::OK, with_kind(info, stored)));
            }
        }
        _ => {}
    }
    let removed = store
        .delete(&req.key(), None)
        .map_err(|e| ApiError::from_store(e, req.target()))?;
    if opts.propagation_policy.as_deref() == Some("Orphan") {
        orphan_dependents(store, &removed);
    }
    state.kick();
    Ok((StatusCode::OK, with_kind(info, removed)))
}

/// Remove owner references to `owner` from pods in its namespace.
fn orphan_dependents(store: &dyn Store, owner: &Value) {
    let Some(uid) = owner.pointer("/metadata/uid").and_then(Value::as_str) else {
        return;
    };
    let ns = owner
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let pods = resources::core("pods");
    let Ok((items, _)) = store.list(&pods.prefix(ns)) else {
        return;
    };
    for mut p in items {
        let Some(refs) = p
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        let before = refs.len();
        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
        if refs.len() != before {
            let name = p
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let rv = resource_version(&p);
            if let Err(e) = store.update(&pods.key(ns, &name), p, Some(rv)) {
                tracing::debug!(error = %e, pod = %name, "orphaning a dependent raced; GC will retry");
            }
        }
    }
}

/// Set `spec.nodeName` and the PodScheduled condition (scheduler and `pods/binding`).
pub fn bind_pod(
    store: &dyn Store,
    req: &ResourceRequest,
    current: &Value,
    node: &str,
) -> Result<Value, ApiError> {
    let mut c = current.clone();
    c["spec"]["nodeName"] = json!(node);
    let cond =
        json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()});
    match c
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        Some(list) => {
            list.retain(|x| x.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            list.push(cond);
        }
        None => c["status"]["conditions"] = json!([cond]),
    }
    store
        .update(&req.key(), c, Some(resource_version(current)))
        .map_err(|e| ApiError::from_store(e, req.target()))
}
