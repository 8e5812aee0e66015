//! Reverse forwarding (issue 14 part 2): `porthole port-forward POD --reverse
//! POD_PORT:LOCAL_HOST:LOCAL_PORT` makes connections made inside the pod to its
//! `127.0.0.1:POD_PORT` reach a server on the user's side. Real processes only: `porthole up`,
//! `redis-server` on the user's side and `redis-cli` inside the pod's network namespace
//! (nsenter on the namespace file the node agent keeps), Python clients in the pod, the RBAC
//! example user.

// Blocking test code (threads, child processes), not tokio: std time is the right clock here.
#![allow(clippy::disallowed_types)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use porthole_test::{
    echo, echo_roundtrip, example, expect_success, http_get, netns_files, write_file, Child,
    Cluster, Roles, TempDir,
};

const BIN: &str = env!("CARGO_BIN_EXE_porthole");

/// A pod with nothing listening: its network namespace is where reverse listeners go.
const SLEEPER: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
  - {name: c, image: host, command: ["sleep", "3600"]}
"#;

/// Python inside the pod: N concurrent connections to 127.0.0.1:PORT, each sends SIZE random
/// bytes, half-closes and reads the echo; prints `ok LEN` or `MISMATCH LEN` per connection.
const POD_ECHO_CLIENT: &str = r#"
import hashlib, os, socket, sys, threading
port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
results = [None] * n
def one(i):
    data = os.urandom(size)
    s = socket.create_connection(("127.0.0.1", port), 30)
    s.settimeout(60)
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    got = bytearray()
    while True:
        c = s.recv(65536)
        if not c:
            break
        got += c
    t.join()
    same = hashlib.sha256(data).digest() == hashlib.sha256(got).digest()
    results[i] = ("ok" if same else "MISMATCH", len(got))
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
for r in results: print(*(r or ("FAILED", 0)))
"#;

/// Python inside the pod: exit 0 if 127.0.0.1:PORT accepts a connection, 3 if refused.
const POD_CONNECT: &str = r#"
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5).close()
except ConnectionRefusedError:
    sys.exit(3)
"#;

/// Python inside the pod: connect, send a line, print what comes back before the close.
const POD_SEND_READ: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)
s.settimeout(30)
s.sendall(b"hello\n")
got = b""
try:
    while True:
        c = s.recv(4096)
        if not c:
            break
        got += c
except ConnectionResetError:
    pass
print("got %d bytes: %r" % (len(got), got))
"#;

/// A free port on the user's side, from the OS (bound to 0, then released).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A TCP echo server on the user's side at 127.0.0.1:`port` (0: any) that counts the bytes it
/// received. Stops when dropped.
fn echo_server(port: u16) -> Result<echo::Threads> {
    echo::Threads::serve(TcpListener::bind(("127.0.0.1", port)).context("bind the echo server")?)
}

/// The network namespace file the node agent keeps for `namespace/pod` (named by its uid).
fn pod_netns(cluster: &Cluster, namespace: &str, pod: &str) -> Result<PathBuf> {
    let uid = cluster.kubectl(&[
        "get",
        "pod",
        "-n",
        namespace,
        pod,
        "-o",
        "jsonpath={.metadata.uid}",
    ])?;
    netns_files(&cluster.data_dir)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == uid.trim()))
        .ok_or_else(|| anyhow!("no network namespace file for pod {namespace}/{pod} ({uid})"))
}

/// `program args` run inside the pod's network namespace.
fn in_pod(netns: &Path, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn in_pod_output(netns: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = in_pod(netns, program, args)
        .output()
        .with_context(|| format!("run {program} in the pod"))?;
    expect_success(&format!("{program} {} in the pod", args.join(" ")), &out)
}

/// Whether something accepts connections on 127.0.0.1:`port` inside the pod.
fn pod_port_open(netns: &Path, port: u16) -> Result<bool> {
    let status = in_pod(netns, "python3", &["-c", POD_CONNECT, &port.to_string()])
        .status()
        .context("run the connect probe in the pod")?;
    match status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => bail!("connect probe in the pod failed: {status}"),
    }
}

