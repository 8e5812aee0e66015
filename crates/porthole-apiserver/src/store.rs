//! Object storage: a narrow trait ([`Store`]) and its embedded implementation on redb.
//!
//! Every write gets the next value of one global, monotonically increasing revision that is
//! written into `metadata.resourceVersion`, exactly like etcd's `mod_revision` backs Kubernetes'
//! resourceVersion. The trait is small on purpose (get, list, create, update, delete, watch from
//! a revision) so a distributed store such as etcd could back several API servers later.
//!
//! Watch history lives in memory (a bounded ring of recent events). A watch from a revision the
//! ring no longer covers — including any revision older than the server's start — is refused with
//! [`StoreError::Gone`], which the API maps to `410 Gone` "too old resource version" so clients
//! re-list, as they do against a compacted etcd.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;

/// Objects by key `resource/namespace/name` (namespace empty for cluster-scoped), JSON bytes.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// Single-row table holding the current revision under key `"revision"`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How many recent events are kept for resuming watches.
const HISTORY_EVENTS: usize = 10_000;

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

/// Storage failures, mapped to HTTP statuses by `error::ApiError::from`.
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
    /// The database failed; the message names the step.
    #[error("storage failure while {step}: {message}")]
    Backend {
        /// What the store was doing.
        step: &'static str,
        /// The underlying error's text.
        message: String,
    },
}

fn backend(step: &'static str) -> impl FnOnce(String) -> StoreError {
    move |message| StoreError::Backend { step, message }
}

/// A started watch: events already in history after the requested revision, then the live feed.
pub struct Watch {
    /// Events after the requested revision that happened before the watch started.
    pub backlog: Vec<Arc<Event>>,
    /// Live events from now on.
    pub live: broadcast::Receiver<Arc<Event>>,
}

/// The narrow storage interface the API handlers and controllers use.
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
    /// Current global revision.
    fn revision(&self) -> u64;
}

struct History {
    events: VecDeque<Arc<Event>>,
    /// Revisions ≤ this are not resumable (server start or dropped from the ring).
    compacted: u64,
    revision: u64,
}

/// [`Store`] on one redb file (`DATA_DIR/store.redb`): crash-safe, single writer process.
pub struct RedbStore {
    db: Database,
    history: Mutex<History>,
    tx: broadcast::Sender<Arc<Event>>,
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

impl RedbStore {
    /// Open (or create) the store under `data_dir`. A second process (or a second server in
    /// this process) on the same directory fails with a message naming the directory.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
        let path: PathBuf = data_dir.join("store.redb");
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => anyhow::bail!(
                "the data dir {} is in use by another porthole apiserver (store {} is locked); \
                 stop that server or pass a different --data-dir",
                data_dir.display(),
                path.display()
            ),
            Err(e) => anyhow::bail!("cannot open store {}: {e}", path.display()),
        };
        let txn = db
            .begin_write()
            .map_err(|e| anyhow::anyhow!("store {}: begin: {e}", path.display()))?;
        let revision = {
            txn.open_table(OBJECTS)
                .map_err(|e| anyhow::anyhow!("store {}: objects table: {e}", path.display()))?;
            let meta = txn
                .open_table(META)
                .map_err(|e| anyhow::anyhow!("store {}: meta table: {e}", path.display()))?;
            let rev = meta
                .get("revision")
                .map_err(|e| anyhow::anyhow!("store {}: read revision: {e}", path.display()))?
                .map(|g| g.value())
                .unwrap_or(0);
            rev
        };
        txn.commit()
            .map_err(|e| anyhow::anyhow!("store {}: commit: {e}", path.display()))?;
        let (tx, _) = broadcast::channel(4096);
        Ok(Self {
            db,
            history: Mutex::new(History {
                events: VecDeque::new(),
                compacted: revision,
                revision,
            }),
            tx,
        })
    }

    /// One write transaction: `f` sees the current object (if any) and returns the new one
    /// (`None` = delete) plus the event kind. Runs under the history lock so revisions and
    /// events are published in order.
    fn write<F>(&self, key: &str, f: F) -> Result<Value, StoreError>
    where
        F: FnOnce(Option<Value>) -> Result<(Option<Value>, EventKind), StoreError>,
    {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self
            .db
            .begin_write()
            .map_err(|e| backend("beginning a write")(e.to_string()))?;
        let revision = history.revision + 1;
        let (result, event) = {
            let mut objects = txn
                .open_table(OBJECTS)
                .map_err(|e| backend("opening objects")(e.to_string()))?;
            let current = match objects
                .get(key)
                .map_err(|e| backend("reading an object")(e.to_string()))?
            {
                Some(g) => Some(
                    serde_json::from_slice::<Value>(g.value())
                        .map_err(|e| backend("decoding a stored object")(e.to_string()))?,
                ),
                None => None,
            };
            let (new, kind) = f(current.clone())?;
            let (object, kind) = match new {
                Some(mut obj) => {
                    set_resource_version(&mut obj, revision);
                    let bytes = serde_json::to_vec(&obj)
                        .map_err(|e| backend("encoding an object")(e.to_string()))?;
                    objects
                        .insert(key, bytes.as_slice())
                        .map_err(|e| backend("writing an object")(e.to_string()))?;
                    (obj, kind)
                }
                None => {
                    objects
                        .remove(key)
                        .map_err(|e| backend("removing an object")(e.to_string()))?;
                    let mut last = current.clone().ok_or(StoreError::NotFound)?;
                    set_resource_version(&mut last, revision);
                    (last, EventKind::Deleted)
                }
            };
            let mut meta = txn
                .open_table(META)
                .map_err(|e| backend("opening meta")(e.to_string()))?;
            meta.insert("revision", revision)
                .map_err(|e| backend("writing the revision")(e.to_string()))?;
            let event = Arc::new(Event {
                kind,
                revision,
                key: key.to_string(),
                object: object.clone(),
                prev: current,
            });
            (object, event)
        };
        txn.commit()
            .map_err(|e| backend("committing")(e.to_string()))?;
        history.revision = revision;
        history.events.push_back(event.clone());
        while history.events.len() > HISTORY_EVENTS {
            if let Some(old) = history.events.pop_front() {
                history.compacted = old.revision;
            }
        }
        // No receivers is normal (nobody watching).
        let _ = self.tx.send(event);
        Ok(result)
    }
}

