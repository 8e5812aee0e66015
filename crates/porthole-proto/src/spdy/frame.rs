//! SPDY/3.1 frames as spoken by moby/spdystream (PROTOCOL.md §3.1–§3.2, §3.10).
//!
//! Header blocks are carried here *compressed* (`header_block: Bytes`); compression lives in
//! [`super::header_block`] because it needs the connection's zlib contexts. DATA payloads are
//! `Bytes` split from the input buffer, so decoding a DATA frame copies nothing and allocates
//! nothing per frame.
//!
//! Structural checks that Go treats as fatal (PROTOCOL.md §3.10) are [`FrameError`]s here;
//! checks that need session state (stream-id ordering, PING parity) live in the session.
//!
//! Why one file past 800 lines: it is the wire layout of every frame type, one struct each with
//! its encode and decode side by side and the `Frame` enum over them, read as one table against
//! PROTOCOL.md §3.1–§3.2. Split per frame (h2's way), each file would be a few dozen lines and
//! the table would be gone.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Stream identifier (31 bits; the reserved top bit is masked off on read).
pub type StreamId = u32;

/// The version written into every control frame (readers accept any version, §3.1).
pub const VERSION: u16 = 3;
/// Length of every frame header.
pub const HEAD_LEN: usize = 8;
/// Largest stream id that can be allocated (§3.5).
pub const MAX_STREAM_ID: StreamId = 0x7fff_ffff;
/// Largest payload a 24-bit length field can express (§3.7).
pub const MAX_PAYLOAD_LEN: usize = 0xff_ffff;

/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM (never sent by Kubernetes).
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Control frame type codes (§3.2).
pub mod kind {
    /// SYN_STREAM
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS
    pub const SETTINGS: u16 = 4;
    /// PING
    pub const PING: u16 = 6;
    /// GOAWAY
    pub const GOAWAY: u16 = 7;
    /// HEADERS
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE
    pub const WINDOW_UPDATE: u16 = 9;
}

macro_rules! code_newtype {
    ($(#[$m:meta])* $name:ident { $($(#[$cm:meta])* $c:ident = $v:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u32);
        impl $name {
            $($(#[$cm])* pub const $c: $name = $name($v);)*
            /// The spec name of a known code.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($v => Some(stringify!($c)),)* _ => None }
            }
        }
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() { Some(n) => f.write_str(n), None => write!(f, "{}({})", stringify!($name), self.0) }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self, f)
            }
        }
    };
}

code_newtype!(
    /// RST_STREAM status code (§3.2). Unknown non-zero values survive decoding.
    RstStatus {
        /// 1
        PROTOCOL_ERROR = 1,
        /// 2
        INVALID_STREAM = 2,
        /// 3
        REFUSED_STREAM = 3,
        /// 4
        UNSUPPORTED_VERSION = 4,
        /// 5: what Kubernetes sends for every reset/reject.
        CANCEL = 5,
        /// 6
        INTERNAL_ERROR = 6,
        /// 7
        FLOW_CONTROL_ERROR = 7,
        /// 8
        STREAM_IN_USE = 8,
        /// 9
        STREAM_ALREADY_CLOSED = 9,
        /// 10
        INVALID_CREDENTIALS = 10,
        /// 11
        FRAME_TOO_LARGE = 11,
    }
);

code_newtype!(
    /// GOAWAY status code (§3.2).
    GoAwayStatus {
        /// 0
        OK = 0,
        /// 1
        PROTOCOL_ERROR = 1,
        /// 2
        INTERNAL_ERROR = 2,
    }
);

code_newtype!(
    /// SETTINGS identifier (24 bits on the wire, §3.2).
    SettingId {
        /// 1
        UPLOAD_BANDWIDTH = 1,
        /// 2
        DOWNLOAD_BANDWIDTH = 2,
        /// 3
        ROUND_TRIP_TIME = 3,
        /// 4
        MAX_CONCURRENT_STREAMS = 4,
        /// 5
        CURRENT_CWND = 5,
        /// 6
        DOWNLOAD_RETRANS_RATE = 6,
        /// 7: the only one porthole acts on (negotiated flow control only).
        INITIAL_WINDOW_SIZE = 7,
        /// 8
        CLIENT_CERTIFICATE_VECTOR_SIZE = 8,
    }
);

