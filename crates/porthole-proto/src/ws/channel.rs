//! The Kubernetes WebSocket channel protocol for port-forward (PROTOCOL.md §5), sans-IO.
//!
//! For the port list `[p0, …, pN-1]` there are `2N` channels: `2i` carries data for `p_i` in
//! both directions, `2i+1` carries error text from the server (§5.2). Each message starts with
//! its channel: one byte in binary mode, the ASCII digit `'0' + ch` followed by base64 in
//! `v4.base64.channel.k8s.io` (§5.3). Right after the upgrade the server writes the port
//! (2 bytes, little-endian) once on every channel, data channel first (§5.4). With
//! `v5.channel.k8s.io` a client may send the close signal `0xFF, <channel>` to say it will
//! write no more on that channel; porthole's node turns that into a half-close toward the pod.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{apply_mask, encode_frame, DataKind, FrameHead, OpCode};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Sub-protocol name of the v5 binary channel protocol.
pub const V5_CHANNEL: &str = "v5.channel.k8s.io";
/// Sub-protocol name of the v4 binary channel protocol.
pub const V4_CHANNEL: &str = "v4.channel.k8s.io";
/// Sub-protocol name of the v4 base64 (text) channel protocol.
pub const V4_BASE64_CHANNEL: &str = "v4.base64.channel.k8s.io";

/// The first byte of a v5 close-signal message; the second byte names the channel.
pub const CLOSE_SIGNAL: u8 = 0xFF;

/// Most ports one WebSocket can carry: channels are one byte and 255 is the v5 close signal,
/// so `2N - 1 ≤ 254`.
pub const MAX_PORTS: usize = 127;

/// Which channel protocol a connection speaks (PROTOCOL.md §2.3, §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelProtocol {
    /// `v5.channel.k8s.io`: binary, plus the client close signal `0xFF, <channel>`.
    V5Binary,
    /// `v4.channel.k8s.io`: binary messages `<ch><payload>`.
    V4Binary,
    /// `v4.base64.channel.k8s.io`: text messages `'0'+ch` followed by base64.
    V4Base64,
    /// No sub-protocol was offered: binary mode, nothing echoed in the 101.
    NoSubprotocol,
}

impl ChannelProtocol {
    /// The protocol named by a `Sec-WebSocket-Protocol` entry, if it is one we accept for
    /// port-forward. The unversioned `channel.k8s.io` is not accepted (§2.3).
    pub fn from_subprotocol(name: &str) -> Option<ChannelProtocol> {
        match name {
            V5_CHANNEL => Some(ChannelProtocol::V5Binary),
            V4_CHANNEL => Some(ChannelProtocol::V4Binary),
            V4_BASE64_CHANNEL => Some(ChannelProtocol::V4Base64),
            _ => None,
        }
    }

