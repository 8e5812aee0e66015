//! `porthole apiserver`: a Kubernetes-compatible API server for the resources porthole needs,
//! which authenticates (static tokens, X.509 client certificates), authorizes (RBAC), audits,
//! and proxies pod port-forward upgrades byte for byte to the node agent.
//!
//! Layout:
//! - `config`: the flags ([`Args`], [`EtcdArgs`]) and the [`Config`] loaded from them;
//! - [`store`]: the narrow storage trait and its embedded redb implementation (global
//!   resourceVersion, watch history);
//! - [`request`]: routing, the Kubernetes [`request::Verb`] and RBAC attributes; `handlers/`:
//!   the resource handlers, one file per concern (read, write, delete, subresources), over
//!   `body` (request bodies, object responses) and `registry` (object-level operations with
//!   Kubernetes' semantics, which controllers and other background tasks call too); `time`:
//!   timestamps as Kubernetes writes them; [`resources`]: kinds, defaulting, validation;
//!   [`select`], [`patch`], [`table`]: selectors, patch types, server-side printing;
//! - [`discovery`]: `/version`, discovery, OpenAPI; [`health`]: `/livez`, `/readyz`,
//!   `/healthz`; [`metrics`]: `/metrics` and the timing store decorator;
//! - [`authn`], [`authz`]: authentication and RBAC; [`audit`]: the audit log;
//! - [`bootstrap`]: bootstrap tokens (authenticator, cleaner, `cluster-info` signer) and
//!   [`csr`]: node certificate requests (admission, approval, signing with the cluster CA);
//! - [`portforward`], [`logs`], [`kubelet`]: everything that talks to node agents;
//!   [`tunnel`]: the tunnels that nodes behind NAT dial in, which [`kubelet`] dials through;
//!   [`identity`]: this server's identity lease, and how many servers are alive;
//! - [`controllers`]: scheduler, Deployment controller, GC, namespace and node lifecycle, run
//!   by the holder of the controllers' lease ([`leader`]);
//! - [`error`]: every error and its one mapping to `metav1.Status`.
//!
//! Specs: `PROTOCOL.md` §2.1, §2.5, §2.6, §6; `CLIENTS.md`; `docs/ARCHITECTURE.md` Contracts
//! 2–4.

pub mod audit;
pub mod authn;
pub mod authz;
mod body;
pub mod bootstrap;
mod config;
pub mod controllers;
pub mod csr;
pub mod discovery;
pub mod endpoints;
pub mod error;
#[doc(hidden)]
pub mod fuzz_logic;
mod handlers;
pub mod health;
pub mod http_util;
pub mod identity;
pub mod kubelet;
pub mod leader;
pub mod logs;
pub mod metrics;
pub mod names;
pub mod patch;
pub mod portforward;
pub mod protobuf;
mod registry;
pub mod request;
pub mod resources;
pub mod select;
pub mod store;
pub mod table;
mod time;
pub mod tls;
pub mod tunnel;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::authn::{Outcome, TokenFile, UserInfo};
use crate::error::ApiError;
use crate::http_util::{Body, Query};
use crate::request::{Route, Verb};
use crate::store::{Store, StoreError};

pub use config::{parse_duration, Args, Config, EtcdArgs, StorageConfig};

/// Shared server state.
pub struct State {
    /// The object store.
    pub store: Arc<dyn Store>,
    /// Static tokens.
    pub tokens: TokenFile,
    /// Anonymous access allowed.
    pub anonymous: bool,
    /// TLS client config for node agents.
    pub kubelet_tls: Arc<rustls::ClientConfig>,
    /// The node agent in this process, if any.
    pub in_process_node: Option<kubelet::InProcessNode>,
    /// The cluster CA that signs node certificates, if configured.
    pub signer: Option<Arc<csr::Signer>>,
    /// Audit log.
    pub audit: audit::AuditLog,
    /// Cancelled when the server stops; watches and sessions end with it.
    pub shutdown: CancellationToken,
    /// Wakes the controllers.
    pub kick_signal: tokio::sync::Notify,
    /// Every task holding server state (connections, watches, sessions), so `run` returns
    /// only after all of them are gone and the store file is unlocked.
    pub tasks: tokio_util::task::TaskTracker,
    /// What `/metrics` shows.
    pub metrics: Arc<metrics::ApiMetrics>,
    /// The readiness check's store read.
    pub store_probe: health::StoreProbe,
    /// This server's identity (its identity lease, the controllers' lease holder).
    pub identity: identity::ServerIdentity,
    /// API servers alive, from the identity leases (told to tunnelling nodes).
    pub live_servers: Arc<std::sync::atomic::AtomicUsize>,
    /// Tunnels that nodes dialed in to this server.
    pub tunnels: tunnel::Tunnels,
    ready: AtomicBool,
}

