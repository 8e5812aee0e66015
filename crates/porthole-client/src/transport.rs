//! Establishing the upgraded connection to `pods/{pod}/portforward` (PROTOCOL.md §2.2, §2.4,
//! §2.5) through the `kube` client, so TLS and authentication (tokens, client certificates,
//! exec plugins) are exactly kube's.
//!
//! kube's HTTPS connector offers only HTTP/1.1 (ALPN `http/1.1`), which the upgrade requires
//! (§2.1). We send the request with [`kube::Client::send`] and take the connection over with
//! `hyper::upgrade::on`, as kube's own `connect()` does.
//!
//! Negotiation follows kubectl ≥ 1.31: try the WebSocket tunnel (`GET`,
//! `SPDY/3.1+portforward.k8s.io`) and fall back to SPDY (`POST`) on any upgrade failure (a
//! non-101 answer or a bad 101); other errors (connection refused, TLS) fail without fallback.
//! `KUBECTL_PORT_FORWARD_WEBSOCKETS=false` skips the tunnel in `auto` mode.

use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use porthole_proto::handshake;
use porthole_relay::error::chain;
use porthole_relay::portforward::spdy_client::PortForwarder;

/// The API client for `config`: kube's TLS and authentication layers over a connector with
/// `TCP_NODELAY`. kube's default connector leaves Nagle on, and on the upgraded connection that
/// holds the frames of a new forwarded connection until the peer ACKs the previous ones (up to
/// its 40 ms delayed-ACK timer): one client opening connections one after another got ~70 per
/// second instead of thousands. Like kubectl, no read timeout: the upgraded connection may be
/// idle for hours, and keepalive PINGs detect a dead peer.
pub fn api_client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt;
    if config.proxy_url.is_some() {
        // kube's own builder reports which proxy kinds this build supports.
        return kube::Client::try_from(config);
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let https = config.rustls_https_connector_with_connector(http)?;
    let hyper_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        .service(hyper_client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// How to reach the pod (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TransportMode {
    /// WebSocket tunnel first, SPDY on upgrade failure (kubectl's default).
    #[default]
    Auto,
    /// Only the WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`).
    Websocket,
    /// Only plain SPDY/3.1.
    Spdy,
}

/// SPDY keepalive settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// PING period; `None` uses kubectl's (5 s on SPDY, 10 s in the WebSocket tunnel).
    pub interval: Option<Duration>,
    /// Longest time from the peer's last sign of life to declaring it dead.
    pub timeout: Duration,
    /// `--keepalive=0`: no PINGs at all (a dead peer is then only noticed by TCP).
    pub enabled: bool,
}

impl Keepalive {
    /// The relay's dead-peer rule is "a PING unanswered for `ping_timeout`", and a PING goes
    /// out up to one period after the last frame, so the worst case is period + ping_timeout.
    /// Split the user's bound between the two so the total stays within it.
    pub fn periods(&self, tunnel: bool) -> (Duration, Duration) {
        let default_interval = if tunnel {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(5)
        };
        let mut interval = self.interval.unwrap_or(default_interval);
        if interval >= self.timeout {
            interval = self.timeout / 2;
        }
        (
            interval,
            self.timeout
                .saturating_sub(interval)
                .max(Duration::from_millis(100)),
        )
    }