    /// The sub-protocol to echo in the 101; `None` for [`ChannelProtocol::NoSubprotocol`].
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            ChannelProtocol::V5Binary => Some(V5_CHANNEL),
            ChannelProtocol::V4Binary => Some(V4_CHANNEL),
            ChannelProtocol::V4Base64 => Some(V4_BASE64_CHANNEL),
            ChannelProtocol::NoSubprotocol => None,
        }
    }

    /// Text frames with base64 payloads instead of binary frames.
    pub fn is_base64(self) -> bool {
        self == ChannelProtocol::V4Base64
    }

    /// Whether `0xFF, <channel>` is a close signal rather than data for channel 255.
    pub fn has_close_signal(self) -> bool {
        self == ChannelProtocol::V5Binary
    }

    /// Appends one complete WebSocket frame carrying `data` on `channel`. `mask` is the
    /// client's masking key (`None` on the server).
    pub fn encode_frame(self, dst: &mut BytesMut, channel: u8, data: &[u8], mask: Option<[u8; 4]>) {
        let body_len = if self.is_base64() {
            base64::encoded_len(data.len(), true)
                .expect("base64 of an in-memory slice fits in usize")
        } else {
            data.len()
        };
        let head = FrameHead {
            fin: true,
            opcode: if self.is_base64() {
                OpCode::Text
            } else {
                OpCode::Binary
            },
            mask,
            payload_len: 1 + body_len as u64,
        };
        dst.reserve(head.encoded_len() + 1 + body_len);
        head.encode(dst);
        let start = dst.len();
        if self.is_base64() {
            // Go writes '0'+channel as a byte, wrapping for channels ≥ 208; do the same.
            dst.put_u8(b'0'.wrapping_add(channel));
            let body = dst.len();
            dst.resize(body + body_len, 0);
            let written = BASE64
                .encode_slice(data, &mut dst[body..])
                .expect("output sized with base64::encoded_len");
            debug_assert_eq!(written, body_len);
        } else {
            dst.put_u8(channel);
            dst.extend_from_slice(data);
        }
        if let Some(key) = mask {
            apply_mask(&mut dst[start..], key, 0);
        }
    }

    /// Appends the v5 close signal for `channel` (`0xFF, channel`, binary). Only meaningful for
    /// [`ChannelProtocol::V5Binary`]; callers check [`ChannelProtocol::has_close_signal`].
    pub fn encode_close_signal(dst: &mut BytesMut, channel: u8, mask: Option<[u8; 4]>) {
        encode_frame(dst, true, OpCode::Binary, mask, &[CLOSE_SIGNAL, channel]);
    }

    /// Splits a received data message into channel and payload. `Ok(None)` for an empty
    /// message. Base64 payloads are decoded; both text and binary opcodes are accepted, as the
    /// Kubernetes server does.
    pub fn decode_message(self, payload: &Bytes) -> Result<Option<(u8, Bytes)>, ChannelError> {
        let Some(&first) = payload.first() else {
            return Ok(None);
        };
        if !self.is_base64() {
            return Ok(Some((first, payload.slice(1..))));
        }
        let channel = first.wrapping_sub(b'0');
        let decoded = BASE64
            .decode(&payload[1..])
            .map_err(|_| ChannelError::BadBase64 { channel })?;
        Ok(Some((channel, Bytes::from(decoded))))
    }
}

/// The data channel of the port at `port_index` (`2i`).
pub fn data_channel(port_index: usize) -> u8 {
    (port_index * 2) as u8
}

/// The error channel of the port at `port_index` (`2i + 1`).
pub fn error_channel(port_index: usize) -> u8 {
    (port_index * 2 + 1) as u8
}

/// The initial payload the server writes on both channels of a port: the port, little-endian.
pub fn port_prefix(port: u16) -> [u8; 2] {
    port.to_le_bytes()
}

/// What a peer got wrong at the channel level. The server tolerates all of these (the message
/// is dropped); a client fails the affected port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// A base64-mode message whose payload is not valid base64.
    #[error("channel {channel}: message payload is not valid base64")]
    BadBase64 {
        /// The channel the message named.
        channel: u8,
    },
    /// The first message on a channel was not the expected 2-byte port prefix.
    #[error(
        "channel {channel}: expected the port prefix {expected} as first message, got {got:02x?}"
    )]
    BadPortPrefix {
        /// Channel of the message.
        channel: u8,
        /// Port expected from the handshake's port list.
        expected: u16,
        /// The payload received instead.
        got: Vec<u8>,
    },
    /// A message on a channel that does not belong to any requested port.
    #[error("channel {channel} is not used: the connection carries {ports} ports")]
    UnknownChannel {
        /// The channel the message named.
        channel: u8,
        /// Number of ports of the connection.
        ports: usize,
    },
    /// A text message in binary mode, or binary where only text is expected.
    #[error("unexpected {kind:?} message for the negotiated channel protocol")]
    WrongMessageType {
        /// The kind received.
        kind: DataKind,
    },
}