impl State {
    /// Ask the controllers for a pass now.
    pub fn kick(&self) {
        self.kick_signal.notify_one();
    }

    /// False once the server has begun to shut down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

fn bootstrap(store: &dyn Store) -> anyhow::Result<()> {
    let info = resources::core("namespaces");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if store
            .get(&info.key("", ns))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .is_none()
        {
            let obj = registry::prepare_new(info, "", json!({"metadata": {"name": ns}}))
                .map_err(|e| anyhow::anyhow!("bootstrap namespace {ns}: {e}"))?;
            match store.create(&info.key("", ns), obj) {
                // Another API server on the same store got there first.
                Ok(_) | Err(StoreError::AlreadyExists) => {}
                Err(e) => anyhow::bail!("bootstrap namespace {ns}: {e}"),
            }
        }
    }
    Ok(())
}

/// Serve until `shutdown` is cancelled. Prints `porthole apiserver listening on https://ADDR`
/// on stdout once serving.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::ApiMetrics::new());
    let backend: Arc<dyn Store> = match cfg.store {
        Some(store) => store,
        None => cfg.storage.open()?,
    };
    let store: Arc<dyn Store> = Arc::new(metrics::TimedStore::new(backend, metrics.clone()));
    bootstrap(store.as_ref())?;
    let addr = listener.local_addr().context("listener address")?;
    let advertise = cfg
        .advertise_address
        .or_else(|| (!addr.ip().is_unspecified()).then_some(addr.ip()))
        .map(|ip| SocketAddr::new(ip, addr.port()));
    let state = Arc::new(State {
        store,
        tokens: cfg.tokens,
        anonymous: cfg.anonymous_auth,
        kubelet_tls: cfg.kubelet_tls,
        in_process_node: cfg.in_process_node,
        signer: cfg.signer,
        audit: audit::AuditLog::open(cfg.audit_log_path.as_deref())?,
        shutdown: shutdown.child_token(),
        kick_signal: tokio::sync::Notify::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        metrics: metrics.clone(),
        store_probe: health::StoreProbe::default(),
        identity: identity::ServerIdentity::generate(advertise),
        live_servers: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
        tunnels: tunnel::Tunnels::default(),
        ready: AtomicBool::new(true),
    });
    let identity_leases = tokio::spawn(identity::run(
        state.store.clone(),
        state.identity.clone(),
        state.live_servers.clone(),
        state.shutdown.clone(),
    ));
    let node_grace = cfg.node_monitor_grace_period;
    let controllers = match cfg.leader_election {
        Some(election) => {
            let elector =
                leader::Elector::new(state.store.clone(), state.identity.holder.clone(), election)
                    .with_metrics(metrics.leader.clone());
            tracing::info!(identity = %elector.identity(), lease = %format!("{}/{}", leader::LEASE_NAMESPACE, leader::LEASE_NAME), "leader election on: the controllers run while this server holds the lease");
            let st = state.clone();
            tokio::spawn(elector.run(state.shutdown.clone(), move |stop| {
                controllers::run(st.clone(), node_grace, stop)
            }))
        }
        None => {
            metrics.leader.is_leader.set(1);
            tokio::spawn(controllers::run(
                state.clone(),
                node_grace,
                state.shutdown.clone(),
            ))
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.tls);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "porthole apiserver listening on https://{addr}")
            .context("write ready line")?;
        out.flush().context("flush ready line")?;
    }
    tracing::info!(%addr, storage = %cfg.storage, "serving");
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let tasks = state.tasks.clone();
        let state = state.clone();
        let acceptor = acceptor.clone();
        tasks.spawn(
            async move {
                let _ = tcp.set_nodelay(true);
                // Half-open connections left by partitions end (porthole_relay::keepalive).
                if let Err(e) = porthole_relay::keepalive::enable(&tcp) {
                    tracing::debug!(error = %e, "TCP keepalive not set");
                }
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
                let cert_user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| UserInfo::from_certificate(c));
                let cert_user = Arc::new(cert_user);
                let svc_state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = svc_state.clone();
                    let cert_user = cert_user.clone();
                    async move { Ok::<_, Infallible>(handle(state, remote, cert_user.as_ref().as_ref(), req).await) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .max_buf_size(256 * 1024);
                builder.http2().max_header_list_size(256 * 1024);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                tokio::select! {
                    r = conn => if let Err(e) = r { tracing::debug!(error = %e, "connection ended with an error") },
                    _ = state.shutdown.cancelled() => {}
                }
            }
            .instrument(tracing::debug_span!("conn", %remote)),
        );
    }
    state.ready.store(false, Ordering::Relaxed);
    state.shutdown.cancel();
    let _ = controllers.await;
    let _ = identity_leases.await;
    state.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 10s of shutdown");
    }
    Ok(())
}

