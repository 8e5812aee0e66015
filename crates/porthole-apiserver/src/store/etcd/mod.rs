//! [`Store`] on etcd v3, so several API servers share one cluster state (kube-apiserver's
//! model).
//!
//! - **Keys and values.** Store key `pods/default/web` is etcd key `PREFIX/pods/default/web`
//!   (`--etcd-prefix`, default `/registry`). Values are the JSON objects without
//!   `metadata.resourceVersion`: the resourceVersion is the key's `mod_revision`, set on every
//!   read, so it can never disagree with etcd.
//! - **Writes** are single transactions that compare the key's revision (`create_revision == 0`
//!   for create, `mod_revision == expected` for a conditional update or delete, `version > 0`
//!   otherwise), so two API servers racing on one object get one success and one `Conflict`.
//! - **Lists** page through one range at a pinned revision, so a list is consistent at one
//!   revision however many pages it takes.
//! - **Watches.** One prefix watch per server feeds the shared [`History`] ring, which serves
//!   every watch from a recent revision (including writes made through other servers). A watch
//!   from a revision older than the ring gets an etcd watch of its own from that revision, or
//!   [`StoreError::Gone`] when etcd has compacted it.
//!
//! The [`Store`] trait is synchronous (handlers call it inside `block_in_place`, authorization
//! calls it inline), while the etcd client is async. The client therefore lives on a small
//! runtime of its own, and each call hands its future over and waits on a channel. That works
//! from any thread, inside or outside another runtime. Each attempt of a call is bounded by the
//! request timeout and a call by three of them: a dead or partitioned etcd gives
//! [`StoreError::Unavailable`] (503) in bounded time, and an etcd electing a new leader gives
//! nothing but a slower answer (see [`EtcdStore::call`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use serde_json::Value;
use tokio::runtime::Handle;

use super::history::History;
use super::{set_resource_version, Store, StoreError, Watch};

mod members;
mod tls;
mod watch;

use members::{Members, Shared, NOT_SENT, TIMED_OUT};
use tls::{connect_failure, tls_options};
use watch::{compact_periodically, follow, watch_from};

/// How many attempts of one call may fail with etcd unavailable (other than refusing the
/// connection) before the call fails (see [`EtcdStore::call`]).
const UNCERTAIN_ATTEMPTS: usize = 3;
/// The pause before trying again after an immediate failure, times the attempt's number.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Objects fetched per range request of a list.
const LIST_PAGE: i64 = 500;

/// Where etcd is and how to reach it (kube-apiserver's flags).
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `--etcd-servers`: `http://HOST:PORT` or `https://HOST:PORT`, one or more.
    pub endpoints: Vec<String>,
    /// `--etcd-prefix`: every key lives under it.
    pub prefix: String,
    /// `--etcd-cafile`: CA bundle that signed etcd's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// `--etcd-certfile`: client certificate for etcd.
    pub cert_file: Option<PathBuf>,
    /// `--etcd-keyfile`: key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// How long one store call may take before it fails as unavailable.
    pub request_timeout: Duration,
    /// `--etcd-compaction-interval`: how often history older than one interval is compacted
    /// (`None`: never, e.g. when etcd's own `--auto-compaction-retention` does it).
    pub compaction_interval: Option<Duration>,
}

impl EtcdConfig {
    /// Defaults for everything but the endpoints.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "/registry".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            request_timeout: Duration::from_secs(5),
            compaction_interval: Some(Duration::from_secs(300)),
        }
    }
}

