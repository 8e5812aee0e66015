//! The port-forward stream protocol (`portforward.k8s.io`) on top of SPDY (PROTOCOL.md §4).
//!
//! Sans-IO pieces shared by the server (node side) and the client:
//! - header names and validation with the exact texts of §4.4 ([`parse_stream_headers`]);
//! - the server's pairing table ([`PairTable`]) with its stream-creation timeout driven by `now`;
//! - the error texts written on the error stream (§4.5);
//! - the client's request-id counter ([`RequestIds`]);
//! - [`datagram`]: UDP pairs (porthole extension): the `protocol: udp` header and the framing.
#![allow(clippy::disallowed_types)] // `Instant` is passed in, never read from the clock.

pub mod datagram;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The SPDY sub-protocol negotiated in `X-Stream-Protocol-Version`.
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// Stream header: `error` or `data`.
pub const HEADER_STREAM_TYPE: &str = "streamtype";
/// Stream header: remote port, decimal.
pub const HEADER_PORT: &str = "port";
/// Stream header: pairs the error and data streams of one forwarded connection.
pub const HEADER_REQUEST_ID: &str = "requestid";
/// `streamtype` value of the error stream.
pub const STREAM_TYPE_ERROR: &str = "error";
/// `streamtype` value of the data stream.
pub const STREAM_TYPE_DATA: &str = "data";
/// Server: how long the second stream of a pair may take (`DefaultStreamCreationTimeout`).
pub const DEFAULT_STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Client: how long to wait for SYN_REPLY (`createStreamResponseTimeout`).
pub const STREAM_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The two streams of a forwarded connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// Server → client error text.
    Error,
    /// Bidirectional payload.
    Data,
}

impl StreamType {
    /// Wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Error => STREAM_TYPE_ERROR,
            StreamType::Data => STREAM_TYPE_DATA,
        }
    }
}

/// A validated port-forward stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Error or data.
    pub stream_type: StreamType,
    /// Remote port (≥ 1).
    pub port: u16,
    /// Pairing key: the `requestid` header, or derived from the stream id when absent.
    pub request_id: String,
}

/// Why a stream is rejected (RST CANCEL). `Display` gives the exact Kubernetes text, which is
/// only logged, never sent (§4.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamHeaderError {
    /// No `port`.
    #[error("\"port\" header is required")]
    PortMissing,
    /// `port` not an unsigned 16-bit decimal.
    #[error("unable to parse {} as a port: strconv.ParseUint: parsing {}: {}", go_quote(.value), go_quote(.value), .reason)]
    PortUnparsable {
        /// The header value.
        value: String,
        /// `invalid syntax` or `value out of range`.
        reason: &'static str,
    },
    /// `port` is 0.
    #[error("port {} must be > 0", go_quote(.0))]
    PortZero(String),
    /// No `streamtype`.
    #[error("\"streamType\" header is required")]
    StreamTypeMissing,
    /// `streamtype` neither `error` nor `data`.
    #[error("invalid stream type {}", go_quote(.0))]
    StreamTypeInvalid(String),
}

/// Go's `%q` for the strings that appear in these texts.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}' => out.push_str("\\x00"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{fffd}' => out.push_str("\\ufffd"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `strconv.ParseUint(v, 10, 16)`.
fn parse_port(v: &str) -> Result<u16, &'static str> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid syntax");
    }
    let digits = v.trim_start_matches('0');
    if digits.len() > 5 {
        return Err("value out of range");
    }
    let n: u32 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| "invalid syntax")?
    };
    u16::try_from(n).map_err(|_| "value out of range")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Validates a SYN_STREAM's headers in Kubernetes' order (port, then stream type) and derives
/// the pairing key (§4.2 fallback: error stream → its id, data stream → id − 2).
pub fn parse_stream_headers(
    stream_id: u32,
    headers: &[(String, String)],
) -> Result<StreamInfo, StreamHeaderError> {
    let port_str = header(headers, HEADER_PORT).ok_or(StreamHeaderError::PortMissing)?;
    let port = parse_port(port_str).map_err(|reason| StreamHeaderError::PortUnparsable {
        value: port_str.to_string(),
        reason,
    })?;
    if port == 0 {
        return Err(StreamHeaderError::PortZero(port_str.to_string()));
    }
    let st = header(headers, HEADER_STREAM_TYPE).ok_or(StreamHeaderError::StreamTypeMissing)?;
    let stream_type = match st {
        STREAM_TYPE_ERROR => StreamType::Error,
        STREAM_TYPE_DATA => StreamType::Data,
        other => return Err(StreamHeaderError::StreamTypeInvalid(other.to_string())),
    };
    let request_id = match header(headers, HEADER_REQUEST_ID) {
        Some(r) => r.to_string(),
        None => match stream_type {
            StreamType::Error => stream_id.to_string(),
            StreamType::Data => stream_id.wrapping_sub(2).to_string(),
        },
    };
    Ok(StreamInfo {
        stream_type,
        port,
        request_id,
    })
}

