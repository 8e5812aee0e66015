//! `--reverse POD_PORT:LOCAL_HOST:LOCAL_PORT`: a connection made inside the pod to its
//! `127.0.0.1:POD_PORT` reaches `LOCAL_HOST:LOCAL_PORT` on this side (ssh -R's shape).
//!
//! Each spec has its own upgraded session to `pods/{pod}/reverseforward?ports=POD_PORT`, so
//! one failing spec never takes the others (or the forwards) down. On that session the node
//! is the SPDY client: it opens an error + data stream pair per in-pod connection, and
//! [`ReverseAcceptor`] hands them to us; each is relayed to a fresh connection to the local
//! target, or refused with the dial error as text, which the node turns into closing the
//! in-pod connection. A lost session is re-established with back-off, as the forward
//! supervisor does; `--reconnect=false` ends the command instead.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use porthole_proto::handshake;
use porthole_relay::portforward::reverse::{ReverseAcceptor, ReverseConnection};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::output::{Event, Output};
use crate::target::{ResolveError, Resolver};
use crate::transport::{self, Keepalive, TransportMode};

/// How long dialing the local target may take.
const LOCAL_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that ends sooner than this after connecting counts as flapping (growing back-off).
const STABLE_SESSION: Duration = Duration::from_secs(10);
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One `--reverse POD_PORT:LOCAL_HOST:LOCAL_PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseSpec {
    /// The port listened on inside the pod (127.0.0.1 and ::1).
    pub pod_port: u16,
    /// Where connections go on this side: a host name or an IP (IPv6 in brackets on input).
    pub local_host: String,
    /// The port there.
    pub local_port: u16,
}

impl ReverseSpec {
    /// Parses `POD_PORT:LOCAL_HOST:LOCAL_PORT` (`9000:localhost:5432`, `9000:[::1]:5432`).
    pub fn parse(s: &str) -> Result<ReverseSpec, String> {
        let bad = |why: &str| {
            format!("invalid --reverse '{s}': expected POD_PORT:LOCAL_HOST:LOCAL_PORT ({why})")
        };
        let (pod_port, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("no ':' after the pod port"))?;
        let (host, local_port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("LOCAL_HOST and LOCAL_PORT are required"))?;
        let port = |p: &str, what: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(&format!(
                "{what} {p:?} is not a port between 1 and 65535"
            ))),
        };
        let pod_port = port(pod_port, "POD_PORT")?;
        let local_port = port(local_port, "LOCAL_PORT")?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(|| bad(&format!("{host:?} is not a bracketed IPv6 address")))?,
            None => host,
        };
        if host.is_empty() || host.contains(['[', ']', '/', ' ']) {
            return Err(bad(&format!("{host:?} is not a host name or IP address")));
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(&format!("{host:?} is not a host name or IP address")));
        }
        Ok(ReverseSpec {
            pod_port,
            local_host: host.to_string(),
            local_port,
        })
    }

    /// `localhost:5432`, `[::1]:5432`.
    pub fn local(&self) -> String {
        crate::listen::join_host_port(&self.local_host, self.local_port)
    }
}

/// What every reverse session shares.
pub(crate) struct Context {
    pub(crate) client: kube::Client,
    pub(crate) resolver: Resolver,
    pub(crate) transport: TransportMode,
    pub(crate) keepalive: Keepalive,
    pub(crate) output: Output,
    pub(crate) reconnect: bool,
    /// How long the target may stay deleted before a spec gives up.
    pub(crate) pod_running_timeout: Duration,
}

/// Why a reverse session could not be opened.
#[derive(Debug, Clone)]
struct OpenError {
    /// The whole line to print (`error: ...`, `Error from server (Forbidden): ...`).
    message: String,
    /// Retrying cannot help (forbidden, not supported by the server, bad request).
    permanent: bool,
    /// The target object does not exist (any more); after `--pod-running-timeout` of this
    /// the spec gives up, as the forwards do.
    gone: bool,
}

/// An open reverse session.
struct Session {
    acceptor: ReverseAcceptor,
    pod: String,
    transport: &'static str,
}

/// Runs every reverse spec until `stop` (returns success), or (without reconnect) until one
/// fails or loses its session, or (`alone`: no forwards in the command) until every spec has
/// failed for good. Failures that do not end the command are printed as they happen; the line
/// that ends it is returned.
pub(crate) async fn run(
    ctx: Arc<Context>,
    specs: Vec<ReverseSpec>,
    first_pod: String,
    alone: bool,
    stop: CancellationToken,
) -> Result<(), String> {
    let stop_all = stop.child_token();
    let mut set = JoinSet::new();
    for spec in specs {
        set.spawn(run_spec(
            ctx.clone(),
            spec,
            first_pod.clone(),
            stop_all.child_token(),
        ));
    }
    while let Some(done) = set.join_next().await {
        let end = done.unwrap_or_else(|e| Err(format!("error: reverse forward task failed: {e}")));
        let Err(line) = end else { continue };
        if !ctx.reconnect || (alone && set.is_empty()) {
            stop_all.cancel();
            while set.join_next().await.is_some() {}
            return Err(line);
        }
        ctx.output.warn(&line);
    }
    Ok(())
}

/// One spec: connect, serve, and reconnect with back-off until `stop`.
async fn run_spec(
    ctx: Arc<Context>,
    spec: ReverseSpec,
    first_pod: String,
    stop: CancellationToken,
) -> Result<(), String> {
    let first = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        r = open(&ctx, &first_pod, spec.pod_port) => r,
    };
    let mut session = first.map_err(|e| e.message)?;
    listening(&ctx.output, &session.pod, &spec);
    let conn_ids = Arc::new(AtomicU64::new(0));
    let mut flap: Option<Duration> = None;
    loop {
        let connected_at = Instant::now();
        let reason = serve(&ctx, &mut session, &spec, &conn_ids, &stop).await;
        let Some(reason) = reason else {
            session.acceptor.connection().shutdown().await;
            return Ok(());
        };
        if !ctx.reconnect {
            return Err("error: lost connection to pod".into());
        }
        ctx.output.notice(
            &format!(
                "Lost reverse forwarding session to pod {} (port {}): {reason}; reconnecting",
                session.pod, spec.pod_port
            ),
            Event::Reconnecting {
                pod: session.pod.clone(),
                reason: reason.clone(),
            },
        );
        flap = (connected_at.elapsed() < STABLE_SESSION)
            .then(|| flap.map_or(BACKOFF_INITIAL, |d| (d * 2).min(BACKOFF_MAX)));
        session = match reopen(&ctx, &spec, flap, &stop).await? {
            Some(s) => s,
            None => return Ok(()),
        };
        ctx.output.notice(
            &format!(
                "Reconnected reverse forwarding to pod {} ({})",
                session.pod, session.transport
            ),
            Event::Reconnected {
                pod: session.pod.clone(),
                transport: session.transport.to_string(),
            },
        );
    }
}

/// `Reverse forwarding from pod web 127.0.0.1:9000 -> localhost:5432` (or its event).
fn listening(output: &Output, pod: &str, spec: &ReverseSpec) {
    let local = spec.local();
    if !output.is_json() {
        output.stdout_line(&format!(
            "Reverse forwarding from pod {pod} 127.0.0.1:{} -> {local}",
            spec.pod_port
        ));
    }
    output.event(Event::ReverseListening {
        pod: pod.to_string(),
        pod_port: spec.pod_port,
        local,
    });
}

/// Accepts the node's stream pairs until the session ends (`Some(reason)`) or `stop` (`None`).
async fn serve(
    ctx: &Arc<Context>,
    session: &mut Session,
    spec: &ReverseSpec,
    conn_ids: &Arc<AtomicU64>,
    stop: &CancellationToken,
) -> Option<String> {
    let mut conns = JoinSet::new();
    let end = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break None,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            c = session.acceptor.accept() => c,
        };
        let Some(conn) = next else {
            let reason = session.acceptor.connection().closed().await;
            break Some(reason.to_string());
        };
        let id = conn_ids.fetch_add(1, Ordering::Relaxed);
        conns.spawn(handle(
            ctx.clone(),
            conn,
            spec.clone(),
            session.pod.clone(),
            id,
            stop.clone(),
        ));
    };
    // On stop the connection's shutdown resets the streams; let the relays see it briefly.
    if end.is_none() {
        session.acceptor.connection().shutdown().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    end
}

/// One in-pod connection: dial the local target and relay, or refuse with the dial error.
async fn handle(
    ctx: Arc<Context>,
    conn: ReverseConnection,
    spec: ReverseSpec,
    pod: String,
    id: u64,
    stop: CancellationToken,
) {
    let output = &ctx.output;
    if !output.is_json() {
        output.stdout_line(&format!(
            "Handling reverse connection for {}",
            spec.pod_port
        ));
    }
    let local = spec.local();
    output.event(Event::ReverseConnectionOpened {
        id,
        pod_port: spec.pod_port,
        local: local.clone(),
        pod: pod.clone(),
    });
    let (bytes_to_pod, bytes_from_pod, error) = match dial_local(&spec).await {
        Ok(mut sock) => match conn.relay(&mut sock).await {
            Ok(moved) => (moved.b_to_a, moved.a_to_b, None),
            Err(e) => (0, 0, Some(format!("relay: {e}"))),
        },
        Err(text) => {
            conn.refuse(&text).await;
            if !stop.is_cancelled() {
                output.warn(&format!(
                    "error: reverse connection for {} -> {local}: {text}",
                    spec.pod_port
                ));
            }
            (0, 0, Some(text))
        }
    };
    output.event(Event::ReverseConnectionClosed {
        id,
        pod_port: spec.pod_port,
        pod,
        bytes_to_pod,
        bytes_from_pod,
        error,
    });
}

/// Connects to the local target, each resolved address in turn; the error text is Go's
/// (`dial tcp 127.0.0.1:5432: connect: connection refused`), which the node logs and the
/// user knows.
async fn dial_local(spec: &ReverseSpec) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> =
        match tokio::net::lookup_host((spec.local_host.as_str(), spec.local_port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                return Err(format!(
                    "dial tcp: lookup {}: {}",
                    spec.local_host,
                    go_io_error(&e)
                ))
            }
        };
    let mut last = format!("dial tcp: lookup {}: no addresses", spec.local_host);
    for addr in addrs {
        match tokio::time::timeout(LOCAL_DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("dial tcp {addr}: connect: {}", go_io_error(&e)),
            Err(_) => last = format!("dial tcp {addr}: i/o timeout"),
        }
    }
    Err(last)
}

/// `connection refused` rather than `Connection refused (os error 111)`: Go's lower-case
/// form, as in kubectl's error texts.
fn go_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

/// Re-resolves the target and reconnects with capped back-off until a session is up (`Some`),
/// `stop` (`None`), or the server refuses for good (`Err`).
async fn reopen(
    ctx: &Arc<Context>,
    spec: &ReverseSpec,
    flap: Option<Duration>,
    stop: &CancellationToken,
) -> Result<Option<Session>, String> {
    let mut delay = flap.unwrap_or(BACKOFF_INITIAL);
    if let Some(wait) = flap {
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let mut last_message = String::new();
    let mut gone_since: Option<Instant> = None;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            r = resolve_and_open(ctx, spec) => r,
        };
        match attempt {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.permanent => return Err(e.message),
            Err(e) => {
                if e.gone {
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= ctx.pod_running_timeout {
                        return Err(e.message);
                    }
                } else {
                    gone_since = None;
                }
                if e.message != last_message {
                    ctx.output.notice(
                        &format!(
                            "Still reconnecting reverse forwarding (port {}): {}",
                            spec.pod_port,
                            e.message.trim_start_matches("error: ")
                        ),
                        Event::Error {
                            message: e.message.clone(),
                            fatal: false,
                        },
                    );
                    last_message = e.message;
                }
            }
        }
        let sleep = delay.mul_f64(rand::random_range(0.5..=1.0));
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(sleep) => {}
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

async fn resolve_and_open(ctx: &Arc<Context>, spec: &ReverseSpec) -> Result<Session, OpenError> {
    let choices = ctx.resolver.resolve(1).await.map_err(|e| OpenError {
        message: crate::output::resolve_error_line(&e),
        permanent: false,
        gone: matches!(e, ResolveError::NotFound(_)),
    })?;
    let pod = choices
        .first()
        .ok_or_else(|| transient("error: no pod to reverse-forward from".into()))?;
    open(ctx, pod.pod_name(), spec.pod_port).await
}

/// Upgrades `pods/{pod}/reverseforward?ports=PORT`: the WebSocket tunnel first, then SPDY,
/// as port-forward does (`--transport` and `KUBECTL_PORT_FORWARD_WEBSOCKETS` alike).
async fn open(ctx: &Context, pod: &str, pod_port: u16) -> Result<Session, OpenError> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{pod}/reverseforward?ports={pod_port}",
        ctx.resolver.namespace()
    );
    let try_ws = match ctx.transport {
        TransportMode::Auto => !std::env::var("KUBECTL_PORT_FORWARD_WEBSOCKETS")
            .is_ok_and(|v| v.eq_ignore_ascii_case("false")),
        TransportMode::Websocket => true,
        TransportMode::Spdy => false,
    };
    if try_ws {
        let key: [u8; 16] = rand::random();
        let headers = handshake::ws_tunnel_request_headers(key, true);
        let (parts, on, body) = transport::send(&ctx.client, Method::GET, &path, headers)
            .await
            .map_err(|e| transient(crate::output::error_line(e)))?;
        match (on, handshake::check_ws_tunnel_response(&parts, key, &body)) {
            (Some(on), Ok(flow_control)) => {
                let upgraded = on.await.map_err(|e| {
                    transient(crate::output::error_line(porthole_relay::error::chain(&e)))
                })?;
                let ws = porthole_relay::ws::WsStream::new(
                    TokioIo::new(upgraded),
                    porthole_relay::ws::Role::Client,
                );
                return Ok(Session {
                    acceptor: ReverseAcceptor::new(ws, ctx.keepalive.config(true, flow_control)),
                    pod: pod.to_string(),
                    transport: "websocket",
                });
            }
            // A refusal that SPDY would get as well (or a WebSocket-only request).
            _ if refusal_is_final(parts.status) || ctx.transport == TransportMode::Websocket => {
                return Err(refusal(parts.status, &body, pod, pod_port))
            }
            _ => {
                tracing::debug!(status = %parts.status, "reverse: WebSocket upgrade failed; trying SPDY")
            }
        }
    }
    let headers = handshake::spdy_request_headers(true);
    let (parts, on, body) = transport::send(&ctx.client, Method::POST, &path, headers)
        .await
        .map_err(|e| transient(crate::output::error_line(e)))?;
    match (on, handshake::check_spdy_response(&parts, &body)) {
        (Some(on), Ok(flow_control)) => {
            let upgraded = on.await.map_err(|e| {
                transient(crate::output::error_line(porthole_relay::error::chain(&e)))
            })?;
            Ok(Session {
                acceptor: ReverseAcceptor::new(
                    TokioIo::new(upgraded),
                    ctx.keepalive.config(false, flow_control),
                ),
                pod: pod.to_string(),
                transport: "spdy",
            })
        }
        _ => Err(refusal(parts.status, &body, pod, pod_port)),
    }
}

fn transient(message: String) -> OpenError {
    OpenError {
        message,
        permanent: false,
        gone: false,
    }
}

/// Statuses both transports would get alike, so no fallback to SPDY.
fn refusal_is_final(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::FORBIDDEN
            | StatusCode::UNAUTHORIZED
            | StatusCode::NOT_FOUND
            | StatusCode::CONFLICT
    )
}

/// kube-apiserver's "the server could not find the requested resource": the subresource does
/// not exist there. A node without the endpoint answers Go's plain `404 page not found`.
fn not_supported(body: &str, message: &str) -> bool {
    message == "the server could not find the requested resource"
        || body.trim() == "404 page not found"
}

/// The line for a non-101 answer, kubectl-style, and whether retrying could help.
fn refusal(status: StatusCode, body: &[u8], pod: &str, pod_port: u16) -> OpenError {
    let text = String::from_utf8_lossy(body).into_owned();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| text.trim().to_string());
    match status {
        StatusCode::FORBIDDEN => OpenError {
            message: format!("Error from server (Forbidden): {message}"),
            permanent: true,
            gone: false,
        },
        StatusCode::UNAUTHORIZED => OpenError {
            message: "error: You must be logged in to the server (Unauthorized)".into(),
            permanent: true,
            gone: false,
        },
        StatusCode::NOT_FOUND if not_supported(&text, &message) => OpenError {
            message: format!(
                "error: reverse forwarding is not supported by this server (POST \
                 pods/{pod}/reverseforward answered 404: {message}); it needs a porthole API \
                 server and node agent with reverse forwarding"
            ),
            permanent: true,
            gone: false,
        },
        StatusCode::NOT_FOUND => OpenError {
            message: format!("Error from server (NotFound): {message}"),
            permanent: false,
            gone: false,
        },
        StatusCode::CONFLICT => OpenError {
            message: format!("error: {message}"),
            // Permanent at the first connect (run_spec gives up); on a reconnect the old
            // session's listener may still be closing, which `reopen` rides out.
            permanent: false,
            gone: false,
        },
        StatusCode::BAD_REQUEST => OpenError {
            message: format!("error: reverse forwarding of pod port {pod_port}: {message}"),
            // A pod that is restarting or not yet scheduled may serve again; anything else in
            // the request is wrong for good.
            permanent: !(message.contains("not running")
                || message.contains("does not have a host")),
            gone: false,
        },
        s => OpenError {
            message: format!(
                "error: error upgrading connection for reverse forwarding: {} {}: {message}",
                s.as_u16(),
                s.canonical_reason().unwrap_or("")
            ),
            permanent: false,
            gone: false,
        },
    }
}

/// The exit code for [`run`]'s outcome when reverse specs run alone.
pub(crate) fn exit_code(end: Result<(), String>, output: &Output) -> ExitCode {
    match end {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            output.fatal(&line);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            ReverseSpec::parse("9000:localhost:5432"),
            Ok(ReverseSpec {
                pod_port: 9000,
                local_host: "localhost".into(),
                local_port: 5432
            })
        );
        let v6 = ReverseSpec::parse("9000:[::1]:5432").expect("v6");
        assert_eq!(
            ReverseSpec::parse("9000:::1:5432").expect("bare v6"),
            v6,
            "an unbracketed IPv6 address is unambiguous: the port is after the last ':'"
        );
        assert_eq!(v6.local_host, "::1");
        assert_eq!(v6.local(), "[::1]:5432");
        assert_eq!(
            ReverseSpec::parse("1:db.example:2").expect("name").local(),
            "db.example:2"
        );
        for (bad, why) in [
            ("9000", "no ':' after the pod port"),
            ("9000:5432", "LOCAL_HOST and LOCAL_PORT are required"),
            ("x:localhost:5432", "POD_PORT \"x\""),
            ("0:localhost:5432", "POD_PORT \"0\""),
            ("9000:localhost:70000", "LOCAL_PORT \"70000\""),
            ("9000::5432", "\"\" is not a host name"),
            ("9000:[nope]:5432", "not a bracketed IPv6"),
            ("9000:a:b:5432", "\"a:b\" is not a host name"),
        ] {
            let e = ReverseSpec::parse(bad).expect_err(bad);
            assert!(
                e.starts_with(&format!(
                    "invalid --reverse '{bad}': expected POD_PORT:LOCAL_HOST:LOCAL_PORT"
                )),
                "{e}"
            );
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn refusals_read_like_kubectl() {
        let status = |code: u16, reason: &str, message: &str| {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": reason, "message": message, "code": code})
            .to_string()
            .into_bytes()
        };
        let e = refusal(
            StatusCode::FORBIDDEN,
            &status(403, "Forbidden", "pods \"web\" is forbidden: User \"dev\" cannot create resource \"pods/reverseforward\""),
            "web",
            9000,
        );
        assert!(e.permanent);
        assert_eq!(e.message, "Error from server (Forbidden): pods \"web\" is forbidden: User \"dev\" cannot create resource \"pods/reverseforward\"");
        let e = refusal(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
            "web",
            9000,
        );
        assert!(e.permanent);
        assert!(e
            .message
            .starts_with("error: reverse forwarding is not supported by this server"));
        let e = refusal(StatusCode::NOT_FOUND, b"404 page not found\n", "web", 9000);
        assert!(e.message.contains("not supported"), "{}", e.message);
        let e = refusal(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "pods \"web\" not found"),
            "web",
            9000,
        );
        assert_eq!(
            e.message,
            "Error from server (NotFound): pods \"web\" not found"
        );
        assert!(!e.permanent);
        let e = refusal(
            StatusCode::CONFLICT,
            &status(409, "Conflict", "port 9000 is already in use inside pod default/web: choose another pod port for --reverse"),
            "web",
            9000,
        );
        assert_eq!(e.message, "error: port 9000 is already in use inside pod default/web: choose another pod port for --reverse");
    }

    #[test]
    fn io_errors_read_like_go() {
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(go_io_error(&e), "connection refused");
    }
}
