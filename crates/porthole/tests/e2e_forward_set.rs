//! `porthole forward` (issue 14, parts 3 and 4): many forwards at once, against `porthole up`.
//!
//! - a set of six forwards over two namespaces (pods, a service, a deployment) all answer; one
//!   loses its pod and gets it back while the others keep answering; `--status-addr` reports
//!   the real traffic; `-o json` events carry the forward's name; the live table on a
//!   pseudo-terminal (`script`) shows ready rows, pod names and growing byte counters;
//! - `--all-services`: the map, every port answering, `--etc-hosts` on a temporary hosts file
//!   (block added, removed on SIGINT, a killed run's block removed by the next run), and the
//!   README's example run through the kubectl plugin path;
//! - bad forwards files: exit 1 and an error naming the file, the entry and the field.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use porthole_test::{
    echo_roundtrip, example, http_get, pattern, repo_root, write_file, Child, Cluster, TempDir,
};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}
const WAIT: Duration = Duration::from_secs(90);

/// Namespace `other` with two http.server pods; `victim` is deleted and created again.
const OTHER_NS: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: web2, namespace: other, labels: {app: web2}}
spec:
  containers:
  - name: web
    image: python:3-slim
    command: ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"]
    workingDir: /tmp
    ports: [{name: http, containerPort: 8000}]
    readinessProbe: {tcpSocket: {port: 8000}, periodSeconds: 1}
"#;

const VICTIM: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: victim, namespace: other, labels: {app: victim}}
spec:
  containers:
  - name: web
    image: python:3-slim
    command: ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"]
    workingDir: /tmp
    ports: [{name: http, containerPort: 8000}]
    readinessProbe: {tcpSocket: {port: 8000}, periodSeconds: 1}
"#;

/// A second service in `default`, for --all-services.
const ECHO_SVC: &str = r#"apiVersion: v1
kind: Service
metadata: {name: echo-svc}
spec:
  selector: {app: echo}
  ports:
  - {name: echo, port: 7000, targetPort: 7000}
"#;

const SET: &str = r#"# six forwards over two namespaces
forwards:
  - name: web
    target: pod/web
    ports: [":8000"]
  - name: echo
    target: pod/echo
    ports: [":7000"]
    address: 127.0.0.1
  - name: svc
    target: svc/web-svc
    ports: [":80"]
  - name: deploy
    namespace: default
    target: deploy/web-app
    ports: [":8000"]
  - name: web2
    namespace: other
    target: pod/web2
    ports: [":8000"]
  - name: victim
    namespace: other
    target: pod/victim
    ports: [":8000"]
"#;

/// `[NAME] forwarding 127.0.0.1:PORT -> REMOTE` → (NAME, PORT).
fn forwarding_line(line: &str) -> Option<(String, u16)> {
    let (name, rest) = line
        .strip_prefix('[')?
        .split_once("] forwarding 127.0.0.1:")?;
    let (port, _) = rest.split_once(" -> ")?;
    Some((name.to_string(), port.parse().ok()?))
}

/// Waits until every forward of `names` printed its IPv4 forwarding line; returns their ports.
fn wait_ports(child: &mut Child, names: &[&str]) -> Result<BTreeMap<String, u16>> {
    let mut ports = BTreeMap::new();
    while ports.len() < names.len() {
        let (name, port) = child.wait_for_line(WAIT, forwarding_line)?;
        ensure!(names.contains(&name.as_str()), "unexpected forward {name}");
        ports.insert(name, port);
    }
    Ok(ports)
}

/// One request through forward `name`; checks it is answered by the right app.
fn check(name: &str, port: u16) -> Result<()> {
    if name == "echo" {
        let payload = pattern(1000, 7);
        let back = echo_roundtrip(port, &payload).with_context(|| format!("forward {name}"))?;
        ensure!(back == payload, "forward {name}: echo mismatch");
    } else {
        let (status, body) = http_get(port, "/").with_context(|| format!("forward {name}"))?;
        ensure!(
            status == 200,
            "forward {name}: status {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// GET on the status server.
fn status_json(addr: &str, path: &str) -> Result<serde_json::Value> {
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("bad status address {addr}"))?;
    let (code, body) = http_get(port, path)?;
    ensure!(code == 200, "GET {path}: {code}");
    serde_json::from_slice(&body).with_context(|| String::from_utf8_lossy(&body).into_owned())
}

fn forward_of<'a>(status: &'a serde_json::Value, name: &str) -> Result<&'a serde_json::Value> {
    status
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name))
        .ok_or_else(|| anyhow!("no forward {name} in {status}"))
}

