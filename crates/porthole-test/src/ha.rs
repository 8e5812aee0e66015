//! A whole porthole cluster on a [`Testbed`], the way a team runs one: etcd on its own host, two
//! `porthole apiserver` on two more, haproxy in front of them on a fourth, N nodes that join
//! with a bootstrap token through the balancer, and a client host from which kubectl and
//! `porthole port-forward` run. Nothing is copied to a node by hand: each node gets only the
//! join line that `porthole token create` printed.
//!
//! Every process is a child of the test; dropping the [`HaCluster`] stops the nodes (SIGTERM,
//! so they stop their pods), the servers, the balancer and etcd, and then the testbed removes
//! its namespaces and anything still running in them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;

use crate::etcd::Etcd;
use crate::haproxy::Haproxy;
use crate::testbed::{Host, Testbed};
use crate::{expect_success, Child, Clients, READY_TIMEOUT, STOP_TIMEOUT};

/// How many API servers the cluster runs.
pub const APISERVERS: usize = 2;

/// One API server: its host, its fixed address (kept across restarts so the balancer's
/// configuration stays right), and its process while it runs.
pub struct ApiServer {
    /// `api1`, `api2`.
    pub name: String,
    /// Its host.
    pub host: Host,
    /// `IP:PORT` it listens on.
    pub addr: SocketAddr,
    /// The process, while running.
    pub child: Option<Child>,
    starts: u32,
}

impl ApiServer {
    /// `https://IP:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// The join line `porthole token create` printed, split into its parts.
#[derive(Debug, Clone)]
pub struct JoinLine {
    /// `https://...` of the balancer.
    pub server: String,
    /// `ID.SECRET`.
    pub token: String,
    /// `sha256:...`.
    pub ca_cert_hash: String,
}

impl JoinLine {
    /// Parses `porthole node --join URL --token T --ca-cert-hash H`.
    pub fn parse(line: &str) -> Result<JoinLine> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |flag: &str| -> Result<String> {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .map(|w| w.to_string())
                .ok_or_else(|| anyhow!("no {flag} in the join line {line:?}"))
        };
        Ok(JoinLine {
            server: after("--join")?,
            token: after("--token")?,
            ca_cert_hash: after("--ca-cert-hash")?,
        })
    }
}

/// The running cluster. Fields drop in order: nodes, servers, balancer, etcd, then the testbed.
pub struct HaCluster {
    /// Node agents by index (`node1` is index 0), while running.
    pub nodes: Vec<Option<Child>>,
    /// The API servers.
    pub apiservers: Vec<ApiServer>,
    /// The balancer in front of them.
    pub lb: Haproxy,
    /// The store: one member, or a cluster of several.
    pub etcd: Vec<Etcd>,
    /// Certificates and `admin.kubeconfig` (its server is the balancer).
    pub pki: PathBuf,
    /// Logs, node data dirs, kubectl's cache.
    pub work: PathBuf,
    /// The `porthole` binary.
    pub bin: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
    /// The simulated hosts.
    pub bed: Testbed,
}

/// What to run on the testbed.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Node hosts (`node1`, ...), each joined with a token.
    pub nodes: usize,
    /// etcd members: 1 runs on host `etcd`; more run on `etcd1`, `etcd2`, ... as one cluster.
    pub etcd_members: usize,
    /// etcd's `--election-timeout` (heartbeats at a tenth of it); `None`: etcd's 1 s. A longer
    /// one makes the time without a leader after the leader dies outlast a request timeout.
    pub etcd_election_timeout: Option<Duration>,
}

fn etcd_hosts(members: usize) -> Vec<String> {
    if members == 1 {
        vec!["etcd".into()]
    } else {
        (1..=members).map(|i| format!("etcd{i}")).collect()
    }
}

/// Host names, in address order.
fn host_names(layout: Layout) -> Vec<String> {
    let mut names = etcd_hosts(layout.etcd_members);
    names.extend(["api1", "api2", "lb"].iter().map(|s| s.to_string()));
    names.extend((1..=layout.nodes).map(|i| format!("node{i}")));
    names.push("client".into());
    names
}

