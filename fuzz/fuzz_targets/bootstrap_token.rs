//! Fuzz target: porthole_apiserver::fuzz_logic::bootstrap_token — a bearer token and a bootstrap token Secret: authentication succeeds
//! only with the stored secret of a valid, unexpired token for authentication.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_apiserver::fuzz_logic::bootstrap_token(data);
});
