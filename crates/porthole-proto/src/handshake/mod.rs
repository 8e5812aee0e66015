//! HTTP/1.1 upgrade negotiation for the three port-forward transports (PROTOCOL.md §2, §6.7,
//! §6.8), sans-IO on `http` types.
//!
//! Server side (the node, which terminates all three):
//! - [`negotiate_server`] decides between SPDY/3.1 (§2.2), the WebSocket tunnel
//!   `SPDY/3.1+portforward.k8s.io` (§2.4) and the WebSocket channel protocol (§2.3) and returns
//!   either the 101 headers or a [`Rejection`] whose status and text match what a Kubernetes
//!   node answers, so clients show their usual messages.
//! - [`classify`] tells the API server (which only proxies) whether and how a request upgrades;
//!   [`parse_api_ports`] and [`node_port_query`] rewrite its `ports` query into the node's
//!   `port=` query (§6.3).
//!
//! Client side: request headers for SPDY and the tunnel ([`spdy_request_headers`],
//! [`ws_tunnel_request_headers`], [`ws_channel_request_headers`]) and validation of the answer
//! exactly as client-go does ([`check_spdy_response`], [`check_ws_tunnel_response`],
//! [`check_ws_channel_response`]).
//!
//! Porthole-to-porthole flow control: a client adds `X-Porthole-Flow-Control: 1`; the node
//! echoes it in its 101 (docs/ARCHITECTURE.md, contract 1).
//!
//! Porthole extensions: a client lists the ones it wants in `X-Porthole-Extensions` (comma
//! separated, e.g. `udp`); a porthole node answers the SPDY and tunnel upgrades with the ones
//! it supports ([`accept_extensions`]), and the client reads them back
//! ([`response_extensions`]). The API server passes both headers through unchanged. A server
//! that does not answer (a kubelet, an older porthole, the channel protocol) has none.

// `Rejection` (status + HeaderMap + body) is the contract's error type and only built on the
// cold refusal path once per connection; boxing it would change the agreed API for nothing.
#![allow(clippy::result_large_err)]

use base64::Engine as _;
use http::header::{HeaderName, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY};
use http::header::{SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderMap, Method, StatusCode};
use sha1::{Digest, Sha1};

use crate::ws::channel::{ChannelProtocol, MAX_PORTS};

mod client;
pub use client::{
    check_spdy_response, check_ws_channel_response, check_ws_tunnel_response, spdy_request_headers,
    ws_channel_request_headers, ws_tunnel_request_headers, UpgradeError,
};

/// The `Upgrade` token of the SPDY transport.
pub const SPDY_UPGRADE: &str = "SPDY/3.1";
/// The only port-forward stream protocol (§0).
pub const PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket sub-protocol of the SPDY tunnel (§2.4).
pub const TUNNEL_SUBPROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Prefix that marks a tunnelling sub-protocol.
pub const TUNNEL_PREFIX: &str = "SPDY/3.1+";
/// `X-Stream-Protocol-Version`: SPDY protocol negotiation (§2.2).
pub const STREAM_PROTOCOL_VERSION: HeaderName =
    HeaderName::from_static("x-stream-protocol-version");
/// `X-Accepted-Stream-Protocol-Versions`: sent with a 403 negotiation failure (§2.2).
pub const ACCEPTED_STREAM_PROTOCOL_VERSIONS: HeaderName =
    HeaderName::from_static("x-accepted-stream-protocol-versions");
/// `X-Porthole-Flow-Control`: `1` when both ends are porthole and honour SPDY flow control.
pub const PORTHOLE_FLOW_CONTROL: HeaderName = HeaderName::from_static("x-porthole-flow-control");

/// `X-Porthole-Extensions`: comma-separated porthole extensions asked for (request) and
/// granted (the 101).
pub const PORTHOLE_EXTENSIONS: HeaderName = HeaderName::from_static("x-porthole-extensions");
/// The UDP forwarding extension (`protocol: udp` stream pairs, see
/// [`crate::portforward::datagram`]).
pub const EXTENSION_UDP: &str = "udp";

