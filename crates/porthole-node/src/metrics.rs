//! The node agent's Prometheus metrics (`GET /metrics`, text format 0.0.4) and its readiness
//! (is it registered with its API server?).
//!
//! Counting never touches the data path: sessions are counted when an upgraded connection
//! starts and ends, streams when a dial to the pod succeeds and when that forward ends
//! (`PodDialer::forward_ended`, called by porthole-relay's servers), and bytes once per
//! forward, from the counts the relay already keeps. Running pods are counted when scraped.

use std::sync::atomic::{AtomicBool, Ordering};

use porthole_relay::dial::ForwardBytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runtime::Runtime;

/// `Content-Type` of the `/metrics` answer.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Every metric of one node agent.
pub(crate) struct NodeMetrics {
    registry: Registry,
    sessions_active: Gauge,
    streams_active: Gauge,
    relayed_bytes: Family<DirectionLabels, Counter>,
    pods_running: Gauge,
}

impl NodeMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let sessions_active = Gauge::default();
        registry.register(
            "porthole_portforward_sessions_active",
            "Upgraded port-forward connections (SPDY, WebSocket tunnel or channels) being served now",
            sessions_active.clone(),
        );
        let streams_active = Gauge::default();
        registry.register(
            "porthole_portforward_streams_active",
            "Forwarded connections to pod ports open now",
            streams_active.clone(),
        );
        let relayed_bytes = Family::<DirectionLabels, Counter>::default();
        // Both series exist from the start, so a scrape shows 0 rather than nothing.
        for direction in ["up", "down"] {
            drop(relayed_bytes.get_or_create(&DirectionLabels { direction }));
        }
        registry.register(
            "porthole_relayed_bytes",
            "Bytes relayed between clients and pod ports, counted when each forwarded \
             connection ends (up: to the pod, down: from the pod)",
            relayed_bytes.clone(),
        );
        let pods_running = Gauge::default();
        registry.register(
            "porthole_pods_running",
            "Pods on this node whose phase is Running",
            pods_running.clone(),
        );
        Self {
            registry,
            sessions_active,
            streams_active,
            relayed_bytes,
            pods_running,
        }
    }

    /// A port-forward session began; it counts as active until the guard is dropped.
    pub(crate) fn session(&self) -> ActiveSession<'_> {
        self.sessions_active.inc();
        ActiveSession(&self.sessions_active)
    }

    /// A dial into a pod succeeded: one more forwarded connection open.
    pub(crate) fn stream_opened(&self) {
        self.streams_active.inc();
    }

    /// A forwarded connection ended, having moved `bytes`.
    pub(crate) fn stream_ended(&self, bytes: ForwardBytes) {
        self.streams_active.dec();
        self.relayed_bytes
            .get_or_create(&DirectionLabels { direction: "up" })
            .inc_by(bytes.to_pod);
        self.relayed_bytes
            .get_or_create(&DirectionLabels { direction: "down" })
            .inc_by(bytes.from_pod);
    }

    /// The text exposition, with the running pods of `runtime` counted now.
    pub(crate) fn encode(&self, runtime: &Runtime) -> String {
        let running = runtime
            .pods()
            .iter()
            .filter(|p| p.status().phase.as_deref() == Some("Running"))
            .count();
        self.pods_running.set(running as i64);
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

/// Keeps one session in the active gauge while it lives.
pub(crate) struct ActiveSession<'a>(&'a Gauge);

impl Drop for ActiveSession<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether the node is registered with its API server, for `/readyz`. A node without an API
/// server (standalone) is always ready.
#[derive(Debug)]
pub(crate) struct Registration {
    required: bool,
    registered: AtomicBool,
}

impl Registration {
    /// `required`: the node has an API server to register with.
    pub(crate) fn new(required: bool) -> Self {
        Self {
            required,
            registered: AtomicBool::new(false),
        }
    }

    pub(crate) fn set(&self, registered: bool) {
        self.registered.store(registered, Ordering::Relaxed);
    }

    /// `Err(reason)` while the node should be registered but is not.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if !self.required || self.registered.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the node is not registered with its API server yet")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_bytes_are_counted_per_forward() {
        let dir =
            std::env::temp_dir().join(format!("porthole-node-metrics-{}", std::process::id()));
        let runtime = Runtime::new(
            &dir,
            "n1",
            "127.0.0.1",
            porthole_netns::Isolation::for_this_process(),
        )
        .expect("runtime");
        let m = NodeMetrics::new();
        let session = m.session();
        m.stream_opened();
        m.stream_opened();
        m.stream_ended(ForwardBytes {
            to_pod: 5,
            from_pod: 700,
        });
        let text = m.encode(&runtime);
        for line in [
            "porthole_portforward_sessions_active 1",
            "porthole_portforward_streams_active 1",
            r#"porthole_relayed_bytes_total{direction="up"} 5"#,
            r#"porthole_relayed_bytes_total{direction="down"} 700"#,
            "porthole_pods_running 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        drop(session);
        assert!(m
            .encode(&runtime)
            .lines()
            .any(|l| l == "porthole_portforward_sessions_active 0"));
        drop(runtime);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn readiness_needs_registration_only_with_an_api_server() {
        assert!(Registration::new(false).check().is_ok());
        let r = Registration::new(true);
        assert!(r.check().is_err());
        r.set(true);
        assert!(r.check().is_ok());
    }
}
