//! The soak's traffic: worker threads on the client host, each driving one kind of request
//! through a forward, and the ledger of everything they did.
//!
//! A worker records every failure with its start and end (to be matched to a fault later) and
//! counts successes; corrupted bytes are counted by comparing what came back with what must
//! have: the blob the HTTP pods serve, the payload the echo pods send back.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use porthole_test::testbed::Host;

/// How long one request may take before it counts as failed (a partition stalls requests for
/// its length; the client's keepalive ends a dead session within 15 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
/// Pause between a failed attempt and the next, so an outage costs a bounded number of
/// failures.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// One echo round trip's payload.
const ECHO_CHUNK: usize = 16 * 1024;
/// Requests per redis-benchmark run, for each of SET and GET.
const REDIS_REQUESTS: u64 = 500;

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// HTTP/1.0 downloads of the blob, compared with it byte for byte.
    Http,
    /// One long-lived connection, each round trip checked.
    Echo,
    /// `redis-benchmark -t set,get` runs.
    Redis,
}

impl Workload {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Http => "http",
            Workload::Echo => "echo",
            Workload::Redis => "redis",
        }
    }
}

/// A request that failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The worker.
    pub worker: String,
    /// When it started and ended.
    pub start: Instant,
    /// When it ended.
    pub end: Instant,
    /// Why.
    pub error: String,
}

/// One worker's account.
#[derive(Debug, Default)]
pub struct Account {
    /// Requests that succeeded (an HTTP download, an echo round trip, a redis-benchmark run).
    pub done: u64,
    /// Operations inside them (redis commands; equal to `done` elsewhere).
    pub ops: u64,
    /// Payload bytes checked.
    pub bytes: u64,
    /// Bytes that came back different from what was sent or served.
    pub corrupted: u64,
    /// Failed requests.
    pub failures: Vec<Failure>,
    /// Long-lived connections that broke (echo).
    pub streams_broken: u64,
    /// Recovery probe, while a fault is on: the fault's start or this worker's last failure
    /// since, whichever is later.
    since: Option<Instant>,
    /// The end of the first success that started after `since`.
    recovered_at: Option<Instant>,
    /// When the last success ended.
    last_ok_end: Option<Instant>,
    /// Since the mark: the longest time between two successes' ends (the interruption this
    /// worker saw; a request's own length when nothing got in its way).
    max_gap: Duration,
    /// Whether a request is in flight.
    busy: bool,
}

/// A worker as the soak sees it.
pub struct Worker {
    /// `http-1`, `echo-2`, ...
    pub name: String,
    /// What it does.
    pub workload: Workload,
    /// Its account.
    pub account: Arc<Mutex<Account>>,
    thread: Option<JoinHandle<()>>,
}

/// Shared switches: stop for good, or pause between requests.
#[derive(Default)]
pub struct Control {
    stop: AtomicBool,
    paused: AtomicBool,
}

impl Control {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }
}

/// Where the workers send their requests: the forwards' local ports on the client host.
#[derive(Clone)]
pub struct Targets {
    /// Forward to the blob service.
    pub http: u16,
    /// Forward to the echo service.
    pub echo: u16,
    /// Forward to the redis service.
    pub redis: u16,
    /// What the blob pods serve.
    pub blob: Arc<Vec<u8>>,
    /// Its path on the HTTP server.
    pub blob_path: String,
}

/// All workers and their switches.
pub struct Traffic {
    /// The workers.
    pub workers: Vec<Worker>,
    control: Arc<Control>,
}

fn lock(a: &Mutex<Account>) -> std::sync::MutexGuard<'_, Account> {
    a.lock().unwrap_or_else(|p| p.into_inner())
}

