//! porthole across simulated hosts (`porthole_test::ha`): etcd on one host, two API servers on
//! two more, haproxy health-checking `/readyz` in front of them, nodes that joined with a
//! bootstrap token through the balancer, and clients on a host of their own.
//!
//! - real kubectl (SPDY and the WebSocket tunnel), the Python client (WebSocket channels) and
//!   `porthole port-forward` reach a pod on each of three nodes through the balancer;
//! - a watch on one server sees a pod created through the other within 1 s;
//! - kill -9 of the API server carrying a `porthole port-forward` session: the forward goes on
//!   through the other server;
//! - kill -9 of the leader: the other server takes the controllers' lease within 20 s, the
//!   deployment is scaled by the new leader and no pod is made twice;
//! - etcd stopped: `/readyz` false, 503 with a Status body, the balancer takes both servers
//!   out; etcd back: both recover without a restart, with everything written before;
//! - joins with a wrong token, an expired token or a wrong CA hash are refused, clearly;
//! - nothing is left afterwards: processes, namespaces, etcd data.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use porthole_test::ha::{eventually, http_get_on, HaCluster, JoinLine, Layout};
use porthole_test::{write_file, Child, Clients};
use tokio::time::Instant;

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// A pod pinned to `node` whose HTTP server on 127.0.0.1:8000 answers with its own name.
fn pinned_pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    app: pinned
spec:
  nodeName: {node}
  containers:
  - name: web
    image: python:3-slim
    command:
    - python3
    - -c
    - |
      import http.server
      class H(http.server.BaseHTTPRequestHandler):
          def do_GET(self):
              body = b"{name}"
              self.send_response(200)
              self.send_header("Content-Length", str(len(body)))
              self.end_headers()
              self.wfile.write(body)
      http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
    readinessProbe:
      tcpSocket:
        port: 8000
      periodSeconds: 1
"#
    )
}

/// Starts a port-forward client on the client host and waits for its `Forwarding from
/// 127.0.0.1:N -> 8000` line; the child and N.
fn forward(name: &str, cmd: std::process::Command, work: &Path) -> Result<(Child, u16)> {
    let f = porthole_test::Forward::start(name, cmd, work, 8000)?;
    Ok((f.child, f.local_port))
}

