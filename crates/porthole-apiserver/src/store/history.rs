//! The in-memory ring of recent events and the live feed. Both backends use it: redb publishes
//! its own commits, etcd publishes what its one prefix watch delivers.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Event, Watch};

/// How many recent events are kept for resuming watches.
const HISTORY_EVENTS: usize = 10_000;
/// How far a live receiver may fall behind before it sees `Lagged` (and its client re-lists).
const LIVE_CAPACITY: usize = 4096;

pub(super) struct History {
    events: VecDeque<Arc<Event>>,
    /// Revisions ≤ this are not resumable from the ring (server start, or dropped from it).
    compacted: u64,
    /// Newest revision published.
    revision: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl History {
    /// An empty ring that starts at `revision`: nothing at or before it can be resumed here.
    pub(super) fn new(revision: u64) -> Self {
        let (tx, _) = broadcast::channel(LIVE_CAPACITY);
        Self {
            events: VecDeque::new(),
            compacted: revision,
            revision,
            tx,
        }
    }

    pub(super) fn revision(&self) -> u64 {
        self.revision
    }

    pub(super) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Append one event (revisions must increase) and send it to every live watch.
    pub(super) fn publish(&mut self, event: Arc<Event>) {
        self.revision = event.revision;
        self.events.push_back(event.clone());
        while self.events.len() > HISTORY_EVENTS {
            if let Some(old) = self.events.pop_front() {
                self.compacted = old.revision;
            }
        }
        // No receivers is normal (nobody watching).
        let _ = self.tx.send(event);
    }

    /// The feed lost events (the backend's history was compacted past them): every live
    /// watch is closed so its client re-lists, and the ring starts over at `revision`.
    pub(super) fn reset(&mut self, revision: u64) {
        *self = History::new(revision);
    }

    /// A watch of everything after `revision`, or `None` when the ring does not reach back
    /// that far. Subscribing happens under the caller's lock, so no event falls between the
    /// backlog and the live feed.
    pub(super) fn start_watch(&self, revision: u64) -> Option<Watch> {
        let live = self.tx.subscribe();
        if revision == 0 || revision >= self.revision {
            return Some(Watch {
                backlog: Vec::new(),
                live,
            });
        }
        if revision < self.compacted {
            return None;
        }
        let backlog = self
            .events
            .iter()
            .filter(|e| e.revision > revision)
            .cloned()
            .collect();
        Some(Watch { backlog, live })
    }
}