/// Waits until 127.0.0.1:`port` inside the pod refuses connections, at most `within`.
/// Returns how long that took and how many probes it needed (a probe is a process start in
/// the pod, whose own time depends on the machine's load).
fn wait_pod_port_closed_probes(
    netns: &Path,
    port: u16,
    within: Duration,
) -> Result<(Duration, u32)> {
    let start = std::time::Instant::now();
    let mut probes = 0;
    loop {
        probes += 1;
        if !pod_port_open(netns, port)? {
            return Ok((start.elapsed(), probes));
        }
        ensure!(
            start.elapsed() < within,
            "port {port} inside the pod still accepts connections after {within:?}"
        );
        // Polls a condition with a deadline; it orders nothing.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_pod_port_closed(netns: &Path, port: u16, within: Duration) -> Result<Duration> {
    wait_pod_port_closed_probes(netns, port, within).map(|(took, _)| took)
}

/// Starts `porthole port-forward ARGS` and waits for one `Reverse forwarding from pod` line per
/// `--reverse`.
fn start_reverse(cluster: &Cluster, name: &str, args: &[&str]) -> Result<Child> {
    let mut cmd = cluster.porthole_cmd();
    cmd.arg("port-forward").args(args);
    let mut child = Child::spawn(name, cmd, &cluster.work)?;
    let want = args.iter().filter(|a| **a == "--reverse").count();
    for _ in 0..want {
        child.wait_for_line(Duration::from_secs(60), |l| {
            l.starts_with("Reverse forwarding from pod ").then_some(())
        })?;
    }
    Ok(child)
}

/// Runs a porthole command that must fail, bounded; returns its stderr.
fn run_failing(cluster: &Cluster, kubeconfig: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut cmd = cluster.porthole_cmd();
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.arg("port-forward").args(args);
    let n = std::fs::read_dir(&cluster.work)
        .map(|d| d.count())
        .unwrap_or(0);
    let name = format!("failing-{n}");
    let mut child = Child::spawn(&name, cmd, &cluster.work)?;
    let status = child.wait_timeout(Duration::from_secs(60))?;
    let stderr = std::fs::read_to_string(cluster.work.join(format!("{name}.stderr")))?;
    ensure!(
        status.code() == Some(1),
        "porthole port-forward {} exited with {status}, want 1\n{}",
        args.join(" "),
        child.report()
    );
    Ok(stderr)
}

/// `redis-server` on the user's side, on a free port, without persistence.
fn start_redis(work: &Path) -> Result<(Child, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ])
    .arg(work);
    let mut child = Child::spawn("redis-server", cmd, work)?;
    child.wait_for_line(Duration::from_secs(30), |l| {
        l.contains("Ready to accept connections").then_some(())
    })?;
    Ok((child, port))
}

fn redis_cli_host(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .context("run redis-cli")?;
    Ok(expect_success("redis-cli on the user's side", &out)?
        .trim()
        .to_string())
}

/// Runs the pod-side echo client; checks every connection got its exact bytes back.
fn pod_echo(netns: &Path, port: u16, connections: usize, size: usize) -> Result<()> {
    let out = in_pod_output(
        netns,
        "python3",
        &[
            "-c",
            POD_ECHO_CLIENT,
            &port.to_string(),
            &connections.to_string(),
            &size.to_string(),
        ],
    )?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == connections, "echo client printed {out:?}");
    for l in lines {
        ensure!(
            l == format!("ok {size}"),
            "echo client: {l:?} (all: {out:?})"
        );
    }
    Ok(())
}

