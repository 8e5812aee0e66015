//! What runs beside the requests: the server's prefix watch that feeds the shared history
//! ring, watches from revisions older than the ring, and periodic compaction of etcd's history.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::broadcast;

use super::super::{set_resource_version, Event, EventKind, StoreError, Watch};
use super::members::{describe, Shared};
use super::{decode, header_revision};

/// Capacity of the feed of a watch from an old revision.
const OLD_WATCH_CAPACITY: usize = 4096;
/// How often a watch from an old revision checks that its consumer is still there.
const OLD_WATCH_IDLE_CHECK: Duration = Duration::from_secs(5);
/// The longest pause between two attempts to re-establish the server's prefix watch.
const MAX_REWATCH_BACKOFF: Duration = Duration::from_secs(2);

/// Turn one etcd watch event into a store event (`None` for keys outside the prefix and for a
/// deletion whose previous value etcd no longer has).
fn convert(s: &Shared, ev: &etcd_client::Event) -> Option<Event> {
    let kv = ev.kv()?;
    let key = s.store_key(kv.key())?;
    let revision = u64::try_from(kv.mod_revision()).ok()?;
    let prev = match ev.prev_kv() {
        Some(p) => match decode("watching", p) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an undecodable previous value in a watch event");
                None
            }
        },
        None => None,
    };
    // The raw type, not `event_type()`, which panics on a value it does not know.
    match ev.0.r#type {
        0 => {
            let object = match decode("watching", kv) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an undecodable object in a watch event");
                    return None;
                }
            };
            let kind = if kv.version() == 1 {
                EventKind::Added
            } else {
                EventKind::Modified
            };
            Some(Event {
                kind,
                revision,
                key,
                object,
                prev,
            })
        }
        1 => {
            let Some(mut object) = prev.clone() else {
                tracing::warn!(%key, revision, "a deletion without its previous value (compacted); not reported to watches");
                return None;
            };
            set_resource_version(&mut object, revision);
            Some(Event {
                kind: EventKind::Deleted,
                revision,
                key,
                object,
                prev,
            })
        }
        other => {
            tracing::warn!(
                event_type = other,
                "skipping a watch event of an unknown type"
            );
            None
        }
    }
}

/// Follow every change under the prefix from `next` on and publish it into the ring, for
/// the server's lifetime. Reconnects with backoff when etcd goes away; if etcd compacted
/// past what was missed, the ring is reset, which closes every live watch so clients
/// re-list instead of silently missing events.
pub(super) async fn follow(s: Arc<Shared>, mut next: i64) {
    let mut backoff = Duration::from_millis(100);
    let mut outage = false;
    loop {
        let used = s.current();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(next);
        match s
            .client()
            .watch_client()
            .watch(s.prefix.clone(), Some(opts))
            .await
        {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if outage {
                            tracing::info!(endpoints = %s.endpoints, "etcd watch re-established");
                            outage = false;
                        }
                        backoff = Duration::from_millis(100);
                        if resp.canceled() {
                            if resp.compact_revision() > 0 {
                                let c = resp.compact_revision();
                                tracing::warn!(
                                    from = next,
                                    compacted = c,
                                    "etcd compacted events this server had not seen yet; open watches are closed and clients re-list"
                                );
                                let mut h = s.history.lock().unwrap_or_else(|p| p.into_inner());
                                h.reset(u64::try_from(c - 1).unwrap_or(0));
                                next = c;
                            }
                            break;
                        }
                        s.seen(resp.header().map(|h| h.revision()).unwrap_or(0));
                        let mut h = s.history.lock().unwrap_or_else(|p| p.into_inner());
                        for ev in resp.events() {
                            if let Some(kv) = ev.kv() {
                                next = next.max(kv.mod_revision() + 1);
                            }
                            if let Some(e) = convert(&s, ev) {
                                if e.revision > h.revision() {
                                    h.publish(Arc::new(e));
                                }
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !outage {
                            tracing::warn!(error = %e, endpoints = %s.endpoints, "etcd watch broke; retrying");
                            outage = true;
                        }
                        // The member may be gone: re-watch on the next one.
                        s.leave(used);
                        break;
                    }
                }
            },
            Err(e) => {
                if !outage {
                    tracing::warn!(error = %e, endpoints = %s.endpoints, "cannot watch etcd; retrying");
                    outage = true;
                }
                s.leave(used);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_REWATCH_BACKOFF);
    }
}

