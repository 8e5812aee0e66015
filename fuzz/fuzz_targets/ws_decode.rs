//! Fuzzes the RFC 6455 frame and message decoders (both roles, arbitrary read chunking) and
//! the channel-protocol demultiplexers of every sub-protocol: no input may panic, loop or
//! buffer beyond the configured caps. Entry point: `porthole_proto::ws::fuzz_logic`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    porthole_proto::ws::fuzz_logic::decode_and_demux(data);
});