/// [`Store`] on etcd v3. See the module docs.
pub struct EtcdStore {
    shared: Arc<Shared>,
    handle: Handle,
    /// Owned so that dropping the store stops its tasks; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Shutting down in the background is the one way that is allowed from async code,
        // where the API server drops its state.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Run `fut` on `handle`'s runtime and wait for it from this thread, whatever runtime (if
/// any) this thread belongs to. `None` when that runtime has shut down.
fn wait_on<T: Send + 'static>(
    handle: &Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

impl EtcdStore {
    /// Connect, check that etcd answers, and start following it. Fails with a message naming
    /// the endpoints when etcd cannot be reached or the TLS files cannot be read.
    pub fn connect(cfg: &EtcdConfig) -> anyhow::Result<EtcdStore> {
        if cfg.endpoints.is_empty() {
            anyhow::bail!(
                "--etcd-servers is empty: give at least one URL such as http://127.0.0.1:2379"
            );
        }
        let endpoints = cfg.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(cfg.request_timeout)
            .with_timeout(cfg.request_timeout)
            // A partition leaves the TCP connection open and silent: HTTP/2 pings find out.
            .with_keep_alive(Duration::from_secs(5), cfg.request_timeout)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls_options(cfg)? {
            options = options.with_tls(tls);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("porthole-etcd")
            .enable_all()
            .build()
            .context("start the etcd client's runtime")?;
        let handle = runtime.handle().clone();
        let prefix = format!("{}/", cfg.prefix.trim_end_matches('/'));
        let list_key = prefix.clone();
        let urls = cfg.endpoints.clone();
        let timeout = cfg.request_timeout;
        let connected = wait_on(&handle, async move {
            tokio::time::timeout(timeout * 2, async move {
                let mut clients = Vec::new();
                for url in &urls {
                    // Lazy: a member that is down now is connected when it is first used.
                    let client = Client::connect([url], Some(options.clone())).await?;
                    clients.push((url.clone(), client));
                }
                // Start on the first member that answers.
                let mut last = None;
                for (i, (_, client)) in clients.iter().enumerate() {
                    let probe = client
                        .kv_client()
                        .get(
                            list_key.clone(),
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        )
                        .await;
                    match probe {
                        Ok(resp) => {
                            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                            let members = Members {
                                clients,
                                current: AtomicUsize::new(i),
                            };
                            return Ok::<_, etcd_client::Error>((members, revision));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last
                    .unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoints".into())))
            })
            .await
        });
        let failure = match connected {
            Some(Ok(Ok(x))) => Ok(x),
            Some(Ok(Err(e))) => Err(connect_failure(cfg, &endpoints, &e)),
            Some(Err(_)) => Err(anyhow::anyhow!(
                "etcd at {endpoints} did not answer within {:?}; check that etcd is running \
                 there and reachable from this host (--etcd-servers)",
                timeout * 2
            )),
            None => Err(anyhow::anyhow!(
                "the etcd client's runtime stopped while connecting to {endpoints}"
            )),
        };
        let (members, revision) = match failure {
            Ok(x) => x,
            Err(e) => {
                // Dropping a runtime is not allowed in async code, where `run` calls this.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let revision = u64::try_from(revision).unwrap_or(0);
        let shared = Arc::new(Shared {
            members,
            prefix,
            endpoints,
            timeout,
            history: Mutex::new(History::new(revision)),
            latest: AtomicU64::new(revision),
        });
        handle.spawn(follow(
            shared.clone(),
            i64::try_from(revision).unwrap_or(0) + 1,
        ));
        if let Some(every) = cfg.compaction_interval {
            handle.spawn(compact_periodically(shared.clone(), every));
        }
        tracing::info!(endpoints = %shared.endpoints, prefix = %shared.prefix, revision, "store: etcd");
        Ok(EtcdStore {
            shared,
            handle,
            runtime: Some(runtime),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.shared.prefix)
    }

    /// Run one etcd operation on the client's runtime, each attempt bounded by the request
    /// timeout, and make it again while etcd is unavailable:
    /// - an attempt that could not reach its member ([`NOT_SENT`]) is made again on the next
    ///   member at once, until every member has refused;
    /// - any other unavailability (no answer in time, "leader changed", a connection reset) is
    ///   tried again up to [`UNCERTAIN_ATTEMPTS`] times in all; a silent member is left for
    ///   the next (see `Shared::timed_out`), and other failures wait a moment first.
    ///
    /// Three request timeouts outlast an etcd leader election (at most twice etcd's election
    /// timeout with nobody leading), so losing the leader costs no request an error, while a
    /// store that is truly gone still gives a 503 in bounded time. The flag says whether an
    /// attempt may have reached etcd and failed, after which a write may have been applied.
    fn call<T, Fut>(
        &self,
        step: &'static str,
        f: impl Fn(Arc<Shared>) -> Fut,
    ) -> Result<(T, bool), StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let members = self.shared.members.clients.len();
        let (mut refused, mut uncertain) = (0, 0);
        loop {
            let result = self.attempt(step, f(self.shared.clone()));
            match &result {
                Err(StoreError::Unavailable { message, .. }) if message.contains(NOT_SENT) => {
                    refused += 1;
                    if refused < members {
                        continue;
                    }
                }
                Err(StoreError::Unavailable { message, .. }) => {
                    uncertain += 1;
                    if uncertain < UNCERTAIN_ATTEMPTS {
                        if !message.contains(TIMED_OUT) {
                            // An answer that came at once ("leader changed", a reset): give
                            // etcd a moment rather than spend every attempt in a burst.
                            std::thread::sleep(RETRY_PAUSE * uncertain as u32);
                        }
                        continue;
                    }
                }
                _ => {}
            }
            return result.map(|r| (r, uncertain > 0));
        }
    }

    /// A read: retried on another member as often as [`EtcdStore::call`] allows, since reading
    /// twice changes nothing.
    fn read<T, Fut>(
        &self,
        step: &'static str,
        f: impl Fn(Arc<Shared>) -> Fut,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.call(step, f).map(|(r, _)| r)
    }

    /// One write transaction (through [`EtcdStore::call`]); the response, whether or not its
    /// comparison held, and whether an earlier attempt failed uncertainly.
    ///
    /// Sending a write again after an uncertain failure is safe because every write compares
    /// the key's revision: if the failed attempt was applied after all, the next one fails its
    /// compare and changes nothing. The callers then tell "applied by the failed attempt" from
    /// "someone else got there first" by the value (see [`applied_earlier`]). Without this, a
    /// request made in the second or two after an etcd leader dies (followers still wait for
    /// it) would fail although the cluster has quorum.
    fn write(&self, step: &'static str, txn: Txn) -> Result<(TxnResponse, bool), StoreError> {
        self.call(step, move |s| {
            let txn = txn.clone();
            async move {
                let resp = s
                    .client()
                    .kv_client()
                    .txn(txn)
                    .await
                    .map_err(|e| s.error(step, e))?;
                s.seen(header_revision(resp.header()) as i64);
                Ok(resp)
            }
        })
    }

    fn attempt<T, Fut>(&self, step: &'static str, fut: Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let timeout = self.shared.timeout;
        let shared = self.shared.clone();
        let used = shared.current();
        let result = wait_on(&self.handle, async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(shared.timed_out(step)),
            }
        })
        .unwrap_or(Err(StoreError::Unavailable {
            step,
            message: "the etcd client has shut down (the API server is stopping)".into(),
        }));
        // A member that refused or stayed silent is left for the next; one that answered with
        // an error (such as "leader changed") is fine and is asked again.
        if let Err(StoreError::Unavailable { message, .. }) = &result {
            if message.contains(NOT_SENT) || message.contains(TIMED_OUT) {
                self.shared.leave(used);
            }
        }
        result
    }
}

fn decode(step: &'static str, kv: &KeyValue) -> Result<Value, StoreError> {
    let mut v: Value = super::decode_value(kv.value()).map_err(|e| StoreError::Backend {
        step,
        message: format!(
            "the value of etcd key {} is not a JSON object: {e}",
            String::from_utf8_lossy(kv.key())
        ),
    })?;
    set_resource_version(&mut v, u64::try_from(kv.mod_revision()).unwrap_or(0));
    Ok(v)
}

/// The stored form: the object without its resourceVersion, which etcd's revision replaces.
fn encode(object: &Value) -> Result<Vec<u8>, StoreError> {
    let mut stored = object.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&stored).map_err(|e| StoreError::Backend {
        step: "encoding an object",
        message: e.to_string(),
    })
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> u64 {
    h.map(|h| u64::try_from(h.revision()).unwrap_or(0))
        .unwrap_or(0)
}

/// Was the conditional part of a failed transaction missing the key (`NotFound`) or holding
/// another revision (`Conflict`)? The `or_else` branch of every write reads the key.
fn failed_write(resp: &etcd_client::TxnResponse) -> StoreError {
    match resp.op_responses().first() {
        Some(TxnOpResponse::Get(g)) if !g.kvs().is_empty() => StoreError::Conflict,
        _ => StoreError::NotFound,
    }
}

/// After an uncertain failure (see [`EtcdStore::call`]), a write whose compare then failed may
/// have failed only because the failed attempt was applied: if the key now holds exactly the
/// bytes this write put (which carry the object's uid and timestamps), it did, at the key's
/// revision.
fn applied_earlier(resp: &TxnResponse, value: &[u8], uncertain: bool) -> Option<u64> {
    if !uncertain {
        return None;
    }
    match resp.op_responses().first() {
        Some(TxnOpResponse::Get(g)) => g
            .kvs()
            .first()
            .filter(|kv| kv.value() == value)
            .and_then(|kv| u64::try_from(kv.mod_revision()).ok()),
        _ => None,
    }
}

/// The condition an update or delete needs: the expected revision, or just that the key exists.
fn write_condition(key: &str, expected: Option<u64>) -> Compare {
    match expected {
        Some(rv) => {
            Compare::mod_revision(key, CompareOp::Equal, i64::try_from(rv).unwrap_or(i64::MAX))
        }
        None => Compare::version(key, CompareOp::Greater, 0),
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let k = self.key(key);
        self.read("reading an object", move |s| {
            let k = k.clone();
            async move {
                let resp = s
                    .client()
                    .kv_client()
                    .get(k, None)
                    .await
                    .map_err(|e| s.error("reading an object", e))?;
                s.seen(resp.header().map(|h| h.revision()).unwrap_or(0));
                resp.kvs()
                    .first()
                    .map(|kv| decode("reading an object", kv))
                    .transpose()
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StoreError> {
        let start = self.key(prefix);
        self.read("listing objects", move |s| {
            let start = start.clone();
            async move {
                let end = prefix_end(start.as_bytes());
                let mut kv = s.client().kv_client();
                let mut out = Vec::new();
                let mut from = start.into_bytes();
                let mut revision = 0i64;
                loop {
                    let mut opts = GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(LIST_PAGE);
                    if revision > 0 {
                        // Later pages read at the first page's revision: one consistent list.
                        opts = opts.with_revision(revision);
                    }
                    let resp = kv
                        .get(from.clone(), Some(opts))
                        .await
                        .map_err(|e| s.error("listing objects", e))?;
                    if revision == 0 {
                        revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                        s.seen(revision);
                    }
                    for item in resp.kvs() {
                        out.push(decode("listing objects", item)?);
                    }
                    match resp.kvs().last() {
                        Some(last) if resp.more() => {
                            from = last.key().to_vec();
                            from.push(0);
                        }
                        _ => break,
                    }
                }
                Ok((out, u64::try_from(revision).unwrap_or(0)))
            }
        })
    }

    fn create(&self, key: &str, object: Value) -> Result<Value, StoreError> {
        let k = self.key(key);
        let value = encode(&object)?;
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), value.clone(), None)])
            .or_else([TxnOp::get(k, None)]);
        let (resp, uncertain) = self.write("creating an object", txn)?;
        let revision = if resp.succeeded() {
            header_revision(resp.header())
        } else {
            applied_earlier(&resp, &value, uncertain).ok_or(StoreError::AlreadyExists)?
        };
        let mut object = object;
        set_resource_version(&mut object, revision);
        Ok(object)
    }

    fn update(
        &self,
        key: &str,
        object: Value,
        expected_revision: Option<u64>,
    ) -> Result<Value, StoreError> {
        let k = self.key(key);
        let value = encode(&object)?;
        let txn = Txn::new()
            .when([write_condition(&k, expected_revision)])
            .and_then([TxnOp::put(k.clone(), value.clone(), None)])
            .or_else([TxnOp::get(k, None)]);
        let (resp, uncertain) = self.write("updating an object", txn)?;
        let revision = if resp.succeeded() {
            header_revision(resp.header())
        } else {
            match applied_earlier(&resp, &value, uncertain) {
                Some(revision) => revision,
                None => return Err(failed_write(&resp)),
            }
        };
        let mut object = object;
        set_resource_version(&mut object, revision);
        Ok(object)
    }

    fn delete(&self, key: &str, expected_revision: Option<u64>) -> Result<Value, StoreError> {
        let k = self.key(key);
        let txn = Txn::new()
            .when([write_condition(&k, expected_revision)])
            .and_then([TxnOp::delete(
                k.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(k, None)]);
        let (resp, uncertain) = self.write("deleting an object", txn)?;
        if !resp.succeeded() {
            return Err(match failed_write(&resp) {
                // Gone now: most likely the failed attempt deleted it, but its value (which a
                // delete returns) went with that attempt's answer.
                StoreError::NotFound if uncertain => StoreError::Unavailable {
                    step: "deleting an object",
                    message: format!(
                        "etcd at {} did not confirm the deletion in time and the object is gone \
                         now, so it was probably deleted; check with a get before deleting again",
                        self.shared.endpoints
                    ),
                },
                other => other,
            });
        }
        let last = match resp.op_responses().first() {
            Some(TxnOpResponse::Delete(d)) => d.prev_kvs().first().cloned(),
            _ => None,
        };
        let last = last.ok_or(StoreError::NotFound)?;
        let mut object = decode("deleting an object", &last)?;
        set_resource_version(&mut object, header_revision(resp.header()));
        Ok(object)
    }

    fn watch(&self, revision: u64) -> Result<Watch, StoreError> {
        {
            let history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(w) = history.start_watch(revision) {
                return Ok(w);
            }
        }
        // Older than this server's ring: etcd's own history has it unless compacted.
        self.read("watching from an old revision", move |s| async move {
            watch_from(s, revision).await
        })
    }

    fn revision(&self) -> u64 {
        let ring = self
            .shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .revision();
        ring.max(self.shared.latest.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn stored_values_carry_no_resource_version() {
        let v = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let bytes = encode(&v).expect("encode");
        let back: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(back, serde_json::json!({"metadata": {"name": "a"}}));
    }

    #[test]
    fn unreachable_etcd_is_a_clear_error_naming_the_endpoint() {
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let url = format!("http://127.0.0.1:{port}");
        let mut cfg = EtcdConfig::new(vec![url.clone()]);
        cfg.request_timeout = Duration::from_millis(500);
        let err = EtcdStore::connect(&cfg)
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains(&url), "names the endpoint: {err}");
        assert!(err.contains("etcd"), "says what failed: {err}");
    }
}
