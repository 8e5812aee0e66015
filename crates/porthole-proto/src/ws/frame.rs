//! RFC 6455 framing, sans-IO (PROTOCOL.md §2.3–§2.4, RFC 6455 §5).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               | Masking-key, if MASK set to 1 |
//! +-------------------------------+-------------------------------+
//! | Masking-key (continued)       |          Payload Data         |
//! +-------------------------------- - - - - - - - - - - - - - - - +
//! ```
//!
//! Two decoding levels:
//! - [`FrameDecoder`] yields single frames (already unmasked, payload split off the input
//!   buffer without copying) and enforces the framing rules: masking direction, reserved bits
//!   and opcodes, control-frame size and fragmentation, continuation sequencing. The
//!   WebSocket tunnel uses it directly, because its message boundaries carry no meaning and
//!   reassembling would only add a copy and a size cap.
//! - [`MessageDecoder`] reassembles fragmented data messages (bounded by a size cap checked
//!   before buffering) and validates UTF-8 in text messages and close reasons; the channel
//!   protocol needs whole messages.
//!
//! Encoding writes into a caller buffer; the caller passes the 4-byte masking key so this
//! module needs no RNG or clock.

use bytes::{BufMut, Bytes, BytesMut};

/// Which end of the WebSocket this codec runs on. It decides the masking rules of RFC 6455
/// §5.1: a client masks every frame it sends and requires unmasked frames from the server; a
/// server requires masked frames and never masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The end that sent the upgrade request.
    Client,
    /// The end that answered `101 Switching Protocols`.
    Server,
}

/// Frame opcode (RFC 6455 §5.2). Reserved opcodes are rejected while decoding, so only the six
/// defined ones are representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// `0x0`: continues a fragmented data message.
    Continuation,
    /// `0x1`: UTF-8 text message (base64 channel mode).
    Text,
    /// `0x2`: binary message (tunnel and binary channel modes).
    Binary,
    /// `0x8`: connection close.
    Close,
    /// `0x9`: ping; answered with a pong carrying the same payload.
    Ping,
    /// `0xA`: pong.
    Pong,
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Parses a 4-bit wire value; `None` for the reserved opcodes 0x3–0x7 and 0xB–0xF.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: at most 125 bytes of payload and never fragmented (RFC 6455 §5.5).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A close status code (RFC 6455 §7.4). A newtype so codes we do not know survive decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure; the tunnel treats it as EOF (PROTOCOL.md §2.4).
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, pod gone).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a message type the endpoint cannot accept (text in the tunnel).
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: "no status received"; never sent, reported when a Close frame had no payload.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1007: invalid payload data (bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: message too big.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: unexpected server condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// Whether a peer may put this code on the wire (RFC 6455 §7.4.1–§7.4.2; 1012–1014 are
    /// IANA-registered later and sent by real servers, so they are accepted as gorilla does).
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            1000 => "normal closure",
            1001 => "going away",
            1002 => "protocol error",
            1003 => "unsupported data",
            1005 => "no status",
            1006 => "abnormal closure",
            1007 => "invalid payload data",
            1008 => "policy violation",
            1009 => "message too big",
            1010 => "mandatory extension",
            1011 => "internal error",
            _ => return write!(f, "{}", self.0),
        };
        write!(f, "{} ({name})", self.0)
    }
}

/// The payload of a Close frame: a code and a UTF-8 reason of at most 123 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Status code.
    pub code: CloseCode,
    /// Human-readable reason; may be empty.
    pub reason: String,
}

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Default cap for one frame's payload and for a reassembled message: 16 MiB. Real peers send
/// ≤ 32 KiB per message (gorilla/client-go buffers), so this only stops a hostile peer from
/// making us buffer unbounded data.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 << 20;

