//! The node's HTTPS endpoint (the kubelet's port 10250 equivalent, PROTOCOL.md §6.8):
//! `GET|POST /portForward/{ns}/{pod}[/{uid}]`, `GET|POST /reverseForward/{ns}/{pod}[/{uid}]`
//! (see [`crate::reverse`]), `GET /containerLogs/{ns}/{pod}/{container}`,
//! `GET /metrics`, and the health paths `GET /healthz`, `/livez`, `/readyz` (registered with
//! the API server, when there is one).
//!
//! Every caller but the health paths must present a client certificate from the cluster CA
//! whose CN is allowed (`--apiserver-client-names`); anything else gets 401/403 before any
//! upgrade.
//! Port-forward requests are negotiated with `porthole_proto::handshake::negotiate_server`
//! and, after the 101, served by porthole-relay's protocol servers with a dialer that connects
//! inside the pod's network namespace.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use porthole_netns::NetNs;
use porthole_proto::handshake::negotiate_server;
use porthole_relay::dial::{DialError, DialFuture, ForwardBytes, PodDialer, UdpDialFuture};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::endpoint::{full_response, Body, Endpoint};
use crate::metrics::NodeMetrics;
use crate::runtime::LogOptions;

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling, from the TLS handshake.
#[derive(Debug, Clone)]
enum Caller {
    Anonymous,
    Named(String),
    /// The API server of this same process (see [`crate::InProcessListener`]).
    InProcess,
    /// An API server, through a tunnel this node dialed to it (mutual TLS, the server's
    /// certificate checked against the cluster CA: see [`crate::tunnel`]).
    Tunnel,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    full_response(status, "text/plain; charset=utf-8", body.into())
}

/// Accepts connections on `listener` until `ep.shutdown` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ep: Arc<Endpoint>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = ep.shutdown.cancelled() => return,
                    }
                }
            },
            _ = ep.shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        // Half-open connections left by partitions end (porthole_relay::keepalive).
        if let Err(e) = porthole_relay::keepalive::enable(&tcp) {
            tracing::debug!(error = %e, "TCP keepalive not set");
        }
        let acceptor = acceptor.clone();
        let ep2 = ep.clone();
        ep.tasks.spawn(
            async move { connection(tcp, peer, acceptor, ep2).await }
                .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ep: Arc<Endpoint>,
) {
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "TLS handshake failed; connection refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let caller = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => Caller::Named(crate::tls::common_name(cert).unwrap_or_default()),
        None => Caller::Anonymous,
    };
    serve_http(tls, caller, peer, ep).await;
}

/// Serves connections handed over by the API server in this process until `ep.shutdown`.
pub(crate) async fn serve_in_process(
    mut rx: tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>,
    ep: Arc<Endpoint>,
) {
    // What the audit and logs show as the peer of an in-process connection.
    let peer = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    loop {
        let io = tokio::select! {
            io = rx.recv() => match io {
                Some(io) => io,
                None => return,
            },
            _ = ep.shutdown.cancelled() => return,
        };
        let ep2 = ep.clone();
        ep.tasks.spawn(
            async move { serve_http(io, Caller::InProcess, peer, ep2).await }
                .instrument(tracing::debug_span!("conn", peer = "in-process")),
        );
    }
}

/// Serves one connection an API server opened on a tunnel (`peer`: that server's address).
pub(crate) async fn serve_tunneled(
    io: porthole_relay::spdy::Stream,
    peer: SocketAddr,
    ep: Arc<Endpoint>,
) {
    serve_http(io, Caller::Tunnel, peer, ep).await
}

