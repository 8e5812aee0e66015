//! Fuzzes the node's upgrade negotiation with arbitrary query strings and header values: the
//! port-query parser, sub-protocol selection and SPDY protocol negotiation must never panic.
//! Entry point: `porthole_proto::handshake::negotiate_server`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Split the input into a query and up to three header values at NUL bytes.
    let mut parts = data.split(|b| *b == 0);
    let query = parts
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let mut builder = http::Request::builder()
        .method("GET")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    let uri = format!("/portForward/ns/pod?{}", query.replace(['#', ' '], ""));
    builder = builder.uri(uri.as_str());
    for name in [
        "sec-websocket-protocol",
        "x-stream-protocol-version",
        "x-porthole-flow-control",
    ] {
        if let Some(v) = parts.next() {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                builder = builder.header(name, v);
            }
        }
    }
    if let Ok(req) = builder.body(()) {
        let (parts, ()) = req.into_parts();
        let _ = porthole_proto::handshake::negotiate_server(&parts);
        let _ = porthole_proto::handshake::classify(&parts);
        let _ = porthole_proto::handshake::parse_api_ports(parts.uri.query());
    }
});