impl Traffic {
    /// Starts `per_kind` workers of each workload on `client`.
    pub fn start(client: &Host, targets: &Targets, per_kind: usize) -> Result<Traffic> {
        let control = Arc::new(Control::default());
        let mut workers = Vec::new();
        for workload in [Workload::Http, Workload::Echo, Workload::Redis] {
            for i in 1..=per_kind {
                let name = format!("{}-{i}", workload.name());
                let account = Arc::new(Mutex::new(Account::default()));
                let (host, t, c, a, n) = (
                    client.clone(),
                    targets.clone(),
                    control.clone(),
                    account.clone(),
                    name.clone(),
                );
                let thread = std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        if let Err(e) = host.enter_this_thread() {
                            record_failure(&a, &n, Instant::now(), format!("{e:#}"));
                            return;
                        }
                        match workload {
                            Workload::Http => http_loop(&n, &t, &c, &a),
                            Workload::Echo => echo_loop(&n, &t, &c, &a),
                            Workload::Redis => redis_loop(&n, &t, &c, &a),
                        }
                    })
                    .context("spawn a traffic thread")?;
                workers.push(Worker {
                    name,
                    workload,
                    account,
                    thread: Some(thread),
                });
            }
        }
        Ok(Traffic { workers, control })
    }

    /// Marks `t` as a fault's start: from now on each worker notes the end of its first success
    /// that started after it and after its own last failure.
    pub fn mark(&self, t: Instant) {
        for w in &self.workers {
            let mut a = lock(&w.account);
            a.since = Some(t);
            a.recovered_at = None;
            a.max_gap = Duration::ZERO;
        }
    }

    /// Since the mark: the longest any worker went without a success ending (counted up to
    /// now for a worker still waiting).
    pub fn interruption(&self) -> Duration {
        let now = Instant::now();
        self.workers
            .iter()
            .map(|w| {
                let a = lock(&w.account);
                let waiting = match (a.since, a.last_ok_end) {
                    (Some(since), Some(last)) if a.recovered_at.is_none() => {
                        now.saturating_duration_since(last.max(since))
                    }
                    _ => Duration::ZERO,
                };
                a.max_gap.max(waiting)
            })
            .max()
            .unwrap_or_default()
    }

    /// Ends the recovery probe of [`Traffic::mark`].
    pub fn unmark(&self) {
        for w in &self.workers {
            let mut a = lock(&w.account);
            a.since = None;
            a.recovered_at = None;
        }
    }

    /// When every worker has had a success that started after the mark and after its last
    /// failure: the latest of those successes' ends. `None` while some worker has not.
    pub fn recovered(&self) -> Option<Instant> {
        let mut latest = None;
        for w in &self.workers {
            latest = latest.max(Some(lock(&w.account).recovered_at?));
        }
        latest
    }

    /// Each worker's successes so far.
    pub fn successes(&self) -> Vec<u64> {
        self.workers.iter().map(|w| lock(&w.account).done).collect()
    }

    /// Stops issuing requests and waits (bounded) until none is in flight; connections stay
    /// open.
    pub fn pause(&self, timeout: Duration) -> Result<()> {
        self.control.paused.store(true, Ordering::SeqCst);
        crate::chaos::until("traffic to pause", timeout, || {
            Ok(self.workers.iter().all(|w| !lock(&w.account).busy))
        })
    }

    /// Resumes after [`Traffic::pause`].
    pub fn resume(&self) {
        self.control.paused.store(false, Ordering::SeqCst);
    }

    /// Stops every worker and joins it.
    pub fn stop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits while paused; false once stopped.
fn next_round(control: &Control, account: &Mutex<Account>) -> bool {
    while control.paused.load(Ordering::SeqCst) && control.running() {
        // Paused workers idle; this bounds how often they look at the switch.
        std::thread::sleep(Duration::from_millis(20));
    }
    if !control.running() {
        return false;
    }
    lock(account).busy = true;
    true
}

fn record_success(account: &Mutex<Account>, start: Instant, ops: u64, bytes: u64) {
    let end = Instant::now();
    let mut a = lock(account);
    a.done += 1;
    a.ops += ops;
    a.bytes += bytes;
    a.busy = false;
    if a.since.is_some() {
        if let Some(prev) = a.last_ok_end {
            a.max_gap = a.max_gap.max(end.saturating_duration_since(prev));
        }
    }
    a.last_ok_end = Some(end);
    if a.recovered_at.is_none() && a.since.is_some_and(|since| start >= since) {
        a.recovered_at = Some(end);
    }
}

fn record_failure(account: &Mutex<Account>, worker: &str, start: Instant, error: String) {
    let end = Instant::now();
    let mut a = lock(account);
    a.failures.push(Failure {
        worker: worker.to_string(),
        start,
        end,
        error,
    });
    a.busy = false;
    if a.since.is_some() {
        a.since = Some(end);
        a.recovered_at = None;
    }
}

fn connect(port: u16) -> Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connect to the forward at {addr}"))?;
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// Bytes of `got` that differ from `want` where both have them.
fn differing(got: &[u8], want: &[u8]) -> u64 {
    got.iter().zip(want).filter(|(a, b)| a != b).count() as u64
}

