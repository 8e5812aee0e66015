//! Fuzz target: porthole_proto::spdy::fuzz_logic::server_session (must never panic).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_proto::spdy::fuzz_logic::server_session(data);
});
