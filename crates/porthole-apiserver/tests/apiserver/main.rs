//! porthole-apiserver's integration tests, one module per area, linked into one test binary
//! (one link instead of nine; a test is still named by its file, e.g.
//! `cargo test -p porthole-apiserver --test apiserver store_conformance::`). `common` is the
//! harness they share.

mod common;

mod kubectl;
mod kubectl_portforward;
mod leader;
mod lifecycle;
mod patch_differential;
mod proxy;
mod security;
mod store;
mod store_conformance;