/// A pod's `redis-cli` (inside its network namespace, against its own 127.0.0.1:9000) reaches
/// `redis-server` on the user's side, over the WebSocket tunnel and over SPDY; 1 MiB echoes
/// over several concurrent connections come back byte for byte.
#[test]
#[ignore = "needs root (enters the pod's network namespace with nsenter to check from inside): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn pod_reaches_user_side_redis_and_echo_over_both_transports() {
    porthole_test::require_root("pod_reaches_user_side_redis_and_echo_over_both_transports");
    let work = TempDir::new("reverse-redis").unwrap();
    let sleeper = write_file(work.path(), "sleeper.yaml", SLEEPER).unwrap();
    let cluster = Cluster::up(Path::new(BIN), work.path(), &[sleeper]).unwrap();
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("default", "sleeper")?;
        let netns = pod_netns(&cluster, "default", "sleeper")?;
        let (_redis, redis_port) = start_redis(&cluster.work)?;
        let echo = echo_server(0)?;
        let mut expected_echo_bytes = 0u64;
        for transport in ["websocket", "spdy"] {
            let redis_spec = format!("9000:127.0.0.1:{redis_port}");
            let echo_spec = format!("9001:localhost:{}", echo.addr().port());
            let mut client = start_reverse(
                &cluster,
                &format!("reverse-{transport}"),
                &[
                    "sleeper",
                    "--transport",
                    transport,
                    "--reverse",
                    &redis_spec,
                    "--reverse",
                    &echo_spec,
                ],
            )?;
            let run = (|| -> Result<()> {
                let key = format!("from-pod-{transport}");
                let set =
                    in_pod_output(&netns, "redis-cli", &["-p", "9000", "SET", &key, "hello"])?;
                ensure!(set.trim() == "OK", "SET from the pod: {set:?}");
                ensure!(
                    redis_cli_host(redis_port, &["GET", &key])? == "hello",
                    "the user's redis does not hold what the pod wrote"
                );
                redis_cli_host(redis_port, &["SET", "from-user", transport])?;
                let got = in_pod_output(&netns, "redis-cli", &["-p", "9000", "GET", "from-user"])?;
                ensure!(got.trim() == transport, "GET from the pod: {got:?}");
                // Eight redis-cli processes in the pod at once, each its own connection.
                let counter = format!("counter-{transport}");
                let children: Vec<std::process::Child> = (0..8)
                    .map(|_| {
                        in_pod(&netns, "redis-cli", &["-p", "9000", "INCR", &counter])
                            .stdout(Stdio::null())
                            .spawn()
                            .context("spawn redis-cli in the pod")
                    })
                    .collect::<Result<_>>()?;
                for mut c in children {
                    ensure!(
                        c.wait()?.success(),
                        "a concurrent redis-cli in the pod failed"
                    );
                }
                ensure!(
                    redis_cli_host(redis_port, &["GET", &counter])? == "8",
                    "8 concurrent INCRs from the pod"
                );
                // 4 concurrent connections, 1 MiB each way, compared by sha256 in the pod.
                pod_echo(&netns, 9001, 4, 1 << 20)?;
                expected_echo_bytes += 4 << 20;
                ensure!(
                    echo.received() == expected_echo_bytes,
                    "the user's echo server received {} bytes, want {expected_echo_bytes}",
                    echo.received()
                );
                Ok(())
            })();
            let report = client.report();
            let status = client.interrupt(Duration::from_secs(20));
            run.map_err(|e| anyhow!("{transport}: {e:#}\n{report}"))?;
            ensure!(
                status?.success(),
                "{transport}: Ctrl-C exit status\n{report}"
            );
            let handled = client
                .stdout_lines()
                .iter()
                .filter(|l| *l == "Handling reverse connection for 9000")
                .count();
            ensure!(
                handled >= 10,
                "{transport}: {handled} 'Handling reverse connection for 9000' lines\n{report}"
            );
            ensure!(
                client.stdout_lines().iter().any(|l| l
                    == &format!(
                        "Reverse forwarding from pod sleeper 127.0.0.1:9001 -> localhost:{}",
                        echo.addr().port()
                    )),
                "{transport}: no listening line for 9001\n{report}"
            );
            // Ctrl-C closed the listeners: the next transport binds the same pod ports.
        }
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}

