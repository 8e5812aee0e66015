//! Object storage: one narrow trait ([`Store`]) and its two backends.
//!
//! - [`RedbStore`]: an embedded redb file, the default of `porthole up` and of one API server
//!   (k3s' model: embedded by default).
//! - [`EtcdStore`]: etcd v3, for several API servers sharing one cluster state, as
//!   kube-apiserver does.
//!
//! Both follow Kubernetes' storage semantics, and `tests/apiserver/store_conformance.rs` runs one
//! suite against both:
//! - every write gets the next value of one global, monotonically increasing revision, which
//!   is `metadata.resourceVersion` (etcd's `mod_revision`);
//! - a list is consistent at one revision and says which;
//! - create, update and delete are compare-and-swap: `AlreadyExists`, `Conflict` and `NotFound`
//!   are decided atomically by the backend, so two API servers racing on one object get one
//!   success and one conflict, never a lost update;
//! - a watch resumes from any revision the backend still has history for, and answers
//!   [`StoreError::Gone`] (HTTP 410, reason `Expired`) for one it has not, so clients re-list.
//!
//! Keys are `resource/namespace/name` (namespace empty for cluster-scoped objects); values are
//! JSON objects.

mod etcd;
mod history;
mod redb;

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

pub use self::etcd::{EtcdConfig, EtcdStore};
pub use self::redb::RedbStore;

/// What kind of change an [`Event`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created.
    Added,
    /// The key was updated.
    Modified,
    /// The key was removed.
    Deleted,
}

/// One change to one key, in revision order.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Revision of this change.
    pub revision: u64,
    /// Key of the object.
    pub key: String,
    /// Object after the change (for `Deleted`: the last state, with the deletion's revision).
    pub object: Value,
    /// Object before the change (absent for `Added`), so selector watches can see transitions.
    pub prev: Option<Value>,
}

/// Storage failures, mapped to HTTP statuses by `error::ApiError::from_store`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of a key that exists.
    #[error("object already exists")]
    AlreadyExists,
    /// Get/update/delete of a key that does not exist.
    #[error("object not found")]
    NotFound,
    /// Update or delete with a stale expected revision.
    #[error("the object has been modified; please apply your changes to the latest version and try again")]
    Conflict,
    /// Watch from a revision outside the kept history.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// Revision asked for.
        requested: u64,
        /// Oldest revision still resumable.
        oldest: u64,
    },
    /// The store cannot be reached right now (etcd down or partitioned away); the request may
    /// succeed later. Maps to 503 so clients and load balancers retry elsewhere.
    #[error("the storage backend is unavailable while {step}: {message}")]
    Unavailable {
        /// What the store was doing.
        step: &'static str,
        /// What failed, naming the endpoint and what to check.
        message: String,
    },
    /// The database failed; the message names the step.
    #[error("storage failure while {step}: {message}")]
    Backend {
        /// What the store was doing.
        step: &'static str,
        /// The underlying error's text.
        message: String,
    },
}

/// A started watch: events already in history after the requested revision, then the live feed.
///
/// Consumers skip events at or below the revision they asked for: a backend may deliver a
/// few of those on `live` when its feed runs behind the revision a list returned.
pub struct Watch {
    /// Events after the requested revision that happened before the watch started.
    pub backlog: Vec<Arc<Event>>,
    /// Live events from now on. `Closed` means the feed broke (the backend lost its history):
    /// the consumer ends its watch and the client re-lists.
    pub live: broadcast::Receiver<Arc<Event>>,
}

/// The narrow storage interface the API handlers and controllers use.
///
/// Methods block (a disk fsync for redb, a network round trip for etcd): handlers call them
/// through `registry::run_blocking`.
pub trait Store: Send + Sync + 'static {
    /// Current object at `key`.
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError>;
    /// All objects whose key starts with `prefix`, with the revision the list is consistent at.
    fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StoreError>;
    /// Store a new object; fails with `AlreadyExists`. Returns it with its resourceVersion set.
    fn create(&self, key: &str, object: Value) -> Result<Value, StoreError>;
    /// Replace an existing object. With `expected_revision`, fails with `Conflict` when stale.
    fn update(
        &self,
        key: &str,
        object: Value,
        expected_revision: Option<u64>,
    ) -> Result<Value, StoreError>;
    /// Remove an object, returning its last state.
    fn delete(&self, key: &str, expected_revision: Option<u64>) -> Result<Value, StoreError>;
    /// Events after `revision` (0 = from now) and the live feed.
    fn watch(&self, revision: u64) -> Result<Watch, StoreError>;
    /// The newest revision this server has seen.
    fn revision(&self) -> u64;
}

/// Decode a stored value (an etcd value or a redb row): a JSON object whose `metadata`, if
/// any, is an object too, or an error. Anything else (an array, a number, a string) is refused
/// here, as every reader of stored objects indexes them as objects (`obj["kind"] = ...` panics
/// on a non-object), and an object without a settable `metadata.resourceVersion` could never
/// be updated (every write would conflict).
pub fn decode_value(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err(format!(
            "not a JSON object but {}",
            match v {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        ));
    }
    if v.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err("metadata is not a JSON object".into());
    }
    Ok(v)
}

/// Set `metadata.resourceVersion` on a JSON object.
pub fn set_resource_version(object: &mut Value, revision: u64) {
    if let Some(obj) = object.as_object_mut() {
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(
                "resourceVersion".into(),
                Value::String(revision.to_string()),
            );
        }
    }
}

/// `metadata.resourceVersion` as a number (0 when absent or unparsable).
pub fn resource_version(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
