//! The resource handlers: get, list, watch, create, update, patch,
//! delete, deletecollection and the `status`, `scale`, `binding` subresources.
//!
//! Objects travel as `serde_json::Value` between the store and the wire, but every write goes
//! through the kind's `k8s-openapi` type (`resources::normalize`), so what is stored and
//! served always has Kubernetes' shape.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::{ApiError, Target};
use crate::http_util::{json_response, Body, Query};
use crate::request::ResourceRequest;
use crate::resources::{self, ResourceInfo};
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{resource_version, EventKind, Store};
use crate::table;
use crate::State;

/// Largest request body accepted (Kubernetes' limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Read a body up to [`MAX_BODY_BYTES`].
pub async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge(format!(
            "Request entity too large: limit is {MAX_BODY_BYTES}"
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    parse_body_as(headers, body, "")
}

/// Decode a request body; `kind` selects the protobuf schema for typed-client bodies.
pub(crate) fn parse_body_as(
    headers: &HeaderMap,
    body: &[u8],
    kind: &str,
) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.starts_with("application/vnd.kubernetes.protobuf") && !kind.is_empty() {
        return crate::protobuf::decode(body, kind).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body of the request could not be decoded as protobuf: {e}"
            ))
        });
    }
    if ct.contains("protobuf") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct})"
        )));
    }
    let v: Value = if ct.contains("yaml") {
        serde_yaml::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body of the request could not be decoded as YAML: {e}"
            ))
        })?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })?
    };
    if !v.is_object() && !v.is_array() {
        return Err(ApiError::BadRequest(
            "the body of the request must be a JSON object".into(),
        ));
    }
    Ok(v)
}

/// `metadata.name` of a request body, if it decodes (for checks before the handler).
pub fn body_name(headers: &HeaderMap, body: &[u8], kind: &str) -> Option<String> {
    parse_body_as(headers, body, kind)
        .ok()?
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A body that must be one object (create, update, options), not a patch list.
fn require_object(v: Value) -> Result<Value, ApiError> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::BadRequest(
            "the body of the request must be a JSON object, not a list".into(),
        ))
    }
}

/// RFC 3339 "now" with second precision, as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// RFC 3339 time `secs` from now.
pub fn later_rfc3339(secs: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
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

/// Answer an object, or a Table of it when the client asked for one.
fn object_response(
    code: StatusCode,
    info: &ResourceInfo,
    obj: &Value,
    headers: &HeaderMap,
    query: &Query,
) -> Response<Body> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if table::wants_table(accept) {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let t = table::table(
            info,
            std::slice::from_ref(obj),
            rv,
            query.get("includeObject"),
            true,
        );
        return json_response(code, &t);
    }
    json_response(code, obj)
}

/// Options that select objects in list, watch and deletecollection.
struct Selection {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selection {
    fn from_query(info: &ResourceInfo, query: &Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(ApiError::BadRequest)?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), info.kind)
            .map_err(ApiError::BadRequest)?;
        Ok(Self { labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels
            .matches(obj.pointer("/metadata/labels").unwrap_or(&Value::Null))
            && self.fields.matches(obj)
    }
}

fn with_kind(info: &ResourceInfo, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(info.api_version());
    obj["kind"] = json!(info.kind);
    obj
}

/// Dispatch a resource request whose caller is already authorized. Synchronous: store
/// writes wait for the disk (fsync), so callers run it through [`run_blocking`].
pub fn handle(
    state: &Arc<State>,
    req: &ResourceRequest,
    method: &Method,
    headers: &HeaderMap,
    query: &Query,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let info = req.info;
    let store = state.store.as_ref();
    if info.namespaced && req.namespace.is_empty() && !req.name.is_empty() {
        return Err(ApiError::NoRoute);
    }
    match (req.subresource.as_str(), method.clone()) {
        ("", Method::GET) if req.name.is_empty() => {
            if query.flag("watch") {
                watch(state, req, headers, query)
            } else {
                list(store, req, headers, query)
            }
        }
        ("" | "status" | "approval", Method::GET) => {
            let obj = get(store, req)?;
            Ok(object_response(StatusCode::OK, info, &obj, headers, query))
        }
        ("", Method::POST) if req.name.is_empty() => create(store, req, headers, query, &body),
        ("" | "status" | "approval", Method::PUT) => {
            let new = require_object(parse_body_as(headers, &body, info.kind)?)?;
            let body_name = new
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if body_name != req.name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({})",
                    req.name
                )));
            }
            let expected = new
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(|s| {
                    s.parse::<u64>()
                        .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {s:?}")))
                })
                .transpose()?;
            let dry = query.get("dryRun").is_some();
            let obj = update_with(store, req, expected, dry, |_| Ok(new.clone()))?;
            Ok(object_response(StatusCode::OK, info, &obj, headers, query))
        }
        ("" | "status" | "approval", Method::PATCH) => {
            let patch = parse_body(headers, &body)?;
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let expected = patch
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<u64>().ok());
            let dry = query.get("dryRun").is_some();
            let obj = update_with(store, req, expected, dry, |current| {
                apply_patch(&ct, current, &patch)
            })?;
            Ok(object_response(StatusCode::OK, info, &obj, headers, query))
        }
        ("", Method::DELETE) if req.name.is_empty() => deletecollection(state, req, query),
        ("", Method::DELETE) => {
            let opts = delete_options(headers, query, &body)?;
            let (code, obj) = delete(state, req, &opts)?;
            Ok(json_response(code, &obj))
        }
        ("scale", m) => scale(store, req, &m, headers, &body),
        ("binding", Method::POST) => binding(store, req, headers, &body),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

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