/// A pod port already taken gets a clear error while the command's forward (and its other
/// reverse spec) keep working; a refused local target closes that in-pod connection with a
/// clear error, and the session serves the next connection once the target is up.
#[test]
#[ignore = "needs root (enters the pod's network namespace with nsenter to check from inside): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn port_in_use_and_refused_target_are_clear_errors_and_the_rest_goes_on() {
    porthole_test::require_root(
        "port_in_use_and_refused_target_are_clear_errors_and_the_rest_goes_on",
    );
    let work = TempDir::new("reverse-errors").unwrap();
    let cluster = Cluster::up(Path::new(BIN), work.path(), &[example("echo.yaml")]).unwrap();
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("default", "echo")?;
        let netns = pod_netns(&cluster, "default", "echo")?;
        // Alone, a taken port ends the command with the reason.
        let stderr = run_failing(&cluster, None, &["echo", "--reverse", "7000:localhost:1"])?;
        ensure!(
            stderr.lines().any(|l| l
                == "error: port 7000 is already in use inside pod default/echo: choose another pod port for --reverse"),
            "stderr: {stderr}"
        );
        let stderr = run_failing(&cluster, None, &["echo", "--reverse", "7000:localhost"])?;
        ensure!(
            stderr.contains("error: invalid --reverse '7000:localhost': expected POD_PORT:LOCAL_HOST:LOCAL_PORT"),
            "stderr: {stderr}"
        );

        // With a forward and a second reverse spec, both go on.
        let target_port = free_port()?;
        let refused_spec = format!("9200:127.0.0.1:{target_port}");
        let mut cmd = cluster.porthole_cmd();
        cmd.args([
            "port-forward",
            "echo",
            ":7000",
            "-o",
            "json",
            "--reverse",
            "7000:localhost:1",
            "--reverse",
            &refused_spec,
        ]);
        let mut client = Child::spawn("reverse-errors", cmd, &cluster.work)?;
        let run = (|| -> Result<()> {
            let mut local_port = None;
            let mut in_use = false;
            let mut reverse_ready = false;
            client.wait_for_line(Duration::from_secs(60), |l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                match v["event"].as_str()? {
                    "listening" if v["address"] == "127.0.0.1" => {
                        local_port = v["local_port"].as_u64().map(|p| p as u16)
                    }
                    "reverse_listening" if v["pod_port"] == 9200 => reverse_ready = true,
                    "error" if v["message"]
                        == "error: port 7000 is already in use inside pod default/echo: choose another pod port for --reverse" =>
                    {
                        in_use = true
                    }
                    _ => {}
                }
                (local_port.is_some() && in_use && reverse_ready).then_some(())
            })?;
            let local_port = local_port.expect("set above");
            let payload = porthole_test::pattern(256 * 1024, 14);
            ensure!(
                echo_roundtrip(local_port, &payload)? == payload,
                "the forward of the same command"
            );
            // Nothing listens on the target yet: the pod's connection is closed without data.
            let out = in_pod_output(&netns, "python3", &["-c", POD_SEND_READ, "9200"])?;
            ensure!(
                out.trim() == "got 0 bytes: b''",
                "pod side of a refused target: {out}"
            );
            let want = format!("dial tcp 127.0.0.1:{target_port}: connect: connection refused");
            client.wait_for_line(Duration::from_secs(30), |l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["event"] == "error"
                    && v["message"]
                        == format!(
                            "error: reverse connection for 9200 -> 127.0.0.1:{target_port}: {want}"
                        ))
                .then_some(())
            })?;
            // The target comes up: the same session serves the next connection.
            let _echo = echo_server(target_port)?;
            pod_echo(&netns, 9200, 2, 64 * 1024)?;
            ensure!(
                echo_roundtrip(local_port, &payload)? == payload,
                "the forward after the reverse errors"
            );
            Ok(())
        })();
        let report = client.report();
        let status = client.interrupt(Duration::from_secs(20));
        run.map_err(|e| anyhow!("{e:#}\n{report}"))?;
        ensure!(status?.success(), "Ctrl-C exit status\n{report}");
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}

