//! porthole-proto: the sans-IO protocol core of porthole. No tokio, sockets or clocks: time is
//! passed in, bytes go in through `handle_*` and come out through `poll_*`.
//!
//! - [`spdy`]: SPDY/3.1 framing, header-block compression, the session state machine
//!   (PROTOCOL.md §3).
//! - [`portforward`]: the `portforward.k8s.io` stream protocol on top of SPDY (§4).
//! - [`ws`]: RFC 6455 framing and the Kubernetes channel protocol (§5).
//! - [`handshake`]: the HTTP/1.1 upgrade negotiation of all three transports (§2).
//! - [`tunnel`]: the node tunnel (a porthole extension): what a node behind NAT and the API
//!   server it dials agree on.

pub mod handshake;
pub mod portforward;
pub mod spdy;
pub mod tunnel;
pub mod ws;
