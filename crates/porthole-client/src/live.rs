//! A connected session to one pod, as the forwarding loop publishes it to the TCP connection
//! tasks ([`crate::forward`]) and the UDP flows ([`crate::udp`]) alike.

use porthole_relay::portforward::spdy_client::PortForwarder;
use tokio::time::{Duration, Instant};

use crate::ports::ResolvedPort;

/// A connected session.
pub(crate) struct Live {
    /// Per-run session number, starting at 0.
    pub(crate) id: u64,
    /// The pod it reaches.
    pub(crate) pod: String,
    /// The pod port of each port spec, in the listeners' order.
    pub(crate) ports: Vec<ResolvedPort>,
    /// The port-forward client on the upgraded connection.
    pub(crate) forwarder: PortForwarder,
    connected_at: Instant,
}

impl Live {
    /// A session that has just connected.
    pub(crate) fn new(
        id: u64,
        pod: String,
        ports: Vec<ResolvedPort>,
        forwarder: PortForwarder,
    ) -> Live {
        Live {
            id,
            pod,
            ports,
            forwarder,
            connected_at: Instant::now(),
        }
    }

    /// How long ago it connected (tokio's clock, so paused tests control it).
    pub(crate) fn connected_for(&self) -> Duration {
        self.connected_at.elapsed()
    }
}