/// Which frame a [`FrameError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// DATA
    Data,
    /// SYN_STREAM
    SynStream,
    /// SYN_REPLY
    SynReply,
    /// RST_STREAM
    RstStream,
    /// SETTINGS
    Settings,
    /// PING
    Ping,
    /// GOAWAY
    GoAway,
    /// HEADERS
    Headers,
    /// WINDOW_UPDATE
    WindowUpdate,
}

impl FrameKind {
    fn from_control(kind: u16) -> Option<Self> {
        Some(match kind {
            kind::SYN_STREAM => FrameKind::SynStream,
            kind::SYN_REPLY => FrameKind::SynReply,
            kind::RST_STREAM => FrameKind::RstStream,
            kind::SETTINGS => FrameKind::Settings,
            kind::PING => FrameKind::Ping,
            kind::GOAWAY => FrameKind::GoAway,
            kind::HEADERS => FrameKind::Headers,
            kind::WINDOW_UPDATE => FrameKind::WindowUpdate,
            _ => return None,
        })
    }
}

/// A frame the peer sent is malformed. Every variant is fatal for the connection, as it is
/// for a Go peer (PROTOCOL.md §3.10).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Control frame type that spdystream does not know (NOOP, CREDENTIAL, 11+).
    #[error("invalid control frame type {kind}")]
    UnknownControlType {
        /// The type code.
        kind: u16,
    },
    /// The length field does not fit the frame type.
    #[error("{kind:?} frame with invalid length {len}")]
    BadLength {
        /// Frame type.
        kind: FrameKind,
        /// Length field.
        len: usize,
    },
    /// The frame is larger than this endpoint accepts (checked before buffering).
    #[error("{kind:?} frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Frame type.
        kind: FrameKind,
        /// Length field.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// Stream id 0 where a stream is required.
    #[error("{kind:?} frame on stream 0")]
    ZeroStreamId {
        /// Frame type.
        kind: FrameKind,
    },
    /// RST_STREAM with status 0.
    #[error("RST_STREAM with status 0")]
    ZeroRstStatus,
    /// PING with id 0.
    #[error("PING with id 0")]
    ZeroPingId,
    /// Flags that must be 0 were not.
    #[error("{kind:?} frame with invalid flags {flags:#04x}")]
    BadFlags {
        /// Frame type.
        kind: FrameKind,
        /// Flags byte.
        flags: u8,
    },
}

/// The 8-byte frame header (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// C = 1.
    Control {
        /// Version (not checked on read).
        version: u16,
        /// Type code.
        kind: u16,
        /// Flags.
        flags: u8,
        /// Payload length.
        len: usize,
    },
    /// C = 0.
    Data {
        /// Stream id (may be 0 here; [`Head::check`] rejects it).
        stream_id: StreamId,
        /// Flags.
        flags: u8,
        /// Payload length.
        len: usize,
    },
}

impl Head {
    /// Parses the first 8 bytes of `src`, which must hold at least [`HEAD_LEN`] bytes.
    pub fn parse(src: &[u8]) -> Head {
        let w0 = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let flags = src[4];
        let len = (usize::from(src[5]) << 16) | (usize::from(src[6]) << 8) | usize::from(src[7]);
        if w0 & 0x8000_0000 != 0 {
            Head::Control {
                version: ((w0 >> 16) & 0x7fff) as u16,
                kind: (w0 & 0xffff) as u16,
                flags,
                len,
            }
        } else {
            Head::Data {
                stream_id: w0,
                flags,
                len,
            }
        }
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        match *self {
            Head::Control { len, .. } | Head::Data { len, .. } => len,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks everything that can be checked from the header alone: known control type,
    /// fixed lengths, flags, and `len` against the limit for control frames. Done before any
    /// payload is buffered.
    pub fn check(&self, max_control_len: usize) -> Result<(), FrameError> {
        match *self {
            Head::Data { stream_id, .. } => {
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId {
                        kind: FrameKind::Data,
                    });
                }
                Ok(())
            }
            Head::Control {
                kind, flags, len, ..
            } => {
                let k =
                    FrameKind::from_control(kind).ok_or(FrameError::UnknownControlType { kind })?;
                let bad_len = || FrameError::BadLength { kind: k, len };
                match k {
                    FrameKind::SynStream if len < 10 => return Err(bad_len()),
                    FrameKind::SynReply | FrameKind::Headers if len < 4 => return Err(bad_len()),
                    FrameKind::RstStream | FrameKind::GoAway | FrameKind::WindowUpdate
                        if len != 8 =>
                    {
                        return Err(bad_len())
                    }
                    FrameKind::Ping if len != 4 => return Err(bad_len()),
                    FrameKind::Settings if len < 4 || !(len - 4).is_multiple_of(8) => {
                        return Err(bad_len())
                    }
                    _ => {}
                }
                if matches!(
                    k,
                    FrameKind::Ping
                        | FrameKind::GoAway
                        | FrameKind::WindowUpdate
                        | FrameKind::RstStream
                ) && flags != 0
                {
                    return Err(FrameError::BadFlags { kind: k, flags });
                }
                if len > max_control_len {
                    return Err(FrameError::TooLarge {
                        kind: k,
                        len,
                        limit: max_control_len,
                    });
                }
                Ok(())
            }
        }
    }