/// The listener inside the pod exists only while the session lives: gone soon after the
/// client is killed with SIGKILL (within the keepalive timeout), and at once after Ctrl-C.
#[test]
#[ignore = "needs root (enters the pod's network namespace with nsenter to check from inside): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn listener_is_gone_when_the_session_ends() {
    porthole_test::require_root("listener_is_gone_when_the_session_ends");
    let work = TempDir::new("reverse-lifetime").unwrap();
    let sleeper = write_file(work.path(), "sleeper.yaml", SLEEPER).unwrap();
    let cluster = Cluster::up(Path::new(BIN), work.path(), &[sleeper]).unwrap();
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("default", "sleeper")?;
        let netns = pod_netns(&cluster, "default", "sleeper")?;
        let echo = echo_server(0)?;
        let spec = format!("9300:127.0.0.1:{}", echo.addr().port());
        ensure!(
            !pod_port_open(&netns, 9300)?,
            "port 9300 open before the session"
        );

        let mut client = start_reverse(&cluster, "reverse-kill", &["sleeper", "--reverse", &spec])?;
        pod_echo(&netns, 9300, 1, 1024)?;
        client.signal(Signal::SIGKILL)?;
        client.wait_timeout(Duration::from_secs(10))?;
        let took = wait_pod_port_closed(&netns, 9300, Duration::from_secs(15))?;
        eprintln!("listener closed {took:?} after SIGKILL of the client");

        // A client that stops answering (SIGSTOP keeps its TCP connection open, so only the
        // node's keepalive PINGs can tell): closed within the node's 5 s + 10 s.
        let mut client = start_reverse(&cluster, "reverse-stop", &["sleeper", "--reverse", &spec])?;
        pod_echo(&netns, 9300, 1, 1024)?;
        client.signal(Signal::SIGSTOP)?;
        let closed = wait_pod_port_closed(&netns, 9300, Duration::from_secs(25));
        client.signal(Signal::SIGKILL)?;
        client.signal(Signal::SIGCONT)?;
        client.wait_timeout(Duration::from_secs(10))?;
        let took = closed?;
        eprintln!("listener closed {took:?} after the client stopped answering");
        ensure!(
            took >= Duration::from_secs(4),
            "closed after {took:?}: before any keepalive could fail?"
        );

        let mut client =
            start_reverse(&cluster, "reverse-ctrlc", &["sleeper", "--reverse", &spec])?;
        pod_echo(&netns, 9300, 1, 1024)?;
        let status = client.interrupt(Duration::from_secs(20))?;
        ensure!(
            status.success(),
            "Ctrl-C exit status {status}\n{}",
            client.report()
        );
        // At once: the first probe after the client exited finds the port closed (one retry
        // allowed for the node reading the connection's end concurrently with the probe).
        let (took, probes) = wait_pod_port_closed_probes(&netns, 9300, Duration::from_secs(10))?;
        eprintln!("listener closed {took:?} ({probes} probe(s)) after Ctrl-C of the client");
        ensure!(
            probes <= 2,
            "the listener outlived Ctrl-C by {probes} probes ({took:?})"
        );

        // The pod is deleted and does not come back: the session ends with the pod, and the
        // client gives up after --pod-running-timeout, as its forwards do.
        let mut client = start_reverse(
            &cluster,
            "reverse-pod-gone",
            &["sleeper", "--pod-running-timeout=3s", "--reverse", &spec],
        )?;
        pod_echo(&netns, 9300, 1, 1024)?;
        cluster.kubectl(&["delete", "pod", "sleeper", "--wait=false"])?;
        let status = client.wait_timeout(Duration::from_secs(60))?;
        let stderr = std::fs::read_to_string(cluster.work.join("reverse-pod-gone.stderr"))?;
        ensure!(
            status.code() == Some(1),
            "exit status {status} after the pod was deleted\n{}",
            client.report()
        );
        ensure!(
            stderr
                .lines()
                .any(|l| l == r#"Error from server (NotFound): pods "sleeper" not found"#),
            "stderr: {stderr}"
        );
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}

