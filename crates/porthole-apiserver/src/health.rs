//! `/livez`, `/readyz` and `/healthz`, answered like kube-apiserver's: `ok`, or with
//! `?verbose` one `[+]NAME ok` / `[-]NAME failed: REASON` line per check and a closing
//! `readyz check passed|failed`. A failure is always verbose and answers 503, so a load
//! balancer (haproxy `http-check`) takes the server out and an operator sees which check failed.
//!
//! - `livez`: `ping` only. A hung store must not make a supervisor restart a server that
//!   would come back to the same store.
//! - `readyz`: `ping`, `store` (a `get` of namespace `default`, bounded by
//!   [`STORE_CHECK_TIMEOUT`]), `shutdown` (fails once the server is stopping).
//! - `healthz` (deprecated in Kubernetes, kept for old probes): `ping` and `store`.
//!
//! `/readyz/NAME` runs one check, `?exclude=NAME` skips one. The three top-level paths answer
//! without credentials (kube-apiserver grants them to `system:unauthenticated`); for such
//! callers the reasons are withheld, as kube-apiserver withholds them from everyone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::http_util::{full, Body, Query};
use crate::store::Store;
use crate::State;

/// How long the store may take to answer the readiness read (kube-apiserver's
/// `--etcd-healthcheck-timeout` default).
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The three endpoints.
const ENDPOINTS: [&str; 3] = ["livez", "readyz", "healthz"];

/// Is `path` one of the health endpoints or one of their checks?
pub fn is_health_path(path: &str) -> bool {
    let p = path.trim_start_matches('/');
    let first = p.split('/').next().unwrap_or("");
    ENDPOINTS.contains(&first)
}

/// The paths anyone may read, with or without credentials.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/healthz")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Ping,
    Store,
    Shutdown,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Ping => "ping",
            Check::Store => "store",
            Check::Shutdown => "shutdown",
        }
    }
}

fn checks_of(endpoint: &str) -> &'static [Check] {
    match endpoint {
        "livez" => &[Check::Ping],
        "readyz" => &[Check::Ping, Check::Store, Check::Shutdown],
        _ => &[Check::Ping, Check::Store],
    }
}

/// A store read running on the blocking pool, and when it started.
struct InFlight {
    started: Instant,
    handle: JoinHandle<Result<(), String>>,
}

/// The readiness read of the store. A read that outlived its timeout is awaited again by the
/// next check instead of starting another, so a hung store holds one blocking thread however
/// often the load balancer asks.
pub struct StoreProbe {
    timeout: Duration,
    in_flight: Mutex<Option<InFlight>>,
}

impl Default for StoreProbe {
    fn default() -> Self {
        Self::new(STORE_CHECK_TIMEOUT)
    }
}

impl StoreProbe {
    /// A probe whose reads may take up to `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            in_flight: Mutex::new(None),
        }
    }

    /// Read namespace `default` from `store`; `Err` says why the store is not usable.
    pub async fn check(&self, store: &Arc<dyn Store>) -> Result<(), String> {
        let taken = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut flight = match taken {
            Some(f) => f,
            None => {
                let store = store.clone();
                let key = crate::resources::core("namespaces").key("", "default");
                InFlight {
                    started: Instant::now(),
                    handle: tokio::task::spawn_blocking(move || {
                        store.get(&key).map(|_| ()).map_err(|e| e.to_string())
                    }),
                }
            }
        };
        match tokio::time::timeout(self.timeout, &mut flight.handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("the store read did not finish: {e}")),
            Err(_) => {
                let waited = flight.started.elapsed();
                *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()) = Some(flight);
                Err(format!(
                    "the store did not answer a read within {:?} (waiting for {:.1}s)",
                    self.timeout,
                    waited.as_secs_f64()
                ))
            }
        }
    }
}

