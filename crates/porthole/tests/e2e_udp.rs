//! UDP forwarding (a porthole extension) end to end with `porthole up` and real apps in pods:
//! Debian's dnsmasq queried with `dig` over both SPDY transports, a burst of concurrent queries
//! from different source ports (each answer must reach its own asker), a refused UDP port that
//! fails its flow but not the session, and `iperf3 -u` with its TCP control port and its UDP
//! data port forwarded by one command. A second test runs dnsmasq on a node behind NAT, so
//! the negotiation crosses the API server and the node's tunnel.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use porthole_test::{example, finish, write_file, Child, Cluster, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// The iperf3 server pod (TCP control and UDP data both on 5201).
const IPERF_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: iperf
spec:
  containers:
  - name: iperf3
    image: debian:bookworm-slim
    command: ["iperf3", "-s", "-p", "5201"]
    readinessProbe:
      tcpSocket:
        port: 5201
      periodSeconds: 1
"#;

/// Local port of the `Forwarding from 127.0.0.1:N -> REMOTE` line whose suffix is `remote`
/// (`53/udp`, `5201`).
fn forwarded_port(line: &str, remote: &str) -> Option<u16> {
    line.strip_prefix("Forwarding from 127.0.0.1:")?
        .strip_suffix(&format!(" -> {remote}"))?
        .parse()
        .ok()
}

/// `dig +short` through the forward on `port`.
fn dig(port: u16, name: &str) -> Result<String> {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), name, "A"])
        .args(["+short", "+time=10", "+tries=1"])
        .output()
        .context("run dig (apt-get install bind9-dnsutils)")?;
    let text = porthole_test::expect_success(&format!("dig {name}"), &out)?;
    Ok(text.trim().to_string())
}

