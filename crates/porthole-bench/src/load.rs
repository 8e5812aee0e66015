//! Load generators against an echo server, directly or through a forwarder:
//! `rtt`, `connrate` and `idle` (PERF_BASELINES §5).

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

/// Arguments of `rtt`.
#[derive(clap::Args)]
pub struct RttArgs {
    /// Echo server (or forwarder in front of it).
    #[arg(long)]
    connect: SocketAddr,
    /// Bytes per request (the echo returns as many).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measured round trips.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Round trips before measuring.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Stop measuring after this many seconds even if COUNT is not reached.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
}

/// Arguments of `connrate`.
#[derive(clap::Args)]
pub struct ConnrateArgs {
    /// Echo server (or forwarder in front of it).
    #[arg(long)]
    connect: SocketAddr,
    /// Concurrent clients, each a thread doing one connection after another.
    #[arg(long, default_value_t = 1)]
    conc: usize,
    /// Run for at most this many seconds.
    #[arg(long, default_value_t = 4.0)]
    secs: f64,
    /// Stop after this many connections in all.
    #[arg(long, default_value_t = 12_000)]
    max: u64,
    /// Bytes exchanged on each connection.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

/// Arguments of `idle`.
#[derive(clap::Args)]
pub struct IdleArgs {
    /// Echo server (or forwarder in front of it).
    #[arg(long)]
    connect: SocketAddr,
    /// Connections to open and hold.
    #[arg(long)]
    n: usize,
    /// Release the connections after this many seconds if stdin has not said so earlier.
    #[arg(long, default_value_t = 600.0)]
    hold: f64,
    /// Stop opening (and report what is open) after this many seconds...
    #[arg(long, default_value_t = 300.0)]
    open_secs: f64,
    /// ...or after this many failed connections.
    #[arg(long, default_value_t = 100)]
    max_errors: u64,
    /// Stop the final check after this many seconds (a forwarder whose per-event cost grows
    /// with the number of connections can take minutes to answer 10,000 echoes).
    #[arg(long, default_value_t = 120.0)]
    check_secs: f64,
    /// Connections opened at a time (threads).
    #[arg(long, default_value_t = 8)]
    conc: usize,
}

/// Percentile (0..=100) of sorted samples, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

fn exchange(s: &mut TcpStream, out: &[u8], back: &mut [u8]) -> std::io::Result<()> {
    s.write_all(out)?;
    s.read_exact(back)
}

/// `rtt`: one connection, WARMUP then COUNT ping-pongs of SIZE bytes.
pub fn rtt(a: RttArgs) -> anyhow::Result<()> {
    let mut s = connect(a.connect).with_context(|| format!("connect {}", a.connect))?;
    let out = vec![0x5au8; a.size];
    let mut back = vec![0u8; a.size];
    for _ in 0..a.warmup {
        exchange(&mut s, &out, &mut back).context("warm-up round trip")?;
    }
    let mut samples = Vec::with_capacity(a.count as usize);
    let deadline = Instant::now() + Duration::from_secs_f64(a.secs);
    while (samples.len() as u64) < a.count {
        let t0 = Instant::now();
        exchange(&mut s, &out, &mut back).context("round trip")?;
        let t1 = Instant::now();
        samples.push((t1 - t0).as_secs_f64() * 1e6);
        if t1 >= deadline {
            break;
        }
    }
    if back != out {
        bail!("echo returned different bytes");
    }
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    samples.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "count": samples.len(),
            "p50_us": percentile(&samples, 50.0),
            "p99_us": percentile(&samples, 99.0),
            "mean_us": mean,
            "min_us": samples[0],
        })
    );
    Ok(())
}

