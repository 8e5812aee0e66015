//! The controllers' Lease as the election sees it: the record in its `spec`, the pure
//! election rule ([`decide`], [`next_record`], [`released_record`]) and one compare-and-swap
//! round against the store ([`round`], [`release`]).

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};

use super::{LEASE_NAME, LEASE_NAMESPACE};
use crate::store::{resource_version, Store, StoreError};

/// The lease fields the election reads and writes (`spec` of the Lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `holderIdentity` ("" = nobody).
    pub holder: String,
    /// `leaseDurationSeconds`.
    pub lease_duration_seconds: i64,
    /// `acquireTime`.
    pub acquire_time: Option<Timestamp>,
    /// `renewTime`.
    pub renew_time: Option<Timestamp>,
    /// `leaseTransitions`.
    pub lease_transitions: i64,
}

impl LeaseRecord {
    /// The record of a stored Lease; missing or malformed fields read as absent, which makes
    /// the lease expired rather than an error nobody could fix.
    pub fn from_object(lease: &Value) -> Self {
        let spec = lease.get("spec");
        let field = |f: &str| spec.and_then(|s| s.get(f));
        let time = |f: &str| {
            field(f)
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok())
        };
        Self {
            holder: field("holderIdentity")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            lease_duration_seconds: field("leaseDurationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            acquire_time: time("acquireTime"),
            renew_time: time("renewTime"),
            lease_transitions: field("leaseTransitions")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        }
    }

    /// When the lease stops being valid (`None`: it never was).
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.renew_time?
            .checked_add(jiff::SignedDuration::from_secs(self.lease_duration_seconds))
            .ok()
    }

    /// `renewTime + leaseDurationSeconds < now`; a lease that was never renewed is expired.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at().is_none_or(|t| t < now)
    }

    /// Write this record into a Lease object's `spec`, keeping any other spec fields.
    pub(super) fn write_into(&self, lease: &mut Value) {
        if !lease.get("spec").is_some_and(Value::is_object) {
            lease["spec"] = json!({});
        }
        let spec = &mut lease["spec"];
        spec["holderIdentity"] = json!(self.holder);
        spec["leaseDurationSeconds"] = json!(self.lease_duration_seconds);
        spec["leaseTransitions"] = json!(self.lease_transitions);
        for (field, t) in [
            ("acquireTime", self.acquire_time),
            ("renewTime", self.renew_time),
        ] {
            spec[field] = t.map_or(Value::Null, |t| json!(micro_time(t)));
        }
    }
}

/// Kubernetes' `MicroTime`: RFC 3339 in UTC with microseconds.
pub fn micro_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// What one round should do with the lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it, held by us.
    Create,
    /// We hold it: renew (same acquire time and transitions).
    Renew,
    /// Released or expired: take it (new acquire time, one more transition).
    TakeOver,
    /// Someone else holds a valid lease.
    HeldByOther {
        /// Their identity.
        holder: String,
    },
}

/// The election rule, on the lease as read and the wall-clock `now`.
pub fn decide(current: Option<&LeaseRecord>, me: &str, now: Timestamp) -> Decision {
    match current {
        None => Decision::Create,
        Some(r) if r.holder == me => Decision::Renew,
        Some(r) if r.holder.is_empty() || r.is_expired(now) => Decision::TakeOver,
        Some(r) => Decision::HeldByOther {
            holder: r.holder.clone(),
        },
    }
}

/// The record to write for `decision` (not for [`Decision::HeldByOther`], which writes
/// nothing and gets the current record back).
pub fn next_record(
    decision: &Decision,
    current: Option<&LeaseRecord>,
    me: &str,
    now: Timestamp,
    lease_duration_seconds: i64,
) -> LeaseRecord {
    let transitions = current.map_or(0, |c| c.lease_transitions);
    let (acquire_time, lease_transitions) = match decision {
        Decision::Create => (now, 0),
        Decision::Renew => (
            current.and_then(|c| c.acquire_time).unwrap_or(now),
            transitions,
        ),
        Decision::TakeOver => (now, transitions.saturating_add(1)),
        Decision::HeldByOther { .. } => {
            return current.cloned().unwrap_or_else(|| LeaseRecord {
                holder: String::new(),
                lease_duration_seconds,
                acquire_time: None,
                renew_time: None,
                lease_transitions: 0,
            })
        }
    };
    LeaseRecord {
        holder: me.to_string(),
        lease_duration_seconds,
        acquire_time: Some(acquire_time),
        renew_time: Some(now),
        lease_transitions,
    }
}

/// The record a leader writes when it steps down cleanly (client-go's `release`).
pub fn released_record(current: &LeaseRecord, now: Timestamp) -> LeaseRecord {
    LeaseRecord {
        holder: String::new(),
        lease_duration_seconds: 1,
        acquire_time: Some(now),
        renew_time: Some(now),
        lease_transitions: current.lease_transitions,
    }
}

