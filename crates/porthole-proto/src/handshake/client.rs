//! The client's half of the upgrade: the request headers each protocol sends, and the checks
//! of the server's answer, against the same constants and header rules the server half in
//! `mod.rs` decides with, so the two cannot drift apart.

use super::*;

/// Headers of a SPDY upgrade request (§2.2). Send them with `POST`, an empty body and
/// `Content-Length: 0`, as kubectl does.
pub fn spdy_request_headers(flow_control: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static(SPDY_UPGRADE));
    h.insert(
        STREAM_PROTOCOL_VERSION,
        HeaderValue::from_static(PORTFORWARD_PROTOCOL),
    );
    if flow_control {
        h.insert(PORTHOLE_FLOW_CONTROL, HeaderValue::from_static("1"));
    }
    h
}

fn websocket_request_headers(key: [u8; 16]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    if let Ok(v) = HeaderValue::from_str(&BASE64.encode(key)) {
        h.insert(SEC_WEBSOCKET_KEY, v);
    }
    h
}

/// Headers of a WebSocket tunnel request (§2.4; send with `GET`, no query). `key` is 16
/// random bytes from the caller, so this crate needs no RNG.
pub fn ws_tunnel_request_headers(key: [u8; 16], flow_control: bool) -> HeaderMap {
    let mut h = websocket_request_headers(key);
    h.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(TUNNEL_SUBPROTOCOL),
    );
    if flow_control {
        h.insert(PORTHOLE_FLOW_CONTROL, HeaderValue::from_static("1"));
    }
    h
}

/// Headers of a WebSocket channel-protocol request offering `offered` in preference order
/// (send with `GET` and the ports in the query). [`ChannelProtocol::NoSubprotocol`] entries are
/// skipped; an empty list sends no `Sec-WebSocket-Protocol` (binary mode).
pub fn ws_channel_request_headers(key: [u8; 16], offered: &[ChannelProtocol]) -> HeaderMap {
    let mut h = websocket_request_headers(key);
    let names: Vec<&str> = offered.iter().filter_map(|p| p.subprotocol()).collect();
    if !names.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
            h.insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    h
}

/// Why the server's answer to an upgrade request is not acceptable. Texts follow client-go so
/// users see what kubectl would print after `error upgrading connection: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// The server answered something other than a proper 101. `message` is the
    /// `metav1.Status` message when the body is one, otherwise client-go's text.
    #[error("{message}")]
    Refused {
        /// The response status.
        status: StatusCode,
        /// What to show the user.
        message: String,
    },
    /// A SPDY 101 negotiated a stream protocol other than `portforward.k8s.io`.
    #[error("unable to negotiate protocol: client supports \"portforward.k8s.io\", server returned {got:?}")]
    ProtocolMismatch {
        /// The `X-Stream-Protocol-Version` returned (empty when absent).
        got: String,
    },
    /// A WebSocket 101 echoed a sub-protocol that was not offered (or none).
    #[error("invalid protocol, expected one of [{}], got {got:?}", expected.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(" "))]
    InvalidSubprotocol {
        /// The offered sub-protocols.
        expected: Vec<String>,
        /// The echoed one (empty when absent).
        got: String,
    },
    /// A WebSocket 101 with a wrong `Sec-WebSocket-Accept` or missing upgrade headers.
    #[error("websocket: bad handshake ({status})")]
    BadHandshake {
        /// The response status.
        status: StatusCode,
    },
}

impl UpgradeError {
    /// client-go's `UpgradeFailureError`: the WebSocket attempt failed at the HTTP level, so
    /// kubectl falls back to SPDY (§2.5). Every variant qualifies.
    pub fn is_upgrade_failure(&self) -> bool {
        true
    }
}

/// The `message` of a `metav1.Status` JSON body, if the body is one.
fn status_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("kind")?.as_str()? != "Status" {
        return None;
    }
    Some(v.get("message")?.as_str()?.to_owned())
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

