//! One conformance suite for every `Store` backend: the embedded redb file and a real etcd.
//!
//! Every check runs against both through the trait only, so the API handlers can rely on the
//! same semantics whichever backend a server uses: revisions, compare-and-swap writes, no lost
//! update between two writers, consistent lists, watches that resume, and 410 for history that
//! is gone. The etcd-only checks at the end are about what only a networked store does: two API
//! servers seeing each other's writes, compaction, and etcd going away and coming back.

use std::sync::Arc;
use std::time::Duration;

use porthole_apiserver::store::{
    resource_version, EtcdConfig, EtcdStore, Event, EventKind, RedbStore, Store, StoreError, Watch,
};
use porthole_test::etcd::Etcd;
use porthole_test::TempDir;
use serde_json::{json, Value};

/// One backend under test: how to open a store on it (a second opening is a second API server
/// for etcd and a restart for redb).
trait Backend {
    fn name(&self) -> &'static str;
    fn open(&self) -> Arc<dyn Store>;
    /// Two handles that write concurrently: two API servers on etcd, one shared store for redb
    /// (one process per file is all redb allows).
    fn two_writers(&self) -> (Arc<dyn Store>, Arc<dyn Store>);
}

struct Redb {
    dir: TempDir,
    current: std::sync::Mutex<Option<Arc<dyn Store>>>,
}

impl Backend for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }
    fn open(&self) -> Arc<dyn Store> {
        let mut cur = self.current.lock().unwrap();
        // A reopen is a restart: the old handle must let go of the file first.
        *cur = None;
        let s: Arc<dyn Store> = Arc::new(RedbStore::open(self.dir.path()).expect("open redb"));
        *cur = Some(s.clone());
        s
    }
    fn two_writers(&self) -> (Arc<dyn Store>, Arc<dyn Store>) {
        let s = self.open();
        (s.clone(), s)
    }
}

struct EtcdBackend {
    etcd: Etcd,
    prefix: String,
}

impl EtcdBackend {
    fn config(&self) -> EtcdConfig {
        let mut cfg = EtcdConfig::new(vec![self.etcd.client_url()]);
        cfg.prefix = self.prefix.clone();
        cfg.request_timeout = Duration::from_secs(2);
        cfg
    }
}

impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(EtcdStore::connect(&self.config()).expect("connect to etcd"))
    }
    fn two_writers(&self) -> (Arc<dyn Store>, Arc<dyn Store>) {
        (self.open(), self.open())
    }
}

fn pod(name: &str, n: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default"}, "spec": {"n": n}})
}

