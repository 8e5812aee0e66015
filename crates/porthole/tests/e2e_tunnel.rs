//! Nodes behind NAT (`porthole node --tunnel`) on the testbed: host `natnode` sits behind a
//! NAT router (nft masquerade) on a private network no API server routes to, joins with a
//! token through the balancer, and keeps a tunnel to each of the two API servers.
//!
//! - it is a node like any other: `kubectl get nodes` shows it Ready, its pods run and log;
//! - no API server can open a connection to it (checked), yet every real client reaches its
//!   pod through either server, on all three protocols: kubectl (WebSocket tunnel and SPDY, new
//!   and 1.20), `porthole port-forward` (both), the Python, JavaScript and kube-rs clients
//!   (WebSocket channels), plus `kubectl logs`;
//! - one connection that is not read does not stall another on the same tunnel;
//! - kill -9 of an API server: the node redials it when it is back; a partition between the
//!   node and a server ends that tunnel within its keepalive, and it comes back after;
//! - a tunnel under another node's name, from an admin, anonymous or without the upgrade is
//!   refused with a status that says why.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use porthole_test::ha::{eventually, http_get_on, HaCluster, JoinLine, Layout};
use porthole_test::testbed::Host;
use porthole_test::{expect_success, write_file, Child, Clients};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}
const NAT_NODE: &str = "natnode";
const POD: &str = "behind-nat";

/// A pod pinned to the NAT node: HTTP on 8000 answering its name, an endless stream on 8001
/// that counts what it wrote, the count on 8002, and an echo on 9000.
fn nat_pod() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {POD}
spec:
  nodeName: {NAT_NODE}
  containers:
  - name: app
    image: python:3-slim
    command:
    - python3
    - -u
    - -c
    - |
      import http.server, socketserver, threading
      sent = [0]
      class Name(http.server.BaseHTTPRequestHandler):
          def do_GET(self):
              body = b"{POD}"
              self.send_response(200)
              self.send_header("Content-Length", str(len(body)))
              self.end_headers()
              self.wfile.write(body)
      class Flood(socketserver.BaseRequestHandler):
          def handle(self):
              chunk = b"f" * 65536
              try:
                  while True:
                      self.request.sendall(chunk)
                      sent[0] += len(chunk)
              except OSError:
                  pass
      class Count(socketserver.BaseRequestHandler):
          def handle(self):
              self.request.sendall(str(sent[0]).encode())
      class Echo(socketserver.BaseRequestHandler):
          def handle(self):
              while True:
                  data = self.request.recv(65536)
                  if not data:
                      return
                  self.request.sendall(data)
      class T(socketserver.ThreadingTCPServer):
          allow_reuse_address = True
          daemon_threads = True
      for port, h in [(8001, Flood), (8002, Count), (9000, Echo)]:
          threading.Thread(target=T(("127.0.0.1", port), h).serve_forever, daemon=True).start()
      print("serving", flush=True)
      http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Name).serve_forever()
    readinessProbe:
      tcpSocket:
        port: 8000
      periodSeconds: 1
"#
    )
}

/// Starts a port-forward client and waits for its `Forwarding from 127.0.0.1:N -> REMOTE`.
fn forward(name: &str, cmd: Command, work: &Path, remote: u16) -> Result<(Child, u16)> {
    let f = porthole_test::Forward::start(name, cmd, work, remote)?;
    Ok((f.child, f.local_port))
}

/// One GET through a forward started by `cmd`; the body must be the pod's name.
fn get_through(cluster: &HaCluster, name: &str, cmd: Command) -> Result<()> {
    let (mut child, port) = forward(name, cmd, &cluster.work, 8000)?;
    let body = http_get_on(cluster.client(), port).with_context(|| child.report())?;
    ensure!(body == POD, "{name}: answered {body:?}");
    child.interrupt(Duration::from_secs(20))?;
    Ok(())
}

