//! Real clients against a real `porthole up` with the example pods: /usr/bin/kubectl over
//! WebSocket (its default) and SPDY, kubectl 1.37 (PyPI) both ways, kubectl 1.20 (Debian, SPDY
//! only), the Python `kubernetes` client (WebSocket channels), and `porthole port-forward`.
//!
//! One cluster serves every client (starting one per client would only measure `up` again);
//! each client's check runs even when an earlier one failed, and the test reports them all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use porthole_test::{
    echo_roundtrip, example, http_get, pattern, Clients, Cluster, Forward, TempDir,
};

const BIN: &str = env!("CARGO_BIN_EXE_porthole");
const BLOB_LEN: usize = 3 * 1024 * 1024 + 17;

#[test]
fn every_client_forwards_to_the_example_pods() {
    if !porthole_test::require_root("every_client_forwards_to_the_example_pods") {
        return;
    }
    let clients = Clients::from_env().expect("test clients");
    // The web pod serves /tmp (its workingDir), so a blob under /tmp is reachable at a known
    // path; its bytes prove the data path end to end.
    let www = TempDir::new("clients-www").unwrap();
    let blob = pattern(BLOB_LEN, 0x5eed);
    fs::write(www.path().join("blob"), &blob).unwrap();
    let blob_path = format!(
        "/{}/blob",
        www.path()
            .strip_prefix("/tmp")
            .expect("temp dir under /tmp")
            .display()
    );

    let work = TempDir::new("clients").unwrap();
    let cluster = Cluster::up(
        Path::new(BIN),
        work.path(),
        &[example("web.yaml"), example("echo.yaml")],
    )
    .unwrap();
    cluster.wait_pod_ready("default", "web").unwrap();
    cluster.wait_pod_ready("default", "echo").unwrap();

    let mut failures = Vec::new();
    let mut passed = Vec::new();
    let mut check = |name: &str, res: Result<()>| match res {
        Ok(()) => passed.push(name.to_string()),
        Err(e) => failures.push(format!("{name}: {e:#}")),
    };

    let kubectl_pf = |kubectl: &Path, spdy: bool, target: &str, port: &str| {
        let mut cmd = cluster.kubectl_cmd(kubectl);
        cmd.args(["port-forward", target, port]);
        if spdy {
            cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false");
        }
        cmd
    };
    let web = |name: &str, cmd: Command| fetch_through(name, cmd, work.path(), &blob_path, &blob);

    check(
        "kubectl (default: websocket)",
        web(
            "kubectl-ws",
            kubectl_pf(&clients.kubectl, false, "pod/web", ":8000"),
        ),
    );
    check(
        "kubectl (spdy)",
        web(
            "kubectl-spdy",
            kubectl_pf(&clients.kubectl, true, "pod/web", ":8000"),
        ),
    );
    check(
        "kubectl named port (pod/web :http)",
        web(
            "kubectl-named",
            kubectl_pf(&clients.kubectl, false, "pod/web", ":http"),
        ),
    );
    if let Some(k137) =
        clients.optional(&clients.kubectl_137, "PORTHOLE_KUBECTL_137", "kubectl 1.37")
    {
        check(
            "kubectl 1.37 (websocket)",
            web("kubectl137-ws", kubectl_pf(k137, false, "pod/web", ":8000")),
        );
        check(
            "kubectl 1.37 (spdy)",
            web(
                "kubectl137-spdy",
                kubectl_pf(k137, true, "pod/web", ":8000"),
            ),
        );
    }
    if let Some(k120) =
        clients.optional(&clients.kubectl_120, "PORTHOLE_KUBECTL_120", "kubectl 1.20")
    {
        check(
            "kubectl 1.20 (spdy)",
            web("kubectl120", kubectl_pf(k120, false, "pod/web", ":8000")),
        );
    }
    if let Some(python) = clients.optional(&clients.python, "PORTHOLE_PYTHON", "the Python client")
    {
        check(
            "python kubernetes client (websocket channels)",
            python_client(python, &cluster, &blob_path, &blob),
        );
    }
    let mut porthole = cluster.porthole_cmd();
    porthole.args(["port-forward", "web", ":8000"]);
    check(
        "porthole port-forward (KUBECONFIG only)",
        web("porthole-pf", porthole),
    );

    let mut porthole = cluster.porthole_cmd();
    porthole.args(["port-forward", "pod/echo", ":7000"]);
    check(
        "porthole port-forward to the echo pod",
        echo_through("porthole-echo", porthole, work.path()),
    );
    check(
        "kubectl port-forward to the echo pod",
        echo_through(
            "kubectl-echo",
            kubectl_pf(&clients.kubectl, false, "pod/echo", ":7000"),
            work.path(),
        ),
    );

    let stopped = cluster.stop();
    eprintln!("passed: {passed:#?}");
    if let Err(e) = stopped {
        failures.push(format!("stopping the cluster: {e:#}"));
    }
    assert!(
        failures.is_empty(),
        "{} client check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Starts a port-forward, fetches `/` and the blob through it, stops it with Ctrl-C.
fn fetch_through(
    name: &str,
    cmd: Command,
    log_dir: &Path,
    blob_path: &str,
    blob: &[u8],
) -> Result<()> {
    Forward::with(name, cmd, log_dir, 8000, |port| {
        let (status, body) = http_get(port, "/")?;
        ensure!(status == 200, "GET / answered {status}");
        ensure!(
            String::from_utf8_lossy(&body).contains("Directory listing"),
            "GET / is not http.server's listing: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        let (status, body) = http_get(port, blob_path)?;
        ensure!(status == 200, "GET {blob_path} answered {status}");
        ensure!(
            body == blob,
            "blob differs: got {} bytes, want {}",
            body.len(),
            blob.len()
        );
        Ok(())
    })
}

fn echo_through(name: &str, cmd: Command, log_dir: &Path) -> Result<()> {
    Forward::with(name, cmd, log_dir, 7000, |port| {
        let payload = pattern(1 << 20, 7);
        let back = echo_roundtrip(port, &payload)?;
        ensure!(
            back == payload,
            "echo returned {} bytes, want {}",
            back.len(),
            payload.len()
        );
        Ok(())
    })
}

/// The Python client's `portforward` (WebSocket, v4/v5 channel protocol): one HTTP request for
/// the blob; the body is checked here.
fn python_client(python: &PathBuf, cluster: &Cluster, blob_path: &str, blob: &[u8]) -> Result<()> {
    let script = r#"
import sys, socket
from kubernetes import client, config
from kubernetes.stream import portforward
kubeconfig, path = sys.argv[1], sys.argv[2]
config.load_kube_config(config_file=kubeconfig)
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="8000")
sock = pf.socket(8000)
sock.setblocking(True)
sock.sendall(("GET %s HTTP/1.0\r\nHost: web\r\n\r\n" % path).encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = sock.recv(65536)
    if not chunk:
        sys.exit("connection closed before the response headers")
    data += chunk
head, body = data.split(b"\r\n\r\n", 1)
length = None
for line in head.split(b"\r\n")[1:]:
    name, _, value = line.partition(b":")
    if name.strip().lower() == b"content-length":
        length = int(value)
if length is None:
    sys.exit("no Content-Length in %r" % head)
while len(body) < length:
    chunk = sock.recv(65536)
    if not chunk:
        break
    body += chunk
sys.stdout.buffer.write(head.split(b"\r\n")[0] + b"\n")
sys.stdout.buffer.flush()
open(sys.argv[3], "wb").write(body[:length])
sock.close()
err = pf.error(8000)
if err:
    sys.exit("port-forward error: %s" % err)
"#;
    let script_path = cluster.work.join("pf.py");
    let body_path = cluster.work.join("python-body");
    fs::write(&script_path, script)?;
    let out = Command::new(python)
        .arg(&script_path)
        .arg(&cluster.kubeconfig)
        .arg(blob_path)
        .arg(&body_path)
        .output()
        .context("run the python client")?;
    let stdout = porthole_test::expect_success("python portforward", &out)?;
    ensure!(stdout.starts_with("HTTP/1.0 200"), "status line: {stdout}");
    let body = fs::read(&body_path)?;
    if body != blob {
        bail!(
            "python client got {} bytes, want {} (or different bytes)",
            body.len(),
            blob.len()
        );
    }
    Ok(())
}
