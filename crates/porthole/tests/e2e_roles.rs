//! The roles as separate processes (Contract 2): `porthole apiserver` and `porthole node`, each
//! on `--listen 127.0.0.1:0`, print their ready lines with the real address, form a cluster
//! with the PKI that `porthole up` wrote, serve kubectl and port-forward, and stop cleanly on
//! SIGTERM.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};
use nix::sys::signal::Signal;
use porthole_test::{echo_roundtrip, example, http_get, pattern, Child, Cluster, Forward, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

#[test]
fn apiserver_and_node_as_separate_processes() {
    if !porthole_test::require_pods("apiserver_and_node_as_separate_processes") {
        return;
    }
    let work = TempDir::new("roles").unwrap();
    let data = work.path().join("data");
    // `up` once, for the PKI of Contract 3 and the kubeconfig.
    Cluster::up(Path::new(bin()), work.path(), &[])
        .unwrap()
        .stop()
        .unwrap();
    let pki = data.join("pki");
    let p = |name: &str| pki.join(name).display().to_string();

    let mut apiserver_cmd = Command::new(bin());
    apiserver_cmd.args([
        "apiserver",
        "--listen=127.0.0.1:0",
        &format!("--data-dir={}", data.join("apiserver").display()),
        &format!("--tls-cert-file={}", p("apiserver.crt")),
        &format!("--tls-private-key-file={}", p("apiserver.key")),
        &format!("--client-ca-file={}", p("ca.crt")),
        &format!("--token-auth-file={}", data.join("tokens.csv").display()),
        &format!(
            "--kubelet-client-certificate={}",
            p("apiserver-kubelet-client.crt")
        ),
        &format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
        &format!("--kubelet-certificate-authority={}", p("ca.crt")),
    ]);
    let mut apiserver = Child::spawn("apiserver", apiserver_cmd, work.path()).unwrap();
    let server = apiserver
        .wait_for_line(porthole_test::READY_TIMEOUT, |l| {
            l.strip_prefix("porthole apiserver listening on ")
                .map(str::to_string)
        })
        .unwrap();
    assert!(
        server.starts_with("https://127.0.0.1:") && !server.ends_with(":0"),
        "{server}"
    );

    let mut node_cmd = Command::new(bin());
    node_cmd.args([
        "node",
        "--listen=127.0.0.1:0",
        "--node-name=porthole-node",
        &format!("--data-dir={}", data.display()),
        &format!("--api-server={server}"),
        &format!("--api-ca-file={}", p("ca.crt")),
        &format!("--client-cert-file={}", p("node-porthole-node-client.crt")),
        &format!("--client-key-file={}", p("node-porthole-node-client.key")),
        &format!("--tls-cert-file={}", p("node-porthole-node.crt")),
        &format!("--tls-private-key-file={}", p("node-porthole-node.key")),
        &format!("--client-ca-file={}", p("ca.crt")),
    ]);
    let mut node = Child::spawn("node", node_cmd, work.path()).unwrap();
    let node_url = node
        .wait_for_line(porthole_test::READY_TIMEOUT, |l| {
            l.strip_prefix("porthole node porthole-node listening on ")
                .map(str::to_string)
        })
        .unwrap();
    assert!(node_url.starts_with("https://127.0.0.1:"), "{node_url}");

    let clients = porthole_test::Clients::from_env().unwrap();
    let kubectl = |args: &[&str]| -> Result<String> {
        let out = Command::new(&clients.kubectl)
            .arg("--kubeconfig")
            .arg(data.join("kubeconfig"))
            .arg("--server")
            .arg(&server)
            .arg("--cache-dir")
            .arg(work.path().join("kube-cache"))
            .args(args)
            .output()?;
        porthole_test::expect_success(&format!("kubectl {}", args.join(" ")), &out)
    };
    let res = (|| -> Result<()> {
        kubectl(&[
            "wait",
            "--for=condition=Ready",
            "node/porthole-node",
            "--timeout=60s",
        ])?;
        kubectl(&["create", "-f", &example("web.yaml").display().to_string()])?;
        kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=90s"])?;
        let mut cmd = Command::new(bin());
        cmd.env("KUBECONFIG", data.join("kubeconfig")).args([
            "port-forward",
            "--server",
            &server,
            "web",
            ":8000",
        ]);
        Forward::with("porthole-pf", cmd, work.path(), 8000, |port| {
            let (status, _) = http_get(port, "/")?;
            ensure!(status == 200, "GET / through the separate roles: {status}");
            Ok(())
        })
    })();
    let before: BTreeSet<_> = porthole_test::descendants(node.pid());
    let stopped = stop_both(&mut node, &mut apiserver);
    if let Err(e) = res {
        panic!("{e:#}\n\n{}\n\n{}", node.report(), apiserver.report());
    }
    stopped.unwrap();
    porthole_test::check_no_leftovers(&data, &before).unwrap();
}

/// SIGTERM the node (it stops its pods) and then the API server; both must exit 0.
fn stop_both(node: &mut Child, apiserver: &mut Child) -> Result<()> {
    node.signal(Signal::SIGTERM)?;
    let node_status = node.wait_timeout(porthole_test::STOP_TIMEOUT)?;
    apiserver.signal(Signal::SIGTERM)?;
    let api_status = apiserver.wait_timeout(porthole_test::STOP_TIMEOUT)?;
    ensure!(
        node_status.success(),
        "node exited with {node_status} after SIGTERM"
    );
    ensure!(
        api_status.success(),
        "apiserver exited with {api_status} after SIGTERM"
    );
    Ok(())
}

/// `porthole up` hands its node connections to the embedded node agent in memory by default;
/// with `--node-over-tls` it dials the node's TLS endpoint like a separate API server would.
/// Both carry porthole's and kubectl's forwards, byte for byte.
#[test]
fn up_with_and_without_the_in_process_node_link() {
    if !porthole_test::require_pods("up_with_and_without_the_in_process_node_link") {
        return;
    }
    let work = TempDir::new("node-link").unwrap();
    for (i, extra) in [&[][..], &["--node-over-tls"][..]].into_iter().enumerate() {
        let dir = work.path().join(format!("run{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Cluster::up_with(
            Path::new(bin()),
            &dir,
            &dir.join("data"),
            &[example("echo.yaml")],
            extra,
        )
        .unwrap();
        cluster.wait_pod_ready("default", "echo").unwrap();
        let payload = pattern(1 << 20, 11 + i as u64);
        let mut porthole = cluster.porthole_cmd();
        porthole.args(["port-forward", "pod/echo", ":7000"]);
        let mut kubectl = cluster.kubectl_cmd(Path::new("/usr/bin/kubectl"));
        kubectl.args(["port-forward", "pod/echo", ":7000"]);
        for (name, cmd) in [("porthole", porthole), ("kubectl", kubectl)] {
            let fwd = Forward::start(&format!("{name}-{i}"), cmd, &dir, 7000).unwrap();
            // Several connections, so the early-data path and the pairing both get exercised.
            for _ in 0..3 {
                let back = echo_roundtrip(fwd.local_port, &payload).unwrap();
                assert!(back == payload, "{extra:?} {name}: echo differs");
            }
            assert!(
                fwd.stop().unwrap().success(),
                "{extra:?} {name}: exit status"
            );
        }
        cluster.stop().unwrap();
    }
}
