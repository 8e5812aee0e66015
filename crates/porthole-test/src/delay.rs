//! Added delay on a host's link for kernels built without netem (`CONFIG_NET_SCH_NETEM` off,
//! as on this project's CI machines): an `iptables -j NFQUEUE` rule hands every packet the host
//! sends on `eth0` to a thread of the test, which gives each its verdict (accept) once it is
//! `delay` old. Packets keep their order (one constant delay), nothing is copied to user space
//! but the packet's id (copy range 0), and GSO packets are passed whole, so bulk transfers
//! still move hundreds of MB/s. With `--queue-bypass` and fail-open, a full queue or a stopped
//! thread lets packets through instead of dropping them.
//!
//! `Host::netem` (in `testbed.rs`) uses tc's netem where the kernel has it and this otherwise.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

/// What a delay needs of a host: to work in its network namespace. The testbed's `Host` is
/// one; the trait keeps this module below the testbed instead of the two importing each other.
pub trait InNamespace: Send + Sync + 'static {
    /// Moves the calling thread into the namespace for good.
    fn enter_this_thread(&self) -> Result<()>;
    /// Runs `program args` there; stdout if it exits 0.
    fn run(&self, program: &str, args: &[&str]) -> Result<String>;
}

/// The queue number (queues are per network namespace, so every host can use the same one).
const QUEUE: u16 = 7;
/// Packets held at once; beyond it the kernel lets packets pass undelayed (fail-open).
const MAX_HELD: u32 = 1 << 16;

/// A running delay on one host; dropping it removes the rule and releases every packet.
pub struct Delay {
    host: Arc<dyn InNamespace>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

fn rule(action: &str) -> Vec<String> {
    [
        action,
        "OUTPUT",
        "-o",
        "eth0",
        "-j",
        "NFQUEUE",
        "--queue-num",
        &QUEUE.to_string(),
        "--queue-bypass",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Delay {
    /// Delays everything `host` sends by `delay`.
    pub fn start(host: Arc<dyn InNamespace>, delay: Duration) -> Result<Delay> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let h = host.clone();
        let thread = std::thread::spawn(move || -> Result<()> {
            // This thread lives in the host's namespace: its queue is that namespace's.
            let queue = h.enter_this_thread().and_then(|()| {
                let mut q = nfq::Queue::open().context("open an NFQUEUE socket")?;
                q.bind(QUEUE).context("bind the NFQUEUE")?;
                q.set_copy_range(QUEUE, 0)?;
                q.set_queue_max_len(QUEUE, MAX_HELD)?;
                q.set_fail_open(QUEUE, true)?;
                q.set_recv_gso(QUEUE, true)?;
                q.set_nonblocking(true);
                Ok(q)
            });
            let mut queue = match queue {
                Ok(q) => {
                    let _ = ready_tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
            while !stop2.load(Ordering::Relaxed) {
                let mut got = false;
                loop {
                    match queue.recv() {
                        Ok(mut msg) => {
                            msg.set_verdict(nfq::Verdict::Accept);
                            held.push_back((Instant::now() + delay, msg));
                            got = true;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e).context("read the NFQUEUE"),
                    }
                }
                let now = Instant::now();
                while held.front().is_some_and(|(due, _)| *due <= now) {
                    let (_, msg) = held.pop_front().expect("front exists");
                    queue.verdict(msg).context("release a packet")?;
                }
                if !got {
                    // Nothing arrived: wait a little (a fifth of a millisecond bounds the
                    // error of every delay; the socket has no readiness to wait on here).
                    let next = held
                        .front()
                        .map(|(due, _)| due.saturating_duration_since(now))
                        .unwrap_or(Duration::from_micros(200));
                    std::thread::sleep(next.min(Duration::from_micros(200)));
                }
            }
            for (_, msg) in held.drain(..) {
                let _ = queue.verdict(msg);
            }
            let _ = queue.unbind(QUEUE);
            Ok(())
        });
        ready_rx
            .recv()
            .context("the delay thread ended before it was ready")??;
        let delay = Delay {
            host: host.clone(),
            stop,
            thread: Some(thread),
        };
        let args = rule("-A");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.run("iptables", &args)
            .context("add the NFQUEUE rule (is iptables installed?)")?;
        Ok(delay)
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        let args = rule("-D");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = self.host.run("iptables", &args);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
