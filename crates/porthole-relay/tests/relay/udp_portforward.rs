//! UDP flows (porthole extension): `PortForwarder::open_udp` against `spdy_server::serve` with
//! `udp` on, over an in-memory connection, with pods simulated by loopback UDP sockets.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use porthole_relay::dial::{DialError, DialFuture, PodDialer, UdpDialFuture};
use porthole_relay::portforward::spdy_client::{ForwardError, PortForwarder};
use porthole_relay::portforward::spdy_server::{self, ServerConfig};
use porthole_relay::portforward::udp::UdpFlow;
use porthole_relay::spdy::Config;
use porthole_test::echo;
use tokio::net::UdpSocket;

/// The host's loopback stands in for the pod's.
struct Loopback;

impl PodDialer for Loopback {
    fn dial(&self, port: u16) -> DialFuture {
        Box::pin(async move { Err(DialError::new(format!("no TCP in this test (port {port})"))) })
    }
    fn dial_udp(&self, port: u16, ipv6: bool) -> UdpDialFuture {
        Box::pin(async move {
            let (bind, to): (SocketAddr, SocketAddr) = if ipv6 {
                (
                    (Ipv6Addr::LOCALHOST, 0).into(),
                    (Ipv6Addr::LOCALHOST, port).into(),
                )
            } else {
                (
                    (Ipv4Addr::LOCALHOST, 0).into(),
                    (Ipv4Addr::LOCALHOST, port).into(),
                )
            };
            let fail = |e: std::io::Error| DialError::io(format!("udp socket to {to}: {e}"), e);
            let s = UdpSocket::bind(bind).await.map_err(fail)?;
            s.connect(to).await.map_err(fail)?;
            Ok(s)
        })
    }
    fn pod_id(&self) -> String {
        "pod-udp".into()
    }
}

fn start(udp: bool) -> PortForwarder {
    let (a, b) = tokio::io::duplex(1 << 20);
    let cfg = ServerConfig {
        udp,
        ..ServerConfig::default()
    };
    tokio::spawn(spdy_server::serve(b, Arc::new(Loopback), cfg));
    PortForwarder::new(a, Config::client()).with_udp(udp)
}

async fn recv(flow: &mut UdpFlow) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), flow.recv())
        .await
        .expect("an answer within 10 s")
        .expect("flow intact")
        .expect("not ended")
        .to_vec()
}

#[tokio::test]
async fn datagrams_keep_their_boundaries_both_ways() {
    let port = echo::udp((Ipv4Addr::LOCALHOST, 0).into()).await.port();
    let pf = start(true);
    assert!(pf.supports_udp());
    let mut flow = pf.open_udp(port).await.unwrap();
    // Empty, small and large (the largest IPv4 UDP payload) datagrams, back to back.
    let sizes = [0usize, 1, 512, 1200, 65507];
    for (i, n) in sizes.iter().enumerate() {
        flow.send(&vec![i as u8; *n]).await.unwrap();
    }
    for (i, n) in sizes.iter().enumerate() {
        assert_eq!(recv(&mut flow).await, vec![i as u8; *n]);
    }
    flow.finish().await.unwrap();
}

#[tokio::test]
async fn an_app_on_ipv6_only_is_reached_after_the_ipv4_refusal() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback here");
        return;
    }
    // Bind ::1 first, then make sure 127.0.0.1 of that port is free (refuses).
    let port = loop {
        let p = echo::udp((Ipv6Addr::LOCALHOST, 0).into()).await.port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    let pf = start(true);
    let mut flow = pf.open_udp(port).await.unwrap();
    flow.send(b"first").await.unwrap();
    // Resent on ::1 after 127.0.0.1 refused it.
    assert_eq!(recv(&mut flow).await, b"first");
    flow.send(b"second").await.unwrap();
    assert_eq!(recv(&mut flow).await, b"second");
    flow.finish().await.unwrap();
}

#[tokio::test]
async fn a_refused_port_ends_the_flow_with_an_error_and_not_the_session() {
    // A port nobody listens on, on either family.
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let pf = start(true);
    let mut flow = pf.open_udp(port).await.unwrap();
    flow.send(b"anyone?").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), flow.recv())
        .await
        .expect("the flow ends within 10 s");
    assert!(!matches!(ended, Ok(Some(_))), "got an answer: {ended:?}");
    match flow.finish().await {
        Err(ForwardError::Remote(text)) => {
            assert!(
                text.starts_with(&format!(
                    "error forwarding port {port} to pod pod-udp, uid : "
                )),
                "{text}"
            );
            assert!(text.contains("connection refused"), "{text}");
        }
        other => panic!("expected the pod's error text, got {other:?}"),
    }
    // The session goes on.
    let echo = echo::udp((Ipv4Addr::LOCALHOST, 0).into()).await.port();
    let mut flow = pf.open_udp(echo).await.unwrap();
    flow.send(b"still here").await.unwrap();
    assert_eq!(recv(&mut flow).await, b"still here");
}

/// With `udp` off (the library's default) the server is a kubelet: a `protocol: udp` pair is
/// an ordinary TCP pair, so this dialer's TCP refusal comes back.
#[tokio::test]
async fn without_the_extension_the_server_ignores_the_protocol_header() {
    let (a, b) = tokio::io::duplex(1 << 20);
    assert!(!ServerConfig::default().udp);
    tokio::spawn(spdy_server::serve(
        b,
        Arc::new(Loopback),
        ServerConfig::default(),
    ));
    // A client that wrongly believes UDP was granted.
    let pf = PortForwarder::new(a, Config::client()).with_udp(true);
    let mut flow = pf.open_udp(53).await.unwrap();
    let _ = flow.send(b"query").await;
    let _ = tokio::time::timeout(Duration::from_secs(10), flow.recv()).await;
    match flow.finish().await {
        Err(ForwardError::Remote(text)) => {
            assert!(text.contains("no TCP in this test (port 53)"), "{text}")
        }
        other => panic!("expected the TCP dial's error, got {other:?}"),
    }
}