/// HTTP/1.1 with upgrades on one connection, until it ends or `ep.shutdown`.
async fn serve_http<IO>(io: IO, caller: Caller, peer: SocketAddr, ep: Arc<Endpoint>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = {
        let ep = ep.clone();
        hyper::service::service_fn(move |req| {
            let ep = ep.clone();
            let caller = caller.clone();
            async move { Ok::<_, Infallible>(route(req, &ep, &caller, peer).await) }
        })
    };
    // A client that never finishes its request head is dropped instead of holding a task.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(TLS_HANDSHAKE_TIMEOUT * 3)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = ep.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Splits `/a/b/c` into non-empty percent-decoded segments.
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

async fn route(
    req: Request<Incoming>,
    ep: &Arc<Endpoint>,
    caller: &Caller,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segs = segments(&path);
    let first = segs.first().map(String::as_str);
    // Health checks carry no client certificate (a load balancer's, a supervisor's).
    match (first, segs.len()) {
        (Some("healthz" | "livez"), 1) => return text(StatusCode::OK, "ok"),
        (Some("readyz"), 1) => return readyz(ep, req.uri().query()),
        _ => {}
    }
    // Everything else needs an allowed client certificate.
    let verb = match *req.method() {
        Method::POST => "create",
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    };
    match caller {
        Caller::Anonymous => {
            tracing::warn!(%peer, %path, "refused request without a client certificate");
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        Caller::Named(cn) if !ep.allowed_names.contains(cn) => {
            tracing::warn!(%peer, %path, user = %cn, "refused request from a client certificate that is not the API server's");
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={cn}, verb={verb}, resource=nodes, subresource(s)=[proxy])"
                ),
            );
        }
        Caller::Named(_) | Caller::InProcess | Caller::Tunnel => {}
    }
    match (first, segs.len()) {
        (Some("metrics"), 1) => {
            let mut resp = text(StatusCode::OK, ep.metrics.encode(&ep.runtime));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
        (Some("portForward"), 3 | 4) => port_forward(req, ep, &segs[1], &segs[2], segs.get(3)),
        (Some("reverseForward"), 3 | 4) => {
            crate::reverse::serve(req, ep, &segs[1], &segs[2], segs.get(3)).await
        }
        (Some("containerLogs"), 4) => {
            if req.method() != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use GET for /containerLogs");
            }
            container_logs(&req, ep, &segs[1], &segs[2], &segs[3])
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// `ok`, or 503 naming the failed check, in kube-apiserver's `[+]`/`[-]` form (always on
/// failure, with `?verbose` on success).
fn readyz(ep: &Endpoint, query: Option<&str>) -> Response<Body> {
    let checks = [
        ("ping", Ok(())),
        ("registered", ep.registration.check()),
        (
            "shutdown",
            if ep.shutdown.is_cancelled() {
                Err("the node agent is shutting down")
            } else {
                Ok(())
            },
        ),
    ];
    let mut lines = String::new();
    for (name, r) in &checks {
        match r {
            Ok(()) => lines += &format!("[+]{name} ok\n"),
            Err(why) => lines += &format!("[-]{name} failed: {why}\n"),
        }
    }
    if checks.iter().any(|(_, r)| r.is_err()) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{lines}readyz check failed\n"),
        );
    }
    let verbose = url_query(query).iter().any(|(k, _)| k == "verbose");
    if verbose {
        text(StatusCode::OK, format!("{lines}readyz check passed\n"))
    } else {
        text(StatusCode::OK, "ok")
    }
}

/// Connects inside one pod's namespace for the relay's protocol servers, and counts the
/// forwarded connections it made.
struct NetnsDialer {
    ns: NetNs,
    uid: String,
    metrics: Arc<NodeMetrics>,
}

impl PodDialer for NetnsDialer {
    fn dial(&self, port: u16) -> DialFuture {
        let ns = self.ns.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let conn = ns
                .dial(port, porthole_netns::DEFAULT_CONNECT_TIMEOUT)
                .await?;
            metrics.stream_opened();
            Ok(conn)
        })
    }

    fn dial_udp(&self, port: u16, ipv6: bool) -> UdpDialFuture {
        let ns = self.ns.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let addr = if ipv6 {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
            } else {
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
            };
            let sock = ns.udp_connect(addr).await.map_err(|e| {
                let cause = format!(
                    "failed to open a UDP socket to {addr} inside the pod: {}",
                    porthole_netns::describe_io_error(&e)
                );
                DialError::io(cause, e)
            })?;
            // Counted like a TCP stream; `forward_ended` balances it once per flow (the ::1
            // fallback's second socket replaces the first within the same flow).
            if !ipv6 {
                metrics.stream_opened();
            }
            Ok(sock)
        })
    }

    fn pod_id(&self) -> String {
        self.uid.clone()
    }

    fn forward_ended(&self, _port: u16, bytes: ForwardBytes) {
        self.metrics.stream_ended(bytes);
    }
}