/// A DNS query for `name` (type A, class IN) with transaction id `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// `count` queries at once, each from its own socket (own source port) and for its own name;
/// every answer must come back to the socket that asked, with its id and its question.
fn burst(port: u16, count: usize) -> Result<()> {
    let askers: Vec<_> = (0..count)
        .map(|i| {
            std::thread::spawn(move || -> Result<()> {
                let sock = UdpSocket::bind("127.0.0.1:0")?;
                sock.set_read_timeout(Some(Duration::from_secs(20)))?;
                let id = 0x4000 + i as u16;
                let name = format!("asker{i}.porthole.test");
                let query = dns_query(id, &name);
                sock.send_to(&query, ("127.0.0.1", port))?;
                let mut buf = [0u8; 1500];
                let (n, from) = sock.recv_from(&mut buf).context("no answer")?;
                ensure!(from.port() == port, "answer from {from}, not the forward");
                let answer = &buf[..n];
                ensure!(answer.len() > query.len(), "short answer {answer:?}");
                ensure!(answer[..2] == id.to_be_bytes(), "answer for another query");
                // The question section is echoed: it names this asker's query.
                ensure!(
                    answer[12..query.len()] == query[12..],
                    "answer carries another question"
                );
                // The last 4 bytes are the A record's address.
                ensure!(
                    answer[n - 4..] == [198, 18, 100, 7],
                    "wrong address in {answer:?}"
                );
                Ok(())
            })
        })
        .collect();
    let mut failed = Vec::new();
    for (i, a) in askers.into_iter().enumerate() {
        match a.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("asker {i}: {e:#}")),
            Err(_) => failed.push(format!("asker {i} panicked")),
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

fn dns_over(cluster: &Cluster, work: &Path, transport: &str) -> Result<()> {
    let mut cmd = cluster.porthole_cmd();
    cmd.args([
        "port-forward",
        "pod/dns",
        ":53/udp",
        "--transport",
        transport,
    ]);
    let mut child = Child::spawn(&format!("pf-dns-{transport}"), cmd, work)?;
    let port = child.wait_for_line(Duration::from_secs(60), |l| forwarded_port(l, "53/udp"))?;
    let res = (|| -> Result<()> {
        let answer = dig(port, "porthole.test")?;
        ensure!(answer == "198.18.100.7", "dig answered {answer:?}");
        burst(port, 64)?;
        // The same sources again: flows are reused, answers still reach their askers.
        burst(port, 16)
    })();
    let report = child.report();
    let status = child.interrupt(Duration::from_secs(20))?;
    res.with_context(|| report.clone())?;
    ensure!(status.success(), "port-forward exited {status}\n{report}");
    Ok(())
}

/// A refused UDP port ends its flow with the pod's error, reported as an event; the session
/// and the DNS forward of the same command go on; an idle flow ends after
/// `--udp-idle-timeout` and the next datagram opens a new one.
fn refused(cluster: &Cluster, work: &Path) -> Result<()> {
    let mut cmd = cluster.porthole_cmd();
    cmd.args(["port-forward", "pod/dns", ":53/udp", ":9/udp", "-o", "json"])
        .arg("--udp-idle-timeout=2s");
    let mut child = Child::spawn("pf-refused", cmd, work)?;
    let mut ports = std::collections::HashMap::new();
    child.wait_for_line(Duration::from_secs(60), |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        if v["event"] == "udp_listening" && v["address"] == "127.0.0.1" {
            ports.insert(v["remote_port"].as_u64()?, v["local_port"].as_u64()? as u16);
        }
        (ports.len() == 2).then_some(())
    })?;
    let res = (|| -> Result<()> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.send_to(b"anyone?", ("127.0.0.1", ports[&9]))?;
        let error = child.wait_for_line(Duration::from_secs(30), |l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == "udp_flow_closed" && v["remote_port"] == 9)
                .then(|| v["error"].as_str().unwrap_or_default().to_string())
        })?;
        ensure!(
            error.contains("error forwarding port 9 to pod")
                && error.contains("connection refused")
                && error.contains("IPv4")
                && error.contains("IPv6"),
            "unexpected error text: {error:?}"
        );
        let answer = dig(ports[&53], "porthole.test")?;
        ensure!(
            answer == "198.18.100.7",
            "dig answered {answer:?} after the refusal"
        );
        // dig's flow ends on its own after the idle timeout, cleanly, having carried one
        // query and one answer.
        let closed = child.wait_for_line(Duration::from_secs(30), |l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == "udp_flow_closed" && v["remote_port"] == 53).then_some(v)
        })?;
        ensure!(
            closed["error"].is_null()
                && closed["datagrams_to_pod"] == 1
                && closed["datagrams_from_pod"] == 1
                && closed["dropped"] == 0,
            "idle flow closed as {closed}"
        );
        // A new flow for the next query.
        let answer = dig(ports[&53], "again.porthole.test")?;
        ensure!(
            answer == "198.18.100.7",
            "dig answered {answer:?} after the idle timeout"
        );
        Ok(())
    })();
    let report = child.report();
    let status = child.interrupt(Duration::from_secs(20))?;
    res.with_context(|| report.clone())?;
    ensure!(status.success(), "port-forward exited {status}\n{report}");
    Ok(())
}

/// A local port free for both TCP and UDP (iperf3 sends its UDP data to its control port's
/// number). Chosen by the kernel; a race with another process is possible but reported.
fn free_tcp_and_udp_port() -> Result<u16> {
    for _ in 0..20 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP after 20 tries")
}

fn iperf_udp(cluster: &Cluster, work: &Path) -> Result<()> {
    let port = free_tcp_and_udp_port()?;
    let mut cmd = cluster.porthole_cmd();
    cmd.args([
        "port-forward",
        "pod/iperf",
        &format!("{port}:5201"),
        &format!("{port}:5201/udp"),
        "--address",
        "127.0.0.1",
    ]);
    let mut child = Child::spawn("pf-iperf", cmd, work)?;
    child.wait_for_line(Duration::from_secs(60), |l| forwarded_port(l, "5201/udp"))?;
    let res = (|| -> Result<()> {
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string()])
            .args(["-u", "-b", "10M", "-t", "3", "-l", "1200", "-J"])
            .output()
            .context("run iperf3 (apt-get install iperf3)")?;
        let text = porthole_test::expect_success("iperf3 -u", &out)?;
        let v: serde_json::Value = serde_json::from_str(&text).context("iperf3 JSON")?;
        let sum = &v["end"]["sum"];
        let packets = sum["packets"].as_u64().unwrap_or(0);
        let lost = sum["lost_percent"].as_f64().context("lost_percent")?;
        eprintln!("iperf3 -u through the forward: {packets} datagrams, {lost:.2}% lost");
        ensure!(packets > 1000, "only {packets} datagrams sent: {sum}");
        ensure!(
            lost < 5.0,
            "{lost}% of the datagrams lost at 10 Mbit/s: {sum}"
        );
        Ok(())
    })();
    let report = child.report();
    let status = child.interrupt(Duration::from_secs(20))?;
    res.with_context(|| report.clone())?;
    ensure!(status.success(), "port-forward exited {status}\n{report}");
    Ok(())
}