fn list(
    store: &dyn Store,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let info = req.info;
    let sel = Selection::from_query(info, query)?;
    let (items, rev) = store
        .list(&info.prefix(&req.namespace))
        .map_err(|e| ApiError::from_store(e, req.target()))?;
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| sel.matches(o))
        .map(|o| with_kind(info, o))
        .collect();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if table::wants_table(accept) {
        let t = table::table(
            info,
            &items,
            &rev.to_string(),
            query.get("includeObject"),
            true,
        );
        return Ok(json_response(StatusCode::OK, &t));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": rev.to_string()},
            "items": items,
        }),
    ))
}

fn watch(
    state: &Arc<State>,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let info = req.info;
    let sel = Selection::from_query(info, query)?;
    let store = state.store.clone();
    let rv_param = query.get("resourceVersion").unwrap_or("");
    let from: u64 = match rv_param {
        "" | "0" => 0,
        s => s
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {s:?}")))?,
    };
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let as_table = table::wants_table(accept);
    let include_object = query.get("includeObject").map(str::to_string);
    let prefix = info.prefix(&req.namespace);

    // Start the store watch first so nothing between the list and the watch is missed.
    let (initial, start_rev, mut w) = if from == 0 || send_initial {
        let w = store
            .watch(0)
            .map_err(|e| ApiError::from_store(e, req.target()))?;
        let (items, rev) = store
            .list(&prefix)
            .map_err(|e| ApiError::from_store(e, req.target()))?;
        (Some(items), rev, w)
    } else {
        let w = store
            .watch(from)
            .map_err(|e| ApiError::from_store(e, req.target()))?;
        (None, from, w)
    };

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let shutdown = state.shutdown.clone();
    state.tasks.spawn(async move {
        let mut first_table = true;
        let mut encode = |kind: &str, obj: &Value| -> Bytes {
            let object = if as_table && kind != "BOOKMARK" && kind != "ERROR" {
                let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
                let t = table::table(info, std::slice::from_ref(obj), rv, include_object.as_deref(), first_table);
                first_table = false;
                t
            } else {
                obj.clone()
            };
            // Written by hand to keep Kubernetes' field order (`type` first).
            let mut line = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
            line.extend(serde_json::to_vec(&object).unwrap_or_default());
            line.extend_from_slice(b"}\n");
            Bytes::from(line)
        };
        let mut last_rev = start_rev;
        if let Some(items) = initial {
            for o in items.into_iter().filter(|o| sel.matches(o)) {
                if tx.send(encode("ADDED", &with_kind(info, o))).await.is_err() {
                    return;
                }
            }
            if send_initial {
                let bm = json!({"kind": info.kind, "apiVersion": info.api_version(),
                    "metadata": {"resourceVersion": start_rev.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}});
                if tx.send(encode("BOOKMARK", &bm)).await.is_err() {
                    return;
                }
            }
        }
        let backlog = std::mem::take(&mut w.backlog);
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut bookmark_tick = tokio::time::interval(Duration::from_secs(30));
        bookmark_tick.tick().await;
        let mut pending = backlog.into_iter();
        loop {
            let ev = if let Some(ev) = pending.next() {
                ev
            } else {
                tokio::select! {
                    r = w.live.recv() => match r {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let (_, st) = ApiError::Gone(format!("too old resource version: {last_rev}")).status();
                            let _ = tx.send(encode("ERROR", &st)).await;
                            return;
                        }
                        Err(_) => return,
                    },
                    _ = &mut deadline => return,
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = bookmark_tick.tick(), if bookmarks => {
                        let bm = json!({"kind": info.kind, "apiVersion": info.api_version(),
                            "metadata": {"resourceVersion": last_rev.to_string()}});
                        if tx.send(encode("BOOKMARK", &bm)).await.is_err() { return; }
                        continue;
                    }
                }
            };
            if ev.revision <= start_rev || !ev.key.starts_with(&prefix) {
                continue;
            }
            last_rev = ev.revision;
            let now = sel.matches(&ev.object);
            let before = ev.prev.as_ref().is_some_and(|p| sel.matches(p));
            let kind = match ev.kind {
                EventKind::Added if now => "ADDED",
                EventKind::Modified if now && before => "MODIFIED",
                EventKind::Modified if now => "ADDED",
                EventKind::Modified if before => "DELETED",
                EventKind::Deleted if before || now => "DELETED",
                _ => continue,
            };
            if tx.send(encode(kind, &with_kind(info, ev.object.clone()))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(hyper::body::Frame::data(b)), rx))
    });
    let mut resp = Response::new(http_body_util::BodyExt::boxed(
        http_body_util::StreamBody::new(stream),
    ));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

