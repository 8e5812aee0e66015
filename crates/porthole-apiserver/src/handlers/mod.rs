//! The HTTP resource handlers, one file per concern in the manner of mini-redis' `cmd/`:
//!
//! | file | what it answers |
//! |---|---|
//! | `mod.rs` | [`handle`]: dispatch by method and subresource; the selectors list, watch and deletecollection share |
//! | `read.rs` | get, list, watch (also of `status` and `approval`) |
//! | `write.rs` | create, update, patch (also of `status` and `approval`): field validation, patch types |
//! | `delete.rs` | delete (DeleteOptions from query and body), deletecollection |
//! | `subresources.rs` | `scale` and `binding` |
//!
//! Objects travel as `serde_json::Value` between the store and the wire, but every write goes
//! through the kind's `k8s-openapi` type (`resources::normalize`), so what is stored and
//! served always has Kubernetes' shape. The object-level semantics (preparing a new object,
//! read-modify-write, graceful deletion, binding) live in [`crate::registry`], which
//! background callers use too; the handlers add what is HTTP: bodies, query options and
//! responses.

mod delete;
mod read;
mod subresources;
mod write;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use serde_json::Value;

use crate::error::ApiError;
use crate::http_util::{Body, Query};
use crate::request::ResourceRequest;
use crate::resources::ResourceInfo;
use crate::select::{FieldSelector, LabelSelector};
use crate::State;

/// Dispatch a resource request whose caller is already authorized. Synchronous: store
/// writes wait for the disk (fsync), so callers run it through
/// [`crate::registry::run_blocking`].
pub(crate) fn handle(
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
                read::watch(state, req, headers, query)
            } else {
                read::list(store, req, headers, query)
            }
        }
        ("" | "status" | "approval", Method::GET) => read::get(store, req, headers, query),
        ("", Method::POST) if req.name.is_empty() => {
            write::create(store, req, headers, query, &body)
        }
        ("" | "status" | "approval", Method::PUT) => {
            write::update(store, req, headers, query, &body)
        }
        ("" | "status" | "approval", Method::PATCH) => {
            write::patch(store, req, headers, query, &body)
        }
        ("", Method::DELETE) if req.name.is_empty() => delete::deletecollection(state, req, query),
        ("", Method::DELETE) => delete::delete(state, req, headers, query, &body),
        ("scale", m) => subresources::scale(store, req, &m, headers, &body),
        ("binding", Method::POST) => subresources::binding(store, req, headers, &body),
        _ => Err(ApiError::MethodNotAllowed),
    }
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