impl HaCluster {
    /// Brings the whole cluster up with one etcd and `nodes` nodes, and waits until every node
    /// is Ready.
    pub fn start(bin: &Path, work: &Path, nodes: usize) -> Result<HaCluster> {
        HaCluster::start_with(
            bin,
            work,
            Layout {
                nodes,
                etcd_members: 1,
                etcd_election_timeout: None,
            },
        )
    }

    /// [`HaCluster::start`] with a given [`Layout`].
    pub fn start_with(bin: &Path, work: &Path, layout: Layout) -> Result<HaCluster> {
        ensure!(layout.etcd_members >= 1, "etcd needs at least one member");
        let names = host_names(layout);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let bed = Testbed::new(&names)?;
        let etcd = if layout.etcd_members == 1 {
            vec![Etcd::start_on(bed.host("etcd"), work)?]
        } else {
            let hosts = etcd_hosts(layout.etcd_members);
            let hosts: Vec<&Host> = hosts.iter().map(|h| bed.host(h)).collect();
            Etcd::start_cluster_on(&hosts, work, layout.etcd_election_timeout)?
        };
        let pki = work.join("pki");
        let mut apiservers = Vec::new();
        for i in 1..=APISERVERS {
            let host = bed.host(&format!("api{i}")).clone();
            let addr = SocketAddr::from((host.ip(), host.free_port()?));
            apiservers.push(ApiServer {
                name: format!("api{i}"),
                host,
                addr,
                child: None,
                starts: 0,
            });
        }
        // One serving certificate names every address a client or node may dial.
        let mut certs = vec!["certs".to_string(), "create".into(), "--dir".into()];
        certs.push(pki.display().to_string());
        for ip in apiservers
            .iter()
            .map(|a| a.host.ip())
            .chain([bed.host("lb").ip()])
        {
            certs.push("--apiserver-san".into());
            certs.push(ip.to_string());
        }
        run_porthole(bin, &certs)?;
        let backends: Vec<SocketAddr> = apiservers.iter().map(|a| a.addr).collect();
        let lb = Haproxy::start_on(bed.host("lb"), work, &backends)?;
        let mut cluster = HaCluster {
            nodes: Vec::new(),
            apiservers,
            lb,
            etcd,
            pki,
            work: work.to_path_buf(),
            bin: bin.to_path_buf(),
            kubectl: Clients::from_env()?.kubectl,
            bed,
        };
        for i in 0..APISERVERS {
            cluster.start_apiserver(i)?;
        }
        cluster.lb.wait_for(READY_TIMEOUT, |states| {
            states.len() == APISERVERS && states.iter().all(|(_, s)| s.starts_with("UP"))
        })?;
        let server = cluster.lb.url();
        run_porthole(
            bin,
            &[
                "certs".into(),
                "create".into(),
                "--dir".into(),
                cluster.pki.display().to_string(),
                "--server".into(),
                server,
            ],
        )?;
        let join = cluster.token_create(&[])?;
        for i in 1..=layout.nodes {
            let child = cluster.start_node(i, &join)?;
            cluster.nodes.push(Some(child));
        }
        cluster.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            "--timeout=90s",
        ])?;
        Ok(cluster)
    }

    fn pki_file(&self, name: &str) -> String {
        self.pki.join(name).display().to_string()
    }

    /// `--etcd-servers`: every member's client URL.
    pub fn etcd_servers(&self) -> String {
        self.etcd
            .iter()
            .map(Etcd::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `admin.kubeconfig` (server: the balancer).
    pub fn kubeconfig(&self) -> PathBuf {
        self.pki.join("admin.kubeconfig")
    }

    /// The client host.
    pub fn client(&self) -> &Host {
        self.bed.host("client")
    }

    /// Starts (again) API server `index` on its address and waits for its ready line.
    pub fn start_apiserver(&mut self, index: usize) -> Result<()> {
        let etcd = self.etcd_servers();
        let p = |f: &str| self.pki_file(f);
        let api = &self.apiservers[index];
        ensure!(api.child.is_none(), "{} is already running", api.name);
        let mut cmd = api.host.command(&self.bin);
        cmd.args([
            "apiserver".to_string(),
            format!("--listen={}", api.addr),
            format!("--etcd-servers={etcd}"),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            format!(
                "--data-dir={}",
                self.work.join(format!("{}-data", api.name)).display()
            ),
            "--etcd-request-timeout=2s".into(),
        ])
        .args(crate::apiserver_pki_args(&self.pki));
        let api = &mut self.apiservers[index];
        api.starts += 1;
        let mut child = Child::spawn(&format!("{}-{}", api.name, api.starts), cmd, &self.work)?;
        child.wait_for_line(READY_TIMEOUT, |l| {
            l.starts_with("porthole apiserver listening on ")
                .then_some(())
        })?;
        api.child = Some(child);
        Ok(())
    }

    /// SIGKILLs API server `index` (no goodbye: its connections just die).
    pub fn kill_apiserver(&mut self, index: usize) -> Result<()> {
        let api = &mut self.apiservers[index];
        let mut child = api
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", api.name))?;
        child.signal(Signal::SIGKILL)?;
        child.wait_timeout(STOP_TIMEOUT)?;
        Ok(())
    }

    /// `porthole token create ARGS` run on the client host through the balancer.
    pub fn token_create(&self, args: &[&str]) -> Result<JoinLine> {
        let mut cmd = self.porthole_on_client();
        cmd.args(["token", "create"]).args(args);
        let out = expect_success("porthole token create", &cmd.output()?)?;
        JoinLine::parse(out.trim())
    }

    /// The command that joins `host` as node `name` with `join`.
    pub fn node_command(&self, host: &Host, name: &str, join: &JoinLine) -> Command {
        let mut cmd = host.command(&self.bin);
        cmd.args([
            "node".to_string(),
            "--join".into(),
            join.server.clone(),
            "--token".into(),
            join.token.clone(),
            "--ca-cert-hash".into(),
            join.ca_cert_hash.clone(),
            format!("--node-name={name}"),
            format!("--node-ip={}", host.ip()),
            format!("--listen={}:0", host.ip()),
            format!(
                "--data-dir={}",
                self.work.join(format!("{name}-data")).display()
            ),
            "--join-timeout=30s".into(),
        ]);
        cmd
    }

    /// Starts node `index` (1-based) with `join` and waits for its ready line.
    pub fn start_node(&self, index: usize, join: &JoinLine) -> Result<Child> {
        let name = format!("node{index}");
        let cmd = self.node_command(self.bed.host(&name), &name, join);
        let mut child = Child::spawn(&format!("node{index}"), cmd, &self.work)?;
        let ready = format!("porthole node node{index} listening on ");
        child.wait_for_line(READY_TIMEOUT, |l| l.starts_with(&ready).then_some(()))?;
        Ok(child)
    }

    /// Adds host `name` behind a NAT router (host `nat`, made on first use) that no API server
    /// can dial, joins it as node `name` with `--tunnel`, and waits for its ready line. The
    /// node goes into [`HaCluster::nodes`] (stopped with the others); returns its host and
    /// index there. Called again for the same name, it starts the node again on its host.
    pub fn start_nat_node(&mut self, name: &str, join: &JoinLine) -> Result<(Host, usize)> {
        if !self.bed.hosts().iter().any(|h| h.name() == "nat") {
            self.bed.add("nat")?;
        }
        let host = match self.bed.hosts().iter().find(|h| h.name() == name) {
            Some(h) => h.clone(),
            None => self.bed.add_behind_nat(name, "nat")?,
        };
        let mut cmd = self.node_command(&host, name, join);
        cmd.arg("--tunnel");
        let mut child = Child::spawn(name, cmd, &self.work)?;
        let ready = format!("porthole node {name} listening on ");
        child.wait_for_line(READY_TIMEOUT, |l| l.starts_with(&ready).then_some(()))?;
        self.nodes.push(Some(child));
        Ok((host, self.nodes.len() - 1))
    }

    /// `porthole` on the client host with the admin kubeconfig.
    pub fn porthole_on_client(&self) -> Command {
        let mut cmd = self.client().command(&self.bin);
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &self.work)
            .stdin(Stdio::null());
        cmd
    }

    /// `porthole port-forward -o json ARGS` on the client host, named `name` in the logs;
    /// returns it once it listens, with the port of its 127.0.0.1 listener.
    pub fn forward_json(&self, name: &str, args: &[&str]) -> Result<(Child, u16)> {
        let mut cmd = self.porthole_on_client();
        cmd.args(["port-forward", "-o", "json"]).args(args);
        let mut child = Child::spawn(name, cmd, &self.work)?;
        let port = child.wait_for_line(Duration::from_secs(60), |l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == "listening" && v["address"] == "127.0.0.1")
                .then(|| v["local_port"].as_u64())
                .flatten()
                .and_then(|p| u16::try_from(p).ok())
        })?;
        Ok((child, port))
    }

    /// kubectl on the client host, as admin, through the balancer (or `--server` in `args`).
    pub fn kubectl_cmd(&self) -> Command {
        let mut cmd = self.client().command(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.work.join("kube-cache"))
            .env("HOME", &self.work)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl ARGS (see [`HaCluster::kubectl_cmd`]); stdout on success.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl_cmd()
            .args(args)
            .output()
            .context("run kubectl")?;
        expect_success(&format!("kubectl {}", args.join(" ")), &out)
    }

    /// kubectl ARGS against API server `index` directly, bypassing the balancer.
    pub fn kubectl_on(&self, index: usize, args: &[&str]) -> Result<String> {
        let server = self.apiservers[index].url();
        let mut all = vec!["--server", server.as_str()];
        all.extend_from_slice(args);
        self.kubectl(&all)
    }

    /// Applies `examples/deployment.yaml` (2 replicas of `app=web-app`, Service `web-svc`) and
    /// waits until both pods exist and are Ready.
    pub fn deploy_example_web(&self) -> Result<()> {
        let file = crate::example("deployment.yaml");
        self.kubectl(&["apply", "-f", &file.display().to_string()])?;
        eventually("2 web-app pods", Duration::from_secs(60), || {
            let out = self.kubectl(&["get", "pods", "-l", "app=web-app", "-o", "name"])?;
            Ok((out.lines().count() == 2).then_some(()))
        })?;
        self.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=web-app",
            "--timeout=90s",
        ])?;
        Ok(())
    }

    /// One sample of API server `index`'s `/metrics` (0 when absent).
    pub fn metric(&self, index: usize, name: &str) -> Result<f64> {
        let text = self.kubectl_on(index, &["get", "--raw", "/metrics"])?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name || key.starts_with(&format!("{name}{{")))
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum())
    }

    /// The index of the API server that holds the controllers' lease, by its own metric.
    pub fn leader(&self) -> Result<Option<usize>> {
        let mut leaders = Vec::new();
        for (i, api) in self.apiservers.iter().enumerate() {
            if api.child.is_some() && self.metric(i, "porthole_leader_is_leader")? == 1.0 {
                leaders.push(i);
            }
        }
        ensure!(leaders.len() <= 1, "more than one leader: {leaders:?}");
        Ok(leaders.first().copied())
    }

    /// Everything the processes printed, for failure messages.
    pub fn report(&self) -> String {
        self.apiservers
            .iter()
            .filter_map(|a| a.child.as_ref())
            .chain(self.nodes.iter().flatten())
            .map(Child::report)
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// Stops everything in order and checks nothing is left: processes, namespaces, etcd data.
    pub fn stop(mut self) -> Result<()> {
        let mut problems = Vec::new();
        // Pods run in namespaces of their own, out of reach of the testbed's teardown: note
        // them now, so one a node failed to stop is found (and killed) afterwards.
        let pods: std::collections::BTreeSet<crate::ProcId> = self
            .nodes
            .iter()
            .flatten()
            .flat_map(|n| crate::descendants(n.pid()))
            .collect();
        let children = self
            .nodes
            .iter_mut()
            .enumerate()
            .map(|(i, n)| (format!("node{}", i + 1), n.take()))
            .chain(
                self.apiservers
                    .iter_mut()
                    .map(|a| (a.name.clone(), a.child.take())),
            );
        for (name, child) in children {
            let Some(mut child) = child else { continue };
            let stopped = child
                .signal(Signal::SIGTERM)
                .and_then(|()| child.wait_timeout(STOP_TIMEOUT));
            match stopped {
                Ok(status) if status.success() => {}
                Ok(status) => problems.push(format!("{name} exited with {status}")),
                Err(e) => {
                    problems.push(format!("{name} did not stop on SIGTERM: {e:#}"));
                    let _ = child.signal(Signal::SIGKILL);
                    let _ = child.wait_timeout(STOP_TIMEOUT);
                }
            }
        }
        for pod in pods.iter().filter(|p| crate::alive(**p)) {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", pod.pid))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            problems.push(format!("pod process {} left running: {cmdline}", pod.pid));
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pod.pid as i32), Signal::SIGKILL);
        }
        for member in &mut self.etcd {
            member.stop()?;
        }
        let id = self.bed.id().to_string();
        let work = self.work.clone();
        let HaCluster { lb, etcd, bed, .. } = self;
        drop(lb);
        drop(etcd);
        let mut bed = bed;
        bed.teardown()?;
        for (pid, cmdline) in crate::processes_mentioning(&work.to_string_lossy()) {
            problems.push(format!("process {pid} still running: {cmdline}"));
        }
        let left = crate::testbed::leftovers(&id);
        if !left.is_empty() {
            problems.push(format!("namespaces left: {left:?}"));
        }
        for entry in std::fs::read_dir(&work)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("etcd") && name.ends_with("-data") {
                problems.push(format!("etcd's data dir {name} was not removed"));
            }
        }
        if !problems.is_empty() {
            bail!("stopping the cluster:\n  {}", problems.join("\n  "));
        }
        Ok(())
    }
}

