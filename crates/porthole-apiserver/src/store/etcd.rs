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
//! from any thread, inside or outside another runtime, and a call never waits longer than the
//! request timeout: a dead or partitioned etcd gives [`StoreError::Unavailable`] (503) quickly.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchOptions, WatchStream,
};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::broadcast;

use super::history::History;
use super::{set_resource_version, Event, EventKind, Store, StoreError, Watch};

/// Objects fetched per range request of a list.
const LIST_PAGE: i64 = 500;
/// Capacity of the feed of a watch from an old revision.
const OLD_WATCH_CAPACITY: usize = 4096;
/// How often a watch from an old revision checks that its consumer is still there.
const OLD_WATCH_IDLE_CHECK: Duration = Duration::from_secs(5);
/// The longest pause between two attempts to re-establish the server's prefix watch.
const MAX_REWATCH_BACKOFF: Duration = Duration::from_secs(2);

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

/// One client per etcd member, and the member requests go to now. etcd-client balances one
/// channel over every endpoint and keeps sending to a member that is down (each request then
/// fails with a connect error), so porthole picks the member itself, as etcd's own Go client
/// does: it stays on one member while it answers, and moves to the next when a request could
/// not be sent to it or timed out. A request that was never sent is retried on the next member
/// at once, so one member going away costs no request an error.
struct Members {
    clients: Vec<(String, Client)>,
    current: AtomicUsize,
}

/// What a request that never reached its member says (connect failures); only such requests
/// are retried on another member, because a write that was sent may have been applied.
const NOT_SENT: &str = "etcd member unreachable";

/// State shared by the store handle and its background tasks.
struct Shared {
    members: Members,
    /// `PREFIX/` with exactly one trailing slash.
    prefix: String,
    /// The endpoints as given, for messages.
    endpoints: String,
    timeout: Duration,
    history: Mutex<History>,
    /// The newest revision any response has shown.
    latest: AtomicU64,
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
    /// timeout. An attempt that could not reach its member (see [`NOT_SENT`]) is made again on
    /// the next member, once per member.
    fn call<T, Fut>(
        &self,
        step: &'static str,
        f: impl Fn(Arc<Shared>) -> Fut,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let attempts = self.shared.members.clients.len();
        let mut result = Err(StoreError::Unavailable {
            step,
            message: "no etcd endpoints".into(),
        });
        for _ in 0..attempts {
            result = self.attempt(step, f(self.shared.clone()));
            match &result {
                Err(StoreError::Unavailable { message, .. }) if message.contains(NOT_SENT) => {
                    continue
                }
                _ => break,
            }
        }
        result
    }

    /// One write transaction (through [`EtcdStore::call`]); the response, whether or not its
    /// comparison held.
    fn write(&self, step: &'static str, txn: Txn) -> Result<TxnResponse, StoreError> {
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
        wait_on(&self.handle, async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => {
                    // Silent (partitioned away, overloaded): the next request tries another.
                    let member = shared.member_url();
                    shared.next_member();
                    Err(StoreError::Unavailable {
                        step,
                        message: format!(
                            "etcd member {member} (of {}) did not answer within {timeout:?}; \
                             check that etcd is running and reachable from this host",
                            shared.endpoints
                        ),
                    })
                }
            }
        })
        .unwrap_or(Err(StoreError::Unavailable {
            step,
            message: "the etcd client has shut down (the API server is stopping)".into(),
        }))
    }
}

fn tls_options(cfg: &EtcdConfig) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
    let endpoints = cfg.endpoints.join(",");
    // Read and check each file here, so that a wrong path or a file of the wrong kind is
    // reported with its flag and path, not as the TLS library's error at the first request.
    let read = |flag: &str, what: &str, p: &PathBuf| {
        std::fs::read(p).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {flag} {} ({what} for etcd at {endpoints}): {e}; give the path of \
                 an existing PEM file",
                p.display()
            )
        })
    };
    let certs = |flag: &str, what: &str, p: &PathBuf| -> anyhow::Result<Vec<u8>> {
        let pem = read(flag, what, p)?;
        let n = rustls_pemfile::certs(&mut pem.as_slice())
            .filter(|c| c.is_ok())
            .count();
        if n == 0 {
            anyhow::bail!(
                "{flag} {} ({what} for etcd at {endpoints}) holds no PEM certificate \
                 (-----BEGIN CERTIFICATE-----); give a PEM certificate file",
                p.display()
            );
        }
        Ok(pem)
    };
    let mut tls = etcd_client::TlsOptions::new();
    let mut any = false;
    if let Some(ca) = &cfg.ca_file {
        let pem = certs("--etcd-cafile", "the CA of etcd's serving certificate", ca)?;
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        any = true;
    }
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => {
            let cert = certs("--etcd-certfile", "the client certificate", c)?;
            let key = read("--etcd-keyfile", "the client certificate's key", k)?;
            if !matches!(
                rustls_pemfile::private_key(&mut key.as_slice()),
                Ok(Some(_))
            ) {
                anyhow::bail!(
                    "--etcd-keyfile {} (the client certificate's key for etcd at {endpoints}) \
                     holds no PEM private key; give the key of --etcd-certfile {}",
                    k.display(),
                    c.display()
                );
            }
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            any = true;
        }
        (None, None) => {}
        _ => anyhow::bail!("--etcd-certfile and --etcd-keyfile go together: give both or neither"),
    }
    if any && cfg.endpoints.iter().any(|e| e.starts_with("http://")) {
        anyhow::bail!(
            "--etcd-cafile/--etcd-certfile are set but --etcd-servers has an http:// URL; use https:// URLs for TLS"
        );
    }
    Ok(any.then_some(tls))
}

