//! spdy_server::serve + spdy_client::PortForwarder over an in-memory connection, with pods
//! simulated by loopback TCP listeners.

use std::sync::Arc;
use std::time::Duration;

use porthole_relay::dial::{DialError, DialFuture, PodDialer};
use porthole_relay::portforward::spdy_client::{ForwardError, PortForwarder};
use porthole_relay::portforward::spdy_server::{self, ServerConfig};
use porthole_relay::spdy::{Config, Connection, Role, StreamOpenError};
use porthole_test::spdy::{headers, Peer};
use porthole_test::{echo, RefusedPort};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Loopback;

impl PodDialer for Loopback {
    fn dial(&self, port: u16) -> DialFuture {
        Box::pin(async move {
            TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| {
                DialError::io(format!("failed to connect to localhost:{port}: {e}"), e)
            })
        })
    }
    fn pod_id(&self) -> String {
        "pod-123".into()
    }
}

fn start(
    cfg: ServerConfig,
) -> (
    PortForwarder,
    tokio::task::JoinHandle<Result<(), spdy_server::ServeError>>,
) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(spdy_server::serve(b, Arc::new(Loopback), cfg));
    (PortForwarder::new(a, Config::client()), server)
}

#[tokio::test]
async fn data_round_trip_over_tcp() {
    let port = echo::tcp().await.port();
    let (pf, _server) = start(ServerConfig::default());
    let local_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut app = TcpStream::connect(local_l.local_addr().unwrap())
        .await
        .unwrap();
    let (local, _) = local_l.accept().await.unwrap();
    let fwd = tokio::spawn(async move { pf.forward_tcp(local, port).await });
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = app.split();
    let (_, echoed) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            out
        }
    );
    assert_eq!(echoed, data);
    let report = fwd.await.unwrap().unwrap();
    assert_eq!((report.bytes_in, report.bytes_out), (3_000_000, 3_000_000));
}

#[tokio::test]
async fn refused_port_fails_only_that_pair() {
    let good = echo::tcp().await.port();
    let refused = RefusedPort::new();
    let bad = refused.port();
    let (pf, _server) = start(ServerConfig::default());
    let pf = Arc::new(pf);
    // A long-lived pair on the good port.
    let (mut app, local) = tokio::io::duplex(1 << 16);
    let pf2 = pf.clone();
    let first = tokio::spawn(async move { pf2.forward(local, good).await });
    app.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    app.read_exact(&mut buf).await.unwrap();
    // The refused pair.
    let (_app2, local2) = tokio::io::duplex(1 << 16);
    let err = pf.forward(local2, bad).await.unwrap_err();
    let ForwardError::Remote(text) = err else {
        panic!("{err:?}")
    };
    assert!(
        text.starts_with(&format!("error forwarding port {bad} to pod pod-123, uid : failed to connect to localhost:{bad}")),
        "{text}"
    );
    // The first pair still works.
    app.write_all(b"two").await.unwrap();
    app.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two");
    app.shutdown().await.unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    assert!(first.await.unwrap().is_ok());
}

#[tokio::test]
async fn half_close_waits_for_late_answer() {
    // The pod reads the request to EOF, thinks for 1.5 s (past containerd's 1 s cut), answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(format!("got {} bytes", req.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let (pf, _server) = start(ServerConfig::default());
    let (mut app, local) = tokio::io::duplex(1 << 16);
    let fwd = tokio::spawn(async move { pf.forward(local, port).await });
    app.write_all(b"request").await.unwrap();
    app.shutdown().await.unwrap();
    let mut ans = String::new();
    app.read_to_string(&mut ans).await.unwrap();
    assert_eq!(ans, "got 7 bytes");
    fwd.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn invalid_headers_rejected_and_creation_timeout_text() {
    let (a, b) = tokio::io::duplex(1 << 20);
    tokio::spawn(spdy_server::serve(
        b,
        Arc::new(Loopback),
        ServerConfig::default(),
    ));
    let (c, _ci) = Connection::new(a, Role::Client, Config::client());
    for bad in [
        headers(&[("streamtype", "data")]),
        headers(&[("port", "x"), ("streamtype", "data")]),
        headers(&[("port", "0"), ("streamtype", "data")]),
        headers(&[("port", "80")]),
        headers(&[("port", "80"), ("streamtype", "bogus")]),
    ] {
        assert_eq!(
            c.open_stream(bad).await.unwrap_err(),
            StreamOpenError::Reset
        );
    }
    let mut err = c
        .open_stream(headers(&[
            ("streamtype", "error"),
            ("port", "80"),
            ("requestid", "7"),
        ]))
        .await
        .unwrap();
    err.shutdown().await.unwrap();
    let t0 = tokio::time::Instant::now();
    let mut text = String::new();
    err.read_to_string(&mut text).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(30));
    assert!(
        text.starts_with("(conn=0x")
            && text.ends_with(", request=7) timed out waiting for streams"),
        "{text}"
    );
    // Duplicate stream of a pending pair.
    let mut e1 = c
        .open_stream(headers(&[
            ("streamtype", "error"),
            ("port", "80"),
            ("requestid", "8"),
        ]))
        .await
        .unwrap();
    let _e2 = c
        .open_stream(headers(&[
            ("streamtype", "error"),
            ("port", "80"),
            ("requestid", "8"),
        ]))
        .await
        .unwrap();
    let mut buf = vec![0u8; 200];
    let n = e1.read(&mut buf).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        "error processing stream for request 8: error stream already assigned"
    );
}

