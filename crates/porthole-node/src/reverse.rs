//! `GET|POST /reverseForward/{ns}/{pod}[/{uid}]?port=P`: reverse forwarding. A connection made
//! inside the pod to its `127.0.0.1:P` (and `[::1]:P`) reaches the porthole client, which
//! relays it to a target on the user's side (docs/ARCHITECTURE.md, "Reverse forwarding").
//!
//! Before the 101 the node listens inside the pod's network namespace, so a port that is
//! already taken is answered with 409 and a Kubernetes Status instead of an upgrade. After the
//! 101 the SPDY roles are the reverse of port-forward's: the node is the SPDY client and opens
//! an error + data stream pair per accepted connection (porthole-relay's `PortForwarder`, whose
//! error text from the client closes that in-pod connection). The listeners exist only while
//! the session lives: they are closed when it ends, when its keepalive PINGs go unanswered,
//! when the pod stops, and at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use porthole_netns::ListenError;
use porthole_proto::handshake::{negotiate_server, Upgrade};
use porthole_relay::dial::ForwardBytes;
use porthole_relay::portforward::spdy_client::{ForwardError, PortForwarder};
use porthole_relay::spdy;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::endpoint::{full_response, Body, Endpoint};

/// Keepalive of the node's end: a PING every 5 s, the client declared dead when one stays
/// unanswered 10 s (the client PINGs too, so both ends notice a dead peer).
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kubernetes `Status` failure, which the API server passes through and clients print.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    full_response(code, "application/json", body.to_string())
}

/// The one pod port of `?port=P`.
fn parse_port(query: Option<&str>) -> Result<u16, String> {
    let values: Vec<&str> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("port="))
        .flat_map(|v| v.split(&[',', ' '][..]))
        .flat_map(|v| v.split("%2C"))
        .filter(|v| !v.is_empty())
        .collect();
    match values.as_slice() {
        [one] => match one.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!(
                "invalid port {one:?} for reverse forwarding: expected 1-65535"
            )),
        },
        [] => Err("reverse forwarding needs the pod port (query port=P)".into()),
        _ => Err("reverse forwarding takes exactly one pod port per request".into()),
    }
}

/// Serves one reverse-forward request: checks, listen inside the pod, then the 101 and the
/// session in a task.
pub(crate) async fn serve(
    req: Request<Incoming>,
    ep: &Arc<Endpoint>,
    namespace: &str,
    name: &str,
    uid: Option<&String>,
) -> Response<Body> {
    let port = match parse_port(req.uri().query()) {
        Ok(p) => p,
        Err(why) => return status(StatusCode::BAD_REQUEST, "BadRequest", &why),
    };
    let Some(pod) = ep.runtime.lookup(namespace, name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod {namespace}/{name} does not exist on this node"),
        );
    };
    if uid.is_some_and(|u| u != pod.uid()) {
        return status(StatusCode::NOT_FOUND, "NotFound", "pod not found");
    }
    let ns = match pod.forwardable_netns() {
        Ok(ns) => ns,
        Err(why) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("pod {namespace}/{name} {why}; reverse forwarding needs a running pod"),
            )
        }
    };
    let (parts, body) = req.into_parts();
    let (upgrade, headers) = match negotiate_server(&parts) {
        Ok(ok) => ok,
        Err(rejection) => {
            let mut resp = status(rejection.status, "BadRequest", &rejection.body);
            resp.headers_mut().extend(rejection.headers);
            return resp;
        }
    };
    let (tunnel, flow_control) = match upgrade {
        Upgrade::Spdy { flow_control } => (false, flow_control),
        Upgrade::WsTunnel { flow_control } => (true, flow_control),
        Upgrade::WsChannels { .. } => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "reverse forwarding needs SPDY/3.1 or the WebSocket tunnel \
                 (SPDY/3.1+portforward.k8s.io), not the channel protocol",
            )
        }
    };
    // Listen before answering: a port in use must be an error status, not a dead session.
    let listeners = match ns.listen_loopback(port).await {
        Ok(l) => l,
        Err(ListenError::InUse { .. }) => {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "port {port} is already in use inside pod {namespace}/{name}: choose \
                     another pod port for --reverse"
                ),
            )
        }
        Err(ListenError::Other { cause }) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("cannot listen on port {port} inside pod {namespace}/{name}: {cause}"),
            )
        }
    };
    let req = Request::from_parts(parts, body);
    let pod_gone = pod.pod_gone();
    let ep2 = ep.clone();
    let span = tracing::debug_span!("reverseforward", pod = %format!("{namespace}/{name}"), port);
    ep.tasks.spawn(
        async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "reverse-forward upgrade failed");
                    return;
                }
            };
            let _active = ep2.metrics.session();
            let cfg = spdy::Config {
                session: spdy::SessionConfig {
                    ping_interval: Some(PING_INTERVAL),
                    ping_timeout: PING_TIMEOUT,
                    flow_control,
                    ..spdy::SessionConfig::default()
                },
                ..spdy::Config::default()
            };
            let io = TokioIo::new(upgraded);
            let forwarder = if tunnel {
                let ws = porthole_relay::ws::WsStream::new(io, porthole_relay::ws::Role::Server);
                PortForwarder::new(ws, cfg)
            } else {
                PortForwarder::new(io, cfg)
            };
            tracing::debug!(tunnel, flow_control, "reverse-forward session started");
            run_session(Arc::new(forwarder), listeners, port, &ep2, pod_gone).await;
        }
        .instrument(span),
    );
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().extend(headers);
    resp
}

