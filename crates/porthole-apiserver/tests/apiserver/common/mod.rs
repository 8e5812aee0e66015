//! Test harness: PKI from `porthole_test::pki`, an in-process API server on 127.0.0.1:0, a
//! kubeconfig, `/usr/bin/kubectl` runner, and a TLS node double (the NODE only; the proxy under
//! test is real) that answers port-forward upgrades with 101 and echoes bytes.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use porthole_test::pki::{Ca, Leaf};
use sha1::Digest as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Pki {
    pub dir: PathBuf,
}

fn write(dir: &Path, name: &str, data: &str) {
    std::fs::write(dir.join(name), data).expect("write pki file");
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca = Ca::new("porthole-ca").expect("ca");
        ca.write(&dir, "ca.crt").expect("write pki file");
        let leaf = |name: &str, leaf: Leaf| {
            ca.sign(&leaf)
                .expect("sign")
                .write(&dir, name)
                .expect("write pki file");
        };
        leaf(
            "apiserver",
            Leaf::new("porthole-apiserver")
                .sans(&["localhost", "127.0.0.1"])
                .server_auth(),
        );
        leaf(
            "apiserver-kubelet-client",
            Leaf::new("porthole-apiserver")
                .orgs(&["system:masters"])
                .client_auth(),
        );
        leaf(
            "node",
            Leaf::new("system:node:n1")
                .sans(&["localhost", "127.0.0.1", "n1"])
                .server_auth(),
        );
        leaf(
            "node-client",
            Leaf::new("system:node:n1")
                .orgs(&["system:nodes"])
                .client_auth(),
        );
        leaf(
            "admin",
            Leaf::new("admin").orgs(&["system:masters"]).client_auth(),
        );
        leaf("carol", Leaf::new("carol").orgs(&["devs"]).client_auth());
        write(&dir, "tokens.csv", "admin-token,admin-tok,1,\"system:masters\"\nbob-token,bob,2\nalice-token,alice,3,\"pf-users,other\"\n");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// TLS as node n1 serves its streaming endpoint: its certificate, and client certificates
    /// from this CA required (the API server's proxy presents one).
    pub fn node_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in porthole_apiserver::tls::load_certs(&self.path("ca.crt")).expect("ca") {
            roots.add(c).expect("root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                porthole_apiserver::tls::load_certs(&self.path("node.crt")).expect("cert"),
                porthole_apiserver::tls::load_key(&self.path("node.key")).expect("key"),
            )
            .expect("node tls");
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
    pub audit: PathBuf,
}

pub fn args(pki: &Pki, data: &Path, audit: &Path) -> porthole_apiserver::Args {
    porthole_apiserver::Args {
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise_address: None,
        data_dir: Some(data.to_path_buf()),
        etcd: Default::default(),
        tls_cert_file: pki.path("apiserver.crt"),
        tls_private_key_file: pki.path("apiserver.key"),
        client_ca_file: Some(pki.path("ca.crt")),
        token_auth_file: Some(pki.path("tokens.csv")),
        anonymous_auth: false,
        kubelet_client_certificate: Some(pki.path("apiserver-kubelet-client.crt")),
        kubelet_client_key: Some(pki.path("apiserver-kubelet-client.key")),
        kubelet_certificate_authority: Some(pki.path("ca.crt")),
        audit_log_path: Some(audit.to_path_buf()),
        node_monitor_grace_period: std::time::Duration::from_secs(40),
        leader_elect: true,
        leader_elect_lease_duration: std::time::Duration::from_secs(15),
        leader_elect_renew_deadline: std::time::Duration::from_secs(10),
        leader_elect_retry_period: std::time::Duration::from_secs(2),
        cluster_signing_cert_file: None,
        cluster_signing_key_file: None,
    }
}

impl Server {
    pub async fn start(pki: &Pki, root: &Path) -> Self {
        Self::start_with(pki, root, |_| {}).await
    }

    pub async fn start_with(
        pki: &Pki,
        root: &Path,
        tweak: impl FnOnce(&mut porthole_apiserver::Args),
    ) -> Self {
        Self::start_with_config(pki, root, tweak, |_| {}).await
    }

    /// Like [`Server::start_with`], with a last change to the loaded `Config` (a shared store).
    pub async fn start_with_config(
        pki: &Pki,
        root: &Path,
        tweak: impl FnOnce(&mut porthole_apiserver::Args),
        tweak_config: impl FnOnce(&mut porthole_apiserver::Config),
    ) -> Self {
        std::fs::create_dir_all(root).expect("server dir");
        let audit = root.join("audit.log");
        let mut a = args(pki, &root.join("data"), &audit);
        tweak(&mut a);
        let mut cfg = porthole_apiserver::Config::from_args(&a).expect("config");
        tweak_config(&mut cfg);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(porthole_apiserver::run(cfg, listener, shutdown.clone()));
        let kubeconfig = root.join("kubeconfig");
        let p = |n: &str| pki.path(n).display().to_string();
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{addr}\n    certificate-authority: {ca}\n\
users:\n- name: admin\n  user:\n    client-certificate: {ac}\n    client-key: {ak}\n- name: bob\n  user:\n    token: bob-token\n\
- name: alice\n  user:\n    token: alice-token\n- name: anon\n  user: {{}}\n- name: wrong\n  user:\n    token: nope\n\
contexts:\n- name: admin\n  context: {{cluster: c, user: admin}}\n- name: bob\n  context: {{cluster: c, user: bob}}\n\
- name: alice\n  context: {{cluster: c, user: alice}}\n- name: anon\n  context: {{cluster: c, user: anon}}\n- name: wrong\n  context: {{cluster: c, user: wrong}}\n\
current-context: admin\n",
            ca = p("ca.crt"),
            ac = p("admin.crt"),
            ak = p("admin.key"),
        );
        std::fs::write(&kubeconfig, kc).expect("kubeconfig");
        let cache = root.join("kube-cache");
        Server {
            addr,
            shutdown,
            task,
            kubeconfig,
            cache,
            audit,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Run kubectl as `context` and return (success, stdout, stderr).
    pub async fn kubectl(&self, context: &str, args: &[&str]) -> (bool, String, String) {
        self.kubectl_stdin(context, args, None).await
    }

    /// Sets pod `name`'s status (a JSON merge patch of `status`) as admin, standing in for the
    /// node agent these tests do not run.
    pub async fn patch_pod_status(&self, name: &str, status: &str) -> (bool, String, String) {
        let patch = format!(r#"{{"status":{status}}}"#);
        let args = [
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ];
        self.kubectl("admin", &args).await
    }

    pub async fn kubectl_stdin(
        &self,
        context: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        self.kubectl_with("/usr/bin/kubectl", context, args, stdin)
            .await
    }

    /// Run a given kubectl binary.
    pub async fn kubectl_with(
        &self,
        bin: &str,
        context: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.cache.parent().expect("root"))
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--context")
            .arg(context)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(mut si) = child.stdin.take() {
            if let Some(text) = stdin {
                si.write_all(text.as_bytes()).await.expect("stdin");
            }
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
                .await
                .expect("kubectl finished within 60s")
                .expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A request the node double saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
}

pub struct NodeDouble {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

fn ws_accept(key: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

async fn node_handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    seen.lock().expect("seen").push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    if path.starts_with("/containerLogs/") {
        let body = format!(
            "log line 1 for {path}\nlog line 2 query={}\n",
            req.uri().query().unwrap_or("")
        );
        return Ok(Response::new(Full::new(Bytes::from(body))));
    }
    if path.starts_with("/portForward/") {
        if path.contains("/missing") {
            let mut r = Response::new(Full::new(Bytes::from_static(b"pod does not exist")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return Ok(r);
        }
        let upgrade = req
            .headers()
            .get("upgrade")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert("connection", "Upgrade".parse().expect("hv"));
        if upgrade.eq_ignore_ascii_case("websocket") {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            h.insert("upgrade", "websocket".parse().expect("hv"));
            h.insert("sec-websocket-accept", ws_accept(key).parse().expect("hv"));
            let proto = req
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .unwrap_or("")
                .trim()
                .to_string();
            if !proto.is_empty() {
                h.insert("sec-websocket-protocol", proto.parse().expect("hv"));
            }
        } else {
            h.insert("upgrade", "SPDY/3.1".parse().expect("hv"));
            h.insert(
                "x-stream-protocol-version",
                "portforward.k8s.io".parse().expect("hv"),
            );
        }
        h.insert("x-node-double", "yes".parse().expect("hv"));
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(resp);
    }
    let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
    *r.status_mut() = StatusCode::NOT_FOUND;
    Ok(r)
}

impl NodeDouble {
    pub async fn start(pki: &Pki) -> Self {
        let acceptor = pki.node_acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = s2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| node_handle(seen.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        NodeDouble { addr, seen }
    }

    /// A Node object pointing at this double, Ready with a fresh heartbeat.
    pub fn node_yaml(&self, name: &str) -> String {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: 127.0.0.1}}\n  - {{type: Hostname, address: {name}}}\n  daemonEndpoints:\n    kubeletEndpoint:\n      Port: {port}\n  conditions:\n  - {{type: Ready, status: \"True\", reason: KubeletReady, lastHeartbeatTime: \"{now}\", lastTransitionTime: \"{now}\"}}\n  nodeInfo: {{kubeletVersion: v1.34.0-porthole, osImage: Linux, kernelVersion: '6', containerRuntimeVersion: porthole://0.1, architecture: amd64, bootID: b, machineID: m, operatingSystem: linux, systemUUID: u, kubeProxyVersion: ''}}\n",
            port = self.addr.port()
        )
    }
}

/// Open a raw TLS connection to the API server (client cert optional).
pub async fn raw_tls(
    pki: &Pki,
    addr: SocketAddr,
    client: Option<&str>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let identity = client.map(|n| (pki.path(&format!("{n}.crt")), pki.path(&format!("{n}.key"))));
    let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let mut cfg =
        porthole_test::pki::client_config(&pki.path("ca.crt"), identity).expect("TLS client");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name"),
            tcp,
        )
        .await
        .expect("tls")
}

/// Read an HTTP/1.1 response head (up to the blank line) from a raw stream; returns the head
/// text and any bytes already read past it.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf[i + 4..].to_vec();
            return (String::from_utf8_lossy(&buf[..i]).into_owned(), rest);
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("response head within 20s")
            .expect("read");
        assert!(
            n > 0,
            "EOF before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Send one raw HTTP/1.1 request (text, `\r\n` line ends added by the caller) and return the
/// status code, the head and the body (read by Content-Length).
pub async fn http_once(
    pki: &Pki,
    addr: SocketAddr,
    client: Option<&str>,
    request: &[u8],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = raw_tls(pki, addr, client).await;
    s.write_all(request).await.expect("write request");
    let (head, mut body) = read_head(&mut s).await;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("body within 20s")
            .expect("read body");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    (status, head, String::from_utf8_lossy(&body).into_owned())
}