/// Sub-protocol entries carrying a bearer token for browsers (PROTOCOL.md §2.1).
const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// RFC 6455 §1.3: appended to the key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The transport a successful negotiation selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// Raw SPDY/3.1 after the 101 (§2.2).
    Spdy {
        /// The client asked for porthole flow control (and the 101 echoes it).
        flow_control: bool,
    },
    /// SPDY/3.1 carried in binary WebSocket messages (§2.4).
    WsTunnel {
        /// The client asked for porthole flow control (and the 101 echoes it).
        flow_control: bool,
    },
    /// The WebSocket channel protocol (§2.3, §5) for a fixed list of ports.
    WsChannels {
        /// The chosen sub-protocol.
        proto: ChannelProtocol,
        /// Ports in query order; channel `2i` / `2i+1` belong to `ports[i]`.
        ports: Vec<u16>,
    },
}

/// A refused upgrade: the status, extra headers and plain-text body to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status (400, 403, 405).
    pub status: StatusCode,
    /// Headers beyond `Content-Type` (e.g. `X-Accepted-Stream-Protocol-Versions`).
    pub headers: HeaderMap,
    /// Plain-text body, the same text a Kubernetes node sends.
    pub body: String,
}

impl Rejection {
    fn new(status: StatusCode, body: impl Into<String>) -> Rejection {
        Rejection {
            status,
            headers: HeaderMap::new(),
            body: body.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.body)
    }
}

impl std::error::Error for Rejection {}

/// What kind of upgrade a request asks for, judged from its headers only (no validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeKind {
    /// `Upgrade: SPDY/3.1`.
    Spdy,
    /// WebSocket whose first `Sec-WebSocket-Protocol` line offers a `SPDY/3.1+….k8s.io` entry.
    WsTunnel,
    /// Any other WebSocket request: the channel protocol.
    WsChannels,
}

/// Classifies a request the way Kubernetes does: `None` unless `Connection` contains `upgrade`;
/// then `Upgrade: websocket` is a WebSocket (tunnel or channels), `Upgrade` containing
/// `spdy/3.1` is SPDY. The API server answers `None` with 400 `Upgrade request required`.
pub fn classify(req: &http::request::Parts) -> Option<UpgradeKind> {
    if !first_value_contains(&req.headers, &CONNECTION, "upgrade") {
        return None;
    }
    if is_websocket(&req.headers) {
        if tunnel_protocols(&req.headers).is_empty() {
            Some(UpgradeKind::WsChannels)
        } else {
            Some(UpgradeKind::WsTunnel)
        }
    } else if first_value_contains(&req.headers, &UPGRADE, "spdy/3.1") {
        Some(UpgradeKind::Spdy)
    } else {
        None
    }
}

