//! Fuzz target: porthole_client::set::file::fuzz_logic::forwards_file (a `porthole forward -f`
//! file: accepted entries all parse and survive being written back; refusals name the file).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_client::set::file::fuzz_logic::forwards_file(data);
});
