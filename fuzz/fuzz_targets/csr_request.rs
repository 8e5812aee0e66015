//! Fuzz target: porthole_apiserver::fuzz_logic::csr_request — a node's PEM/DER certificate request: an accepted request has a valid
//! node name, SANs and usages for its signer, and is well formed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_apiserver::fuzz_logic::csr_request(data);
});