/// Compact etcd's history every `every`, keeping at least one interval of it, as
/// kube-apiserver does: each round, one server wins a compare-and-swap on a key of its own
/// (outside the prefix, so no watch sees it) and compacts at the revision the previous round
/// recorded. However many API servers run, history is compacted once per interval.
pub(super) async fn compact_periodically(s: Arc<Shared>, every: Duration) {
    let key = format!("{}-compact_rev_key", s.prefix.trim_end_matches('/'));
    let mut version = 0i64;
    let mut previous: Option<i64> = None;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, version)])
            .and_then([TxnOp::put(key.clone(), Vec::new(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = match s.client().kv_client().txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %describe(&e), "etcd compaction round skipped");
                continue;
            }
        };
        if !resp.succeeded() {
            // Another server took this round; follow its count and its revision next time.
            if let Some(TxnOpResponse::Get(g)) = resp.op_responses().first() {
                version = g.kvs().first().map(|kv| kv.version()).unwrap_or(0);
            }
            previous = None;
            continue;
        }
        version += 1;
        let now = resp.header().map(|h| h.revision()).unwrap_or(0);
        if let Some(rev) = previous {
            match s.client().kv_client().compact(rev, None).await {
                Ok(_) => tracing::info!(revision = rev, "compacted etcd history"),
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => {
                    tracing::warn!(error = %describe(&e), revision = rev, "etcd compaction failed")
                }
            }
        }
        previous = Some(now);
    }
}

/// A watch of its own for a revision older than the ring: etcd replays its history from
/// there. Compaction is checked first with a read at that revision, because etcd reports a
/// compacted watch only after it has been created.
pub(super) async fn watch_from(s: Arc<Shared>, revision: u64) -> Result<Watch, StoreError> {
    let start = i64::try_from(revision).unwrap_or(i64::MAX - 1) + 1;
    let probe = s
        .client()
        .kv_client()
        .get(
            s.prefix.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_revision(start),
            ),
        )
        .await;
    if let Err(e) = probe {
        if e.to_string().contains("compacted") {
            let oldest = s
                .client()
                .kv_client()
                .get(
                    s.prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .ok()
                .map(|r| header_revision(r.header()))
                .unwrap_or(0);
            return Err(StoreError::Gone {
                requested: revision,
                oldest,
            });
        }
        return Err(s.error("watching from an old revision", e));
    }
    let opts = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(start);
    let stream = s
        .client()
        .watch_client()
        .watch(s.prefix.clone(), Some(opts))
        .await
        .map_err(|e| s.error("watching from an old revision", e))?;
    let (tx, live) = broadcast::channel(OLD_WATCH_CAPACITY);
    tokio::spawn(forward_old(s, stream, tx));
    Ok(Watch {
        backlog: Vec::new(),
        live,
    })
}

/// Feed one old-revision watch until its consumer is gone or etcd ends it (compaction, a
/// broken connection): dropping `tx` closes the consumer's feed, and its client re-watches.
async fn forward_old(s: Arc<Shared>, mut stream: WatchStream, tx: broadcast::Sender<Arc<Event>>) {
    let mut idle = tokio::time::interval(OLD_WATCH_IDLE_CHECK);
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(resp)) if !resp.canceled() => {
                    for ev in resp.events() {
                        if let Some(e) = convert(&s, ev) {
                            if tx.send(Arc::new(e)).is_err() {
                                return;
                            }
                        }
                    }
                }
                _ => return,
            },
            _ = idle.tick() => if tx.receiver_count() == 0 { return },
        }
    }
}
