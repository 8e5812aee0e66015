//! `--pod-isolation`: the node agent's choice between privileged (bind-mounted) and rootless
//! (user namespace) pods is explicit, said once at start, forced by the flag, and each way's
//! error is its own. The failures are real: each runs `porthole up` inside a user namespace of
//! the test's own (util-linux `unshare`), where the kernel refuses what that way needs.
//!
//! - rootless forced, even as root: the cluster runs, the pod is reached, nothing is left;
//! - root in a user namespace (uid 0 without the host's privileges): `auto` picks privileged
//!   and reports the bind mount's failure, with no rootless fallback hiding it;
//! - an ordinary user forcing privileged: the error says it needs root;
//! - an ordinary user in a user namespace whose `user.max_user_namespaces` is 0: `up` fails
//!   naming that setting, and leaves no data dir, process or namespace behind.
//!
//! Every case runs both as root and as an unprivileged user (the rootless CI run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use porthole_test::{example, http_get, Child, Cluster, Forward, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// Runs `porthole up ARGS --data-dir DATA` under `wrapper` (a command line that ends where the
/// porthole command goes), expects it to fail within a minute, and returns its stderr. Checks
/// that nothing is left: no data dir, no process mentioning it.
fn up_fails(work: &Path, name: &str, wrapper: &[&str], args: &[&str]) -> Result<String> {
    let data: PathBuf = work.join(format!("{name}-data"));
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(bin())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(args);
    let mut child = Child::spawn(name, cmd, work)?;
    let status = child.wait_timeout(Duration::from_secs(60))?;
    let stderr = child.stderr_text();
    ensure!(
        status.code() == Some(1),
        "{name}: want exit 1, got {status}\n{}",
        child.report()
    );
    ensure!(
        !child
            .stdout_lines()
            .iter()
            .any(|l| l.contains("cluster ready")),
        "{name}: printed a ready line\n{}",
        child.report()
    );
    ensure!(
        !data.exists(),
        "{name}: left the data dir {} behind",
        data.display()
    );
    let left = porthole_test::processes_mentioning(&data.to_string_lossy());
    ensure!(left.is_empty(), "{name}: processes left behind: {left:?}");
    Ok(stderr)
}

#[test]
fn rootless_forced_runs_the_pods_and_leaves_nothing() {
    if !porthole_test::require_pods("rootless_forced_runs_the_pods_and_leaves_nothing") {
        return;
    }
    let work = TempDir::new("rootless-forced").unwrap();
    let cluster = Cluster::up_with(
        Path::new(bin()),
        work.path(),
        &work.path().join("data"),
        &[example("web.yaml")],
        &["--pod-isolation", "rootless"],
    )
    .unwrap();
    let res = (|| -> Result<()> {
        let stderr = cluster.child.stderr_text();
        let want = "pods run rootless: user namespaces (--pod-isolation rootless)";
        ensure!(
            stderr.matches("pods run ").count() == 1 && stderr.contains(want),
            "want exactly one line {want:?}:\n{stderr}"
        );
        cluster.wait_pod_ready("default", "web")?;
        let mut cmd = cluster.porthole_cmd();
        cmd.args(["port-forward", "web", ":8000"]);
        Forward::with("porthole-pf", cmd, &cluster.work, 8000, |port| {
            let (status, body) = http_get(port, "/")?;
            ensure!(status == 200, "GET / through the forward: {status}");
            ensure!(
                String::from_utf8_lossy(&body).contains("Directory listing"),
                "the web pod's page"
            );
            Ok(())
        })?;

        // One namespace helper (a fork of `up`) and one namespace thread per pod, both gone
        // once the pod is deleted.
        let up = cluster.child.pid();
        ensure!(
            helpers_and_threads(up) == (1, 1),
            "one helper and one thread for the web pod: {:?}",
            helpers_and_threads(up)
        );
        cluster.kubectl(&["delete", "pod", "web", "--wait=true"])?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while helpers_and_threads(up) != (0, 0) && tokio::time::Instant::now() < deadline {
            // Polling /proc for the reaping to finish, bounded; nothing to wait on instead.
            std::thread::sleep(Duration::from_millis(20));
        }
        ensure!(
            helpers_and_threads(up) == (0, 0),
            "helper processes and namespace threads left after the pod was deleted: {:?}",
            helpers_and_threads(up)
        );
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}

/// Rootless namespace helpers of `porthole up` (`pid`): its live child processes that are
/// forks of it (same command line, no exec); and its threads named `netns-*`.
fn helpers_and_threads(pid: u32) -> (usize, usize) {
    let cmdline = |p: u32| std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
    let own = cmdline(pid);
    let helpers = porthole_test::descendants(pid)
        .into_iter()
        .filter(|p| porthole_test::alive(*p) && cmdline(p.pid) == own)
        .count();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("netns-"))
                })
                .count()
        })
        .unwrap_or(0);
    (helpers, threads)
}

