//! Session tests: an in-memory client/server pair pumped on fake time (STYLE.md "Tests",
//! item 3). A file of their own, as in quinn-proto, so the state machine in `mod.rs` reads
//! without scrolling past them. As a child of `session` they may still look at its private
//! fields (stream windows, the configured sizes).

use super::*;
use crate::spdy::stream::STREAM_SEND_QUEUE;

fn pair(flow: bool) -> (Session, Session, Instant) {
    let now = Instant::now();
    let c = Session::new(
        Config {
            role: Role::Client,
            flow_control: flow,
            ..Config::default()
        },
        now,
    );
    let s = Session::new(
        Config {
            role: Role::Server,
            flow_control: flow,
            ..Config::default()
        },
        now,
    );
    (c, s, now)
}

/// A flow-controlled pair whose stream windows are 1000 bytes, SETTINGS already exchanged.
fn pair_with_1000_byte_windows() -> (Session, Session, Instant) {
    let now = Instant::now();
    let cfg = |role| Config {
        role,
        flow_control: true,
        stream_buffer: 1000,
        ..Config::default()
    };
    let mut c = Session::new(cfg(Role::Client), now);
    let mut s = Session::new(cfg(Role::Server), now);
    pump(&mut s, &mut c, now); // SETTINGS
    (c, s, now)
}

fn pump(from: &mut Session, to: &mut Session, now: Instant) {
    let mut buf = BytesMut::new();
    from.poll_transmit(&mut buf);
    to.handle_input(now, &mut buf).unwrap();
}

