//! porthole-proto's integration tests, one module per area, linked into one test binary
//! (one link instead of five; a test is still named by its file, e.g.
//! `cargo test -p porthole-proto --test proto ws_frame::`).

mod handshake_clients;
mod spdy_proptest;
mod spdy_vectors;
mod ws_channel;
mod ws_frame;
