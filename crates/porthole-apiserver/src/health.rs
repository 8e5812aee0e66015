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

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::http_util::{full, Body, Query};
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
#[derive(Default)]
pub struct StoreProbe {
    in_flight: Mutex<Option<InFlight>>,
}

impl StoreProbe {
    async fn check(&self, state: &State) -> Result<(), String> {
        let taken = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut flight = match taken {
            Some(f) => f,
            None => {
                let store = state.store.clone();
                let key = crate::resources::core("namespaces").key("", "default");
                InFlight {
                    started: Instant::now(),
                    handle: tokio::task::spawn_blocking(move || {
                        store.get(&key).map(|_| ()).map_err(|e| e.to_string())
                    }),
                }
            }
        };
        match tokio::time::timeout(STORE_CHECK_TIMEOUT, &mut flight.handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("the store read did not finish: {e}")),
            Err(_) => {
                let waited = flight.started.elapsed();
                *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()) = Some(flight);
                Err(format!(
                    "the store did not answer a read within {STORE_CHECK_TIMEOUT:?} (waiting for {:.1}s)",
                    waited.as_secs_f64()
                ))
            }
        }
    }
}

async fn run_check(check: Check, state: &State) -> Result<(), String> {
    match check {
        Check::Ping => Ok(()),
        Check::Store => state.store_probe.check(state).await,
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
    let mut lines = String::new();
    let mut failed = Vec::new();
    for check in all {
        if let Some(i) = excluded.iter().position(|e| *e == check.name()) {
            excluded.remove(i);
            lines += &format!("[+]{} excluded: ok\n", check.name());
            continue;
        }
        match run_check(*check, state).await {
            Ok(()) => lines += &format!("[+]{} ok\n", check.name()),
            Err(e) => {
                tracing::debug!(check = check.name(), error = %e, "{endpoint} check failed");
                let reason = if reveal_reasons {
                    e.as_str()
                } else {
                    "reason withheld"
                };
                lines += &format!("[-]{} failed: {reason}\n", check.name());
                failed.push(check.name());
            }
        }
    }
    if !excluded.is_empty() {
        lines += &format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            excluded
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    if !failed.is_empty() {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{lines}{endpoint} check failed\n"),
        ));
    }
    // `?verbose` parses as `verbose=""`: present is enough, as in kube-apiserver.
    if query.get("verbose").is_some() {
        return Ok(text(
            StatusCode::OK,
            format!("{lines}{endpoint} check passed\n"),
        ));
    }
    Ok(text(StatusCode::OK, "ok".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
