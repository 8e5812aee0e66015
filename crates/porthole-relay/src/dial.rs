//! How a port-forward server reaches the pod: the one seam between the protocol servers in this
//! crate and the node agent's network-namespace dialer (`porthole-node`), so protocol code never
//! knows about namespaces and the node never knows about frames.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpStream, UdpSocket};

use crate::copy::Transferred;

/// Why a connection to the pod's port could not be made. The text is what follows
/// `error forwarding port P to pod ID, uid : ` on the error stream (PROTOCOL.md §4.5), e.g.
/// `failed to connect to localhost:8080 inside namespace "…", IPv4: … IPv6: …`.
///
/// The I/O error that decided the outcome is kept as the [`source`](std::error::Error::source)
/// so a caller can tell a refused port from a timeout by [`kind`](Self::kind) rather than by
/// parsing text.
#[derive(Debug)]
pub struct DialError {
    cause: String,
    source: Option<io::Error>,
}

impl DialError {
    /// A failure with no I/O error behind it (such as a UDP request to a TCP-only dialer).
    /// `cause` names what could not be reached and why.
    pub fn new(cause: impl Into<String>) -> Self {
        Self {
            cause: cause.into(),
            source: None,
        }
    }

    /// A failed connect or socket call. `cause` is the complete error-stream text, which already includes
    /// `source` in the Go-like wording kubectl users know, so the two are not joined again.
    pub fn io(cause: impl Into<String>, source: io::Error) -> Self {
        Self {
            cause: cause.into(),
            source: Some(source),
        }
    }

    /// The human-readable cause, naming the port and both address families where both were
    /// tried.
    pub fn cause(&self) -> &str {
        &self.cause
    }

    /// The kind of the I/O error behind this failure, if there was one.
    pub fn kind(&self) -> Option<io::ErrorKind> {
        self.source.as_ref().map(io::Error::kind)
    }
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause)
    }
}

impl std::error::Error for DialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Bytes one forward relayed, reported by [`PodDialer::forward_ended`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardBytes {
    /// From the client to the pod.
    pub to_pod: u64,
    /// From the pod to the client.
    pub from_pod: u64,
}

/// Boxed future returned by [`PodDialer::dial`].
pub type DialFuture = Pin<Box<dyn Future<Output = Result<TcpStream, DialError>> + Send>>;

/// Boxed future returned by [`PodDialer::dial_udp`].
pub type UdpDialFuture = Pin<Box<dyn Future<Output = Result<UdpSocket, DialError>> + Send>>;

/// Opens TCP connections to ports inside one pod. Implemented by the node agent (setns on a
/// dedicated thread, 127.0.0.1 then ::1) and by tests (plain loopback).
pub trait PodDialer: Send + Sync + 'static {
    /// Connects to `port` inside the pod.
    fn dial(&self, port: u16) -> DialFuture;
    /// A UDP socket inside the pod connected to `127.0.0.1:port`, or `[::1]:port` with
    /// `ipv6` (UDP forwarding, a porthole extension). Dialers that cannot make one refuse by
    /// default, and a server for them should not grant the extension.
    fn dial_udp(&self, port: u16, ipv6: bool) -> UdpDialFuture {
        let _ = ipv6;
        Box::pin(async move {
            Err(DialError::new(format!(
                "UDP forwarding to port {port} is not supported by this node"
            )))
        })
    }
    /// The pod identifier used in error texts (`error forwarding port P to pod <this>, uid : …`).
    fn pod_id(&self) -> String;
    /// Called exactly once for every connection a successful [`dial`](Self::dial) handed to a
    /// protocol server, when that forward ends, however it ends (either side closed, an
    /// error, the pod deleted, the session or its task torn down), with the bytes relayed.
    /// The node agent keeps its stream gauge and byte counters with it. Does nothing by
    /// default.
    fn forward_ended(&self, port: u16, bytes: ForwardBytes) {
        let _ = (port, bytes);
    }
}

/// Reports one forward to [`PodDialer::forward_ended`] when dropped; `moved` is filled in by
/// the relay (`a_to_b` = to the pod) while it runs.
pub(crate) struct ForwardReport {
    dialer: Arc<dyn PodDialer>,
    port: u16,
    pub(crate) moved: Transferred,
}

impl ForwardReport {
    /// Call right after a successful dial, before the first await.
    pub(crate) fn new(dialer: Arc<dyn PodDialer>, port: u16) -> Self {
        Self {
            dialer,
            port,
            moved: Transferred::default(),
        }
    }
}

impl Drop for ForwardReport {
    fn drop(&mut self) {
        self.dialer.forward_ended(
            self.port,
            ForwardBytes {
                to_pod: self.moved.a_to_b,
                from_pod: self.moved.b_to_a,
            },
        );
    }
}
