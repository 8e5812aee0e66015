//! `porthole_client::run` end to end against an in-process fake API server (plain HTTP on
//! port 0) that serves a few objects and terminates port-forward upgrades with relay's real
//! SPDY server (raw, or tunnelled in WebSocket) and a loopback pod dialer: kubeconfig loading,
//! resource resolution, the upgrade with kubectl's fallback, listeners and forwarding.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use porthole_client::output::{Event, Output, OutputFormat};
use porthole_client::Args;
use porthole_proto::handshake::{negotiate_server, Upgrade};
use porthole_relay::dial::{DialError, DialFuture, PodDialer};
use porthole_relay::portforward::spdy_server::{self, ServerConfig};
use porthole_test::echo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
        "fake-sandbox".into()
    }
}

struct Fake {
    objects: std::sync::Mutex<HashMap<String, (StatusCode, serde_json::Value)>>,
    accept_websocket: bool,
    ws_attempts: AtomicUsize,
    spdy_attempts: AtomicUsize,
}

fn pod(
    name: &str,
    phase: &str,
    ready: bool,
    port: u16,
    labels: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": port}]}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                   "lastTransitionTime": "2026-01-01T00:00:01Z"}]}
    })
}

fn not_found(kind: &str, name: &str) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
               "message": format!("{kind} \"{name}\" not found")}),
    )
}

impl Fake {
    /// Replaces pod `old` of the `app` deployment by `new` (as a rollout or eviction does).
    fn replace_app_pod(&self, old: &str, new: &str, port: u16) {
        let base = "/api/v1/namespaces/default";
        let app = json!({"app": "app"});
        let mut objects = self.objects.lock().unwrap();
        objects.insert(format!("{base}/pods/{old}"), not_found("pods", old));
        objects.insert(
            format!("{base}/pods/{new}"),
            (StatusCode::OK, pod(new, "Running", true, port, app.clone())),
        );
        objects.insert(
            format!("{base}/pods?app=app"),
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "2"},
                       "items": [pod("app-1", "Running", false, port, app.clone()), pod(new, "Running", true, port, app)]}),
            ),
        );
    }

    fn new(echo_port: u16, accept_websocket: bool) -> Fake {
        let base = "/api/v1/namespaces/default";
        let app = json!({"app": "app"});
        let mut objects = HashMap::new();
        objects.insert(
            format!("{base}/pods/web"),
            (
                StatusCode::OK,
                pod("web", "Running", true, echo_port, json!({})),
            ),
        );
        objects.insert(
            format!("{base}/pods/pending"),
            (
                StatusCode::OK,
                pod("pending", "Pending", false, echo_port, json!({})),
            ),
        );
        objects.insert(format!("{base}/pods/missing"), not_found("pods", "missing"));
        objects.insert(
            format!("{base}/pods/app-1"),
            (
                StatusCode::OK,
                pod("app-1", "Running", false, echo_port, app.clone()),
            ),
        );
        objects.insert(
            format!("{base}/pods/app-2"),
            (
                StatusCode::OK,
                pod("app-2", "Running", true, echo_port, app.clone()),
            ),
        );
        objects.insert(
            format!("{base}/pods?app=app"),
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                       "items": [pod("app-1", "Running", false, echo_port, app.clone()),
                                 pod("app-2", "Running", true, echo_port, app.clone())]}),
            ),
        );
        objects.insert(
            format!("{base}/services/svc"),
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"},
                       "spec": {"selector": {"app": "app"}, "clusterIP": "10.0.0.1",
                                "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
            ),
        );
        objects.insert(
            "/apis/apps/v1/namespaces/default/deployments/app".to_string(),
            (
                StatusCode::OK,
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": "default"},
                       "spec": {"selector": {"matchLabels": {"app": "app"}}, "template": {}}}),
            ),
        );
        // Two Ready pods behind `deploy/duo`, for --balance.
        let duo = json!({"app": "duo"});
        for name in ["duo-1", "duo-2"] {
            objects.insert(
                format!("{base}/pods/{name}"),
                (
                    StatusCode::OK,
                    pod(name, "Running", true, echo_port, duo.clone()),
                ),
            );
        }
        objects.insert(
            format!("{base}/pods?app=duo"),
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                       "items": [pod("duo-1", "Running", true, echo_port, duo.clone()),
                                 pod("duo-2", "Running", true, echo_port, duo)]}),
            ),
        );
        objects.insert(
            "/apis/apps/v1/namespaces/default/deployments/duo".to_string(),
            (
                StatusCode::OK,
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "duo", "namespace": "default"},
                       "spec": {"selector": {"matchLabels": {"app": "duo"}}, "template": {}}}),
            ),
        );
        Fake {
            objects: std::sync::Mutex::new(objects),
            accept_websocket,
            ws_attempts: AtomicUsize::new(0),
            spdy_attempts: AtomicUsize::new(0),
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let mut path = req.uri().path().to_string();
        // Lists are stored under `path?selector`.
        if let Some(sel) = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("labelSelector="))
        }) {
            path = format!("{path}?{}", sel.replace("%3D", "="));
        }
        if path.ends_with("/portforward") {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let (parts, _) = req.into_parts();
            if parts.method == Method::GET {
                self.ws_attempts.fetch_add(1, Ordering::SeqCst);
                if !self.accept_websocket {
                    // What a kubelet without the tunnel answers (PROTOCOL.md §2.5).
                    return Ok(text(
                        StatusCode::BAD_REQUEST,
                        "query parameter \"port\" is required",
                    ));
                }
            } else {
                self.spdy_attempts.fetch_add(1, Ordering::SeqCst);
            }
            let (upgrade, headers) = match negotiate_server(&parts) {
                Ok(ok) => ok,
                Err(rej) => return Ok(text(rej.status, &rej.body)),
            };
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let io = TokioIo::new(upgraded);
                let mut cfg = ServerConfig::default();
                match upgrade {
                    Upgrade::Spdy { flow_control } => {
                        cfg.flow_control = flow_control;
                        let _ = spdy_server::serve(io, Arc::new(Loopback), cfg).await;
                    }
                    Upgrade::WsTunnel { flow_control } => {
                        cfg.flow_control = flow_control;
                        let ws =
                            porthole_relay::ws::WsStream::new(io, porthole_relay::ws::Role::Server);
                        let _ = spdy_server::serve(ws, Arc::new(Loopback), cfg).await;
                    }
                    Upgrade::WsChannels { .. } => {}
                }
            });
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *resp.headers_mut() = headers;
            return Ok(resp);
        }
        let (status, body) = self
            .objects
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_else(|| not_found("things", &path));
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp
}

