//! SPDY/3 header blocks (PROTOCOL.md §3.3) and their zlib compression with the SPDY/3
//! dictionary (§3.4).
//!
//! One [`HeaderCompressor`] and one [`HeaderDecompressor`] exist per connection (one context per
//! direction for the connection's whole life); every block is flushed with Z_SYNC_FLUSH. The
//! decompressor consumes exactly the frame's compressed bytes and caps its output, so a zlib
//! bomb is a clean [`HeaderError::TooLarge`] with at most `max_len` bytes allocated.

use bytes::{BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY/3 header-compression dictionary (1423 bytes, Adler-32 0xE3C6A7C2).
pub static DICTIONARY: &[u8; 1423] = include_bytes!("../spdy3_dictionary.bin");

/// Adler-32 of [`DICTIONARY`] (the DICTID in the zlib header).
pub const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

/// Default cap on the inflated size of one header block.
pub const DEFAULT_MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The zlib level that reproduces the stock-zlib vectors (PROTOCOL.md §3.11).
pub const DEFAULT_LEVEL: u32 = 9;

/// The level sessions compress with: 0, stored blocks written without a zlib context (see
/// [`HeaderCompressor`]). Any level decodes the same. A deflate context at any level holds
/// ~310 KiB (zlib-rs: window, hash chains, pending buffer; measured by RSS over 1,000
/// contexts), and every SPDY session keeps one for its whole life, for header blocks of a few
/// dozen bytes: at 1,000 sessions that was ~310 MB of a node's memory (bench/sessions.sh).
/// Level 9's lazy match search was also ~6% of the client's CPU per new forwarded connection.
pub const SESSION_LEVEL: u32 = 0;

/// The zlib header of a stream at level 0 with the SPDY dictionary: CMF 0x78 (deflate, 32 KiB
/// window), FLG 0x3f (FLEVEL 0, FDICT, FCHECK 31: 0x7820 is already a multiple of 31 and stock
/// zlib then adds 31 rather than 0), then the dictionary's Adler-32. Stock zlib at level 0
/// starts its stream with the same six bytes.
const STORED_STREAM_HEADER: [u8; 6] = {
    let id = DICTIONARY_ADLER32.to_be_bytes();
    [0x78, 0x3f, id[0], id[1], id[2], id[3]]
};

/// The empty stored block that ends every Z_SYNC_FLUSH (§3.4).
const SYNC_FLUSH_MARKER: [u8; 5] = [0x00, 0x00, 0x00, 0xff, 0xff];

/// A decoded header list, in wire order. Names are lower case; a value holding several values
/// keeps them joined by NUL, as on the wire.
pub type HeaderList = Vec<(String, String)>;

/// Names that make a SYN_STREAM fatal for spdystream (§3.3).
const FORBIDDEN_SYN_STREAM: &[&str] = &[
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];
/// Names that make a SYN_REPLY fatal for spdystream (§3.3).
const FORBIDDEN_SYN_REPLY: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

/// A header block the peer sent is unusable. Fatal for the connection (§3.10).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// zlib rejected the block (corrupt data, a new zlib stream, wrong dictionary).
    #[error("corrupt compressed header block: {0}")]
    Corrupt(String),
    /// Bytes were left over after the compressed stream ended.
    #[error("compressed payload size was incorrect")]
    TrailingBytes,
    /// The inflated block is larger than the configured cap.
    #[error("header block exceeds {limit} bytes when inflated")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// A count or length points past the end of the block.
    #[error("truncated header block")]
    Truncated,
    /// Bytes after the last pair.
    #[error("header block has trailing bytes")]
    Trailing,
    /// A name with an upper-case letter.
    #[error("header was not lowercased")]
    NotLowercase,
    /// An empty name.
    #[error("empty header name")]
    EmptyName,
    /// `connection`, `host`, … in a SYN_STREAM/SYN_REPLY.
    #[error("frame contained invalid header {0:?}")]
    Forbidden(String),
}

/// Serialises a header list into an uncompressed block (names lower-cased).
pub fn encode_block<N: AsRef<str>, V: AsRef<str>>(headers: &[(N, V)], dst: &mut Vec<u8>) {
    dst.put_u32(headers.len() as u32);
    for (n, v) in headers {
        let n = n.as_ref();
        let v = v.as_ref();
        dst.put_u32(n.len() as u32);
        dst.extend(n.bytes().map(|b| b.to_ascii_lowercase()));
        dst.put_u32(v.len() as u32);
        dst.put_slice(v.as_bytes());
    }
}