fn namespace_check(store: &dyn Store, ns: &str) -> Result<(), ApiError> {
    let key = resources::core("namespaces").key("", ns);
    let target = Target {
        group: String::new(),
        resource: "namespaces".into(),
        name: ns.into(),
    };
    match store
        .get(&key)
        .map_err(|e| ApiError::from_store(e, target.clone()))?
    {
        None => Err(ApiError::NotFound(target)),
        Some(n)
            if n.pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null()) =>
        {
            Err(ApiError::Forbidden {
                message: format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
                target,
            })
        }
        Some(_) => Ok(()),
    }
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

fn create(
    store: &dyn Store,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let info = req.info;
    let input = require_object(parse_body_as(headers, body, info.kind)?)?;
    if let Some(k) = input.get("kind").and_then(Value::as_str) {
        if k != info.kind {
            return Err(ApiError::BadRequest(format!(
                "the server could not handle a {k} at the {} endpoint",
                info.plural
            )));
        }
    }
    if info.namespaced {
        namespace_check(store, &req.namespace)?;
    }
    check_field_validation(query, &input, &resources::normalize(info, input.clone())?)?;
    let obj = prepare_new(info, &req.namespace, input.clone())?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let target = Target {
        name: name.clone(),
        ..req.target()
    };
    if query.get("dryRun").is_some() {
        return Ok(object_response(
            StatusCode::CREATED,
            info,
            &obj,
            headers,
            query,
        ));
    }
    let stored = store
        .create(&info.key(&req.namespace, &name), obj)
        .map_err(|e| ApiError::from_store(e, target))?;
    Ok(object_response(
        StatusCode::CREATED,
        info,
        &with_kind(info, stored),
        headers,
        query,
    ))
}

/// Collect fields of `input` that did not survive normalisation (unknown fields).
fn unknown_fields(input: &Value, normalized: &Value, path: &str, out: &mut Vec<String>) {
    match (input, normalized) {
        (Value::Object(i), Value::Object(n)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match n.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(nv) => unknown_fields(v, nv, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(n)) => {
            for (idx, (a, b)) in i.iter().zip(n).enumerate() {
                unknown_fields(a, b, &format!("{path}[{idx}]"), out);
            }
        }
        _ => {}
    }
}

/// Server-side field validation (`fieldValidation=Strict` → 400 on unknown fields).
fn check_field_validation(query: &Query, input: &Value, obj: &Value) -> Result<(), ApiError> {
    if query.get("fieldValidation") != Some("Strict") {
        return Ok(());
    }
    let mut unknown = Vec::new();
    unknown_fields(input, obj, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::BadRequest(format!(
        "strict decoding error: {}",
        list.join(", ")
    )))
}

fn apply_patch(content_type: &str, current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    let ct = content_type.split(';').next().unwrap_or("").trim();
    match ct {
        "application/merge-patch+json" => crate::patch::merge_patch(&mut doc, patch),
        "application/strategic-merge-patch+json" => crate::patch::strategic_merge_patch(&mut doc, patch),
        "application/json-patch+json" => crate::patch::json_patch(&mut doc, patch)
            .map_err(|e| ApiError::Invalid {
                kind: current.get("kind").and_then(Value::as_str).unwrap_or("").into(),
                name: current.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").into(),
                causes: vec![crate::error::Cause { reason: "FieldValueInvalid", message: e, field: "patch".into() }],
            })?,
        "application/apply-patch+yaml" => {
            // Server-side apply without field managers: treat the applied config as a merge.
            crate::patch::strategic_merge_patch(&mut doc, patch)
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            )))
        }
    }
    Ok(doc)
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