async fn handle(
    state: Arc<State>,
    remote: SocketAddr,
    cert_user: Option<&UserInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = tokio::time::Instant::now();
    let (metric_verb, metric_resource) = metric_labels(&req);
    let resp = authenticated(&state, remote, cert_user, req).await;
    state.metrics.observe_request(
        metric_verb,
        metric_resource,
        resp.status().as_u16(),
        started,
    );
    resp
}

async fn authenticated(
    state: &Arc<State>,
    remote: SocketAddr,
    cert_user: Option<&UserInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    // The one object a joining node reads before it has credentials (kubeadm discovery).
    let anonymous = state.anonymous || is_public_discovery(req.method(), &path);
    let outcome = authn::authenticate(req.headers(), cert_user, &state.tokens, anonymous, |t| {
        // Only bootstrap-shaped tokens reach the store.
        registry::run_blocking(|| bootstrap::authenticate(state.store.as_ref(), t))
    });
    let user = match outcome {
        Outcome::User(u) => u,
        // Health checks (haproxy's, a kubelet's probe) carry no credentials: like
        // kube-apiserver, let them in as system:anonymous for these paths only, whatever
        // --anonymous-auth says. Wrong credentials still get 401.
        Outcome::Unauthorized
            if health::is_public(&path)
                && !authn::presents_credentials(req.headers(), cert_user) =>
        {
            UserInfo::anonymous()
        }
        Outcome::Unauthorized => {
            let resp = ApiError::Unauthorized.into_response();
            audit_request(
                state,
                "",
                req.method().as_str(),
                &path,
                resp.status().as_u16(),
                remote,
            );
            return resp;
        }
    };
    let (verb, resp) = match dispatch(state, &user, remote, req).await {
        Ok((verb, resp)) => (verb, resp),
        Err((verb, e)) => (verb, e.into_response()),
    };
    // A load balancer asks for /readyz every few seconds: recording each would bury the
    // requests the audit log is for.
    if !verb.is_empty() && !health::is_health_path(&path) {
        audit_request(
            state,
            &user.name,
            &verb,
            &path,
            resp.status().as_u16(),
            remote,
        );
    }
    resp
}

/// The `verb` and `resource` labels of `apiserver_request_total` for a request.
fn metric_labels<B>(req: &Request<B>) -> (&'static str, &'static str) {
    let method = req.method();
    match request::route(req.uri().path()) {
        Ok(Route::Resource(r)) => {
            let query = Query::parse(req.uri().query());
            let k8s_verb = request::verb(method, &r, &query).ok();
            let connect = request::is_connect(&r.subresource);
            let apply = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/apply-patch"));
            (
                metrics::reported_verb(method, k8s_verb.as_ref(), connect, apply),
                r.info.plural,
            )
        }
        _ => (metrics::reported_verb(method, None, false, false), ""),
    }
}

/// `GET /api/v1/namespaces/kube-public/configmaps/cluster-info`: public like in kubeadm
/// clusters; it holds the CA certificate, the server URL and the token signatures.
fn is_public_discovery(method: &Method, path: &str) -> bool {
    use porthole_bootstrap::token::{CLUSTER_INFO_NAME, CLUSTER_INFO_NAMESPACE};
    method == Method::GET
        && path
            .strip_prefix("/api/v1/namespaces/")
            .and_then(|p| p.strip_prefix(CLUSTER_INFO_NAMESPACE))
            .and_then(|p| p.strip_prefix("/configmaps/"))
            == Some(CLUSTER_INFO_NAME)
}

fn audit_request(state: &State, user: &str, verb: &str, path: &str, code: u16, remote: SocketAddr) {
    state.audit.write(&audit::RequestRecord {
        time: time::now_rfc3339(),
        kind: "request",
        user,
        verb,
        path,
        code,
        source: remote.to_string(),
    });
}

