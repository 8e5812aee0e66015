//! Shared helpers for the node's integration tests: temp dirs and a throw-away PKI (built on
//! porthole-test), pods running a small Python app, an HTTPS client with or without a client
//! certificate, and leak checks.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use porthole_node::{Config, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

/// A directory removed on drop; `TempDir::new("node-TAG")` in these tests.
pub use porthole_test::TempDir;

/// The Python app every test pod runs: `app.py ECHO_PORT DRAIN_PORT HTTP_PORT`.
/// - ECHO_PORT (127.0.0.1): echoes bytes back, closes after the client's EOF;
/// - DRAIN_PORT (::1 only, so dialing must fall back to IPv6): reads to EOF, then answers
///   `<bytes> <sha256 hex>\n` — the half-close probe;
/// - HTTP_PORT (127.0.0.1): answers any request with 200 `ok`.
pub const APP: &str = r#"
import asyncio, hashlib, sys

async def echo(r, w):
    try:
        while True:
            d = await r.read(65536)
            if not d:
                break
            w.write(d)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()

async def drain(r, w):
    h = hashlib.sha256()
    n = 0
    while True:
        d = await r.read(65536)
        if not d:
            break
        h.update(d)
        n += len(d)
    w.write(f"{n} {h.hexdigest()}\n".encode())
    await w.drain()
    w.close()

async def http(r, w):
    try:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await w.drain()
    except Exception:
        pass
    w.close()

async def main():
    a, b, c = map(int, sys.argv[1:4])
    s1 = await asyncio.start_server(echo, "127.0.0.1", a, backlog=4096)
    s2 = await asyncio.start_server(drain, "::1", b, backlog=1024)
    s3 = await asyncio.start_server(http, "127.0.0.1", c)
    print("app ready", flush=True)
    await asyncio.gather(s1.serve_forever(), s2.serve_forever(), s3.serve_forever())

asyncio.run(main())
"#;

pub const ECHO_PORT: u16 = 8080;
pub const DRAIN_PORT: u16 = 8081;
pub const HTTP_PORT: u16 = 8082;

/// A pod running [`APP`] with an httpGet readiness probe on [`HTTP_PORT`].
pub fn app_pod(dir: &Path, name: &str) -> Pod {
    let script = dir.join("app.py");
    std::fs::write(&script, APP).expect("write app.py");
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "uid": uuid::Uuid::new_v4().to_string() },
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app",
                "image": "python:3",
                "command": ["python3", "-u", script.to_string_lossy()],
                "args": [ECHO_PORT.to_string(), DRAIN_PORT.to_string(), HTTP_PORT.to_string()],
                "readinessProbe": { "httpGet": { "path": "/", "port": HTTP_PORT }, "periodSeconds": 1 }
            }]
        }
    }))
    .expect("pod JSON")
}

