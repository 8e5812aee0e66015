//! UDP flows in the forwarding loop against a real in-process port-forward server (relay's
//! SPDY server with the `udp` extension on, over real TCP, with a loopback UDP dialer): one
//! flow per source, replies to the right source, a new flow on the new session after the
//! node drops, and the idle timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use porthole_client::forward::{self, ConnectError, Connector, NewSession, Options};
use porthole_client::output::{Event, Output, OutputFormat};
use porthole_client::ports::ResolvedPort;
use porthole_client::udp::{bind_port, UdpListener, UdpOptions};
use porthole_relay::dial::{DialError, DialFuture, PodDialer, UdpDialFuture};
use porthole_relay::portforward::spdy_client::PortForwarder;
use porthole_relay::portforward::spdy_server::{self, ServerConfig};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The host's loopback as the pod's.
struct Loopback;

impl PodDialer for Loopback {
    fn dial(&self, port: u16) -> DialFuture {
        Box::pin(async move { Err(DialError::new(format!("no TCP here ({port})"))) })
    }
    fn dial_udp(&self, port: u16, _ipv6: bool) -> UdpDialFuture {
        Box::pin(async move {
            let fail = |e: std::io::Error| DialError::io(e.to_string(), e);
            let s = UdpSocket::bind("127.0.0.1:0").await.map_err(fail)?;
            s.connect(("127.0.0.1", port)).await.map_err(fail)?;
            Ok(s)
        })
    }
    fn pod_id(&self) -> String {
        "udp-sandbox".into()
    }
}

/// A "node" granting `udp`; `kill` cuts every session it served.
struct Node {
    addr: SocketAddr,
    stop: CancellationToken,
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Node {
    async fn start() -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (stop2, sockets2) = (stop.clone(), sockets.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    Ok((tcp, _)) = listener.accept() => {
                        let std = tcp.into_std().unwrap();
                        sockets2.lock().unwrap().push(std.try_clone().unwrap());
                        let cfg = ServerConfig { udp: true, ..ServerConfig::default() };
                        tokio::spawn(spdy_server::serve(TcpStream::from_std(std).unwrap(), Arc::new(Loopback), cfg));
                    }
                }
            }
        });
        Node {
            addr,
            stop,
            sockets,
        }
    }

    fn kill(self) {
        self.stop.cancel();
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

struct TestConnector {
    node: Mutex<SocketAddr>,
    remote: u16,
}

impl TestConnector {
    async fn session(&self) -> Result<NewSession, ConnectError> {
        let addr = *self.node.lock().unwrap();
        let tcp = TcpStream::connect(addr).await.map_err(|_| ConnectError {
            message: "error: node is down".into(),
            gone: false,
        })?;
        let mut spdy = porthole_relay::spdy::Config::client();
        spdy.session.ping_interval = Some(Duration::from_millis(100));
        spdy.session.ping_timeout = Duration::from_millis(300);
        Ok(NewSession {
            pod: "pod-u".into(),
            ports: vec![ResolvedPort {
                local: 0,
                remote: self.remote,
            }],
            forwarder: PortForwarder::new(tcp, spdy).with_udp(true),
            transport: "spdy",
        })
    }
}

impl Connector for TestConnector {
    fn connect<'a>(
        &'a self,
        _max: usize,
        _exclude: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<NewSession>, ConnectError>> {
        Box::pin(async move { self.session().await.map(|s| vec![s]) })
    }
}

/// A UDP echo "pod" that prefixes each echo with the sender's port, so a test can tell flows
/// apart by what reached the pod.
async fn echo_pod() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = s.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut out = from.port().to_be_bytes().to_vec();
            out.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&out, from).await;
        }
    });
    port
}

/// Sends `msg` from `sock` until an answer arrives (UDP clients retry; a datagram sent while
/// the session is being replaced may be lost), bounded by 20 s. Returns (pod-side source port,
/// payload).
async fn ask(sock: &UdpSocket, to: u16, msg: &[u8]) -> (u16, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 2048];
    loop {
        sock.send_to(msg, (Ipv4Addr::LOCALHOST, to)).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                assert_eq!(from.port(), to, "answer from another socket");
                return (u16::from_be_bytes([buf[0], buf[1]]), buf[2..n].to_vec());
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no answer to {msg:?} within 20 s"
            ),
        }
    }
}

#[tokio::test]
async fn flows_per_source_survive_a_node_restart_and_end_when_idle() {
    let node = Node::start().await;
    let echo = echo_pod().await;
    let connector = Arc::new(TestConnector {
        node: Mutex::new(node.addr),
        remote: echo,
    });
    let initial = connector.session().await.unwrap();
    let addrs = porthole_client::listen::parse_addresses(&["127.0.0.1"]).unwrap();
    let (local, sockets) = bind_port(&addrs, 0, |_, _| {}).unwrap();
    let listener = UdpListener {
        spec_index: 0,
        spec: format!("0:{echo}/udp"),
        local_port: local,
        sockets,
    };
    let udp_options = UdpOptions {
        idle_timeout: Duration::from_millis(1500),
        ..UdpOptions::default()
    };
    let (tap, mut events) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let options = Options {
        pod_running_timeout: Duration::from_secs(20),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..Options::default()
    };
    let run = tokio::spawn(forward::serve_with_udp(
        Vec::new(),
        (vec![listener], udp_options),
        vec![initial],
        connector.clone(),
        options,
        Output::new(OutputFormat::Json).with_tap(tap),
        shutdown.clone(),
    ));

    // Two sources, two flows: each gets its own answers, from its own pod-side socket.
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (a_flow, got) = ask(&a, local, b"a1").await;
    assert_eq!(got, b"a1");
    let (b_flow, got) = ask(&b, local, b"b1").await;
    assert_eq!(got, b"b1");
    assert_ne!(a_flow, b_flow, "two sources shared one flow");
    // The same source stays on its flow.
    assert_eq!(ask(&a, local, b"a2").await, (a_flow, b"a2".to_vec()));

    // The node dies; a new one comes up. The next datagrams open flows on the new session.
    let node2 = Node::start().await;
    *connector.node.lock().unwrap() = node2.addr;
    node.kill();
    let (a_flow2, got) = ask(&a, local, b"a3").await;
    assert_eq!(got, b"a3");
    assert_ne!(a_flow2, a_flow, "still on the dead session's flow");

    // Idle: every flow ends on its own, without an error.
    let mut closed = Vec::new();
    while closed.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("flows close after the idle timeout")
            .expect("run still going");
        if let Event::UdpFlowClosed { id, error, .. } = ev {
            closed.push((id, error));
        }
    }
    // a's and b's first flows ended with their session, a's second one after being idle.
    let last = closed.last().unwrap();
    assert_eq!(last.1, None, "idle flow ended with an error: {closed:?}");

    shutdown.cancel();
    let code = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("prompt exit")
        .unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS)
    );
    node2.kill();
}
