//! A child process whose stdout is read line by line and whose stderr goes to a log file, and
//! how long its ready line and its stop may take.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::env::expected_isolation_line;

/// How long a cluster may take to print its ready line (first start builds a PKI).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a clean stop (SIGINT) may take: pods get SIGTERM and a grace period.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

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