/// Why a round or a release failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The store answered with an error.
    #[error("reading or writing lease {LEASE_NAMESPACE}/{LEASE_NAME} failed: {0}")]
    Store(StoreError),
    /// The store did not answer in time.
    #[error("the store did not answer within {0:?} (lease {LEASE_NAMESPACE}/{LEASE_NAME})")]
    TimedOut(Duration),
    /// The lease object could not be built (a bug: the object is ours).
    #[error("building lease {LEASE_NAMESPACE}/{LEASE_NAME} failed: {0}")]
    BadLease(String),
    /// The blocking store call panicked or was cancelled.
    #[error("the store call for lease {LEASE_NAMESPACE}/{LEASE_NAME} did not finish: {0}")]
    Aborted(String),
}

/// The result of one round against the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    /// We hold the lease now, as `record`.
    Leading {
        /// What we wrote.
        record: LeaseRecord,
    },
    /// We do not: `holder` holds a valid lease, or (`None`) another writer changed it between
    /// our read and our write.
    Following {
        /// The holder we saw, if any.
        holder: Option<String>,
    },
}

/// The store key of the controllers' lease.
pub(super) fn lease_key() -> String {
    crate::resources::find("coordination.k8s.io", "v1", "leases")
        .expect("leases are in RESOURCES")
        .key(LEASE_NAMESPACE, LEASE_NAME)
}

/// One read-decide-write round; every write is a compare-and-swap.
pub fn round(
    store: &dyn Store,
    me: &str,
    now: Timestamp,
    lease_duration_seconds: i64,
) -> Result<RoundOutcome, ElectionError> {
    let key = lease_key();
    let current = store.get(&key).map_err(ElectionError::Store)?;
    let record = current.as_ref().map(LeaseRecord::from_object);
    let decision = decide(record.as_ref(), me, now);
    if let Decision::HeldByOther { holder } = decision {
        return Ok(RoundOutcome::Following {
            holder: Some(holder),
        });
    }
    let next = next_record(&decision, record.as_ref(), me, now, lease_duration_seconds);
    let written = match current {
        None => store.create(&key, new_lease_object(&next)?),
        Some(mut lease) => {
            let rv = resource_version(&lease);
            next.write_into(&mut lease);
            store.update(&key, lease, Some(rv))
        }
    };
    match written {
        Ok(_) => Ok(RoundOutcome::Leading { record: next }),
        // Someone else wrote (or deleted) the lease since we read it: they lead, or will.
        Err(StoreError::Conflict | StoreError::AlreadyExists | StoreError::NotFound) => {
            Ok(RoundOutcome::Following { holder: None })
        }
        Err(e) => Err(ElectionError::Store(e)),
    }
}

/// Release the lease if `me` holds it. `Ok(false)`: it was not ours (any more).
pub fn release(store: &dyn Store, me: &str, now: Timestamp) -> Result<bool, ElectionError> {
    let key = lease_key();
    let Some(mut lease) = store.get(&key).map_err(ElectionError::Store)? else {
        return Ok(false);
    };
    let record = LeaseRecord::from_object(&lease);
    if record.holder != me {
        return Ok(false);
    }
    let rv = resource_version(&lease);
    released_record(&record, now).write_into(&mut lease);
    match store.update(&key, lease, Some(rv)) {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict | StoreError::NotFound) => Ok(false),
        Err(e) => Err(ElectionError::Store(e)),
    }
}