/// Validates a SPDY upgrade answer as client-go does (§2.2). `body` is what the server sent
/// after a non-101 header block (read it before calling; ignored for a 101). Returns whether
/// the node echoed porthole flow control.
pub fn check_spdy_response(
    resp: &http::response::Parts,
    body: &[u8],
) -> Result<bool, UpgradeError> {
    let upgraded = resp.status == StatusCode::SWITCHING_PROTOCOLS
        && first_value_contains(&resp.headers, &CONNECTION, "upgrade")
        && first_value_contains(&resp.headers, &UPGRADE, "spdy/3.1");
    if !upgraded {
        let message = status_message(body).unwrap_or_else(|| {
            format!(
                "unable to upgrade connection: {}",
                String::from_utf8_lossy(body).trim()
            )
        });
        return Err(UpgradeError::Refused {
            status: resp.status,
            message,
        });
    }
    let got = resp
        .headers
        .get(&STREAM_PROTOCOL_VERSION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if got != PORTFORWARD_PROTOCOL {
        return Err(UpgradeError::ProtocolMismatch { got });
    }
    Ok(wants_flow_control(&resp.headers))
}

/// Common WebSocket 101 checks (gorilla's client side): status, upgrade headers, accept hash.
fn check_ws_common(
    resp: &http::response::Parts,
    key: [u8; 16],
    body: &[u8],
) -> Result<(), UpgradeError> {
    if resp.status != StatusCode::SWITCHING_PROTOCOLS {
        let message = status_message(body).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("websocket: bad handshake ({})", status_line(resp.status))
            } else {
                format!(
                    "websocket: bad handshake ({}): {text}",
                    status_line(resp.status)
                )
            }
        });
        return Err(UpgradeError::Refused {
            status: resp.status,
            message,
        });
    }
    let expected = sec_websocket_accept(BASE64.encode(key).as_bytes());
    let accept_ok = resp
        .headers
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !is_websocket(&resp.headers)
        || !first_value_contains(&resp.headers, &CONNECTION, "upgrade")
        || !accept_ok
    {
        return Err(UpgradeError::BadHandshake {
            status: resp.status,
        });
    }
    Ok(())
}

/// Validates a WebSocket tunnel answer as client-go does (§2.4): a 101 with the right accept
/// hash echoing `SPDY/3.1+portforward.k8s.io`. `key` is the one sent; `body` as in
/// [`check_spdy_response`]. Returns whether the node echoed porthole flow control.
pub fn check_ws_tunnel_response(
    resp: &http::response::Parts,
    key: [u8; 16],
    body: &[u8],
) -> Result<bool, UpgradeError> {
    check_ws_common(resp, key, body)?;
    let got = resp
        .headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if got != TUNNEL_SUBPROTOCOL {
        return Err(UpgradeError::InvalidSubprotocol {
            expected: vec![TUNNEL_SUBPROTOCOL.to_owned()],
            got,
        });
    }
    Ok(wants_flow_control(&resp.headers))
}

/// Validates a WebSocket channel-protocol answer: a 101 with the right accept hash whose
/// sub-protocol is one of `offered` (none echoed is accepted only when nothing was offered).
pub fn check_ws_channel_response(
    resp: &http::response::Parts,
    key: [u8; 16],
    offered: &[ChannelProtocol],
    body: &[u8],
) -> Result<ChannelProtocol, UpgradeError> {
    check_ws_common(resp, key, body)?;
    let names: Vec<&str> = offered.iter().filter_map(|p| p.subprotocol()).collect();
    let got = resp
        .headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match got {
        None if names.is_empty() => Ok(ChannelProtocol::NoSubprotocol),
        Some(g) if names.contains(&g.as_str()) => {
            ChannelProtocol::from_subprotocol(&g).ok_or(UpgradeError::InvalidSubprotocol {
                expected: names.iter().map(|s| (*s).to_owned()).collect(),
                got: g,
            })
        }
        got => Err(UpgradeError::InvalidSubprotocol {
            expected: names.iter().map(|s| (*s).to_owned()).collect(),
            got: got.unwrap_or_default(),
        }),
    }
}
