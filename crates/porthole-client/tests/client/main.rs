//! porthole-client's integration tests, one module per area, linked into one test binary
//! (one link instead of three; a test is still named by its file, e.g.
//! `cargo test -p porthole-client --test client run_kube::`).

mod forward_loop;
mod run_kube;
mod udp_flows;