#[test]
fn root_without_privileges_reports_the_privileged_error() {
    if !porthole_test::require_pods("root_without_privileges_reports_the_privileged_error") {
        return;
    }
    let work = TempDir::new("rootless-userns-root").unwrap();
    // uid 0 in a user namespace of our own: root by uid, but the mount namespace belongs to
    // the host, so the bind mount of a privileged namespace is refused.
    let stderr = up_fails(
        work.path(),
        "auto-as-userns-root",
        &["unshare", "--user", "--map-root-user", "--"],
        &["-f", &example("web.yaml").display().to_string()],
    )
    .unwrap();
    assert!(
        stderr.contains("error: cannot run pods privileged (root; --pod-isolation rootless runs them without privilege): bind-mount /proc/thread-self/ns/net onto"),
        "the privileged error, as such: {stderr}"
    );
    assert!(
        !stderr.contains("user namespace"),
        "no rootless fallback hides it: {stderr}"
    );
}

#[test]
fn ordinary_user_forcing_privileged_is_told_it_needs_root() {
    if !porthole_test::require_pods("ordinary_user_forcing_privileged_is_told_it_needs_root") {
        return;
    }
    let work = TempDir::new("rootless-forced-privileged").unwrap();
    // uid 1000 in a user namespace of our own; exec drops every capability (uid is not 0).
    let stderr = up_fails(
        work.path(),
        "privileged-as-user",
        &[
            "unshare",
            "--user",
            "--map-user=1000",
            "--map-group=1000",
            "--",
        ],
        &["--pod-isolation", "privileged"],
    )
    .unwrap();
    assert!(
        stderr.contains("error: cannot run pods privileged (--pod-isolation privileged): porthole runs as uid 1000 without CAP_SYS_ADMIN, so it cannot create bind-mounted network namespaces: run it as root, or run its pods rootless"),
        "{stderr}"
    );
}

#[test]
fn forbidden_user_namespaces_fail_up_naming_the_setting() {
    if !porthole_test::require_pods("forbidden_user_namespaces_fail_up_naming_the_setting") {
        return;
    }
    let work = TempDir::new("rootless-forbidden").unwrap();
    // A user namespace of our own, uid 1000 inside (not root), whose per-namespace limit
    // user.max_user_namespaces is set to 0 while the shell still holds the namespace owner's
    // capabilities (--keep-caps); setpriv then drops them all before porthole starts. The limit
    // counts in every descendant, so porthole's own unshare(CLONE_NEWUSER) gets ENOSPC.
    let forbid = "echo 0 > /proc/sys/user/max_user_namespaces \
                  && [ \"$(cat /proc/sys/user/max_user_namespaces)\" = 0 ] \
                  && exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- \"$@\"";
    let wrapper = [
        "unshare",
        "--user",
        "--map-user=1000",
        "--map-group=1000",
        "--keep-caps",
        "--",
        "sh",
        "-c",
        forbid,
        "sh",
    ];
    for (name, args) in [
        (
            "forbidden-auto",
            vec!["-f".to_string(), example("web.yaml").display().to_string()],
        ),
        (
            "forbidden-rootless",
            vec!["--pod-isolation".to_string(), "rootless".to_string()],
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = up_fails(work.path(), name, &wrapper, &args).unwrap();
        let why = if name == "forbidden-auto" {
            "not root; --pod-isolation privileged needs root"
        } else {
            "--pod-isolation rootless"
        };
        assert!(
            stderr.contains(&format!(
                "error: cannot run pods rootless ({why}): the kernel allows no more user namespaces: \
                 user.max_user_namespaces is 0 here (0 forbids them); raise it, e.g. \
                 `sudo sysctl -w user.max_user_namespaces=15000`"
            )),
            "{name}: the setting to change: {stderr}"
        );
        assert!(
            stderr.contains("(unshare(CLONE_NEWUSER|CLONE_NEWNET): no space left on device)"),
            "{name}: the kernel's own refusal: {stderr}"
        );
    }
}
