//! Fuzz target: porthole_apiserver::fuzz_logic::route — a request line (method, path, query): routed names are path segments
//! Kubernetes accepts, verbs and RBAC attributes agree with the route, query parameters parse.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_apiserver::fuzz_logic::route(data);
});
