//! The forwarding loop against a real in-process port-forward server (relay's SPDY server over
//! real TCP sockets, with a loopback `PodDialer`): per-connection isolation, reconnect after the
//! server side drops, kubectl mode, and Ctrl-C shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use porthole_client::forward::{self, ConnectError, Connector, Listener, NewSession, Options};
use porthole_client::output::{Output, OutputFormat};
use porthole_client::ports::ResolvedPort;
use porthole_relay::dial::{DialError, DialFuture, PodDialer};
use porthole_relay::portforward::spdy_client::PortForwarder;
use porthole_test::{echo, RefusedPort};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Dials 127.0.0.1:port, like the node agent dials inside a pod.
struct Loopback;

impl PodDialer for Loopback {
    fn dial(&self, port: u16) -> DialFuture {
        Box::pin(async move {
            TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| {
                DialError::io(
                    format!("failed to connect to localhost:{port} inside namespace \"test\": {e}"),
                    e,
                )
            })
        })
    }
    fn pod_id(&self) -> String {
        "test-sandbox".into()
    }
}

/// The "node": accepts TCP connections and serves port-forward sessions on them until killed.
struct Node {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Duplicates of the accepted sockets, so `kill` can cut them whatever task owns them.
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Node {
    async fn start() -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (stop2, sockets2) = (stop.clone(), sockets.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    Ok((tcp, _)) = listener.accept() => {
                        let std = tcp.into_std().unwrap();
                        sockets2.lock().unwrap().push(std.try_clone().unwrap());
                        let tcp = TcpStream::from_std(std).unwrap();
                        let cfg = porthole_relay::portforward::spdy_server::ServerConfig::default();
                        tokio::spawn(porthole_relay::portforward::spdy_server::serve(tcp, Arc::new(Loopback), cfg));
                    }
                }
            }
        });
        Node {
            addr,
            stop,
            task,
            sockets,
        }
    }

    /// Like kill -9 of the node: the listener closes and every connection is cut.
    async fn kill(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Connects to whatever node is current; counts attempts so tests can wait for a reconnect.
struct TestConnector {
    node: Mutex<Option<SocketAddr>>,
    remote_ports: Vec<u16>,
    attempts: Notify,
    spdy: porthole_relay::spdy::Config,
}

impl TestConnector {
    async fn session(&self) -> Result<NewSession, ConnectError> {
        let addr = *self.node.lock().unwrap();
        let down = || ConnectError {
            message: "error: node is down".into(),
            gone: false,
        };
        let addr = addr.ok_or_else(down)?;
        let tcp = TcpStream::connect(addr).await.map_err(|_| down())?;
        Ok(NewSession {
            pod: "pod-a".into(),
            ports: self
                .remote_ports
                .iter()
                .map(|&r| ResolvedPort {
                    local: 0,
                    remote: r,
                })
                .collect(),
            forwarder: PortForwarder::new(tcp, self.spdy.clone()),
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
        Box::pin(async move {
            self.attempts.notify_one();
            self.session().await.map(|s| vec![s])
        })
    }
}

struct Harness {
    connector: Arc<TestConnector>,
    local_ports: Vec<u16>,
    shutdown: CancellationToken,
    run: JoinHandle<ExitCode>,
}

/// A TCP relay that can black-hole its connections (stop moving bytes without closing), like a
/// network cut or an expired NAT entry: only keepalive can tell.
struct Blackhole {
    addr: SocketAddr,
    freeze: CancellationToken,
}

async fn blackhole(target: SocketAddr) -> Blackhole {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let freeze = CancellationToken::new();
    let freeze2 = freeze.clone();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            let mut b = TcpStream::connect(target).await.unwrap();
            let freeze = freeze2.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                    // Keep both sockets open and silent.
                    _ = freeze.cancelled() => std::future::pending::<()>().await,
                }
            });
        }
    });
    Blackhole { addr, freeze }
}

async fn start_via(addr: SocketAddr, remote_ports: Vec<u16>, options: Options) -> Harness {
    let node = Node {
        addr,
        stop: CancellationToken::new(),
        task: tokio::spawn(async {}),
        sockets: Default::default(),
    };
    start(&node, remote_ports, options).await
}

async fn start(node: &Node, remote_ports: Vec<u16>, options: Options) -> Harness {
    let connector = Arc::new(TestConnector {
        node: Mutex::new(Some(node.addr)),
        remote_ports: remote_ports.clone(),
        attempts: Notify::new(),
        spdy: {
            let mut spdy = porthole_relay::spdy::Config::client();
            spdy.session.ping_interval = Some(Duration::from_millis(100));
            spdy.session.ping_timeout = Duration::from_millis(300);
            spdy
        },
    });
    let initial = connector.session().await.unwrap();
    let addrs = porthole_client::listen::parse_addresses(&["127.0.0.1"]).unwrap();
    let mut listeners = Vec::new();
    let mut local_ports = Vec::new();
    for i in 0..remote_ports.len() {
        let b = porthole_client::listen::listen_port(&addrs, 0, |_, _| {}).unwrap();
        local_ports.push(b.local_port);
        listeners.push(Listener {
            spec_index: i,
            local_port: b.local_port,
            sockets: b.listeners.into_iter().map(|(_, l)| l).collect(),
        });
    }
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(forward::serve(
        listeners,
        vec![initial],
        connector.clone(),
        options,
        Output::new(OutputFormat::Json),
        shutdown.clone(),
    ));
    Harness {
        connector,
        local_ports,
        shutdown,
        run,
    }
}

