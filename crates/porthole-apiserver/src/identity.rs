//! API server identity leases, as kube-apiserver keeps them (`APIServerIdentity`): each
//! server holds a Lease `kube-system/apiserver-<uuid>` labelled
//! `apiserver.kubernetes.io/identity=kube-apiserver`, renewed every 10 s, so anyone can see
//! which servers are alive (`kubectl get leases -n kube-system -l
//! apiserver.kubernetes.io/identity`).
//!
//! porthole reads them for the node tunnel: a node behind a load balancer is told how many
//! servers are alive and keeps dialing until it holds a tunnel to each. A lease lives
//! [`LEASE_DURATION_SECONDS`] past its last renewal (three renewals), so a server killed with
//! -9 stops being counted within 30 s; any server deletes the expired leases it sees.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::leader::{micro_time, LeaseRecord};
use crate::store::{resource_version, Store, StoreError};

/// Where the identity leases live.
pub const NAMESPACE: &str = "kube-system";
/// The label every identity lease carries, and its value (kube-apiserver's).
pub const LABEL: &str = "apiserver.kubernetes.io/identity";
/// The value of [`LABEL`].
pub const LABEL_VALUE: &str = "kube-apiserver";
/// How often a server renews its lease and recounts the others.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// How long a lease stays valid after its last renewal.
pub const LEASE_DURATION_SECONDS: i64 = 30;

/// The annotation on an identity lease with the address its server advertises
/// (`--advertise-address` and the listening port), for nodes that dial servers directly.
pub const ADDRESS_ANNOTATION: &str = "porthole.io/advertise-address";

/// This server's identity: the holder written in its leases, and its identity lease's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// `hostname_uuid` (client-go's form; also the controllers' lease holder).
    pub holder: String,
    /// `apiserver-<uuid>`.
    pub lease_name: String,
    /// Where others can reach this server, when it is known.
    pub address: Option<SocketAddr>,
}

impl ServerIdentity {
    /// A new identity, unique to this process, advertising `address`.
    pub fn generate(address: Option<SocketAddr>) -> Self {
        let holder = crate::leader::default_identity();
        // default_identity() ends in `_<uuid>`: a valid, unique object name part.
        let unique = holder.rsplit('_').next().unwrap_or(&holder).to_string();
        ServerIdentity {
            lease_name: format!("apiserver-{unique}"),
            holder,
            address,
        }
    }
}

/// The live servers (their identity leases valid at `now`) and the addresses they advertise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveServers {
    /// How many.
    pub count: usize,
    /// Those that advertise an address.
    pub peers: Vec<porthole_proto::tunnel::Peer>,
}

fn leases() -> &'static crate::resources::ResourceInfo {
    crate::resources::find("coordination.k8s.io", "v1", "leases").expect("leases are in RESOURCES")
}

fn is_identity_lease(lease: &Value) -> bool {
    lease
        .pointer("/metadata/labels")
        .and_then(|l| l.get(LABEL))
        .and_then(Value::as_str)
        == Some(LABEL_VALUE)
}