    /// Writes a control frame header.
    pub fn encode_control(kind: u16, flags: u8, len: usize, dst: &mut impl BufMut) {
        debug_assert!(len <= MAX_PAYLOAD_LEN);
        dst.put_u16(0x8000 | VERSION);
        dst.put_u16(kind);
        dst.put_u32((u32::from(flags) << 24) | (len as u32 & 0xff_ffff));
    }

    /// Writes a DATA frame header.
    pub fn encode_data(stream_id: StreamId, flags: u8, len: usize, dst: &mut impl BufMut) {
        debug_assert!(len <= MAX_PAYLOAD_LEN);
        dst.put_u32(stream_id & MAX_STREAM_ID);
        dst.put_u32((u32::from(flags) << 24) | (len as u32 & 0xff_ffff));
    }
}

fn read_id(b: &[u8]) -> StreamId {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & MAX_STREAM_ID
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SYN_STREAM (type 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynStream {
    /// New stream id.
    pub stream_id: StreamId,
    /// Associated-to stream id (0 in Kubernetes).
    pub associated_id: StreamId,
    /// Priority, 0..=7 (0 in Kubernetes).
    pub priority: u8,
    /// Slot (0).
    pub slot: u8,
    /// FLAG_FIN / FLAG_UNIDIRECTIONAL.
    pub flags: u8,
    /// Compressed header block.
    pub header_block: Bytes,
}

impl SynStream {
    /// Decodes the payload (after the 8-byte header).
    pub fn decode(flags: u8, payload: Bytes) -> Result<Self, FrameError> {
        if payload.len() < 10 {
            return Err(FrameError::BadLength {
                kind: FrameKind::SynStream,
                len: payload.len(),
            });
        }
        let stream_id = read_id(&payload[0..4]);
        if stream_id == 0 {
            return Err(FrameError::ZeroStreamId {
                kind: FrameKind::SynStream,
            });
        }
        Ok(SynStream {
            stream_id,
            associated_id: read_id(&payload[4..8]),
            priority: payload[8] >> 5,
            slot: payload[9],
            flags,
            header_block: payload.slice(10..),
        })
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_control(
            kind::SYN_STREAM,
            self.flags,
            10 + self.header_block.len(),
            dst,
        );
        self.encode_fields(dst);
        dst.put_slice(&self.header_block);
    }

    /// Writes the 10 bytes between the header and the header block.
    pub fn encode_fields(&self, dst: &mut impl BufMut) {
        dst.put_u32(self.stream_id & MAX_STREAM_ID);
        dst.put_u32(self.associated_id & MAX_STREAM_ID);
        dst.put_u8(self.priority << 5);
        dst.put_u8(self.slot);
    }
}

/// SYN_REPLY (type 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynReply {
    /// Stream id being accepted.
    pub stream_id: StreamId,
    /// FLAG_FIN.
    pub flags: u8,
    /// Compressed header block.
    pub header_block: Bytes,
}

impl SynReply {
    /// Decodes the payload.
    pub fn decode(flags: u8, payload: Bytes) -> Result<Self, FrameError> {
        let (stream_id, header_block) = decode_id_block(FrameKind::SynReply, payload)?;
        Ok(SynReply {
            stream_id,
            flags,
            header_block,
        })
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_control(
            kind::SYN_REPLY,
            self.flags,
            4 + self.header_block.len(),
            dst,
        );
        dst.put_u32(self.stream_id & MAX_STREAM_ID);
        dst.put_slice(&self.header_block);
    }
}

/// HEADERS (type 8). Accepted and decompressed (to keep the zlib context in step), never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// Stream id.
    pub stream_id: StreamId,
    /// FLAG_FIN.
    pub flags: u8,
    /// Compressed header block.
    pub header_block: Bytes,
}