fn next_event(w: &mut Watch, within: Duration) -> Arc<Event> {
    if !w.backlog.is_empty() {
        return w.backlog.remove(0);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    match rt.block_on(async { tokio::time::timeout(within, w.live.recv()).await }) {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => panic!("watch feed failed: {e}"),
        Err(_) => panic!("no watch event within {within:?}"),
    }
}

/// Events for `prefix` after `after`, skipping what a backend may deliver at or below it.
fn next_event_for(w: &mut Watch, prefix: &str, after: u64) -> Arc<Event> {
    loop {
        let e = next_event(w, Duration::from_secs(5));
        if e.revision > after && e.key.starts_with(prefix) {
            return e;
        }
    }
}

fn crud_and_revisions(b: &dyn Backend, ns: &str) {
    let s = b.open();
    let key = format!("pods/{ns}/a");
    let a = s.create(&key, pod("a", 1)).expect("create");
    let rv1 = resource_version(&a);
    assert!(rv1 > 0, "{}: create sets a resourceVersion", b.name());
    assert!(
        matches!(s.create(&key, pod("a", 2)), Err(StoreError::AlreadyExists)),
        "{}: second create is AlreadyExists",
        b.name()
    );
    let got = s.get(&key).expect("get").expect("exists");
    assert_eq!(
        resource_version(&got),
        rv1,
        "{}: get shows the stored revision",
        b.name()
    );
    assert_eq!(got["spec"]["n"], 1);
    assert!(s.get(&format!("pods/{ns}/missing")).expect("get").is_none());

    // Conditional update: stale is a Conflict, current wins and bumps the revision.
    assert!(
        matches!(
            s.update(&key, pod("a", 9), Some(rv1 + 1000)),
            Err(StoreError::Conflict)
        ),
        "{}: stale update is a Conflict",
        b.name()
    );
    let up = s.update(&key, pod("a", 2), Some(rv1)).expect("update");
    let rv2 = resource_version(&up);
    assert!(rv2 > rv1, "{}: revisions increase", b.name());
    // Unconditional update of a missing key: NotFound, not a create.
    assert!(matches!(
        s.update(&format!("pods/{ns}/missing"), pod("missing", 1), None),
        Err(StoreError::NotFound)
    ));
    let up = s
        .update(&key, pod("a", 3), None)
        .expect("unconditional update");
    let rv3 = resource_version(&up);
    assert!(rv3 > rv2);

    // Delete: stale is a Conflict; then the last state with the deletion's revision.
    assert!(matches!(
        s.delete(&key, Some(rv1)),
        Err(StoreError::Conflict)
    ));
    let gone = s.delete(&key, Some(rv3)).expect("delete");
    assert_eq!(
        gone["spec"]["n"],
        3,
        "{}: delete returns the last state",
        b.name()
    );
    assert!(resource_version(&gone) > rv3);
    assert!(s.get(&key).expect("get").is_none());
    assert!(matches!(s.delete(&key, None), Err(StoreError::NotFound)));
    assert!(s.revision() >= resource_version(&gone));
}

fn lists_are_consistent_and_scoped(b: &dyn Backend, ns: &str) {
    let s = b.open();
    let mut last = 0;
    for name in ["c", "a", "b"] {
        last = resource_version(
            &s.create(&format!("pods/{ns}/{name}"), pod(name, 0))
                .unwrap(),
        );
    }
    s.create(&format!("pods/{ns}x/other"), pod("other", 0))
        .unwrap();
    s.create(&format!("services/{ns}/a"), pod("a", 0)).unwrap();
    let (items, rev) = s.list(&format!("pods/{ns}/")).expect("list");
    let names: Vec<&str> = items
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "c"],
        "{}: in key order, prefix only",
        b.name()
    );
    assert!(
        rev >= last,
        "{}: the list is at or after the last write",
        b.name()
    );
    for o in &items {
        assert!(resource_version(o) <= rev);
    }
}

fn large_lists_come_whole(b: &dyn Backend, ns: &str) {
    // More than one etcd page (500): one list, one revision, nothing missing or doubled.
    let s = b.open();
    for i in 0..1_234 {
        s.create(
            &format!("configmaps/{ns}/cm-{i:05}"),
            json!({"metadata": {"name": i}}),
        )
        .unwrap();
    }
    let (items, rev) = s.list(&format!("configmaps/{ns}/")).expect("list");
    assert_eq!(items.len(), 1_234, "{}", b.name());
    let mut seen: Vec<u64> = items
        .iter()
        .map(|o| o["metadata"]["name"].as_u64().unwrap())
        .collect();
    seen.dedup();
    assert_eq!(seen.len(), 1_234);
    assert!(items.iter().all(|o| resource_version(o) <= rev));
}

/// Read-modify-write with retry on Conflict, from two writers at once: the counter must end
/// at exactly the number of increments (no lost update), whoever wins each race.
fn no_lost_updates(b: &dyn Backend, ns: &str) {
    let (s1, s2) = b.two_writers();
    let key = format!("pods/{ns}/counter");
    s1.create(&key, pod("counter", 0)).unwrap();
    const EACH: u64 = 60;
    let run = |s: Arc<dyn Store>, key: String| {
        std::thread::spawn(move || {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let cur = s.get(&key).unwrap().unwrap();
                    let n = cur["spec"]["n"].as_u64().unwrap();
                    match s.update(&key, pod("counter", n + 1), Some(resource_version(&cur))) {
                        Ok(_) => break,
                        Err(StoreError::Conflict) => conflicts += 1,
                        Err(e) => panic!("update failed: {e}"),
                    }
                }
            }
            conflicts
        })
    };
    let t1 = run(s1.clone(), key.clone());
    let t2 = run(s2, key.clone());
    let conflicts = t1.join().unwrap() + t2.join().unwrap();
    let end = s1.get(&key).unwrap().unwrap();
    assert_eq!(
        end["spec"]["n"].as_u64(),
        Some(2 * EACH),
        "{}: every increment survived ({conflicts} conflicts retried)",
        b.name()
    );
}

