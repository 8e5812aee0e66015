//! `porthole port-forward` says what `kubectl port-forward` says (issue 5): the same command is
//! run with both against one cluster, and the exit code and the error line must match. Scripts
//! that parse kubectl's output keep working when they switch.
//!
//! Not compared: `8000:abc:1`, which kubectl 1.32 accepts and starts forwarding (it does not
//! reject extra colons) although PROTOCOL.md §7.3 calls it invalid; porthole rejects it
//! with `invalid port format`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use porthole_test::{example, write_file, Cluster, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// A pod the scheduler never binds, so it stays Pending.
const PENDING_POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: parked}
spec:
  schedulerName: nobody
  containers:
  - {name: c, image: host, command: ["sleep", "3600"]}
"#;

/// The last line a command printed on stderr (kubectl's `error: ...` line).
fn last_error_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// Runs `cmd` (which must fail before forwarding anything) with a bound on its run time.
fn run_failing(mut cmd: Command) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    // Each case fails at once in kubectl; a client that hangs instead is a failure too. The
    // watchdog stands down as soon as the child has been reaped (so it never signals a pid
    // that was reused).
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let out = child.wait_with_output().context("wait")?;
    let _ = done.send(());
    let _ = watchdog.join();
    Ok(out)
}

#[test]
fn errors_and_exit_codes_match_kubectl() {
    if !porthole_test::require_pods("errors_and_exit_codes_match_kubectl") {
        return;
    }
    let work = TempDir::new("output").unwrap();
    let pending = write_file(work.path(), "pending.yaml", PENDING_POD).unwrap();
    let cluster = Cluster::up(
        Path::new(bin()),
        work.path(),
        &[example("web.yaml"), example("deployment.yaml"), pending],
    )
    .unwrap();
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("default", "web")?;
        let cases: &[&[&str]] = &[
            &["nope", "8000"],               // unknown pod
            &["svc/nope", "80"],             // unknown service
            &["parked", "8000"],             // pod not running
            &["web", "70000"],               // bad local port
            &["web", "0"],                   // remote port 0
            &["web", "8080:nosuchport"],     // unknown named port
            &["svc/web-svc", "8080:nosuch"], // unknown service port name
            &["web"],                        // no ports
        ];
        let mut mismatches = Vec::new();
        for args in cases {
            let mut kubectl = cluster.kubectl_cmd(&cluster.kubectl);
            kubectl.arg("port-forward").args(*args);
            let mut porthole = cluster.porthole_cmd();
            porthole.arg("port-forward").args(*args);
            let want = run_failing(kubectl)?;
            let got = run_failing(porthole)?;
            let (want_line, got_line) = (last_error_line(&want), last_error_line(&got));
            // Usage errors name the command to get help from; everything else is verbatim.
            let same_line = want_line == got_line
                || (want_line.starts_with("See 'kubectl port-forward -h'")
                    && got_line.starts_with("See 'porthole port-forward -h'"));
            if want.status.code() != got.status.code() || !same_line {
                mismatches.push(format!(
                    "port-forward {}:\n  kubectl  exit {:?}: {want_line}\n  porthole exit {:?}: {got_line}",
                    args.join(" "),
                    want.status.code(),
                    got.status.code()
                ));
            }
        }
        ensure!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}
