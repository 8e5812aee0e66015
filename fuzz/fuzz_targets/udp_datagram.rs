//! Fuzz target: porthole_proto::portforward::datagram::fuzz_logic::decode_stream (UDP framing:
//! decode in data-sized chunks, then re-encoding must give back exactly the bytes consumed).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_proto::portforward::datagram::fuzz_logic::decode_stream(data);
});