#[tokio::test]
async fn pod_gone_ends_active_pairs_and_fails_new_ones() {
    let port = echo::tcp().await.port();
    let cfg = ServerConfig::default();
    let gone = cfg.pod_gone.clone();
    let (pf, _server) = start(cfg);
    let pf = Arc::new(pf);
    let (mut app, local) = tokio::io::duplex(1 << 16);
    let pf2 = pf.clone();
    let active = tokio::spawn(async move { pf2.forward(local, port).await });
    app.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    app.read_exact(&mut buf).await.unwrap();
    gone.cancel();
    let err = active.await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("error forwarding port {port} to pod pod-123, uid : pod pod-123 was deleted")
    );
    let (_app, local) = tokio::io::duplex(1 << 16);
    let err = pf.forward(local, port).await.unwrap_err();
    assert!(matches!(err, ForwardError::Remote(t) if t.ends_with("was deleted")));
    // The connection itself lives on.
    assert!(!pf.connection().is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parallel_forwards() {
    let port = echo::tcp().await.port();
    let (pf, _server) = start(ServerConfig::default());
    let pf = Arc::new(pf);
    let mut tasks = Vec::new();
    for i in 0..50u8 {
        let pf = pf.clone();
        tasks.push(tokio::spawn(async move {
            let (mut app, local) = tokio::io::duplex(1 << 16);
            let fwd = tokio::spawn({
                let pf = pf.clone();
                async move { pf.forward(local, port).await }
            });
            let data = vec![i; 100_000];
            let (mut r, mut w) = tokio::io::split(app);
            let d = data.clone();
            let wt = tokio::spawn(async move {
                w.write_all(&d).await.unwrap();
                w.shutdown().await.unwrap();
                w
            });
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            app = r.unsplit(wt.await.unwrap());
            drop(app);
            assert_eq!(out, data);
            fwd.await.unwrap().unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        pf.connection().stats().streams,
        0,
        "finished pairs are forgotten"
    );
    pf.shutdown().await;
}

/// Towards a porthole node (flow control negotiated) the error stream's FIN and the prefix
/// leave right behind the SYN_STREAMs, before any reply: the peer here never replies and still
/// gets them all.
#[tokio::test]
async fn early_data_rides_with_the_syn_streams() {
    use porthole_proto::spdy::frame::Frame;

    let (a, node) = tokio::io::duplex(1 << 20);
    let mut cfg = Config::client();
    cfg.session.flow_control = true;
    let pf = PortForwarder::new(a, cfg);
    assert!(pf.sends_early_data());
    let (_app, local) = tokio::io::duplex(1 << 16);
    let fwd = tokio::spawn(async move {
        pf.forward_with_prefix(local, 8080, b"GET / HTTP/1.1\r\n\r\n")
            .await
    });
    let mut node = Peer::new(node);
    let mut seen = Vec::new();
    let read_all = async {
        while seen.len() < 4 {
            let f = node.next_frame().await;
            match f.unwrap_or_else(|| panic!("client closed: {seen:?}")) {
                Frame::SynStream(s) => {
                    let t = node.last_header("streamtype").unwrap();
                    seen.push(format!("SYN_STREAM {} {t}", s.stream_id));
                }
                Frame::Data(d) => seen.push(format!(
                    "DATA {} fin={} {:?}",
                    d.stream_id,
                    d.is_fin(),
                    String::from_utf8_lossy(&d.payload)
                )),
                // SETTINGS / WINDOW_UPDATE of the negotiated flow control.
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .unwrap_or_else(|_| panic!("no early data without a reply"));
    assert_eq!(
        seen,
        [
            "SYN_STREAM 1 error",
            "DATA 1 fin=true \"\"",
            "SYN_STREAM 3 data",
            "DATA 3 fin=false \"GET / HTTP/1.1\\r\\n\\r\\n\"",
        ]
    );
    drop(node);
    assert!(matches!(
        fwd.await.unwrap(),
        Err(ForwardError::CreateErrorStream(_))
    ));
}

/// A prefix is delivered first and counted, with and without early data (Go servers get it
/// after the replies).
#[tokio::test]
async fn prefix_then_the_rest_in_order() {
    let port = echo::tcp().await.port();
    for flow_control in [true, false] {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server_cfg = ServerConfig {
            flow_control,
            ..ServerConfig::default()
        };
        let _server = tokio::spawn(spdy_server::serve(b, Arc::new(Loopback), server_cfg));
        let pf = PortForwarder::new(a, {
            let mut cfg = Config::client();
            cfg.session.flow_control = flow_control;
            cfg
        });
        assert_eq!(pf.sends_early_data(), flow_control);
        let (mut app, local) = tokio::io::duplex(1 << 16);
        let fwd = tokio::spawn(async move { pf.forward_with_prefix(local, port, b"first,").await });
        app.write_all(b"then the rest").await.unwrap();
        app.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        app.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(
            echoed, b"first,then the rest",
            "flow control {flow_control}"
        );
        let report = fwd.await.unwrap().unwrap();
        assert_eq!(report.bytes_out, 19);
        assert_eq!(report.bytes_in, 19);
    }
}

/// Records every `forward_ended` report, as the node agent's metrics do.
#[derive(Default)]
struct Recording {
    ended: std::sync::Mutex<Vec<(u16, porthole_relay::dial::ForwardBytes)>>,
    changed: tokio::sync::Notify,
}

impl PodDialer for Recording {
    fn dial(&self, port: u16) -> DialFuture {
        Loopback.dial(port)
    }
    fn pod_id(&self) -> String {
        "pod-123".into()
    }
    fn forward_ended(&self, port: u16, bytes: porthole_relay::dial::ForwardBytes) {
        self.ended.lock().unwrap().push((port, bytes));
        self.changed.notify_waiters();
    }
}

impl Recording {
    async fn wait_for(&self, n: usize) -> Vec<(u16, porthole_relay::dial::ForwardBytes)> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let ended = self.ended.lock().unwrap().clone();
                if ended.len() >= n {
                    return ended;
                }
                changed.await;
            }
        })
        .await
        .expect("forward_ended reports within 10 s")
    }
}

#[tokio::test]
async fn every_forward_reports_its_bytes_once_however_it_ends() {
    let port = echo::tcp().await.port();
    let refused = RefusedPort::new();
    let bad = refused.port();
    let dialer = Arc::new(Recording::default());
    let cfg = ServerConfig::default();
    let gone = cfg.pod_gone.clone();
    let (a, b) = tokio::io::duplex(1 << 20);
    let _server = tokio::spawn(spdy_server::serve(b, dialer.clone(), cfg));
    let pf = Arc::new(PortForwarder::new(a, Config::client()));

    // A forward that ends normally: 100 KB each way.
    let (app, local) = tokio::io::duplex(1 << 16);
    let pf2 = pf.clone();
    let fwd = tokio::spawn(async move { pf2.forward(local, port).await });
    let data = vec![7u8; 100_000];
    let (mut r, mut w) = tokio::io::split(app);
    let (_, echoed) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            out
        }
    );
    assert_eq!(echoed, data);
    fwd.await.unwrap().unwrap();
    let ended = dialer.wait_for(1).await;
    assert_eq!(ended[0].0, port);
    assert_eq!((ended[0].1.to_pod, ended[0].1.from_pod), (100_000, 100_000));

    // A refused dial made no connection: nothing to report.
    let (_app, local) = tokio::io::duplex(1 << 16);
    assert!(pf.forward(local, bad).await.is_err());

    // A forward cut short by the pod's deletion still reports what it moved.
    let (mut app, local) = tokio::io::duplex(1 << 16);
    let pf2 = pf.clone();
    let active = tokio::spawn(async move { pf2.forward(local, port).await });
    app.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    app.read_exact(&mut buf).await.unwrap();
    gone.cancel();
    assert!(active.await.unwrap().is_err());
    let ended = dialer.wait_for(2).await;
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert_eq!((ended[1].1.to_pod, ended[1].1.from_pod), (4, 4));
}
