//! Criterion benches: DATA frame encode/decode, header-block compression, and a sans-IO
//! client/server session pair moving data over 1 and 64 streams (bytes/s).
#![allow(missing_docs, clippy::disallowed_types)]

use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use porthole_proto::spdy::frame::{Frame, Head, MAX_PAYLOAD_LEN};
use porthole_proto::spdy::header_block::{HeaderCompressor, HeaderDecompressor};
use porthole_proto::spdy::session::{Config, Event, ReadOutcome, Role, Session};

const FRAME: usize = 32 * 1024;
const FRAMES: usize = 64;

fn codec(c: &mut Criterion) {
    let payload = vec![0xabu8; FRAME];
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes((FRAME * FRAMES) as u64));
    let mut buf = BytesMut::with_capacity((FRAME + 8) * FRAMES);
    g.bench_function("encode_data_32k", |b| {
        b.iter(|| {
            buf.clear();
            for _ in 0..FRAMES {
                Head::encode_data(1, 0, FRAME, &mut buf);
                buf.extend_from_slice(&payload);
            }
        })
    });
    let mut wire = BytesMut::new();
    for _ in 0..FRAMES {
        Head::encode_data(1, 0, FRAME, &mut wire);
        wire.extend_from_slice(&payload);
    }
    let wire = wire.freeze();
    g.bench_function("decode_data_32k", |b| {
        b.iter(|| {
            let mut src = BytesMut::from(&wire[..]);
            let mut n = 0;
            while let Some(Frame::Data(d)) = Frame::decode(&mut src, MAX_PAYLOAD_LEN).unwrap() {
                n += d.payload.len();
            }
            assert_eq!(n, FRAME * FRAMES);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("header_block");
    let headers = [
        ("streamtype", "data"),
        ("port", "8080"),
        ("requestid", "12345"),
    ];
    g.bench_function("compress_decompress_pair", |b| {
        let mut zc = HeaderCompressor::new(9);
        let mut zd = HeaderDecompressor::new(64 * 1024);
        let mut blk = BytesMut::new();
        b.iter(|| {
            blk.clear();
            zc.compress(&headers, &mut blk);
            zd.decompress(&blk).unwrap()
        })
    });
    g.finish();
}

/// Moves `total` bytes client → server over `streams` streams through two sessions.
fn session_transfer(streams: usize, total: usize, flow_control: bool) {
    let now = Instant::now();
    let cfg = |role| Config {
        role,
        flow_control,
        ..Config::default()
    };
    let mut c = Session::new(cfg(Role::Client), now);
    let mut s = Session::new(cfg(Role::Server), now);
    let mut wire = BytesMut::with_capacity(1 << 20);
    let mut back = BytesMut::new();
    let ids: Vec<u32> = (0..streams)
        .map(|_| c.open_stream(now, &[("streamtype", "data")]).unwrap())
        .collect();
    c.poll_transmit(&mut wire);
    s.handle_input(now, &mut wire).unwrap();
    while let Some(ev) = s.poll_event() {
        if let Event::Incoming { id, .. } = ev {
            s.accept(now, id);
        }
    }
    s.poll_transmit(&mut back);
    c.handle_input(now, &mut back).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let per_stream = total / streams;
    let mut sent = vec![0usize; streams];
    let mut received = 0usize;
    while received < per_stream * streams {
        for (i, &id) in ids.iter().enumerate() {
            if sent[i] < per_stream {
                let n = (per_stream - sent[i]).min(chunk.len());
                sent[i] += c.write(now, id, &chunk[..n]).unwrap();
            }
        }
        c.poll_transmit(&mut wire);
        s.handle_input(now, &mut wire).unwrap();
        while s.poll_event().is_some() {}
        for &id in &ids {
            while let ReadOutcome::Data(n) = s.read(now, id, &mut sink) {
                received += n;
            }
        }
        s.poll_transmit(&mut back);
        c.handle_input(now, &mut back).unwrap();
        while c.poll_event().is_some() {}
    }
}

fn session(c: &mut Criterion) {
    const TOTAL: usize = 64 << 20;
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    for streams in [1usize, 64] {
        for flow in [false, true] {
            let name = if flow {
                "flow_control"
            } else {
                "no_flow_control"
            };
            g.bench_with_input(BenchmarkId::new(name, streams), &streams, |b, &n| {
                b.iter(|| session_transfer(n, TOTAL, flow))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, codec, session);
criterion_main!(benches);
