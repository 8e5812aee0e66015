//! Fuzz target: porthole_proto::ws::fuzz_logic::negotiate — the node's upgrade negotiation
//! (port query parsing, sub-protocol choice, SPDY protocol negotiation) must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_proto::ws::fuzz_logic::negotiate(data);
});