fn pods_on_nodes(cluster: &HaCluster) -> Result<Vec<(String, String)>> {
    let out = cluster.kubectl(&[
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect())
}

fn on_cluster(name: &str, nodes: usize, test: impl FnOnce(&mut HaCluster) -> Result<()>) {
    let layout = Layout {
        nodes,
        etcd_members: 1,
        etcd_election_timeout: None,
    };
    porthole_test::ha::on_cluster(Path::new(bin()), name, layout, test);
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn every_client_reaches_every_node_through_the_balancer_and_outlives_a_server() {
    on_cluster("ha-forward", 3, |cluster| {
        let mut manifests = String::new();
        for i in 1..=3 {
            manifests.push_str(&pinned_pod(&format!("web-node{i}"), &format!("node{i}")));
            manifests.push_str("---\n");
        }
        let file = write_file(&cluster.work, "pods.yaml", &manifests)?;
        cluster.kubectl(&["apply", "-f", &file.display().to_string()])?;
        cluster.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "--all",
            "--timeout=90s",
        ])?;
        let placed = pods_on_nodes(cluster)?;
        for i in 1..=3 {
            let (pod, node) = (format!("web-node{i}"), format!("node{i}"));
            ensure!(
                placed.contains(&(pod.clone(), node.clone())),
                "{pod} is not on {node}: {placed:?}"
            );
        }

        let client = cluster.client().clone();
        let clients = Clients::from_env()?;
        for i in 1..=3 {
            let pod = format!("web-node{i}");
            for (transport, websockets) in [("spdy", "false"), ("websocket-tunnel", "true")] {
                let mut cmd = cluster.kubectl_cmd();
                cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
                    .args(["port-forward", &format!("pod/{pod}"), ":8000"]);
                let (mut child, port) =
                    forward(&format!("kubectl-{transport}-{pod}"), cmd, &cluster.work)?;
                let body = http_get_on(&client, port).with_context(|| child.report())?;
                ensure!(
                    body == pod,
                    "kubectl {transport} to {pod} answered {body:?}"
                );
                child.interrupt(Duration::from_secs(20))?;
            }
            if let Some(python) =
                clients.optional(&clients.python, "PORTHOLE_PYTHON", "the Python client")
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
                    .arg(&pod)
                    .stdin(Stdio::null())
                    .output()?;
                let body = porthole_test::expect_success("python port-forward", &out)?;
                ensure!(body == pod, "python client to {pod} answered {body:?}");
            }
        }

        // A watch on api1 sees a pod created through api2.
        let mut watch_cmd = cluster.kubectl_cmd();
        watch_cmd.args([
            "--server",
            &cluster.apiservers[0].url(),
            "get",
            "pods",
            "--watch",
            "-o",
            "name",
        ]);
        let mut watch = Child::spawn("watch-api1", watch_cmd, &cluster.work)?;
        watch.wait_for_line(Duration::from_secs(30), |l| {
            (l == "pod/web-node1").then_some(())
        })?;
        let late = write_file(&cluster.work, "late.yaml", &pinned_pod("late", "node1"))?;
        // Timed from before the write (an upper bound: it includes kubectl's own round trip).
        let written = Instant::now();
        cluster.kubectl_on(1, &["create", "-f", &late.display().to_string()])?;
        watch.wait_for_line(Duration::from_secs(10), |l| (l == "pod/late").then_some(()))?;
        let seen = written.elapsed();
        eprintln!("watch on api1 saw the pod created through api2 after {seen:?}");
        ensure!(
            seen <= Duration::from_secs(1),
            "the watch took {seen:?} (> 1 s)"
        );
        drop(watch);

        // porthole port-forward through the balancer; kill -9 the server carrying it.
        let mut cmd = cluster.porthole_on_client();
        cmd.args(["port-forward", "pod/web-node2", ":8000"]);
        let (mut fwd, port) = forward("porthole-forward", cmd, &cluster.work)?;
        ensure!(http_get_on(&client, port)? == "web-node2");
        let carrier = eventually(
            "a server reports the forward's session",
            Duration::from_secs(10),
            || {
                for i in 0..cluster.apiservers.len() {
                    if cluster.metric(i, "porthole_portforward_sessions_active")? >= 1.0 {
                        return Ok(Some(i));
                    }
                }
                Ok(None)
            },
        )?;
        eprintln!(
            "the forward runs through {}; killing it",
            cluster.apiservers[carrier].name
        );
        cluster.kill_apiserver(carrier)?;
        // The next connection waits for the client's reconnect, through the other server.
        let body = http_get_on(&client, port).with_context(|| fwd.report())?;
        ensure!(body == "web-node2", "after the kill: {body:?}");
        let other = 1 - carrier;
        ensure!(
            cluster.metric(other, "porthole_portforward_sessions_active")? >= 1.0,
            "the reconnected session is not on {}",
            cluster.apiservers[other].name
        );
        for _ in 0..5 {
            ensure!(http_get_on(&client, port)? == "web-node2");
        }
        fwd.interrupt(Duration::from_secs(20))?;
        cluster.start_apiserver(carrier)?;
        Ok(())
    });
}

/// `Some` once exactly `want` pods of the example deployment exist.
fn web_pods(cluster: &HaCluster, want: usize) -> Result<Option<()>> {
    let out = cluster.kubectl(&["get", "pods", "-l", "app=web-app", "-o", "name"])?;
    Ok((out.lines().count() == want).then_some(()))
}