async fn start_fake(fake: Arc<Fake>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let fake = fake.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| fake.clone().handle(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

/// Removes the test's kubeconfig directory when the run is dropped, so tests leave nothing
/// in /tmp.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kubeconfig(api_port: u16) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "porthole-client-run-{}-{api_port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {{server: \"http://127.0.0.1:{api_port}\"}}\n\
             contexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user: {{token: t}}\n"
        ),
    )
    .unwrap();
    path
}

struct Run {
    _kubeconfig_dir: RemoveOnDrop,
    events: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::process::ExitCode>,
}

fn run(api_port: u16, argv: &[&str]) -> Run {
    let kc = kubeconfig(api_port);
    let mut full = vec![
        "port-forward".to_string(),
        "--kubeconfig".into(),
        kc.display().to_string(),
    ];
    full.extend(argv.iter().map(|s| s.to_string()));
    full.extend([
        "--address".to_string(),
        "127.0.0.1".into(),
        "-o".into(),
        "json".into(),
    ]);
    let args = Cli::try_parse_from(full).unwrap().args;
    let (tx, events) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let output = Output::new(OutputFormat::Json).with_tap(tx);
    let task = tokio::spawn(porthole_client::run_with_output(
        args,
        output,
        shutdown.clone(),
    ));
    Run {
        _kubeconfig_dir: RemoveOnDrop(kc.parent().expect("kubeconfig has a directory").into()),
        events,
        shutdown,
        task,
    }
}

impl Run {
    async fn listening(&mut self) -> (u16, u16) {
        loop {
            match self
                .events
                .recv()
                .await
                .expect("run ended before listening")
            {
                Event::Listening {
                    local_port,
                    remote_port,
                    ..
                } => return (local_port, remote_port),
                Event::Error {
                    message,
                    fatal: true,
                } => panic!("fatal: {message}"),
                _ => {}
            }
        }
    }

    async fn fatal(&mut self) -> String {
        loop {
            if let Event::Error {
                message,
                fatal: true,
            } = self.events.recv().await.expect("no fatal error")
            {
                return message;
            }
        }
    }

    async fn opened_pod(&mut self) -> String {
        loop {
            if let Event::ConnectionOpened { pod, .. } =
                self.events.recv().await.expect("no connection")
            {
                return pod;
            }
        }
    }

    async fn stop(self) -> String {
        self.shutdown.cancel();
        let code = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("prompt exit")
            .unwrap();
        format!("{code:?}")
    }
}