/// `@kubernetes/client-node`'s `PortForward` behind a local TCP server, as its docs show.
const JS_GET: &str = r#"
import http from "node:http";
import net from "node:net";
import { pathToFileURL } from "node:url";
const [, , jsDir, kubeconfig, pod] = process.argv;
const k8s = await import(pathToFileURL(jsDir + "/node_modules/@kubernetes/client-node/dist/index.js"));
const kc = new k8s.KubeConfig();
kc.loadFromFile(kubeconfig);
const forward = new k8s.PortForward(kc);
const server = net.createServer((socket) => {
  forward.portForward("default", pod, [8000], socket, null, socket).catch((e) => {
    console.error("portForward failed:", e);
    process.exit(2);
  });
});
server.listen(0, "127.0.0.1", () => {
  http.get({ host: "127.0.0.1", port: server.address().port, path: "/", agent: false }, (res) => {
    const chunks = [];
    res.on("data", (c) => chunks.push(c));
    res.on("end", () => {
      process.stdout.write(Buffer.concat(chunks).toString());
      process.exit(0);
    });
  }).on("error", (e) => {
    console.error("request failed:", e);
    process.exit(1);
  });
});
"#;

/// kube-rs `Api::<Pod>::portforward` (WebSocket channels), run on the client host.
fn kube_rs_get(cluster: &HaCluster) -> Result<String> {
    use k8s_openapi::api::core::v1::Pod;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kubeconfig = cluster.kubeconfig();
    cluster.client().within(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let yaml = std::fs::read_to_string(&kubeconfig)?;
            let parsed = kube::config::Kubeconfig::from_yaml(&yaml)?;
            let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default()).await?;
            let pods: kube::Api<Pod> =
                kube::Api::default_namespaced(kube::Client::try_from(config)?);
            let mut forwarder = pods
                .portforward(POD, &[8000])
                .await
                .context("kube-rs portforward")?;
            let mut stream = forwarder.take_stream(8000).context("no stream for 8000")?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
            let mut response = Vec::new();
            let mut buf = [0u8; 4096];
            // The body is short: read until the head and the whole name have arrived.
            while !response.ends_with(POD.as_bytes()) {
                let n =
                    tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await??;
                ensure!(
                    n > 0,
                    "stream ended: {:?}",
                    String::from_utf8_lossy(&response)
                );
                response.extend_from_slice(&buf[..n]);
            }
            drop(stream);
            forwarder.abort();
            let text = String::from_utf8_lossy(&response).into_owned();
            Ok(text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or(text))
        })
    })
}

/// Every real client, through the balancer, to the pod behind NAT.
fn every_client_reaches_the_pod(cluster: &HaCluster) -> Result<()> {
    let clients = Clients::from_env()?;
    let client = cluster.client().clone();
    let target = format!("pod/{POD}");
    let kubectl = |k: &Path, websockets: &str| {
        let mut cmd = client.command(k);
        cmd.env("KUBECONFIG", cluster.kubeconfig())
            .env("HOME", &cluster.work)
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .args(["port-forward", &target, ":8000"]);
        cmd
    };
    get_through(cluster, "kubectl-ws", kubectl(&clients.kubectl, "true"))?;
    get_through(cluster, "kubectl-spdy", kubectl(&clients.kubectl, "false"))?;
    if let Some(k) = clients.optional(&clients.kubectl_137, "PORTHOLE_KUBECTL_137", "kubectl 1.37")
    {
        get_through(cluster, "kubectl137-ws", kubectl(k, "true"))?;
    }
    if let Some(k) = clients.optional(&clients.kubectl_120, "PORTHOLE_KUBECTL_120", "kubectl 1.20")
    {
        get_through(cluster, "kubectl120-spdy", kubectl(k, "false"))?;
    }
    for transport in ["spdy", "websocket"] {
        let mut cmd = cluster.porthole_on_client();
        cmd.args(["port-forward", "--transport", transport, &target, ":8000"]);
        get_through(cluster, &format!("porthole-{transport}"), cmd)?;
    }
    if let Some(python) = clients.optional(&clients.python, "PORTHOLE_PYTHON", "the Python client")
    {
        let script = write_file(
            &cluster.work,
            "get.py",
            porthole_test::PYTHON_PORTFORWARD_GET,
        )?;
        let out = client
            .command(python)
            .arg(&script)
            .arg(cluster.kubeconfig())
            .arg(POD)
            .stdin(Stdio::null())
            .output()?;
        let body = expect_success("python port-forward", &out)?;
        ensure!(body == POD, "python client answered {body:?}");
    }
    if let Some(js) = clients.optional(
        &clients.js_client_dir,
        "PORTHOLE_JS_CLIENT_DIR",
        "the JavaScript client",
    ) {
        let script = write_file(&cluster.work, "get.mjs", JS_GET)?;
        let out = client
            .command("node")
            .arg(&script)
            .arg(js)
            .arg(cluster.kubeconfig())
            .arg(POD)
            .stdin(Stdio::null())
            .output()?;
        let body = expect_success("node get.mjs", &out)?;
        ensure!(body == POD, "JavaScript client answered {body:?}");
    }
    let body = kube_rs_get(cluster)?;
    ensure!(body == POD, "kube-rs answered {body:?}");
    Ok(())
}