async fn run_check(check: Check, state: &State) -> Result<(), String> {
    match check {
        Check::Ping => Ok(()),
        Check::Store => state.store_probe.check(&state.store).await,
        Check::Shutdown if state.is_ready() => Ok(()),
        Check::Shutdown => Err("the server is shutting down".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Answer a health path (GET; the caller is authorized). `reveal_reasons`: the caller
/// authenticated, so failure reasons are shown instead of withheld.
pub async fn handle(
    state: &State,
    path: &str,
    query: &Query,
    reveal_reasons: bool,
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (endpoint, only) = match segs.as_slice() {
        [e] => (*e, None),
        [e, check] => (*e, Some(*check)),
        _ => return Err(ApiError::NoRoute),
    };
    let all = checks_of(endpoint);
    if let Some(name) = only {
        let Some(check) = all.iter().copied().find(|c| c.name() == name) else {
            return Err(ApiError::NoRoute);
        };
        return Ok(match run_check(check, state).await {
            Ok(()) => text(StatusCode::OK, "ok".into()),
            Err(e) => {
                tracing::debug!(check = name, error = %e, "{endpoint} check failed");
                let reason = if reveal_reasons {
                    e
                } else {
                    "reason withheld".into()
                };
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("internal server error: {reason}\n"),
                )
            }
        });
    }
    let mut excluded: Vec<&str> = query.all("exclude").iter().map(String::as_str).collect();
    let mut results = Vec::new();
    for check in all {
        if let Some(i) = excluded.iter().position(|e| *e == check.name()) {
            excluded.remove(i);
            results.push((check.name(), Verdict::Excluded));
            continue;
        }
        let verdict = match run_check(*check, state).await {
            Ok(()) => Verdict::Passed,
            Err(e) => {
                tracing::debug!(check = check.name(), error = %e, "{endpoint} check failed");
                Verdict::Failed(e)
            }
        };
        results.push((check.name(), verdict));
    }
    // `?verbose` parses as `verbose=""`: present is enough, as in kube-apiserver.
    let verbose = query.get("verbose").is_some();
    let (status, body) = report(endpoint, &results, &excluded, verbose, reveal_reasons);
    Ok(text(status, body))
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Passed,
    Excluded,
    Failed(String),
}

/// kube-apiserver's health answer: `ok`, or the check list (always on failure).
fn report(
    endpoint: &str,
    results: &[(&str, Verdict)],
    unmatched_excludes: &[&str],
    verbose: bool,
    reveal_reasons: bool,
) -> (StatusCode, String) {
    let mut lines = String::new();
    for (name, verdict) in results {
        match verdict {
            Verdict::Passed => lines += &format!("[+]{name} ok\n"),
            Verdict::Excluded => lines += &format!("[+]{name} excluded: ok\n"),
            Verdict::Failed(why) => {
                let why = if reveal_reasons {
                    why.as_str()
                } else {
                    "reason withheld"
                };
                lines += &format!("[-]{name} failed: {why}\n");
            }
        }
    }
    if !unmatched_excludes.is_empty() {
        let names: Vec<String> = unmatched_excludes
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        lines += &format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            names.join(",")
        );
    }
    if results.iter().any(|(_, v)| matches!(v, Verdict::Failed(_))) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{lines}{endpoint} check failed\n"),
        )
    } else if verbose {
        (StatusCode::OK, format!("{lines}{endpoint} check passed\n"))
    } else {
        (StatusCode::OK, "ok".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::Value;

    use crate::store::{RedbStore, StoreError, Watch};

    /// A real store whose reads block until released, like an etcd that stopped answering.
    struct Hanging {
        inner: RedbStore,
        gate: Mutex<bool>,
        opened: std::sync::Condvar,
        reads: AtomicUsize,
    }

    impl Hanging {
        fn release(&self) {
            *self.gate.lock().expect("gate") = true;
            self.opened.notify_all();
        }
    }

    impl Store for Hanging {
        fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let mut open = self.gate.lock().expect("gate");
            while !*open {
                open = self.opened.wait(open).expect("gate");
            }
            self.inner.get(key)
        }
        fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StoreError> {
            self.inner.list(prefix)
        }
        fn create(&self, key: &str, object: Value) -> Result<Value, StoreError> {
            self.inner.create(key, object)
        }
        fn update(&self, key: &str, object: Value, rv: Option<u64>) -> Result<Value, StoreError> {
            self.inner.update(key, object, rv)
        }
        fn delete(&self, key: &str, rv: Option<u64>) -> Result<Value, StoreError> {
            self.inner.delete(key, rv)
        }
        fn watch(&self, revision: u64) -> Result<Watch, StoreError> {
            self.inner.watch(revision)
        }
        fn revision(&self) -> u64 {
            self.inner.revision()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_store_fails_the_check_in_time_and_holds_one_thread() {
        let dir = tempfile::tempdir().expect("tmp");
        let hanging = Arc::new(Hanging {
            inner: RedbStore::open(dir.path()).expect("open"),
            gate: Mutex::new(false),
            opened: std::sync::Condvar::new(),
            reads: AtomicUsize::new(0),
        });
        let store: Arc<dyn Store> = hanging.clone();
        let probe = StoreProbe::new(Duration::from_millis(200));
        for _ in 0..3 {
            let started = Instant::now();
            let e = probe.check(&store).await.expect_err("hung store");
            assert!(e.contains("did not answer a read within 200ms"), "{e}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the check itself hung"
            );
        }
        assert_eq!(
            hanging.reads.load(Ordering::SeqCst),
            1,
            "one read in flight, not three"
        );
        hanging.release();
        // The read in flight completes, then fresh reads answer at once.
        assert_eq!(probe.check(&store).await, Ok(()));
        assert_eq!(probe.check(&store).await, Ok(()));
        assert_eq!(hanging.reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn reports_read_like_kube_apiservers() {
        let ok = [("ping", Verdict::Passed), ("store", Verdict::Passed)];
        assert_eq!(
            report("readyz", &ok, &[], false, true),
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(
            report("readyz", &ok, &[], true, true),
            (
                StatusCode::OK,
                "[+]ping ok\n[+]store ok\nreadyz check passed\n".into()
            )
        );
        let failing = [
            ("ping", Verdict::Passed),
            ("store", Verdict::Failed("the store did not answer".into())),
            ("shutdown", Verdict::Excluded),
        ];
        // A failure lists the checks even without ?verbose, and is a 503 for load balancers.
        assert_eq!(
            report("readyz", &failing, &["nosuch"], false, true),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "[+]ping ok\n[-]store failed: the store did not answer\n[+]shutdown excluded: ok\n\
                 warn: some health checks cannot be excluded: no matches for \"nosuch\"\n\
                 readyz check failed\n"
                    .into()
            )
        );
        let (_, anonymous) = report("readyz", &failing, &[], false, false);
        assert!(
            anonymous.contains("[-]store failed: reason withheld\n"),
            "{anonymous}"
        );
    }

    #[test]
    fn paths() {
        assert!(is_health_path("/readyz"));
        assert!(is_health_path("/livez/ping"));
        assert!(is_health_path("/healthz/"));
        assert!(!is_health_path("/readyzz"));
        assert!(!is_health_path("/metrics"));
        assert!(is_public("/readyz"));
        assert!(
            !is_public("/readyz/store"),
            "single checks need credentials"
        );
    }
}
