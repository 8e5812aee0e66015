//! Leader election for the controllers: of several API servers sharing one store, exactly one
//! runs the scheduler, the Deployment controller, GC, namespace and node lifecycle at a time.
//!
//! The semantics are client-go's `leaderelection` package on a `coordination.k8s.io/v1`
//! Lease (`kube-system/porthole-controllers`):
//! - a candidate takes the lease when it is absent, released (empty holder) or expired
//!   (`renewTime + leaseDurationSeconds < now`), and retries every retry period (jittered by
//!   client-go's factor 1.2);
//! - the leader renews every retry period and gives up when it could not renew within the
//!   renew deadline, measured from the start of its last successful renewal on its own
//!   monotonic clock. Since renew deadline < lease duration, it stops its controllers before
//!   anyone else may consider the lease expired;
//! - every write is a compare-and-swap through [`Store`] (`create`, or `update` with the
//!   resourceVersion read), so of two servers racing one wins and the other sees
//!   `Conflict`/`AlreadyExists`, which counts as "someone else leads";
//! - on a clean shutdown the leader releases the lease (client-go's `ReleaseOnCancel`: empty
//!   holder, lease duration 1 s), so the next server takes over at once.
//!
//! The times in the lease are wall-clock times (hosts' clocks are assumed to agree to well
//! within lease duration − renew deadline, as for any Kubernetes control plane); everything
//! this process waits for uses `tokio::time`, and the wall clock is injectable
//! ([`WallClock`]), so tests run on tokio's paused clock. The expiry decision itself is the
//! pure [`decide`].
//!
//! Store calls are synchronous, and a store may hang (an unreachable etcd): each round runs on
//! the blocking pool, bounded by a timeout, and a round that timed out is awaited again
//! instead of starting another, so a hung store costs one thread, not one per retry.

mod lease;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use lease::{
    decide, micro_time, next_record, release, released_record, round, Decision, ElectionError,
    LeaseRecord, RoundOutcome,
};

use crate::metrics::LeaderMetrics;
use crate::store::Store;

/// Namespace of the controllers' lease.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// Name of the controllers' lease.
pub const LEASE_NAME: &str = "porthole-controllers";

/// Durations of the election, with kube-controller-manager's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionConfig {
    /// How long a lease stays valid after its last renewal (`--leader-elect-lease-duration`).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up
    /// (`--leader-elect-renew-deadline`).
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew (`--leader-elect-retry-period`).
    pub retry_period: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl ElectionConfig {
    /// client-go's checks; the message names the flags to change.
    pub fn validate(&self) -> Result<(), String> {
        let Self {
            lease_duration,
            renew_deadline,
            retry_period,
        } = *self;
        if retry_period.is_zero() {
            return Err("--leader-elect-retry-period must be greater than zero".into());
        }
        if lease_duration < Duration::from_secs(1) {
            // The lease stores whole seconds: anything shorter would be written as 0.
            return Err(format!(
                "--leader-elect-lease-duration ({lease_duration:?}) must be at least 1s"
            ));
        }
        if renew_deadline >= lease_duration {
            return Err(format!(
                "--leader-elect-renew-deadline ({renew_deadline:?}) must be shorter than \
                 --leader-elect-lease-duration ({lease_duration:?}), or a leader that cannot \
                 renew would still run its controllers after another server took over"
            ));
        }
        if retry_period >= renew_deadline {
            return Err(format!(
                "--leader-elect-retry-period ({retry_period:?}) must be shorter than \
                 --leader-elect-renew-deadline ({renew_deadline:?}), or the leader would get \
                 no second attempt to renew"
            ));
        }
        Ok(())
    }

    fn lease_duration_seconds(&self) -> i64 {
        // Whole seconds, as the Lease has them; rounding up never shortens the lease.
        let d = self.lease_duration;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)) as i64
    }
}

/// The wall clock written into the lease and compared with its times.
pub type WallClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock.
pub fn system_clock() -> WallClock {
    Arc::new(Timestamp::now)
}

