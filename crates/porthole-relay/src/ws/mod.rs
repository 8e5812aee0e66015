//! WebSocket drivers over an already-upgraded connection (PROTOCOL.md §2.4, §5).
//!
//! - [`WsStream`]: the `SPDY/3.1+portforward.k8s.io` tunnel as a plain byte stream
//!   (`AsyncRead + AsyncWrite`), so the SPDY connection driver runs over it unchanged.
//! - [`WsReader`] / [`WsWriter`]: message-level halves for the channel protocol, which needs
//!   whole messages (`porthole_proto::ws::channel`).
//!
//! Both sit on `porthole_proto::ws::frame`; this module only adds I/O, masking keys and the
//! automatic answers (pong for ping, Close for Close).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use porthole_proto::ws::channel::ChannelProtocol;
use porthole_proto::ws::frame::{
    encode_close, encode_frame, encode_message, parse_close_payload, FrameDecoder, MessageDecoder,
};
use porthole_proto::ws::{CloseCode, Message, OpCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

pub use porthole_proto::ws::Role;

/// Largest payload [`WsStream`] puts in one message; larger writes are split. gorilla reads
/// messages of any size, and 64 KiB keeps per-message overhead negligible.
pub const MAX_TUNNEL_MESSAGE: usize = 64 << 10;

/// Outbound bytes [`WsStream`] buffers before `poll_write` waits for the socket.
const MAX_BUFFERED_WRITE: usize = 128 << 10;

/// Spare room kept in read buffers so one socket read can take a whole typical message.
const READ_RESERVE: usize = 16 << 10;

/// Masking keys for the client role. RFC 6455 §10.3 wants them unpredictable to
/// intermediaries, not cryptographically secure; a per-connection randomly seeded xorshift
/// generator costs a few instructions per frame.
#[derive(Debug, Clone)]
pub(crate) struct MaskKeys(u64);

impl MaskKeys {
    pub(crate) fn new() -> MaskKeys {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS once per thread and varies per instance.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        // xorshift must not start at zero.
        MaskKeys(h.finish() | 1)
    }

    pub(crate) fn next_key(&mut self) -> [u8; 4] {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 32) as u32).to_ne_bytes()
    }

    fn for_role(&mut self, role: Role) -> Option<[u8; 4]> {
        (role == Role::Client).then(|| self.next_key())
    }
}

/// One socket read appended to `buf`'s spare capacity, from a poll function. Polls tokio's
/// `read_buf` future once: it holds no state beyond its borrows, so dropping it after
/// `Pending` loses nothing (the waker is already registered by the transport).
fn poll_read_into<T: AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    std::pin::pin!(io.read_buf(buf)).poll(cx)
}

/// The error for a WebSocket Close other than 1000: the peer ended the tunnel abnormally.
fn close_error(code: CloseCode, reason: &str) -> io::Error {
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("WebSocket closed by the peer with status {code}{reason}"),
    )
}

