//! The WebSocket channel-protocol server end to end (PROTOCOL.md §5) with loopback "pods".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use porthole_proto::ws::frame::{encode_close, MessageDecoder};
use porthole_proto::ws::{ChannelProtocol, CloseCode, Message, Role};
use porthole_relay::dial::{DialError, DialFuture, PodDialer};
use porthole_relay::portforward::spdy_server::{ServeError, ServerConfig};
use porthole_relay::portforward::ws_client::{ChannelClient, PortEvent, WsClientError};
use porthole_relay::portforward::ws_server::serve;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

/// Maps pod ports to loopback listeners; unknown ports fail like a refused dial.
struct LoopbackDialer {
    ports: HashMap<u16, SocketAddr>,
}

impl PodDialer for LoopbackDialer {
    fn dial(&self, port: u16) -> DialFuture {
        let addr = self.ports.get(&port).copied();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| {
                DialError::new(format!(
                    "failed to connect to localhost:{port} inside namespace \"test\": no listener"
                ))
            })?;
            TcpStream::connect(addr).await.map_err(|e| {
                DialError::io(
                    format!(
                    "failed to connect to localhost:{port} inside namespace \"test\", IPv4: {e}"
                ),
                    e,
                )
            })
        })
    }

    fn pod_id(&self) -> String {
        "test-pod".to_owned()
    }
}

/// A pod app that answers `<tag>` + each chunk it reads, and closes after `rounds` chunks.
async fn echo_app(tag: &'static str, rounds: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        for _ in 0..rounds {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            let mut reply = tag.as_bytes().to_vec();
            reply.extend_from_slice(&buf[..n]);
            s.write_all(&reply).await.unwrap();
        }
    });
    addr
}

/// A pod app that reads to EOF (the client's half-close) and then answers with the count.
async fn count_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
    });
    addr
}

fn start(
    proto: ChannelProtocol,
    ports: Vec<u16>,
    map: HashMap<u16, SocketAddr>,
    cfg: ServerConfig,
) -> (
    DuplexStream,
    tokio::task::JoinHandle<Result<(), ServeError>>,
) {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let dialer = Arc::new(LoopbackDialer { ports: map });
    let server = tokio::spawn(serve(server_io, proto, ports, dialer, cfg));
    (client_io, server)
}

/// Raw client: sends masked frames and reads server messages.
struct RawClient {
    io: DuplexStream,
    decoder: MessageDecoder,
    buf: BytesMut,
}

impl RawClient {
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self
                .decoder
                .decode(&mut self.buf)
                .expect("server frames are valid")
            {
                return Some(m);
            }
            if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, channel: u8, data: &[u8]) {
        let mut out = BytesMut::new();
        ChannelProtocol::V4Binary.encode_frame(&mut out, channel, data, Some([3, 1, 4, 1]));
        self.io.write_all(&out).await.unwrap();
    }
}