/// Why the server dropped a client message (§5.3); reported so the driver can log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// An empty message.
    Empty,
    /// Only the channel byte: nothing to deliver.
    EmptyData {
        /// Index of the port.
        port_index: usize,
    },
    /// A channel ≥ 2N (or a close signal for one).
    UnknownChannel {
        /// The channel named.
        channel: u8,
    },
    /// A write to an error channel, which clients may not write.
    ErrorChannel {
        /// Index of the port.
        port_index: usize,
    },
    /// Undecodable base64.
    BadBase64 {
        /// The channel named.
        channel: u8,
    },
    /// A close signal without a channel byte, or one naming an error channel.
    BadCloseSignal,
}

/// A client message as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerInbound {
    /// Bytes for the pod on port `port_index`.
    Data {
        /// Index into the handshake's port list.
        port_index: usize,
        /// The bytes, channel byte removed (decoded in base64 mode).
        payload: Bytes,
    },
    /// v5: the client will send no more data for this port (half-close toward the pod).
    CloseSignal {
        /// Index into the handshake's port list.
        port_index: usize,
    },
    /// Dropped per §5.3.
    Dropped(Dropped),
}

/// Server-side demultiplexer: applies the receiving rules of §5.3 to client messages.
#[derive(Debug, Clone, Copy)]
pub struct ServerDemux {
    proto: ChannelProtocol,
    ports: usize,
}

impl ServerDemux {
    /// A demultiplexer for `ports` ports.
    pub fn new(proto: ChannelProtocol, ports: usize) -> ServerDemux {
        ServerDemux { proto, ports }
    }

    /// Classifies one complete data message from the client (text or binary; both are
    /// accepted, as by the Kubernetes server).
    pub fn handle(&self, payload: &Bytes) -> ServerInbound {
        if self.proto.has_close_signal() && payload.first() == Some(&CLOSE_SIGNAL) {
            return match payload.get(1) {
                Some(&ch) if usize::from(ch) < 2 * self.ports && ch % 2 == 0 => {
                    ServerInbound::CloseSignal {
                        port_index: usize::from(ch / 2),
                    }
                }
                Some(&ch) if usize::from(ch) >= 2 * self.ports => {
                    ServerInbound::Dropped(Dropped::UnknownChannel { channel: ch })
                }
                _ => ServerInbound::Dropped(Dropped::BadCloseSignal),
            };
        }
        let (channel, data) = match self.proto.decode_message(payload) {
            Ok(Some(v)) => v,
            Ok(None) => return ServerInbound::Dropped(Dropped::Empty),
            Err(ChannelError::BadBase64 { channel }) => {
                return ServerInbound::Dropped(Dropped::BadBase64 { channel })
            }
            // decode_message returns no other error.
            Err(_) => return ServerInbound::Dropped(Dropped::Empty),
        };
        if usize::from(channel) >= 2 * self.ports {
            return ServerInbound::Dropped(Dropped::UnknownChannel { channel });
        }
        let port_index = usize::from(channel / 2);
        if channel % 2 == 1 {
            return ServerInbound::Dropped(Dropped::ErrorChannel { port_index });
        }
        if data.is_empty() {
            return ServerInbound::Dropped(Dropped::EmptyData { port_index });
        }
        ServerInbound::Data {
            port_index,
            payload: data,
        }
    }
}

/// A server message as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInbound {
    /// The initial port prefix arrived on a channel (consumed, nothing to deliver).
    PortPrefix {
        /// Index into the port list.
        port_index: usize,
        /// Whether it was the error channel's prefix.
        error_channel: bool,
    },
    /// Bytes from the pod.
    Data {
        /// Index into the port list.
        port_index: usize,
        /// The bytes.
        payload: Bytes,
    },
    /// Error text for a port (`error forwarding port …`); that port's forward has failed.
    Error {
        /// Index into the port list.
        port_index: usize,
        /// The text (may arrive in several messages; concatenate).
        text: Bytes,
    },
    /// An empty message, or a message with only a channel byte.
    Empty,
}