/// What a refused join printed on stderr (it must exit non-zero, without hanging).
fn refused_join(cluster: &HaCluster, join: &JoinLine, name: &str) -> Result<String> {
    let client = cluster.client().clone();
    let out = cluster
        .node_command(&client, name, join)
        .stdin(Stdio::null())
        .output()?;
    ensure!(!out.status.success(), "the join with {join:?} succeeded");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn leader_failover_store_outage_and_refused_joins() {
    on_cluster("ha-leader", 2, |cluster| {
        let first = eventually("a leader", Duration::from_secs(30), || cluster.leader())?;
        cluster.deploy_example_web()?;

        // Every pod ever created, seen from the server that stays up.
        let follower = 1 - first;
        let mut watch_cmd = cluster.kubectl_cmd();
        watch_cmd.args([
            "--server",
            &cluster.apiservers[follower].url(),
            "get",
            "pods",
            "-l",
            "app=web-app",
            "--watch",
            "-o",
            "name",
        ]);
        let mut watch = Child::spawn("watch-pods", watch_cmd, &cluster.work)?;
        watch.wait_for_line(Duration::from_secs(30), |_| Some(()))?;

        cluster.kill_apiserver(first)?;
        let killed = Instant::now();
        let next = eventually("a new leader", Duration::from_secs(30), || cluster.leader())?;
        let handover = killed.elapsed();
        eprintln!(
            "{} took over the controllers {handover:?} after kill -9 of {}",
            cluster.apiservers[next].name, cluster.apiservers[first].name
        );
        ensure!(next == follower, "the leader is {next}, want {follower}");
        ensure!(
            handover <= Duration::from_secs(20),
            "handover took {handover:?} (> 20 s)"
        );
        // The new leader runs the controllers: scale up through it.
        cluster.kubectl(&["scale", "deployment/web-app", "--replicas=3"])?;
        eventually("3 pods", Duration::from_secs(60), || web_pods(cluster, 3))?;
        cluster.start_apiserver(first)?;
        ensure!(
            cluster.leader()? == Some(follower),
            "the restarted server took the lease back"
        );
        // Nothing was done twice: exactly 3 pods were ever made.
        let seen: std::collections::BTreeSet<String> = watch
            .stdout_lines()
            .into_iter()
            .filter(|l| l.starts_with("pod/"))
            .collect();
        ensure!(seen.len() == 3, "pods ever seen: {seen:?}");
        drop(watch);

        // The store goes away.
        cluster.etcd[0].stop()?;
        for i in 0..cluster.apiservers.len() {
            eventually("/readyz false", Duration::from_secs(20), || {
                Ok(cluster
                    .kubectl_on(i, &["get", "--raw", "/readyz"])
                    .is_err()
                    .then_some(()))
            })?;
            let out = cluster
                .kubectl_cmd()
                .args(["--server", &cluster.apiservers[i].url(), "get", "pods"])
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success() && stderr.contains("ServiceUnavailable"),
                "get pods without etcd: {stderr}"
            );
        }
        cluster.lb.wait_for(Duration::from_secs(20), |states| {
            states.iter().all(|(_, s)| s.starts_with("DOWN"))
        })?;
        for api in &mut cluster.apiservers {
            let child = api.child.as_mut().context("server not running")?;
            ensure!(
                child.wait_timeout(Duration::ZERO).is_err(),
                "{} exited while etcd was down",
                api.name
            );
        }
        cluster.etcd[0].start()?;
        for i in 0..cluster.apiservers.len() {
            eventually("/readyz true", Duration::from_secs(30), || {
                Ok(cluster
                    .kubectl_on(i, &["get", "--raw", "/readyz"])
                    .is_ok()
                    .then_some(()))
            })?;
        }
        cluster.lb.wait_for(Duration::from_secs(20), |states| {
            states.iter().all(|(_, s)| s.starts_with("UP"))
        })?;
        eventually("3 pods after the outage", Duration::from_secs(30), || {
            web_pods(cluster, 3)
        })?;

        // Joins that must be refused, from a host that is not a node.
        let join = cluster.token_create(&[])?;
        let zeros = format!("sha256:{}", "0".repeat(64));
        let stderr = refused_join(
            cluster,
            &JoinLine {
                ca_cert_hash: zeros.clone(),
                ..join.clone()
            },
            "intruder",
        )?;
        ensure!(
            stderr.contains(&format!("does not match --ca-cert-hash {zeros}")),
            "wrong hash: {stderr}"
        );
        let id = join.token.split('.').next().unwrap_or_default();
        let unknown = if id == "zzzzzz" { "yyyyyy" } else { "zzzzzz" };
        let stderr = refused_join(
            cluster,
            &JoinLine {
                token: format!("{unknown}.0123456789abcdef"),
                ..join.clone()
            },
            "intruder",
        )?;
        ensure!(
            stderr.contains(&format!(
                "bootstrap token {unknown} is not valid on this cluster"
            )),
            "wrong token: {stderr}"
        );
        let short = cluster.token_create(&["--ttl", "1s"])?;
        eventually("the 1 s token expires", Duration::from_secs(30), || {
            let mut cmd = cluster.porthole_on_client();
            let out = cmd.args(["token", "list"]).output()?;
            let list = porthole_test::expect_success("porthole token list", &out)?;
            Ok((!list.contains(&short.token)).then_some(()))
        })?;
        let stderr = refused_join(cluster, &short, "intruder")?;
        ensure!(stderr.contains("has expired"), "expired token: {stderr}");
        let nodes = cluster.kubectl(&["get", "nodes", "-o", "name"])?;
        ensure!(
            !nodes.contains("intruder"),
            "a refused join registered a node: {nodes}"
        );
        Ok(())
    });
}