/// The node agent and the API server are each SIGKILLed and restarted, and the pod is
/// replaced, under a running reverse forward: each time the client re-establishes the session
/// by itself and the pod's connections reach the user's side again.
#[test]
#[ignore = "needs root (enters the pod's network namespace with nsenter to check from inside): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn reverse_survives_restarts_and_pod_replacement() {
    porthole_test::require_root("reverse_survives_restarts_and_pod_replacement");
    let work = TempDir::new("reverse-resilience").unwrap();
    let mut roles = Roles::start(Path::new(BIN), work.path()).unwrap();
    let res = (|| -> Result<()> {
        roles.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "node/porthole-node",
            "--timeout=60s",
        ])?;
        let sleeper = write_file(work.path(), "sleeper.yaml", SLEEPER)?;
        let sleeper = sleeper.display().to_string();
        roles.kubectl(&["create", "-f", &sleeper])?;
        roles.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod/sleeper",
            "--timeout=90s",
        ])?;
        let echo = echo_server(0)?;
        let spec = format!("9500:127.0.0.1:{}", echo.addr().port());
        let mut cmd = Command::new(BIN);
        cmd.env("KUBECONFIG", roles.data_dir.join("kubeconfig"))
            .args([
                "port-forward",
                "--server",
                &roles.server,
                "sleeper",
                "--reverse",
                &spec,
            ]);
        let mut client = Child::spawn("reverse-resilient", cmd, work.path())?;
        let run = (|| -> Result<()> {
            client.wait_for_line(Duration::from_secs(60), |l| {
                l.starts_with("Reverse forwarding from pod sleeper 127.0.0.1:9500")
                    .then_some(())
            })?;
            let netns_of = |roles: &Roles| -> Result<PathBuf> {
                let uid =
                    roles.kubectl(&["get", "pod", "sleeper", "-o", "jsonpath={.metadata.uid}"])?;
                netns_files(&roles.data_dir)
                    .into_iter()
                    .find(|p| p.file_name().is_some_and(|n| n == uid.trim()))
                    .ok_or_else(|| anyhow!("no network namespace for pod sleeper ({uid})"))
            };
            // The pod's connections work again: the client reconnects with back-off, and the
            // echo succeeding is the signal (bounded).
            let works_again = |roles: &Roles, what: &str| -> Result<()> {
                let start = std::time::Instant::now();
                loop {
                    let attempt = netns_of(roles)
                        .and_then(|ns| pod_port_open(&ns, 9500).map(|open| (ns, open)));
                    if let Ok((ns, true)) = attempt {
                        if pod_echo(&ns, 9500, 2, 256 * 1024).is_ok() {
                            return Ok(());
                        }
                    }
                    ensure!(
                        start.elapsed() < Duration::from_secs(90),
                        "reverse forward not back within 90 s {what}"
                    );
                    // Polls a condition with a deadline; it orders nothing.
                    std::thread::sleep(Duration::from_millis(200));
                }
            };
            works_again(&roles, "at first")?;
            // Beside it, a client in kubectl's mode, which must exit when its session is lost.
            let strict_spec = format!("9501:127.0.0.1:{}", echo.addr().port());
            let mut cmd = Command::new(BIN);
            cmd.env("KUBECONFIG", roles.data_dir.join("kubeconfig"))
                .args([
                    "port-forward",
                    "--server",
                    &roles.server,
                    "sleeper",
                    "--reconnect=false",
                    "--reverse",
                    &strict_spec,
                ]);
            let mut strict = Child::spawn("reverse-strict", cmd, work.path())?;
            strict.wait_for_line(Duration::from_secs(60), |l| {
                l.starts_with("Reverse forwarding from pod sleeper 127.0.0.1:9501")
                    .then_some(())
            })?;
            roles.kill_node()?;
            let status = strict.wait_timeout(Duration::from_secs(30))?;
            let stderr = std::fs::read_to_string(work.path().join("reverse-strict.stderr"))?;
            ensure!(
                status.code() == Some(1)
                    && stderr.lines().any(|l| l == "error: lost connection to pod"),
                "--reconnect=false after the node died: {status}\n{}",
                strict.report()
            );
            roles.start_node()?;
            works_again(&roles, "after the node agent restarted")?;
            let listen = roles.server.trim_start_matches("https://").to_string();
            roles.kill_apiserver()?;
            roles.start_apiserver(&listen)?;
            works_again(&roles, "after the API server restarted")?;
            roles.kubectl(&["delete", "pod", "sleeper", "--wait=true", "--timeout=60s"])?;
            roles.kubectl(&["create", "-f", &sleeper])?;
            works_again(&roles, "after the pod was replaced")?;
            ensure!(
                client
                    .report()
                    .contains("Reconnected reverse forwarding to pod sleeper"),
                "no reconnect notice"
            );
            Ok(())
        })();
        let report = client.report();
        let status = client.interrupt(Duration::from_secs(20));
        run.map_err(|e| anyhow!("{e:#}\n{report}"))?;
        ensure!(status?.success(), "Ctrl-C exit status\n{report}");
        Ok(())
    })();
    let report = roles.report();
    let stopped = roles.stop();
    if let Err(e) = res {
        panic!("{e:#}\n\n{report}");
    }
    stopped.unwrap();
}