/// Polls `GET /status` until `ok` holds (connection counters are updated when the close event
/// arrives, a moment after the client saw the end of the answer).
fn wait_status(
    addr: &str,
    mut ok: impl FnMut(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = status_json(addr, "/status")?;
        if ok(&s) {
            return Ok(s);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("status never matched: {s:#}");
        }
        // Polling a condition (HTTP has no change notification); bounded by the deadline.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes ANSI escape sequences (CSI) from a terminal line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// The columns of a table row for forward `name` (split on runs of 2+ spaces).
fn row_of(line: &str, name: &str) -> Option<Vec<String>> {
    let clean = strip_ansi(line);
    let cols: Vec<String> = clean
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    (cols.first().map(String::as_str) == Some(name)).then_some(cols)
}

#[test]
fn a_set_of_six_survives_a_lost_pod_with_status_json_and_a_live_table() {
    if !porthole_test::require_pods("a_set_of_six_survives_a_lost_pod") {
        return;
    }
    let work = TempDir::new("fwdset").unwrap();
    let other = write_file(work.path(), "other.yaml", OTHER_NS).unwrap();
    let victim = write_file(work.path(), "victim.yaml", VICTIM).unwrap();
    let cluster = Cluster::up(
        Path::new(bin()),
        work.path(),
        &[
            example("web.yaml"),
            example("echo.yaml"),
            example("deployment.yaml"),
            other,
            victim.clone(),
        ],
    )
    .unwrap();
    let res = (|| -> Result<()> {
        for (ns, pod) in [
            ("default", "web"),
            ("default", "echo"),
            ("other", "web2"),
            ("other", "victim"),
        ] {
            cluster.wait_pod_ready(ns, pod)?;
        }
        cluster.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=web-app",
            "--timeout=90s",
        ])?;
        let set = write_file(work.path(), "forwards.yaml", SET)?;
        let names = ["web", "echo", "svc", "deploy", "web2", "victim"];

        // Plain lines (stdout is a pipe) and the status server.
        let mut cmd = cluster.porthole_cmd();
        cmd.args(["forward", "-f"])
            .arg(&set)
            .args(["--status-addr", "127.0.0.1:0"]);
        let mut fwd = Child::spawn("forward-plain", cmd, work.path())?;
        let status_addr = fwd.wait_for_line(WAIT, |l| {
            l.strip_prefix("porthole forward: status at http://")?
                .strip_suffix("/status")
                .map(str::to_string)
        })?;
        let ports = wait_ports(&mut fwd, &names)?;
        for (name, port) in &ports {
            check(name, *port)?;
        }
        let health = http_get(status_addr.rsplit(':').next().unwrap().parse()?, "/healthz")?;
        ensure!(health == (200, b"ok\n".to_vec()), "healthz: {health:?}");

        // Counted traffic through `echo`: 3 more connections of 1000 bytes each way.
        let before = status_json(&status_addr, "/status")?;
        let echo_before = forward_of(&before, "echo")?.clone();
        for _ in 0..3 {
            check("echo", ports["echo"])?;
        }
        let want_total = echo_before["connections_total"].as_u64().unwrap() + 3;
        let want_bytes = echo_before["bytes_to_pod"].as_u64().unwrap() + 3000;
        let after = wait_status(&status_addr, |s| {
            forward_of(s, "echo")
                .is_ok_and(|e| e["connections_total"] == want_total && e["connections_open"] == 0)
        })?;
        let echo = forward_of(&after, "echo")?;
        ensure!(
            echo["bytes_to_pod"] == want_bytes,
            "echo bytes_to_pod: {echo}"
        );
        ensure!(
            echo["bytes_from_pod"] == want_bytes,
            "echo bytes_from_pod: {echo}"
        );
        ensure!(
            echo["state"] == "ready" && echo["pod"] == "echo",
            "echo: {echo}"
        );
        ensure!(echo["namespace"] == "default", "echo: {echo}");
        for name in names {
            let f = forward_of(&after, name)?;
            ensure!(f["state"] == "ready", "{name} not ready: {f}");
        }
        ensure!(forward_of(&after, "web2")?["namespace"] == "other");

        // The victim's pod goes away: it reconnects, the others keep answering meanwhile.
        cluster.kubectl(&["delete", "pod", "-n", "other", "victim", "--wait=true"])?;
        fwd.wait_for_line(WAIT, |l| {
            l.starts_with("[victim] reconnecting: lost pod victim")
                .then_some(())
        })?;
        let during = status_json(&status_addr, "/status")?;
        let v = forward_of(&during, "victim")?;
        ensure!(
            v["state"] == "reconnecting",
            "victim during the outage: {v}"
        );
        for (name, port) in ports.iter().filter(|(n, _)| *n != "victim") {
            check(name, *port).context("during the victim's outage")?;
        }
        cluster.kubectl(&["apply", "-f", &victim.display().to_string()])?;
        cluster.wait_pod_ready("other", "victim")?;
        fwd.wait_for_line(WAIT, |l| {
            l.starts_with("[victim] ready: reconnected to pod victim")
                .then_some(())
        })?;
        for (name, port) in &ports {
            check(name, *port).context("after the victim came back")?;
        }
        let back = status_json(&status_addr, "/status")?;
        let v = forward_of(&back, "victim")?;
        ensure!(
            v["state"] == "ready" && v["reconnects"] == 1,
            "victim after: {v}"
        );
        let status = fwd.interrupt(Duration::from_secs(30))?;
        ensure!(
            status.success(),
            "forward exited with {status}\n{}",
            fwd.report()
        );

        // -o json: the engine's events, each with the forward's name.
        let mut cmd = cluster.porthole_cmd();
        cmd.args(["forward", "-f"]).arg(&set).args(["-o", "json"]);
        let mut json = Child::spawn("forward-json", cmd, work.path())?;
        let mut json_ports = BTreeMap::new();
        while json_ports.len() < names.len() {
            let (name, port) = json.wait_for_line(WAIT, |l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["event"] == "listening" && v["address"] == "127.0.0.1").then(|| {
                    (
                        v["forward"].as_str().unwrap_or("").to_string(),
                        v["local_port"].as_u64().unwrap_or(0) as u16,
                    )
                })
            })?;
            json_ports.insert(name, port);
        }
        check("web2", json_ports["web2"])?;
        let closed = json.wait_for_line(WAIT, |l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == "connection_closed").then_some(v)
        })?;
        ensure!(
            closed["forward"] == "web2" && closed["pod"] == "web2",
            "{closed}"
        );
        ensure!(
            closed["bytes_from_pod"].as_u64().unwrap_or(0) > 0,
            "{closed}"
        );
        ensure!(closed["time"].is_string(), "{closed}");
        let status = json.interrupt(Duration::from_secs(30))?;
        ensure!(status.success(), "json forward exited with {status}");

        // The live table on a pseudo-terminal: `script` gives porthole a terminal and copies
        // the screen output to our pipe.
        let command = format!(
            "KUBECONFIG={} {} forward -f {}",
            cluster.kubeconfig.display(),
            bin(),
            set.display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", &command, "/dev/null"]);
        let mut tty = Child::spawn("forward-tty", cmd, work.path())?.stop_with(Signal::SIGTERM);
        let mut tty_ports = BTreeMap::new();
        while tty_ports.len() < names.len() {
            let line = tty.wait_for_line(WAIT, |l| {
                let name = names.iter().find(|n| row_of(l, n).is_some())?;
                let cols = row_of(l, name)?;
                (cols[1] == "ready").then(|| (name.to_string(), cols))
            })?;
            let (name, cols) = line;
            // NAME STATE POD PORTS CONNS IN OUT ERROR
            let port: u16 = cols[3]
                .strip_prefix("127.0.0.1:")
                .and_then(|p| p.split("->").next())
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow!("no port in {cols:?}"))?;
            tty_ports.insert(name, (port, cols[2].clone()));
        }
        ensure!(tty_ports["web"].1 == "web", "{tty_ports:?}");
        ensure!(tty_ports["web2"].1 == "web2", "{tty_ports:?}");
        ensure!(
            tty_ports["deploy"].1.starts_with("web-app-"),
            "{tty_ports:?}"
        );
        check("web", tty_ports["web"].0)?;
        let grown = tty.wait_for_line(WAIT, |l| {
            let cols = row_of(l, "web")?;
            (cols[4] == "0/1" && cols[5] != "0B" && cols[6] != "0B").then_some(cols)
        })?;
        ensure!(grown[1] == "ready", "{grown:?}");
        // An open connection's bytes show while it stays open: 5000 bytes each way through
        // echo, the connection kept.
        let mut held = std::net::TcpStream::connect(("127.0.0.1", tty_ports["echo"].0))?;
        held.set_read_timeout(Some(Duration::from_secs(30)))?;
        let payload = pattern(5000, 3);
        std::io::Write::write_all(&mut held, &payload)?;
        let mut back = vec![0u8; payload.len()];
        std::io::Read::read_exact(&mut held, &mut back)?;
        ensure!(back == payload, "echo through the tty run");
        let open = tty.wait_for_line(WAIT, |l| {
            let cols = row_of(l, "echo")?;
            (cols[4] == "1/1" && cols[5] == "4.9KiB" && cols[6] == "4.9KiB").then_some(cols)
        })?;
        ensure!(open[2] == "echo", "{open:?}");
        drop(held);
        // The header line names the count.
        ensure!(
            tty.stdout_lines()
                .iter()
                .any(|l| strip_ansi(l).starts_with("porthole forward: 6 forwards, 6 ready")),
            "no header line\n{}",
            tty.report()
        );
        // SIGTERM to porthole itself (script passes on the exit status with -e).
        let porthole: Vec<u32> = porthole_test::descendants(tty.pid())
            .into_iter()
            .map(|p| p.pid)
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "porthole")
            })
            .collect();
        ensure!(porthole.len() == 1, "porthole under script: {porthole:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(porthole[0] as i32),
            Signal::SIGTERM,
        )?;
        tty.wait_for_line(WAIT, |l| {
            (l.contains("\x1b[?7h") && l.contains("\x1b[?25h")).then_some(())
        })
        .context("the terminal is restored on exit")?;
        let status = tty.wait_timeout(Duration::from_secs(30))?;
        ensure!(status.success(), "tty forward exited with {status}");
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}

