//! Writes: create, update (PUT) and patch (PATCH) of an object or its `status`/`approval`
//! subresource, with server-side field validation and the four patch types. Preparing and
//! storing the object is the registry's ([`registry::prepare_new`], [`registry::update_with`]).

use http::{header, HeaderMap, Response, StatusCode};
use serde_json::Value;

use crate::body::{object_response, parse_body, parse_body_as, require_object, with_kind};
use crate::error::{ApiError, Target};
use crate::http_util::{Body, Query};
use crate::registry;
use crate::request::ResourceRequest;
use crate::resources;
use crate::store::Store;

/// PUT: replace the object (or its `status`/`approval`), checking the body's name and, when
/// given, its resourceVersion.
pub(super) fn update(
    store: &dyn Store,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let info = req.info;
    let new = require_object(parse_body_as(headers, body, info.kind)?)?;
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
    let obj = registry::update_with(store, req, expected, dry, |_| Ok(new.clone()))?;
    Ok(object_response(StatusCode::OK, info, &obj, headers, query))
}

/// PATCH: apply the patch to the current object (or its `status`/`approval`).
pub(super) fn patch(
    store: &dyn Store,
    req: &ResourceRequest,
    headers: &HeaderMap,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let patch = parse_body(headers, body)?;
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
    let obj = registry::update_with(store, req, expected, dry, |current| {
        apply_patch(&ct, current, &patch)
    })?;
    Ok(object_response(
        StatusCode::OK,
        req.info,
        &obj,
        headers,
        query,
    ))
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

pub(super) fn create(
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
    let obj = registry::prepare_new(info, &req.namespace, input.clone())?;
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

/// Apply a patch of the given Content-Type to a copy of `current`.
pub(super) fn apply_patch(
    content_type: &str,
    current: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
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
