//! Fuzz target: porthole_proto::ws::fuzz_logic::decode_and_demux — the RFC 6455 frame and
//! message decoders (both roles, arbitrary read chunking) and the channel-protocol
//! demultiplexers of every sub-protocol must never panic or buffer beyond their caps.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    porthole_proto::ws::fuzz_logic::decode_and_demux(data);
});