fn check_expected(current: &Value, expected: Option<u64>) -> Result<(), StoreError> {
    match expected {
        Some(rv) if rv != resource_version(current) => Err(StoreError::Conflict),
        _ => Ok(()),
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| backend("beginning a read")(e.to_string()))?;
        let table = txn
            .open_table(OBJECTS)
            .map_err(|e| backend("opening objects")(e.to_string()))?;
        let Some(g) = table
            .get(key)
            .map_err(|e| backend("reading an object")(e.to_string()))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(g.value())
            .map(Some)
            .map_err(|e| backend("decoding a stored object")(e.to_string()))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StoreError> {
        // Hold the history lock so the revision matches the snapshot exactly.
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self
            .db
            .begin_read()
            .map_err(|e| backend("beginning a read")(e.to_string()))?;
        let revision = history.revision;
        drop(history);
        let table = txn
            .open_table(OBJECTS)
            .map_err(|e| backend("opening objects")(e.to_string()))?;
        let mut out = Vec::new();
        for item in table
            .range(prefix..)
            .map_err(|e| backend("listing objects")(e.to_string()))?
        {
            let (k, v) = item.map_err(|e| backend("listing objects")(e.to_string()))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| backend("decoding a stored object")(e.to_string()))?,
            );
        }
        Ok((out, revision))
    }

    fn create(&self, key: &str, object: Value) -> Result<Value, StoreError> {
        self.write(key, |current| match current {
            Some(_) => Err(StoreError::AlreadyExists),
            None => Ok((Some(object), EventKind::Added)),
        })
    }

    fn update(
        &self,
        key: &str,
        object: Value,
        expected_revision: Option<u64>,
    ) -> Result<Value, StoreError> {
        self.write(key, |current| {
            let current = current.ok_or(StoreError::NotFound)?;
            check_expected(&current, expected_revision)?;
            Ok((Some(object), EventKind::Modified))
        })
    }

    fn delete(&self, key: &str, expected_revision: Option<u64>) -> Result<Value, StoreError> {
        self.write(key, |current| {
            let current = current.ok_or(StoreError::NotFound)?;
            check_expected(&current, expected_revision)?;
            Ok((None, EventKind::Deleted))
        })
    }

    fn watch(&self, revision: u64) -> Result<Watch, StoreError> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.tx.subscribe();
        if revision == 0 || revision >= history.revision {
            return Ok(Watch {
                backlog: Vec::new(),
                live,
            });
        }
        if revision < history.compacted {
            return Err(StoreError::Gone {
                requested: revision,
                oldest: history.compacted,
            });
        }
        let backlog = history
            .events
            .iter()
            .filter(|e| e.revision > revision)
            .cloned()
            .collect();
        Ok(Watch { backlog, live })
    }

    fn revision(&self) -> u64 {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn revisions_survive_reopen_and_conflicts_are_detected() {
        let dir = std::env::temp_dir().join(format!("porthole-store-{}", uuid::Uuid::new_v4()));
        {
            let s = RedbStore::open(&dir).expect("open");
            let a = s
                .create("pods/default/a", json!({"metadata": {"name": "a"}}))
                .expect("create");
            assert_eq!(resource_version(&a), 1);
            assert!(matches!(
                s.create("pods/default/a", json!({})),
                Err(StoreError::AlreadyExists)
            ));
            assert!(matches!(
                s.update("pods/default/a", json!({}), Some(7)),
                Err(StoreError::Conflict)
            ));
            assert!(RedbStore::open(&dir).is_err(), "second open must fail");
            let w = s.watch(0).expect("watch");
            drop(w);
        }
        let s = RedbStore::open(&dir).expect("reopen");
        assert_eq!(s.revision(), 1);
        let (items, rev) = s.list("pods/").expect("list");
        assert_eq!((items.len(), rev), (1, 1));
        assert!(s.watch(0).is_ok());
        let b = s.create("pods/default/b", json!({})).expect("create b");
        assert_eq!(resource_version(&b), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