/// Server-side negotiation for the node's `/portForward/{ns}/{pod}[/{uid}]` endpoint.
///
/// On success returns the transport and the headers of the `101 Switching Protocols` answer.
/// Checks run in the order a Kubernetes node applies them, so a client sees the same error:
/// - WebSocket with a tunnelling sub-protocol: SPDY protocol negotiation on the stripped
///   entries (403 as in §2.2), then the WebSocket checks;
/// - other WebSocket: the `port` query (400, §2.3 texts), then the WebSocket checks, then the
///   sub-protocol (first client entry among v5, v4, v4.base64; no header = binary; else 403);
/// - anything else is treated as SPDY: `X-Stream-Protocol-Version` (400/403), then the
///   upgrade headers (400).
///
/// Only `GET` and `POST` are routed (405 otherwise); WebSocket needs `GET`.
/// permessage-deflate and other extensions are never accepted.
pub fn negotiate_server(req: &http::request::Parts) -> Result<(Upgrade, HeaderMap), Rejection> {
    if req.method != Method::GET && req.method != Method::POST {
        return Err(Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} is not allowed for port-forward: use GET (WebSocket) or POST (SPDY)",
                req.method
            ),
        ));
    }
    let flow_control = wants_flow_control(&req.headers);
    if first_value_contains(&req.headers, &CONNECTION, "upgrade") && is_websocket(&req.headers) {
        let tunnel = tunnel_protocols(&req.headers);
        if !tunnel.is_empty() {
            // As the Kubernetes TunnelingHandler: the stripped entries go through the SPDY
            // negotiation first (its upstream request), then gorilla checks the WebSocket.
            negotiate_stream_protocol(&tunnel)?;
            let accept = check_websocket(req)?;
            let mut headers = websocket_101(&accept);
            headers.insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(TUNNEL_SUBPROTOCOL),
            );
            if flow_control {
                headers.insert(PORTHOLE_FLOW_CONTROL, HeaderValue::from_static("1"));
            }
            return Ok((Upgrade::WsTunnel { flow_control }, headers));
        }
        let ports = parse_node_ports(req.uri.query())?;
        let accept = check_websocket(req)?;
        let proto = choose_channel_protocol(&req.headers)?;
        let mut headers = websocket_101(&accept);
        if let Some(name) = proto.subprotocol() {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(name));
        }
        return Ok((Upgrade::WsChannels { proto, ports }, headers));
    }

    // SPDY, exactly in the order of the Kubernetes streaming library (1.35+ texts).
    let offered = header_tokens(&req.headers, &STREAM_PROTOCOL_VERSION);
    if req.headers.get(&STREAM_PROTOCOL_VERSION).is_none() {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: header X-Stream-Protocol-Version does not exist in request with {} headers",
                go_header_count(&req.headers)
            ),
        ));
    }
    if offered.is_empty() {
        let raw: Vec<String> = req
            .headers
            .get_all(&STREAM_PROTOCOL_VERSION)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let body = if raw.iter().all(|v| v.trim().is_empty()) {
            "unable to upgrade: header X-Stream-Protocol-Version is empty".to_owned()
        } else {
            format!(
                "unable to upgrade: header X-Stream-Protocol-Version contains [{}], but no valid protocols",
                raw.join(" ")
            )
        };
        return Err(Rejection::new(StatusCode::BAD_REQUEST, body));
    }
    negotiate_stream_protocol(&offered)?;
    if !first_value_contains(&req.headers, &CONNECTION, "upgrade")
        || !first_value_contains(&req.headers, &UPGRADE, "spdy/3.1")
    {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: missing upgrade headers in request: {}",
                go_header_dump(&req.headers)
            ),
        ));
    }
    let mut headers = HeaderMap::new();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static(SPDY_UPGRADE));
    headers.insert(
        STREAM_PROTOCOL_VERSION,
        HeaderValue::from_static(PORTFORWARD_PROTOCOL),
    );
    if flow_control {
        headers.insert(PORTHOLE_FLOW_CONTROL, HeaderValue::from_static("1"));
    }
    Ok((Upgrade::Spdy { flow_control }, headers))
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn sec_websocket_accept(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The extensions named in `headers`' `X-Porthole-Extensions` lines (comma-split, trimmed,
/// lower-cased, empties dropped).
pub fn extensions(headers: &HeaderMap) -> Vec<String> {
    header_tokens(headers, &PORTHOLE_EXTENSIONS)
        .into_iter()
        .map(|t| t.to_ascii_lowercase())
        .collect()
}

/// Server side: the extensions the request asks for that are in `supported`, in `supported`'s
/// order. For SPDY and the WebSocket tunnel they are echoed in `response` (the 101's headers);
/// the channel protocol carries no SPDY streams, so it grants none.
pub fn accept_extensions(
    request: &HeaderMap,
    supported: &[&'static str],
    upgrade: &Upgrade,
    response: &mut HeaderMap,
) -> Vec<&'static str> {
    if matches!(upgrade, Upgrade::WsChannels { .. }) {
        return Vec::new();
    }
    let asked = extensions(request);
    let granted: Vec<&'static str> = supported
        .iter()
        .copied()
        .filter(|s| asked.iter().any(|a| a == s))
        .collect();
    if !granted.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&granted.join(", ")) {
            response.insert(PORTHOLE_EXTENSIONS, v);
        }
    }
    granted
}

