//! Port-forward protocol servers and client (PROTOCOL.md §4, §5).
//!
//! - `spdy_server` / `spdy_client`: `portforward.k8s.io` over a SPDY session (raw or tunnelled).
//! - `udp`: UDP flows over `protocol: udp` pairs (porthole extension), both sides.
//! - `ws_server` / `ws_client`: the WebSocket channel protocol (`v4`/`v5.channel.k8s.io`, base64).
//! - `pair`: how a forwarded pair's streams end (TCP and UDP alike).
//! - `reverse`: reverse forwarding, the same streams with the SPDY roles swapped (the node opens).

mod pair;
pub mod reverse;
pub mod spdy_client;
pub mod spdy_server;
pub mod udp;
pub mod ws_client;
pub mod ws_server;

pub use spdy_server::{ServeError, ServerConfig};
