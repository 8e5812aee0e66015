//! The API server's Prometheus metrics (`GET /metrics`, text format 0.0.4) and the store
//! decorator that times every storage call.
//!
//! Names follow Kubernetes where it has one (`apiserver_request_total`,
//! `apiserver_request_duration_seconds`, with kube-apiserver's verbs and buckets); porthole's
//! own carry the `porthole_` prefix. Everything here is counted per request, per session or
//! per store call, never per byte read: the proxy adds a session's byte counts when it ends.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::time::Instant;

use crate::request::Verb;
use crate::store::{Store, StoreError, Watch};

/// `Content-Type` of the `/metrics` answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// kube-apiserver's `apiserver_request_duration_seconds` buckets.
const REQUEST_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// kube-apiserver's `etcd_request_duration_seconds` buckets: store calls are expected to take
/// from well under a millisecond (redb read) to seconds (a slow etcd quorum).
const STORE_BUCKETS: [f64; 20] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    resource: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: &'static str,
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The leader elector's two metrics; cheap to clone (they share their values).
#[derive(Clone, Debug, Default)]
pub struct LeaderMetrics {
    /// 1 while this server runs the controllers.
    pub is_leader: Gauge,
    /// Times this server gained or lost the controllers' lease.
    pub transitions: Counter,
}

/// Every metric of one API server and the registry that encodes them.
pub struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<DurationLabels>,
    /// Port-forward (and node proxy) upgrades being relayed now.
    pub portforward_sessions_active: Gauge,
    /// Port-forward (and node proxy) upgrades relayed since start.
    pub portforward_sessions: Counter,
    relayed_bytes: Family<DirectionLabels, Counter>,
    store_duration: HistogramFamily<OperationLabels>,
    /// The leader elector's.
    pub leader: LeaderMetrics,
    /// Node tunnels connected to this server now.
    pub tunnels_active: Gauge,
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics").finish_non_exhaustive()
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    /// All metrics registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, resource and HTTP response code",
            requests.clone(),
        );
        let request_duration: HistogramFamily<DurationLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb and resource (for watches \
             and port-forwards: until the response head)",
            request_duration.clone(),
        );
        let portforward_sessions_active = Gauge::default();
        registry.register(
            "porthole_portforward_sessions_active",
            "Upgraded port-forward and node proxy connections being relayed to nodes now",
            portforward_sessions_active.clone(),
        );
        let portforward_sessions = Counter::default();
        registry.register(
            "porthole_portforward_sessions",
            "Upgraded port-forward and node proxy connections relayed to nodes since start",
            portforward_sessions.clone(),
        );
        let relayed_bytes = Family::<DirectionLabels, Counter>::default();
        // Both series exist from the start, so a scrape shows 0 rather than nothing.
        for direction in ["up", "down"] {
            drop(relayed_bytes.get_or_create(&DirectionLabels { direction }));
        }
        registry.register(
            "porthole_relayed_bytes",
            "Bytes relayed through upgraded connections, counted when each connection ends \
             (up: client to node, down: node to client)",
            relayed_bytes.clone(),
        );
        let store_duration: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(|| Histogram::new(STORE_BUCKETS));
        registry.register(
            "porthole_store_request_duration_seconds",
            "Store call latency in seconds for each operation (get, list, create, update, \
             delete, watch)",
            store_duration.clone(),
        );
        let leader = LeaderMetrics::default();
        registry.register(
            "porthole_leader_is_leader",
            "1 while this API server holds the controllers' lease and runs the controllers",
            leader.is_leader.clone(),
        );
        registry.register(
            "porthole_leader_transitions",
            "Times this API server gained or lost the controllers' lease",
            leader.transitions.clone(),
        );
        let tunnels_active = Gauge::default();
        registry.register(
            "porthole_tunnels_active",
            "Node tunnels (nodes that dialed out to this API server) connected now",
            tunnels_active.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            portforward_sessions_active,
            portforward_sessions,
            relayed_bytes,
            store_duration,
            leader,
            tunnels_active,
        }
    }

    /// Count one answered request and its latency. `verb` is kube-apiserver's reported verb
    /// ([`reported_verb`]), `resource` the plural ("" for non-resource paths).
    pub fn observe_request(
        &self,
        verb: &'static str,
        resource: &'static str,
        code: u16,
        started: Instant,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                verb,
                resource,
                code,
            })
            .inc();
        self.request_duration
            .get_or_create(&DurationLabels { verb, resource })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Add one finished session's byte counts.
    pub fn add_relayed_bytes(&self, up: u64, down: u64) {
        self.relayed_bytes
            .get_or_create(&DirectionLabels { direction: "up" })
            .inc_by(up);
        self.relayed_bytes
            .get_or_create(&DirectionLabels { direction: "down" })
            .inc_by(down);
    }

    fn observe_store(&self, operation: &'static str, started: Instant) {
        self.store_duration
            .get_or_create(&OperationLabels { operation })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would be the encoder's own bug.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// kube-apiserver's reported verb (`metrics.CleanVerb`): the HTTP method, except `LIST` and
/// `WATCH` for collection reads, `APPLY` for server-side apply and `CONNECT` for port-forward
/// and node proxy. `k8s_verb` is the RBAC verb (`None` for non-resource requests).
pub fn reported_verb(
    method: &http::Method,
    k8s_verb: Option<&Verb>,
    connect: bool,
    apply: bool,
) -> &'static str {
    if connect {
        return "CONNECT";
    }
    match k8s_verb {
        Some(Verb::List) => return "LIST",
        Some(Verb::Watch) => return "WATCH",
        Some(Verb::Patch) if apply => return "APPLY",
        _ => {}
    }
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        // Anything else is answered 405; one label value keeps the series bounded.
        _ => "other",
    }
}