/// The SPDY-in-WebSocket tunnel as a byte stream (PROTOCOL.md §2.4).
///
/// Reads concatenate the payloads of binary messages, whatever their boundaries, including
/// empty and fragmented messages; pings are answered with pongs; a Close with status 1000 (or
/// no status) is EOF and is answered with Close 1000; any other close status, a text message or
/// a framing error is an `io::Error` that names it. Each write becomes one binary message
/// (≤ [`MAX_TUNNEL_MESSAGE`] bytes, masked in the client role); `shutdown` sends Close 1000 and
/// then shuts down the transport's write side.
#[derive(Debug)]
pub struct WsStream<T> {
    io: T,
    role: Role,
    decoder: FrameDecoder,
    read_buf: BytesMut,
    /// Payload of the current message not yet handed to the reader.
    pending: Bytes,
    /// Encoded frames not yet written to `io`.
    write_buf: BytesMut,
    keys: MaskKeys,
    /// A Close arrived: reads return EOF.
    close_received: bool,
    /// We queued our Close: no more data frames may follow.
    close_sent: bool,
    /// A fatal read-side failure, repeated on every later read.
    read_failed: Option<(io::ErrorKind, String)>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> WsStream<T> {
    /// Wraps an upgraded connection. `role` is this end: [`Role::Client`] masks what it sends
    /// and requires unmasked frames, [`Role::Server`] the reverse.
    pub fn new(io: T, role: Role) -> WsStream<T> {
        WsStream::with_buffered(io, role, BytesMut::new())
    }

    /// Like [`WsStream::new`] for a connection whose HTTP parser already read bytes past the
    /// 101 header block: they are the first WebSocket bytes.
    pub fn with_buffered(io: T, role: Role, read_ahead: BytesMut) -> WsStream<T> {
        WsStream {
            io,
            role,
            decoder: FrameDecoder::new(role),
            read_buf: read_ahead,
            pending: Bytes::new(),
            write_buf: BytesMut::new(),
            keys: MaskKeys::new(),
            close_received: false,
            close_sent: false,
            read_failed: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Queues a Close frame unless one was queued already.
    fn queue_close(&mut self, code: CloseCode, reason: &str) {
        if !self.close_sent {
            self.close_sent = true;
            let mask = self.keys.for_role(self.role);
            encode_close(&mut self.write_buf, Some((code, reason)), mask);
        }
    }

    /// Writes queued frames until the buffer is empty or the socket would block.
    fn poll_write_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write_buf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write_buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "WebSocket connection accepted no more bytes",
                )));
            }
            self.write_buf.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Sends queued control frames (pong, Close) from the read path. Pending or errors are
    /// left for the write path to see; a pending write registered our waker, so the reader is
    /// woken to try again.
    fn push_control(&mut self, cx: &mut Context<'_>) {
        if !self.write_buf.is_empty() {
            if let Poll::Ready(Ok(())) = self.poll_write_buf(cx) {
                let _ = Pin::new(&mut self.io).poll_flush(cx);
            }
        }
    }

    fn fail_read(
        &mut self,
        cx: &mut Context<'_>,
        kind: io::ErrorKind,
        text: String,
        code: CloseCode,
    ) -> io::Error {
        self.queue_close(code, "");
        self.push_control(cx);
        self.read_failed = Some((kind, text.clone()));
        io::Error::new(kind, text)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some((kind, text)) = &this.read_failed {
                return Poll::Ready(Err(io::Error::new(*kind, text.clone())));
            }
            if this.close_received {
                this.push_control(cx);
                return Poll::Ready(Ok(()));
            }
            let frame = match this.decoder.decode(&mut this.read_buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if this.read_buf.capacity() - this.read_buf.len() < READ_RESERVE / 4 {
                        this.read_buf.reserve(READ_RESERVE);
                    }
                    let n = match poll_read_into(&mut this.io, cx, &mut this.read_buf) {
                        Poll::Pending => {
                            this.push_control(cx);
                            return Poll::Pending;
                        }
                        Poll::Ready(r) => r?,
                    };
                    if n == 0 {
                        let text = "WebSocket connection closed without a Close frame".to_owned();
                        this.read_failed = Some((io::ErrorKind::UnexpectedEof, text.clone()));
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            text,
                        )));
                    }
                    continue;
                }
                Err(e) => {
                    let code = e.close_code();
                    let text = format!("WebSocket protocol error from the peer: {e}");
                    return Poll::Ready(Err(this.fail_read(
                        cx,
                        io::ErrorKind::InvalidData,
                        text,
                        code,
                    )));
                }
            };
            match frame.opcode {
                // The decoder only lets continuation frames follow a binary start (a text
                // start is rejected below before any continuation can arrive).
                OpCode::Binary | OpCode::Continuation => this.pending = frame.payload,
                OpCode::Text => {
                    let text = "invalid message type received: the SPDY tunnel carries only binary WebSocket messages, got a text message".to_owned();
                    return Poll::Ready(Err(this.fail_read(
                        cx,
                        io::ErrorKind::InvalidData,
                        text,
                        CloseCode::UNSUPPORTED_DATA,
                    )));
                }
                OpCode::Ping => {
                    if !this.close_sent {
                        let mask = this.keys.for_role(this.role);
                        encode_frame(
                            &mut this.write_buf,
                            true,
                            OpCode::Pong,
                            mask,
                            &frame.payload,
                        );
                    }
                }
                OpCode::Pong => {}
                OpCode::Close => match parse_close_payload(&frame.payload) {
                    Ok(None) => {
                        this.close_received = true;
                        this.queue_close(CloseCode::NORMAL, "");
                    }
                    Ok(Some(c)) if c.code == CloseCode::NORMAL => {
                        this.close_received = true;
                        this.queue_close(CloseCode::NORMAL, "");
                    }
                    Ok(Some(c)) => {
                        this.close_received = true;
                        let err = close_error(c.code, &c.reason);
                        return Poll::Ready(Err(this.fail_read(
                            cx,
                            err.kind(),
                            err.to_string(),
                            c.code,
                        )));
                    }
                    Err(e) => {
                        let text = format!("WebSocket protocol error from the peer: {e}");
                        return Poll::Ready(Err(this.fail_read(
                            cx,
                            io::ErrorKind::InvalidData,
                            text,
                            e.close_code(),
                        )));
                    }
                },
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the WebSocket tunnel was closed",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_buf.len() >= MAX_BUFFERED_WRITE {
            ready!(this.poll_write_buf(cx))?;
        }
        let n = data.len().min(MAX_TUNNEL_MESSAGE);
        let mask = this.keys.for_role(this.role);
        encode_frame(&mut this.write_buf, true, OpCode::Binary, mask, &data[..n]);
        // Start sending at once; a pending or failed socket write surfaces on the next
        // write or flush, as with any buffered writer.
        let _ = this.poll_write_buf(cx);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_buf(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_close(CloseCode::NORMAL, "");
        ready!(this.poll_write_buf(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Reading half of a message-level WebSocket connection.
#[derive(Debug)]
pub struct WsReader<R> {
    io: R,
    decoder: MessageDecoder,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// Reads messages for the given end of the connection (which decides the masking rule).
    pub fn new(io: R, role: Role) -> WsReader<R> {
        WsReader::with_buffered(io, role, BytesMut::new())
    }

    /// Like [`WsReader::new`], starting with bytes already read past the 101 header block.
    pub fn with_buffered(io: R, role: Role, read_ahead: BytesMut) -> WsReader<R> {
        WsReader {
            io,
            decoder: MessageDecoder::new(role),
            buf: read_ahead,
        }
    }

    /// The next complete message. `Ok(None)` when the connection ended cleanly between
    /// frames without a Close (the caller decides whether that is an error); a framing error
    /// is `InvalidData` naming the violation.
    pub async fn next(&mut self) -> io::Result<Option<Message>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(msg)) => return Ok(Some(msg)),
                Ok(None) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("WebSocket protocol error from the peer: {e}"),
                    ))
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_RESERVE / 4 {
                self.buf.reserve(READ_RESERVE);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "WebSocket connection closed in the middle of a frame",
                ));
            }
        }
    }
}