/// Client side: whether the 101's `X-Porthole-Extensions` grants `name`.
pub fn response_extensions(response: &HeaderMap, name: &str) -> bool {
    extensions(response).iter().any(|e| e == name)
}

/// The request's `X-Porthole-Flow-Control` is `1`.
fn wants_flow_control(headers: &HeaderMap) -> bool {
    headers
        .get(&PORTHOLE_FLOW_CONTROL)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
}

/// Case-insensitive substring test on the first value, as Go's `Header.Get` checks do.
fn first_value_contains(headers: &HeaderMap, name: &HeaderName, needle: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains(needle))
}

/// `Upgrade` lists the `websocket` token (any case).
fn is_websocket(headers: &HeaderMap) -> bool {
    headers.get_all(UPGRADE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
        })
    })
}

/// Entries of the first `Sec-WebSocket-Protocol` line, comma-split and trimmed (only the first
/// line counts, as in Go's `Header.Get`).
fn offered_subprotocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The tunnelling entries (`SPDY/3.1+…` ending `.k8s.io`) with the prefix stripped.
fn tunnel_protocols(headers: &HeaderMap) -> Vec<String> {
    offered_subprotocols(headers)
        .into_iter()
        .filter(|p| p.ends_with(".k8s.io"))
        .filter_map(|p| p.strip_prefix(TUNNEL_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// All values of a header, comma-split, trimmed, empties dropped (§2.2).
fn header_tokens(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Picks `portforward.k8s.io` from the client's list or answers 403 as in §2.2.
fn negotiate_stream_protocol(offered: &[String]) -> Result<(), Rejection> {
    if offered.iter().any(|p| p == PORTFORWARD_PROTOCOL) {
        return Ok(());
    }
    let mut rejection = Rejection::new(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports [{}], server accepts [{}]",
            offered.join(" "),
            PORTFORWARD_PROTOCOL
        ),
    );
    rejection.headers.append(
        ACCEPTED_STREAM_PROTOCOL_VERSIONS,
        HeaderValue::from_static(PORTFORWARD_PROTOCOL),
    );
    Err(rejection)
}

/// Go's `len(req.Header)`: distinct header names, without `Host` (Go moves it to `req.Host`).
fn go_header_count(headers: &HeaderMap) -> usize {
    headers.keys_len() - usize::from(headers.contains_key(http::header::HOST))
}

/// An approximation of Go's `%#v` of `http.Header` (canonical names, sorted), as in the
/// `missing upgrade headers` text. Credentials are redacted: the text goes back over the wire.
fn go_header_dump(headers: &HeaderMap) -> String {
    let mut names: Vec<&HeaderName> = headers
        .keys()
        .filter(|n| **n != http::header::HOST)
        .collect();
    names.sort_by_key(|n| canonical_name(n.as_str()));
    let entries: Vec<String> = names
        .into_iter()
        .map(|name| {
            let values: Vec<String> = headers
                .get_all(name)
                .iter()
                .map(|v| {
                    if *name == http::header::AUTHORIZATION {
                        "\"<redacted>\"".to_owned()
                    } else {
                        format!("{:?}", String::from_utf8_lossy(v.as_bytes()))
                    }
                })
                .collect();
            format!(
                "\"{}\":[]string{{{}}}",
                canonical_name(name.as_str()),
                values.join(", ")
            )
        })
        .collect();
    format!("http.Header{{{}}}", entries.join(", "))
}

/// Go's canonical MIME header form: `x-stream-protocol-version` → `X-Stream-Protocol-Version`.
fn canonical_name(lower: &str) -> String {
    let mut out = String::with_capacity(lower.len());
    let mut upper = true;
    for c in lower.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

/// The WebSocket checks of gorilla's `Upgrade` (which the Kubernetes tunnel uses), in its
/// order; returns the `Sec-WebSocket-Accept` value.
fn check_websocket(req: &http::request::Parts) -> Result<String, Rejection> {
    const NOT_WS: &str = "websocket: the client is not using the websocket protocol: ";
    if !first_value_contains(&req.headers, &CONNECTION, "upgrade") {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("{NOT_WS}'upgrade' token not found in 'Connection' header"),
        ));
    }
    if !is_websocket(&req.headers) {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("{NOT_WS}'websocket' token not found in 'Upgrade' header"),
        ));
    }
    if req.method != Method::GET {
        return Err(Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{NOT_WS}request method is not GET"),
        ));
    }
    let version_ok = header_tokens(&req.headers, &SEC_WEBSOCKET_VERSION)
        .iter()
        .any(|v| v == "13");
    if !version_ok {
        let mut r = Rejection::new(
            StatusCode::BAD_REQUEST,
            "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
        );
        r.headers
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(r);
    }
    let key = req
        .headers
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().trim_ascii())
        .unwrap_or_default();
    let key_ok = BASE64.decode(key).is_ok_and(|k| k.len() == 16);
    if !key_ok {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "websocket: not a websocket handshake: 'Sec-WebSocket-Key' header must be Base64 encoded value of 16-byte in length",
        ));
    }
    Ok(sec_websocket_accept(key))
}

