//! Criterion benches: DATA frame encode/decode, header-block compression, and a sans-IO
//! client/server session pair moving data over 1 and 64 streams (bytes/s).
#![allow(missing_docs, clippy::disallowed_types)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use porthole_proto::spdy::frame::{Frame, Head, MAX_PAYLOAD_LEN};
use porthole_proto::spdy::header_block::{HeaderCompressor, HeaderDecompressor};
use porthole_proto::spdy::session::{Config, Event, ReadOutcome, Role, Session};

/// Counts heap allocations so the report can show allocations per DATA frame (goal: zero).
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

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

/// One loopback TCP stream moving `total` bytes with 64 KiB writes (the yardstick the issue
/// holds the in-memory session against: at least 3x).
fn loopback_tcp(total: usize) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0, "early EOF");
            got += n;
        }
    });
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    let chunk = vec![7u8; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(chunk.len());
        conn.write_all(&chunk[..n]).expect("write");
        sent += n;
    }
    reader.join().expect("reader thread");
    total as f64 / start.elapsed().as_secs_f64()
}

/// The headline figures, printed once before the criterion groups: an in-memory
/// session moving 1 GiB over 1 and 64 streams, in GB/s and allocations per DATA frame, next
/// to one loopback TCP stream measured in the same run.
fn report() {
    const GIB: usize = 1 << 30;
    let tcp = loopback_tcp(GIB);
    println!("report: loopback TCP, 1 stream: {:.2} GB/s", tcp / 1e9);
    for streams in [1usize, 64] {
        for flow in [false, true] {
            // Warm up so the sessions' buffers reach their steady size, then count.
            session_transfer(streams, 64 << 20, flow);
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let start = Instant::now();
            session_transfer(streams, GIB, flow);
            let rate = GIB as f64 / start.elapsed().as_secs_f64();
            let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
            let frames = GIB / FRAME;
            println!(
                "report: session 1 GiB, {streams} stream(s), flow control {}: {:.2} GB/s = {:.1}x loopback TCP; {} allocations for ~{} DATA frames ({:.4} per frame, setup included)",
                if flow { "on" } else { "off" },
                rate / 1e9,
                rate / tcp,
                allocs,
                frames,
                allocs as f64 / frames as f64,
            );
        }
    }
}

criterion_group!(benches, codec, session);

fn main() {
    report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
