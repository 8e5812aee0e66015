//! WebSocket framing and the Kubernetes channel protocol (PROTOCOL.md §2.3–§2.4, §5), sans-IO.
//!
//! - [`frame`]: RFC 6455 frame codec (masking, fragmentation, control frames, close codes).
//! - [`channel`]: the `v4`/`v5.channel.k8s.io` and `v4.base64.channel.k8s.io` port-forward
//!   channel protocol: layout, initial port frames, receiving rules.
//!
//! The `SPDY/3.1+portforward.k8s.io` tunnel needs nothing beyond [`frame`]: its binary message
//! payloads, concatenated, are the SPDY byte stream (§2.4); `porthole-relay::ws` drives it.

pub mod channel;
pub mod frame;

pub use channel::ChannelProtocol;
pub use frame::{CloseCode, CloseFrame, FrameError, Message, OpCode, Role};

/// Entry points for `cargo fuzz` (fuzz/fuzz_targets/ws_*.rs): must never panic on any input.
/// Always compiled (it is small) so the fuzz targets need no `cfg(fuzzing)`, which the
/// workspace lints do not declare.
#[doc(hidden)]
pub mod fuzz_logic {
    use bytes::BytesMut;

    use super::channel::{ChannelProtocol, ClientDemux, ServerDemux};
    use super::frame::{FrameDecoder, Message, MessageDecoder, Role};

    /// Runs the node's upgrade negotiation ([`crate::handshake`]) on a request built from
    /// `data`: the text before the first NUL is the query string, the next up to three
    /// NUL-separated pieces are `Sec-WebSocket-Protocol`, `X-Stream-Protocol-Version` and
    /// `X-Porthole-Flow-Control` values. Unbuildable requests are skipped.
    pub fn negotiate(data: &[u8]) {
        let mut parts = data.split(|b| *b == 0);
        let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let mut builder = http::Request::builder()
            .method("GET")
            .uri(format!("/portForward/ns/pod?{query}"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        for name in [
            "sec-websocket-protocol",
            "x-stream-protocol-version",
            "x-porthole-flow-control",
        ] {
            if let Some(v) = parts
                .next()
                .and_then(|v| http::HeaderValue::from_bytes(v).ok())
            {
                builder = builder.header(name, v);
            }
        }
        if let Ok(req) = builder.body(()) {
            let (req, ()) = req.into_parts();
            let _ = crate::handshake::negotiate_server(&req);
            let _ = crate::handshake::classify(&req);
            let _ = crate::handshake::parse_api_ports(req.uri.query());
        }
    }

    /// Feeds `data` to the frame and message decoders of both roles, in chunks whose sizes are
    /// taken from the first byte, and every decoded data message to the channel demultiplexers
    /// of all four channel protocols.
    pub fn decode_and_demux(data: &[u8]) {
        let Some((&chunk, rest)) = data.split_first() else {
            return;
        };
        let chunk = usize::from(chunk).max(1);
        for role in [Role::Client, Role::Server] {
            let mut frames = FrameDecoder::new(role).with_max_frame_payload(1 << 16);
            let mut buf = BytesMut::new();
            'frames: for piece in rest.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match frames.decode(&mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'frames,
                    }
                }
            }
            let mut messages = MessageDecoder::new(role).with_max_message(1 << 16);
            let mut buf = BytesMut::new();
            let protos = [
                ChannelProtocol::V5Binary,
                ChannelProtocol::V4Binary,
                ChannelProtocol::V4Base64,
                ChannelProtocol::NoSubprotocol,
            ];
            let mut clients: Vec<ClientDemux> = protos
                .iter()
                .map(|p| ClientDemux::new(*p, vec![80, 8080, 1]))
                .collect();
            'messages: for piece in rest.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match messages.decode(&mut buf) {
                        Ok(Some(Message::Binary(p))) | Ok(Some(Message::Text(p))) => {
                            for proto in protos {
                                let _ = ServerDemux::new(proto, 3).handle(&p);
                            }
                            for c in &mut clients {
                                let _ = c.handle(super::frame::DataKind::Binary, &p);
                                let _ = c.handle(super::frame::DataKind::Text, &p);
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'messages,
                    }
                }
            }
        }
    }
}