/// What a peer did wrong on the wire. Every variant is fatal for the connection; the driver
/// answers with a Close frame carrying [`FrameError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1–3 set although no extension was negotiated (we never negotiate permessage-deflate).
    #[error("WebSocket frame has reserved bits {rsv:#x} set, but no extension was negotiated")]
    ReservedBits {
        /// The three RSV bits, in their header positions (0x70 mask).
        rsv: u8,
    },
    /// An opcode RFC 6455 reserves.
    #[error("WebSocket frame uses reserved opcode {opcode:#x}")]
    ReservedOpcode {
        /// The 4-bit value received.
        opcode: u8,
    },
    /// A client sent an unmasked frame (RFC 6455 §5.1).
    #[error("WebSocket client sent an unmasked frame; clients must mask every frame")]
    UnmaskedClientFrame,
    /// A server sent a masked frame (RFC 6455 §5.1).
    #[error("WebSocket server sent a masked frame; servers must not mask")]
    MaskedServerFrame,
    /// A control frame with more than 125 bytes of payload.
    #[error(
        "WebSocket {opcode:?} frame has {len} bytes of payload, control frames allow at most 125"
    )]
    ControlTooLong {
        /// Close, Ping or Pong.
        opcode: OpCode,
        /// Declared payload length.
        len: u64,
    },
    /// A control frame without FIN.
    #[error("WebSocket {opcode:?} frame is fragmented; control frames must not be")]
    FragmentedControl {
        /// Close, Ping or Pong.
        opcode: OpCode,
    },
    /// A continuation frame while no fragmented message was open.
    #[error("WebSocket continuation frame received without a message to continue")]
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message was still open.
    #[error("WebSocket {opcode:?} frame received before the previous fragmented message ended")]
    UnfinishedMessage {
        /// The opcode of the new frame.
        opcode: OpCode,
    },
    /// The 64-bit length has its most significant bit set (RFC 6455 §5.2).
    #[error("WebSocket frame length has the most significant bit set")]
    LengthOverflow,
    /// One frame declares more payload than the configured cap.
    #[error("WebSocket frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared payload length.
        len: u64,
        /// The decoder's cap.
        max: usize,
    },
    /// A fragmented message grows beyond the configured cap.
    #[error("WebSocket message of at least {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Bytes the message would have after this fragment.
        len: u64,
        /// The decoder's cap.
        max: usize,
    },
    /// A Close frame whose payload is one byte (a code needs two).
    #[error("WebSocket Close frame has a 1-byte payload; a status code needs 2 bytes")]
    BadClosePayload,
    /// A Close frame with a code that must not appear on the wire (e.g. 1005, 1006, 999).
    #[error("WebSocket Close frame carries invalid status code {code}")]
    InvalidCloseCode {
        /// The code received.
        code: u16,
    },
    /// A text message or close reason that is not UTF-8.
    #[error("WebSocket text message or close reason is not valid UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code to send back when failing the connection for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::FrameTooLarge { .. } | FrameError::MessageTooLarge { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            FrameError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// The fixed part of a frame, as parsed from the wire or to be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Last frame of a message.
    pub fin: bool,
    /// Frame type.
    pub opcode: OpCode,
    /// Masking key when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub payload_len: u64,
}