/// Route, authorize and serve. Returns the verb for the request audit record ("" when the
/// request was a port-forward, which writes its own record).
async fn dispatch(
    state: &Arc<State>,
    user: &UserInfo,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<(String, Response<Body>), (String, ApiError)> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let route = request::route(&path).map_err(|e| (method.as_str().to_lowercase(), e))?;
    let r = match route {
        Route::NonResource => {
            let attrs = request::Attributes {
                verb: Verb::non_resource(&method),
                resource: None,
                path: path.clone(),
            };
            let verb = attrs.verb.to_string();
            authz::authorize(state.store.as_ref(), user, &attrs).map_err(|e| (verb.clone(), e))?;
            if method != Method::GET && method != Method::HEAD {
                return Err((verb, ApiError::MethodNotAllowed));
            }
            if health::is_health_path(&path) {
                let authenticated = user.groups.iter().any(|g| g == "system:authenticated");
                let resp = health::handle(state, &path, &query, authenticated)
                    .await
                    .map_err(|e| (verb.clone(), e))?;
                return Ok((verb, resp));
            }
            if path == "/metrics" {
                let mut resp = http::Response::new(http_util::full(state.metrics.encode()));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                return Ok((verb, resp));
            }
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let resp = discovery::handle(&path, &accept).map_err(|e| (verb.clone(), e))?;
            return Ok((verb, resp));
        }
        Route::Resource(r) => r,
    };
    let verb =
        request::verb(&method, &r, &query).map_err(|e| (method.as_str().to_lowercase(), e))?;
    let fail = |e: ApiError| (verb.to_string(), e);
    authz::authorize(state.store.as_ref(), user, &request::attributes(&verb, &r)).map_err(fail)?;
    authz::node_restriction(state.store.as_ref(), user, &verb, &r, &query).map_err(fail)?;
    csr::read_restriction(state.store.as_ref(), user, &verb, &r, &query).map_err(fail)?;
    match r.subresource.as_str() {
        "tunnel" => {
            if method != Method::POST {
                return Err(fail(ApiError::MethodNotAllowed));
            }
            tunnel::serve(state, user, remote, &r.name, req)
                .map(|resp| (verb.to_string(), resp))
                .map_err(fail)
        }
        "portforward" | "reverseforward" | "proxy" => {
            let to_pod = r.subresource != "proxy";
            if method != Method::GET && method != Method::POST && to_pod {
                return Err(fail(ApiError::MethodNotAllowed));
            }
            if to_pod && verb != Verb::Create {
                // Kubernetes 1.35 (AuthorizePodWebsocketUpgradeCreatePermission): the WebSocket
                // GET also needs `create`, so "read-only" roles cannot forward ports.
                authz::authorize(
                    state.store.as_ref(),
                    user,
                    &request::attributes(&Verb::Create, &r),
                )
                .map_err(fail)?;
            }
            let target = if to_pod {
                portforward::Target::Pod {
                    namespace: r.namespace.clone(),
                    pod: r.name.clone(),
                    reverse: r.subresource == "reverseforward",
                }
            } else {
                portforward::Target::NodeProxy {
                    node: r.name.clone(),
                    rest: r.rest.clone(),
                }
            };
            let resp = portforward::serve(
                state.clone(),
                user.clone(),
                &verb,
                remote,
                req,
                target,
                &query,
            )
            .await;
            Ok((String::new(), resp))
        }
        "log" => {
            if method != Method::GET {
                return Err(fail(ApiError::MethodNotAllowed));
            }
            logs::serve(state, &r, &query)
                .await
                .map(|resp| (verb.to_string(), resp))
                .map_err(fail)
        }
        _ => {
            let (mut parts, body) = req.into_parts();
            let mut body = body::read_body(body).await.map_err(fail)?;
            if verb == Verb::Create && matches!(r.info.plural, "nodes" | "leases") {
                let name = body::body_name(&parts.headers, &body, r.info.kind);
                authz::node_create_restriction(user, &verb, &r, name.as_deref()).map_err(fail)?;
            }
            if verb == Verb::Create
                && r.info.plural == "certificatesigningrequests"
                && r.subresource.is_empty()
            {
                body = csr::admit(state, user, &parts.headers, &body)
                    .map_err(fail)?
                    .into();
                parts.headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
            }
            let resp = registry::run_blocking(|| {
                handlers::handle(state, &r, &method, &parts.headers, &query, body)
            })
            .map_err(fail)?;
            if matches!(
                verb,
                Verb::Create | Verb::Update | Verb::Patch | Verb::Delete
            ) {
                state.kick();
            }
            Ok((verb.to_string(), resp))
        }
    }
}