/// The error for a failed first contact with etcd: what failed, and what to do about it. TLS
/// failures are told apart by the text of the error chain (tonic and rustls give no types to
/// match on), so each gets advice about the flag that is most likely wrong.
fn connect_failure(cfg: &EtcdConfig, endpoints: &str, e: &etcd_client::Error) -> anyhow::Error {
    let detail = describe(e);
    let tls = cfg.endpoints.iter().any(|u| u.starts_with("https://"));
    let file = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let has = |needles: &[&str]| needles.iter().any(|n| detail.contains(n));
    let advice = if has(&["NotValidForName", "not valid for name"]) {
        "etcd's serving certificate does not name the host in --etcd-servers: use a host \
         name or IP address that the certificate's subjectAltName lists, or reissue etcd's \
         certificate (its --cert-file) with this one"
            .to_string()
    } else if has(&[
        "Expired",
        "certificate expired",
        "NotValidYet",
        "not valid yet",
    ]) {
        "etcd's serving certificate is outside its validity period: renew etcd's certificate \
         (its --cert-file), or check this host's clock"
            .to_string()
    } else if has(&["InvalidPurpose", "extended key usage"]) {
        "etcd's serving certificate is not for TLS servers: reissue it (its --cert-file) with \
         extendedKeyUsage serverAuth"
            .to_string()
    } else if has(&["invalid peer certificate", "UnknownIssuer", "BadSignature"]) {
        match file(&cfg.ca_file) {
            Some(ca) => format!(
                "TLS: etcd's serving certificate is not signed by the CA in --etcd-cafile {ca}; \
                 give --etcd-cafile the CA certificate that signed etcd's --cert-file"
            ),
            None => "TLS: etcd's serving certificate is not trusted, and no --etcd-cafile was \
                     given; give --etcd-cafile the CA certificate that signed etcd's --cert-file"
                .to_string(),
        }
    } else if has(&["KeyMismatch", "InconsistentKeys", "not be consistent"]) {
        format!(
            "TLS: the key in --etcd-keyfile {} does not belong to the certificate in \
             --etcd-certfile {}; give the matching key",
            file(&cfg.key_file).unwrap_or_default(),
            file(&cfg.cert_file).unwrap_or_default()
        )
    } else if tls && has(&["tls handshake eof", "InvalidContentType", "corrupt message"]) {
        "etcd did not answer the TLS handshake: if this etcd serves plain HTTP (no --cert-file), \
         use an http:// URL in --etcd-servers and no --etcd-cafile/--etcd-certfile/--etcd-keyfile"
            .to_string()
    } else if tls
        && has(&[
            "connection closed",
            "BadCertificate",
            "UnknownCA",
            "CertificateRequired",
            "AccessDenied",
            "fatal alert",
            "reset by peer",
            "broken pipe",
        ])
    {
        match file(&cfg.cert_file) {
            Some(cert) => format!(
                "TLS: etcd ended the connection, so it most likely rejected the client \
                 certificate in --etcd-certfile {cert}; etcd with --client-cert-auth \
                 accepts only client certificates signed by its --trusted-ca-file: give \
                 --etcd-certfile/--etcd-keyfile of such a certificate"
            ),
            None => "TLS: etcd ended the connection, so it most likely requires a client \
                     certificate (etcd's --client-cert-auth), and none was given: give \
                     --etcd-certfile and --etcd-keyfile of a certificate signed by etcd's \
                     --trusted-ca-file"
                .to_string(),
        }
    } else if !tls && has(&["broken pipe", "connection closed", "reset by peer"]) {
        "etcd closed the connection: if it serves TLS (its --cert-file), use an https:// URL in \
         --etcd-servers with --etcd-cafile, --etcd-certfile and --etcd-keyfile"
            .to_string()
    } else {
        "check that etcd is running there and that --etcd-servers (and --etcd-cafile/\
         --etcd-certfile/--etcd-keyfile for TLS) are right"
            .to_string()
    };
    anyhow::anyhow!("cannot reach etcd at {endpoints}: {detail}; {advice}")
}

