//! `porthole-bench store`: the two store backends side by side in one run — the embedded redb
//! file and a real etcd on loopback (started here, Debian's `etcd-server`) — through the same
//! `Store` trait the API server uses. Figures per backend and rep, then medians and the
//! etcd / redb ratios, as one JSON object.
//!
//! - creates/s with 1 writer and with `--threads` writers (each create is one durable write:
//!   an fsync'd redb transaction, an etcd transaction through raft and its WAL);
//! - get latency (p50 µs) of one object;
//! - list latency (p50 ms) of `--objects` objects in one prefix (etcd pages of 500).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use porthole_apiserver::store::{EtcdConfig, EtcdStore, RedbStore, Store};
use porthole_test::etcd::Etcd;
use porthole_test::TempDir;
use serde_json::json;

/// Flags of `porthole-bench store`.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Objects created per measurement (and listed).
    #[arg(long, default_value_t = 2000)]
    objects: usize,
    /// Writers for the concurrent create figure.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Repetitions; backends alternate within each.
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

#[derive(Default)]
struct Figures {
    creates_1: Vec<f64>,
    creates_n: Vec<f64>,
    get_us: Vec<f64>,
    list_ms: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn object(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": format!("cm-{i:06}"), "namespace": "bench",
                        "labels": {"app": "bench"}},
           "data": {"k": "v".repeat(256)}})
}

/// Creates of `count` objects under `prefix` by `writers` threads; objects/s.
fn creates(
    store: &Arc<dyn Store>,
    prefix: &str,
    count: usize,
    writers: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let per = count.div_ceil(writers);
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let prefix = prefix.to_string();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for i in w * per..((w + 1) * per).min(count) {
                    store
                        .create(&format!("{prefix}cm-{i:06}"), object(i))
                        .with_context(|| format!("create {i}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    Ok(count as f64 / t.elapsed().as_secs_f64())
}

fn p50<T>(runs: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn measure(
    store: Arc<dyn Store>,
    args: &StoreArgs,
    rep: usize,
    out: &mut Figures,
) -> anyhow::Result<()> {
    let one = format!("configmaps/bench-{rep}-1/");
    let many = format!("configmaps/bench-{rep}-n/");
    out.creates_1.push(creates(&store, &one, args.objects, 1)?);
    out.creates_n
        .push(creates(&store, &many, args.objects, args.threads)?);
    let key = format!("{one}cm-000000");
    out.get_us
        .push(p50(1000, || Ok(store.get(&key)?))?.as_secs_f64() * 1e6);
    let listed = store.list(&one)?.0.len();
    anyhow::ensure!(
        listed == args.objects,
        "listed {listed} of {} objects",
        args.objects
    );
    out.list_ms
        .push(p50(20, || Ok(store.list(&one)?))?.as_secs_f64() * 1e3);
    Ok(())
}

/// Run the comparison and print one JSON object.
pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.objects > 0 && args.threads > 0 && args.reps > 0,
        "--objects, --threads and --reps must be positive"
    );
    let work = TempDir::new("porthole-bench-store")?;
    let etcd = Etcd::start_local(work.path()).context("start etcd for the store benchmark")?;
    let mut redb = Figures::default();
    let mut etcd_f = Figures::default();
    for rep in 0..args.reps {
        let dir = work.path().join(format!("redb-{rep}"));
        measure(Arc::new(RedbStore::open(&dir)?), &args, rep, &mut redb)?;
        let mut cfg = EtcdConfig::new(vec![etcd.client_url()]);
        cfg.prefix = format!("/bench-{rep}");
        measure(Arc::new(EtcdStore::connect(&cfg)?), &args, rep, &mut etcd_f)?;
    }
    let row = |f: &Figures| {
        json!({"creates_per_s_1": median(&f.creates_1), "creates_per_s_n": median(&f.creates_n),
               "get_p50_us": median(&f.get_us), "list_p50_ms": median(&f.list_ms),
               "runs": {"creates_per_s_1": f.creates_1, "creates_per_s_n": f.creates_n,
                        "get_p50_us": f.get_us, "list_p50_ms": f.list_ms}})
    };
    let ratio = |a: &[f64], b: &[f64]| median(a) / median(b);
    println!(
        "{}",
        json!({"objects": args.objects, "threads": args.threads, "reps": args.reps,
               "redb": row(&redb), "etcd": row(&etcd_f),
               "etcd_over_redb": {
                   "creates_per_s_1": ratio(&etcd_f.creates_1, &redb.creates_1),
                   "creates_per_s_n": ratio(&etcd_f.creates_n, &redb.creates_n),
                   "get_p50_us": ratio(&etcd_f.get_us, &redb.get_us),
                   "list_p50_ms": ratio(&etcd_f.list_ms, &redb.list_ms)}})
    );
    Ok(())
}
