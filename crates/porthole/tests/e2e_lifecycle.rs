//! `porthole up`'s lifecycle with real kubectl: get, logs, wait, delete; a deployment behind a
//! service; Ctrl-C leaves no process, mount or network namespace; a restart on the same data
//! dir brings the pods back; a second `up` on a busy data dir is refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use porthole_test::{example, http_get, Cluster, Forward, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

#[test]
fn kubectl_get_logs_wait_delete_and_a_deployment_behind_a_service() {
    if !porthole_test::require_pods(
        "kubectl_get_logs_wait_delete_and_a_deployment_behind_a_service",
    ) {
        return;
    }
    let work = TempDir::new("kubectl").unwrap();
    let cluster = Cluster::up(
        Path::new(bin()),
        work.path(),
        &[example("echo.yaml"), example("deployment.yaml")],
    )
    .unwrap();
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("default", "echo")?;

        let nodes = cluster.kubectl(&["get", "nodes"])?;
        ensure!(
            nodes.contains("porthole-node") && nodes.contains("Ready"),
            "kubectl get nodes:\n{nodes}"
        );
        let pods = cluster.kubectl(&["get", "pods"])?;
        ensure!(
            pods.lines()
                .any(|l| l.starts_with("echo ") && l.contains("Running")),
            "kubectl get pods:\n{pods}"
        );

        let logs = cluster.kubectl(&["logs", "echo"])?;
        ensure!(
            logs.contains("echo server on 127.0.0.1:7000"),
            "kubectl logs echo:\n{logs}"
        );

        // The deployment's two replicas: wait until the controller has created both (kubectl
        // wait needs them to exist), then until both are Ready.
        let mut names = Vec::new();
        for _ in 0..300 {
            let out = cluster.kubectl(&["get", "pods", "-l", "app=web-app", "-o", "name"])?;
            names = out.lines().map(str::to_string).collect();
            if names.len() == 2 {
                break;
            }
            // Polls the API server for the controller's work; bounded to 60 s.
            std::thread::sleep(Duration::from_millis(200));
        }
        ensure!(
            names.len() == 2,
            "deployment web-app has {} pods, want 2: {names:?}",
            names.len()
        );
        let mut wait = vec!["wait", "--for=condition=Ready", "--timeout=90s"];
        wait.extend(names.iter().map(String::as_str));
        cluster.kubectl(&wait)?;
        let deploy = cluster.kubectl(&["get", "deployment", "web-app"])?;
        ensure!(deploy.contains("2/2"), "kubectl get deployment:\n{deploy}");
        let svc = cluster.kubectl(&["get", "svc", "web-svc"])?;
        ensure!(svc.contains("web-svc"), "kubectl get svc:\n{svc}");

        // Forward to the service's named port: a Ready pod behind it answers.
        let mut cmd = cluster.porthole_cmd();
        cmd.args(["port-forward", "svc/web-svc", ":http"]);
        Forward::with("porthole-svc", cmd, work.path(), 8000, |port| {
            let (status, body) = http_get(port, "/")?;
            ensure!(
                status == 200 && body.starts_with(b"hello from "),
                "via svc/web-svc: {status} {:?}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        })?;

        // kubectl delete waits until the pod is gone (the node stopped it).
        cluster.kubectl(&["delete", "pod", "echo", "--timeout=60s"])?;
        let out = cluster
            .kubectl_cmd(&cluster.kubectl)
            .args(["get", "pod", "echo"])
            .output()?;
        ensure!(!out.status.success(), "pod echo still there after delete");
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("NotFound"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}

#[test]
fn ctrl_c_cleans_up_and_a_restart_brings_the_pods_back() {
    if !porthole_test::require_pods("ctrl_c_cleans_up_and_a_restart_brings_the_pods_back") {
        return;
    }
    let work = TempDir::new("restart").unwrap();
    let data = work.path().join("data");
    let first = Cluster::up_with(
        Path::new(bin()),
        work.path(),
        &data,
        &[example("web.yaml")],
        &[],
    )
    .unwrap();
    first.wait_pod_ready("default", "web").unwrap();
    let uid = first
        .kubectl(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"])
        .unwrap();
    ensure_pod_process(&first);

    // A second `up` on the same data dir is refused while the first runs.
    let out = Command::new(bin())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "second up: {stderr}");
    assert!(
        stderr.contains("already running on the data dir")
            && stderr.contains(&format!("pid {}", first.child.pid())),
        "second up names the dir and the pid: {stderr}"
    );

    // Ctrl-C: exit 0, no process, mount or namespace left (checked by stop()).
    first.stop().unwrap();
    assert!(!porthole_test::mounts_mentioning(&data.to_string_lossy())
        .iter()
        .any(|m| m.contains("netns")));

    // Restart without -f: the pod comes back from the stored state, same object.
    let second = Cluster::up_with(Path::new(bin()), work.path(), &data, &[], &[]).unwrap();
    let res = (|| -> Result<()> {
        second.wait_pod_ready("default", "web")?;
        let uid_after = second.kubectl(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"])?;
        ensure!(
            uid_after == uid,
            "pod web has uid {uid_after} after the restart, was {uid}"
        );
        let mut cmd = second.porthole_cmd();
        cmd.args(["port-forward", "web", ":8000"]);
        Forward::with("porthole-after-restart", cmd, work.path(), 8000, |port| {
            let (status, _) = http_get(port, "/")?;
            ensure!(status == 200, "GET / after the restart: {status}");
            Ok(())
        })
    })();
    porthole_test::finish(second, res);
}

/// The leftover check is only meaningful if the pod's process was a descendant of `up`.
fn ensure_pod_process(cluster: &Cluster) {
    let procs = cluster.processes();
    let has_http_server = procs.iter().any(|p| {
        std::fs::read(format!("/proc/{}/cmdline", p.pid))
            .map(|c| String::from_utf8_lossy(&c).contains("http.server"))
            .unwrap_or(false)
    });
    assert!(
        has_http_server,
        "the web pod's python process runs under porthole up: {procs:?}"
    );
}

/// An object the API server refuses: `up` says which file and object, exits 1, removes the
/// kubeconfig it had written (so nobody waits on a dead cluster) and leaves nothing running.
#[test]
fn a_bad_object_stops_up_cleanly() {
    if !porthole_test::require_pods("a_bad_object_stops_up_cleanly") {
        return;
    }
    let work = TempDir::new("badobject").unwrap();
    let file = porthole_test::write_file(
        work.path(),
        "bad.yaml",
        "apiVersion: example.com/v1\nkind: Frobnicator\nmetadata: {name: x}\n",
    )
    .unwrap();
    let data = work.path().join("data");
    let mut child = porthole_test::Child::spawn(
        "porthole-up-bad",
        {
            let mut cmd = Command::new(bin());
            cmd.args(["up", "--listen", "127.0.0.1:0", "-f"])
                .arg(&file)
                .arg("--data-dir")
                .arg(&data);
            cmd
        },
        work.path(),
    )
    .unwrap();
    let status = child.wait_timeout(porthole_test::READY_TIMEOUT).unwrap();
    let report = child.report();
    assert_eq!(status.code(), Some(1), "{report}");
    assert!(
        report.contains("bad.yaml#1") && report.contains("Frobnicator"),
        "{report}"
    );
    assert!(
        !data.join("kubeconfig").exists(),
        "kubeconfig removed after a failed start"
    );
    porthole_test::check_no_leftovers(&data, &Default::default()).unwrap();
}