fn run_porthole(bin: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run porthole {}", args.join(" ")))?;
    expect_success(&format!("porthole {}", args.join(" ")), &out)
}

/// Runs `test` on a fresh cluster laid out as `layout`; stops it (checking nothing is left) and
/// panics with the test's error and what the processes printed. Skips loudly without root.
pub fn on_cluster(
    bin: &Path,
    name: &str,
    layout: Layout,
    test: impl FnOnce(&mut HaCluster) -> Result<()>,
) {
    crate::require_root(name);
    let work = crate::TempDir::new(name).expect("create the test's directory");
    let mut cluster = HaCluster::start_with(bin, work.path(), layout)
        .unwrap_or_else(|e| panic!("starting the cluster: {e:#}"));
    let res = test(&mut cluster);
    let report = cluster.report();
    let stopped = cluster.stop();
    if let Err(e) = res {
        panic!("{e:#}\n\n{report}");
    }
    if let Err(e) = stopped {
        panic!("{e:#}");
    }
}

/// HTTP/1.0 `GET /` through `127.0.0.1:port` on `host` (a forward's listener there); the body
/// of a 200 answer.
pub fn http_get_on(host: &Host, port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = host.tcp_connect(addr, Duration::from_secs(10))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)
        .context("read the response")?;
    let text = String::from_utf8_lossy(&response).into_owned();
    ensure!(text.starts_with("HTTP/1.0 200"), "response: {text:?}");
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end in {text:?}"))?;
    Ok(body.to_string())
}

/// Retries `check` until it returns `Ok(Some(_))`, bounded by `timeout`; for conditions that
/// have no line to wait for (a count in the API, a metric). Returns the last error on timeout.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition false".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?} (last: {last})");
        }
        // Bounds the polling rate of a condition; it orders nothing.
        std::thread::sleep(Duration::from_millis(200));
    }
}