impl Shared {
    /// The client of the member requests go to now.
    fn client(&self) -> Client {
        let i = self.members.current.load(Ordering::Relaxed) % self.members.clients.len();
        self.members.clients[i].1.clone()
    }

    fn member_url(&self) -> String {
        let i = self.members.current.load(Ordering::Relaxed) % self.members.clients.len();
        self.members.clients[i].0.clone()
    }

    /// Requests go to the next member from now on.
    fn next_member(&self) {
        if self.members.clients.len() > 1 {
            let i = self.members.current.fetch_add(1, Ordering::Relaxed);
            let n = self.members.clients.len();
            tracing::warn!(
                from = %self.members.clients[i % n].0,
                to = %self.members.clients[(i + 1) % n].0,
                "etcd member not answering; using another"
            );
        }
    }

    fn seen(&self, revision: i64) {
        if let Ok(r) = u64::try_from(revision) {
            self.latest.fetch_max(r, Ordering::Relaxed);
        }
    }

    /// Map a client error: transport trouble is `Unavailable` (503, retry later), anything
    /// else is a backend failure.
    fn error(&self, step: &'static str, e: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        let transient = match &e {
            E::TransportError(_) | E::IoError(_) => true,
            E::GRpcStatus(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
            _ => false,
        };
        let described = describe(&e);
        if transient && not_sent(&described) {
            let member = self.member_url();
            self.next_member();
            return StoreError::Unavailable {
                step,
                message: format!(
                    "{NOT_SENT}: {member} (of {}): {described}; check that etcd is running \
                     and reachable",
                    self.endpoints
                ),
            };
        }
        let message = format!("etcd at {}: {described}", self.endpoints);
        if transient {
            StoreError::Unavailable {
                step,
                message: format!("{message}; check that etcd is running and reachable"),
            }
        } else {
            StoreError::Backend { step, message }
        }
    }

    fn store_key(&self, etcd_key: &[u8]) -> Option<String> {
        std::str::from_utf8(etcd_key)
            .ok()?
            .strip_prefix(&self.prefix)
            .map(str::to_string)
    }
}

/// Whether a failure happened before the request left this host (so it was not applied).
fn not_sent(described: &str) -> bool {
    [
        "tcp connect error",
        "Connection refused",
        "No route to host",
        "Network is unreachable",
        "error trying to connect",
    ]
    .iter()
    .any(|m| described.contains(m))
}