fn watches_see_changes_and_resume(b: &dyn Backend, ns: &str) {
    let s = b.open();
    let prefix = format!("pods/{ns}/");
    let start = s.revision();
    let mut w = s.watch(0).expect("watch");
    let key = format!("{prefix}w");
    let created = s.create(&key, pod("w", 1)).unwrap();
    let updated = s.update(&key, pod("w", 2), None).unwrap();
    let deleted = s.delete(&key, None).unwrap();

    let e = next_event_for(&mut w, &prefix, start);
    assert_eq!(
        (e.kind, e.revision),
        (EventKind::Added, resource_version(&created))
    );
    assert!(e.prev.is_none());
    let e = next_event_for(&mut w, &prefix, e.revision);
    assert_eq!(
        (e.kind, e.revision),
        (EventKind::Modified, resource_version(&updated))
    );
    assert_eq!(
        e.prev.as_ref().unwrap()["spec"]["n"],
        1,
        "{}: prev is the old object",
        b.name()
    );
    assert_eq!(e.object["spec"]["n"], 2);
    let e = next_event_for(&mut w, &prefix, e.revision);
    assert_eq!(
        (e.kind, e.revision),
        (EventKind::Deleted, resource_version(&deleted))
    );
    assert_eq!(
        e.object["spec"]["n"],
        2,
        "{}: a deletion carries the last state",
        b.name()
    );
    assert_eq!(resource_version(&e.object), e.revision);

    // Resume from the creation: exactly the two later events, in order.
    let mut w = s.watch(resource_version(&created)).expect("resume");
    let e = next_event_for(&mut w, &prefix, resource_version(&created));
    assert_eq!(e.revision, resource_version(&updated));
    let e = next_event_for(&mut w, &prefix, e.revision);
    assert_eq!(e.revision, resource_version(&deleted));

    // List then watch from the list's revision: only what came after the list.
    let (_, rev) = s.list(&prefix).unwrap();
    let mut w = s.watch(rev).unwrap();
    let later = s
        .create(&format!("{prefix}later"), pod("later", 0))
        .unwrap();
    let e = next_event_for(&mut w, &prefix, rev);
    assert_eq!(e.revision, resource_version(&later), "{}", b.name());
}

/// Objects and revisions survive a reopen (a restart of the API server).
fn state_survives_reopen(b: &dyn Backend, ns: &str) {
    let key = format!("pods/{ns}/durable");
    let rv = {
        let s = b.open();
        resource_version(&s.create(&key, pod("durable", 7)).unwrap())
    };
    let s = b.open();
    let got = s.get(&key).unwrap().expect("survived");
    assert_eq!(
        (resource_version(&got), got["spec"]["n"].as_u64()),
        (rv, Some(7))
    );
    assert!(
        s.revision() >= rv,
        "{}: the revision does not go back",
        b.name()
    );
    let next = s
        .create(&format!("pods/{ns}/after"), pod("after", 0))
        .unwrap();
    assert!(resource_version(&next) > rv);
}

fn run_suite(b: &dyn Backend) {
    // Each check in a namespace of its own, so their keys never meet.
    crud_and_revisions(b, "crud");
    lists_are_consistent_and_scoped(b, "list");
    large_lists_come_whole(b, "large");
    no_lost_updates(b, "race");
    watches_see_changes_and_resume(b, "watch");
    state_survives_reopen(b, "reopen");
}

#[test]
fn redb_conforms() {
    let b = Redb {
        dir: TempDir::new("porthole-store-redb").unwrap(),
        current: Default::default(),
    };
    run_suite(&b);
    // redb's history is this process's: a revision from before a restart is 410.
    let rv = b.open().revision();
    let s = b.open();
    s.create("pods/gone/x", pod("x", 0)).unwrap();
    assert!(matches!(s.watch(rv - 1), Err(StoreError::Gone { .. })));
}

fn etcd_backend(dir: &TempDir) -> EtcdBackend {
    EtcdBackend {
        etcd: Etcd::start_local(dir.path()).expect("start etcd"),
        prefix: format!("/registry-{}", std::process::id()),
    }
}

#[test]
fn etcd_conforms() {
    let dir = TempDir::new("porthole-store-etcd").unwrap();
    let b = etcd_backend(&dir);
    run_suite(&b);
}

