//! A real etcd (Debian's `etcd-server`) for tests: started on a free loopback port or on a
//! [`Host`] of a testbed, optionally with TLS and client-certificate authentication, waited for
//! when it serves, stopped, killed (a store that went away) and started again on the same data
//! dir and address. Readiness is its own log line (with `--logger zap`: "serving client
//! traffic").

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::testbed::Host;
use crate::Child;

/// TLS for etcd's client port (`--cert-file`, `--key-file`, and `--trusted-ca-file` with
/// `--client-cert-auth`: only clients with a certificate from that CA get in).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// etcd's serving certificate (its SANs must name the address clients dial).
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// The CA that signed the clients' certificates (and etcd's own).
    pub ca_file: PathBuf,
    /// A client certificate and key from that CA, for `etcdctl`.
    pub client_cert_file: PathBuf,
    /// Its key.
    pub client_key_file: PathBuf,
}

/// How long etcd may take to start serving.
const ETCD_READY: Duration = Duration::from_secs(30);

/// One etcd member; dropping it kills it and removes its data dir.
pub struct Etcd {
    child: Option<Child>,
    /// Address clients use (`IP:PORT`).
    client_addr: String,
    /// Address the member talks to peers on (only itself here).
    peer_addr: String,
    data_dir: PathBuf,
    log_dir: PathBuf,
    starts: u32,
    /// Where etcd runs: a testbed host, or this namespace.
    host: Option<Host>,
    tls: Option<EtcdTls>,
    /// `--name`, and `--initial-cluster` (`NAME=PEER_URL,...`: this member alone, or all).
    name: String,
    initial_cluster: String,
    /// `--election-timeout` (and heartbeats at a tenth of it); `None`: etcd's defaults.
    election_timeout: Option<Duration>,
}

fn free_loopback_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("find a free loopback port for etcd")?
        .port())
}

impl Etcd {
    /// etcd on 127.0.0.1 in the current network namespace, on free ports (found by binding
    /// port 0; if etcd then finds one taken after all, it is started again on new ones).
    pub fn start_local(work_dir: &Path) -> Result<Etcd> {
        Etcd::start_local_with(work_dir, None)
    }

    /// [`Etcd::start_local`] with TLS on the client port.
    pub fn start_local_tls(work_dir: &Path, tls: EtcdTls) -> Result<Etcd> {
        Etcd::start_local_with(work_dir, Some(tls))
    }

    fn start_local_with(work_dir: &Path, tls: Option<EtcdTls>) -> Result<Etcd> {
        let mut last = None;
        for _ in 0..5 {
            let client_addr = format!("127.0.0.1:{}", free_loopback_port()?);
            let peer_addr = format!("127.0.0.1:{}", free_loopback_port()?);
            let mut etcd = Etcd::new(work_dir, client_addr, peer_addr)?;
            etcd.tls = tls.clone();
            match etcd.start() {
                Ok(()) => return Ok(etcd),
                Err(e) if format!("{e:#}").contains("address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// etcd on a testbed host, on its address (free ports: only the test starts processes
    /// there).
    pub fn start_on(host: &Host, work_dir: &Path) -> Result<Etcd> {
        let client_addr = format!("{}:{}", host.ip(), host.free_port()?);
        let peer_addr = format!("{}:{}", host.ip(), host.free_port()?);
        let mut etcd = Etcd::new(work_dir, client_addr, peer_addr)?;
        etcd.host = Some(host.clone());
        etcd.start()?;
        Ok(etcd)
    }

    /// A cluster of one member per host (`etcd1`, `etcd2`, ...), started together; returns
    /// once every member serves clients (which needs a quorum).
    pub fn start_cluster_on(
        hosts: &[&Host],
        work_dir: &Path,
        election_timeout: Option<Duration>,
    ) -> Result<Vec<Etcd>> {
        let mut members = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let client_addr = format!("{}:{}", host.ip(), host.free_port()?);
            let peer_addr = format!("{}:{}", host.ip(), host.free_port()?);
            let mut etcd = Etcd::new(work_dir, client_addr, peer_addr)?;
            etcd.name = format!("etcd{}", i + 1);
            etcd.data_dir = work_dir.join(format!("{}-data", etcd.name));
            etcd.log_dir = work_dir.join(format!("{}-logs", etcd.name));
            std::fs::create_dir_all(&etcd.log_dir)?;
            etcd.host = Some((*host).clone());
            etcd.election_timeout = election_timeout;
            members.push(etcd);
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer_addr))
            .collect();
        for member in &mut members {
            member.initial_cluster = initial.join(",");
            member.spawn()?;
        }
        for member in &mut members {
            member.wait_ready()?;
        }
        Ok(members)
    }

    /// This member's name (`default` for a single member).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn new(work_dir: &Path, client_addr: String, peer_addr: String) -> Result<Etcd> {
        let log_dir = work_dir.join("etcd-logs");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        let initial_cluster = format!("default=http://{peer_addr}");
        Ok(Etcd {
            child: None,
            client_addr,
            peer_addr,
            data_dir: work_dir.join("etcd-data"),
            log_dir,
            starts: 0,
            host: None,
            tls: None,
            initial_cluster,
            name: "default".into(),
            election_timeout: None,
        })
    }

    /// The URL to give `--etcd-servers`.
    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }

    fn command(&self, program: &str) -> Command {
        match &self.host {
            Some(host) => host.command(program),
            None => Command::new(program),
        }
    }

    /// `etcdctl` for this member (API v3, its endpoint, its TLS client certificate).
    pub fn etcdctl(&self) -> Command {
        let mut cmd = self.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.client_url());
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca_file)
                .arg("--cert")
                .arg(&tls.client_cert_file)
                .arg("--key")
                .arg(&tls.client_key_file);
        }
        cmd
    }

    /// Start (again): same data dir, same addresses; returns once etcd serves clients. A
    /// member of a cluster serves only once it has a quorum.
    pub fn start(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready()
    }

    fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("etcd at {} is already running", self.client_addr);
        }
        self.starts += 1;
        let mut cmd = self.command("etcd");
        cmd.args([
            "--name",
            &self.name,
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--listen-client-urls",
            &self.client_url(),
            "--advertise-client-urls",
            &self.client_url(),
            "--listen-peer-urls",
            &format!("http://{}", self.peer_addr),
            "--initial-advertise-peer-urls",
            &format!("http://{}", self.peer_addr),
            "--initial-cluster",
            &self.initial_cluster,
            // JSON log lines on stdout, so the harness can wait for the ready line.
            "--logger",
            "zap",
            "--log-outputs",
            "stdout",
        ]);
        if let Some(election) = self.election_timeout {
            cmd.arg(format!("--election-timeout={}", election.as_millis()))
                .arg(format!(
                    "--heartbeat-interval={}",
                    election.as_millis() / 10
                ));
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_file)
                .arg("--client-cert-auth");
        }
        let name = format!("{}-{}", self.name, self.starts);
        let child = Child::spawn(&name, cmd, &self.log_dir)
            .context("start etcd (is Debian's etcd-server installed?)")?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let addr = self.client_addr.clone();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("etcd at {addr} is not running"))?;
        child
            .wait_for_line(ETCD_READY, |l| {
                l.contains("serving client traffic").then_some(())
            })
            .with_context(|| format!("etcd on {addr} did not become ready"))?;
        Ok(())
    }

    /// SIGTERM and wait; the data dir is kept for [`Etcd::start`].
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.signal(Signal::SIGTERM)?;
            child.wait_timeout(Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// SIGKILL: the store goes away without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.signal(Signal::SIGKILL);
            let _ = child.wait_timeout(Duration::from_secs(20));
        }
    }

    /// This member's `etcdctl endpoint status` (its raft state and revision).
    fn status(&self) -> Result<serde_json::Value> {
        let out = self
            .etcdctl()
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .context("run etcdctl (Debian's etcd-client)")?;
        if !out.status.success() {
            bail!(
                "etcdctl endpoint status: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let all: serde_json::Value = serde_json::from_slice(&out.stdout)
            .context("etcdctl endpoint status -w json printed no JSON")?;
        all.get(0)
            .and_then(|e| e.get("Status"))
            .cloned()
            .with_context(|| format!("no Status in etcdctl's endpoint status: {all}"))
    }

    /// Whether this member is the raft leader now (a running member that answers).
    pub fn is_leader(&self) -> Result<bool> {
        let status = self.status()?;
        let field = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_u64);
        let me = field(status.get("header").and_then(|h| h.get("member_id")));
        let leader = field(status.get("leader"));
        match (me, leader) {
            (Some(me), Some(leader)) => Ok(me == leader),
            _ => bail!("no member_id or leader in etcdctl's endpoint status: {status}"),
        }
    }

    /// Compact etcd's history at its current revision (as kube-apiserver does periodically);
    /// returns that revision.
    pub fn compact(&self) -> Result<u64> {
        let status = self.status()?;
        let revision = status
            .get("header")
            .and_then(|h| h.get("revision"))
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("no revision in etcdctl's endpoint status: {status}"))?;
        let out = self
            .etcdctl()
            .args(["compact", &revision.to_string()])
            .output()
            .context("run etcdctl compact")?;
        if !out.status.success() {
            bail!(
                "etcdctl compact {revision}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(revision)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