/// Reverse forwarding to a node that the API server reaches only through the tunnel the node
/// dialed (`porthole node --tunnel`): the upgrade and the reversed session cross the tunnel
/// like any port-forward.
#[test]
#[ignore = "needs root (enters the pod's network namespace with nsenter to check from inside): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn reverse_through_a_node_tunnel() {
    porthole_test::require_root("reverse_through_a_node_tunnel");
    let work = TempDir::new("reverse-tunnel").unwrap();
    let mut roles = Roles::start(Path::new(BIN), work.path()).unwrap();
    let mut tunnel_node: Option<Child> = None;
    let res = (|| -> Result<()> {
        // The same node again, now with --tunnel (Roles' node is started without it).
        roles.kill_node()?;
        let pki = |f: &str| roles.data_dir.join("pki").join(f).display().to_string();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "node",
            "--tunnel",
            "--listen=127.0.0.1:0",
            "--node-name=porthole-node",
            &format!("--data-dir={}", roles.data_dir.display()),
            &format!("--api-server={}", roles.server),
            &format!("--api-ca-file={}", pki("ca.crt")),
            &format!(
                "--client-cert-file={}",
                pki("node-porthole-node-client.crt")
            ),
            &format!("--client-key-file={}", pki("node-porthole-node-client.key")),
            &format!("--tls-cert-file={}", pki("node-porthole-node.crt")),
            &format!("--tls-private-key-file={}", pki("node-porthole-node.key")),
            &format!("--client-ca-file={}", pki("ca.crt")),
        ]);
        let mut node = Child::spawn("tunnel-node", cmd, work.path())?;
        node.wait_for_line(Duration::from_secs(60), |l| {
            l.starts_with("porthole node porthole-node listening on ")
                .then_some(())
        })?;
        tunnel_node = Some(node);
        roles.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "node/porthole-node",
            "--timeout=60s",
        ])?;
        let annotation = roles.kubectl(&[
            "get",
            "node",
            "porthole-node",
            "-o",
            r#"jsonpath={.metadata.annotations.porthole\.io/tunnel}"#,
        ])?;
        ensure!(
            annotation == "true",
            "the node is not marked as tunnelled: {annotation:?}"
        );
        let sleeper = write_file(work.path(), "sleeper.yaml", SLEEPER)?;
        roles.kubectl(&["create", "-f", &sleeper.display().to_string()])?;
        roles.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod/sleeper",
            "--timeout=90s",
        ])?;
        let uid = roles.kubectl(&["get", "pod", "sleeper", "-o", "jsonpath={.metadata.uid}"])?;
        let netns = netns_files(&roles.data_dir)
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == uid.trim()))
            .ok_or_else(|| anyhow!("no network namespace for pod sleeper"))?;
        let echo = echo_server(0)?;
        for transport in ["websocket", "spdy"] {
            let spec = format!("9600:127.0.0.1:{}", echo.addr().port());
            let mut cmd = Command::new(BIN);
            cmd.env("KUBECONFIG", roles.data_dir.join("kubeconfig"))
                .args([
                    "port-forward",
                    "--server",
                    &roles.server,
                    "sleeper",
                    "--transport",
                    transport,
                    "--reverse",
                    &spec,
                ]);
            let mut client =
                Child::spawn(&format!("reverse-tunnel-{transport}"), cmd, work.path())?;
            let run = client
                .wait_for_line(Duration::from_secs(60), |l| {
                    l.starts_with("Reverse forwarding from pod sleeper 127.0.0.1:9600")
                        .then_some(())
                })
                .and_then(|()| pod_echo(&netns, 9600, 3, 512 * 1024));
            let report = client.report();
            let status = client.interrupt(Duration::from_secs(20));
            run.map_err(|e| anyhow!("{transport}: {e:#}\n{report}"))?;
            ensure!(
                status?.success(),
                "{transport}: Ctrl-C exit status\n{report}"
            );
            wait_pod_port_closed(&netns, 9600, Duration::from_secs(5))?;
        }
        Ok(())
    })();
    let node_report = tunnel_node.as_ref().map(Child::report).unwrap_or_default();
    if let Some(mut node) = tunnel_node {
        // The node stops its pods on SIGTERM; Roles::stop then finds no node to stop.
        let stopped = node
            .signal(Signal::SIGTERM)
            .and_then(|()| node.wait_timeout(Duration::from_secs(30)));
        if let Err(e) = stopped {
            panic!("stopping the tunnel node: {e:#}\n{node_report}");
        }
    }
    let report = roles.report();
    let stopped = roles.stop();
    if let Err(e) = res {
        panic!("{e:#}\n\n{report}\n\n{node_report}");
    }
    stopped.unwrap();
}