fn websocket_101(accept: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    // Base64 output is always a valid header value.
    if let Ok(v) = HeaderValue::from_str(accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    headers
}

/// First client-offered entry we support; no header (or an empty one) means binary mode.
///
/// Bearer-token entries (`base64url.bearer.authorization.k8s.io.…`) are authentication, not
/// protocols: the Kubernetes API server strips them before proxying, and so do we here.
fn choose_channel_protocol(headers: &HeaderMap) -> Result<ChannelProtocol, Rejection> {
    let offered: Vec<&str> = offered_subprotocols(headers)
        .into_iter()
        .filter(|p| !p.starts_with(BEARER_PROTOCOL_PREFIX))
        .collect();
    if offered.is_empty() {
        return Ok(ChannelProtocol::NoSubprotocol);
    }
    offered
        .iter()
        .find_map(|p| ChannelProtocol::from_subprotocol(p))
        .ok_or_else(|| {
            Rejection::new(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: none of the offered WebSocket sub-protocols [{}] is supported; port-forward accepts {}, {}, {} or none",
                    offered.join(" "),
                    crate::ws::channel::V5_CHANNEL,
                    crate::ws::channel::V4_CHANNEL,
                    crate::ws::channel::V4_BASE64_CHANNEL,
                ),
            )
        })
}

/// Percent-decodes a query component (`+` is a space, as in Go's `url.ParseQuery`). `None` on
/// a malformed escape.
fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Values of one query key, decoded, in order; empty pairs (`?&ports=80`) and malformed escapes
/// are skipped as Go's `url.ParseQuery` does.
fn query_values(query: Option<&str>, key: &str) -> Vec<String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (query_unescape(k)? == key).then(|| query_unescape(v))?
        })
        .collect()
}

/// Go's `strconv.ParseUint(s, 10, 16)` error texts.
fn parse_u16_go(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.ParseUint: parsing {s:?}: invalid syntax"));
    }
    s.parse::<u16>()
        .map_err(|_| format!("strconv.ParseUint: parsing {s:?}: value out of range"))
}