/// Create or renew `me`'s lease at `now`.
pub fn renew(store: &dyn Store, me: &ServerIdentity, now: Timestamp) -> Result<(), StoreError> {
    let key = leases().key(NAMESPACE, &me.lease_name);
    match store.get(&key)? {
        Some(mut lease) => {
            let rv = resource_version(&lease);
            lease["spec"]["renewTime"] = json!(micro_time(now));
            lease["spec"]["holderIdentity"] = json!(me.holder);
            lease["spec"]["leaseDurationSeconds"] = json!(LEASE_DURATION_SECONDS);
            set_address(&mut lease, me);
            // A conflict means another writer touched our lease (an admin's label edit): the
            // next round renews it again.
            match store.update(&key, lease, Some(rv)) {
                Ok(_) | Err(StoreError::Conflict) => Ok(()),
                Err(e) => Err(e),
            }
        }
        None => {
            let mut lease = json!({
                "metadata": {
                    "name": me.lease_name,
                    "namespace": NAMESPACE,
                    "labels": {LABEL: LABEL_VALUE},
                },
                "spec": {
                    "holderIdentity": me.holder,
                    "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                    "acquireTime": micro_time(now),
                    "renewTime": micro_time(now),
                },
            });
            set_address(&mut lease, me);
            let lease = crate::registry::prepare_new(leases(), NAMESPACE, lease).map_err(|e| {
                StoreError::Backend {
                    step: "building the API server identity lease",
                    message: e.to_string(),
                }
            })?;
            match store.create(&key, lease) {
                Ok(_) | Err(StoreError::AlreadyExists) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

fn set_address(lease: &mut Value, me: &ServerIdentity) {
    if let Some(addr) = me.address {
        if !lease["metadata"]
            .get("annotations")
            .is_some_and(Value::is_object)
        {
            lease["metadata"]["annotations"] = json!({});
        }
        lease["metadata"]["annotations"][ADDRESS_ANNOTATION] = json!(addr.to_string());
    }
}

/// The servers whose identity leases are valid at `now`, and their advertised addresses.
pub fn live(store: &dyn Store, now: Timestamp) -> Result<LiveServers, StoreError> {
    let (items, _) = store.list(&leases().prefix(NAMESPACE))?;
    let mut out = LiveServers::default();
    for lease in items
        .iter()
        .filter(|l| is_identity_lease(l) && !LeaseRecord::from_object(l).is_expired(now))
    {
        out.count += 1;
        let holder = LeaseRecord::from_object(lease).holder;
        let address = lease
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ADDRESS_ANNOTATION))
            .and_then(Value::as_str)
            .and_then(|a| a.parse().ok());
        if let Some(address) = address {
            out.peers.push(porthole_proto::tunnel::Peer {
                identity: holder,
                address,
            });
        }
    }
    Ok(out)
}

/// [`count_live`], deleting the expired leases on the way (best effort: a conflict means
/// their owner came back and renewed).
pub fn live_servers(store: &dyn Store, now: Timestamp) -> Result<usize, StoreError> {
    let (items, _) = store.list(&leases().prefix(NAMESPACE))?;
    let mut live = 0;
    for lease in items.iter().filter(|l| is_identity_lease(l)) {
        if LeaseRecord::from_object(lease).is_expired(now) {
            if let Some(name) = lease.pointer("/metadata/name").and_then(Value::as_str) {
                let _ = store.delete(
                    &leases().key(NAMESPACE, name),
                    Some(resource_version(lease)),
                );
            }
        } else {
            live += 1;
        }
    }
    Ok(live)
}

/// Removes `me`'s lease (at shutdown), so the others stop counting this server at once.
pub fn release(store: &dyn Store, me: &ServerIdentity) {
    let _ = store.delete(&leases().key(NAMESPACE, &me.lease_name), None);
}

/// Renews `me`'s lease every [`RENEW_INTERVAL`] and keeps `live` at the number of servers
/// alive (at least 1: this one), until `shutdown`; then deletes the lease.
pub async fn run(
    store: Arc<dyn Store>,
    me: ServerIdentity,
    live: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    loop {
        let round = {
            let (store, me) = (store.clone(), me.clone());
            tokio::task::spawn_blocking(move || {
                let now = Timestamp::now();
                renew(store.as_ref(), &me, now)?;
                live_servers(store.as_ref(), now)
            })
        };
        match round.await {
            Ok(Ok(n)) => live.store(n.max(1), Ordering::Relaxed),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, lease = %me.lease_name, "renewing the API server identity lease failed; retrying")
            }
            Err(e) => tracing::warn!(error = %e, "identity lease round panicked"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW_INTERVAL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = tokio::task::spawn_blocking(move || release(store.as_ref(), &me)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(crate::store::RedbStore::open(dir).expect("open store"))
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn servers_count_while_they_renew_and_expired_leases_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (a, b) = (
            ServerIdentity::generate(Some("198.18.0.11:6443".parse().unwrap())),
            ServerIdentity::generate(None),
        );
        assert_ne!(a, b);
        assert!(a.lease_name.starts_with("apiserver-"));
        let t0 = t("2026-01-01T00:00:00Z");
        renew(store.as_ref(), &a, t0).unwrap();
        renew(store.as_ref(), &b, t0).unwrap();
        // Not every lease in kube-system is an identity lease.
        let other = json!({"metadata": {"name": "porthole-controllers", "namespace": NAMESPACE},
                           "spec": {"holderIdentity": "x", "leaseDurationSeconds": 15, "renewTime": micro_time(t0)}});
        let other = crate::registry::prepare_new(leases(), NAMESPACE, other).unwrap();
        store
            .create(&leases().key(NAMESPACE, "porthole-controllers"), other)
            .unwrap();
        assert_eq!(live_servers(store.as_ref(), t0).unwrap(), 2);
        let seen = live(store.as_ref(), t0).unwrap();
        assert_eq!(seen.count, 2);
        // Only a advertises an address.
        assert_eq!(seen.peers.len(), 1);
        assert_eq!(seen.peers[0].identity, a.holder);
        assert_eq!(seen.peers[0].address, a.address.unwrap());
        // a keeps renewing, b stopped: b is gone after 30 s, and its lease with it.
        let later = t("2026-01-01T00:00:31Z");
        renew(store.as_ref(), &a, later).unwrap();
        assert_eq!(live_servers(store.as_ref(), later).unwrap(), 1);
        assert!(store
            .get(&leases().key(NAMESPACE, &b.lease_name))
            .unwrap()
            .is_none());
        let kept = store
            .get(&leases().key(NAMESPACE, &a.lease_name))
            .unwrap()
            .expect("a's lease");
        assert_eq!(kept["spec"]["holderIdentity"], json!(a.holder));
        assert_eq!(kept["metadata"]["labels"][LABEL], json!(LABEL_VALUE));
        release(store.as_ref(), &a);
        assert_eq!(live_servers(store.as_ref(), later).unwrap(), 0);
    }
}
