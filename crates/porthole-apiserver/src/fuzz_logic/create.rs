//! Fuzz target [`create_object`](super::create_object): create bodies (JSON, YAML, protobuf) for
//! every served kind.
//!
//! One file per target so each invariant reads with its own generator; the shared input
//! helpers are in [`super`].

use http::{header, HeaderMap, HeaderValue};
use serde_json::Value;

use super::{check_stable, resource};
use crate::resources::{self, ResourceInfo};

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/json; charset=utf-8",
];

/// The create path after decoding: kind check, normalise, `prepare_new` (defaults, validation).
pub(super) fn create_from(info: &ResourceInfo, namespace: &str, input: Value) {
    if !input.is_object() {
        return;
    }
    if input
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != info.kind)
    {
        return;
    }
    let _ = resources::normalize(info, input.clone());
    let namespace = if info.namespaced { namespace } else { "" };
    let Ok(obj) = crate::registry::prepare_new(info, namespace, input) else {
        return;
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(!name.is_empty(), "{}: created without a name", info.kind);
    assert!(
        resources::name_errors(info, name, "metadata.name").is_empty(),
        "{}: created with the invalid name {name:?}",
        info.kind
    );
    if info.namespaced {
        assert_eq!(
            obj.pointer("/metadata/namespace").and_then(Value::as_str),
            Some(namespace)
        );
    }
    check_stable(info, &obj);
}

/// A create request body: first byte the resource (low nibble) and content type (bits 4–5),
/// the rest the body. Whatever is decoded goes through the handler's create path; an object
/// that comes out is valid, named by its kind's rule, in the request's namespace, and stable
/// (re-serialised, re-normalised and re-validated, it is the same).
pub fn create_object(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let info = resource(first & 0x0f);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPES[usize::from(first >> 4) % CONTENT_TYPES.len()]),
    );
    let Ok(input) = crate::body::parse_body_as(&headers, body, info.kind) else {
        return;
    };
    let _ = crate::body::body_name(&headers, body, info.kind);
    create_from(info, "default", input);
}
