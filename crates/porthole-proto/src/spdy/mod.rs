//! SPDY/3.1 as spoken by Kubernetes (moby/spdystream), sans-IO (PROTOCOL.md §3).
//!
//! - [`frame`]: one struct per frame, the [`frame::Frame`] enum, decode/encode (§3.1–§3.2).
//! - [`header_block`]: header lists and their zlib compression with the SPDY/3 dictionary (§3.3–§3.4).
//! - [`session`]: the connection state machine: stream ids, PING, GOAWAY, idle timeout,
//!   back-pressure and sending (§3.5–§3.10).
//! - `send`: send scheduling: per-stream send queues framed in turn into the transmit buffer.
//! - `stream`: one stream's SYN/FIN/RST lifecycle as a state enum, its buffers and windows.
//! - `flow`: (porthole-to-porthole) flow-control window arithmetic and growth (§3.7).
//!
//! Entry points for fuzzing are the plain functions in [`fuzz_logic`].

mod flow;
pub mod frame;
pub mod header_block;
mod send;
pub mod session;
mod stream;

pub use frame::{Frame, FrameError, GoAwayStatus, RstStatus, StreamId};
pub use header_block::{HeaderCompressor, HeaderDecompressor, HeaderError, HeaderList, DICTIONARY};
pub use session::{
    CloseReason, Config, Event, OpenError, OpenState, ReadOutcome, Role, Session, WriteError,
};

/// Fuzz entry points (also used by the tests): each must never panic on any input.
pub mod fuzz_logic {
    #![allow(clippy::disallowed_types)]
    use std::time::{Duration, Instant};

    use bytes::BytesMut;

    use super::*;

    /// Decodes frames from `data` until it runs out or an error occurs.
    pub fn decode_frames(data: &[u8]) {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(f)) = Frame::decode(&mut buf, 1 << 16) {
            let mut out = BytesMut::new();
            f.encode(&mut out);
        }
    }

    /// Inflates `data` as a sequence of header blocks on one context: the first byte gives
    /// the split points.
    pub fn inflate_blocks(data: &[u8]) {
        let mut d = HeaderDecompressor::new(header_block::DEFAULT_MAX_HEADER_BLOCK);
        let Some((&split, rest)) = data.split_first() else {
            return;
        };
        let split = (split as usize).min(rest.len());
        let (a, b) = rest.split_at(split);
        if d.decompress(a).is_ok() {
            let _ = d.decompress(b);
        }
    }

    /// Feeds `data` to a server session in chunks whose sizes come from the data itself, and
    /// drives it like an application that accepts streams, reads everything, writes, finishes
    /// and resets. A small transmit bound makes writes go through the per-stream send queues;
    /// everything the session transmits must decode as whole, valid frames.
    pub fn server_session(data: &[u8]) {
        let now = Instant::now();
        let flow = data.first().is_some_and(|b| b & 1 == 1);
        let cfg = Config {
            role: Role::Server,
            flow_control: flow,
            stream_buffer: 4096,
            connection_buffer: 16384,
            idle_timeout: Some(Duration::from_secs(60)),
            ping_interval: Some(Duration::from_secs(5)),
            send_buffer: 2048,
            ..Config::default()
        };
        let mut s = Session::new(cfg, now);
        let payload = [b'x'; 1500];
        let mut rx = BytesMut::new();
        let mut tx = BytesMut::new();
        let mut scratch = [0u8; 1024];
        let mut rest = data;
        let mut t = now;
        while !rest.is_empty() {
            let n = (rest[0] as usize % 97 + 1).min(rest.len());
            rx.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            t += Duration::from_millis(100);
            if s.handle_input(t, &mut rx).is_err() {
                break;
            }
            while let Some(ev) = s.poll_event() {
                match ev {
                    Event::Incoming { id, .. } => {
                        if id % 4 == 1 {
                            s.accept(t, id);
                            let _ = s.write(t, id, &payload);
                        } else {
                            s.reject(t, id);
                        }
                    }
                    Event::StreamChanged(id) => {
                        let _ = s.read(t, id, &mut scratch);
                        let _ = s.write(t, id, &payload[..(id as usize * 7) % 1500]);
                        if id % 3 == 0 {
                            s.finish(t, id);
                        } else if id % 5 == 0 {
                            let _ = s.write_unbounded(t, id, b"error text");
                            s.reset(t, id);
                        } else if id % 7 == 0 {
                            s.release(t, id);
                        }
                    }
                    Event::GoAway { .. } => {}
                }
            }
            s.handle_timeout(t);
            s.poll_transmit(&mut tx);
            assert_whole_frames(&mut tx);
        }
        s.close(t);
        s.poll_transmit(&mut tx);
        assert_whole_frames(&mut tx);
    }

    /// Our own output must always be whole frames a peer can decode.
    fn assert_whole_frames(tx: &mut BytesMut) {
        while !tx.is_empty() {
            match frame::Frame::decode(tx, frame::MAX_PAYLOAD_LEN) {
                Ok(Some(_)) => {}
                other => panic!("session transmitted a bad or partial frame: {other:?}"),
            }
        }
    }
}
