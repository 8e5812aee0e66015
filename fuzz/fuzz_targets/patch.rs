//! Fuzz target: porthole_apiserver::fuzz_logic::patch — merge, strategic merge and JSON patches on a current object: RFC 7386
//! idempotence, JSON patch post-conditions per operation, and the update path validates or errs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_apiserver::fuzz_logic::patch(data);
});
