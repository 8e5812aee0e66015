//! Request bodies and object responses shared by the HTTP handlers and the pre-handler checks
//! in `lib.rs` and `csr`: reading a body under Kubernetes' size limit, decoding JSON, YAML or
//! protobuf, and answering an object (or a Table of it) with its `apiVersion` and `kind`.

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::http_util::{json_response, Body, Query};
use crate::resources::ResourceInfo;
use crate::table;

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

pub(crate) fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
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
pub(crate) fn require_object(v: Value) -> Result<Value, ApiError> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::BadRequest(
            "the body of the request must be a JSON object, not a list".into(),
        ))
    }
}

/// Answer an object, or a Table of it when the client asked for one.
pub(crate) fn object_response(
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

/// Stamp the resource's `apiVersion` and `kind` on an object read from the store.
pub(crate) fn with_kind(info: &ResourceInfo, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(info.api_version());
    obj["kind"] = json!(info.kind);
    obj
}
