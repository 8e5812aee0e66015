//! Deletes over HTTP: one object with `DeleteOptions` from the query and the body, and
//! deletecollection over the objects a selector picks. What deleting means (graceful pod
//! deletion, namespace finalization, orphaning dependents) is [`registry::delete`]'s.

use http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Value};

use super::Selection;
use crate::body::parse_body;
use crate::error::ApiError;
use crate::http_util::{json_response, Body, Query};
use crate::registry::{self, DeleteOptions};
use crate::request::ResourceRequest;
use crate::State;

/// DELETE of one object.
pub(super) fn delete(
    state: &State,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let opts = delete_options(headers, query, body)?;
    let (code, obj) = registry::delete(state, req, &opts)?;
    Ok(json_response(code, &obj))
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

pub(super) fn deletecollection(
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
        match registry::delete(state, &r, &opts) {
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