/// Tunnels each API server reports (0 for one that is down).
fn tunnels(cluster: &HaCluster, index: usize) -> f64 {
    cluster
        .metric(index, "porthole_tunnels_active")
        .unwrap_or(0.0)
}

fn wait_tunnels(cluster: &HaCluster, index: usize, want: f64, within: Duration) -> Result<()> {
    let name = cluster.apiservers[index].name.clone();
    eventually(&format!("{name} holds {want} tunnel(s)"), within, || {
        Ok((tunnels(cluster, index) == want).then_some(()))
    })
    .with_context(|| cluster.report())
}

/// The raw answer (status line and body) to a tunnel request made with `curl_args`, with the
/// upgrade headers or without.
fn tunnel_request(
    cluster: &HaCluster,
    node: &str,
    upgrade: bool,
    curl_args: &[String],
) -> Result<String> {
    let mut cmd = cluster.client().command("curl");
    cmd.args(["-sS", "-i", "--http1.1", "--max-time", "10", "-X", "POST"])
        .args([
            "--cacert",
            &cluster.pki.join("ca.crt").display().to_string(),
        ]);
    if upgrade {
        cmd.args([
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: porthole-tunnel/1",
        ]);
    }
    let out = cmd
        .args(curl_args)
        .arg(format!("{}/api/v1/nodes/{node}/tunnel", cluster.lb.url()))
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn refusals(cluster: &HaCluster) -> Result<()> {
    let node1 = cluster.work.join("node1-data/pki");
    let cert = |f: &str| node1.join(f).display().to_string();
    let as_node1 = [
        "--cert".to_string(),
        cert("node-node1-client.crt"),
        "--key".into(),
        cert("node-node1-client.key"),
    ];
    ensure!(
        Path::new(&as_node1[1]).is_file(),
        "no client certificate at {} (the join's layout changed?)",
        as_node1[1]
    );
    let other = tunnel_request(cluster, NAT_NODE, true, &as_node1)?;
    ensure!(
        other.starts_with("HTTP/1.1 403") && other.contains("node1"),
        "node1 opening natnode's tunnel: {other}"
    );
    let admin = [
        "--cert".to_string(),
        cluster.pki.join("admin.crt").display().to_string(),
        "--key".into(),
        cluster.pki.join("admin.key").display().to_string(),
    ];
    let admin_says = tunnel_request(cluster, NAT_NODE, true, &admin)?;
    ensure!(
        admin_says.starts_with("HTTP/1.1 403") && admin_says.contains("only the node itself"),
        "an admin opening natnode's tunnel: {admin_says}"
    );
    let anonymous = tunnel_request(cluster, NAT_NODE, true, &[])?;
    ensure!(
        anonymous.starts_with("HTTP/1.1 401"),
        "anonymous tunnel: {anonymous}"
    );
    // node1 asking for its own tunnel without the upgrade.
    let no_upgrade = tunnel_request(cluster, "node1", false, &as_node1)?;
    ensure!(
        no_upgrade.starts_with("HTTP/1.1 400") && no_upgrade.contains("porthole-tunnel/1"),
        "a tunnel request without the upgrade: {no_upgrade}"
    );
    Ok(())
}

/// A forward to the flood port whose local end reads nothing, until the pod's writer is
/// stuck (its count stops growing past every window on the way); meanwhile a second forward
/// (another stream on the same tunnels) must echo promptly.
fn a_stalled_stream_stalls_nothing_else(cluster: &HaCluster) -> Result<()> {
    let client = cluster.client().clone();
    let start = |name: &str, remote: u16| {
        let mut cmd = cluster.porthole_on_client();
        cmd.args(["port-forward", &format!("pod/{POD}"), &format!(":{remote}")]);
        forward(name, cmd, &cluster.work, remote)
    };
    let (_flood_fwd, flood_port) = start("flood", 8001)?;
    let (_count_fwd, count_port) = start("count", 8002)?;
    let (_echo_fwd, echo_port) = start("echo", 9000)?;
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let flood = client.tcp_connect(local(flood_port), Duration::from_secs(10))?;
    let count = || -> Result<u64> {
        let mut c = client.tcp_connect(local(count_port), Duration::from_secs(10))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        s.trim().parse().with_context(|| format!("count {s:?}"))
    };
    let mut last = 0;
    let stuck = eventually(
        "the unread flood stops (every buffer on the way is full)",
        Duration::from_secs(60),
        || {
            let now = count()?;
            let same = now == last && now > 0;
            last = now;
            Ok(same.then_some(now))
        },
    )?;
    eprintln!("the unread connection is stuck after {stuck} bytes; echoing beside it");
    let mut echo = client.tcp_connect(local(echo_port), Duration::from_secs(10))?;
    echo.set_read_timeout(Some(Duration::from_secs(5)))?;
    let started = tokio::time::Instant::now();
    for i in 0..50u32 {
        let msg = format!("ping {i}");
        echo.write_all(msg.as_bytes())?;
        let mut back = vec![0u8; msg.len()];
        echo.read_exact(&mut back)
            .context("the echo stalled behind the unread connection")?;
        ensure!(back == msg.as_bytes());
    }
    let per_round_trip = started.elapsed() / 50;
    eprintln!("echo round trip beside the stuck stream: {per_round_trip:?}");
    ensure!(
        per_round_trip < Duration::from_millis(500),
        "echo round trips took {per_round_trip:?} beside the stuck stream"
    );
    drop(flood);
    Ok(())
}

/// kubectl port-forward to the pod's port 8000, through the balancer or one server.
fn kubectl_pf(cluster: &HaCluster, via: Option<usize>) -> Command {
    let mut cmd = cluster.kubectl_cmd();
    if let Some(i) = via {
        cmd.args(["--server", &cluster.apiservers[i].url()]);
    }
    cmd.args(["port-forward", &format!("pod/{POD}"), ":8000"]);
    cmd
}

fn start_nat_node(cluster: &mut HaCluster, join: &JoinLine) -> Result<(Host, usize)> {
    let started = cluster.start_nat_node(NAT_NODE, join)?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{NAT_NODE}"),
        "--timeout=90s",
    ])?;
    Ok(started)
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn a_node_behind_nat_serves_every_client_through_its_tunnels() {
    let layout = Layout {
        nodes: 1,
        etcd_members: 1,
        etcd_election_timeout: None,
    };
    porthole_test::ha::on_cluster(Path::new(bin()), "tunnel", layout, |cluster| {
        let join = cluster.token_create(&[])?;
        let (host, _) = start_nat_node(cluster, &join)?;
        let nodes = cluster.kubectl(&["get", "nodes", "-o", "wide"])?;
        eprintln!("{nodes}");
        ensure!(
            nodes
                .lines()
                .any(|l| l.starts_with(NAT_NODE) && l.contains(" Ready ")),
            "kubectl get nodes: {nodes}"
        );
        // Nobody can dial it: its address is private, behind the router.
        let api1 = cluster.apiservers[0].host.clone();
        ensure!(
            api1.tcp_connect(SocketAddr::from((host.ip(), 10250)), Duration::from_secs(3))
                .is_err(),
            "api1 reached {} directly",
            host.ip()
        );
        // Both servers are alive (identity leases) and each holds one tunnel.
        let leases = cluster.kubectl(&[
            "get",
            "leases",
            "-n",
            "kube-system",
            "-l",
            "apiserver.kubernetes.io/identity=kube-apiserver",
            "-o",
            "name",
        ])?;
        ensure!(leases.lines().count() == 2, "identity leases: {leases}");
        wait_tunnels(cluster, 0, 1.0, Duration::from_secs(60))?;
        wait_tunnels(cluster, 1, 1.0, Duration::from_secs(60))?;

        let file = write_file(&cluster.work, "nat-pod.yaml", &nat_pod())?;
        cluster.kubectl(&["apply", "-f", &file.display().to_string()])?;
        cluster.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{POD}"),
            "--timeout=90s",
        ])?;
        let logs = eventually("the pod's log", Duration::from_secs(20), || {
            let l = cluster.kubectl(&["logs", POD])?;
            Ok(l.contains("serving").then_some(l))
        })?;
        ensure!(logs.trim() == "serving", "kubectl logs: {logs:?}");

        every_client_reaches_the_pod(cluster)?;
        // Each server on its own, not only whichever the balancer picked.
        for i in 0..cluster.apiservers.len() {
            let cmd = kubectl_pf(cluster, Some(i));
            get_through(cluster, &format!("kubectl-via-api{}", i + 1), cmd)?;
        }
        a_stalled_stream_stalls_nothing_else(cluster)?;
        refusals(cluster)?;

        // kill -9 api1: its tunnel dies with it; back up, the node redials it.
        cluster.kill_apiserver(0)?;
        cluster.start_apiserver(0)?;
        wait_tunnels(cluster, 0, 1.0, Duration::from_secs(60))?;
        get_through(
            cluster,
            "kubectl-after-restart",
            kubectl_pf(cluster, Some(0)),
        )?;

        // A silent partition between the node's side (the router and the node) and every
        // other server host: the tunnels (each server's own address once the node learned it,
        // the balancer before) end within their keepalive (PINGs every 5 s, dead 10 s after)
        // and both servers drop theirs. Healed, the node redials both.
        let servers: Vec<String> = cluster
            .apiservers
            .iter()
            .map(|a| a.name.clone())
            .chain(["lb".to_string()])
            .collect();
        for side in ["nat", NAT_NODE] {
            for other in &servers {
                cluster.bed.partition(side, other)?;
            }
        }
        let cut = tokio::time::Instant::now();
        wait_tunnels(cluster, 0, 0.0, Duration::from_secs(30))?;
        wait_tunnels(cluster, 1, 0.0, Duration::from_secs(30))?;
        eprintln!(
            "both servers dropped the cut-off tunnels after {:?}",
            cut.elapsed()
        );
        for side in ["nat", NAT_NODE] {
            for other in &servers {
                cluster.bed.heal(side, other)?;
            }
        }
        let healed = tokio::time::Instant::now();
        wait_tunnels(cluster, 0, 1.0, Duration::from_secs(60))?;
        wait_tunnels(cluster, 1, 1.0, Duration::from_secs(60))?;
        eprintln!("both tunnels back {:?} after the heal", healed.elapsed());
        get_through(
            cluster,
            "kubectl-after-partition",
            kubectl_pf(cluster, None),
        )?;
        Ok(())
    });
}