/// The ```yaml block of README's "Many forwards at once" section and the commands after it.
fn readme_example() -> (String, Vec<String>) {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Many forwards at once")
        .nth(1)
        .expect("README has a 'Many forwards at once' section");
    let section = section.split("\n## ").next().unwrap();
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a yaml block")
        .to_string();
    let commands = section
        .split("```sh\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a sh block")
        .lines()
        .filter(|l| l.starts_with("porthole forward") || l.starts_with("kubectl porthole forward"))
        .map(|l| l.split(" #").next().unwrap().trim().to_string())
        .collect();
    (yaml, commands)
}

#[test]
fn all_services_etc_hosts_and_the_readme_example() {
    if !porthole_test::require_pods("all_services_etc_hosts_and_the_readme_example") {
        return;
    }
    let work = TempDir::new("fwdsvc").unwrap();
    let echo_svc = write_file(work.path(), "echo-svc.yaml", ECHO_SVC).unwrap();
    let cluster = Cluster::up(
        Path::new(bin()),
        work.path(),
        &[
            example("web.yaml"),
            example("echo.yaml"),
            example("deployment.yaml"),
            echo_svc,
        ],
    )
    .unwrap();
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("default", "web")?;
        cluster.wait_pod_ready("default", "echo")?;
        cluster.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=web-app",
            "--timeout=90s",
        ])?;

        // The README's example, through the kubectl plugin path.
        let (yaml, commands) = readme_example();
        let shipped = fs::read_to_string(example("forwards.yaml"))?;
        ensure!(
            shipped.ends_with(&yaml),
            "examples/forwards.yaml is not README's example"
        );
        // Local port 8080 may be taken on a test machine: a free one instead.
        ensure!(
            yaml.contains("\"8080:8000\""),
            "README example forwards 8080:8000"
        );
        write_file(
            work.path(),
            "forwards.yaml",
            &yaml.replace("\"8080:8000\"", "\":8000\""),
        )?;
        ensure!(
            commands
                .iter()
                .any(|c| c == "kubectl porthole forward -f forwards.yaml"),
            "README shows the plugin command: {commands:?}"
        );
        let plugins = work.path().join("plugins");
        fs::create_dir_all(&plugins)?;
        symlink(bin(), plugins.join("kubectl-porthole"))?;
        let path = format!(
            "{}:{}",
            plugins.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // As a user types it: kubectl finds kubectl-porthole on PATH (global kubectl flags
        // may not come before a plugin's name, so KUBECONFIG says where the cluster is).
        let mut cmd2 = Command::new(&cluster.kubectl);
        cmd2.env("PATH", &path)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .current_dir(work.path())
            .args(["porthole", "forward", "-f", "forwards.yaml"]);
        let entries: Vec<String> = yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- name: "))
            .map(|n| n.split('#').next().unwrap_or(n).trim().to_string())
            .collect();
        ensure!(entries.len() >= 3, "README example entries: {entries:?}");
        let mut plugin = Child::spawn("kubectl-porthole", cmd2, work.path())?;
        let names: Vec<&str> = entries.iter().map(String::as_str).collect();
        let ports = wait_ports(&mut plugin, &names)?;
        for (name, port) in &ports {
            // The example's forwards are web and api (http) and echo (a TCP echo).
            check(name, *port)?;
        }
        let status = plugin.interrupt(Duration::from_secs(30))?;
        ensure!(
            status.success(),
            "plugin exited with {status}\n{}",
            plugin.report()
        );

        // --all-services on free ports: the map and every port.
        let mut cmd = cluster.porthole_cmd();
        cmd.args(["forward", "--all-services", "-n", "default"]);
        let mut all = Child::spawn("forward-all", cmd, work.path())?;
        let mut map = BTreeMap::new();
        while map.len() < 2 {
            let (svc, port) = all.wait_for_line(WAIT, |l| {
                let rest = l.strip_prefix("map: ")?;
                let (name, rest) = rest.split_once(" port ")?;
                let (service_port, local) = rest.split_once(" -> 127.0.0.1:")?;
                let want = if name == "default/web-svc" {
                    "80"
                } else {
                    "7000"
                };
                (service_port == want).then_some(())?;
                Some((name.to_string(), local.parse::<u16>().ok()?))
            })?;
            map.insert(svc, port);
        }
        ensure!(
            map.keys().cloned().collect::<Vec<_>>() == ["default/echo-svc", "default/web-svc"],
            "{map:?}"
        );
        check("echo", map["default/echo-svc"])?;
        check("web-svc", map["default/web-svc"])?;
        let status = all.interrupt(Duration::from_secs(30))?;
        ensure!(status.success(), "all-services exited with {status}");

        // --etc-hosts on a temporary hosts file, with a stale block of a dead run in it.
        let hosts = write_file(
            work.path(),
            "hosts",
            "127.0.0.1 localhost\n# BEGIN porthole forward (pid 999999999)\n127.0.0.9 stale\n# END porthole forward (pid 999999999)\n::1 localhost\n",
        )?;
        let mut cmd = cluster.porthole_cmd();
        cmd.args([
            "forward",
            "--all-services",
            "-n",
            "default",
            "--etc-hosts",
            "--hosts-file",
        ])
        .arg(&hosts);
        let mut named = Child::spawn("forward-hosts", cmd, work.path())?;
        named.wait_for_line(WAIT, |l| l.contains("removed 1 block(s)").then_some(()))?;
        let mut addrs = BTreeMap::new();
        while addrs.len() < 2 {
            let (svc, addr, port) = named.wait_for_line(WAIT, |l| {
                let rest = l.strip_prefix("map: ")?;
                let (name, rest) = rest.split_once(" port ")?;
                let (_, local) = rest.split_once(" -> ")?;
                let (ip, port) = local.rsplit_once(':')?;
                Some((name.to_string(), ip.to_string(), port.parse::<u16>().ok()?))
            })?;
            addrs.insert(svc, (addr, port));
        }
        let text = fs::read_to_string(&hosts)?;
        ensure!(!text.contains("stale"), "stale block kept:\n{text}");
        // Each name resolves, in that file, to the address its service listens on.
        let lookup = |name: &str| -> Option<String> {
            text.lines()
                .find(|l| !l.starts_with('#') && l.split_whitespace().skip(1).any(|n| n == name))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        };
        for (svc, (addr, port)) in &addrs {
            let short = svc.trim_start_matches("default/");
            for name in [
                short.to_string(),
                format!("{short}.default"),
                format!("{short}.default.svc.cluster.local"),
            ] {
                ensure!(
                    lookup(&name).as_ref() == Some(addr),
                    "{name} -> {:?}, want {addr}\n{text}",
                    lookup(&name)
                );
            }
            ensure!(
                addr.starts_with("127.0.0.") && addr != "127.0.0.1",
                "{svc}: {addr}"
            );
            // Own port numbers on the service's own address.
            let want_port = if short == "web-svc" { 80 } else { 7000 };
            ensure!(*port == want_port, "{svc} on port {port}");
            let mut s = std::net::TcpStream::connect((addr.as_str(), *port))
                .with_context(|| format!("{svc} at {addr}:{port}"))?;
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            if short == "echo-svc" {
                s.write_all(b"ping")?;
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf)?;
                ensure!(&buf == b"ping");
            } else {
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut resp = String::new();
                s.read_to_string(&mut resp)?;
                ensure!(resp.starts_with("HTTP/1.0 200"), "{resp}");
            }
        }
        let status = named.interrupt(Duration::from_secs(30))?;
        ensure!(status.success(), "etc-hosts run exited with {status}");
        let after = fs::read_to_string(&hosts)?;
        ensure!(
            after == "127.0.0.1 localhost\n::1 localhost\n",
            "hosts after exit:\n{after}"
        );

        // A killed run leaves its block; the next run removes it.
        let mut cmd = cluster.porthole_cmd();
        cmd.args([
            "forward",
            "--all-services",
            "-n",
            "default",
            "--etc-hosts",
            "--hosts-file",
        ])
        .arg(&hosts);
        let mut killed = Child::spawn("forward-killed", cmd, work.path())?;
        killed.wait_for_line(WAIT, |l| l.starts_with("map: ").then_some(()))?;
        killed.signal(Signal::SIGKILL)?;
        killed.wait_timeout(Duration::from_secs(10))?;
        ensure!(
            fs::read_to_string(&hosts)?.contains("# BEGIN porthole forward"),
            "no block after SIGKILL"
        );
        let mut cmd = cluster.porthole_cmd();
        cmd.args([
            "forward",
            "--all-services",
            "-n",
            "default",
            "--etc-hosts",
            "--hosts-file",
        ])
        .arg(&hosts);
        let mut next = Child::spawn("forward-next", cmd, work.path())?;
        next.wait_for_line(WAIT, |l| l.contains("removed 1 block(s)").then_some(()))?;
        next.wait_for_line(WAIT, |l| l.starts_with("map: ").then_some(()))?;
        ensure!(
            fs::read_to_string(&hosts)?.contains("# BEGIN porthole forward"),
            "no block in the next run"
        );
        // SIGTERM (a service manager's stop) removes the block as Ctrl-C does.
        next.signal(Signal::SIGTERM)?;
        let status = next.wait_timeout(Duration::from_secs(30))?;
        ensure!(
            status.success(),
            "next run exited with {status} after SIGTERM"
        );
        let after = fs::read_to_string(&hosts)?;
        ensure!(
            after == "127.0.0.1 localhost\n::1 localhost\n",
            "hosts after the next run:\n{after}"
        );
        Ok(())
    })();
    porthole_test::finish(cluster, res);
}