impl Headers {
    /// Decodes the payload.
    pub fn decode(flags: u8, payload: Bytes) -> Result<Self, FrameError> {
        let (stream_id, header_block) = decode_id_block(FrameKind::Headers, payload)?;
        Ok(Headers {
            stream_id,
            flags,
            header_block,
        })
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_control(kind::HEADERS, self.flags, 4 + self.header_block.len(), dst);
        dst.put_u32(self.stream_id & MAX_STREAM_ID);
        dst.put_slice(&self.header_block);
    }
}

fn decode_id_block(kind: FrameKind, payload: Bytes) -> Result<(StreamId, Bytes), FrameError> {
    if payload.len() < 4 {
        return Err(FrameError::BadLength {
            kind,
            len: payload.len(),
        });
    }
    let id = read_id(&payload[0..4]);
    if id == 0 {
        return Err(FrameError::ZeroStreamId { kind });
    }
    Ok((id, payload.slice(4..)))
}

/// RST_STREAM (type 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RstStream {
    /// Stream id.
    pub stream_id: StreamId,
    /// Status (non-zero).
    pub status: RstStatus,
}

impl RstStream {
    /// Decodes the payload.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        if payload.len() != 8 {
            return Err(FrameError::BadLength {
                kind: FrameKind::RstStream,
                len: payload.len(),
            });
        }
        let stream_id = read_id(&payload[0..4]);
        if stream_id == 0 {
            return Err(FrameError::ZeroStreamId {
                kind: FrameKind::RstStream,
            });
        }
        let status = read_u32(&payload[4..8]);
        if status == 0 {
            return Err(FrameError::ZeroRstStatus);
        }
        Ok(RstStream {
            stream_id,
            status: RstStatus(status),
        })
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_control(kind::RST_STREAM, 0, 8, dst);
        dst.put_u32(self.stream_id & MAX_STREAM_ID);
        dst.put_u32(self.status.0);
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// PERSIST_VALUE 0x1 / PERSISTED 0x2.
    pub flags: u8,
    /// 24-bit id.
    pub id: SettingId,
    /// Value.
    pub value: u32,
}

/// SETTINGS (type 4). spdystream ignores it; porthole uses INITIAL_WINDOW_SIZE only when flow
/// control was negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// FLAG_SETTINGS_CLEAR.
    pub flags: u8,
    /// Entries in wire order.
    pub entries: Vec<Setting>,
}

impl Settings {
    /// Decodes the payload; the length must be exactly 4 + 8·count.
    pub fn decode(flags: u8, payload: &[u8]) -> Result<Self, FrameError> {
        let bad = || FrameError::BadLength {
            kind: FrameKind::Settings,
            len: payload.len(),
        };
        if payload.len() < 4 {
            return Err(bad());
        }
        let count = read_u32(&payload[0..4]) as usize;
        if (payload.len() - 4) / 8 != count || !(payload.len() - 4).is_multiple_of(8) {
            return Err(bad());
        }
        let entries = payload[4..]
            .chunks_exact(8)
            .map(|e| Setting {
                flags: e[0],
                id: SettingId(read_u32(&e[0..4]) & 0xff_ffff),
                value: read_u32(&e[4..8]),
            })
            .collect();
        Ok(Settings { flags, entries })
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_control(kind::SETTINGS, self.flags, 4 + 8 * self.entries.len(), dst);
        dst.put_u32(self.entries.len() as u32);
        for e in &self.entries {
            dst.put_u32((u32::from(e.flags) << 24) | (e.id.0 & 0xff_ffff));
            dst.put_u32(e.value);
        }
    }
}

/// PING (type 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// Non-zero id; odd from clients, even from servers.
    pub id: u32,
}

impl Ping {
    /// Decodes the payload.
    pub fn decode(flags: u8, payload: &[u8]) -> Result<Self, FrameError> {
        if payload.len() != 4 {
            return Err(FrameError::BadLength {
                kind: FrameKind::Ping,
                len: payload.len(),
            });
        }
        if flags != 0 {
            return Err(FrameError::BadFlags {
                kind: FrameKind::Ping,
                flags,
            });
        }
        let id = read_u32(payload);
        if id == 0 {
            return Err(FrameError::ZeroPingId);
        }
        Ok(Ping { id })
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_control(kind::PING, 0, 4, dst);
        dst.put_u32(self.id);
    }
}

