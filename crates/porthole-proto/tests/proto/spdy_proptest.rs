//! Property tests: every frame type round-trips; any split of a byte stream decodes to the same
//! frames and delivers the same stream data through a session; garbage never panics.
#![allow(clippy::disallowed_types)]

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use porthole_proto::spdy::frame::*;
use porthole_proto::spdy::fuzz_logic;
use porthole_proto::spdy::header_block::{HeaderCompressor, HeaderDecompressor};
use porthole_proto::spdy::session::{Config, Event, ReadOutcome, Role, Session};
use proptest::prelude::*;

fn sid() -> impl Strategy<Value = u32> {
    1..=MAX_STREAM_ID
}

fn block() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            sid(),
            0u8..4,
            proptest::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(stream_id, flags, p)| Frame::Data(Data {
                stream_id,
                flags,
                payload: p.into()
            })),
        (
            sid(),
            0..=MAX_STREAM_ID,
            0u8..8,
            any::<u8>(),
            0u8..4,
            block()
        )
            .prop_map(
                |(stream_id, associated_id, priority, slot, flags, header_block)| {
                    Frame::SynStream(SynStream {
                        stream_id,
                        associated_id,
                        priority,
                        slot,
                        flags,
                        header_block,
                    })
                }
            ),
        (sid(), any::<u8>(), block()).prop_map(|(stream_id, flags, header_block)| Frame::SynReply(
            SynReply {
                stream_id,
                flags,
                header_block
            }
        )),
        (sid(), any::<u8>(), block()).prop_map(|(stream_id, flags, header_block)| Frame::Headers(
            Headers {
                stream_id,
                flags,
                header_block
            }
        )),
        (sid(), 1u32..).prop_map(|(stream_id, s)| Frame::RstStream(RstStream {
            stream_id,
            status: RstStatus(s)
        })),
        (
            any::<u8>(),
            proptest::collection::vec((any::<u8>(), 0u32..0x100_0000, any::<u32>()), 0..10)
        )
            .prop_map(|(flags, e)| {
                Frame::Settings(Settings {
                    flags,
                    entries: e
                        .into_iter()
                        .map(|(flags, id, value)| Setting {
                            flags,
                            id: SettingId(id),
                            value,
                        })
                        .collect(),
                })
            }),
        (1u32..).prop_map(|id| Frame::Ping(Ping { id })),
        (0..=MAX_STREAM_ID, any::<u32>()).prop_map(|(l, s)| Frame::GoAway(GoAway {
            last_good_stream_id: l,
            status: GoAwayStatus(s)
        })),
        (0..=MAX_STREAM_ID, 0u32..0x8000_0000)
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate(WindowUpdate { stream_id, delta })),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips(f in frame()) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        let wire = buf.clone();
        let back = Frame::decode(&mut buf, MAX_PAYLOAD_LEN).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&back, &f);
        let mut again = BytesMut::new();
        back.encode(&mut again);
        prop_assert_eq!(again, wire);
    }

    #[test]
    fn random_splits_give_the_same_frames(
        frames in proptest::collection::vec(frame(), 1..20),
        cuts in proptest::collection::vec(any::<u16>(), 0..30),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c as usize % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for c in cuts {
            buf.extend_from_slice(&wire[at..c]);
            at = c;
            while let Some(f) = Frame::decode(&mut buf, MAX_PAYLOAD_LEN).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn headers_round_trip_on_shared_context(
        lists in proptest::collection::vec(
            proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", "[ -~]{0,40}"), 0..6), 1..8)
    ) {
        let mut c = HeaderCompressor::new(9);
        let mut d = HeaderDecompressor::new(64 * 1024);
        for l in &lists {
            let mut blk = BytesMut::new();
            c.compress(l, &mut blk);
            prop_assert_eq!(&d.decompress(&blk).unwrap(), l);
        }
    }

    /// The same client output, cut anywhere, delivers the same bytes to the server.
    #[test]
    fn session_input_split_anywhere(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 1..6),
        cuts in proptest::collection::vec(any::<u16>(), 0..40),
    ) {
        let now = Instant::now();
        let mut c = Session::new(Config::default(), now);
        let mut wire = BytesMut::new();
        let mut ids = Vec::new();
        for p in &payloads {
            let id = c.open_stream(now, &[("streamtype", "data")]).unwrap();
            ids.push(id);
            // Client may write before the reply for this test's purpose: use a replied view.
            let _ = p;
        }
        c.poll_transmit(&mut wire);
        // Fake SYN_REPLYs so the client may write.
        let mut srv = Session::new(Config { role: Role::Server, ..Config::default() }, now);
        let mut w2 = wire.clone();
        srv.handle_input(now, &mut w2).unwrap();
        while let Some(ev) = srv.poll_event() {
            if let Event::Incoming { id, .. } = ev { srv.accept(now, id); }
        }
        let mut replies = BytesMut::new();
        srv.poll_transmit(&mut replies);
        c.handle_input(now, &mut replies).unwrap();
        for (id, p) in ids.iter().zip(&payloads) {
            let mut off = 0;
            while off < p.len() { off += c.write(now, *id, &p[off..]).unwrap(); }
            c.finish(now, *id);
        }
        let mut data = BytesMut::new();
        c.poll_transmit(&mut data);
        let data = data.freeze();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|x| x as usize % (data.len() + 1)).collect();
        cuts.push(data.len());
        cuts.sort_unstable();
        let mut srv = Session::new(Config { role: Role::Server, ..Config::default() }, now);
        let mut w3 = wire.clone();
        srv.handle_input(now, &mut w3).unwrap();
        while let Some(ev) = srv.poll_event() {
            if let Event::Incoming { id, .. } = ev { srv.accept(now, id); }
        }
        let mut rx = BytesMut::new();
        let mut at = 0;
        for cpos in cuts {
            rx.extend_from_slice(&data[at..cpos]);
            at = cpos;
            srv.handle_input(now, &mut rx).unwrap();
        }
        for (id, p) in ids.iter().zip(&payloads) {
            let mut got = Vec::new();
            let mut buf = [0u8; 777];
            loop {
                match srv.read(now, *id, &mut buf) {
                    ReadOutcome::Data(n) => got.extend_from_slice(&buf[..n]),
                    ReadOutcome::Eof => break,
                    other => panic!("{other:?}"),
                }
            }
            prop_assert_eq!(&got, p);
        }
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        fuzz_logic::decode_frames(&data);
        fuzz_logic::inflate_blocks(&data);
        fuzz_logic::server_session(&data);
    }

    /// Garbage after a valid prefix (a real SYN_STREAM) reaches deeper states.
    #[test]
    fn garbage_after_valid_prefix_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut v = hex::decode("00800300010000003d0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c6061606100a4398b20d198094ade8c0600000000ffff").unwrap();
        v.extend_from_slice(&data);
        fuzz_logic::server_session(&v);
    }
}