/// A [`Store`] that times every call of the store it wraps, whatever its backend.
pub struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<ApiMetrics>,
}

impl TimedStore {
    /// Wrap `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<ApiMetrics>) -> Self {
        Self { inner, metrics }
    }

    fn timed<T>(&self, operation: &'static str, f: impl FnOnce(&dyn Store) -> T) -> T {
        let started = Instant::now();
        let out = f(self.inner.as_ref());
        self.metrics.observe_store(operation, started);
        out
    }
}

impl Store for TimedStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        self.timed("get", |s| s.get(key))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StoreError> {
        self.timed("list", |s| s.list(prefix))
    }

    fn create(&self, key: &str, object: Value) -> Result<Value, StoreError> {
        self.timed("create", |s| s.create(key, object))
    }

    fn update(
        &self,
        key: &str,
        object: Value,
        expected_revision: Option<u64>,
    ) -> Result<Value, StoreError> {
        self.timed("update", |s| s.update(key, object, expected_revision))
    }

    fn delete(&self, key: &str, expected_revision: Option<u64>) -> Result<Value, StoreError> {
        self.timed("delete", |s| s.delete(key, expected_revision))
    }

    fn watch(&self, revision: u64) -> Result<Watch, StoreError> {
        self.timed("watch", |s| s.watch(revision))
    }

    fn revision(&self) -> u64 {
        // An in-memory read in every backend so far; not worth a histogram series.
        self.inner.revision()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn requests_and_sessions_are_encoded_in_kubernetes_names() {
        let m = ApiMetrics::new();
        let t = Instant::now();
        m.observe_request("LIST", "pods", 200, t);
        m.observe_request("LIST", "pods", 200, t);
        m.observe_request("GET", "", 401, t);
        m.portforward_sessions.inc();
        m.add_relayed_bytes(10, 2000);
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                r#"apiserver_request_total{verb="LIST",resource="pods",code="200"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"apiserver_request_total{verb="GET",resource="",code="401"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"apiserver_request_duration_seconds_count{verb="LIST",resource="pods"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, r#"porthole_relayed_bytes_total{direction="down"}"#),
            Some(2000.0)
        );
        assert_eq!(
            sample(&text, "porthole_portforward_sessions_total"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "porthole_leader_is_leader"), Some(0.0));
        assert!(text.contains("# HELP apiserver_request_total "), "{text}");
        assert!(text.contains("# TYPE apiserver_request_duration_seconds histogram"));
    }

    #[test]
    fn verbs_follow_kube_apiserver() {
        use http::Method;

        use crate::request::Verb;
        assert_eq!(
            reported_verb(&Method::GET, Some(&Verb::List), false, false),
            "LIST"
        );
        assert_eq!(
            reported_verb(&Method::GET, Some(&Verb::Watch), false, false),
            "WATCH"
        );
        assert_eq!(
            reported_verb(&Method::GET, Some(&Verb::Get), false, false),
            "GET"
        );
        assert_eq!(
            reported_verb(&Method::POST, Some(&Verb::Create), true, false),
            "CONNECT"
        );
        assert_eq!(
            reported_verb(&Method::PATCH, Some(&Verb::Patch), false, true),
            "APPLY"
        );
        assert_eq!(
            reported_verb(&Method::DELETE, Some(&Verb::DeleteCollection), false, false),
            "DELETE"
        );
        assert_eq!(
            reported_verb(
                &Method::from_bytes(b"BREW").expect("method"),
                None,
                false,
                false
            ),
            "other"
        );
    }

    #[test]
    fn the_timed_store_measures_every_operation_of_the_store_it_wraps() {
        let dir = tempfile::tempdir().expect("tmp");
        let inner: Arc<dyn Store> =
            Arc::new(crate::store::RedbStore::open(dir.path()).expect("open"));
        let m = Arc::new(ApiMetrics::new());
        let s = TimedStore::new(inner, m.clone());
        let created = s
            .create("leases/ns/a", json!({"metadata": {"name": "a"}}))
            .expect("create");
        let rv = crate::store::resource_version(&created);
        assert!(s.get("leases/ns/a").expect("get").is_some());
        s.list("leases/").expect("list");
        s.update("leases/ns/a", json!({"metadata": {"name": "a"}}), Some(rv))
            .expect("update");
        // A conflict is timed too: it is a store round trip like any other.
        assert!(matches!(
            s.update("leases/ns/a", json!({}), Some(rv)),
            Err(StoreError::Conflict)
        ));
        drop(s.watch(0).expect("watch"));
        s.delete("leases/ns/a", None).expect("delete");
        let text = m.encode();
        for (op, n) in [
            ("get", 1.0),
            ("list", 1.0),
            ("create", 1.0),
            ("update", 2.0),
            ("delete", 1.0),
            ("watch", 1.0),
        ] {
            let series =
                format!(r#"porthole_store_request_duration_seconds_count{{operation="{op}"}}"#);
            assert_eq!(sample(&text, &series), Some(n), "{series}\n{text}");
        }
    }
}
