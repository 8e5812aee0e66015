//! Real clients against a real `porthole up` with the example pods: /usr/bin/kubectl over
//! WebSocket (its default) and SPDY, kubectl 1.37 (PyPI) both ways, kubectl 1.20 (Debian, SPDY
//! only), the Python `kubernetes` client, `@kubernetes/client-node` and kube-rs (WebSocket
//! channels), and `porthole port-forward`.
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

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}
const BLOB_LEN: usize = 3 * 1024 * 1024 + 17;

#[test]
fn every_client_forwards_to_the_example_pods() {
    if !porthole_test::require_pods("every_client_forwards_to_the_example_pods") {
        return;
    }
    let clients = Clients::from_env().expect("test clients");
    // The web pod serves /tmp (its workingDir), so a blob under /tmp is reachable at a known
    // path; its bytes prove the data path end to end.
    let www = TempDir::new_in(Path::new("/tmp"), "clients-www").unwrap();
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
        Path::new(bin()),
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
    if let Some(js) = clients.optional(
        &clients.js_client_dir,
        "PORTHOLE_JS_CLIENT_DIR",
        "the JavaScript client",
    ) {
        check(
            "javascript @kubernetes/client-node (websocket channels)",
            js_client(js, &cluster, &blob_path, &blob),
        );
    }
    check(
        "kube-rs Api::portforward (websocket channels)",
        kube_rs_client(&cluster, &blob_path, &blob),
    );
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

/// `@kubernetes/client-node`'s `PortForward` (WebSocket, v4/v5 channels) behind a local TCP
/// server, as its documentation shows; Node's http client fetches the blob through it.
fn js_client(js_dir: &Path, cluster: &Cluster, blob_path: &str, blob: &[u8]) -> Result<()> {
    let script = r#"
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import { pathToFileURL } from "node:url";
const [, , jsDir, kubeconfig, path, outFile] = process.argv;
const k8s = await import(pathToFileURL(jsDir + "/node_modules/@kubernetes/client-node/dist/index.js"));
const kc = new k8s.KubeConfig();
kc.loadFromFile(kubeconfig);
const forward = new k8s.PortForward(kc);
const server = net.createServer((socket) => {
  forward.portForward("default", "web", [8000], socket, null, socket).catch((e) => {
    console.error("portForward failed:", e);
    process.exit(2);
  });
});
server.listen(0, "127.0.0.1", () => {
  const port = server.address().port;
  http.get({ host: "127.0.0.1", port, path, agent: false }, (res) => {
    const chunks = [];
    res.on("data", (c) => chunks.push(c));
    res.on("end", () => {
      fs.writeFileSync(outFile, Buffer.concat(chunks));
      console.log("status " + res.statusCode);
      process.exit(0);
    });
  }).on("error", (e) => {
    console.error("request failed:", e);
    process.exit(1);
  });
});
"#;
    let script_path = cluster.work.join("pf.mjs");
    let body_path = cluster.work.join("js-body");
    fs::write(&script_path, script)?;
    let out = Command::new("node")
        .arg(&script_path)
        .arg(js_dir)
        .arg(&cluster.kubeconfig)
        .arg(blob_path)
        .arg(&body_path)
        .output()
        .context("run node (the JavaScript client)")?;
    let stdout = porthole_test::expect_success("node pf.mjs", &out)?;
    ensure!(stdout.trim() == "status 200", "JavaScript client: {stdout}");
    let body = fs::read(&body_path)?;
    ensure!(
        body == blob,
        "JavaScript client got {} bytes, want {} (or different bytes)",
        body.len(),
        blob.len()
    );
    Ok(())
}

/// kube-rs (`kube` 5, the crate porthole itself builds on): `Api::<Pod>::portforward`.
fn kube_rs_client(cluster: &Cluster, blob_path: &str, blob: &[u8]) -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let kubeconfig = cluster.kubeconfig.clone();
    let request = format!("GET {blob_path} HTTP/1.0\r\nHost: web\r\n\r\n");
    let runtime = tokio::runtime::Runtime::new()?;
    let response = runtime.block_on(async move {
        let yaml = fs::read_to_string(&kubeconfig)?;
        let parsed = kube::config::Kubeconfig::from_yaml(&yaml)?;
        let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default()).await?;
        let pods: kube::Api<Pod> = kube::Api::default_namespaced(kube::Client::try_from(config)?);
        let mut forwarder = pods
            .portforward("web", &[8000])
            .await
            .context("kube-rs portforward")?;
        let mut stream = forwarder
            .take_stream(8000)
            .context("no stream for port 8000")?;
        stream.write_all(request.as_bytes()).await?;
        // Read the head, then exactly Content-Length bytes: how the channel protocol ends a
        // connection is not what is tested here.
        let mut response = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let body_len = loop {
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut buf))
                .await??;
            ensure!(n > 0, "stream ended after {} bytes", response.len());
            response.extend_from_slice(&buf[..n]);
            if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&response[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .context("no Content-Length")?
                    .trim()
                    .parse()?;
                break end + 4 + len;
            }
        };
        while response.len() < body_len {
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut buf))
                .await??;
            ensure!(
                n > 0,
                "stream ended after {} of {body_len} bytes",
                response.len()
            );
            response.extend_from_slice(&buf[..n]);
        }
        drop(stream);
        forwarder.abort();
        anyhow::Ok(response)
    })?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("found above")
        + 4;
    ensure!(
        response.starts_with(b"HTTP/1.0 200"),
        "status: {:?}",
        String::from_utf8_lossy(&response[..end])
    );
    ensure!(
        &response[end..] == blob,
        "kube-rs got {} body bytes, want {}",
        response.len() - end,
        blob.len()
    );
    Ok(())
}
