//! porthole-relay's integration tests, one module per area, linked into one test binary
//! (one link instead of eight; a test is still named by its file, e.g.
//! `cargo test -p porthole-relay --test relay spdy_session::`).

mod spdy_portforward;
mod spdy_session;
mod spdy_throughput;
mod udp_portforward;
mod ws_server;
mod ws_throughput;
mod ws_tunnel;
mod ws_tunnel_spdy;