async fn roundtrip(port: u16, msg: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, msg);
}

fn success() -> String {
    format!("{:?}", std::process::ExitCode::SUCCESS)
}

#[tokio::test]
async fn pod_named_port_over_the_websocket_tunnel() {
    let echo = echo::tcp().await.port();
    let fake = Arc::new(Fake::new(echo, true));
    let api = start_fake(fake.clone()).await;
    let mut r = run(api, &["web", ":http"]);
    let (local, remote) = r.listening().await;
    assert_eq!(remote, echo);
    roundtrip(local, b"hello through the tunnel").await;
    assert_eq!(r.opened_pod().await, "web");
    assert_eq!(fake.ws_attempts.load(Ordering::SeqCst), 1);
    assert_eq!(fake.spdy_attempts.load(Ordering::SeqCst), 0);
    assert_eq!(r.stop().await, success());
}

#[tokio::test]
async fn refused_websocket_falls_back_to_spdy() {
    let echo = echo::tcp().await.port();
    let fake = Arc::new(Fake::new(echo, false));
    let api = start_fake(fake.clone()).await;
    let mut r = run(api, &["pod/web", &format!(":{echo}")]);
    let (local, _) = r.listening().await;
    roundtrip(local, b"hello over spdy").await;
    assert_eq!(fake.ws_attempts.load(Ordering::SeqCst), 1);
    assert_eq!(fake.spdy_attempts.load(Ordering::SeqCst), 1);
    assert_eq!(r.stop().await, success());
}

#[tokio::test]
async fn websocket_only_does_not_fall_back() {
    let fake = Arc::new(Fake::new(echo::tcp().await.port(), false));
    let api = start_fake(fake.clone()).await;
    let mut r = run(api, &["web", ":http", "--transport", "websocket"]);
    let msg = r.fatal().await;
    assert!(
        msg.starts_with("error: error upgrading connection: unable to upgrade streaming request: "),
        "{msg}"
    );
    assert_eq!(fake.spdy_attempts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn kubectl_error_texts() {
    let fake = Arc::new(Fake::new(echo::tcp().await.port(), true));
    let api = start_fake(fake).await;
    assert_eq!(
        run(api, &["missing", "80"]).fatal().await,
        "Error from server (NotFound): pods \"missing\" not found"
    );
    assert_eq!(
        run(api, &["pending", "80"]).fatal().await,
        "error: unable to forward port because pod is not running. Current status=Pending"
    );
    assert_eq!(
        run(api, &["web", "nope"]).fatal().await,
        "error: Pod 'web' does not have a named port 'nope'"
    );
    assert_eq!(
        run(api, &["web", "1:2:3"]).fatal().await,
        "error: invalid port format '1:2:3'"
    );
}

#[tokio::test]
async fn refused_api_server_gets_kubectls_hint() {
    // A port nothing listens on any more: the connection is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    assert_eq!(
        run(port, &["web", "80"]).fatal().await,
        format!(
            "The connection to the server 127.0.0.1:{port} was refused - did you specify \
             the right host or port?"
        )
    );
}

#[tokio::test]
async fn service_picks_the_ready_pod_and_its_target_port() {
    let echo = echo::tcp().await.port();
    let fake = Arc::new(Fake::new(echo, true));
    let api = start_fake(fake).await;
    let mut r = run(api, &["svc/svc", ":web"]);
    let (local, remote) = r.listening().await;
    assert_eq!(remote, echo, "targetPort `http` resolved in the pod");
    roundtrip(local, b"svc").await;
    assert_eq!(
        r.opened_pod().await,
        "app-2",
        "the Ready pod, not the not-Ready one"
    );
    assert_eq!(r.stop().await, success());

    let mut r = run(api, &["deploy/app", &format!("0:{echo}")]);
    let (local, _) = r.listening().await;
    roundtrip(local, b"deploy").await;
    assert_eq!(r.opened_pod().await, "app-2");
    assert_eq!(r.stop().await, success());
}

#[tokio::test]
async fn deployment_forward_moves_to_the_replacement_pod() {
    let echo = echo::tcp().await.port();
    let fake = Arc::new(Fake::new(echo, true));
    let api = start_fake(fake.clone()).await;
    let mut r = run(api, &["deploy/app", &format!(":{echo}")]);
    let (local, _) = r.listening().await;
    roundtrip(local, b"one").await;
    assert_eq!(r.opened_pod().await, "app-2");

    // The node keeps the session when a pod goes; the client notices the pod is gone, drops
    // the session and re-resolves the deployment.
    fake.replace_app_pod("app-2", "app-3", echo);
    loop {
        match r.events.recv().await.expect("events") {
            Event::Reconnecting { pod, reason } => {
                assert_eq!(pod, "app-2");
                assert_eq!(reason, "pod app-2 was deleted");
            }
            Event::Reconnected { pod, .. } => {
                assert_eq!(pod, "app-3");
                break;
            }
            _ => {}
        }
    }
    roundtrip(local, b"two").await;
    assert_eq!(r.opened_pod().await, "app-3");
    assert_eq!(r.stop().await, success());
}

#[tokio::test]
async fn balance_spreads_connections_over_ready_pods() {
    let echo = echo::tcp().await.port();
    let fake = Arc::new(Fake::new(echo, true));
    let api = start_fake(fake.clone()).await;
    let mut r = run(api, &["deploy/duo", &format!(":{echo}"), "--balance"]);
    let (local, _) = r.listening().await;
    let mut pods = Vec::new();
    for i in 0..4 {
        roundtrip(local, format!("conn {i}").as_bytes()).await;
        pods.push(r.opened_pod().await);
    }
    pods.sort();
    assert_eq!(pods, ["duo-1", "duo-1", "duo-2", "duo-2"]);
    assert_eq!(
        fake.ws_attempts.load(Ordering::SeqCst),
        2,
        "one session per pod"
    );
    assert_eq!(r.stop().await, success());
}

#[tokio::test]
async fn deleted_target_ends_the_run_after_the_timeout() {
    let echo = echo::tcp().await.port();
    let fake = Arc::new(Fake::new(echo, true));
    let api = start_fake(fake.clone()).await;
    let mut r = run(api, &["web", ":http", "--pod-running-timeout=1s"]);
    let (local, _) = r.listening().await;
    roundtrip(local, b"before").await;
    fake.objects.lock().unwrap().insert(
        "/api/v1/namespaces/default/pods/web".into(),
        not_found("pods", "web"),
    );
    assert_eq!(
        r.fatal().await,
        "Error from server (NotFound): pods \"web\" not found"
    );
    let code = tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::FAILURE)
    );
}