/// GOAWAY (type 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAway {
    /// Last stream id the sender accepted from its peer.
    pub last_good_stream_id: StreamId,
    /// Status.
    pub status: GoAwayStatus,
}

impl GoAway {
    /// Decodes the payload.
    pub fn decode(flags: u8, payload: &[u8]) -> Result<Self, FrameError> {
        if payload.len() != 8 {
            return Err(FrameError::BadLength {
                kind: FrameKind::GoAway,
                len: payload.len(),
            });
        }
        if flags != 0 {
            return Err(FrameError::BadFlags {
                kind: FrameKind::GoAway,
                flags,
            });
        }
        Ok(GoAway {
            last_good_stream_id: read_id(&payload[0..4]),
            status: GoAwayStatus(read_u32(&payload[4..8])),
        })
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_control(kind::GOAWAY, 0, 8, dst);
        dst.put_u32(self.last_good_stream_id & MAX_STREAM_ID);
        dst.put_u32(self.status.0);
    }
}

/// WINDOW_UPDATE (type 9). Stream 0 updates the session window (SPDY/3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUpdate {
    /// Stream id, 0 for the session.
    pub stream_id: StreamId,
    /// Delta (31 bits).
    pub delta: u32,
}

impl WindowUpdate {
    /// Decodes the payload.
    pub fn decode(flags: u8, payload: &[u8]) -> Result<Self, FrameError> {
        if payload.len() != 8 {
            return Err(FrameError::BadLength {
                kind: FrameKind::WindowUpdate,
                len: payload.len(),
            });
        }
        if flags != 0 {
            return Err(FrameError::BadFlags {
                kind: FrameKind::WindowUpdate,
                flags,
            });
        }
        Ok(WindowUpdate {
            stream_id: read_id(&payload[0..4]),
            delta: read_u32(&payload[4..8]) & 0x7fff_ffff,
        })
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_control(kind::WINDOW_UPDATE, 0, 8, dst);
        dst.put_u32(self.stream_id & MAX_STREAM_ID);
        dst.put_u32(self.delta & 0x7fff_ffff);
    }
}

/// DATA frame. The payload is a slice of the input buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// Stream id (non-zero).
    pub stream_id: StreamId,
    /// FLAG_FIN.
    pub flags: u8,
    /// Payload.
    pub payload: Bytes,
}

impl Data {
    /// Whether FLAG_FIN is set.
    pub fn is_fin(&self) -> bool {
        self.flags & FLAG_FIN != 0
    }

    /// Writes the whole frame. The caller splits payloads above [`MAX_PAYLOAD_LEN`].
    pub fn encode(&self, dst: &mut impl BufMut) {
        Head::encode_data(self.stream_id, self.flags, self.payload.len(), dst);
        dst.put_slice(&self.payload);
    }
}

/// Any frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA
    Data(Data),
    /// SYN_STREAM
    SynStream(SynStream),
    /// SYN_REPLY
    SynReply(SynReply),
    /// RST_STREAM
    RstStream(RstStream),
    /// SETTINGS
    Settings(Settings),
    /// PING
    Ping(Ping),
    /// GOAWAY
    GoAway(GoAway),
    /// HEADERS
    Headers(Headers),
    /// WINDOW_UPDATE
    WindowUpdate(WindowUpdate),
}

impl Frame {
    /// Decodes one whole frame from the front of `src`.
    ///
    /// Returns `Ok(None)` (consuming nothing) when `src` does not yet hold the whole frame; the
    /// header is validated, and every length checked against `max_payload_len`, before waiting
    /// for (and so buffering) the payload.
    pub fn decode(src: &mut BytesMut, max_payload_len: usize) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEAD_LEN {
            return Ok(None);
        }
        let head = Head::parse(&src[..HEAD_LEN]);
        head.check(max_payload_len)?;
        let len = head.len();
        if let Head::Data { len, .. } = head {
            if len > max_payload_len {
                return Err(FrameError::TooLarge {
                    kind: FrameKind::Data,
                    len,
                    limit: max_payload_len,
                });
            }
        }
        if src.len() < HEAD_LEN + len {
            src.reserve(HEAD_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEAD_LEN);
        let payload = src.split_to(len).freeze();
        Frame::decode_payload(head, payload).map(Some)
    }