fn delete_options(
    headers: &HeaderMap,
    query: &Query,
    body: &[u8],
) -> Result<DeleteOptions, ApiError> {
    let mut o = DeleteOptions {
        grace_period_seconds: query.get("gracePeriodSeconds").and_then(|s| s.parse().ok()),
        propagation_policy: query.get("propagationPolicy").map(str::to_string),
        precondition_rv: None,
        precondition_uid: None,
    };
    if !body.is_empty() {
        let v = parse_body(headers, body)?;
        if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
            o.grace_period_seconds = Some(g);
        }
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            o.propagation_policy = Some(p.to_string());
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            o.propagation_policy = Some("Orphan".into());
        }
        o.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        o.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    Ok(o)
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

fn deletecollection(
    state: &State,
    req: &ResourceRequest,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let info = req.info;
    let sel = Selection::from_query(info, query)?;
    let (items, _) = state
        .store
        .list(&info.prefix(&req.namespace))
        .map_err(|e| ApiError::from_store(e, req.target()))?;
    let opts = DeleteOptions {
        grace_period_seconds: query.get("gracePeriodSeconds").and_then(|s| s.parse().ok()),
        propagation_policy: query.get("propagationPolicy").map(str::to_string),
        precondition_rv: None,
        precondition_uid: None,
    };
    let mut deleted = Vec::new();
    for o in items.into_iter().filter(|o| sel.matches(o)) {
        let r = ResourceRequest {
            namespace: o
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            name: o
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            ..req.clone()
        };
        match delete(state, &r, &opts) {
            Ok((_, obj)) => deleted.push(obj),
            Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(),
                "metadata": {"resourceVersion": state.store.revision().to_string()}, "items": deleted}),
    ))
}

fn scale_of(dep: &Value) -> Value {
    let sel = dep
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            let mut v: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            v.sort();
            v.join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": dep.pointer("/metadata/name"),
            "namespace": dep.pointer("/metadata/namespace"),
            "uid": dep.pointer("/metadata/uid"),
            "resourceVersion": dep.pointer("/metadata/resourceVersion"),
            "creationTimestamp": dep.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": dep.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": dep.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": sel},
    })
}

fn scale(
    store: &dyn Store,
    req: &ResourceRequest,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let main = ResourceRequest {
        subresource: String::new(),
        ..req.clone()
    };
    match *method {
        Method::GET => Ok(json_response(
            StatusCode::OK,
            &scale_of(&get(store, &main)?),
        )),
        Method::PUT | Method::PATCH => {
            let input = parse_body(headers, body)?;
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let is_put = *method == Method::PUT;
            let dep = update_with(store, &main, None, false, |current| {
                let s = if is_put {
                    input.clone()
                } else {
                    apply_patch(&ct, &scale_of(current), &input)?
                };
                let replicas = s
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| {
                        ApiError::BadRequest("spec.replicas is required in a Scale".into())
                    })?;
                if replicas < 0 {
                    return Err(ApiError::Invalid {
                        kind: "Scale".into(),
                        name: req.name.clone(),
                        causes: vec![crate::error::Cause {
                            reason: "FieldValueInvalid",
                            message: format!(
                                "Invalid value: {replicas}: must be greater than or equal to 0"
                            ),
                            field: "spec.replicas".into(),
                        }],
                    });
                }
                let mut c = current.clone();
                c["spec"]["replicas"] = json!(replicas);
                Ok(c)
            })?;
            Ok(json_response(StatusCode::OK, &scale_of(&dep)))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn binding(
    store: &dyn Store,
    req: &ResourceRequest,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let b = parse_body(headers, body)?;
    let node = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("a Binding needs target.name".into()))?
        .to_string();
    let main = ResourceRequest {
        subresource: String::new(),
        ..req.clone()
    };
    let current = get(store, &main)?;
    if current
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return Err(ApiError::Conflict(req.target()));
    }
    bind_pod(store, &main, &current, &node)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
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
