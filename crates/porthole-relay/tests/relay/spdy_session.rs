//! The SPDY driver on in-memory pairs (tokio::io::duplex), mostly on paused time.

use std::time::Duration;

use porthole_proto::spdy::frame::{Frame, Head};
use porthole_proto::spdy::GoAwayStatus;
use porthole_relay::spdy::{CloseReason, Config, Connection, Incoming, Role, StreamOpenError};
use porthole_test::spdy::{frames, headers, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pair(c: Config, s: Config) -> (Connection, Incoming, Connection, Incoming) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let (cc, ci) = Connection::new(a, Role::Client, c);
    let (sc, si) = Connection::new(b, Role::Server, s);
    (cc, ci, sc, si)
}

/// Server that echoes every accepted stream, honouring half-close.
fn spawn_echo(mut incoming: Incoming) {
    tokio::spawn(async move {
        while let Some(s) = incoming.next().await {
            let mut s = s.accept();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
}

#[tokio::test(start_paused = true)]
async fn open_echo_half_close() {
    let (c, _ci, _s, si) = pair(Config::client(), Config::default());
    spawn_echo(si);
    let mut st = c
        .open_stream(headers(&[("streamtype", "data")]))
        .await
        .unwrap();
    assert_eq!(st.id(), 1);
    st.write_all(b"hello").await.unwrap();
    st.shutdown().await.unwrap();
    let mut out = Vec::new();
    st.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams() {
    let (c, _ci, _s, si) = pair(Config::client(), Config::default());
    spawn_echo(si);
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = c
                .open_stream(headers(&[("n", &i.to_string())]))
                .await
                .unwrap();
            let data: Vec<u8> = (0..200_000u32)
                .map(|x| (x.wrapping_mul(i + 7) >> 3) as u8)
                .collect();
            let (mut r, mut w) = tokio::io::split(st);
            let d2 = data.clone();
            let wt = tokio::spawn(async move {
                w.write_all(&d2).await.unwrap();
                w.shutdown().await.unwrap();
                w
            });
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            let w = wt.await.unwrap();
            st = r.unsplit(w);
            drop(st);
            assert_eq!(out, data);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Finished streams are forgotten on both sides (no leak, §9.14).
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.stats().streams, 0);
}

#[tokio::test(start_paused = true)]
async fn server_half_close_then_client_keeps_sending() {
    let (c, _ci, _s, mut si) = pair(Config::client(), Config::default());
    let server = tokio::spawn(async move {
        let mut s = si.next().await.unwrap().accept();
        s.write_all(b"banner").await.unwrap();
        s.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut st = c.open_stream(vec![]).await.unwrap();
    let mut banner = Vec::new();
    st.read_to_end(&mut banner).await.unwrap();
    assert_eq!(banner, b"banner");
    tokio::time::sleep(Duration::from_secs(5)).await;
    st.write_all(b"late data").await.unwrap();
    st.shutdown().await.unwrap();
    assert_eq!(server.await.unwrap(), b"late data");
}

#[tokio::test(start_paused = true)]
async fn reject_gives_stream_reset_and_reset_is_seen_by_reader() {
    let (c, _ci, _s, mut si) = pair(Config::client(), Config::default());
    tokio::spawn(async move {
        si.next().await.unwrap().reject();
        let mut s = si.next().await.unwrap().accept();
        s.write_all(b"partial").await.unwrap();
        s.reset();
        let _keep = si;
        std::future::pending::<()>().await;
    });
    let e = c.open_stream(vec![]).await.unwrap_err();
    assert_eq!(e, StreamOpenError::Reset);
    assert_eq!(e.to_string(), "Stream reset");
    let mut st = c.open_stream(vec![]).await.unwrap();
    let mut buf = Vec::new();
    let err = st.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(buf, b"partial");
}

#[tokio::test(start_paused = true)]
async fn open_times_out_without_reply() {
    let (a, _b) = tokio::io::duplex(1 << 16);
    let (c, _ci) = Connection::new(a, Role::Client, Config::client());
    let e = c.open_stream(vec![]).await.unwrap_err();
    assert_eq!(e.to_string(), "Timeout occurred");
}

#[tokio::test(start_paused = true)]
async fn goaway_mid_transfer_ends_everything() {
    let (c, _ci, s, mut si) = pair(Config::client(), Config::default());
    let server = tokio::spawn(async move {
        let mut st = si.next().await.unwrap().accept();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        let res = loop {
            match st.read(&mut buf).await {
                Ok(0) => break Ok(total),
                Ok(n) => total += n,
                Err(e) => break Err(e.kind()),
            }
        };
        assert!(si.next().await.is_none());
        res
    });
    let mut st = c.open_stream(vec![]).await.unwrap();
    st.write_all(&vec![1u8; 100_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.shutdown().await;
    assert!(server.await.unwrap().is_err());
    assert_eq!(s.closed().await, CloseReason::GoAway(GoAwayStatus::OK));
    assert_eq!(c.closed().await, CloseReason::Local);
    assert!(st.write_all(b"x").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_and_pings_keep_alive() {
    let mut idle = Config::default();
    idle.session.idle_timeout = Some(Duration::from_secs(60));
    // Without pings: closed after 60 s of silence.
    let (c, _ci, s, _si) = pair(Config::default(), idle.clone());
    let t0 = tokio::time::Instant::now();
    assert_eq!(s.closed().await, CloseReason::IdleTimeout);
    assert!(t0.elapsed() >= Duration::from_secs(60));
    assert_eq!(c.closed().await, CloseReason::GoAway(GoAwayStatus::OK));
    // With client pings every 5 s the server never idles out.
    let (c, _ci, s, _si) = pair(Config::client(), idle);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!s.is_closed() && !c.is_closed());
}

#[tokio::test(start_paused = true)]
async fn dead_peer_detected() {
    // The peer reads nothing and answers nothing.
    let (a, _b) = tokio::io::duplex(1 << 20);
    let mut cfg = Config::default();
    cfg.session.ping_interval = Some(Duration::from_secs(5));
    cfg.session.ping_timeout = Duration::from_secs(15);
    let (c, _ci) = Connection::new(a, Role::Client, cfg);
    let t0 = tokio::time::Instant::now();
    assert_eq!(c.closed().await, CloseReason::PingTimeout);
    let el = t0.elapsed();
    assert!(
        el >= Duration::from_secs(20) && el <= Duration::from_secs(21),
        "{el:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_does_not_block_others_with_flow_control() {
    let mut cfg = Config::default();
    cfg.session.flow_control = true;
    cfg.session.stream_buffer = 256 * 1024;
    let (c, _ci, s, mut si) = pair(cfg.clone(), cfg);
    let accept = tokio::spawn(async move {
        let stalled = si.next().await.unwrap().accept(); // never read
        let fast = si.next().await.unwrap().accept();
        (stalled, fast, si)
    });
    let mut stalled = c.open_stream(headers(&[("n", "stalled")])).await.unwrap();
    let mut fast = c.open_stream(headers(&[("n", "fast")])).await.unwrap();
    let (_stalled_srv, mut fast_srv, _si) = accept.await.unwrap();
    // Fill the stalled stream as far as its window allows (the write then blocks).
    let stalled_writer = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if stalled.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    const TOTAL: usize = 32 << 20;
    let w = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            fast.write_all(&chunk).await.unwrap();
        }
        fast.shutdown().await.unwrap();
        fast
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = fast_srv.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, TOTAL);
    // Memory for the stalled stream stayed within its window.
    assert!(s.stats().buffered <= 256 * 1024, "{:?}", s.stats());
    let _fast = w.await.unwrap();
    stalled_writer.abort();
}

#[tokio::test(start_paused = true)]
async fn go_like_peer_without_window_updates_gets_everything() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (_s, mut si) = Connection::new(b, Role::Server, Config::default());
    let mut peer = Peer::new(a);
    peer.syn_stream(1, &[("streamtype", "data")]).await;
    let mut st = si.next().await.unwrap().accept();
    assert!(matches!(peer.next_frame().await, Some(Frame::SynReply(r)) if r.stream_id == 1));
    // Server → Go peer: 5 MiB with no WINDOW_UPDATE ever (SPDY's 64 KiB default is ignored).
    const N: usize = 5 << 20;
    let writer = tokio::spawn(async move {
        st.write_all(&vec![3u8; N]).await.unwrap();
        st.shutdown().await.unwrap();
        st
    });
    let mut got = 0;
    loop {
        match peer.next_frame().await.unwrap() {
            Frame::Data(d) => {
                assert!(d.payload.len() <= 32 * 1024);
                got += d.payload.len();
                if d.is_fin() {
                    break;
                }
            }
            Frame::WindowUpdate(_) | Frame::Settings(_) => {
                panic!("must not send flow-control frames to Go")
            }
            _ => {}
        }
    }
    assert_eq!(got, N);
    // Go peer → server: 4 MiB in 32 KiB frames, more than the stream buffer: back-pressure,
    // not loss.
    let mut st = writer.await.unwrap();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        st.read_to_end(&mut out).await.unwrap();
        out.len()
    });
    for _ in 0..128 {
        peer.send(frames::data(1, vec![9u8; 32 * 1024])).await;
    }
    peer.send(frames::fin(1)).await;
    assert_eq!(reader.await.unwrap(), 4 << 20);
}

#[tokio::test(start_paused = true)]
async fn pings_answered_while_a_stream_is_backpressured() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let mut cfg = Config::default();
    cfg.session.stream_buffer = 64 * 1024;
    let (_s, mut si) = Connection::new(b, Role::Server, cfg);
    let mut peer = Peer::new(a);
    peer.syn_stream(1, &[("a", "b")]).await;
    let _st = si.next().await.unwrap().accept(); // never read
    let _ = peer.next_frame().await;
    // PING before the flood is answered; the flood then blocks only behind itself.
    peer.send(frames::ping(1)).await;
    assert_eq!(peer.next_frame().await, Some(frames::ping(1)));
}

#[tokio::test(start_paused = true)]
async fn zlib_bomb_and_garbage_close_cleanly() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (s, _si) = Connection::new(b, Role::Server, Config::default());
    let mut peer = Peer::new(a);
    let big = "a".repeat(4 << 20);
    peer.syn_stream(1, &[("x", big.as_str())]).await;
    assert!(matches!(s.closed().await, CloseReason::Protocol(_)));
    // GOAWAY(PROTOCOL_ERROR) was sent.
    let f = peer.next_frame().await;
    assert!(
        matches!(f, Some(Frame::GoAway(g)) if g.status == GoAwayStatus::PROTOCOL_ERROR),
        "{f:?}"
    );

    for seed in 0..50u32 {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let (s, _si) = Connection::new(b, Role::Server, Config::default());
        let mut x = seed.wrapping_mul(2654435761) | 1;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = a.write_all(&garbage).await;
        drop(a);
        let _ = s.closed().await;
    }
}

#[test]
fn head_parse_is_total() {
    // Any 8 bytes parse; check() decides.
    for b in 0..=255u8 {
        let _ = Head::parse(&[b; 8]).check(1 << 16);
    }
}

#[tokio::test(start_paused = true)]
async fn peer_closing_right_after_its_data_loses_nothing() {
    let (a, b) = tokio::io::duplex(8 << 20);
    let mut cfg = Config::default();
    cfg.session.stream_buffer = 64 * 1024;
    let (_s, mut si) = Connection::new(b, Role::Server, cfg);
    let mut peer = Peer::new(a);
    peer.syn_stream(1, &[("a", "b")]).await;
    let mut st = si.next().await.unwrap().accept();
    for _ in 0..64 {
        peer.send(frames::data(1, vec![1u8; 32 * 1024])).await;
    }
    peer.send(frames::fin(1)).await;
    drop(peer); // socket closed while the server is still 2 MiB behind
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut out = Vec::new();
    st.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len(), 2 << 20);
}
