//! `scripts/cluster.sh`, as a person runs it: `up` brings up etcd, two API servers behind
//! haproxy and three joined nodes on simulated hosts (network namespaces `NAME-*`) and prints
//! the admin kubeconfig; kubectl on the client host lists the three nodes Ready through the
//! balancer; `status` sees every component and both backends UP; `down` leaves no namespace,
//! no process naming the cluster's directory and no directory, and running it again is fine.
//! `down` also runs when the test fails half-way (a guard's Drop).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use porthole_test::{repo_root, testbed, Child, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// How long `up` may take (each of its own waits is bounded by 90 s; this turns a hang into a
/// failure).
const UP_TIMEOUT: Duration = Duration::from_secs(300);

fn script(command: &str, name: &str, dir: &Path) -> Command {
    let root = repo_root();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/cluster.sh"))
        .arg(command)
        .arg("--dir")
        .arg(dir)
        .arg("--name")
        .arg(name)
        .current_dir(root)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null());
    cmd
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cluster.sh down` when dropped, unless [`Down::down`] already did, so a failing test
/// leaves no namespaces or processes behind.
struct Down {
    name: String,
    dir: PathBuf,
    done: bool,
}

impl Down {
    fn down(&mut self) -> Result<Output> {
        self.done = true;
        script("down", &self.name, &self.dir)
            .output()
            .context("run cluster.sh down")
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if !self.done {
            match self.down() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("cluster.sh down (cleanup) failed: {}", describe(&out)),
                Err(e) => eprintln!("cluster.sh down (cleanup): {e:#}"),
            }
        }
    }
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn cluster_script_up_status_down() {
    porthole_test::require_root("cluster_script_up_status_down");
    let work = TempDir::new("cluster-script").unwrap();
    // A directory of its own that `up` creates (and `down` removes); the test's logs stay in
    // `work`.
    let dir = work.path().join("cluster");
    let name = format!("phc{}", std::process::id());
    let mut guard = Down {
        name: name.clone(),
        dir: dir.clone(),
        done: false,
    };
    let kubectl = porthole_test::Clients::from_env().unwrap().kubectl;

    let res = (|| -> Result<()> {
        let mut up = script("up", &name, &dir);
        up.arg("--bin").arg(bin());
        let mut up = Child::spawn("cluster-up", up, work.path())?;
        let kubeconfig = up.wait_for_line(UP_TIMEOUT, |l| {
            l.trim().strip_prefix("kubeconfig: ").map(PathBuf::from)
        })?;
        // The last line of the usage it prints.
        let last = format!("cluster.sh down --name {name}");
        up.wait_for_line(Duration::from_secs(30), |l| l.contains(&last).then_some(()))?;
        let status = up.wait_timeout(Duration::from_secs(30))?;
        ensure!(status.success(), "cluster.sh up: {status}\n{}", up.report());
        ensure!(
            kubeconfig == dir.join("admin.kubeconfig") && kubeconfig.is_file(),
            "printed kubeconfig {}",
            kubeconfig.display()
        );
        let lines = up.stdout_lines().join("\n");
        ensure!(
            lines.contains(&format!("ip netns exec {name}-client kubectl --kubeconfig")),
            "up prints how to use the cluster:\n{lines}"
        );

        // The printed kubeconfig works from the client host, through the balancer.
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{name}-client")])
            .arg(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(work.path().join("kube-cache"))
            .args(["get", "nodes", "--no-headers"])
            .stdin(Stdio::null())
            .output()?;
        let nodes = porthole_test::expect_success("kubectl get nodes", &out)?;
        let mut ready: Vec<&str> = nodes
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.get(1) == Some(&"Ready")).then(|| cols[0])
            })
            .collect();
        ready.sort_unstable();
        ensure!(
            ready == ["node1", "node2", "node3"],
            "kubectl get nodes:\n{nodes}"
        );

        let out = script("status", &name, &dir).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "status: {}", describe(&out));
        ensure!(
            text.contains("api1 UP L7OK") && text.contains("api2 UP L7OK"),
            "status shows both backends UP:\n{text}"
        );
        for component in ["etcd", "api1", "api2", "haproxy", "node1", "node2", "node3"] {
            ensure!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{component} "))
                        && l.contains(" running ")),
                "status shows {component} running:\n{text}"
            );
        }
        Ok(())
    })();
    if let Err(e) = res {
        // The guard runs down; the logs are gone with it, so show them first.
        let logs = std::fs::read_dir(dir.join("logs"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(30).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        format!("--- {} ---\n{}", e.path().display(), tail.join("\n"))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        panic!("{e:#}\n\n{logs}");
    }

    let out = guard.down().unwrap();
    assert!(out.status.success(), "down: {}", describe(&out));
    let left = testbed::leftovers(&format!("{name}-"));
    assert!(left.is_empty(), "namespaces left after down: {left:?}");
    let marker = dir.display().to_string();
    let procs = porthole_test::processes_mentioning(&marker);
    assert!(procs.is_empty(), "processes left after down: {procs:?}");
    assert!(!dir.exists(), "down removes {}", dir.display());

    // Idempotent: a second down finds nothing and succeeds.
    let out = script("down", &name, &dir).output().unwrap();
    assert!(out.status.success(), "second down: {}", describe(&out));
}
