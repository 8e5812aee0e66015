//! Two API servers on one store, each on its own HTTPS socket: exactly one of them runs the
//! controllers (`porthole_leader_is_leader` on `/metrics`), `kubectl get leases` shows the
//! lease, and a clean stop of the leader hands the controllers to the other at once, long
//! before the lease would have expired.

use std::sync::Arc;
use std::time::Duration;

use porthole_apiserver::store::{RedbStore, Store};
use tokio::time::Instant;

use crate::common::{http_once, Pki, Server};

async fn is_leader(pki: &Pki, s: &Server) -> bool {
    let (code, _, body) = http_once(
        pki,
        s.addr,
        Some("admin"),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let value = body
        .lines()
        .find_map(|l| l.strip_prefix("porthole_leader_is_leader "))
        .unwrap_or_else(|| panic!("no porthole_leader_is_leader in\n{body}"));
    value.trim() == "1"
}

async fn server(pki: &Pki, root: &std::path::Path, store: &Arc<dyn Store>) -> Server {
    let store = store.clone();
    Server::start_with_config(
        pki,
        root,
        |a| {
            // A long lease: a takeover by expiry would take 10 s, one after a release < 1 s.
            a.leader_elect_lease_duration = Duration::from_secs(10);
            a.leader_elect_renew_deadline = Duration::from_secs(5);
            a.leader_elect_retry_period = Duration::from_millis(200);
        },
        |c| c.store = Some(store),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_of_two_servers_and_a_clean_handover() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&tmp.path().join("shared")).expect("store"));
    let a = server(&pki, &tmp.path().join("a"), &store).await;
    let b = server(&pki, &tmp.path().join("b"), &store).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let leaders = loop {
        let leaders = [is_leader(&pki, &a).await, is_leader(&pki, &b).await];
        if leaders.iter().filter(|l| **l).count() == 1 {
            break leaders;
        }
        assert!(Instant::now() < deadline, "no single leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Renewals go on; the leader stays the only one (sampled over ten retry periods).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = [is_leader(&pki, &a).await, is_leader(&pki, &b).await];
        assert_eq!(now, leaders, "leadership moved or doubled");
    }
    let (ok, table, err) = b
        .kubectl("admin", &["get", "leases", "-n", "kube-system"])
        .await;
    assert!(ok, "{err}");
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("porthole-controllers"), "{table}");

    let (leader, follower) = if leaders[0] { (a, b) } else { (b, a) };
    let stopped = Instant::now();
    leader.stop().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_leader(&pki, &follower).await {
        assert!(
            Instant::now() < deadline,
            "the follower did not take over within 5 s of a clean stop (the lease lasts 10 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped.elapsed() < Duration::from_secs(5));

    // The new leader's controllers work: a Deployment gets its pods.
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, image: host}]}\n";
    let (ok, _, err) = follower
        .kubectl_stdin("admin", &["create", "-f", "-"], Some(deploy))
        .await;
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = follower
            .kubectl("admin", &["get", "pods", "-l", "app=d", "-o", "name"])
            .await;
        assert!(ok, "{err}");
        if out.lines().count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "pods of the deployment: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follower.stop().await;
}
