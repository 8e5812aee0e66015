//! `ttfb`: start a port-forward command (kubectl's or ours), connect to the local port as soon
//! as it prints `Forwarding from 127.0.0.1:N -> REMOTE`, send 64 B, and time the first byte of
//! the echo. Reports both the time to the listening line and to the first byte, from the spawn.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

/// Arguments of `ttfb`.
#[derive(clap::Args)]
pub struct TtfbArgs {
    /// The remote port whose `Forwarding from 127.0.0.1:N -> PORT` line to wait for.
    #[arg(long)]
    remote_port: u16,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// Parse kubectl's `Forwarding from 127.0.0.1:N -> M` line.
fn local_port(line: &str, remote: u16) -> Option<u16> {
    let rest = line.trim_end().strip_prefix("Forwarding from 127.0.0.1:")?;
    let (local, remote_text) = rest.split_once(" -> ")?;
    (remote_text.parse::<u16>().ok()? == remote)
        .then(|| local.parse().ok())
        .flatten()
}

/// `ttfb`: see the module docs.
pub fn run(a: TtfbArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut child = Command::new(&a.cmd[0])
        .args(&a.cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {}", a.cmd[0]))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stdout = child.stdout.take().expect("stdout was piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let remote = a.remote_port;
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(p) = local_port(&line, remote) {
                    let _ = tx.send(p);
                    sent = true;
                }
            }
        }
    });
    let result = (|| -> anyhow::Result<(f64, f64)> {
        let port = rx
            .recv_timeout(Duration::from_secs_f64(a.timeout))
            .context("no `Forwarding from 127.0.0.1:N` line")?;
        let t_listen = t0.elapsed();
        let mut s = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs_f64(a.timeout)))?;
        s.write_all(&[0x5a; 64])?;
        let mut b = [0u8; 1];
        if s.read(&mut b)? != 1 {
            bail!("connection closed before the first byte");
        }
        Ok((
            t_listen.as_secs_f64() * 1e3,
            t0.elapsed().as_secs_f64() * 1e3,
        ))
    })();
    // Stop it as a user would (Ctrl-C), then make sure.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let stop = Instant::now();
    while child.try_wait()?.is_none() {
        if stop.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (listen_ms, first_byte_ms) = result?;
    println!(
        "{}",
        json!({"listen_ms": listen_ms, "first_byte_ms": first_byte_ms})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::local_port;

    #[test]
    fn parses_kubectl_lines() {
        assert_eq!(
            local_port("Forwarding from 127.0.0.1:41234 -> 7001\n", 7001),
            Some(41234)
        );
        assert_eq!(
            local_port("Forwarding from 127.0.0.1:41234 -> 5201", 7001),
            None
        );
        assert_eq!(
            local_port("Forwarding from [::1]:41234 -> 7001", 7001),
            None
        );
        assert_eq!(local_port("Handling connection for 41234", 7001), None);
    }
}
