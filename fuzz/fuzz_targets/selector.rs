//! Fuzz target: porthole_apiserver::fuzz_logic::selector — label and field selectors: `a,b` is the conjunction of `a` and `b`; a
//! matchLabels/matchExpressions object and its query form select the same labels.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_apiserver::fuzz_logic::selector(data);
});