/// This fake server is a real relay SPDY server that grants no porthole extension (as a
/// kubelet or an older porthole node): the UDP spec is refused with a clear error naming it,
/// and the TCP forward of the same command goes on.
#[tokio::test]
async fn udp_without_the_extension_leaves_the_tcp_forward_going() {
    let echo = echo::tcp().await.port();
    let fake = Arc::new(Fake::new(echo, true));
    let api = start_fake(fake).await;
    let mut r = run(api, &["web", ":http", "0:53/udp"]);
    let mut refused = None;
    let (local, remote) = loop {
        match r.events.recv().await.expect("run ended early") {
            Event::Error {
                message,
                fatal: false,
            } => refused = Some(message),
            Event::UdpListening { .. } => panic!("a UDP socket was bound without the extension"),
            Event::Listening {
                local_port,
                remote_port,
                ..
            } => break (local_port, remote_port),
            Event::Error {
                message,
                fatal: true,
            } => panic!("fatal: {message}"),
            _ => {}
        }
    };
    assert_eq!(
        refused.as_deref(),
        Some(
            "error: the server does not support UDP forwarding (a porthole extension): \
             0:53/udp is not forwarded; upgrade the node to porthole or use TCP"
        )
    );
    assert_eq!(remote, echo);
    roundtrip(local, b"tcp still goes").await;
    assert_eq!(r.stop().await, success());
}

/// Only UDP specs and no extension: nothing to forward, exit 1 as kubectl's errors.
#[tokio::test]
async fn udp_only_without_the_extension_exits_1() {
    let fake = Arc::new(Fake::new(echo::tcp().await.port(), true));
    let api = start_fake(fake).await;
    for transport in ["websocket", "spdy"] {
        let mut r = run(
            api,
            &["web", "0:53/udp", "0:54/udp", "--transport", transport],
        );
        assert_eq!(
            r.fatal().await,
            "error: the server does not support UDP forwarding (a porthole extension): \
             0:53/udp, 0:54/udp are not forwarded; upgrade the node to porthole or use TCP"
        );
        let code = tokio::time::timeout(Duration::from_secs(5), r.task)
            .await
            .expect("prompt exit")
            .unwrap();
        assert_eq!(
            format!("{code:?}"),
            format!("{:?}", std::process::ExitCode::FAILURE)
        );
    }
}