/// `<hostname>_<uuid>`, client-go's identity form: unique per process even when several
/// servers share a host name (simulated hosts in network namespaces do).
pub fn default_identity() -> String {
    format!("{}_{}", hostname(), uuid::Uuid::new_v4())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "porthole-apiserver".into())
}

/// A round running on the blocking pool, and when it started.
struct InFlight {
    started: Instant,
    handle: JoinHandle<Result<RoundOutcome, ElectionError>>,
}

/// Why a leader stopped leading.
#[derive(Debug)]
enum StepDown {
    Shutdown,
    Lost(String),
    ControllersEnded,
}

/// One candidate: campaigns for the lease, runs the given work while it leads.
pub struct Elector {
    store: Arc<dyn Store>,
    identity: String,
    cfg: ElectionConfig,
    clock: WallClock,
    metrics: LeaderMetrics,
    in_flight: Option<InFlight>,
}

impl Elector {
    /// A candidate named `identity` on `store`, with the system clock.
    pub fn new(store: Arc<dyn Store>, identity: String, cfg: ElectionConfig) -> Self {
        Self {
            store,
            identity,
            cfg,
            clock: system_clock(),
            metrics: LeaderMetrics::default(),
            in_flight: None,
        }
    }

    /// Use `clock` for the lease's times (tests: a clock that follows tokio's).
    pub fn with_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// Report into `metrics`.
    pub fn with_metrics(mut self, metrics: LeaderMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// This candidate's holder identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round, bounded by `timeout`; on success also when the round started, which is
    /// when its renewTime was taken. A round that timed out is kept and awaited by the next
    /// call, so a hung store holds one blocking thread, not one per retry.
    async fn attempt(
        &mut self,
        timeout: Duration,
    ) -> Result<(RoundOutcome, Instant), ElectionError> {
        let mut flight = match self.in_flight.take() {
            Some(f) => f,
            None => {
                let store = self.store.clone();
                let me = self.identity.clone();
                let now = (self.clock)();
                let secs = self.cfg.lease_duration_seconds();
                InFlight {
                    started: Instant::now(),
                    handle: tokio::task::spawn_blocking(move || {
                        round(store.as_ref(), &me, now, secs)
                    }),
                }
            }
        };
        match tokio::time::timeout(timeout, &mut flight.handle).await {
            Err(_) => {
                self.in_flight = Some(flight);
                Err(ElectionError::TimedOut(timeout))
            }
            Ok(Err(join)) => Err(ElectionError::Aborted(join.to_string())),
            Ok(Ok(outcome)) => outcome.map(|o| (o, flight.started)),
        }
    }

    fn retry_with_jitter(&self) -> Duration {
        // client-go's wait.JitterUntil(retryPeriod, 1.2): candidates that started together
        // spread out instead of racing every round.
        self.cfg
            .retry_period
            .mul_f64(1.0 + rand::random_range(0.0..1.2))
    }

    /// Campaign until this candidate holds the lease; `None` on shutdown.
    async fn acquire(&mut self, shutdown: &CancellationToken) -> Option<Instant> {
        let mut last_holder: Option<String> = None;
        loop {
            let r = tokio::select! {
                r = self.attempt(self.cfg.renew_deadline) => r,
                _ = shutdown.cancelled() => return None,
            };
            match r {
                Ok((RoundOutcome::Leading { .. }, started)) => return Some(started),
                Ok((RoundOutcome::Following { holder }, _)) => {
                    if holder.is_some() && holder != last_holder {
                        tracing::debug!(holder = ?holder, lease = LEASE_NAME, "another server leads the controllers");
                        last_holder = holder;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "trying to acquire the controllers' lease failed; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry_with_jitter()) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// Renew until leadership is lost, the work ends, or shutdown.
    async fn hold(
        &mut self,
        mut renewed_at: Instant,
        shutdown: &CancellationToken,
        work: &mut JoinHandle<()>,
    ) -> StepDown {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
                _ = shutdown.cancelled() => return StepDown::Shutdown,
                _ = &mut *work => return StepDown::ControllersEnded,
            }
            let deadline = renewed_at + self.cfg.renew_deadline;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return StepDown::Lost(format!(
                        "could not renew the lease within the renew deadline ({:?})",
                        self.cfg.renew_deadline
                    ));
                }
                let r = tokio::select! {
                    r = self.attempt(remaining) => r,
                    _ = shutdown.cancelled() => return StepDown::Shutdown,
                };
                match r {
                    Ok((RoundOutcome::Leading { .. }, started)) => {
                        renewed_at = started;
                        break;
                    }
                    Ok((RoundOutcome::Following { holder: Some(h) }, _)) => {
                        return StepDown::Lost(format!("the lease is now held by {h}"))
                    }
                    Ok((RoundOutcome::Following { holder: None }, _)) => {
                        return StepDown::Lost(
                            "another server changed the lease while it was being renewed".into(),
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the controllers' lease failed; retrying until the renew deadline");
                        tokio::select! {
                            _ = tokio::time::sleep(self.cfg.retry_period.min(remaining)) => {}
                            _ = shutdown.cancelled() => return StepDown::Shutdown,
                        }
                    }
                }
            }
        }
    }

    /// Give the lease back so the next candidate need not wait for it to expire.
    async fn release(&mut self) {
        // A round still in flight could otherwise renew after the release.
        if let Some(flight) = self.in_flight.take() {
            let _ = tokio::time::timeout(self.cfg.renew_deadline, flight.handle).await;
        }
        let store = self.store.clone();
        let me = self.identity.clone();
        let now = (self.clock)();
        let call = tokio::task::spawn_blocking(move || release(store.as_ref(), &me, now));
        match tokio::time::timeout(self.cfg.renew_deadline, call).await {
            Ok(Ok(Ok(true))) => {
                tracing::info!(identity = %self.identity, "released the controllers' lease")
            }
            Ok(Ok(Ok(false))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the controllers' lease failed; the next server takes over when it expires"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the controllers' lease did not finish; the next server takes over when it expires"),
            Err(_) => tracing::warn!("the store did not answer while releasing the controllers' lease; the next server takes over when it expires"),
        }
    }

    /// Campaign, and while leading run `lead(stop)` as its own task; `stop` is cancelled when
    /// leadership is lost or on `shutdown`, and the task is awaited (the pass in flight ends)
    /// before anything else happens. After a loss it campaigns again; on `shutdown` it
    /// releases the lease and returns.
    pub async fn run<F, Fut>(mut self, shutdown: CancellationToken, mut lead: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let Some(renewed_at) = self.acquire(&shutdown).await else {
                return;
            };
            tracing::info!(identity = %self.identity, lease = %format!("{LEASE_NAMESPACE}/{LEASE_NAME}"), "became the leader: starting the controllers");
            self.metrics.is_leader.set(1);
            self.metrics.transitions.inc();
            let stop = CancellationToken::new();
            // Its own task: a long controller pass must never delay a renewal.
            let mut work = tokio::spawn(lead(stop.clone()));
            let why = self.hold(renewed_at, &shutdown, &mut work).await;
            stop.cancel();
            if !work.is_finished() {
                let _ = (&mut work).await;
            }
            self.metrics.is_leader.set(0);
            self.metrics.transitions.inc();
            match why {
                StepDown::Shutdown => {
                    self.release().await;
                    return;
                }
                StepDown::Lost(reason) => {
                    tracing::info!(identity = %self.identity, %reason, "lost leadership: the controllers are stopped");
                }
                StepDown::ControllersEnded => {
                    tracing::info!(identity = %self.identity, "the controllers ended on their own: giving up leadership");
                    self.release().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::resource_version;
    use lease::lease_key;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn store(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(crate::store::RedbStore::open(dir).expect("open"))
    }

    fn read_lease(store: &dyn Store) -> Option<LeaseRecord> {
        store
            .get(&lease_key())
            .expect("get")
            .as_ref()
            .map(LeaseRecord::from_object)
    }

    #[test]
    fn config_validation_names_the_flags() {
        assert!(ElectionConfig::default().validate().is_ok());
        let bad = ElectionConfig {
            renew_deadline: Duration::from_secs(15),
            ..Default::default()
        };
        let e = bad.validate().expect_err("renew deadline = lease duration");
        assert!(e.contains("--leader-elect-renew-deadline"), "{e}");
        let bad = ElectionConfig {
            retry_period: Duration::from_secs(10),
            ..Default::default()
        };
        let e = bad.validate().expect_err("retry = renew deadline");
        assert!(e.contains("--leader-elect-retry-period"), "{e}");
        let sub_second = ElectionConfig {
            lease_duration: Duration::from_millis(1500),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(200),
        };
        assert!(sub_second.validate().is_ok());
        assert_eq!(
            sub_second.lease_duration_seconds(),
            2,
            "rounded up, never down"
        );
    }

    /// A wall clock that moves with tokio's (paused) clock.
    fn tokio_clock() -> WallClock {
        let base_wall: Timestamp = "2026-06-01T12:00:00Z".parse().expect("timestamp");
        let base = Instant::now();
        Arc::new(move || {
            base_wall
                .checked_add(jiff::SignedDuration::try_from(base.elapsed()).expect("elapsed"))
                .expect("in range")
        })
    }

    /// Runs an elector whose "controllers" count how many are running at once.
    struct Candidate {
        stop: CancellationToken,
        /// Cancelled with the elector's task aborted: the process died, controllers and all.
        crash: CancellationToken,
        task: JoinHandle<()>,
        metrics: LeaderMetrics,
    }

    fn candidate(
        store: &Arc<dyn Store>,
        name: &str,
        cfg: ElectionConfig,
        clock: &WallClock,
        running: &Arc<AtomicUsize>,
        max_running: &Arc<AtomicUsize>,
    ) -> Candidate {
        let metrics = LeaderMetrics::default();
        let elector = Elector::new(store.clone(), name.into(), cfg)
            .with_clock(clock.clone())
            .with_metrics(metrics.clone());
        let stop = CancellationToken::new();
        let crash = CancellationToken::new();
        let running = running.clone();
        let max_running = max_running.clone();
        let crashed = crash.clone();
        let task = tokio::spawn(elector.run(stop.clone(), move |cancel| {
            let running = running.clone();
            let max_running = max_running.clone();
            let crashed = crashed.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(now, Ordering::SeqCst);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = crashed.cancelled() => {}
                }
                running.fetch_sub(1, Ordering::SeqCst);
            }
        }));
        Candidate {
            stop,
            crash,
            task,
            metrics,
        }
    }

    /// Short durations for tests: a 2 s lease (whole seconds, as the Lease stores them).
    fn short() -> ElectionConfig {
        ElectionConfig {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(200),
        }
    }

    /// The longest a candidate may need to take over a lease that stopped being renewed: the
    /// lease duration after the last renewal, plus one retry with client-go's jitter (×2.2),
    /// plus this test's 10 ms polling.
    fn takeover_bound(cfg: ElectionConfig) -> Duration {
        cfg.lease_duration + cfg.retry_period.mul_f64(2.2) + Duration::from_millis(20)
    }

    /// Polls `cond` on tokio's clock (paused: each sleep advances it) until `limit`.
    async fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() <= limit {
            if cond() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    fn holder(s: &Arc<dyn Store>) -> String {
        read_lease(s.as_ref()).map(|r| r.holder).unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn two_electors_one_leader_and_a_crashed_leader_is_replaced_within_lease_plus_retry() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path());
        let clock = tokio_clock();
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let a = candidate(&s, "a", short(), &clock, &running, &max);
        let b = candidate(&s, "b", short(), &clock, &running, &max);
        within(Duration::from_secs(3), || {
            running.load(Ordering::SeqCst) == 1
        })
        .await
        .expect("one leader within 3 s");
        // Many renewals later there is still exactly one.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(running.load(Ordering::SeqCst), 1);
        assert_eq!(max.load(Ordering::SeqCst), 1, "never two leaders at once");
        let first = holder(&s);
        let (leader, follower) = if first == "a" { (a, b) } else { (b, a) };
        assert_eq!(leader.metrics.is_leader.get(), 1);
        assert_eq!(follower.metrics.is_leader.get(), 0);

        // A crash: the leader's process dies without releasing the lease.
        leader.task.abort();
        let _ = leader.task.await;
        leader.crash.cancel();
        within(Duration::from_secs(1), || {
            running.load(Ordering::SeqCst) == 0
        })
        .await
        .expect("the crashed leader's controllers are gone");
        within(takeover_bound(short()), || {
            running.load(Ordering::SeqCst) == 1
        })
        .await
        .expect("the follower took over within lease duration + retry");
        assert_ne!(holder(&s), first);
        let rec = read_lease(s.as_ref()).expect("lease");
        assert_eq!(rec.lease_transitions, 1, "one change of holder");
        assert_eq!(follower.metrics.transitions.get(), 1);
        follower.stop.cancel();
        follower.task.await.expect("follower ends");
        assert_eq!(holder(&s), "", "released on clean shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_release_hands_over_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path());
        let clock = tokio_clock();
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        // A long lease: a takeover by expiry would take 30 s.
        let cfg = ElectionConfig {
            lease_duration: Duration::from_secs(30),
            renew_deadline: Duration::from_secs(20),
            retry_period: Duration::from_secs(1),
        };
        let a = candidate(&s, "a", cfg, &clock, &running, &max);
        within(Duration::from_secs(5), || holder(&s) == "a")
            .await
            .expect("a leads");
        let b = candidate(&s, "b", cfg, &clock, &running, &max);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(holder(&s), "a");
        a.stop.cancel();
        a.task.await.expect("a ends");
        assert_eq!(
            running.load(Ordering::SeqCst),
            0,
            "a's controllers stopped first"
        );
        // b retries every 1–2.2 s, so it must lead within one jittered retry, not 30 s.
        within(
            cfg.retry_period.mul_f64(2.2) + Duration::from_millis(20),
            || running.load(Ordering::SeqCst) == 1,
        )
        .await
        .expect("b took over within one retry of the release");
        assert_eq!(holder(&s), "b");
        assert_eq!(max.load(Ordering::SeqCst), 1);
        b.stop.cancel();
        b.task.await.expect("b ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_lease_is_taken_stops_its_controllers() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path());
        let clock = tokio_clock();
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let a = candidate(&s, "a", short(), &clock, &running, &max);
        within(Duration::from_secs(3), || {
            running.load(Ordering::SeqCst) == 1
        })
        .await
        .expect("a leads");
        // Someone (a server that thought the lease expired, or an operator) writes another
        // holder: a must notice on its next renewal and stop.
        let mut obj = s.get(&lease_key()).expect("get").expect("lease");
        let rv = resource_version(&obj);
        let mut rec = LeaseRecord::from_object(&obj);
        rec.holder = "intruder".into();
        rec.renew_time = Some(clock());
        rec.write_into(&mut obj);
        s.update(&lease_key(), obj, Some(rv)).expect("takeover");
        within(short().retry_period * 2, || {
            running.load(Ordering::SeqCst) == 0
        })
        .await
        .expect("a stopped its controllers within a retry period");
        assert_eq!(a.metrics.is_leader.get(), 0);
        // The intruder never renews: a takes the lease back once it expires.
        within(takeover_bound(short()), || {
            running.load(Ordering::SeqCst) == 1
        })
        .await
        .expect("a leads again");
        assert_eq!(read_lease(s.as_ref()).expect("lease").lease_transitions, 1);
        a.stop.cancel();
        a.task.await.expect("a ends");
    }
}
