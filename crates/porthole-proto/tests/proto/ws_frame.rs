//! RFC 6455 codec: round trips, masking, fragmentation, control-frame rules, limits, garbage.

use bytes::{Bytes, BytesMut};
use hex_literal::hex;
use porthole_proto::ws::frame::{
    encode_close, encode_frame, encode_message, FrameDecoder, FrameError, FrameHead,
    MessageDecoder, DEFAULT_MAX_PAYLOAD,
};
use porthole_proto::ws::{CloseCode, CloseFrame, Message, OpCode, Role};
use proptest::prelude::*;

fn decode_all(role: Role, bytes: &[u8]) -> Result<Vec<Message>, FrameError> {
    let mut d = MessageDecoder::new(role);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(m) = d.decode(&mut buf)? {
        out.push(m);
    }
    Ok(out)
}

#[test]
fn tunnel_illustration_from_spec() {
    // PROTOCOL.md §2.4: the first piece of a SYN_STREAM leaves kubectl as `82 82 <mask> <80 03
    // xor mask>`, and an empty DATA+FIN is followed by `82 80 <mask>`.
    let key = hex!("11 22 33 44");
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, true, OpCode::Binary, Some(key), &hex!("80 03"));
    encode_frame(&mut wire, true, OpCode::Binary, Some(key), &[]);
    assert_eq!(
        &wire[..],
        &hex!("82 82 11 22 33 44 91 21   82 80 11 22 33 44")
    );
    let msgs = decode_all(Role::Server, &wire).unwrap();
    assert_eq!(
        msgs,
        vec![
            Message::Binary(Bytes::from_static(&hex!("80 03"))),
            Message::Binary(Bytes::new())
        ]
    );
}

#[test]
fn length_encodings() {
    for (len, head_len) in [
        (0usize, 2usize),
        (125, 2),
        (126, 4),
        (65535, 4),
        (65536, 10),
    ] {
        let payload = vec![7u8; len];
        let mut wire = BytesMut::new();
        encode_frame(&mut wire, true, OpCode::Binary, None, &payload);
        assert_eq!(wire.len(), head_len + len, "len {len}");
        let m = decode_all(Role::Client, &wire).unwrap();
        assert_eq!(m, vec![Message::Binary(Bytes::from(payload))]);
    }
}

#[test]
fn masking_direction_is_enforced() {
    let mut masked = BytesMut::new();
    encode_frame(
        &mut masked,
        true,
        OpCode::Binary,
        Some([1, 2, 3, 4]),
        b"abc",
    );
    let mut unmasked = BytesMut::new();
    encode_frame(&mut unmasked, true, OpCode::Binary, None, b"abc");
    assert_eq!(
        decode_all(Role::Client, &masked),
        Err(FrameError::MaskedServerFrame)
    );
    assert_eq!(
        decode_all(Role::Server, &unmasked),
        Err(FrameError::UnmaskedClientFrame)
    );
}

#[test]
fn control_frame_rules() {
    // Ping with 126 bytes (extended length) → too long.
    let mut wire = BytesMut::from(&hex!("89 7e 00 7e")[..]);
    wire.extend_from_slice(&[0u8; 126]);
    assert_eq!(
        decode_all(Role::Client, &wire),
        Err(FrameError::ControlTooLong {
            opcode: OpCode::Ping,
            len: 126
        })
    );
    // Ping without FIN.
    assert_eq!(
        decode_all(Role::Client, &hex!("09 00")),
        Err(FrameError::FragmentedControl {
            opcode: OpCode::Ping
        })
    );
    // Control frames may be interleaved in a fragmented message.
    let wire = hex!("02 02 61 62  89 01 70  80 01 63");
    assert_eq!(
        decode_all(Role::Client, &wire).unwrap(),
        vec![
            Message::Ping(Bytes::from_static(b"p")),
            Message::Binary(Bytes::from_static(b"abc"))
        ]
    );
}

#[test]
fn fragmentation_sequencing() {
    assert_eq!(
        decode_all(Role::Client, &hex!("80 01 61")),
        Err(FrameError::UnexpectedContinuation)
    );
    assert_eq!(
        decode_all(Role::Client, &hex!("02 01 61  82 01 62")),
        Err(FrameError::UnfinishedMessage {
            opcode: OpCode::Binary
        })
    );
    // Empty fragments are fine.
    assert_eq!(
        decode_all(Role::Client, &hex!("02 00  00 00  80 00")).unwrap(),
        vec![Message::Binary(Bytes::new())]
    );
}

#[test]
fn reserved_bits_and_opcodes() {
    assert_eq!(
        decode_all(Role::Client, &hex!("c2 00")),
        Err(FrameError::ReservedBits { rsv: 0x40 })
    );
    assert_eq!(
        decode_all(Role::Client, &hex!("83 00")),
        Err(FrameError::ReservedOpcode { opcode: 3 })
    );
    assert_eq!(
        decode_all(Role::Client, &hex!("8b 00")),
        Err(FrameError::ReservedOpcode { opcode: 0xb })
    );
    assert_eq!(
        decode_all(Role::Client, &hex!("82 7f 80 00 00 00 00 00 00 00")),
        Err(FrameError::LengthOverflow)
    );
}