fn new_lease_object(record: &LeaseRecord) -> Result<Value, ElectionError> {
    let info = crate::resources::find("coordination.k8s.io", "v1", "leases")
        .expect("leases are in RESOURCES");
    let mut lease = json!({"metadata": {"name": LEASE_NAME, "namespace": LEASE_NAMESPACE}});
    record.write_into(&mut lease);
    crate::registry::prepare_new(info, LEASE_NAMESPACE, lease)
        .map_err(|e| ElectionError::BadLease(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn held(holder: &str, renew: &str, secs: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            lease_duration_seconds: secs,
            acquire_time: Some(t("2026-01-01T00:00:00Z")),
            renew_time: Some(t(renew)),
            lease_transitions: 3,
        }
    }

    #[test]
    fn expiry_is_renew_time_plus_duration_strictly_before_now() {
        let r = held("a", "2026-01-01T00:00:10Z", 15);
        assert!(!r.is_expired(t("2026-01-01T00:00:24Z")));
        assert!(
            !r.is_expired(t("2026-01-01T00:00:25Z")),
            "exactly at expiry: still valid"
        );
        assert!(r.is_expired(t("2026-01-01T00:00:25.000001Z")));
        let never = LeaseRecord {
            renew_time: None,
            ..r.clone()
        };
        assert!(never.is_expired(t("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn decisions() {
        let now = t("2026-01-01T00:00:20Z");
        assert_eq!(decide(None, "me", now), Decision::Create);
        let mine = held("me", "2026-01-01T00:00:00Z", 15);
        assert_eq!(
            decide(Some(&mine), "me", now),
            Decision::Renew,
            "even when expired"
        );
        let other = held("other", "2026-01-01T00:00:10Z", 15);
        assert_eq!(
            decide(Some(&other), "me", now),
            Decision::HeldByOther {
                holder: "other".into()
            }
        );
        let stale = held("other", "2026-01-01T00:00:04Z", 15);
        assert_eq!(decide(Some(&stale), "me", now), Decision::TakeOver);
        let released = LeaseRecord {
            holder: String::new(),
            ..other
        };
        assert_eq!(decide(Some(&released), "me", now), Decision::TakeOver);
    }

    #[test]
    fn records_keep_or_count_transitions_like_client_go() {
        let now = t("2026-01-01T00:00:20Z");
        let created = next_record(&Decision::Create, None, "me", now, 15);
        assert_eq!(
            (
                created.lease_transitions,
                created.acquire_time,
                created.renew_time
            ),
            (0, Some(now), Some(now))
        );
        let mine = held("me", "2026-01-01T00:00:10Z", 15);
        let renewed = next_record(&Decision::Renew, Some(&mine), "me", now, 15);
        assert_eq!(renewed.acquire_time, mine.acquire_time);
        assert_eq!(
            (renewed.lease_transitions, renewed.renew_time),
            (3, Some(now))
        );
        let other = held("other", "2026-01-01T00:00:01Z", 15);
        let taken = next_record(&Decision::TakeOver, Some(&other), "me", now, 15);
        assert_eq!(
            (
                taken.holder.as_str(),
                taken.lease_transitions,
                taken.acquire_time
            ),
            ("me", 4, Some(now))
        );
        let released = released_record(&taken, now);
        assert_eq!(
            (
                released.holder.as_str(),
                released.lease_duration_seconds,
                released.lease_transitions
            ),
            ("", 1, 4)
        );
    }

    #[test]
    fn micro_time_is_rfc3339_with_microseconds() {
        assert_eq!(
            micro_time(t("2026-03-04T05:06:07.123456789Z")),
            "2026-03-04T05:06:07.123456Z"
        );
        assert_eq!(
            micro_time(t("2026-03-04T05:06:07Z")),
            "2026-03-04T05:06:07.000000Z"
        );
    }

    fn store(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(crate::store::RedbStore::open(dir).expect("open"))
    }

    #[test]
    fn a_stale_write_is_someone_else_leading_and_the_lease_is_a_valid_object() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path());
        let now = t("2026-06-01T12:00:00Z");
        assert_eq!(
            round(s.as_ref(), "a", now, 15).expect("round"),
            RoundOutcome::Leading {
                record: next_record(&Decision::Create, None, "a", now, 15)
            }
        );
        // b reads the expired lease, but a renews between b's read and b's write.
        let later = t("2026-06-01T12:00:30Z");
        let read = s.get(&lease_key()).expect("get").expect("lease");
        let rv = resource_version(&read);
        assert!(matches!(
            round(s.as_ref(), "a", later, 15).expect("renew"),
            RoundOutcome::Leading { .. }
        ));
        let mut stale = read.clone();
        next_record(
            &Decision::TakeOver,
            Some(&LeaseRecord::from_object(&read)),
            "b",
            later,
            15,
        )
        .write_into(&mut stale);
        assert!(matches!(
            s.update(&lease_key(), stale, Some(rv)),
            Err(StoreError::Conflict)
        ));
        // The same race through `round`: a create that lost (AlreadyExists) is following.
        let dir2 = tempfile::tempdir().expect("tmp");
        let s2 = store(dir2.path());
        s2.create(
            &lease_key(),
            new_lease_object(&next_record(&Decision::Create, None, "x", now, 15)).expect("obj"),
        )
        .expect("create");
        assert_eq!(
            round(s2.as_ref(), "b", now, 15).expect("round"),
            RoundOutcome::Following {
                holder: Some("x".into())
            }
        );
        // What was stored has the Lease's shape, with MicroTime strings.
        let obj = s.get(&lease_key()).expect("get").expect("lease");
        assert_eq!(obj["kind"], "Lease");
        assert_eq!(obj["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(obj["spec"]["renewTime"], "2026-06-01T12:00:30.000000Z");
        assert_eq!(obj["spec"]["holderIdentity"], "a");
        assert!(obj.pointer("/metadata/uid").is_some());
    }
}
