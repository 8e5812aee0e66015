//! Which etcd member requests go to, and what a failed request means: sent or not, silent
//! or refused. This is what lets the store retry safely (see `EtcdStore::call`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::Client;

use super::super::history::History;
use super::super::StoreError;

/// One client per etcd member, and the member requests go to now. etcd-client balances one
/// channel over every endpoint and keeps sending to a member that is down (each request then
/// fails with a connect error), so porthole picks the member itself, as etcd's own Go client
/// does: it stays on one member while it answers, and moves to the next when a request could
/// not be sent to it or timed out. A request that was never sent is retried on the next member
/// at once, so one member going away costs no request an error.
pub(super) struct Members {
    pub(super) clients: Vec<(String, Client)>,
    pub(super) current: AtomicUsize,
}

/// What a request that never reached its member says (connect failures): it was not applied,
/// so it is retried on the next member at once.
pub(super) const NOT_SENT: &str = "etcd member unreachable";
/// What a request whose member stayed silent says (partitioned away, overloaded, or waiting
/// for a new leader after the old one died); the next attempt goes to another member.
pub(super) const TIMED_OUT: &str = "did not answer within";

/// State shared by the store handle and its background tasks.
pub(super) struct Shared {
    pub(super) members: Members,
    /// `PREFIX/` with exactly one trailing slash.
    pub(super) prefix: String,
    /// The endpoints as given, for messages.
    pub(super) endpoints: String,
    pub(super) timeout: Duration,
    pub(super) history: Mutex<History>,
    /// The newest revision any response has shown.
    pub(super) latest: AtomicU64,
}

impl Shared {
    /// The client of the member requests go to now.
    pub(super) fn client(&self) -> Client {
        let i = self.members.current.load(Ordering::Relaxed) % self.members.clients.len();
        self.members.clients[i].1.clone()
    }

    pub(super) fn member_url(&self) -> String {
        let i = self.members.current.load(Ordering::Relaxed) % self.members.clients.len();
        self.members.clients[i].0.clone()
    }

    /// Which member requests go to now, as a count of moves (see [`Shared::leave`]).
    pub(super) fn current(&self) -> usize {
        self.members.current.load(Ordering::Relaxed)
    }

    /// A request to member `used` (a [`Shared::current`]) could not be sent or got no answer:
    /// move to the next member, unless another request has moved on already. Without that
    /// check, every request in flight when a member dies would move once more, and together
    /// they could go round to the dead member again.
    pub(super) fn leave(&self, used: usize) {
        let n = self.members.clients.len();
        let moved = self.members.current.compare_exchange(
            used,
            used.wrapping_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if n > 1 && moved.is_ok() {
            tracing::warn!(
                from = %self.members.clients[used % n].0,
                to = %self.members.clients[used.wrapping_add(1) % n].0,
                "etcd member not answering; using another"
            );
        }
    }

    /// The member requests go to did not answer in time (partitioned away, overloaded, or
    /// waiting for a new leader).
    pub(super) fn timed_out(&self, step: &'static str) -> StoreError {
        let member = self.member_url();
        StoreError::Unavailable {
            step,
            message: format!(
                "etcd member {member} (of {}) {TIMED_OUT} {:?}; check that etcd is running \
                 and reachable from this host",
                self.endpoints, self.timeout
            ),
        }
    }

    pub(super) fn seen(&self, revision: i64) {
        if let Ok(r) = u64::try_from(revision) {
            self.latest.fetch_max(r, Ordering::Relaxed);
        }
    }

    /// Map a client error: transport trouble is `Unavailable` (503, retry later), anything
    /// else is a backend failure.
    pub(super) fn error(&self, step: &'static str, e: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        let transient = match &e {
            E::TransportError(_) | E::IoError(_) => true,
            E::GRpcStatus(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
            _ => false,
        };
        let described = describe(&e);
        // The client's own deadline (`ConnectOptions::with_timeout`), which usually fires just
        // before the one around each attempt.
        if transient && described.contains("Timeout expired") {
            return self.timed_out(step);
        }
        if transient && not_sent(&described) {
            let member = self.member_url();
            return StoreError::Unavailable {
                step,
                message: format!(
                    "{NOT_SENT}: {member} (of {}): {described}; check that etcd is running \
                     and reachable",
                    self.endpoints
                ),
            };
        }
        let message = format!("etcd at {}: {described}", self.endpoints);
        if transient {
            StoreError::Unavailable {
                step,
                message: format!("{message}; check that etcd is running and reachable"),
            }
        } else {
            StoreError::Backend { step, message }
        }
    }

    pub(super) fn store_key(&self, etcd_key: &[u8]) -> Option<String> {
        std::str::from_utf8(etcd_key)
            .ok()?
            .strip_prefix(&self.prefix)
            .map(str::to_string)
    }
}

/// Whether a failure happened before the request left this host (so it was not applied).
fn not_sent(described: &str) -> bool {
    [
        "tcp connect error",
        "Connection refused",
        "No route to host",
        "Network is unreachable",
        "error trying to connect",
    ]
    .iter()
    .any(|m| described.contains(m))
}

/// What went wrong, in few words: gRPC's status message and the causes under it (such as
/// "Connection refused" or "invalid peer certificate: UnknownIssuer"), without the wrapper
/// types tonic prints and without saying one thing twice.
pub(super) fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (head, cause): (String, Option<&(dyn std::error::Error + 'static)>) = match e {
        etcd_client::Error::GRpcStatus(status) => (status.message().to_string(), status.source()),
        // etcd-client's error has no source(): start from the wrapped error's.
        etcd_client::Error::TransportError(t) => (t.to_string(), t.source()),
        etcd_client::Error::IoError(io) => (io.to_string(), io.source()),
        other => (other.to_string(), None),
    };
    let causes = cause.map(porthole_relay::error::chain).unwrap_or_default();
    // tonic's "transport error" says nothing when a cause follows it.
    let head = if head == "transport error" && !causes.is_empty() {
        String::new()
    } else {
        head
    };
    match (head.is_empty(), causes.is_empty()) {
        (true, true) => e.to_string(),
        (false, true) => head,
        (true, false) => causes,
        (false, false) if causes.contains(&head) => causes,
        (false, false) if head.contains(&causes) => head,
        (false, false) => format!("{head}: {causes}"),
    }
}
