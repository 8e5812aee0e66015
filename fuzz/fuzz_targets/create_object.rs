//! Fuzz target: porthole_apiserver::fuzz_logic::create_object — a create body (JSON, YAML, protobuf) for any served kind: a created
//! object is valid, named by its kind's rule, and re-serialises and re-validates identically.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_apiserver::fuzz_logic::create_object(data);
});