/// `connrate`: CONC threads, each: connect, SIZE-byte exchange, close; until SECS or MAX.
pub fn connrate(a: ConnrateArgs) -> anyhow::Result<()> {
    let started = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.secs);
    let mut threads = Vec::new();
    for _ in 0..a.conc.max(1) {
        let (started, errors, first_error) = (started.clone(), errors.clone(), first_error.clone());
        let (addr, size, max) = (a.connect, a.size, a.max);
        threads.push(std::thread::spawn(move || {
            let out = vec![0x5au8; size];
            let mut back = vec![0u8; size];
            let mut lat = Vec::new();
            while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < max {
                let c0 = Instant::now();
                let r = connect(addr).and_then(|mut s| {
                    exchange(&mut s, &out, &mut back)?;
                    s.shutdown(std::net::Shutdown::Write)?;
                    // Graceful close: wait for the peer's FIN so the forwarder has finished too.
                    let mut rest = [0u8; 1];
                    let _ = s.read(&mut rest)?;
                    Ok(())
                });
                match r {
                    Ok(()) => lat.push(c0.elapsed().as_secs_f64() * 1e6),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .expect("no thread panics while holding it")
                            .get_or_insert_with(|| e.to_string());
                    }
                }
            }
            lat
        }));
    }
    let mut lat: Vec<f64> = Vec::new();
    for t in threads {
        lat.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?,
        );
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let errors = errors.load(Ordering::Relaxed);
    let first_error = first_error.lock().expect("threads joined").clone();
    println!(
        "{}",
        json!({
            "conns": lat.len(),
            "errors": errors,
            "first_error": first_error,
            "secs": elapsed,
            "conn_per_s": lat.len() as f64 / elapsed,
            "p50_us": percentile(&lat, 50.0),
            "p99_us": percentile(&lat, 99.0),
        })
    );
    Ok(())
}

/// `idle`: open N connections (CONC threads at a time), each checked by one 64 B echo; print a
/// JSON line; hold until a line (or EOF) on stdin or HOLD seconds; check every connection again.
pub fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let out = [0x5au8; 64];
    let mut back = [0u8; 64];
    let t0 = Instant::now();
    let open_deadline = t0 + Duration::from_secs_f64(a.open_secs);
    let started = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let opened = Arc::new(Mutex::new(Vec::with_capacity(a.n)));
    let mut threads = Vec::new();
    for _ in 0..a.conc.max(1) {
        let (started, errors, first_error, opened) = (
            started.clone(),
            errors.clone(),
            first_error.clone(),
            opened.clone(),
        );
        let (addr, n, max_errors) = (a.connect, a.n as u64, a.max_errors);
        threads.push(std::thread::spawn(move || {
            let mut back = [0u8; 64];
            while errors.load(Ordering::Relaxed) < max_errors
                && Instant::now() < open_deadline
                && started.fetch_add(1, Ordering::Relaxed) < n
            {
                let r =
                    connect(addr).and_then(|mut s| exchange(&mut s, &out, &mut back).map(|()| s));
                match r {
                    Ok(s) => opened
                        .lock()
                        .expect("no thread panics while holding it")
                        .push(s),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .expect("no thread panics while holding it")
                            .get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("an opening thread panicked"))?;
    }
    let mut conns = std::mem::take(&mut *opened.lock().expect("threads joined"));
    let errors = errors.load(Ordering::Relaxed);
    let first_error = first_error.lock().expect("threads joined").clone();
    println!(
        "{}",
        json!({"open": conns.len(), "errors": errors, "first_error": first_error,
               "open_secs": t0.elapsed().as_secs_f64()})
    );
    std::io::stdout().flush()?;

    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs_f64(a.hold));

    let mut still_ok = 0usize;
    let mut checked = 0usize;
    let check_deadline = Instant::now() + Duration::from_secs_f64(a.check_secs);
    for s in &mut conns {
        if Instant::now() >= check_deadline {
            break;
        }
        checked += 1;
        if exchange(s, &out, &mut back).is_ok() {
            still_ok += 1;
        }
    }
    println!(
        "{}",
        json!({"still_ok": still_ok, "checked": checked, "held": conns.len()})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