/// Two API servers on one etcd: a watch opened on one sees a write made through the other
/// within a second, and a new server resumes a watch from before it started (etcd's history,
/// not its own) until that history is compacted, then answers Gone.
#[test]
fn etcd_servers_share_writes_history_and_compaction() {
    let dir = TempDir::new("porthole-store-etcd2").unwrap();
    let b = etcd_backend(&dir);
    let (one, two) = b.two_writers();
    let start = one.revision();
    let mut w = one.watch(0).unwrap();
    let t = tokio::time::Instant::now();
    let made = two.create("pods/shared/x", pod("x", 1)).unwrap();
    let e = next_event_for(&mut w, "pods/shared/", start);
    assert_eq!(e.revision, resource_version(&made));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "seen in {:?}",
        t.elapsed()
    );

    let second = two.update("pods/shared/x", pod("x", 2), None).unwrap();
    // A server started after both writes: its ring is empty, etcd replays.
    let three = b.open();
    let mut w = three
        .watch(resource_version(&made))
        .expect("resume from etcd's history");
    let e = next_event_for(&mut w, "pods/shared/", resource_version(&made));
    assert_eq!(
        (e.kind, e.revision),
        (EventKind::Modified, resource_version(&second))
    );
    assert_eq!(e.prev.as_ref().unwrap()["spec"]["n"], 1);

    // Compaction at C keeps revision C itself, so a watch from C-1 is still whole; write
    // once more so the compaction really passes the revision asked for.
    let third = two.update("pods/shared/x", pod("x", 3), None).unwrap();
    let compacted = b.etcd.compact().expect("compact");
    assert!(compacted >= resource_version(&third));
    assert!(resource_version(&made) + 1 < compacted);
    let four = b.open();
    match four.watch(resource_version(&made)) {
        Err(StoreError::Gone { requested, .. }) => assert_eq!(requested, resource_version(&made)),
        Err(e) => panic!("expected Gone after compaction, got {e}"),
        Ok(_) => panic!("expected Gone after compaction, got a watch"),
    }
}

/// etcd stops: calls fail as Unavailable within the request timeout (no hang, no panic); it
/// comes back: the same handle works again without a restart, nothing written is lost, and
/// the server's watch feed resumes.
#[test]
fn etcd_outage_is_unavailable_then_recovers() {
    let dir = TempDir::new("porthole-store-etcd3").unwrap();
    let mut b = etcd_backend(&dir);
    let s = b.open();
    let before = s.create("pods/outage/kept", pod("kept", 1)).unwrap();
    let mut w = s.watch(0).unwrap();
    b.etcd.kill();
    let t = tokio::time::Instant::now();
    match s.get("pods/outage/kept") {
        Err(StoreError::Unavailable { message, .. }) => {
            assert!(message.contains("etcd"), "names etcd: {message}")
        }
        other => panic!("expected Unavailable while etcd is down, got {other:?}"),
    }
    assert!(matches!(
        s.create("pods/outage/new", pod("new", 1)),
        Err(StoreError::Unavailable { .. })
    ));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "failed fast: {:?}",
        t.elapsed()
    );

    b.etcd.start().expect("etcd again");
    let got = s
        .get("pods/outage/kept")
        .expect("works again")
        .expect("kept");
    assert_eq!(resource_version(&got), resource_version(&before));
    let after = s.create("pods/outage/after", pod("after", 1)).unwrap();
    let e = next_event_for(&mut w, "pods/outage/", resource_version(&before));
    assert_eq!(
        e.revision,
        resource_version(&after),
        "the watch feed resumed"
    );
}