/// The headers a client sends for one stream of a pair.
pub fn stream_headers(
    stream_type: StreamType,
    port: u16,
    request_id: u64,
) -> [(&'static str, String); 3] {
    [
        (HEADER_STREAM_TYPE, stream_type.as_str().to_string()),
        (HEADER_PORT, port.to_string()),
        (HEADER_REQUEST_ID, request_id.to_string()),
    ]
}

/// The text written on the error stream when forwarding failed (§4.4 step 4).
pub fn forward_error_text(port: u16, pod_id: &str, cause: &str) -> String {
    format!("error forwarding port {port} to pod {pod_id}, uid : {cause}")
}

/// The text written when a pair was not completed in time (§4.4 step 2).
pub fn timeout_text(conn: &str, request_id: &str) -> String {
    format!("(conn={conn}, request={request_id}) timed out waiting for streams")
}

/// The text written when a pair got a second stream of one type (§4.4 step 2).
pub fn duplicate_text(request_id: &str, stream_type: StreamType) -> String {
    format!(
        "error processing stream for request {request_id}: {} stream already assigned",
        stream_type.as_str()
    )
}

/// Client-side request ids: a decimal counter from 0 per forwarder (§4.2).
#[derive(Debug, Default)]
pub struct RequestIds(AtomicU64);

impl RequestIds {
    /// A counter starting at 0.
    pub fn new() -> Self {
        RequestIds(AtomicU64::new(0))
    }

    /// The next id.
    pub fn next_id(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// A complete pair, ready to forward.
#[derive(Debug)]
pub struct Pair<S> {
    /// The pairing key.
    pub request_id: String,
    /// The data stream's port (the one the server forwards to).
    pub port: u16,
    /// Error stream.
    pub error: S,
    /// Data stream.
    pub data: S,
}

/// What [`PairTable::insert`] did with a stream.
#[derive(Debug)]
pub enum Insert<S> {
    /// Waiting for the other stream.
    Pending,
    /// The pair is complete and removed from the table.
    Complete(Pair<S>),
    /// The pair already has a stream of this type: the new stream is handed back (reset it),
    /// and `message` is to be written to the pending pair's error stream, which
    /// [`PairTable::error_stream_mut`] gives.
    Duplicate {
        /// The rejected stream.
        stream: S,
        /// `error processing stream for request …: … stream already assigned`.
        message: String,
    },
}

/// A pair whose creation timed out.
#[derive(Debug)]
pub struct Expired<S> {
    /// The pairing key.
    pub request_id: String,
    /// `(conn=…, request=…) timed out waiting for streams`.
    pub message: String,
    /// The error stream, if it had arrived (write `message` to it).
    pub error: Option<S>,
    /// The data stream, if it had arrived.
    pub data: Option<S>,
}

#[derive(Debug)]
struct Pending<S> {
    deadline: Instant,
    port: u16,
    error: Option<S>,
    data: Option<S>,
}

/// The server's table of half-created pairs (§4.4 step 2), keyed by request id.
#[derive(Debug)]
pub struct PairTable<S> {
    conn: String,
    timeout: Duration,
    pending: HashMap<String, Pending<S>>,
}

impl<S> PairTable<S> {
    /// A table for connection `conn` (used in the timeout text) with the given creation timeout.
    pub fn new(conn: impl Into<String>, timeout: Duration) -> Self {
        PairTable {
            conn: conn.into(),
            timeout,
            pending: HashMap::new(),
        }
    }

    /// Number of pending pairs.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no pair is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Adds a validated stream.
    pub fn insert(&mut self, now: Instant, info: &StreamInfo, stream: S) -> Insert<S> {
        let timeout = self.timeout;
        let p = self
            .pending
            .entry(info.request_id.clone())
            .or_insert_with(|| Pending {
                deadline: now + timeout,
                port: info.port,
                error: None,
                data: None,
            });
        let slot = match info.stream_type {
            StreamType::Error => &mut p.error,
            StreamType::Data => &mut p.data,
        };
        if slot.is_some() {
            return Insert::Duplicate {
                stream,
                message: duplicate_text(&info.request_id, info.stream_type),
            };
        }
        *slot = Some(stream);
        if info.stream_type == StreamType::Data {
            p.port = info.port;
        }
        if p.error.is_some() && p.data.is_some() {
            let p = self
                .pending
                .remove(&info.request_id)
                .expect("entry was just looked up");
            return Insert::Complete(Pair {
                request_id: info.request_id.clone(),
                port: p.port,
                error: p.error.expect("checked above"),
                data: p.data.expect("checked above"),
            });
        }
        Insert::Pending
    }

    /// The error stream of a pending pair.
    pub fn error_stream_mut(&mut self, request_id: &str) -> Option<&mut S> {
        self.pending
            .get_mut(request_id)
            .and_then(|p| p.error.as_mut())
    }

    /// The earliest creation deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Removes and returns every pair whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired<S>> {
        let ids: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let p = self.pending.remove(&id)?;
                Some(Expired {
                    message: timeout_text(&self.conn, &id),
                    request_id: id,
                    error: p.error,
                    data: p.data,
                })
            })
            .collect()
    }

    /// Removes every pending pair (connection ending).
    pub fn drain(&mut self) -> Vec<(Option<S>, Option<S>)> {
        self.pending
            .drain()
            .map(|(_, p)| (p.error, p.data))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn validation_texts() {
        let e = |hs: &[(&str, &str)]| parse_stream_headers(1, &h(hs)).unwrap_err().to_string();
        assert_eq!(e(&[("streamtype", "data")]), "\"port\" header is required");
        assert_eq!(
            e(&[("port", "abc")]),
            "unable to parse \"abc\" as a port: strconv.ParseUint: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            e(&[("port", "70000")]),
            "unable to parse \"70000\" as a port: strconv.ParseUint: parsing \"70000\": value out of range"
        );
        assert!(e(&[("port", "+80")]).ends_with("invalid syntax"));
        assert!(e(&[("port", " 80")]).ends_with("invalid syntax"));
        assert_eq!(e(&[("port", "0")]), "port \"0\" must be > 0");
        assert_eq!(e(&[("port", "80")]), "\"streamType\" header is required");
        assert_eq!(
            e(&[("port", "80"), ("streamtype", "Data")]),
            "invalid stream type \"Data\""
        );
        let ok = parse_stream_headers(7, &h(&[("port", "0080"), ("streamtype", "data")])).unwrap();
        assert_eq!(
            ok,
            StreamInfo {
                stream_type: StreamType::Data,
                port: 80,
                request_id: "5".into()
            }
        );
        let ok = parse_stream_headers(5, &h(&[("port", "80"), ("streamtype", "error")])).unwrap();
        assert_eq!(ok.request_id, "5");
    }

    #[test]
    fn pairing_and_timeout() {
        let now = Instant::now();
        let mut t: PairTable<u32> = PairTable::new("0xc000123456", DEFAULT_STREAM_CREATION_TIMEOUT);
        let err = StreamInfo {
            stream_type: StreamType::Error,
            port: 80,
            request_id: "0".into(),
        };
        let data = StreamInfo {
            stream_type: StreamType::Data,
            port: 80,
            request_id: "0".into(),
        };
        assert!(matches!(t.insert(now, &err, 1), Insert::Pending));
        match t.insert(now, &err, 9) {
            Insert::Duplicate { stream: 9, message } => {
                assert_eq!(
                    message,
                    "error processing stream for request 0: error stream already assigned"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.insert(now, &data, 3),
            Insert::Complete(Pair {
                error: 1,
                data: 3,
                port: 80,
                ..
            })
        ));
        assert!(t.is_empty());
        let err1 = StreamInfo {
            request_id: "1".into(),
            ..err
        };
        assert!(matches!(t.insert(now, &err1, 5), Insert::Pending));
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(30)));
        assert!(t.expire(now + Duration::from_secs(29)).is_empty());
        let ex = t.expire(now + Duration::from_secs(30));
        assert_eq!(ex.len(), 1);
        assert_eq!(
            ex[0].message,
            "(conn=0xc000123456, request=1) timed out waiting for streams"
        );
        assert_eq!(ex[0].error, Some(5));
    }

    #[test]
    fn error_text() {
        assert_eq!(
            forward_error_text(8080, "abc", "boom"),
            "error forwarding port 8080 to pod abc, uid : boom"
        );
        let ids = RequestIds::new();
        assert_eq!((ids.next_id(), ids.next_id()), (0, 1));
    }
}
