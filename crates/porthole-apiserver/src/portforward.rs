//! The port-forward proxy: checks, then a byte-for-byte upgrade proxy to the node agent for
//! all three protocols (SPDY `POST`, WebSocket tunnel `SPDY/3.1+portforward.k8s.io`,
//! WebSocket channels `v4/v5.channel.k8s.io`), like kube-apiserver's UpgradeAwareHandler with
//! `ExtendWebSocketsToKubelet` (PROTOCOL.md §6.5, Contract 4).
//!
//! Flow: pod checks → dial node (TLS, our kubelet-client cert, timeout) → write the rewritten
//! request → read the node's head. 101: answer the client with a 101 carrying the node's
//! headers, then copy bytes both ways with 64 KiB buffers until either side ends. ≥ 400: the
//! node's status and body go to the client. Every session writes one audit record, and adds
//! its byte counts to the metrics when it ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::Instrument as _;

use crate::audit::PortForwardRecord;
use crate::authn::{UserInfo, WS_BEARER_PREFIX};
use crate::error::ApiError;
use crate::http_util::{full, Body, Query};
use crate::kubelet;
use crate::request::Verb;
use crate::State;

/// Copy buffer per direction.
const COPY_BUFFER: usize = 64 * 1024;
/// Largest error body passed through from a node.
const MAX_NODE_ERROR_BODY: usize = 1024 * 1024;

/// What the client asked to reach.
#[derive(Debug, Clone)]
pub enum Target {
    /// `/api/v1/namespaces/{ns}/pods/{pod}/portforward`, or `.../reverseforward`.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        /// `reverseforward`: the node listens inside the pod (`/reverseForward/...`, one
        /// port); the same upgrade proxy otherwise.
        reverse: bool,
    },
    /// `/api/v1/nodes/{node}/proxy/{rest}` or `/proxy/nodes/{node}/{rest}`.
    NodeProxy {
        /// Node name.
        node: String,
        /// Path on the node (without the leading slash).
        rest: String,
    },
}

/// Parse the `ports` query: repeatable, each value a comma list of u16 (Kubernetes'
/// `PodPortForwardOptions` conversion).
pub fn parse_ports(query: &Query) -> Result<Vec<u16>, ApiError> {
    let mut out = Vec::new();
    for v in query.all("ports") {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out.push(p.parse::<u16>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "cannot convert to []int32: strconv.ParseUint: parsing {p:?}: invalid syntax"
                ))
            })?);
        }
    }
    Ok(out)
}

fn protocol_of(headers: &HeaderMap) -> String {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if upgrade.to_ascii_lowercase().starts_with("spdy/") {
        return "spdy".into();
    }
    let protos = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if protos.contains("portforward.k8s.io") {
        "websocket-tunnel".into()
    } else if upgrade.eq_ignore_ascii_case("websocket") {
        "websocket-channels".into()
    } else {
        "unknown".into()
    }
}