/// Parses an uncompressed block. Upper-case names are rejected; non-UTF-8 bytes are replaced
/// (Go accepts any bytes, and porthole only reads ASCII headers).
pub fn parse_block(mut raw: &[u8]) -> Result<HeaderList, HeaderError> {
    fn take_u32(raw: &mut &[u8]) -> Result<usize, HeaderError> {
        if raw.len() < 4 {
            return Err(HeaderError::Truncated);
        }
        let v = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        *raw = &raw[4..];
        Ok(v)
    }
    fn take_bytes<'a>(raw: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if raw.len() < n {
            return Err(HeaderError::Truncated);
        }
        let (a, b) = raw.split_at(n);
        *raw = b;
        Ok(a)
    }
    let count = take_u32(&mut raw)?;
    // Each pair takes at least 8 bytes, which bounds the allocation by the block's size.
    if count > raw.len() / 8 {
        return Err(HeaderError::Truncated);
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let nl = take_u32(&mut raw)?;
        let name = take_bytes(&mut raw, nl)?;
        if name.is_empty() {
            return Err(HeaderError::EmptyName);
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err(HeaderError::NotLowercase);
        }
        let vl = take_u32(&mut raw)?;
        let value = take_bytes(&mut raw, vl)?;
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    if !raw.is_empty() {
        return Err(HeaderError::Trailing);
    }
    Ok(out)
}

/// Rejects the names spdystream treats as fatal in a SYN_STREAM (`reply == false`) or a
/// SYN_REPLY (`reply == true`).
pub fn check_forbidden(headers: &HeaderList, reply: bool) -> Result<(), HeaderError> {
    let list = if reply {
        FORBIDDEN_SYN_REPLY
    } else {
        FORBIDDEN_SYN_STREAM
    };
    match headers.iter().find(|(n, _)| list.contains(&n.as_str())) {
        Some((n, _)) => Err(HeaderError::Forbidden(n.clone())),
        None => Ok(()),
    }
}

/// The sending side's header encoder: one per connection, for its whole life (§3.4).
///
/// At level 0 it writes what stock zlib writes at level 0 with the dictionary set and
/// Z_SYNC_FLUSH, without a zlib context: the zlib header with FDICT once, then per block the
/// raw bytes as non-final stored DEFLATE blocks and the empty stored block of the sync flush.
/// Every inflater reads that (stored blocks never refer back to the dictionary or the window),
/// and it costs no memory beyond one flag, where a deflate context costs ~310 KiB per session
/// (see [`SESSION_LEVEL`]). Levels 1–9 use zlib.
pub struct HeaderCompressor {
    mode: CompressorMode,
    raw: Vec<u8>,
}

enum CompressorMode {
    /// Level 0: stored blocks; `started` once the zlib header is out.
    Stored { started: bool },
    /// Levels 1–9: a zlib deflate context with the dictionary set.
    Deflate(Box<Compress>),
}

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            CompressorMode::Stored { started } => f
                .debug_struct("HeaderCompressor")
                .field("stored", &true)
                .field("started", started)
                .finish(),
            CompressorMode::Deflate(z) => f
                .debug_struct("HeaderCompressor")
                .field("total_out", &z.total_out())
                .finish(),
        }
    }
}

impl HeaderCompressor {
    /// A fresh context at `level` (0: stored blocks without a zlib context; 1–9: zlib with the
    /// dictionary set).
    pub fn new(level: u32) -> Self {
        let mode = if level == 0 {
            CompressorMode::Stored { started: false }
        } else {
            let mut z = Compress::new(Compression::new(level.min(9)), true);
            z.set_dictionary(DICTIONARY)
                .expect("a fresh deflate stream always accepts a dictionary");
            CompressorMode::Deflate(Box::new(z))
        };
        HeaderCompressor {
            mode,
            raw: Vec::with_capacity(256),
        }
    }

    /// Compresses `headers` (names lower-cased) as one sync-flushed block appended to `dst`.
    pub fn compress<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        headers: &[(N, V)],
        dst: &mut BytesMut,
    ) {
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        encode_block(headers, &mut raw);
        self.compress_raw(&raw, dst);
        self.raw = raw;
    }

    /// Compresses an already-serialised block, appending to `dst`.
    pub fn compress_raw(&mut self, raw: &[u8], dst: &mut BytesMut) {
        match &mut self.mode {
            CompressorMode::Stored { started } => {
                if !*started {
                    dst.extend_from_slice(&STORED_STREAM_HEADER);
                    *started = true;
                }
                store_blocks(raw, dst);
            }
            CompressorMode::Deflate(z) => deflate_sync(z, raw, dst),
        }
    }
}