/// Accepts in-pod connections and forwards each over the session until the session ends, the
/// pod goes, or the node shuts down; then closes the listeners and every connection.
async fn run_session(
    forwarder: Arc<PortForwarder>,
    listeners: Vec<TcpListener>,
    port: u16,
    ep: &Arc<Endpoint>,
    pod_gone: CancellationToken,
) {
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for listener in listeners {
        let (forwarder, stop, ep) = (forwarder.clone(), stop.clone(), ep.clone());
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    a = listener.accept() => a,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                match accepted {
                    Ok((sock, peer)) => {
                        let (forwarder, ep) = (forwarder.clone(), ep.clone());
                        conns.spawn(
                            forward_one(forwarder, sock, port, ep)
                                .instrument(tracing::debug_span!("conn", %peer)),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection inside the pod");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
            }
            // The listener closes here, when this task returns; in-pod connections with it.
            drop(listener);
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        });
    }
    let why = tokio::select! {
        r = forwarder.closed() => format!("session ended: {r}"),
        _ = pod_gone.cancelled() => "the pod stopped".to_string(),
        _ = ep.shutdown.cancelled() => "the node is shutting down".to_string(),
    };
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    forwarder.shutdown().await;
    tracing::debug!(%why, "reverse-forward session ended; listeners closed");
}

/// One in-pod connection: an error + data stream pair to the client, relayed with half-close.
async fn forward_one(
    forwarder: Arc<PortForwarder>,
    sock: tokio::net::TcpStream,
    port: u16,
    ep: Arc<Endpoint>,
) {
    ep.metrics.stream_opened();
    let mut bytes = ForwardBytes::default();
    match forwarder.forward_tcp(sock, port).await {
        Ok(report) => {
            // Seen from the pod: what came in through the session went to the pod.
            bytes.to_pod = report.bytes_in;
            bytes.from_pod = report.bytes_out;
            tracing::debug!(
                to_pod = bytes.to_pod,
                from_pod = bytes.from_pod,
                "reverse connection finished"
            );
        }
        // The client could not reach its target: the in-pod connection is already closed.
        Err(ForwardError::Remote(text)) => {
            tracing::debug!(%text, "client refused the reverse connection")
        }
        Err(e) => tracing::debug!(error = %e, "reverse connection ended with an error"),
    }
    ep.metrics.stream_ended(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_query() {
        assert_eq!(parse_port(Some("port=9000")), Ok(9000));
        assert_eq!(parse_port(Some("a=b&port=80")), Ok(80));
        assert!(parse_port(None).unwrap_err().contains("needs the pod port"));
        assert!(parse_port(Some("port=0")).unwrap_err().contains("1-65535"));
        assert!(parse_port(Some("port=x")).is_err());
        assert!(parse_port(Some("port=1%2C2"))
            .unwrap_err()
            .contains("exactly one"));
    }
}