/// A pod from a list of `(container name, shell script)`.
pub fn shell_pod(name: &str, restart_policy: &str, grace: i64, containers: &[(&str, &str)]) -> Pod {
    let containers: Vec<_> = containers
        .iter()
        .map(|(n, script)| {
            serde_json::json!({
                "name": n, "image": "busybox",
                "command": ["/bin/sh", "-c"], "args": [script],
                "env": [{ "name": "GREETING", "value": "hello" },
                        { "name": "MY_POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }]
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": "default", "uid": uuid::Uuid::new_v4().to_string() },
        "spec": { "restartPolicy": restart_policy, "terminationGracePeriodSeconds": grace, "containers": containers }
    }))
    .expect("pod JSON")
}

/// Waits (event-driven, via the runtime's change notifications) until `pred` holds for the
/// pod's status, failing after `limit`.
pub async fn wait_status(
    rt: &Runtime,
    uid: &str,
    limit: Duration,
    what: &str,
    mut pred: impl FnMut(&k8s_openapi::api::core::v1::PodStatus) -> bool,
) -> k8s_openapi::api::core::v1::PodStatus {
    let mut rx = rt.subscribe();
    let fut = async {
        loop {
            let status = rt.get(uid).expect("pod known").status();
            if pred(&status) {
                return status;
            }
            rx.changed().await.expect("runtime alive");
        }
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(s) => s,
        Err(_) => panic!(
            "timed out waiting for {what}; status: {}",
            serde_json::to_string_pretty(&rt.get(uid).expect("pod").status()).unwrap_or_default()
        ),
    }
}

pub fn condition(status: &k8s_openapi::api::core::v1::PodStatus, type_: &str) -> Option<String> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

pub fn is_ready(status: &k8s_openapi::api::core::v1::PodStatus) -> bool {
    condition(status, "Ready").as_deref() == Some("True")
}

/// Certificates for one test: a cluster CA, the node's serving cert, the API server's client
/// cert, a client cert with another CN from the same CA, and one from a foreign CA.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub apiserver: (PathBuf, PathBuf),
    pub other_user: (PathBuf, PathBuf),
    pub foreign: (PathBuf, PathBuf),
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        use porthole_test::pki::{Ca, Leaf};
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca = Ca::new("porthole-ca").expect("ca");
        let foreign = Ca::new("someone-else").expect("ca");
        let write = |ca: &Ca, leaf: Leaf, name: &str| {
            ca.sign(&leaf)
                .expect("sign")
                .write(dir, name)
                .expect("write pki file")
        };
        let (server_cert, server_key) = write(
            &ca,
            Leaf::new("system:node:test").sans(&["localhost", "127.0.0.1"]),
            "node",
        );
        Pki {
            dir: dir.to_path_buf(),
            ca: ca.write(dir, "ca.crt").expect("write pki file"),
            server_cert,
            server_key,
            apiserver: write(&ca, Leaf::new("porthole-apiserver"), "apiserver"),
            other_user: write(&ca, Leaf::new("mallory"), "mallory"),
            foreign: write(&foreign, Leaf::new("porthole-apiserver"), "foreign"),
        }
    }

    /// The files [`Pki::generate`] wrote into `dir` (for a process that did not generate them).
    pub fn load(dir: &Path) -> Pki {
        let f = |n: &str| dir.join(n);
        Pki {
            dir: dir.to_path_buf(),
            ca: f("ca.crt"),
            server_cert: f("node.crt"),
            server_key: f("node.key"),
            apiserver: (f("apiserver.crt"), f("apiserver.key")),
            other_user: (f("mallory.crt"), f("mallory.key")),
            foreign: (f("foreign.crt"), f("foreign.key")),
        }
    }

    /// A node config using these certificates and `state_dir`.
    pub fn node_config(&self, state_dir: &Path) -> Config {
        Config {
            node_name: "test".into(),
            state_dir: state_dir.to_path_buf(),
            node_ip: "127.0.0.1".parse().expect("ip"),
            api: None,
            tls_cert_file: self.server_cert.clone(),
            tls_private_key_file: self.server_key.clone(),
            client_ca_file: self.ca.clone(),
            apiserver_client_names: vec!["porthole-apiserver".into()],
            idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            tunnel: false,
            heartbeat_interval: Duration::from_secs(10),
            in_process: None,
            join: None,
            pod_isolation: porthole_node::PodIsolation::Auto,
        }
    }

    /// TLS client trusting the CA, presenting `identity` if given.
    pub fn connector(&self, identity: Option<&(PathBuf, PathBuf)>) -> tokio_rustls::TlsConnector {
        let identity = identity.map(|(cert, key)| (cert.as_path(), key.as_path()));
        let cfg = porthole_test::pki::client_config(&self.ca, identity).expect("TLS client");
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// A runtime plus the streaming endpoint on 127.0.0.1:0, stopped by [`Node::stop`].
pub struct Node {
    pub rt: Runtime,
    pub addr: std::net::SocketAddr,
    pub pki: Pki,
    pub state: PathBuf,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    stopped: bool,
}

impl Drop for Node {
    /// A test that panicked before [`Node::stop`] still must not leak processes or mounts.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.rt.abort();
        self.stop.cancel();
        let _ = porthole_netns::cleanup_dir(&self.state.join("netns"));
    }
}

impl Node {
    pub async fn start(dir: &Path) -> Node {
        let pki = Pki::generate(&dir.join("pki"));
        let state = dir.join("state");
        let cfg = pki.node_config(&state);
        let rt = Runtime::new(
            &state,
            "test",
            "127.0.0.1",
            porthole_node::Isolation::for_this_process(),
        )
        .expect("runtime (needs root)");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let rt = rt.clone();
            let stop = stop.clone();
            async move { porthole_node::serve_endpoint(rt, listener, &cfg, stop).await }
        });
        Node {
            rt,
            addr,
            pki,
            state,
            stop,
            server,
            stopped: false,
        }
    }

    /// TLS connection to the endpoint as the API server (or another identity).
    pub async fn connect(
        &self,
        identity: Option<&(PathBuf, PathBuf)>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        self.pki.connector(identity).connect(name, tcp).await
    }

    pub async fn connect_apiserver(&self) -> TlsStream<TcpStream> {
        let id = self.pki.apiserver.clone();
        self.connect(Some(&id))
            .await
            .expect("TLS connect as the API server")
    }

    /// Stops pods and server; checks nothing is left behind.
    pub async fn stop(mut self) {
        let pids: Vec<i32> = leftover_candidates(&self.rt);
        self.rt.shutdown().await;
        self.stop.cancel();
        (&mut self.server)
            .await
            .expect("server task")
            .expect("server");
        self.stopped = true;
        assert_clean(&self.state, &pids);
    }
}

/// Process group ids the runtime recorded for its pods right now.
pub fn leftover_candidates(rt: &Runtime) -> Vec<i32> {
    let mut pids = Vec::new();
    for p in rt.pods() {
        let path = rt.pods_dir().join(p.uid()).join("state.json");
        if let Ok(data) = std::fs::read(&path) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) {
                for g in v["groups"].as_array().into_iter().flatten() {
                    if let Some(pgid) = g["pgid"].as_i64() {
                        pids.push(pgid as i32);
                    }
                }
            }
        }
    }
    pids
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Asserts: no mount under `state`, no namespace files, no pod directories, none of `pids`
/// (nor their groups) alive.
pub fn assert_clean(state: &Path, pids: &[i32]) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let state_s = state.to_string_lossy();
    let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(&*state_s)).collect();
    assert!(leaked.is_empty(), "mounts left behind: {leaked:?}");
    for sub in ["netns", "pods"] {
        let entries: Vec<_> = std::fs::read_dir(state.join(sub))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "{sub} not empty: {entries:?}");
    }
    for &pid in pids {
        assert!(!alive(pid), "process {pid} still alive");
        // Nothing else in its process group either.
        if let Some(p) = alive_in_group(pid) {
            panic!("process {p} of group {pid} still alive");
        }
    }
}

/// A process of group `pgid` that is still alive (not a zombie), if any.
pub fn alive_in_group(pgid: i32) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.get(2) == Some(&pgid.to_string().as_str()) && f.first() != Some(&"Z") {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// Sends a plain HTTP/1.1 request and reads the whole response (`Connection: close`).
pub async fn http_request<S>(io: &mut S, method: &str, path: &str) -> anyhow::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let _ = io.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// De-chunks a `Transfer-Encoding: chunked` body.
pub fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