#[tokio::test]
async fn two_ports_and_a_refused_one() {
    let a = echo_app("A:", 1).await;
    let b = echo_app("B:", 1).await;
    // A port nobody listens on: bind, note the port, close.
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let ports = vec![8080, 9999, 9090];
    let map = HashMap::from([(8080, a), (9999, refused), (9090, b)]);
    let (io, server) = start(
        ChannelProtocol::V4Binary,
        ports,
        map,
        ServerConfig::default(),
    );
    let mut c = RawClient {
        io,
        decoder: MessageDecoder::new(Role::Client),
        buf: BytesMut::new(),
    };

    // §5.4: one prefix per channel, in order, before anything else.
    for (ch, port) in [
        (0u8, 8080u16),
        (1, 8080),
        (2, 9999),
        (3, 9999),
        (4, 9090),
        (5, 9090),
    ] {
        let mut want = vec![ch];
        want.extend_from_slice(&port.to_le_bytes());
        assert_eq!(c.next().await, Some(Message::Binary(Bytes::from(want))));
    }
    c.send(0, b"hello a").await;
    c.send(4, b"hello b").await;
    // Writes to an error channel and unknown channels are dropped silently.
    c.send(1, b"ignored").await;
    c.send(42, b"ignored").await;

    let mut per_channel: HashMap<u8, Vec<u8>> = HashMap::new();
    let close = loop {
        match c.next().await.expect("server closes with a Close frame") {
            Message::Binary(p) => per_channel
                .entry(p[0])
                .or_default()
                .extend_from_slice(&p[1..]),
            Message::Close(cl) => break cl,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.map(|c| c.code), Some(CloseCode::NORMAL));
    assert_eq!(
        per_channel.get(&0).map(Vec::as_slice),
        Some(&b"A:hello a"[..])
    );
    assert_eq!(
        per_channel.get(&4).map(Vec::as_slice),
        Some(&b"B:hello b"[..])
    );
    let err = String::from_utf8(per_channel.get(&3).cloned().unwrap_or_default()).unwrap();
    assert!(
        err.starts_with(
            "error forwarding port 9999 to pod test-pod, uid : failed to connect to localhost:9999"
        ),
        "{err}"
    );
    // Only the refused port's error channel carries text.
    assert!(!per_channel.contains_key(&1) && !per_channel.contains_key(&5));
    assert!(!per_channel.contains_key(&2));

    let mut out = BytesMut::new();
    encode_close(&mut out, Some((CloseCode::NORMAL, "")), Some([1, 1, 1, 1]));
    c.io.write_all(&out).await.unwrap();
    server.await.unwrap().expect("server ends cleanly");
}

#[tokio::test]
async fn v5_close_signal_half_closes_toward_the_pod() {
    let app = count_app().await;
    let (io, server) = start(
        ChannelProtocol::V5Binary,
        vec![5432],
        HashMap::from([(5432, app)]),
        ServerConfig::default(),
    );
    let (client, mut ports) = ChannelClient::connect(io, ChannelProtocol::V5Binary, vec![5432])
        .await
        .expect("port prefixes arrive");
    let mut port = ports.remove(0);
    assert_eq!(port.port(), 5432);
    port.send(&vec![b'x'; 100_000]).await.unwrap();
    port.close_write().await.unwrap();
    let mut got = Vec::new();
    while let Some(ev) = port.recv().await {
        match ev {
            PortEvent::Data(d) => got.extend_from_slice(&d),
            PortEvent::Error(e) => panic!("unexpected error text {e}"),
        }
    }
    assert_eq!(got, b"got 100000 bytes");
    // The pod connection ended, so the server closed the WebSocket.
    client.wait().await.expect("clean close");
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn base64_forward_of_a_local_connection() {
    let app = echo_app("E:", 1).await;
    let (io, server) = start(
        ChannelProtocol::V4Base64,
        vec![80],
        HashMap::from([(80, app)]),
        ServerConfig::default(),
    );
    let (client, mut ports) = ChannelClient::connect(io, ChannelProtocol::V4Base64, vec![80])
        .await
        .unwrap();
    let port = ports.remove(0);
    assert!(matches!(
        port.close_write().await,
        Err(WsClientError::NoCloseSignal(_))
    ));

    // A local TCP connection forwarded through the port.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let user = tokio::spawn(async move {
        let mut s = TcpStream::connect(local_addr).await.unwrap();
        s.write_all(b"GET /").await.unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.unwrap();
        reply
    });
    let (accepted, _) = local.accept().await.unwrap();
    port.forward(accepted)
        .await
        .expect("forward ends when the pod closes");
    assert_eq!(user.await.unwrap(), b"E:GET /");
    client.wait().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn refused_port_reports_through_the_client() {
    let (io, server) = start(
        ChannelProtocol::V4Binary,
        vec![81],
        HashMap::new(),
        ServerConfig::default(),
    );
    let (client, mut ports) = ChannelClient::connect(io, ChannelProtocol::V4Binary, vec![81])
        .await
        .unwrap();
    let mut port = ports.remove(0);
    match port.recv().await {
        Some(PortEvent::Error(text)) => assert_eq!(
            text,
            "error forwarding port 81 to pod test-pod, uid : failed to connect to localhost:81 inside namespace \"test\": no listener"
        ),
        other => panic!("expected the error text, got {other:?}"),
    }
    assert_eq!(port.recv().await, None);
    client.wait().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_close_and_pod_gone_end_the_server() {
    // Client Close: the server answers and returns Ok; the pod sees EOF.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let pod = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
        all
    });
    let (io, server) = start(
        ChannelProtocol::V4Binary,
        vec![1],
        HashMap::from([(1, addr)]),
        ServerConfig::default(),
    );
    let (client, ports) = ChannelClient::connect(io, ChannelProtocol::V4Binary, vec![1])
        .await
        .unwrap();
    ports[0].send(b"abc").await.unwrap();
    client.close().await.unwrap();
    server.await.unwrap().unwrap();
    let seen = pod.await.unwrap();
    assert!(seen.is_empty() || seen == b"abc");

    // Pod deleted: the active port gets the error text, then the WebSocket closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = s.read_to_end(&mut Vec::new()).await;
    });
    let cfg = ServerConfig::default();
    let gone = cfg.pod_gone.clone();
    let (io, server) = start(
        ChannelProtocol::V4Binary,
        vec![1],
        HashMap::from([(1, addr)]),
        cfg,
    );
    let (client, _ports) = ChannelClient::connect(io, ChannelProtocol::V4Binary, vec![1])
        .await
        .unwrap();
    gone.cancel();
    client.wait().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = s.read_to_end(&mut Vec::new()).await;
    });
    let cfg = ServerConfig {
        idle_timeout: std::time::Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let (io, server) = start(
        ChannelProtocol::V4Binary,
        vec![1],
        HashMap::from([(1, addr)]),
        cfg,
    );
    let (client, _ports) = ChannelClient::connect(io, ChannelProtocol::V4Binary, vec![1])
        .await
        .unwrap();
    // An idle timeout is a normal end (as for SPDY); the client sees Close 1001.
    server.await.unwrap().unwrap();
    let r = client.wait().await;
    assert!(r.is_ok(), "{r:?}");
}