/// The node's port list: `port` values (repeatable, comma lists, percent-decoded), or `ports`
/// when no `port` is given; errors carry the kubelet's texts (§2.3).
fn parse_node_ports(query: Option<&str>) -> Result<Vec<u16>, Rejection> {
    let bad = |body: String| Rejection::new(StatusCode::BAD_REQUEST, body);
    let mut values = query_values(query, "port");
    if values.is_empty() {
        values = query_values(query, "ports");
    }
    if values.is_empty() {
        return Err(bad("query parameter \"port\" is required".to_owned()));
    }
    let mut ports = Vec::new();
    for value in &values {
        if value.is_empty() {
            return Err(bad("query parameter \"port\" cannot be empty".to_owned()));
        }
        for item in value.split(',') {
            let port = parse_u16_go(item)
                .map_err(|e| bad(format!("unable to parse {value:?} as a port: {e}")))?;
            if port == 0 {
                return Err(bad(format!("port {value:?} must be > 0")));
            }
            ports.push(port);
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(bad(format!(
            "too many ports: {} requested, one WebSocket carries at most {MAX_PORTS}; open several port-forwards",
            ports.len()
        )));
    }
    Ok(ports)
}

/// Parses the API server's `ports` query (repeatable, comma lists, each an unsigned 16-bit
/// decimal; §6.1). Port 0 passes, as in Kubernetes (the node rejects it). The error text is
/// Kubernetes' `cannot convert to []int32: …`, for a 400 Status.
pub fn parse_api_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for value in query_values(query, "ports") {
        for item in value.split(',') {
            ports.push(parse_u16_go(item).map_err(|e| format!("cannot convert to []int32: {e}"))?);
        }
    }
    Ok(ports)
}

/// The node query for a port list: `port=8080%2C9090` (comma-joined, URL-encoded), or `None`
/// when there are no ports (§6.3).
pub fn node_port_query(ports: &[u16]) -> Option<String> {
    if ports.is_empty() {
        return None;
    }
    let joined: Vec<String> = ports.iter().map(u16::to_string).collect();
    Some(format!("port={}", joined.join("%2C")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_granted_only_when_supported_and_on_spdy_transports() {
        let mut req = HeaderMap::new();
        req.append(
            PORTHOLE_EXTENSIONS,
            HeaderValue::from_static("Reverse, udp"),
        );
        req.append(PORTHOLE_EXTENSIONS, HeaderValue::from_static(" ,future"));
        assert_eq!(extensions(&req), ["reverse", "udp", "future"]);
        let spdy = Upgrade::Spdy {
            flow_control: false,
        };
        let mut resp = HeaderMap::new();
        assert_eq!(
            accept_extensions(&req, &[EXTENSION_UDP], &spdy, &mut resp),
            ["udp"]
        );
        assert_eq!(resp.get(&PORTHOLE_EXTENSIONS).unwrap(), "udp");
        assert!(response_extensions(&resp, EXTENSION_UDP));
        // Not supported: nothing echoed.
        let mut resp = HeaderMap::new();
        assert!(accept_extensions(&req, &[], &spdy, &mut resp).is_empty());
        assert!(!resp.contains_key(&PORTHOLE_EXTENSIONS));
        assert!(!response_extensions(&resp, EXTENSION_UDP));
        // The channel protocol cannot carry UDP pairs.
        let channels = Upgrade::WsChannels {
            proto: ChannelProtocol::V5Binary,
            ports: vec![53],
        };
        let mut resp = HeaderMap::new();
        assert!(accept_extensions(&req, &[EXTENSION_UDP], &channels, &mut resp).is_empty());
        assert!(resp.is_empty());
    }

    #[test]
    fn rfc_accept_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            sec_websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn go_parse_errors() {
        assert_eq!(
            parse_u16_go("x"),
            Err("strconv.ParseUint: parsing \"x\": invalid syntax".into())
        );
        assert_eq!(
            parse_u16_go("70000"),
            Err("strconv.ParseUint: parsing \"70000\": value out of range".into())
        );
        assert_eq!(parse_u16_go("80"), Ok(80));
    }

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_name("x-stream-protocol-version"),
            "X-Stream-Protocol-Version"
        );
    }
}