/// Writing half of a message-level WebSocket connection; masks in the client role.
#[derive(Debug)]
pub struct WsWriter<W> {
    io: W,
    role: Role,
    keys: MaskKeys,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// Writes messages for the given end of the connection.
    pub fn new(io: W, role: Role) -> WsWriter<W> {
        WsWriter {
            io,
            role,
            keys: MaskKeys::new(),
            buf: BytesMut::new(),
        }
    }

    async fn write_out(&mut self) -> io::Result<()> {
        self.io.write_all(&self.buf).await?;
        self.buf.clear();
        self.io.flush().await
    }

    /// Sends one message (unfragmented) and flushes.
    pub async fn send(&mut self, msg: &Message) -> io::Result<()> {
        let mask = self.keys.for_role(self.role);
        encode_message(&mut self.buf, msg, mask);
        self.write_out().await
    }

    /// Sends `data` on `channel` in the framing of `proto` (binary or base64 text) and flushes.
    pub async fn send_channel(
        &mut self,
        proto: ChannelProtocol,
        channel: u8,
        data: &[u8],
    ) -> io::Result<()> {
        let mask = self.keys.for_role(self.role);
        proto.encode_frame(&mut self.buf, channel, data, mask);
        self.write_out().await
    }

    /// Sends the v5 close signal for `channel` (`0xFF, channel`) and flushes.
    pub async fn send_close_signal(&mut self, channel: u8) -> io::Result<()> {
        let mask = self.keys.for_role(self.role);
        ChannelProtocol::encode_close_signal(&mut self.buf, channel, mask);
        self.write_out().await
    }

    /// Sends a Close frame, flushes and shuts down the transport's write side.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> io::Result<()> {
        let mask = self.keys.for_role(self.role);
        encode_close(&mut self.buf, Some((code, reason)), mask);
        self.write_out().await?;
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keys_vary() {
        let mut k = MaskKeys::new();
        let a = k.next_key();
        let b = k.next_key();
        assert_ne!(a, b);
        assert_ne!(MaskKeys::new().0, 0);
    }
}