#[test]
fn bad_forwards_files_name_the_file_entry_and_field() {
    let work = TempDir::new("fwdbad").unwrap();
    let cases = [
        (
            "unknown.yaml",
            "forwards:\n  - name: web\n    target: pod/web\n    ports: ['80']\n    prots: ['81']\n",
            "forwards[0] (name \"web\"): unknown field `prots`",
        ),
        (
            "notarget.yaml",
            "forwards:\n  - target: pod/web\n    ports: ['80']\n  - name: db\n    ports: ['5432']\n",
            "forwards[1] (name \"db\"): missing field `target`",
        ),
        (
            "badport.yaml",
            "forwards:\n  - name: api\n    target: deploy/api\n    ports: ['8080:99999']\n",
            "forwards[0] (name \"api\"): field `ports`: \"8080:99999\": error parsing remote port '99999'",
        ),
    ];
    for (file, text, want) in cases {
        let path = write_file(work.path(), file, text).unwrap();
        // No cluster: the file is checked before anything connects.
        let out = Command::new(bin())
            .args(["forward", "-f"])
            .arg(&path)
            .env("KUBECONFIG", work.path().join("none"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        let want = format!("error: {}: {want}", path.display());
        assert!(
            stderr.starts_with(&want),
            "{file}:\n got: {stderr}\nwant: {want}"
        );
    }
    // Neither a file nor --all-services.
    let out = Command::new(bin())
        .arg("forward")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: give a forwards file"));
}