async fn echo_roundtrip(port: u16, msg: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, msg);
}

/// A connection to a refused pod port is closed without data.
async fn expect_refused(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("the forward of a refused port ends its connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

fn fast() -> Options {
    Options {
        pod_running_timeout: Duration::from_secs(20),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..Options::default()
    }
}

#[tokio::test]
async fn refused_port_fails_only_that_connection() {
    let node = Node::start().await;
    let echo = echo::tcp().await.port();
    let refused = RefusedPort::new();
    let h = start(&node, vec![echo, refused.port()], fast()).await;
    echo_roundtrip(h.local_ports[0], b"before").await;
    expect_refused(h.local_ports[1]).await;
    expect_refused(h.local_ports[1]).await;
    // The session and the other listener live on.
    echo_roundtrip(h.local_ports[0], b"after").await;
    assert!(!h.run.is_finished());
    h.shutdown.cancel();
    assert_eq!(
        format!("{:?}", h.run.await.unwrap()),
        format!("{:?}", ExitCode::SUCCESS)
    );
    node.kill().await;
}

#[tokio::test]
async fn reconnects_after_the_node_drops() {
    let node = Node::start().await;
    let echo = echo::tcp().await.port();
    let h = start(&node, vec![echo], fast()).await;
    echo_roundtrip(h.local_ports[0], b"first").await;

    // Kill the node; the supervisor notices the session is gone and starts reconnecting.
    *h.connector.node.lock().unwrap() = None;
    node.kill().await;
    h.connector.attempts.notified().await;

    // The listener is still open: a connection made during the gap waits for the new session.
    let pending = tokio::spawn(echo_roundtrip(h.local_ports[0], b"during the gap"));
    let node = Node::start().await;
    *h.connector.node.lock().unwrap() = Some(node.addr);
    pending.await.unwrap();
    echo_roundtrip(h.local_ports[0], b"after").await;

    h.shutdown.cancel();
    assert_eq!(
        format!("{:?}", h.run.await.unwrap()),
        format!("{:?}", ExitCode::SUCCESS)
    );
    node.kill().await;
}

#[tokio::test]
async fn kubectl_mode_exits_on_the_first_error_text() {
    let node = Node::start().await;
    let refused = RefusedPort::new();
    let h = start(
        &node,
        vec![refused.port()],
        Options {
            reconnect: false,
            ..fast()
        },
    )
    .await;
    expect_refused(h.local_ports[0]).await;
    assert_eq!(
        format!("{:?}", h.run.await.unwrap()),
        format!("{:?}", ExitCode::FAILURE)
    );
    node.kill().await;
}

#[tokio::test]
async fn kubectl_mode_exits_when_the_session_drops() {
    let node = Node::start().await;
    let echo = echo::tcp().await.port();
    let h = start(
        &node,
        vec![echo],
        Options {
            reconnect: false,
            ..fast()
        },
    )
    .await;
    echo_roundtrip(h.local_ports[0], b"x").await;
    node.kill().await;
    assert_eq!(
        format!("{:?}", h.run.await.unwrap()),
        format!("{:?}", ExitCode::FAILURE)
    );
}

#[tokio::test]
async fn shutdown_closes_listeners_and_the_session() {
    let node = Node::start().await;
    let echo = echo::tcp().await.port();
    let h = start(&node, vec![echo], fast()).await;
    // An open forwarded connection at Ctrl-C time.
    let mut open = TcpStream::connect(("127.0.0.1", h.local_ports[0]))
        .await
        .unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).await.unwrap();

    h.shutdown.cancel();
    let code = tokio::time::timeout(Duration::from_secs(5), h.run)
        .await
        .expect("prompt exit")
        .unwrap();
    assert_eq!(format!("{:?}", code), format!("{:?}", ExitCode::SUCCESS));
    // The forwarded connection was closed and the listener is gone.
    let n = open.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert!(TcpStream::connect(("127.0.0.1", h.local_ports[0]))
        .await
        .is_err());
    node.kill().await;
}

#[tokio::test]
async fn black_holed_session_is_declared_dead_and_replaced() {
    let node = Node::start().await;
    let echo = echo::tcp().await.port();
    let hole = blackhole(node.addr).await;
    let h = start_via(hole.addr, vec![echo], fast()).await;
    echo_roundtrip(h.local_ports[0], b"before").await;

    // Cut the path silently; new sessions go straight to the node.
    *h.connector.node.lock().unwrap() = Some(node.addr);
    let cut = tokio::time::Instant::now();
    hole.freeze.cancel();
    h.connector.attempts.notified().await;
    // 100 ms pings, 300 ms ping timeout: noticed well within a second, not a TCP timeout.
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "took {:?}",
        cut.elapsed()
    );
    echo_roundtrip(h.local_ports[0], b"after").await;

    h.shutdown.cancel();
    assert_eq!(
        format!("{:?}", h.run.await.unwrap()),
        format!("{:?}", ExitCode::SUCCESS)
    );
    node.kill().await;
}