impl FrameHead {
    /// Parses a header from the start of `src`. `Ok(None)` when `src` is too short; on success
    /// also returns the header length. Checks only what the header alone can tell (reserved
    /// bits and opcodes, 64-bit MSB, control-frame length and FIN); masking direction and
    /// sequencing are the decoder's job.
    pub fn parse(src: &[u8]) -> Result<Option<(FrameHead, usize)>, FrameError> {
        let (b0, b1) = match src {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let rsv = b0 & 0x70;
        if rsv != 0 {
            return Err(FrameError::ReservedBits { rsv });
        }
        let fin = b0 & 0x80 != 0;
        let opcode =
            OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::ReservedOpcode { opcode: b0 & 0x0F })?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let (payload_len, mut pos) = match len7 {
            126 => match src.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match src.get(2..10) {
                Some(b) => {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(b);
                    let len = u64::from_be_bytes(raw);
                    if len >> 63 != 0 {
                        return Err(FrameError::LengthOverflow);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if opcode.is_control() {
            if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::ControlTooLong {
                    opcode,
                    len: payload_len,
                });
            }
            if !fin {
                return Err(FrameError::FragmentedControl { opcode });
            }
        }
        let mask = if masked {
            match src.get(pos..pos + 4) {
                Some(k) => {
                    pos += 4;
                    Some([k[0], k[1], k[2], k[3]])
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some((
            FrameHead {
                fin,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Bytes [`FrameHead::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let len = match self.payload_len {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        };
        len + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Writes the header with the shortest length encoding (RFC 6455 §5.2 requires it).
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(u8::from(self.fin) << 7 | self.opcode.to_u8());
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.payload_len {
            n @ 0..=125 => dst.put_u8(mask_bit | n as u8),
            n @ 126..=0xFFFF => {
                dst.put_u8(mask_bit | 126);
                dst.put_u16(n as u16);
            }
            n => {
                dst.put_u8(mask_bit | 127);
                dst.put_u64(n);
            }
        }
        if let Some(key) = self.mask {
            dst.put_slice(&key);
        }
    }
}

/// XORs `buf` with the masking key, as if `buf` started `offset` bytes into the payload
/// (RFC 6455 §5.3). Works eight bytes at a time; masking is its own inverse.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut rotated = [0u8; 4];
    for (i, b) in rotated.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    // The same byte order on both sides keeps byte i of the word paired with byte i of each
    // chunk, whatever the target's endianness.
    let mut word = [0u8; 8];
    word[..4].copy_from_slice(&rotated);
    word[4..].copy_from_slice(&rotated);
    let word64 = u64::from_ne_bytes(word);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(raw) ^ word64;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
}

/// Appends one complete frame to `dst`. With `mask` (client role) the payload is masked in
/// `dst`, leaving `payload` untouched. The caller keeps control frames ≤ 125 bytes; this is
/// checked in debug builds only because it is caller misuse, not peer input.
pub fn encode_frame(
    dst: &mut BytesMut,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    debug_assert!(!opcode.is_control() || (fin && payload.len() <= MAX_CONTROL_PAYLOAD));
    let head = FrameHead {
        fin,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    dst.reserve(head.encoded_len() + payload.len());
    head.encode(dst);
    let start = dst.len();
    dst.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[start..], key, 0);
    }
}

/// Appends a Close frame. `None` sends an empty payload (the peer sees 1005 "no status"); the
/// reason is cut at a character boundary to fit the 125-byte control-frame limit.
pub fn encode_close(dst: &mut BytesMut, close: Option<(CloseCode, &str)>, mask: Option<[u8; 4]>) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    let len = match close {
        None => 0,
        Some((code, reason)) => {
            payload[..2].copy_from_slice(&code.0.to_be_bytes());
            let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
            2 + cut
        }
    };
    encode_frame(dst, true, OpCode::Close, mask, &payload[..len]);
}

/// Parses a Close frame's payload (RFC 6455 §5.5.1). `Ok(None)` for an empty payload.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::BadClosePayload),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(FrameError::InvalidCloseCode { code: code.0 });
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// One decoded, unmasked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// Frame type; `Continuation` frames belong to the message opened by the last data frame.
    pub opcode: OpCode,
    /// Unmasked payload, split off the input buffer without copying.
    pub payload: Bytes,
}

/// The kind of data message currently being received in fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// A text message.
    Text,
    /// A binary message.
    Binary,
}

/// Frame-level decoder: enforces RFC 6455 framing rules, unmasks in place, tracks
/// fragmentation (see the module docs).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    role: Role,
    max_frame_payload: usize,
    /// The data message a continuation frame would continue, if any.
    open_message: Option<DataKind>,
}

impl FrameDecoder {
    /// A decoder for the given end of the connection, with [`DEFAULT_MAX_PAYLOAD`].
    pub fn new(role: Role) -> FrameDecoder {
        FrameDecoder {
            role,
            max_frame_payload: DEFAULT_MAX_PAYLOAD,
            open_message: None,
        }
    }

    /// Sets the largest payload accepted in a single frame.
    pub fn with_max_frame_payload(mut self, max: usize) -> FrameDecoder {
        self.max_frame_payload = max;
        self
    }

    /// Which end this decoder runs on.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The data message a continuation frame would belong to, if a fragmented message is open.
    pub fn open_message(&self) -> Option<DataKind> {
        self.open_message
    }

    /// Decodes one frame from the front of `src`, removing its bytes. `Ok(None)` when `src`
    /// does not yet hold a complete frame (nothing is consumed). The payload length is checked
    /// against the cap as soon as the header is complete, before waiting for the payload.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((head, head_len)) = FrameHead::parse(src)? else {
            return Ok(None);
        };
        match (self.role, head.mask.is_some()) {
            (Role::Server, false) => return Err(FrameError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(FrameError::MaskedServerFrame),
            _ => {}
        }
        if head.payload_len > self.max_frame_payload as u64 {
            return Err(FrameError::FrameTooLarge {
                len: head.payload_len,
                max: self.max_frame_payload,
            });
        }
        // Sequencing is validated before the payload arrives so a bad peer fails early.
        let next_open = match head.opcode {
            OpCode::Continuation => match self.open_message {
                None => return Err(FrameError::UnexpectedContinuation),
                Some(kind) => (!head.fin).then_some(kind),
            },
            OpCode::Text | OpCode::Binary => {
                if self.open_message.is_some() {
                    return Err(FrameError::UnfinishedMessage {
                        opcode: head.opcode,
                    });
                }
                let kind = if head.opcode == OpCode::Text {
                    DataKind::Text
                } else {
                    DataKind::Binary
                };
                (!head.fin).then_some(kind)
            }
            _ => self.open_message,
        };
        // Fits in usize: it is ≤ max_frame_payload.
        let payload_len = head.payload_len as usize;
        if src.len() < head_len + payload_len {
            // Make room for the rest so the driver does not reallocate per read, but only up
            // to 256 KiB ahead: a peer merely declaring a large frame must not cost memory.
            src.reserve((head_len + payload_len - src.len()).min(256 << 10));
            return Ok(None);
        }
        let _ = src.split_to(head_len);
        let mut payload = src.split_to(payload_len);
        if let Some(key) = head.mask {
            apply_mask(&mut payload, key, 0);
        }
        self.open_message = next_open;
        Ok(Some(Frame {
            fin: head.fin,
            opcode: head.opcode,
            payload: payload.freeze(),
        }))
    }
}

/// A complete WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the payload is valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping; answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close; `None` when the frame had no payload (status 1005).
    Close(Option<CloseFrame>),
}

/// Message-level decoder: a [`FrameDecoder`] plus reassembly of fragmented data messages,
/// bounded by a message-size cap checked before each fragment is buffered.
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    frames: FrameDecoder,
    max_message: usize,
    partial: BytesMut,
}

impl MessageDecoder {
    /// A decoder for the given end with [`DEFAULT_MAX_PAYLOAD`] as frame and message cap.
    pub fn new(role: Role) -> MessageDecoder {
        MessageDecoder {
            frames: FrameDecoder::new(role),
            max_message: DEFAULT_MAX_PAYLOAD,
            partial: BytesMut::new(),
        }
    }

    /// Sets the largest reassembled message (and single frame) accepted.
    pub fn with_max_message(mut self, max: usize) -> MessageDecoder {
        self.max_message = max;
        self.frames = self.frames.with_max_frame_payload(max);
        self
    }

    /// Decodes the next complete message from `src`; `Ok(None)` when more bytes are needed.
    /// Control frames interleaved in a fragmented message are returned as they arrive.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            let open_before = self.frames.open_message();
            let Some(frame) = self.frames.decode(src)? else {
                return Ok(None);
            };
            let kind = match frame.opcode {
                OpCode::Ping => return Ok(Some(Message::Ping(frame.payload))),
                OpCode::Pong => return Ok(Some(Message::Pong(frame.payload))),
                OpCode::Close => {
                    return Ok(Some(Message::Close(parse_close_payload(&frame.payload)?)));
                }
                OpCode::Text => DataKind::Text,
                OpCode::Binary => DataKind::Binary,
                // The frame decoder guarantees a message is open.
                OpCode::Continuation => open_before.unwrap_or(DataKind::Binary),
            };
            let payload = if frame.opcode == OpCode::Continuation || !frame.fin {
                let total = self.partial.len() as u64 + frame.payload.len() as u64;
                if total > self.max_message as u64 {
                    return Err(FrameError::MessageTooLarge {
                        len: total,
                        max: self.max_message,
                    });
                }
                self.partial.extend_from_slice(&frame.payload);
                if !frame.fin {
                    continue;
                }
                self.partial.split().freeze()
            } else {
                // Unfragmented: the zero-copy hot path.
                frame.payload
            };
            return Ok(Some(match kind {
                DataKind::Text => {
                    std::str::from_utf8(&payload).map_err(|_| FrameError::InvalidUtf8)?;
                    Message::Text(payload)
                }
                DataKind::Binary => Message::Binary(payload),
            }));
        }
    }
}

/// Appends a whole message as one frame. Messages are never fragmented on send: the callers
/// cap their writes (64 KiB in the tunnel, 32 KiB + 1 in the channel protocol).
pub fn encode_message(dst: &mut BytesMut, msg: &Message, mask: Option<[u8; 4]>) {
    match msg {
        Message::Text(p) => encode_frame(dst, true, OpCode::Text, mask, p),
        Message::Binary(p) => encode_frame(dst, true, OpCode::Binary, mask, p),
        Message::Ping(p) => encode_frame(dst, true, OpCode::Ping, mask, p),
        Message::Pong(p) => encode_frame(dst, true, OpCode::Pong, mask, p),
        Message::Close(c) => {
            encode_close(dst, c.as_ref().map(|c| (c.code, c.reason.as_str())), mask)
        }
    }
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;

    #[test]
    fn decodes_unmasked_server_binary() {
        // From PROTOCOL.md §2.4: binary, FIN, length 4, unmasked.
        let mut buf = BytesMut::from(&hex!("82 04 00 00 00 14")[..]);
        let f = FrameDecoder::new(Role::Client)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(f.opcode, OpCode::Binary);
        assert!(f.fin);
        assert_eq!(&f.payload[..], &hex!("00 00 00 14"));
        assert!(buf.is_empty());
    }

    #[test]
    fn rfc_masked_hello() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut buf = BytesMut::from(&hex!("81 85 37 fa 21 3d 7f 9f 4d 51 58")[..]);
        let m = MessageDecoder::new(Role::Server)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(m, Message::Text(Bytes::from_static(b"Hello")));
        let mut out = BytesMut::new();
        encode_frame(
            &mut out,
            true,
            OpCode::Text,
            Some(hex!("37 fa 21 3d")),
            b"Hello",
        );
        assert_eq!(&out[..], &hex!("81 85 37 fa 21 3d 7f 9f 4d 51 58"));
    }

    #[test]
    fn rfc_fragmented_unmasked() {
        // RFC 6455 §5.7: "Hel" + "lo" fragments.
        let mut buf = BytesMut::from(&hex!("01 03 48 65 6c 80 02 6c 6f")[..]);
        let mut d = MessageDecoder::new(Role::Client);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from_static(b"Hello")))
        );
    }

    #[test]
    fn apply_mask_offsets() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..37).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut split = data.clone();
        let (a, b) = split.split_at_mut(11);
        apply_mask(a, key, 0);
        apply_mask(b, key, 11);
        assert_eq!(whole, split);
        for (i, (m, d)) in whole.iter().zip(&data).enumerate() {
            assert_eq!(*m, d ^ key[i % 4]);
        }
    }
}