/// `raw` as non-final stored DEFLATE blocks (at most 65,535 bytes each) and the sync flush's
/// empty stored block. The stream is byte-aligned before and after each block, as it is after
/// every sync flush.
fn store_blocks(raw: &[u8], dst: &mut BytesMut) {
    dst.reserve(raw.len() + 5 * (raw.len() / 0xffff + 2));
    for chunk in raw.chunks(0xffff) {
        let len = u16::try_from(chunk.len()).expect("chunks of at most 0xffff bytes");
        dst.put_u8(0); // BFINAL 0, BTYPE 00 (stored), then padding to the byte boundary
        dst.put_u16_le(len);
        dst.put_u16_le(!len);
        dst.extend_from_slice(chunk);
    }
    dst.extend_from_slice(&SYNC_FLUSH_MARKER);
}

/// One zlib deflate of `raw` with Z_SYNC_FLUSH, appended to `dst`.
fn deflate_sync(z: &mut Compress, raw: &[u8], dst: &mut BytesMut) {
    let mut consumed = 0usize;
    loop {
        let start = dst.len();
        let room = raw.len() - consumed + 64;
        dst.resize(start + room, 0);
        let before_in = z.total_in();
        let before_out = z.total_out();
        let status = z
            .compress(&raw[consumed..], &mut dst[start..], FlushCompress::Sync)
            .expect("deflate with valid state and non-empty output cannot fail");
        consumed += (z.total_in() - before_in) as usize;
        let produced = (z.total_out() - before_out) as usize;
        dst.truncate(start + produced);
        // Done once every input byte went in and the flush did not fill the output.
        if consumed == raw.len() && produced < room && status != Status::BufError {
            return;
        }
    }
}

/// The receiving side's zlib context.
pub struct HeaderDecompressor {
    z: Decompress,
    out: Vec<u8>,
    max_len: usize,
}

