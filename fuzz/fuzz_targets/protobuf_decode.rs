//! Fuzz target: porthole_apiserver::fuzz_logic::protobuf_decode — a protobuf request body (`k8s\0` + runtime.Unknown) decodes to a bounded
//! object of a served kind, or is refused; the create path then accepts or rejects it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_apiserver::fuzz_logic::protobuf_decode(data);
});
