//! The `scale` subresource of deployments (an `autoscaling/v1` Scale view of
//! `spec.replicas`) and the `binding` subresource of pods (how a scheduler assigns a node).

use http::{header, HeaderMap, Method, Response, StatusCode};
use serde_json::{json, Value};

use super::write::apply_patch;
use crate::body::parse_body;
use crate::error::ApiError;
use crate::http_util::{json_response, Body};
use crate::registry;
use crate::request::ResourceRequest;
use crate::store::Store;

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

pub(super) fn scale(
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
            &scale_of(&registry::get(store, &main)?),
        )),
        Method::PUT | Method::PATCH => {
            let input = parse_body(headers, body)?;
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let is_put = *method == Method::PUT;
            let dep = registry::update_with(store, &main, None, false, |current| {
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

pub(super) fn binding(
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
    let current = registry::get(store, &main)?;
    if current
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return Err(ApiError::Conflict(req.target()));
    }
    registry::bind_pod(store, &main, &current, &node)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