/// What went wrong, in few words: gRPC's status message and the causes under it (such as
/// "Connection refused" or "invalid peer certificate: UnknownIssuer"), without the wrapper
/// types tonic prints and without saying one thing twice.
fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (head, mut cause): (String, Option<&dyn std::error::Error>) = match e {
        etcd_client::Error::GRpcStatus(status) => (status.message().to_string(), status.source()),
        // etcd-client's error has no source(): start from the wrapped error's.
        etcd_client::Error::TransportError(t) => (t.to_string(), t.source()),
        etcd_client::Error::IoError(io) => (io.to_string(), io.source()),
        other => (other.to_string(), None),
    };
    let mut parts = vec![head];
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    let mut text = String::new();
    let last = parts.len() - 1;
    for (i, part) in parts.iter().enumerate() {
        // tonic's "transport error" says nothing when a cause follows it.
        if part.is_empty()
            || text.contains(part.as_str())
            || (part == "transport error" && i < last)
        {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(part);
    }
    if text.is_empty() {
        e.to_string()
    } else {
        text
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
        self.call("reading an object", move |s| {
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
        self.call("listing objects", move |s| {
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
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, encode(&object)?, None)]);
        let resp = self.write("creating an object", txn)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists);
        }
        let mut object = object;
        set_resource_version(&mut object, header_revision(resp.header()));
        Ok(object)
    }

    fn update(
        &self,
        key: &str,
        object: Value,
        expected_revision: Option<u64>,
    ) -> Result<Value, StoreError> {
        let k = self.key(key);
        let txn = Txn::new()
            .when([write_condition(&k, expected_revision)])
            .and_then([TxnOp::put(k.clone(), encode(&object)?, None)])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.write("updating an object", txn)?;
        if !resp.succeeded() {
            return Err(failed_write(&resp));
        }
        let mut object = object;
        set_resource_version(&mut object, header_revision(resp.header()));
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
        let resp = self.write("deleting an object", txn)?;
        if !resp.succeeded() {
            return Err(failed_write(&resp));
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
        self.call("watching from an old revision", move |s| async move {
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

/// Turn one etcd watch event into a store event (`None` for keys outside the prefix and for a
/// deletion whose previous value etcd no longer has).
fn convert(s: &Shared, ev: &etcd_client::Event) -> Option<Event> {
    let kv = ev.kv()?;
    let key = s.store_key(kv.key())?;
    let revision = u64::try_from(kv.mod_revision()).ok()?;
    let prev = match ev.prev_kv() {
        Some(p) => match decode("watching", p) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an undecodable previous value in a watch event");
                None
            }
        },
        None => None,
    };
    // The raw type, not `event_type()`, which panics on a value it does not know.
    match ev.0.r#type {
        0 => {
            let object = match decode("watching", kv) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an undecodable object in a watch event");
                    return None;
                }
            };
            let kind = if kv.version() == 1 {
                EventKind::Added
            } else {
                EventKind::Modified
            };
            Some(Event {
                kind,
                revision,
                key,
                object,
                prev,
            })
        }
        1 => {
            let Some(mut object) = prev.clone() else {
                tracing::warn!(%key, revision, "a deletion without its previous value (compacted); not reported to watches");
                return None;
            };
            set_resource_version(&mut object, revision);
            Some(Event {
                kind: EventKind::Deleted,
                revision,
                key,
                object,
                prev,
            })
        }
        other => {
            tracing::warn!(
                event_type = other,
                "skipping a watch event of an unknown type"
            );
            None
        }
    }
}

/// Follow every change under the prefix from `next` on and publish it into the ring, for
/// the server's lifetime. Reconnects with backoff when etcd goes away; if etcd compacted
/// past what was missed, the ring is reset, which closes every live watch so clients
/// re-list instead of silently missing events.
async fn follow(s: Arc<Shared>, mut next: i64) {
    let mut backoff = Duration::from_millis(100);
    let mut outage = false;
    loop {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(next);
        match s
            .client()
            .watch_client()
            .watch(s.prefix.clone(), Some(opts))
            .await
        {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if outage {
                            tracing::info!(endpoints = %s.endpoints, "etcd watch re-established");
                            outage = false;
                        }
                        backoff = Duration::from_millis(100);
                        if resp.canceled() {
                            if resp.compact_revision() > 0 {
                                let c = resp.compact_revision();
                                tracing::warn!(
                                    from = next,
                                    compacted = c,
                                    "etcd compacted events this server had not seen yet; open watches are closed and clients re-list"
                                );
                                let mut h = s.history.lock().unwrap_or_else(|p| p.into_inner());
                                h.reset(u64::try_from(c - 1).unwrap_or(0));
                                next = c;
                            }
                            break;
                        }
                        s.seen(resp.header().map(|h| h.revision()).unwrap_or(0));
                        let mut h = s.history.lock().unwrap_or_else(|p| p.into_inner());
                        for ev in resp.events() {
                            if let Some(kv) = ev.kv() {
                                next = next.max(kv.mod_revision() + 1);
                            }
                            if let Some(e) = convert(&s, ev) {
                                if e.revision > h.revision() {
                                    h.publish(Arc::new(e));
                                }
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !outage {
                            tracing::warn!(error = %e, endpoints = %s.endpoints, "etcd watch broke; retrying");
                            outage = true;
                        }
                        // The member may be gone: re-watch on the next one.
                        s.next_member();
                        break;
                    }
                }
            },
            Err(e) => {
                if !outage {
                    tracing::warn!(error = %e, endpoints = %s.endpoints, "cannot watch etcd; retrying");
                    outage = true;
                }
                s.next_member();
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_REWATCH_BACKOFF);
    }
}