/// Headers for the node: everything except credentials, impersonation and Host; the bearer
/// subprotocol entry removed; our client address appended to X-Forwarded-For.
fn node_headers(client: &HeaderMap, remote: std::net::SocketAddr, host: &str) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in client {
        let n = name.as_str();
        if n == "authorization"
            || n == "proxy-authorization"
            || n.starts_with("impersonate-")
            || n == "host"
            || n == "x-forwarded-for"
            || n == "sec-websocket-protocol"
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let protos: Vec<String> = client
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(WS_BEARER_PREFIX))
        .map(str::to_string)
        .collect();
    if !protos.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&protos.join(", ")) {
            out.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    let prior = client
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let xff = if prior.is_empty() {
        remote.ip().to_string()
    } else {
        format!("{prior}, {}", remote.ip())
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        out.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(host) {
        out.insert(header::HOST, v);
    }
    out
}

/// Counts bytes read through it.
struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts one relayed session in the active gauge for as long as it lives, however the
/// session's task ends.
struct ActiveSession<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> ActiveSession<'a> {
    fn start(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ActiveSession<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Run the checks and the proxy. Always returns a response (errors as Status) and always
/// writes one audit record.
pub async fn serve(
    state: Arc<State>,
    user: UserInfo,
    verb: &Verb,
    remote: std::net::SocketAddr,
    mut req: Request<Incoming>,
    target: Target,
    query: &Query,
) -> Response<Body> {
    let started = tokio::time::Instant::now();
    let mut record = PortForwardRecord {
        start: crate::time::now_rfc3339(),
        kind: "portforward",
        user: user.name.clone(),
        groups: user.groups.clone(),
        verb: verb.to_string(),
        protocol: protocol_of(req.headers()),
        source: remote.to_string(),
        ..Default::default()
    };
    if let Target::Pod {
        namespace,
        pod,
        reverse,
    } = &target
    {
        record.namespace = namespace.clone();
        record.pod = pod.clone();
        if *reverse {
            record.kind = "reverseforward";
        }
    }
    if let Target::NodeProxy { node, rest } = &target {
        record.node = node.clone();
        let segs: Vec<&str> = rest.split('/').collect();
        if let [kind @ ("portForward" | "reverseForward"), ns, pod, ..] = segs.as_slice() {
            record.namespace = ns.to_string();
            record.pod = pod.to_string();
            if *kind == "reverseForward" {
                record.kind = "reverseforward";
            }
        }
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let prepared = prepare(&state, &req, &target, query, &mut record).await;
    let (ep, path) = match prepared {
        Ok(x) => x,
        Err(e) => {
            record.outcome = format!(
                "rejected: {}",
                e.status().1["message"].as_str().unwrap_or("")
            );
            record.duration_ms = started.elapsed().as_millis() as u64;
            state.audit.write(&record);
            return e.into_response();
        }
    };
    record.node = ep.node.clone();
    let span =
        tracing::debug_span!("portforward", user = %user.name, node = %ep.node, pod = %record.pod);
    match forward(
        &state,
        req,
        client_upgrade,
        &ep,
        &path,
        remote,
        record.clone(),
        started,
    )
    .instrument(span)
    .await
    {
        Ok(resp) => resp,
        Err(e) => {
            record.outcome = format!("error: {}", e.status().1["message"].as_str().unwrap_or(""));
            record.duration_ms = started.elapsed().as_millis() as u64;
            state.audit.write(&record);
            e.into_response()
        }
    }
}

/// Checks before dialing; returns the node endpoint and the node path (with query).
async fn prepare(
    state: &State,
    req: &Request<Incoming>,
    target: &Target,
    query: &Query,
    record: &mut PortForwardRecord,
) -> Result<(kubelet::NodeEndpoint, String), ApiError> {
    match target {
        Target::Pod {
            namespace,
            pod,
            reverse,
        } => {
            let ports = parse_ports(query)?;
            record.ports = ports.clone();
            if *reverse && ports.len() != 1 {
                return Err(ApiError::BadRequest(format!(
                    "reverse forwarding takes exactly one pod port (ports=P), got {}",
                    ports.len()
                )));
            }
            if !crate::http_util::is_upgrade(req.headers()) {
                return Err(ApiError::BadRequest("Upgrade request required".into()));
            }
            let r = crate::request::ResourceRequest {
                info: crate::resources::core("pods"),
                namespace: namespace.clone(),
                name: pod.clone(),
                subresource: String::new(),
                rest: String::new(),
            };
            let p = crate::registry::get(state.store.as_ref(), &r)?;
            let node = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if node.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "pod {pod} does not have a host assigned"
                )));
            }
            let phase = p
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Unknown");
            if phase != "Running" {
                return Err(ApiError::BadRequest(format!(
                    "unable to forward port because pod is not running. Current status={phase}"
                )));
            }
            let ep = kubelet::endpoint(state.store.as_ref(), node)?;
            let mut path = format!(
                "/{}/{}/{}",
                if *reverse {
                    "reverseForward"
                } else {
                    "portForward"
                },
                percent_encoding::utf8_percent_encode(
                    namespace,
                    percent_encoding::NON_ALPHANUMERIC
                ),
                percent_encoding::utf8_percent_encode(pod, percent_encoding::NON_ALPHANUMERIC)
            );
            if !ports.is_empty() {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                path.push_str("?port=");
                path.push_str(&list.join("%2C"));
            }
            Ok((ep, path))
        }
        Target::NodeProxy { node, rest } => {
            let ep = kubelet::endpoint(state.store.as_ref(), node)?;
            if rest.split('/').any(|s| s == "..") {
                return Err(ApiError::BadRequest(
                    "node proxy path may not contain '..'".into(),
                ));
            }
            // Upgrade requests use only the backend location: the client's query is not
            // forwarded (PROTOCOL.md §6.10), so a channel request through here loses `port`.
            let mut path = format!("/{rest}");
            if !crate::http_util::is_upgrade(req.headers()) {
                if let Some(q) = req.uri().query() {
                    path.push('?');
                    path.push_str(q);
                }
            }
            Ok((ep, path))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &Arc<State>,
    req: Request<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    ep: &kubelet::NodeEndpoint,
    path: &str,
    remote: std::net::SocketAddr,
    mut record: PortForwardRecord,
    started: tokio::time::Instant,
) -> Result<Response<Body>, ApiError> {
    let upgrade_requested = crate::http_util::is_upgrade(req.headers());
    let stream = kubelet::dial(state, ep).await?;
    let mut sender = kubelet::http1_client(stream).await?;
    let host = format!("{}:{}", ep.host, ep.port);
    let mut node_req = Request::builder()
        .method(req.method().clone())
        .uri(path)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(format!("build node request: {e}")))?;
    *node_req.headers_mut() = node_headers(req.headers(), remote, &host);
    let mut node_resp = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sender.send_request(node_req),
    )
    .await
    .map_err(|_| {
        ApiError::ServiceUnavailable(format!(
            "error dialing backend: node {:?} did not answer within 30s",
            ep.node
        ))
    })?
    .map_err(|e| {
        ApiError::ServiceUnavailable(format!("error dialing backend: node {:?}: {e}", ep.node))
    })?;
    let status = node_resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS && upgrade_requested {
        if let Some(p) = node_resp
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
        {
            record.protocol = if p.contains("portforward.k8s.io") {
                "websocket-tunnel".into()
            } else {
                "websocket-channels".into()
            };
        }
        let node_upgrade = hyper::upgrade::on(&mut node_resp);
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *resp.headers_mut() = node_resp.headers().clone();
        let audit = state.clone();
        state.tasks.spawn(
            async move {
                let (client_io, node_io) = match tokio::join!(client_upgrade, node_upgrade) {
                    (Ok(c), Ok(n)) => (c, n),
                    (c, n) => {
                        let why = c.err().or(n.err()).map(|e| e.to_string()).unwrap_or_default();
                        record.outcome = format!("error: upgrade failed: {why}");
                        record.duration_ms = started.elapsed().as_millis() as u64;
                        audit.audit.write(&record);
                        return;
                    }
                };
                let metrics = audit.metrics.clone();
                metrics.portforward_sessions.inc();
                let _active = ActiveSession::start(&metrics.portforward_sessions_active);
                let up = Arc::new(AtomicU64::new(0));
                let down = Arc::new(AtomicU64::new(0));
                let mut c = Counted { inner: TokioIo::new(client_io), read: up.clone() };
                let mut n = Counted { inner: TokioIo::new(node_io), read: down.clone() };
                let result = tokio::select! {
                    r = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut n, COPY_BUFFER, COPY_BUFFER) => r.map(|_| ()),
                    _ = audit.shutdown.cancelled() => Err(std::io::Error::other("API server shutting down")),
                };
                record.bytes_client_to_node = up.load(Ordering::Relaxed);
                record.bytes_node_to_client = down.load(Ordering::Relaxed);
                metrics.add_relayed_bytes(record.bytes_client_to_node, record.bytes_node_to_client);
                record.duration_ms = started.elapsed().as_millis() as u64;
                record.outcome = match result {
                    Ok(()) => "ok".into(),
                    // Clients commonly drop the TCP connection without a TLS close_notify
                    // (kubectl on Ctrl-C): that is a normal end of a session.
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => "ok".into(),
                    Err(e) => format!("ended: {e}"),
                };
                tracing::debug!(outcome = %record.outcome, up = record.bytes_client_to_node, down = record.bytes_node_to_client, "port-forward session ended");
                audit.audit.write(&record);
            }
            .in_current_span(),
        );
        return Ok(resp);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ApiError::Internal(
            "node switched protocols on a request that did not ask to".into(),
        ));
    }
    if upgrade_requested && !status.is_client_error() && !status.is_server_error() {
        return Err(ApiError::Internal(format!(
            "invalid upgrade response: status code {}",
            status.as_u16()
        )));
    }
    // ≥ 400 (or a plain node-proxy request): pass the node's answer through.
    record.outcome = format!("node answered {}", status.as_u16());
    let headers = node_resp.headers().clone();
    let body = http_body_util::Limited::new(node_resp.into_body(), MAX_NODE_ERROR_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    record.duration_ms = started.elapsed().as_millis() as u64;
    state.audit.write(&record);
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    for (k, v) in &headers {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING && k != header::CONNECTION
        {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_query_forms() {
        let q = Query::parse(Some("&ports=80&ports=81%2C82"));
        assert_eq!(parse_ports(&q).expect("ports"), vec![80, 81, 82]);
        assert!(parse_ports(&Query::parse(Some("ports=x"))).is_err());
    }

    #[test]
    fn headers_strip_credentials_and_bearer_protocol() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        h.insert("impersonate-user", HeaderValue::from_static("x"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(
                "v4.channel.k8s.io, base64url.bearer.authorization.k8s.io.c2VjcmV0",
            ),
        );
        let out = node_headers(&h, "10.0.0.1:5".parse().expect("addr"), "127.0.0.1:1");
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert!(out.get("impersonate-user").is_none());
        assert_eq!(out[header::SEC_WEBSOCKET_PROTOCOL], "v4.channel.k8s.io");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1");
        assert_eq!(out[header::UPGRADE], "websocket");
    }

    /// Porthole's negotiation headers reach the node unchanged (its 101 comes back verbatim),
    /// whichever way the node is reached: the same request goes over TLS, a tunnel or the
    /// in-process pipe.
    #[test]
    fn porthole_negotiation_headers_pass_to_the_node() {
        let mut h = HeaderMap::new();
        h.insert("x-porthole-extensions", HeaderValue::from_static("udp"));
        h.insert("x-porthole-flow-control", HeaderValue::from_static("1"));
        let out = node_headers(&h, "10.0.0.1:5".parse().expect("addr"), "127.0.0.1:1");
        assert_eq!(out["x-porthole-extensions"], "udp");
        assert_eq!(out["x-porthole-flow-control"], "1");
    }
}
