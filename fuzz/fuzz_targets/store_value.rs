//! Fuzz target: porthole_apiserver::fuzz_logic::store_value — a value read back from etcd/redb: only objects decode, and every reader
//! of stored objects (get, tables, RBAC, bootstrap tokens, the CSR controller) survives them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_apiserver::fuzz_logic::store_value(data);
});
