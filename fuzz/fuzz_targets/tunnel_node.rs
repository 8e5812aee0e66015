//! Fuzz target: porthole_proto::tunnel::fuzz_logic::node_side — everything a node reads from an
//! API server over its tunnel (the 101's headers, then the SPDY session with flow control)
//! must never panic, and our own output must stay whole frames.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_proto::tunnel::fuzz_logic::node_side(data);
});
