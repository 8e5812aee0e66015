//! UDP over a port-forward data stream (a porthole extension, docs/ARCHITECTURE.md): the
//! framing that keeps datagram boundaries on a byte stream, and the stream header that marks a
//! pair as UDP.
//!
//! A stream pair carries UDP when both of its SYN_STREAMs have `protocol: udp` (sent only after
//! the upgrade negotiated `X-Porthole-Extensions: udp`). Each datagram on the data stream, in
//! both directions, is a 2-byte big-endian length followed by that many payload bytes:
//!
//! ```text
//! +--------+--------+----------------------+
//! | len (u16, BE)   | payload (len bytes)  |   len 0..=65535, 0 allowed
//! +--------+--------+----------------------+
//! ```
//!
//! Since the prefix is 16 bits, every length is valid and the decoder has no error state: a
//! short buffer is just "not yet" (`None`), and at most one datagram plus its prefix is ever
//! buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Stream header naming the transport protocol of a pair (absent = TCP).
pub const HEADER_PROTOCOL: &str = "protocol";
/// `protocol` value of a UDP pair.
pub const PROTOCOL_UDP: &str = "udp";
/// Largest payload one frame carries (the prefix is 16 bits).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;
/// Length of the prefix.
pub const PREFIX_LEN: usize = 2;

/// Whether a stream's headers mark it as UDP (`protocol: udp`, value case-insensitive).
pub fn is_udp(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == HEADER_PROTOCOL && v.trim().eq_ignore_ascii_case(PROTOCOL_UDP))
}

/// A payload longer than [`MAX_DATAGRAM`] was given to [`encode`] (caller misuse: a UDP
/// socket never returns one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "datagram of {len} bytes exceeds the {}-byte limit of the UDP framing",
    MAX_DATAGRAM
)]
pub struct TooLarge {
    /// The payload length.
    pub len: usize,
}

/// Appends one framed datagram to `dst`.
pub fn encode(payload: &[u8], dst: &mut impl BufMut) -> Result<(), TooLarge> {
    let len = u16::try_from(payload.len()).map_err(|_| TooLarge { len: payload.len() })?;
    dst.put_u16(len);
    dst.put_slice(payload);
    Ok(())
}

/// Takes one complete datagram off the front of `src`, or `None` (nothing consumed) when `src`
/// does not hold a whole one yet.
pub fn decode(src: &mut BytesMut) -> Option<Bytes> {
    if src.len() < PREFIX_LEN {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([src[0], src[1]]));
    if src.len() < PREFIX_LEN + len {
        // Reserve once for the rest of this datagram, so the reader's next read fits it.
        src.reserve(PREFIX_LEN + len - src.len());
        return None;
    }
    src.advance(PREFIX_LEN);
    Some(src.split_to(len).freeze())
}

/// Fuzz entry points (also run by the unit tests).
pub mod fuzz_logic {
    use super::*;

    /// Decodes `data` fed in chunks whose sizes come from the data itself, then checks that
    /// re-encoding the datagrams gives back exactly the bytes consumed, that what is left is
    /// a strict prefix of one frame, and that encode∘decode is the identity for each datagram.
    pub fn decode_stream(data: &[u8]) {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = (usize::from(rest[0]) % 61 + 1).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(d) = decode(&mut buf) {
                got.push(d);
            }
        }
        let mut again = BytesMut::new();
        for d in &got {
            encode(d, &mut again).expect("decoded datagrams are within the limit");
            let mut one = BytesMut::new();
            encode(d, &mut one).expect("within the limit");
            assert_eq!(decode(&mut one).as_deref(), Some(&d[..]));
            assert!(one.is_empty());
        }
        let consumed = data.len() - buf.len();
        assert_eq!(&again[..], &data[..consumed], "re-encoding differs");
        if buf.len() >= PREFIX_LEN {
            let want = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            assert!(buf.len() < PREFIX_LEN + want, "a whole datagram was left");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    #[test]
    fn wire_bytes() {
        let mut out = BytesMut::new();
        encode(b"abc", &mut out).unwrap();
        encode(b"", &mut out).unwrap();
        // len 3 "abc", len 0
        assert_eq!(&out[..], hex!("0003 616263 0000"));
        assert_eq!(decode(&mut out).as_deref(), Some(&b"abc"[..]));
        assert_eq!(decode(&mut out).as_deref(), Some(&b""[..]));
        assert_eq!(decode(&mut out), None);
    }

    #[test]
    fn partial_input_waits_byte_by_byte() {
        let mut frame = BytesMut::new();
        encode(b"hello", &mut frame).unwrap();
        let mut buf = BytesMut::new();
        for (i, b) in frame.iter().enumerate() {
            assert_eq!(decode(&mut buf), None, "complete too early at byte {i}");
            buf.put_u8(*b);
        }
        assert_eq!(decode(&mut buf).as_deref(), Some(&b"hello"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn split_across_datagrams() {
        let mut all = BytesMut::new();
        encode(&[7u8; 300], &mut all).unwrap();
        encode(b"x", &mut all).unwrap();
        let mut buf = BytesMut::from(&all[..250]);
        assert_eq!(decode(&mut buf), None);
        buf.extend_from_slice(&all[250..]);
        assert_eq!(decode(&mut buf).map(|d| d.len()), Some(300));
        assert_eq!(decode(&mut buf).as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn limits() {
        let max = vec![0xabu8; MAX_DATAGRAM];
        let mut out = BytesMut::new();
        encode(&max, &mut out).unwrap();
        assert_eq!(&out[..2], hex!("ffff"));
        assert_eq!(decode(&mut out).map(|d| d.len()), Some(MAX_DATAGRAM));
        let too_big = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(
            encode(&too_big, &mut out),
            Err(TooLarge {
                len: MAX_DATAGRAM + 1
            })
        );
        assert!(out.is_empty(), "nothing written on error");
    }

    #[test]
    fn header_detection() {
        let h = |v: &str| vec![("protocol".to_string(), v.to_string())];
        assert!(is_udp(&h("udp")));
        assert!(is_udp(&h("UDP")));
        assert!(!is_udp(&h("tcp")));
        assert!(!is_udp(&[]));
    }

    #[test]
    fn fuzz_logic_on_samples() {
        fuzz_logic::decode_stream(&[]);
        fuzz_logic::decode_stream(&hex!("0003 616263 0000 ff"));
        fuzz_logic::decode_stream(&hex!("ffff 00"));
        let mut many = BytesMut::new();
        for n in 0..50usize {
            encode(&vec![n as u8; n * 7], &mut many).unwrap();
        }
        fuzz_logic::decode_stream(&many);
    }
}
