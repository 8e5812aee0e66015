//! Readiness probes, run inside the pod's network namespace: `tcpSocket` and `httpGet` through
//! the same dialer as port-forward, `exec` as a process that joins the namespace.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use porthole_netns::NetNs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Outcome of one probe attempt; `Err` carries the reason for logs and events.
pub(crate) type ProbeResult = Result<(), String>;

/// Probe timing with Kubernetes' defaults filled in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeTiming {
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) failure_threshold: u32,
}

impl ProbeTiming {
    pub(crate) fn of(p: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min) as u64)
        };
        ProbeTiming {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Resolves a probe port (number, or the name of one of the container's ports).
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid probe port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("probe port name {name:?} is not a port of the container")),
    }
}

/// Runs one attempt of `probe` for `container` inside `ns`, bounded by the probe's timeout.
pub(crate) async fn run_once(
    probe: &Probe,
    container: &Container,
    ns: &NetNs,
    env: &[(String, String)],
) -> ProbeResult {
    let timeout = ProbeTiming::of(probe).timeout;
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, container)?;
        return ns
            .dial(port, timeout)
            .await
            .map(drop)
            .map_err(|e| e.to_string());
    }
    if let Some(http) = &probe.http_get {
        let port = resolve_port(&http.port, container)?;
        return match tokio::time::timeout(timeout, http_get(http, port, ns, timeout)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "HTTP probe to port {port} timed out after {}s",
                timeout.as_secs()
            )),
        };
    }
    if let Some(exec) = &probe.exec {
        return exec_probe(
            exec.command.as_deref().unwrap_or_default(),
            ns,
            env,
            timeout,
        )
        .await;
    }
    Err("probe has no tcpSocket, httpGet or exec handler (grpc probes are not supported)".into())
}

async fn http_get(
    http: &k8s_openapi::api::core::v1::HTTPGetAction,
    port: u16,
    ns: &NetNs,
    timeout: Duration,
) -> ProbeResult {
    if http
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        return Err("HTTPS readiness probes are not supported by porthole; use HTTP".into());
    }
    let mut stream = ns.dial(port, timeout).await.map_err(|e| e.to_string())?;
    let path = http
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for h in http.http_headers.iter().flatten() {
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("HTTP probe: write request: {e}"))?;
    // Only the status line matters; read until it is complete.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("HTTP probe: read response: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "HTTP probe: malformed response status line".to_string())?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec_probe(
    command: &[String],
    ns: &NetNs,
    env: &[(String, String)],
    timeout: Duration,
) -> ProbeResult {
    let Some((program, args)) = command.split_first() else {
        return Err("exec probe has an empty command".into());
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    ns.enter_on_spawn(&mut cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("exec probe: start {program:?}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("exec probe {program:?} failed: {status}")),
        Ok(Err(e)) => Err(format!("exec probe: wait for {program:?}: {e}")),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // Reap it so no zombie is left.
            let _ = child.wait().await;
            Err(format!(
                "exec probe {program:?} timed out after {}s",
                timeout.as_secs()
            ))
        }
    }
}