fn http_loop(name: &str, t: &Targets, control: &Control, account: &Mutex<Account>) {
    while next_round(control, account) {
        let start = Instant::now();
        match http_download(t) {
            Ok(body) => {
                let bad = differing(&body, &t.blob);
                if bad > 0 {
                    lock(account).corrupted += bad;
                    record_failure(account, name, start, format!("{bad} corrupted bytes"));
                } else if body.len() != t.blob.len() {
                    record_failure(
                        account,
                        name,
                        start,
                        format!("body of {} bytes, want {}", body.len(), t.blob.len()),
                    );
                } else {
                    record_success(account, start, 1, body.len() as u64);
                }
            }
            Err(e) => {
                record_failure(account, name, start, format!("{e:#}"));
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// GET the blob; the body (all of it that arrived, even when short: a short body is checked
/// for corruption too, then counted as failed).
fn http_download(t: &Targets) -> Result<Vec<u8>> {
    let mut conn = connect(t.http)?;
    write!(conn, "GET {} HTTP/1.0\r\n\r\n", t.blob_path).context("send the request")?;
    let mut response = Vec::with_capacity(t.blob.len() + 1024);
    conn.read_to_end(&mut response)
        .context("read the response")?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete header in {} bytes", response.len()))?;
    let head = String::from_utf8_lossy(&response[..end]);
    ensure!(
        head.starts_with("HTTP/1.0 200"),
        "status line {:?}",
        head.lines().next().unwrap_or_default()
    );
    Ok(response.split_off(end + 4))
}

fn echo_loop(name: &str, t: &Targets, control: &Control, account: &Mutex<Account>) {
    let mut conn: Option<TcpStream> = None;
    let mut round: u64 = 0;
    while next_round(control, account) {
        let start = Instant::now();
        round += 1;
        let payload = porthole_test::pattern(ECHO_CHUNK, round);
        let result = (|| -> Result<Vec<u8>> {
            if conn.is_none() {
                conn = Some(connect(t.echo)?);
            }
            let c = conn.as_mut().expect("connected above");
            c.write_all(&payload).context("send")?;
            let mut back = vec![0u8; payload.len()];
            c.read_exact(&mut back).context("read the echo")?;
            Ok(back)
        })();
        match result {
            Ok(back) => {
                let bad = differing(&back, &payload);
                if bad > 0 {
                    lock(account).corrupted += bad;
                    record_failure(account, name, start, format!("{bad} corrupted bytes"));
                    conn = None;
                } else {
                    record_success(account, start, 1, back.len() as u64);
                }
            }
            Err(e) => {
                if let Some(c) = conn.take() {
                    let _ = c.shutdown(Shutdown::Both);
                    lock(account).streams_broken += 1;
                }
                record_failure(account, name, start, format!("{e:#}"));
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.shutdown(Shutdown::Both);
    }
}

fn redis_loop(name: &str, t: &Targets, control: &Control, account: &Mutex<Account>) {
    while next_round(control, account) {
        let start = Instant::now();
        match redis_benchmark(t.redis) {
            Ok(()) => record_success(account, start, 2 * REDIS_REQUESTS, 0),
            Err(e) => {
                record_failure(account, name, start, format!("{e:#}"));
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// One `redis-benchmark -t set,get` run against the forward, bounded by [`REQUEST_TIMEOUT`]
/// (it waits forever for a server that does not answer).
fn redis_benchmark(port: u16) -> Result<()> {
    let child = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-n",
            &REDIS_REQUESTS.to_string(),
            "-c",
            "4",
            "-t",
            "set,get",
            "-q",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run redis-benchmark (apt install redis-tools)")?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(REQUEST_TIMEOUT) {
        Ok(out) => out.context("wait for redis-benchmark")?,
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv();
            bail!("redis-benchmark did not finish within {REQUEST_TIMEOUT:?}");
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let finished = |cmd: &str| {
        text.lines()
            .any(|l| l.trim_start().starts_with(cmd) && l.contains("requests per second"))
    };
    if !out.status.success() || !finished("SET:") || !finished("GET:") {
        bail!(
            "redis-benchmark exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_counts_only_changed_bytes_of_the_common_part() {
        assert_eq!(differing(b"abcd", b"abcd"), 0);
        assert_eq!(differing(b"abXd", b"abcd"), 1);
        assert_eq!(differing(b"ab", b"abcd"), 0);
    }

    fn idle_traffic(workers: usize) -> Traffic {
        Traffic {
            workers: (0..workers)
                .map(|i| Worker {
                    name: format!("w{i}"),
                    workload: Workload::Echo,
                    account: Arc::new(Mutex::new(Account::default())),
                    thread: None,
                })
                .collect(),
            control: Arc::new(Control::default()),
        }
    }

    #[test]
    fn interruption_is_the_longest_gap_between_successes_since_the_mark() {
        let traffic = idle_traffic(1);
        let account = &traffic.workers[0].account;
        record_success(account, Instant::now(), 1, 0);
        traffic.mark(Instant::now());
        let t = Instant::now();
        // A success ending 30 ms after the previous one: that is the gap.
        std::thread::sleep(Duration::from_millis(30));
        record_success(account, t, 1, 0);
        let gap = traffic.interruption();
        assert!(gap >= Duration::from_millis(30), "{gap:?}");
        assert!(gap < Duration::from_secs(5), "{gap:?}");
        // Unmarked, nothing is counted.
        traffic.unmark();
        traffic.mark(Instant::now());
        assert!(traffic.interruption() < gap);
    }

    #[test]
    fn recovery_waits_for_every_worker() {
        let traffic = idle_traffic(2);
        let before = Instant::now();
        traffic.mark(Instant::now());
        // A request that started before the mark does not count.
        record_success(&traffic.workers[0].account, before, 1, 0);
        assert_eq!(traffic.recovered(), None);
        record_success(&traffic.workers[0].account, Instant::now(), 1, 0);
        assert_eq!(traffic.recovered(), None);
        record_success(&traffic.workers[1].account, Instant::now(), 1, 0);
        assert!(traffic.recovered().is_some());
        // A later failure reopens it until that worker succeeds again.
        record_failure(
            &traffic.workers[1].account,
            "w1",
            Instant::now(),
            "x".into(),
        );
        assert_eq!(traffic.recovered(), None);
        record_success(&traffic.workers[1].account, Instant::now(), 1, 0);
        assert!(traffic.recovered().is_some());
    }
}