fn port_forward(
    req: Request<Incoming>,
    ep: &Arc<Endpoint>,
    namespace: &str,
    name: &str,
    uid: Option<&String>,
) -> Response<Body> {
    let Some(pod) = ep.runtime.lookup(namespace, name) else {
        return text(StatusCode::NOT_FOUND, "pod does not exist");
    };
    if uid.is_some_and(|u| u != pod.uid()) {
        return text(StatusCode::NOT_FOUND, "pod not found");
    }
    let ns = match pod.forwardable_netns() {
        Ok(ns) => ns,
        Err(why) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("pod {namespace}/{name} {why}; port-forward needs a running pod"),
            )
        }
    };
    let (parts, body) = req.into_parts();
    let (upgrade, mut headers) = match negotiate_server(&parts) {
        Ok(ok) => ok,
        Err(rejection) => {
            let mut resp = text(rejection.status, rejection.body);
            resp.headers_mut().extend(rejection.headers);
            return resp;
        }
    };
    let extensions = porthole_proto::handshake::accept_extensions(
        &parts.headers,
        crate::session::EXTENSIONS,
        &upgrade,
        &mut headers,
    );
    let req = Request::from_parts(parts, body);
    let dialer: Arc<dyn PodDialer> = Arc::new(NetnsDialer {
        ns,
        uid: pod.uid().to_owned(),
        metrics: ep.metrics.clone(),
    });
    let pod_gone = pod.pod_gone();
    let ep2 = ep.clone();
    let span =
        tracing::debug_span!("portforward", pod = %format!("{namespace}/{name}"), uid = %pod.uid());
    ep.tasks.spawn(
        async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "port-forward upgrade failed");
                    return;
                }
            };
            let io = TokioIo::new(upgraded);
            let _active = ep2.metrics.session();
            let params = crate::session::SessionParams {
                stream_creation_timeout: ep2.stream_creation_timeout,
                idle_timeout: ep2.idle_timeout,
                pod_gone,
                udp: extensions.contains(&porthole_proto::handshake::EXTENSION_UDP),
            };
            tracing::debug!(?upgrade, "port-forward session started");
            tokio::select! {
                r = crate::session::run(upgrade, io, dialer, params) => match r {
                    Ok(()) => tracing::debug!("port-forward session ended"),
                    Err(e) => tracing::debug!(error = %porthole_relay::error::chain(e.as_ref()), "port-forward session ended with an error"),
                },
                _ = ep2.shutdown.cancelled() => tracing::debug!("port-forward session closed at shutdown"),
            }
        }
        .instrument(span),
    );
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
    *resp.body_mut() = Full::new(Bytes::new())
        .map_err(|never: Infallible| match never {})
        .boxed();
    resp.headers_mut().remove(header::CONTENT_TYPE);
    resp.headers_mut().extend(headers);
    resp
}

fn parse_bool(v: &str) -> bool {
    matches!(v, "true" | "1" | "True" | "TRUE" | "t" | "T")
}

fn container_logs(
    req: &Request<Incoming>,
    ep: &Arc<Endpoint>,
    namespace: &str,
    name: &str,
    container: &str,
) -> Response<Body> {
    let Some(pod) = ep.runtime.lookup(namespace, name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "pod {namespace}/{name} does not exist on node {}",
                ep.node_name
            ),
        );
    };
    if !pod.has_container(container) {
        return text(
            StatusCode::NOT_FOUND,
            format!("container {container} is not valid for pod {name}"),
        );
    }
    let mut opts = LogOptions::default();
    for (k, v) in url_query(req.uri().query()) {
        match k.as_str() {
            "follow" => opts.follow = parse_bool(&v),
            "timestamps" => opts.timestamps = parse_bool(&v),
            "previous" => opts.previous = parse_bool(&v),
            "tailLines" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => opts.tail_lines = Some(n as usize),
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("tailLines must be a non-negative integer, got {v:?}"),
                    )
                }
            },
            _ => {}
        }
    }
    let Some(run) = pod.log_run(container, opts.previous) else {
        let msg = if opts.previous {
            format!("previous terminated container \"{container}\" in pod \"{name}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{name}\" is waiting to start")
        };
        return text(StatusCode::BAD_REQUEST, msg);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let shutdown = ep.shutdown.clone();
    ep.tasks.spawn(async move {
        tokio::select! {
            _ = crate::runtime::logs::stream_log(run, opts, tx) => {}
            _ = shutdown.cancelled() => {}
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn url_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments() {
        assert_eq!(
            segments("/portForward/default/web/1234"),
            vec!["portForward", "default", "web", "1234"]
        );
        assert_eq!(url_query(Some("follow=true&tailLines=3")).len(), 2);
    }
}