#[test]
fn open_accept_data_fin() {
    let (mut c, mut s, now) = pair(false);
    let id = c
        .open_stream(now, &[("streamtype", "data"), ("port", "80")])
        .unwrap();
    assert_eq!(id, 1);
    pump(&mut c, &mut s, now);
    let Some(Event::Incoming { id: sid, headers }) = s.poll_event() else {
        panic!()
    };
    assert_eq!(sid, 1);
    assert_eq!(headers[1], ("port".into(), "80".into()));
    s.accept(now, 1);
    pump(&mut s, &mut c, now);
    assert_eq!(c.open_state(1), OpenState::Replied);
    assert_eq!(c.write(now, 1, b"hello").unwrap(), 5);
    c.finish(now, 1);
    pump(&mut c, &mut s, now);
    let mut buf = [0u8; 16];
    assert_eq!(s.read(now, 1, &mut buf), ReadOutcome::Data(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(s.read(now, 1, &mut buf), ReadOutcome::Eof);
}

#[test]
fn ping_echo_and_timeout() {
    let now = Instant::now();
    let mut c = Session::new(
        Config {
            ping_interval: Some(Duration::from_secs(5)),
            ping_timeout: Duration::from_secs(10),
            ..Config::default()
        },
        now,
    );
    let t1 = now + Duration::from_secs(5);
    assert_eq!(c.poll_timeout(), Some(t1));
    c.handle_timeout(t1);
    let mut out = BytesMut::new();
    c.poll_transmit(&mut out);
    assert_eq!(&out[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    // Server echoes.
    let mut s = Session::new(
        Config {
            role: Role::Server,
            ..Config::default()
        },
        now,
    );
    s.handle_input(t1, &mut out).unwrap();
    let mut echo = BytesMut::new();
    s.poll_transmit(&mut echo);
    assert_eq!(&echo[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    // No answer: dead after ping_timeout.
    c.handle_timeout(t1 + Duration::from_secs(5));
    assert!(!c.is_closed());
    c.handle_timeout(t1 + Duration::from_secs(10));
    assert_eq!(c.close_reason(), Some(&CloseReason::PingTimeout));
}

#[test]
fn bad_syn_stream_id_gets_protocol_error_and_session_lives() {
    let (mut c, mut s, now) = pair(false);
    c.next_local_id = 2; // wrong parity
    c.open_stream(now, &[("a", "b")]).unwrap();
    pump(&mut c, &mut s, now);
    assert!(s.poll_event().is_none());
    let mut out = BytesMut::new();
    s.poll_transmit(&mut out);
    assert_eq!(
        &out[..],
        &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 1]
    );
    // Next properly numbered stream still works (context stayed in step).
    c.next_local_id = 3;
    c.open_stream(now, &[("a", "c")]).unwrap();
    pump(&mut c, &mut s, now);
    assert!(matches!(
        s.poll_event(),
        Some(Event::Incoming { id: 3, .. })
    ));
}

#[test]
fn flow_control_blocks_sender_and_window_update_reopens() {
    let (mut c, mut s, now) = pair_with_1000_byte_windows();
    let id = c.open_stream(now, &[("x", "y")]).unwrap();
    pump(&mut c, &mut s, now);
    assert!(matches!(s.poll_event(), Some(Event::Incoming { .. })));
    s.accept(now, id);
    pump(&mut s, &mut c, now);
    // The window lets 1000 bytes out; the rest waits in the stream's queue (64 KiB), and
    // a writer beyond that is told to wait.
    let data = vec![7u8; 70_000];
    assert_eq!(c.write(now, id, &data).unwrap(), 1000 + STREAM_SEND_QUEUE);
    assert_eq!(c.write(now, id, &data).unwrap(), 0);
    pump(&mut c, &mut s, now);
    assert_eq!(s.readable(id), 1000);
    let mut buf = vec![0u8; 600];
    assert_eq!(s.read(now, id, &mut buf), ReadOutcome::Data(600));
    pump(&mut s, &mut c, now); // WINDOW_UPDATE 600
    pump(&mut c, &mut s, now);
    assert_eq!(s.readable(id), 400 + 600);
}

/// A flow-controlled pair whose first PINGs were answered `rtt` after they left (so
/// each side's smallest round trip is `rtt`), with `max_window` as the growth cap.
fn pair_after_first_ping(rtt: Duration, max_window: usize) -> (Session, Session, Instant) {
    let start = Instant::now();
    let cfg = |role| Config {
        role,
        flow_control: true,
        max_window,
        ..Config::default()
    };
    let mut c = Session::new(cfg(Role::Client), start);
    let mut s = Session::new(cfg(Role::Server), start);
    let now = start + rtt;
    pump(&mut c, &mut s, now); // c's SETTINGS, WINDOW_UPDATE, PING; s's answer queued
    pump(&mut s, &mut c, now); // s's own, and the answer to c's PING
    pump(&mut c, &mut s, now); // the answer to s's PING
    (c, s, now)
}

#[test]
fn windows_grow_to_the_bandwidth_delay_product_of_a_long_round_trip() {
    // 4 ms: 2.5 MB/ms × 4 = 10 MB, between the configured windows and the 16 MiB cap.
    let (mut c, mut s, now) = pair_after_first_ping(Duration::from_millis(4), 16 << 20);
    assert_eq!(c.min_rtt(), Some(Duration::from_millis(4)));
    assert_eq!(s.min_rtt(), Some(Duration::from_millis(4)));
    let id = open_streams(&mut c, &mut s, now, 1)[0];
    let bdp = 10_000_000;
    // Session: the first credit returned (an eighth of 256 KiB received) opens it to the
    // product at once; the sender sees the whole of it less what is in flight.
    let sent = c.write(now, id, &[5u8; 40_000]).unwrap();
    assert_eq!(sent, 40_000);
    pump(&mut c, &mut s, now);
    pump(&mut s, &mut c, now);
    assert_eq!(s.session_recv_window.size, bdp);
    // Credit went back for the first 32 KiB frame; the second (7,232 B) waits for more.
    assert_eq!(c.session_send_window, bdp as i64 - (40_000 - 32 * 1024));
    // Stream: its first credit (half of 1 MiB read) grows its window the same way.
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0;
    while read < 600_000 {
        while c.write(now, id, &[5u8; 64 * 1024]).unwrap() > 0 {}
        pump(&mut c, &mut s, now);
        match s.read(now, id, &mut buf) {
            ReadOutcome::Data(n) => read += n,
            other => panic!("read: {other:?}"),
        }
        pump(&mut s, &mut c, now);
    }
    assert_eq!(s.streams[&id].windows.recv_size, bdp as u32);
    let in_flight = c.streams[&id].windows.send;
    assert!(
        in_flight > (1 << 20),
        "the sender's stream window grew past 1 MiB: {in_flight}"
    );
}

#[test]
fn windows_stay_as_configured_on_a_short_round_trip_or_with_growth_off() {
    // Loopback-like: 40 µs is 100 KB, under the 256 KiB session and 1 MiB stream windows.
    for (rtt, max_window) in [
        (Duration::from_micros(40), 16 << 20),
        (Duration::from_millis(50), 0),
    ] {
        let (mut c, mut s, now) = pair_after_first_ping(rtt, max_window);
        let id = open_streams(&mut c, &mut s, now, 1)[0];
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..20 {
            while c.write(now, id, &[5u8; 64 * 1024]).unwrap() > 0 {}
            pump(&mut c, &mut s, now);
            let _ = s.read(now, id, &mut buf);
            pump(&mut s, &mut c, now);
        }
        assert_eq!(s.session_recv_window.size, 256 * 1024, "rtt {rtt:?}");
        assert_eq!(s.streams[&id].windows.recv_size, 1 << 20, "rtt {rtt:?}");
        // Growth off: no PING is sent to measure anything.
        if max_window == 0 {
            assert_eq!(s.min_rtt(), None);
        }
    }
}

/// Opens `n` streams from `c`, accepted by `s`.
fn open_streams(c: &mut Session, s: &mut Session, now: Instant, n: usize) -> Vec<StreamId> {
    let ids: Vec<StreamId> = (0..n)
        .map(|_| c.open_stream(now, &[("x", "y")]).unwrap())
        .collect();
    pump(c, s, now);
    while let Some(ev) = s.poll_event() {
        if let Event::Incoming { id, .. } = ev {
            s.accept(now, id);
        }
    }
    pump(s, c, now);
    ids
}

#[test]
fn a_small_write_waits_behind_one_frame_of_a_bulk_stream_not_its_backlog() {
    let (mut c, mut s, now) = pair(false);
    let ids = open_streams(&mut c, &mut s, now, 2);
    let (bulk, small) = (ids[0], ids[1]);
    let big = vec![1u8; 1 << 20];
    let mut taken = 0;
    loop {
        let n = c.write(now, bulk, &big[taken..]).unwrap();
        if n == 0 {
            break;
        }
        taken += n;
    }
    // The transmit buffer and the bulk stream's queue are full.
    assert_eq!(taken, c.cfg.send_buffer + STREAM_SEND_QUEUE);
    assert_eq!(c.write(now, small, b"ping").unwrap(), 4);
    // First batch: what was framed before the small write.
    pump(&mut c, &mut s, now);
    assert_eq!(s.readable(small), 0);
    // Second batch: the small write goes after at most one bulk frame.
    let mut batch = BytesMut::new();
    c.poll_transmit(&mut batch);
    let first_small = batch
        .windows(4)
        .position(|w| w == b"ping")
        .expect("the small write is in the next batch");
    assert!(
        first_small <= 2 * HEAD_LEN + c.cfg.max_data_frame,
        "at {first_small}"
    );
    s.handle_input(now, &mut batch).unwrap();
    assert_eq!(s.readable(small), 4);
}

#[test]
fn a_closed_window_holds_only_its_own_stream() {
    let (mut c, mut s, now) = pair_with_1000_byte_windows();
    let ids = open_streams(&mut c, &mut s, now, 2);
    assert_eq!(c.write(now, ids[0], &[5u8; 5000]).unwrap(), 5000);
    assert_eq!(c.write(now, ids[1], b"hello").unwrap(), 5);
    pump(&mut c, &mut s, now);
    assert_eq!(s.readable(ids[0]), 1000);
    assert_eq!(s.readable(ids[1]), 5);
}

#[test]
fn fin_and_reset_go_after_queued_data() {
    let (mut c, mut s, now) = pair(false);
    let ids = open_streams(&mut c, &mut s, now, 2);
    // Fill the transmit buffer so the next writes queue.
    let filler = vec![0u8; c.cfg.send_buffer];
    assert_eq!(c.write(now, ids[0], &filler).unwrap(), filler.len());
    assert_eq!(c.write(now, ids[1], b"last words").unwrap(), 10);
    c.finish(now, ids[1]);
    assert_eq!(c.write(now, ids[0], b"then reset").unwrap(), 10);
    c.reset(now, ids[0]);
    pump(&mut c, &mut s, now);
    pump(&mut c, &mut s, now);
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(s.read(now, ids[1], &mut buf), ReadOutcome::Data(10));
    assert_eq!(&buf[..10], b"last words");
    assert_eq!(s.read(now, ids[1], &mut buf), ReadOutcome::Eof);
    let mut got = 0;
    while let ReadOutcome::Data(n) = s.read(now, ids[0], &mut buf[got..]) {
        got += n;
    }
    assert_eq!(got, filler.len() + 10);
    assert_eq!(&buf[got - 10..got], b"then reset");
    assert_eq!(s.read(now, ids[0], &mut buf), ReadOutcome::Reset);
}

#[test]
fn transport_failure_keeps_the_io_error() {
    use std::error::Error as _;
    let (mut c, _s, _now) = pair(false);
    c.handle_io_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let reason = c.close_reason().expect("closed").clone();
    let source = reason.source().expect("source kept");
    let io = source.downcast_ref::<io::Error>().expect("an io::Error");
    assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(Some(&reason), c.close_reason());
}