/// A [`LoopbackDialer`] that records every `forward_ended` report.
struct Recording {
    inner: LoopbackDialer,
    ended: std::sync::Mutex<Vec<(u16, porthole_relay::dial::ForwardBytes)>>,
}

impl PodDialer for Recording {
    fn dial(&self, port: u16) -> DialFuture {
        self.inner.dial(port)
    }
    fn pod_id(&self) -> String {
        self.inner.pod_id()
    }
    fn forward_ended(&self, port: u16, bytes: porthole_relay::dial::ForwardBytes) {
        self.ended.lock().unwrap().push((port, bytes));
    }
}

#[tokio::test]
async fn a_finished_forward_reports_its_bytes_once() {
    let app = count_app().await;
    let dialer = Arc::new(Recording {
        inner: LoopbackDialer {
            ports: HashMap::from([(5432, app)]),
        },
        ended: Default::default(),
    });
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(serve(
        server_io,
        ChannelProtocol::V5Binary,
        vec![5432, 81],
        dialer.clone(),
        ServerConfig::default(),
    ));
    let (client, mut ports) =
        ChannelClient::connect(client_io, ChannelProtocol::V5Binary, vec![5432, 81])
            .await
            .expect("port prefixes arrive");
    let refused = ports.remove(1);
    let mut port = ports.remove(0);
    port.send(&vec![b'x'; 100_000]).await.unwrap();
    port.close_write().await.unwrap();
    let mut got = Vec::new();
    while let Some(PortEvent::Data(d)) = port.recv().await {
        got.extend_from_slice(&d);
    }
    assert_eq!(got, b"got 100000 bytes");
    drop(refused);
    client.wait().await.expect("clean close");
    server.await.unwrap().unwrap();
    let ended = dialer.ended.lock().unwrap().clone();
    // Port 81 has no listener: its dial failed and it has nothing to report.
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].0, 5432);
    assert_eq!(
        (ended[0].1.to_pod, ended[0].1.from_pod),
        (100_000, b"got 100000 bytes".len() as u64)
    );
}