/// A user allowed `pods/portforward` but not `pods/reverseforward` (examples/rbac.yaml's
/// developer) gets Forbidden for --reverse while the plain forward of the same command works;
/// the rule from the README grants it; the audit log records the reverseforward requests.
#[test]
#[ignore = "needs root (enters the pod's network namespace with nsenter to check from inside): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn reverse_needs_its_own_rbac_rule_and_is_audited() {
    porthole_test::require_root("reverse_needs_its_own_rbac_rule_and_is_audited");
    let work = TempDir::new("reverse-rbac").unwrap();
    let cluster = Cluster::up(Path::new(BIN), work.path(), &[example("rbac.yaml")]).unwrap();
    let developer = cluster.data_dir.join("developer.kubeconfig");
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("dev", "web")?;
        let netns = pod_netns(&cluster, "dev", "web")?;
        let echo = echo_server(0)?;
        let spec = format!("9400:127.0.0.1:{}", echo.addr().port());

        // Alone: Forbidden, kubectl's words, exit 1.
        let stderr = run_failing(
            &cluster,
            Some(&developer),
            &["-n", "dev", "web", "--reverse", &spec],
        )?;
        ensure!(
            stderr.lines().any(|l| l.starts_with(r#"Error from server (Forbidden): pods "web" is forbidden: User "developer" cannot "#)
                && l.ends_with(r#"resource "pods/reverseforward" in API group "" in the namespace "dev""#)),
            "stderr: {stderr}"
        );

        // With a forward: the forward works, the reverse spec is refused.
        let mut cmd = cluster.porthole_cmd();
        cmd.env("KUBECONFIG", &developer).args([
            "port-forward",
            "-n",
            "dev",
            "web",
            ":8000",
            "-o",
            "json",
            "--reverse",
            &spec,
        ]);
        let mut client = Child::spawn("developer-reverse", cmd, &cluster.work)?;
        let run = (|| -> Result<()> {
            let mut local_port = None;
            let mut forbidden = false;
            client.wait_for_line(Duration::from_secs(60), |l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                match v["event"].as_str()? {
                    "listening" if v["address"] == "127.0.0.1" => {
                        local_port = v["local_port"].as_u64().map(|p| p as u16)
                    }
                    "error" => {
                        forbidden |= v["message"]
                            .as_str()?
                            .starts_with("Error from server (Forbidden)")
                    }
                    _ => {}
                }
                (local_port.is_some() && forbidden).then_some(())
            })?;
            let (status, _) = http_get(local_port.expect("set above"), "/")?;
            ensure!(status == 200, "the developer's forward: {status}");
            ensure!(
                !pod_port_open(&netns, 9400)?,
                "a forbidden reverse listens in the pod"
            );
            Ok(())
        })();
        let report = client.report();
        let status = client.interrupt(Duration::from_secs(20));
        run.map_err(|e| anyhow!("{e:#}\n{report}"))?;
        ensure!(status?.success(), "Ctrl-C exit status\n{report}");

        // The README's rule grants it.
        let grant = write_file(&cluster.work, "reverse-rbac.yaml", REVERSE_GRANT)?;
        cluster.kubectl(&["apply", "-f", &grant.display().to_string()])?;
        let mut cmd = cluster.porthole_cmd();
        cmd.env("KUBECONFIG", &developer).args([
            "port-forward",
            "-n",
            "dev",
            "web",
            "--reverse",
            &spec,
        ]);
        let mut client = Child::spawn("developer-reverse-granted", cmd, &cluster.work)?;
        client.wait_for_line(Duration::from_secs(60), |l| {
            l.starts_with("Reverse forwarding from pod web 127.0.0.1:9400 -> ")
                .then_some(())
        })?;
        pod_echo(&netns, 9400, 1, 4096)?;
        let status = client.interrupt(Duration::from_secs(20))?;
        ensure!(
            status.success(),
            "Ctrl-C exit status {status}\n{}",
            client.report()
        );

        // The audit log: the refusals as requests, the session as a reverseforward record
        // (written when the session ends, so wait for it).
        let audit = cluster.data_dir.join("audit.log");
        let start = std::time::Instant::now();
        let records = loop {
            let text = std::fs::read_to_string(&audit).context("read the audit log")?;
            let records: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let session = records.iter().any(|r| {
                r["kind"] == "reverseforward"
                    && r["user"] == "developer"
                    && r["namespace"] == "dev"
                    && r["pod"] == "web"
                    && r["ports"] == serde_json::json!([9400])
                    && r["outcome"] == "ok"
            });
            if session {
                break records;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "no reverseforward session record in the audit log:\n{text}"
            );
            // Polls for a record with a deadline; it orders nothing.
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(
            records.iter().any(|r| r["kind"] == "request"
                && r["user"] == "developer"
                && r["code"] == 403
                && r["path"] == "/api/v1/namespaces/dev/pods/web/reverseforward"),
            "no refused reverseforward request in the audit log"
        );
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}

/// The rule of the README's "Reverse forwarding" section.
const REVERSE_GRANT: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reverse-forwarder, namespace: dev}
rules:
- apiGroups: [""]
  resources: ["pods/reverseforward"]
  verbs: ["get", "create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: developer-reverse-forward, namespace: dev}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: developer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reverse-forwarder}
"#;