/// Client-side demultiplexer: checks and consumes the per-channel port prefixes of §5.4, then
/// splits data from error text.
#[derive(Debug, Clone)]
pub struct ClientDemux {
    proto: ChannelProtocol,
    ports: Vec<u16>,
    /// Per channel: whether its port prefix has been consumed.
    prefix_seen: Vec<bool>,
}

impl ClientDemux {
    /// A demultiplexer for the ports requested in the handshake, in query order.
    pub fn new(proto: ChannelProtocol, ports: Vec<u16>) -> ClientDemux {
        let channels = ports.len() * 2;
        ClientDemux {
            proto,
            ports,
            prefix_seen: vec![false; channels],
        }
    }

    /// The protocol in use.
    pub fn protocol(&self) -> ChannelProtocol {
        self.proto
    }

    /// Whether every channel's port prefix has been received.
    pub fn all_prefixes_seen(&self) -> bool {
        self.prefix_seen.iter().all(|s| *s)
    }

    /// Classifies one server message. The first message on each channel must be exactly the
    /// 2-byte port (kube-rs and the Python client are equally strict).
    pub fn handle(
        &mut self,
        kind: DataKind,
        payload: &Bytes,
    ) -> Result<ClientInbound, ChannelError> {
        match (self.proto.is_base64(), kind) {
            (true, DataKind::Binary) | (false, DataKind::Text) => {
                return Err(ChannelError::WrongMessageType { kind })
            }
            _ => {}
        }
        let Some((channel, data)) = self.proto.decode_message(payload)? else {
            return Ok(ClientInbound::Empty);
        };
        let ch = usize::from(channel);
        let Some(seen) = self.prefix_seen.get_mut(ch) else {
            return Err(ChannelError::UnknownChannel {
                channel,
                ports: self.ports.len(),
            });
        };
        let port_index = ch / 2;
        let error_channel = ch % 2 == 1;
        if !*seen {
            let expected = self.ports[port_index];
            if data[..] != port_prefix(expected) {
                return Err(ChannelError::BadPortPrefix {
                    channel,
                    expected,
                    got: data.to_vec(),
                });
            }
            *seen = true;
            return Ok(ClientInbound::PortPrefix {
                port_index,
                error_channel,
            });
        }
        if data.is_empty() {
            return Ok(ClientInbound::Empty);
        }
        Ok(if error_channel {
            ClientInbound::Error {
                port_index,
                text: data,
            }
        } else {
            ClientInbound::Data {
                port_index,
                payload: data,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;
    use crate::ws::frame::{Message, MessageDecoder, Role};

    fn server_frames(proto: ChannelProtocol, ports: &[u16]) -> Vec<Message> {
        let mut buf = BytesMut::new();
        for (i, p) in ports.iter().enumerate() {
            proto.encode_frame(&mut buf, data_channel(i), &port_prefix(*p), None);
            proto.encode_frame(&mut buf, error_channel(i), &port_prefix(*p), None);
        }
        let mut d = MessageDecoder::new(Role::Client);
        std::iter::from_fn(|| d.decode(&mut buf).unwrap()).collect()
    }

    #[test]
    fn binary_port_frames_match_spec() {
        // PROTOCOL.md §5.4, ports [8080, 9090].
        let msgs = server_frames(ChannelProtocol::V4Binary, &[8080, 9090]);
        let want: [&[u8]; 4] = [
            &hex!("00 90 1f"),
            &hex!("01 90 1f"),
            &hex!("02 82 23"),
            &hex!("03 82 23"),
        ];
        assert_eq!(msgs.len(), 4);
        for (m, w) in msgs.iter().zip(want) {
            assert_eq!(m, &Message::Binary(Bytes::copy_from_slice(w)));
        }
    }

    #[test]
    fn base64_port_frames_match_spec() {
        let msgs = server_frames(ChannelProtocol::V4Base64, &[8080, 9090]);
        let want = ["0kB8=", "1kB8=", "2giM=", "3giM="];
        for (m, w) in msgs.iter().zip(want) {
            assert_eq!(m, &Message::Text(Bytes::from_static(w.as_bytes())));
        }
    }
}