/// Compact etcd's history every `every`, keeping at least one interval of it, as
/// kube-apiserver does: each round, one server wins a compare-and-swap on a key of its own
/// (outside the prefix, so no watch sees it) and compacts at the revision the previous round
/// recorded. However many API servers run, history is compacted once per interval.
async fn compact_periodically(s: Arc<Shared>, every: Duration) {
    let key = format!("{}-compact_rev_key", s.prefix.trim_end_matches('/'));
    let mut version = 0i64;
    let mut previous: Option<i64> = None;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, version)])
            .and_then([TxnOp::put(key.clone(), Vec::new(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = match s.client().kv_client().txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %describe(&e), "etcd compaction round skipped");
                continue;
            }
        };
        if !resp.succeeded() {
            // Another server took this round; follow its count and its revision next time.
            if let Some(TxnOpResponse::Get(g)) = resp.op_responses().first() {
                version = g.kvs().first().map(|kv| kv.version()).unwrap_or(0);
            }
            previous = None;
            continue;
        }
        version += 1;
        let now = resp.header().map(|h| h.revision()).unwrap_or(0);
        if let Some(rev) = previous {
            match s.client().kv_client().compact(rev, None).await {
                Ok(_) => tracing::info!(revision = rev, "compacted etcd history"),
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => {
                    tracing::warn!(error = %describe(&e), revision = rev, "etcd compaction failed")
                }
            }
        }
        previous = Some(now);
    }
}

/// A watch of its own for a revision older than the ring: etcd replays its history from
/// there. Compaction is checked first with a read at that revision, because etcd reports a
/// compacted watch only after it has been created.
async fn watch_from(s: Arc<Shared>, revision: u64) -> Result<Watch, StoreError> {
    let start = i64::try_from(revision).unwrap_or(i64::MAX - 1) + 1;
    let probe = s
        .client()
        .kv_client()
        .get(
            s.prefix.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_revision(start),
            ),
        )
        .await;
    if let Err(e) = probe {
        if e.to_string().contains("compacted") {
            let oldest = s
                .client()
                .kv_client()
                .get(
                    s.prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .ok()
                .map(|r| header_revision(r.header()))
                .unwrap_or(0);
            return Err(StoreError::Gone {
                requested: revision,
                oldest,
            });
        }
        return Err(s.error("watching from an old revision", e));
    }
    let opts = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(start);
    let stream = s
        .client()
        .watch_client()
        .watch(s.prefix.clone(), Some(opts))
        .await
        .map_err(|e| s.error("watching from an old revision", e))?;
    let (tx, live) = broadcast::channel(OLD_WATCH_CAPACITY);
    tokio::spawn(forward_old(s, stream, tx));
    Ok(Watch {
        backlog: Vec::new(),
        live,
    })
}

/// Feed one old-revision watch until its consumer is gone or etcd ends it (compaction, a
/// broken connection): dropping `tx` closes the consumer's feed, and its client re-watches.
async fn forward_old(s: Arc<Shared>, mut stream: WatchStream, tx: broadcast::Sender<Arc<Event>>) {
    let mut idle = tokio::time::interval(OLD_WATCH_IDLE_CHECK);
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(resp)) if !resp.canceled() => {
                    for ev in resp.events() {
                        if let Some(e) = convert(&s, ev) {
                            if tx.send(Arc::new(e)).is_err() {
                                return;
                            }
                        }
                    }
                }
                _ => return,
            },
            _ = idle.tick() => if tx.receiver_count() == 0 { return },
        }
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
    fn tls_files_are_checked_up_front_naming_flag_file_and_endpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let crt = dir.path().join("client.crt");
        let key = dir.path().join("client.key");
        std::fs::write(&crt, pair.cert.pem()).expect("write cert");
        std::fs::write(&key, pair.signing_key.serialize_pem()).expect("write key");
        let missing = dir.path().join("missing.crt");
        let url = "https://127.0.0.1:2379";
        let cfg = |ca: Option<&PathBuf>, cert: &PathBuf, key: &PathBuf| {
            let mut cfg = EtcdConfig::new(vec![url.into()]);
            cfg.ca_file = ca.cloned();
            cfg.cert_file = Some(cert.clone());
            cfg.key_file = Some(key.clone());
            cfg
        };
        assert!(tls_options(&cfg(Some(&crt), &crt, &key)).is_ok());
        for (cfg, flag, file, what) in [
            (
                cfg(Some(&missing), &crt, &key),
                "--etcd-cafile",
                &missing,
                "cannot read",
            ),
            (
                cfg(None, &missing, &key),
                "--etcd-certfile",
                &missing,
                "cannot read",
            ),
            (
                cfg(None, &key, &key),
                "--etcd-certfile",
                &key,
                "no PEM certificate",
            ),
            (
                cfg(None, &crt, &crt),
                "--etcd-keyfile",
                &crt,
                "no PEM private key",
            ),
        ] {
            let err = tls_options(&cfg).expect_err("must fail").to_string();
            for want in [flag, &file.display().to_string(), url, what] {
                assert!(err.contains(want), "{want:?} in: {err}");
            }
        }
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