#[test]
fn udp_forwarding_with_dnsmasq_and_iperf3() {
    if !porthole_test::require_pods("udp_forwarding_with_dnsmasq_and_iperf3") {
        return;
    }
    let work = TempDir::new("udp").unwrap();
    let iperf = write_file(work.path(), "iperf.yaml", IPERF_POD).unwrap();
    let cluster =
        Cluster::up(Path::new(bin()), work.path(), &[example("dns.yaml"), iperf]).unwrap();
    let res = (|| -> Result<()> {
        cluster.wait_pod_ready("default", "dns")?;
        cluster.wait_pod_ready("default", "iperf")?;
        dns_over(&cluster, work.path(), "spdy").context("dig over SPDY")?;
        dns_over(&cluster, work.path(), "websocket").context("dig over the WebSocket tunnel")?;
        refused(&cluster, work.path()).context("refused UDP port")?;
        iperf_udp(&cluster, work.path()).context("iperf3 -u")?;
        Ok(())
    })();
    finish(cluster, res);
}

/// The node reached only through the tunnel it dialed: the extension's headers cross the API
/// server and the tunnel both ways, and dig on the client host gets its answer.
#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn udp_through_a_node_behind_nat() {
    use porthole_test::ha::{on_cluster, Layout};
    let layout = Layout {
        nodes: 1,
        etcd_members: 1,
        etcd_election_timeout: None,
    };
    on_cluster(Path::new(bin()), "udp-tunnel", layout, |cluster| {
        let join = cluster.token_create(&[])?;
        cluster.start_nat_node("natnode", &join)?;
        cluster.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "node/natnode",
            "--timeout=90s",
        ])?;
        // examples/dns.yaml pinned to the NAT node.
        let manifest = std::fs::read_to_string(example("dns.yaml"))?.replace(
            "spec:\n  containers:",
            "spec:\n  nodeName: natnode\n  containers:",
        );
        ensure!(
            manifest.contains("nodeName: natnode"),
            "could not pin the pod"
        );
        let file = write_file(&cluster.work, "dns-nat.yaml", &manifest)?;
        cluster.kubectl(&["apply", "-f", &file.display().to_string()])?;
        cluster.kubectl(&["wait", "--for=condition=Ready", "pod/dns", "--timeout=90s"])?;
        for transport in ["spdy", "websocket"] {
            let mut cmd = cluster.porthole_on_client();
            cmd.args([
                "port-forward",
                "pod/dns",
                ":53/udp",
                "--transport",
                transport,
            ]);
            let mut child = Child::spawn(&format!("pf-nat-{transport}"), cmd, &cluster.work)?;
            let port =
                child.wait_for_line(Duration::from_secs(60), |l| forwarded_port(l, "53/udp"))?;
            let out = cluster
                .client()
                .command("dig")
                .args(["@127.0.0.1", "-p", &port.to_string(), "porthole.test", "A"])
                .args(["+short", "+time=10", "+tries=1"])
                .output()
                .context("run dig on the client host")?;
            let answer =
                porthole_test::expect_success("dig", &out).with_context(|| child.report())?;
            ensure!(
                answer.trim() == "198.18.100.7",
                "dig over {transport} answered {answer:?}\n{}",
                child.report()
            );
            eprintln!(
                "dig over {transport} to the pod behind NAT: {}",
                answer.trim()
            );
            let status = child.interrupt(Duration::from_secs(20))?;
            ensure!(status.success(), "port-forward exited {status}");
        }
        Ok(())
    });
}