#[test]
fn oversized_frames_fail_before_buffering() {
    // Only the 10-byte header of a 1 GiB frame is present: the error comes at once.
    let mut buf = BytesMut::from(&hex!("82 7f 00 00 00 00 40 00 00 00")[..]);
    let err = FrameDecoder::new(Role::Client)
        .decode(&mut buf)
        .unwrap_err();
    assert_eq!(
        err,
        FrameError::FrameTooLarge {
            len: 1 << 30,
            max: DEFAULT_MAX_PAYLOAD
        }
    );
    assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);

    // Fragments adding up past the message cap.
    let mut d = MessageDecoder::new(Role::Client).with_max_message(4);
    let mut buf = BytesMut::from(&hex!("02 03 61 62 63  80 02 64 65")[..]);
    assert_eq!(
        d.decode(&mut buf),
        Err(FrameError::MessageTooLarge { len: 5, max: 4 })
    );
}

#[test]
fn close_frames() {
    let mut wire = BytesMut::new();
    encode_close(&mut wire, Some((CloseCode::NORMAL, "bye")), None);
    encode_close(&mut wire, None, None);
    assert_eq!(&wire[..], &hex!("88 05 03 e8 62 79 65  88 00"));
    assert_eq!(
        decode_all(Role::Client, &wire).unwrap(),
        vec![
            Message::Close(Some(CloseFrame {
                code: CloseCode::NORMAL,
                reason: "bye".into()
            })),
            Message::Close(None)
        ]
    );
    assert_eq!(
        decode_all(Role::Client, &hex!("88 01 03")),
        Err(FrameError::BadClosePayload)
    );
    // 1005 and 1006 must never be sent.
    assert_eq!(
        decode_all(Role::Client, &hex!("88 02 03 ed")),
        Err(FrameError::InvalidCloseCode { code: 1005 })
    );
    assert_eq!(
        decode_all(Role::Client, &hex!("88 04 03 e8 c3 28")),
        Err(FrameError::InvalidUtf8)
    );
    // A long reason is cut at a character boundary to fit 125 bytes.
    let reason = "é".repeat(100);
    let mut wire = BytesMut::new();
    encode_close(&mut wire, Some((CloseCode::GOING_AWAY, &reason)), None);
    let m = decode_all(Role::Client, &wire).unwrap();
    let Message::Close(Some(c)) = &m[0] else {
        panic!("not a close: {m:?}")
    };
    assert_eq!(c.reason.len(), 122);
}

#[test]
fn text_must_be_utf8() {
    assert_eq!(
        decode_all(Role::Client, &hex!("81 02 c3 28")),
        Err(FrameError::InvalidUtf8)
    );
    // A character split across fragments is fine once reassembled.
    assert_eq!(
        decode_all(Role::Client, &hex!("01 01 c3  80 01 a9")).unwrap(),
        vec![Message::Text(Bytes::from("é"))]
    );
}

fn opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
    ]
}

proptest! {
    #[test]
    fn round_trip_any_split(
        op in opcode(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        key in any::<[u8; 4]>(),
        client_sends in any::<bool>(),
        split in any::<prop::sample::Index>(),
    ) {
        let payload = if op == OpCode::Text {
            String::from_utf8_lossy(&payload).into_owned().into_bytes()
        } else {
            payload
        };
        let payload = if op.is_control() { payload[..payload.len().min(125)].to_vec() } else { payload };
        let (mask, receiver) = if client_sends { (Some(key), Role::Server) } else { (None, Role::Client) };
        let mut wire = BytesMut::new();
        let msg = match op {
            OpCode::Text => Message::Text(Bytes::from(payload.clone())),
            OpCode::Binary => Message::Binary(Bytes::from(payload.clone())),
            OpCode::Ping => Message::Ping(Bytes::from(payload.clone())),
            _ => Message::Pong(Bytes::from(payload.clone())),
        };
        encode_message(&mut wire, &msg, mask);
        let head = FrameHead::parse(&wire).unwrap().unwrap().0;
        prop_assert_eq!(head.mask, mask);
        prop_assert_eq!(head.payload_len, payload.len() as u64);

        // Any split: the first part never yields a frame unless it holds all of it.
        let at = split.index(wire.len() + 1);
        let mut d = MessageDecoder::new(receiver);
        let mut buf = BytesMut::from(&wire[..at]);
        let first = d.decode(&mut buf).unwrap();
        if at < wire.len() {
            prop_assert_eq!(first, None);
            buf.extend_from_slice(&wire[at..]);
            prop_assert_eq!(d.decode(&mut buf).unwrap(), Some(msg));
        } else {
            prop_assert_eq!(first, Some(msg));
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn fragmented_round_trip(
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 1..6),
        key in any::<[u8; 4]>(),
    ) {
        let mut wire = BytesMut::new();
        for (i, p) in parts.iter().enumerate() {
            let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
            encode_frame(&mut wire, i + 1 == parts.len(), op, Some(key), p);
        }
        let whole: Vec<u8> = parts.concat();
        prop_assert_eq!(decode_all(Role::Server, &wire).unwrap(), vec![Message::Binary(Bytes::from(whole))]);
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
        for role in [Role::Client, Role::Server] {
            let mut d = MessageDecoder::new(role).with_max_message(1024);
            let mut buf = BytesMut::new();
            'outer: for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match d.decode(&mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
        }
        porthole_proto::ws::fuzz_logic::decode_and_demux(&data);
    }
}

#[test]
fn fuzz_seed_corpus_runs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/ws_decode");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let data = std::fs::read(entry.path()).unwrap();
        porthole_proto::ws::fuzz_logic::decode_and_demux(&data);
    }
}