impl std::fmt::Debug for HeaderDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecompressor")
            .field("total_in", &self.z.total_in())
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl HeaderDecompressor {
    /// A fresh context whose inflated blocks may not exceed `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        HeaderDecompressor {
            z: Decompress::new(true),
            out: Vec::new(),
            max_len,
        }
    }

    /// Inflates exactly `block` (one frame's compressed bytes) and returns the raw block.
    pub fn inflate(&mut self, block: &[u8]) -> Result<&[u8], HeaderError> {
        self.out.clear();
        let mut consumed = 0usize;
        loop {
            if self.out.len() == self.out.capacity() || self.out.capacity() == 0 {
                if self.out.len() >= self.max_len {
                    return Err(HeaderError::TooLarge {
                        limit: self.max_len,
                    });
                }
                let want = (self.out.capacity().max(512) * 2).min(self.max_len);
                self.out.reserve_exact(want - self.out.len());
            }
            let written = self.out.len();
            let cap = self.out.capacity().min(self.max_len);
            self.out.resize(cap, 0);
            let before_in = self.z.total_in();
            let before_out = self.z.total_out();
            let res = self.z.decompress(
                &block[consumed..],
                &mut self.out[written..],
                FlushDecompress::Sync,
            );
            let used = (self.z.total_in() - before_in) as usize;
            let produced = (self.z.total_out() - before_out) as usize;
            consumed += used;
            self.out.truncate(written + produced);
            match res {
                Ok(status) => {
                    let out_full = written + produced == cap;
                    if status == Status::StreamEnd && consumed < block.len() {
                        return Err(HeaderError::TrailingBytes);
                    }
                    if consumed == block.len() && !out_full {
                        return Ok(&self.out);
                    }
                    if used == 0 && produced == 0 && !out_full {
                        // No progress with input left: the stream ended or is stuck.
                        return Err(HeaderError::TrailingBytes);
                    }
                    if out_full && written + produced >= self.max_len {
                        return Err(HeaderError::TooLarge {
                            limit: self.max_len,
                        });
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    if e.needs_dictionary() != Some(DICTIONARY_ADLER32) {
                        return Err(HeaderError::Corrupt("unknown preset dictionary".into()));
                    }
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| HeaderError::Corrupt(e.to_string()))?;
                }
                Err(e) => return Err(HeaderError::Corrupt(e.to_string())),
            }
        }
    }

    /// Inflates and parses one block.
    pub fn decompress(&mut self, block: &[u8]) -> Result<HeaderList, HeaderError> {
        let raw = self.inflate(block)?;
        parse_block(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_shares_context() {
        let mut c = HeaderCompressor::new(DEFAULT_LEVEL);
        let mut d = HeaderDecompressor::new(DEFAULT_MAX_HEADER_BLOCK);
        for i in 0..50 {
            let h = vec![
                ("streamtype".to_string(), "data".to_string()),
                ("requestid".to_string(), i.to_string()),
            ];
            let mut buf = BytesMut::new();
            c.compress(&h, &mut buf);
            if i == 0 {
                assert_eq!(&buf[..6], &[0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2]);
            }
            assert!(buf.ends_with(&[0, 0, 0xff, 0xff]));
            assert_eq!(d.decompress(&buf).unwrap(), h);
        }
    }

    #[test]
    fn upper_case_rejected_and_lowercased_on_write() {
        let mut raw = Vec::new();
        encode_block(&[("Port", "80")], &mut raw);
        assert_eq!(
            parse_block(&raw).unwrap(),
            vec![("port".to_string(), "80".to_string())]
        );
        raw[8] = b'P';
        assert_eq!(parse_block(&raw), Err(HeaderError::NotLowercase));
    }

    #[test]
    fn zlib_bomb_is_capped() {
        let mut c = HeaderCompressor::new(9);
        let big = "a".repeat(1 << 20);
        let mut buf = BytesMut::new();
        c.compress(&[("x", big.as_str())], &mut buf);
        assert!(buf.len() < 8 * 1024);
        let mut d = HeaderDecompressor::new(DEFAULT_MAX_HEADER_BLOCK);
        assert_eq!(
            d.decompress(&buf),
            Err(HeaderError::TooLarge {
                limit: DEFAULT_MAX_HEADER_BLOCK
            })
        );
        assert!(d.out.capacity() <= DEFAULT_MAX_HEADER_BLOCK);
    }

    #[test]
    fn stored_blocks_are_what_zlib_writes_at_level_0() {
        // Byte for byte what stock zlib (here zlib-rs) emits at level 0 with the dictionary set
        // and a sync flush per block, so a peer sees nothing it has not seen from zlib.
        let mut stored = HeaderCompressor::new(0);
        let mut zlib = Compress::new(Compression::new(0), true);
        zlib.set_dictionary(DICTIONARY).unwrap();
        let mut d = HeaderDecompressor::new(DEFAULT_MAX_HEADER_BLOCK);
        for i in 0..20 {
            let h = vec![
                ("streamtype".to_string(), "data".to_string()),
                ("port".to_string(), "8080".to_string()),
                ("requestid".to_string(), i.to_string()),
            ];
            let mut ours = BytesMut::new();
            stored.compress(&h, &mut ours);
            let mut raw = Vec::new();
            encode_block(&h, &mut raw);
            let mut theirs = BytesMut::new();
            deflate_sync(&mut zlib, &raw, &mut theirs);
            assert_eq!(ours, theirs, "block {i}");
            if i == 0 {
                assert_eq!(&ours[..6], &[0x78, 0x3f, 0xe3, 0xc6, 0xa7, 0xc2]);
            }
            assert_eq!(d.decompress(&ours).unwrap(), h);
        }
    }

    #[test]
    fn stored_blocks_split_large_and_empty_blocks() {
        let mut c = HeaderCompressor::new(0);
        let mut d = HeaderDecompressor::new(1 << 20);
        for len in [0usize, 1, 0xfff0, 0xffff, 0x1_0000, 200_000] {
            let value = "v".repeat(len);
            let h = vec![("x".to_string(), value)];
            let mut buf = BytesMut::new();
            c.compress(&h, &mut buf);
            assert!(buf.ends_with(&SYNC_FLUSH_MARKER));
            assert_eq!(d.decompress(&buf).unwrap(), h, "value of {len} bytes");
        }
        // An empty raw block is still a well-formed flush.
        let mut buf = BytesMut::new();
        c.compress_raw(&[], &mut buf);
        assert_eq!(&buf[..], &SYNC_FLUSH_MARKER);
        assert_eq!(d.inflate(&buf).unwrap(), b"");
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = HeaderDecompressor::new(1024);
        assert!(d.decompress(&[1, 2, 3, 4, 5]).is_err());
        let mut d = HeaderDecompressor::new(1024);
        assert!(d.decompress(&[]).is_err() || d.decompress(&[]).is_ok());
    }
}
