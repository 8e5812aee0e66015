//! How a port-forward server reaches the pod: the one seam between the protocol servers in this
//! crate and the node agent's network-namespace dialer (`porthole-node`), so protocol code never
//! knows about namespaces and the node never knows about frames.

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpStream;

/// Why a connection to the pod's port could not be made. `cause` is the text that follows
/// `error forwarding port P to pod ID, uid : ` on the error stream (PROTOCOL.md §4.5), e.g.
/// `failed to connect to localhost:8080 inside namespace "…", IPv4: … IPv6: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialError {
    /// Human-readable cause, naming the port and both address families where both were tried.
    pub cause: String,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause)
    }
}

impl std::error::Error for DialError {}

/// Boxed future returned by [`PodDialer::dial`].
pub type DialFuture = Pin<Box<dyn Future<Output = Result<TcpStream, DialError>> + Send>>;

/// Opens TCP connections to ports inside one pod. Implemented by the node agent (setns on a
/// dedicated thread, 127.0.0.1 then ::1) and by tests (plain loopback).
pub trait PodDialer: Send + Sync + 'static {
    /// Connects to `port` inside the pod.
    fn dial(&self, port: u16) -> DialFuture;
    /// The pod identifier used in error texts (`error forwarding port P to pod <this>, uid : …`).
    fn pod_id(&self) -> String;
}
