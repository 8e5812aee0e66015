//! A scripted SPDY/3.1 peer and frame builders, for tests that drive one end of a session
//! frame by frame (after h2's `tests/h2-support`):
//!
//! ```text
//! let mut peer = Peer::new(io);
//! peer.syn_stream(1, &[("streamtype", "data")]).await;
//! peer.send(frames::data(1, vec![9u8; 32 * 1024])).await;
//! peer.send(frames::fin(1)).await;
//! ```
//!
//! The peer speaks as a Go (spdystream) client does: it sends no SETTINGS and no WINDOW_UPDATE
//! unless the test sends them.

use bytes::{Bytes, BytesMut};
use porthole_proto::spdy::frame::{self, Frame};
use porthole_proto::spdy::header_block::{HeaderCompressor, HeaderDecompressor, HeaderList};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Header pairs as the SPDY API takes them.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderList {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Frames a test sends often, so the test reads as the exchange it scripts.
pub mod frames {
    use super::*;

    /// DATA on `stream_id`, without FIN.
    pub fn data(stream_id: u32, payload: impl Into<Bytes>) -> Frame {
        Frame::Data(frame::Data {
            stream_id,
            flags: 0,
            payload: payload.into(),
        })
    }

    /// An empty DATA with FIN: the sender's half-close of `stream_id`.
    pub fn fin(stream_id: u32) -> Frame {
        Frame::Data(frame::Data {
            stream_id,
            flags: frame::FLAG_FIN,
            payload: Bytes::new(),
        })
    }

    /// PING `id`.
    pub fn ping(id: u32) -> Frame {
        Frame::Ping(frame::Ping { id })
    }
}

/// One end of a SPDY session, written and read frame by frame by the test.
pub struct Peer<T> {
    io: T,
    compress: HeaderCompressor,
    decompress: HeaderDecompressor,
    rx: BytesMut,
    last_headers: HeaderList,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Peer<T> {
    /// A peer on `io`; nothing is sent until the test sends it.
    pub fn new(io: T) -> Self {
        Peer {
            io,
            // Level 9, as Go's zlib writer in spdystream.
            compress: HeaderCompressor::new(9),
            decompress: HeaderDecompressor::new(1 << 16),
            rx: BytesMut::new(),
            last_headers: HeaderList::new(),
        }
    }

    /// Writes `f` whole.
    pub async fn send(&mut self, f: Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        self.io.write_all(&b).await.expect("write to the session");
    }

    /// Opens stream `id` with `headers` (compressed in this peer's one zlib context).
    pub async fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) {
        let mut block = BytesMut::new();
        self.compress.compress(headers, &mut block);
        self.send(Frame::SynStream(frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            header_block: block.freeze(),
        }))
        .await;
    }

    /// The next frame from the other end, or `None` once it closed. The header blocks of
    /// SYN_STREAM, SYN_REPLY and HEADERS are inflated as they pass, since they share one zlib
    /// context and none may be skipped; [`Peer::last_headers`] has the latest.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = Frame::decode(&mut self.rx, frame::MAX_PAYLOAD_LEN)
                .expect("the session under test sends valid frames")
            {
                let block = match &f {
                    Frame::SynStream(s) => Some(&s.header_block),
                    Frame::SynReply(r) => Some(&r.header_block),
                    Frame::Headers(h) => Some(&h.header_block),
                    _ => None,
                };
                if let Some(block) = block {
                    self.last_headers = self
                        .decompress
                        .decompress(block)
                        .expect("the session under test sends valid header blocks");
                }
                return Some(f);
            }
            self.rx.reserve(1 << 16);
            if self
                .io
                .read_buf(&mut self.rx)
                .await
                .expect("read from the session")
                == 0
            {
                return None;
            }
        }
    }

    /// The headers of the last SYN_STREAM, SYN_REPLY or HEADERS [`Peer::next_frame`] returned.
    pub fn last_headers(&self) -> &HeaderList {
        &self.last_headers
    }

    /// The value of `name` in [`Peer::last_headers`].
    pub fn last_header(&self, name: &str) -> Option<&str> {
        self.last_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
