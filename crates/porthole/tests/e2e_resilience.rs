//! What `porthole port-forward` survives that kills `kubectl port-forward` (issue 5): the node
//! agent and the API server each SIGKILLed and restarted under a running forward, a
//! deployment's pod replaced under a forward, and Ctrl-C leaving no stream open on the node.
//!
//! Waiting for the forward to work again is a bounded poll of a real request: the client is
//! reconnecting with back-off and there is no line to wait for that would say "the pod is
//! listening again" — the request succeeding is that signal.

// Blocking test code (threads, child processes), not tokio: std time is the right clock here.
#![allow(clippy::disallowed_types)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use porthole_test::{example, http_get, Cluster, Forward, Roles, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// How long a forward may take to work again after a restart.
const RECOVERY: Duration = Duration::from_secs(90);

/// GETs `path` through `port` until it answers 200 and `accept` likes the body, or `RECOVERY`
/// passes. Returns the body.
fn get_until(port: u16, path: &str, accept: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let last = match http_get(port, path) {
            Ok((200, body)) => {
                let body = String::from_utf8_lossy(&body).into_owned();
                if accept(&body) {
                    return Ok(body);
                }
                format!("unexpected body {body:?}")
            }
            Ok((status, _)) => format!("status {status}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("no good answer through port {port} within {RECOVERY:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Established TCP connections to or from `port` on this machine (from /proc/net/tcp{,6}).
fn established_on(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; state 01 = ESTABLISHED.
            if f.len() < 4 || f[3] != "01" {
                continue;
            }
            let port_of = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if port_of(f[1]) == Some(port) || port_of(f[2]) == Some(port) {
                n += 1;
            }
        }
    }
    n
}

fn port_of_url(url: &str) -> Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in {url}"))
}

#[test]
fn forward_survives_node_and_apiserver_restarts() {
    if !porthole_test::require_pods("forward_survives_node_and_apiserver_restarts") {
        return;
    }
    let work = TempDir::new("resilience").unwrap();
    let mut roles = Roles::start(Path::new(bin()), work.path()).unwrap();
    let res = (|| -> Result<()> {
        roles.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "node/porthole-node",
            "--timeout=60s",
        ])?;
        roles.kubectl(&["create", "-f", &example("web.yaml").display().to_string()])?;
        roles.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=90s"])?;

        let mut cmd = Command::new(bin());
        cmd.env("KUBECONFIG", roles.data_dir.join("kubeconfig"))
            .args(["port-forward", "--server", &roles.server, "web", ":8000"]);
        let fwd = Forward::start("porthole-pf", cmd, work.path(), 8000)?;
        let port = fwd.local_port;
        let run = (|| -> Result<()> {
            get_until(port, "/", |_| true).context("first request")?;

            // The node agent dies (kill -9) and comes back on a new port; the pod is
            // recreated. The same local port must work again without restarting the client.
            roles.kill_node()?;
            roles.start_node()?;
            get_until(port, "/", |_| true).context("after the node agent restarted")?;

            // The API server dies (kill -9) and comes back on the same address.
            let listen = roles.server.trim_start_matches("https://").to_string();
            roles.kill_apiserver()?;
            roles.start_apiserver(&listen)?;
            get_until(port, "/", |_| true).context("after the API server restarted")?;

            let out = fwd.child.stdout_lines().join("\n");
            ensure!(
                fwd.child.report().contains("econnect"),
                "the client did not report reconnecting:\n{out}"
            );
            Ok(())
        })();
        let report = fwd.child.report();
        let status = fwd.stop()?;
        run.map_err(|e| e.context(report.clone()))?;
        ensure!(
            status.success(),
            "port-forward exited {status} after Ctrl-C\n{report}"
        );

        // Ctrl-C closed the upgraded connection end to end: nothing stays connected to the
        // node's streaming port.
        let node_port = port_of_url(&roles.node_url)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while established_on(node_port) > 0 {
            ensure!(
                Instant::now() < deadline,
                "{} connection(s) to the node's port {node_port} still open 20 s after Ctrl-C",
                established_on(node_port)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    let report = roles.report();
    let stopped = roles.stop();
    if let Err(e) = res {
        panic!("{e:#}\n\n{report}");
    }
    stopped.unwrap();
}

/// Watches of pods in `default` recorded in the audit log so far.
fn pod_watches(cluster: &Cluster) -> Result<usize> {
    let audit = std::fs::read_to_string(cluster.data_dir.join("audit.log"))?;
    Ok(audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["verb"] == "watch" && r["path"] == "/api/v1/namespaces/default/pods")
        .count())
}

#[test]
fn forward_moves_to_the_replacement_pod() {
    if !porthole_test::require_pods("forward_moves_to_the_replacement_pod") {
        return;
    }
    let work = TempDir::new("replace").unwrap();
    let cluster =
        Cluster::up(Path::new(bin()), work.path(), &[example("deployment.yaml")]).unwrap();
    let res = (|| -> Result<()> {
        cluster.kubectl(&["scale", "deployment/web-app", "--replicas=1"])?;
        cluster.kubectl(&[
            "wait",
            "--for=jsonpath={.status.replicas}=1",
            "deployment/web-app",
            "--timeout=90s",
        ])?;
        // Nothing between here and the check below watches pods but the forward's client
        // (the delete does not wait).
        let before = pod_watches(&cluster)?;
        let mut cmd = cluster.porthole_cmd();
        cmd.args(["port-forward", "deployment/web-app", ":8000"]);
        Forward::with("porthole-deploy", cmd, work.path(), 8000, |port| {
            let first = get_until(port, "/", |b| b.starts_with("hello from "))?;
            let pod = first
                .trim()
                .strip_prefix("hello from ")
                .and_then(|s| s.split_whitespace().next())
                .context("pod name in the answer")?
                .to_string();
            cluster.kubectl(&["delete", "pod", &pod, "--wait=false", "--ignore-not-found"])?;
            // The deployment controller makes a replacement; the forward follows it.
            let second = get_until(port, "/", |b| !b.contains(&pod))?;
            ensure!(second.starts_with("hello from web-app-"), "{second}");
            // The client learnt of the deletion from a watch of that one pod, not by
            // re-reading it every two seconds.
            let after = pod_watches(&cluster)?;
            ensure!(
                after > before,
                "the client watches its pod ({before} pod watches before it started, {after} after)"
            );
            Ok(())
        })
    })();
    porthole_test::finish(cluster, res);
}
