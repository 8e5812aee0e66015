//! [`Store`] on one embedded redb file (`DATA_DIR/store.redb`).
//!
//! Every write runs in one redb transaction that also bumps the stored global revision, so
//! revisions survive restarts. Watch history lives in memory ([`History`]): a watch from a
//! revision older than this process's start is [`StoreError::Gone`], and clients re-list, as
//! they do against a compacted etcd.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

use super::history::History;
use super::{resource_version, set_resource_version, Event, EventKind, Store, StoreError, Watch};

/// Objects by key `resource/namespace/name` (namespace empty for cluster-scoped), JSON bytes.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// Single-row table holding the current revision under key `"revision"`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn backend(step: &'static str) -> impl FnOnce(String) -> StoreError {
    move |message| StoreError::Backend { step, message }
}

/// [`Store`] on one redb file (`DATA_DIR/store.redb`): crash-safe, single writer process.
pub struct RedbStore {
    db: Database,
    history: Mutex<History>,
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
        Ok(Self {
            db,
            history: Mutex::new(History::new(revision)),
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
        let revision = history.revision() + 1;
        let (result, event) = {
            let mut objects = txn
                .open_table(OBJECTS)
                .map_err(|e| backend("opening objects")(e.to_string()))?;
            let current = match objects
                .get(key)
                .map_err(|e| backend("reading an object")(e.to_string()))?
            {
                Some(g) => Some(
                    super::decode_value(g.value()).map_err(backend("decoding a stored object"))?,
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
        history.publish(event);
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
        super::decode_value(g.value())
            .map(Some)
            .map_err(backend("decoding a stored object"))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StoreError> {
        // Hold the history lock so the revision matches the snapshot exactly.
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self
            .db
            .begin_read()
            .map_err(|e| backend("beginning a read")(e.to_string()))?;
        let revision = history.revision();
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
            out.push(super::decode_value(v.value()).map_err(backend("decoding a stored object"))?);
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
        history.start_watch(revision).ok_or(StoreError::Gone {
            requested: revision,
            oldest: history.compacted(),
        })
    }

    fn revision(&self) -> u64 {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .revision()
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

    /// Regression (issue 18, fuzz target store_value): a stored value that is JSON but not an
    /// object (a corrupt row, or an etcd value written by something else) is a read error, not
    /// a panic in the readers that index it as an object (`registry::get` adds `kind`).
    #[test]
    fn stored_non_objects_are_read_errors() {
        let dir = std::env::temp_dir().join(format!("porthole-store-{}", uuid::Uuid::new_v4()));
        let s = RedbStore::open(&dir).expect("open");
        for (i, raw) in [
            &b"[1]"[..],
            b"7",
            b"\"x\"",
            b"null",
            b"true",
            b"{\"metadata\":[]}",
        ]
        .iter()
        .enumerate()
        {
            let key = format!("pods/default/p{i}");
            let txn = s.db.begin_write().expect("begin");
            txn.open_table(OBJECTS)
                .expect("table")
                .insert(key.as_str(), *raw)
                .expect("insert");
            txn.commit().expect("commit");
            assert!(
                matches!(s.get(&key), Err(StoreError::Backend { .. })),
                "{raw:?} read back as an object"
            );
            let req = crate::request::ResourceRequest {
                info: crate::resources::core("pods"),
                namespace: "default".into(),
                name: format!("p{i}"),
                subresource: String::new(),
                rest: String::new(),
            };
            assert!(crate::registry::get(&s, &req).is_err());
        }
        assert!(s.list("pods/").is_err());
        assert!(super::super::decode_value(b"{\"a\":1}").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