    /// The SPDY session settings for this keepalive.
    pub fn config(&self, tunnel: bool, flow_control: bool) -> porthole_relay::spdy::Config {
        let (interval, ping_timeout) = self.periods(tunnel);
        porthole_relay::spdy::Config {
            session: porthole_relay::spdy::SessionConfig {
                ping_interval: self.enabled.then_some(interval),
                ping_timeout,
                flow_control,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// An established port-forward session.
pub struct Dialed {
    /// The SPDY port-forward client over the upgraded connection.
    pub forwarder: PortForwarder,
    /// `websocket` or `spdy`.
    pub transport: &'static str,
    /// Whether porthole flow control was negotiated.
    pub flow_control: bool,
}

/// Why opening a port-forward session through the API server (the upgrade) failed; not to be
/// confused with `porthole_relay::dial::DialError`, a node failing to reach the pod's port. The
/// text is what kubectl prints after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum SessionDialError {
    /// The server refused or botched the upgrade (`error upgrading connection: ...`).
    #[error("error upgrading connection: {0}")]
    Upgrade(String),
    /// The SPDY 101 named another stream protocol.
    #[error("{0}")]
    Protocol(String),
    /// The request did not get an answer (connection refused, TLS, timeouts). The message is
    /// the whole chain, since kube's and hyper's top-level texts say little on their own; the
    /// error stays the source so its I/O kind is not lost.
    #[error("error upgrading connection: {}", chain(.0.as_ref()))]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Asks for the porthole extensions this client speaks (`X-Porthole-Extensions`); a node
/// that grants them echoes them in its 101, anything else ignores the header.
fn ask_extensions(headers: &mut http::HeaderMap) {
    headers.insert(
        handshake::PORTHOLE_EXTENSIONS,
        http::HeaderValue::from_static(handshake::EXTENSION_UDP),
    );
}

/// Outcome of one upgrade attempt.
enum Attempt {
    Ok(Dialed),
    /// client-go's `UpgradeFailureError`: fall back to SPDY in auto mode.
    UpgradeFailure(String),
    Fatal(SessionDialError),
}

fn env_disables_websockets() -> bool {
    std::env::var("KUBECTL_PORT_FORWARD_WEBSOCKETS").is_ok_and(|v| v.eq_ignore_ascii_case("false"))
}

/// Opens a port-forward session to `namespace/pod`.
pub async fn dial(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    mode: TransportMode,
    keepalive: Keepalive,
) -> Result<Dialed, SessionDialError> {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/portforward");
    let try_ws = match mode {
        TransportMode::Auto => !env_disables_websockets(),
        TransportMode::Websocket => true,
        TransportMode::Spdy => false,
    };
    if try_ws {
        match dial_ws(client, &path, keepalive).await {
            Attempt::Ok(d) => return Ok(d),
            Attempt::Fatal(e) => return Err(e),
            Attempt::UpgradeFailure(msg) if mode == TransportMode::Websocket => {
                return Err(SessionDialError::Upgrade(format!(
                    "unable to upgrade streaming request: {msg}"
                )));
            }
            Attempt::UpgradeFailure(msg) => {
                tracing::debug!(error = %msg, "fallback to SPDY after WebSocket upgrade failure");
            }
        }
    }
    match dial_spdy(client, &path, keepalive).await {
        Attempt::Ok(d) => Ok(d),
        Attempt::Fatal(e) => Err(e),
        Attempt::UpgradeFailure(msg) => Err(SessionDialError::Upgrade(msg)),
    }
}

/// Sends an upgrade request; on a non-101 answer returns the body as well (bounded, for the
/// error text).
pub(crate) async fn send(
    client: &kube::Client,
    method: Method,
    path: &str,
    headers: http::HeaderMap,
) -> Result<
    (
        http::response::Parts,
        Option<hyper::upgrade::OnUpgrade>,
        Vec<u8>,
    ),
    SessionDialError,
> {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path)
        .body(kube::client::Body::empty())
        .map_err(|e| SessionDialError::Upgrade(format!("cannot build the upgrade request: {e}")))?;
    req.headers_mut().extend(headers);
    if method == Method::POST {
        req.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("0"),
        );
    }
    let mut res = client
        .send(req)
        .await
        .map_err(|e| SessionDialError::Transport(Box::new(e)))?;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let on = hyper::upgrade::on(&mut res);
        let (parts, _) = res.into_parts();
        return Ok((parts, Some(on), Vec::new()));
    }
    let (parts, body) = res.into_parts();
    // client-go reads at most 64 KiB of a refusal body; a body that fails to arrive still
    // leaves us a useful status line.
    let body = match tokio::time::timeout(Duration::from_secs(10), body.collect()).await {
        Ok(Ok(b)) => {
            let mut v = b.to_bytes().to_vec();
            v.truncate(64 * 1024);
            v
        }
        _ => Vec::new(),
    };
    Ok((parts, None, body))
}

async fn dial_ws(client: &kube::Client, path: &str, keepalive: Keepalive) -> Attempt {
    let key: [u8; 16] = rand::random();
    let mut headers = handshake::ws_tunnel_request_headers(key, true);
    ask_extensions(&mut headers);
    let (parts, on, body) = match send(client, Method::GET, path, headers).await {
        Ok(r) => r,
        Err(e) => return Attempt::Fatal(e),
    };
    let flow_control = match handshake::check_ws_tunnel_response(&parts, key, &body) {
        Ok(fc) => fc,
        Err(e) if e.is_upgrade_failure() => return Attempt::UpgradeFailure(e.to_string()),
        Err(e) => return Attempt::Fatal(SessionDialError::Upgrade(e.to_string())),
    };
    let Some(on) = on else {
        return Attempt::UpgradeFailure("websocket: bad handshake".to_string());
    };
    let upgraded = match on.await {
        Ok(u) => u,
        Err(e) => return Attempt::Fatal(SessionDialError::Transport(Box::new(e))),
    };
    let ws =
        porthole_relay::ws::WsStream::new(TokioIo::new(upgraded), porthole_relay::ws::Role::Client);
    let udp = handshake::response_extensions(&parts.headers, handshake::EXTENSION_UDP);
    let forwarder = PortForwarder::new(ws, keepalive.config(true, flow_control)).with_udp(udp);
    Attempt::Ok(Dialed {
        forwarder,
        transport: "websocket",
        flow_control,
    })
}

async fn dial_spdy(client: &kube::Client, path: &str, keepalive: Keepalive) -> Attempt {
    let mut headers = handshake::spdy_request_headers(true);
    ask_extensions(&mut headers);
    let (parts, on, body) = match send(client, Method::POST, path, headers).await {
        Ok(r) => r,
        Err(e) => return Attempt::Fatal(e),
    };
    let flow_control = match handshake::check_spdy_response(&parts, &body) {
        Ok(fc) => fc,
        Err(e @ handshake::UpgradeError::ProtocolMismatch { .. }) => {
            return Attempt::Fatal(SessionDialError::Protocol(e.to_string()));
        }
        Err(e) => return Attempt::UpgradeFailure(e.to_string()),
    };
    let Some(on) = on else {
        return Attempt::UpgradeFailure("unable to upgrade connection: no upgrade".to_string());
    };
    let upgraded = match on.await {
        Ok(u) => u,
        Err(e) => return Attempt::Fatal(SessionDialError::Transport(Box::new(e))),
    };
    let udp = handshake::response_extensions(&parts.headers, handshake::EXTENSION_UDP);
    let forwarder = PortForwarder::new(
        TokioIo::new(upgraded),
        keepalive.config(false, flow_control),
    )
    .with_udp(udp);
    Attempt::Ok(Dialed {
        forwarder,
        transport: "spdy",
        flow_control,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_fits_the_dead_peer_bound() {
        let k = Keepalive {
            interval: None,
            timeout: Duration::from_secs(15),
            enabled: true,
        };
        // kubectl's periods; period + ping timeout = the 15 s bound.
        assert_eq!(
            k.periods(false),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
        assert_eq!(
            k.periods(true),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
        let k = Keepalive {
            interval: Some(Duration::from_secs(30)),
            timeout: Duration::from_secs(6),
            enabled: true,
        };
        assert_eq!(
            k.periods(false),
            (Duration::from_secs(3), Duration::from_secs(3))
        );
        let cfg = Keepalive {
            enabled: false,
            ..k
        }
        .config(false, true);
        assert_eq!(cfg.session.ping_interval, None);
        assert!(cfg.session.flow_control);
    }

    #[test]
    fn kubectl_env_switch() {
        std::env::set_var("KUBECTL_PORT_FORWARD_WEBSOCKETS", "False");
        assert!(env_disables_websockets());
        std::env::set_var("KUBECTL_PORT_FORWARD_WEBSOCKETS", "true");
        assert!(!env_disables_websockets());
        std::env::remove_var("KUBECTL_PORT_FORWARD_WEBSOCKETS");
        assert!(!env_disables_websockets());
    }

    #[test]
    fn error_chains_are_joined() {
        let inner = std::io::Error::other("connection refused");
        let outer = kube::Error::Service(Box::new(inner));
        assert_eq!(chain(&outer), "ServiceError: connection refused");
    }
}