    /// Decodes a payload whose header has already been parsed and checked.
    pub fn decode_payload(head: Head, payload: Bytes) -> Result<Frame, FrameError> {
        match head {
            Head::Data {
                stream_id, flags, ..
            } => {
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId {
                        kind: FrameKind::Data,
                    });
                }
                Ok(Frame::Data(Data {
                    stream_id,
                    flags,
                    payload,
                }))
            }
            Head::Control { kind, flags, .. } => Ok(match kind {
                kind::SYN_STREAM => Frame::SynStream(SynStream::decode(flags, payload)?),
                kind::SYN_REPLY => Frame::SynReply(SynReply::decode(flags, payload)?),
                kind::RST_STREAM => Frame::RstStream(RstStream::decode(&payload)?),
                kind::SETTINGS => Frame::Settings(Settings::decode(flags, &payload)?),
                kind::PING => Frame::Ping(Ping::decode(flags, &payload)?),
                kind::GOAWAY => Frame::GoAway(GoAway::decode(flags, &payload)?),
                kind::HEADERS => Frame::Headers(Headers::decode(flags, payload)?),
                kind::WINDOW_UPDATE => Frame::WindowUpdate(WindowUpdate::decode(flags, &payload)?),
                kind => return Err(FrameError::UnknownControlType { kind }),
            }),
        }
    }

    /// Writes the whole frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Frame::Data(f) => f.encode(dst),
            Frame::SynStream(f) => f.encode(dst),
            Frame::SynReply(f) => f.encode(dst),
            Frame::RstStream(f) => f.encode(dst),
            Frame::Settings(f) => f.encode(dst),
            Frame::Ping(f) => f.encode(dst),
            Frame::GoAway(f) => f.encode(dst),
            Frame::Headers(f) => f.encode(dst),
            Frame::WindowUpdate(f) => f.encode(dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    fn decode_all(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut b = BytesMut::from(bytes);
        Frame::decode(&mut b, MAX_PAYLOAD_LEN)
    }

    #[test]
    fn rst_stream_cancel() {
        let f = decode_all(&hex!("8003 0003 00 000008 00000003 00000005"))
            .unwrap()
            .unwrap();
        assert_eq!(
            f,
            Frame::RstStream(RstStream {
                stream_id: 3,
                status: RstStatus::CANCEL
            })
        );
        let mut out = BytesMut::new();
        f.encode(&mut out);
        assert_eq!(&out[..], &hex!("8003 0003 00 000008 00000003 00000005"));
    }

    #[test]
    fn fatal_inputs() {
        // Unknown type (NOOP).
        assert!(matches!(
            decode_all(&hex!("8003 0005 00 000000")),
            Err(FrameError::UnknownControlType { kind: 5 })
        ));
        // RST status 0, stream 0.
        assert_eq!(
            decode_all(&hex!("8003 0003 00 000008 00000001 00000000")),
            Err(FrameError::ZeroRstStatus)
        );
        assert!(decode_all(&hex!("8003 0003 00 000008 00000000 00000005")).is_err());
        // PING id 0, flags.
        assert_eq!(
            decode_all(&hex!("8003 0006 00 000004 00000000")),
            Err(FrameError::ZeroPingId)
        );
        assert!(decode_all(&hex!("8003 0006 01 000004 00000001")).is_err());
        // GOAWAY wrong length: rejected from the header alone.
        assert!(decode_all(&hex!("8003 0007 00 000004")).is_err());
        // DATA on stream 0.
        assert!(decode_all(&hex!("00000000 00 000000")).is_err());
    }

    #[test]
    fn short_input_is_none_and_limit_is_checked_first() {
        assert_eq!(decode_all(&hex!("8003 0006 00")), Ok(None));
        assert_eq!(decode_all(&hex!("8003 0006 00 000004 0000")), Ok(None));
        let mut b = BytesMut::from(&hex!("00000001 00 ffffff")[..]);
        assert!(matches!(
            Frame::decode(&mut b, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn version_not_checked() {
        let f = decode_all(&hex!("8002 0006 00 000004 00000007"))
            .unwrap()
            .unwrap();
        assert_eq!(f, Frame::Ping(Ping { id: 7 }));
    }
}