/// The API server compacts etcd's history itself (kube-apiserver's --etcd-compaction-interval),
/// keeping one interval of it: soon after, a watch from the first revisions is Gone, while a
/// watch from a recent revision still resumes.
#[test]
fn etcd_history_is_compacted_by_the_servers() {
    let dir = TempDir::new("porthole-store-etcd4").unwrap();
    let b = etcd_backend(&dir);
    let mut cfg = b.config();
    cfg.compaction_interval = Some(Duration::from_millis(300));
    // Two servers compacting: their rounds share one key, so they never fight.
    let s: Arc<dyn Store> = Arc::new(EtcdStore::connect(&cfg).unwrap());
    let _other = EtcdStore::connect(&cfg).unwrap();
    let first = resource_version(&s.create("pods/compact/a", pod("a", 0)).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Keep writing so there is history to compact, and ask a fresh server (empty ring)
        // whether the first revision is still there.
        let last = resource_version(&s.update("pods/compact/a", pod("a", 1), None).unwrap());
        match b.open().watch(first) {
            Err(StoreError::Gone { .. }) => {
                assert!(b.open().watch(last).is_ok(), "recent history is kept");
                return;
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history from revision {first} was not compacted within 20s"
        );
        // Pacing the writes between compaction rounds; the deadline bounds the loop.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP relay to etcd whose answers can be held back: a request still reaches etcd and is
/// applied, but its answer arrives only after [`SilentRelay::speak`], the way a member behaves
/// when its link drops packets one way or it waits for a new leader.
struct SilentRelay {
    addr: std::net::SocketAddr,
    silent: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl SilentRelay {
    fn to(upstream: std::net::SocketAddr) -> SilentRelay {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let quiet = silent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut c_read, &mut s_write));
                let (mut s_read, mut c_write) = (server, client);
                let quiet = quiet.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // Hold what etcd said until the relay may speak again.
                        let (lock, cond) = &*quiet;
                        let mut held = lock.lock().unwrap();
                        while *held {
                            held = cond.wait(held).unwrap();
                        }
                        drop(held);
                        if c_write.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SilentRelay { addr, silent }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_silent(&self, silent: bool) {
        let (lock, cond) = &*self.silent;
        *lock.lock().unwrap() = silent;
        cond.notify_all();
    }

    fn speak(&self) {
        self.set_silent(false)
    }
}

/// A write whose answer never came (the attempt timed out, but etcd applied it) is sent again
/// to another member, and its compare then fails: that must be reported as the success it
/// was, not as AlreadyExists or Conflict; a delete that cannot be confirmed says so; reads
/// simply go to the member that answers. Two relays to one etcd stand for two members.
#[test]
fn etcd_writes_whose_answer_was_lost_are_resolved_on_another_member() {
    let dir = TempDir::new("porthole-store-etcd5").unwrap();
    let b = etcd_backend(&dir);
    let upstream: std::net::SocketAddr = b.etcd.client_url()["http://".len()..].parse().unwrap();
    let relays = [SilentRelay::to(upstream), SilentRelay::to(upstream)];
    let mut cfg = b.config();
    cfg.endpoints = relays.iter().map(SilentRelay::url).collect();
    cfg.request_timeout = Duration::from_millis(700);
    let s = EtcdStore::connect(&cfg).expect("connect through the relays");
    let direct = b.open();
    // The store starts on the first member; after each silent attempt it moves to the other.
    let mut current = 0;
    let mut silence_current = || {
        relays[current].set_silent(true);
        relays[1 - current].speak();
        current = 1 - current;
    };

    silence_current();
    let created = s
        .create("pods/lost/a", pod("a", 1))
        .expect("a create whose answer was lost succeeded");
    let stored = direct.get("pods/lost/a").unwrap().expect("it is in etcd");
    assert_eq!(resource_version(&created), resource_version(&stored));
    assert_eq!(stored["spec"]["n"], 1);

    silence_current();
    let updated = s
        .update("pods/lost/a", pod("a", 2), Some(resource_version(&created)))
        .expect("an update whose answer was lost succeeded");
    let stored = direct.get("pods/lost/a").unwrap().expect("still there");
    assert_eq!(resource_version(&updated), resource_version(&stored));
    assert_eq!(stored["spec"]["n"], 2);

    // Someone else's write is still a conflict, lost answer or not.
    direct.update("pods/lost/a", pod("a", 3), None).unwrap();
    silence_current();
    assert!(matches!(
        s.update("pods/lost/a", pod("a", 4), Some(resource_version(&updated))),
        Err(StoreError::Conflict)
    ));

    silence_current();
    match s.delete("pods/lost/a", None) {
        Err(StoreError::Unavailable { message, .. }) => assert!(
            message.contains("probably deleted") && message.contains("check with a get"),
            "says what is known and what to do: {message}"
        ),
        other => panic!("a delete whose answer was lost: {other:?}"),
    }
    assert!(direct.get("pods/lost/a").unwrap().is_none());

    direct.create("pods/lost/b", pod("b", 1)).unwrap();
    silence_current();
    let got = s
        .get("pods/lost/b")
        .expect("a read goes to the member that answers");
    assert_eq!(got.expect("b is there")["spec"]["n"], 1);
    relays[0].speak();
    relays[1].speak();
}
