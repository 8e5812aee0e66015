//! porthole-relay: the tokio driver for `porthole-proto`.
//!
//! Layout (each module owns one concern; see docs/ARCHITECTURE.md):
//! - [`spdy`]: runs a SPDY/3.1 session over any `AsyncRead + AsyncWrite`; streams are
//!   `AsyncRead + AsyncWrite` with half-close (`shutdown` = FIN).
//! - [`ws`]: WebSocket message driver and the byte-stream adapter used by the
//!   `SPDY/3.1+portforward.k8s.io` tunnel.
//! - [`portforward`]: the port-forward servers (SPDY, WebSocket channels) and the SPDY client.
//! - [`copy`]: half-close-aware relay between a stream and a TCP socket.
//! - [`dial`]: the seam to the pod (`PodDialer`).
//! - [`error`]: the error-chain formatter every porthole crate uses.

pub mod copy;
pub mod dial;
pub mod error;
pub mod keepalive;
pub mod portforward;
pub mod spdy;
pub mod ws;
