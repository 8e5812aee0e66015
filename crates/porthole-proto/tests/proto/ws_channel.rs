//! The channel protocol (PROTOCOL.md §5): captured examples, receiving rules, round trips.

use bytes::{Bytes, BytesMut};
use hex_literal::hex;
use porthole_proto::ws::channel::{
    data_channel, error_channel, port_prefix, ChannelError, ClientDemux, ClientInbound, Dropped,
    ServerDemux, ServerInbound,
};
use porthole_proto::ws::frame::{DataKind, MessageDecoder};
use porthole_proto::ws::{ChannelProtocol, Message, Role};
use proptest::prelude::*;

/// Encodes one channel message and decodes it back as the peer's WebSocket layer would.
fn wire(proto: ChannelProtocol, channel: u8, data: &[u8], client: bool) -> Message {
    let mut buf = BytesMut::new();
    let mask = client.then_some([9, 8, 7, 6]);
    proto.encode_frame(&mut buf, channel, data, mask);
    let role = if client { Role::Server } else { Role::Client };
    MessageDecoder::new(role)
        .decode(&mut buf)
        .expect("valid frame")
        .expect("complete frame")
}

fn payload(m: &Message) -> (DataKind, Bytes) {
    match m {
        Message::Binary(p) => (DataKind::Binary, p.clone()),
        Message::Text(p) => (DataKind::Text, p.clone()),
        other => panic!("not a data message: {other:?}"),
    }
}

#[test]
fn spec_examples_binary_and_base64() {
    // §5.4, ports [8080, 9090].
    let ports = [8080u16, 9090];
    let mut bin = Vec::new();
    let mut b64 = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        for ch in [data_channel(i), error_channel(i)] {
            bin.push(
                payload(&wire(
                    ChannelProtocol::V4Binary,
                    ch,
                    &port_prefix(*p),
                    false,
                ))
                .1,
            );
            b64.push(
                payload(&wire(
                    ChannelProtocol::V4Base64,
                    ch,
                    &port_prefix(*p),
                    false,
                ))
                .1,
            );
        }
    }
    assert_eq!(
        bin,
        vec![
            Bytes::from_static(&hex!("00 90 1f")),
            Bytes::from_static(&hex!("01 90 1f")),
            Bytes::from_static(&hex!("02 82 23")),
            Bytes::from_static(&hex!("03 82 23")),
        ]
    );
    assert_eq!(
        b64,
        vec![
            Bytes::from_static(b"0kB8="),
            Bytes::from_static(b"1kB8="),
            Bytes::from_static(b"2giM="),
            Bytes::from_static(b"3giM="),
        ]
    );
    // CLIENTS.md: port 80 → `00 50 00`, `01 50 00`.
    assert_eq!(
        payload(&wire(ChannelProtocol::V5Binary, 1, &port_prefix(80), false)).1,
        Bytes::from_static(&hex!("01 50 00"))
    );
}

#[test]
fn server_receiving_rules() {
    let d = ServerDemux::new(ChannelProtocol::V4Binary, 2);
    // Python's `00 70 69 6e 67 0a` (channel 0 + "ping\n").
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("00 70 69 6e 67 0a"))),
        ServerInbound::Data {
            port_index: 0,
            payload: Bytes::from_static(b"ping\n")
        }
    );
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("02 41"))),
        ServerInbound::Data {
            port_index: 1,
            payload: Bytes::from_static(b"A")
        }
    );
    assert_eq!(
        d.handle(&Bytes::new()),
        ServerInbound::Dropped(Dropped::Empty)
    );
    assert_eq!(
        d.handle(&Bytes::from_static(&[0])),
        ServerInbound::Dropped(Dropped::EmptyData { port_index: 0 })
    );
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("04 41"))),
        ServerInbound::Dropped(Dropped::UnknownChannel { channel: 4 })
    );
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("03 41"))),
        ServerInbound::Dropped(Dropped::ErrorChannel { port_index: 1 })
    );
    // `ff 00` is data for channel 255 (unknown) in v4, the close signal only in v5.
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("ff 00"))),
        ServerInbound::Dropped(Dropped::UnknownChannel { channel: 255 })
    );
}

#[test]
fn v5_close_signal() {
    let d = ServerDemux::new(ChannelProtocol::V5Binary, 2);
    // The JS client's `ff 00`.
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("ff 00"))),
        ServerInbound::CloseSignal { port_index: 0 }
    );
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("ff 02"))),
        ServerInbound::CloseSignal { port_index: 1 }
    );
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("ff 01"))),
        ServerInbound::Dropped(Dropped::BadCloseSignal)
    );
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("ff"))),
        ServerInbound::Dropped(Dropped::BadCloseSignal)
    );
    assert_eq!(
        d.handle(&Bytes::from_static(&hex!("ff 09"))),
        ServerInbound::Dropped(Dropped::UnknownChannel { channel: 9 })
    );
    let mut buf = BytesMut::new();
    ChannelProtocol::encode_close_signal(&mut buf, 2, None);
    assert_eq!(&buf[..], &hex!("82 02 ff 02"));
}

#[test]
fn base64_server_rules() {
    let d = ServerDemux::new(ChannelProtocol::V4Base64, 1);
    // "0" + base64("hi")
    assert_eq!(
        d.handle(&Bytes::from_static(b"0aGk=")),
        ServerInbound::Data {
            port_index: 0,
            payload: Bytes::from_static(b"hi")
        }
    );
    assert_eq!(
        d.handle(&Bytes::from_static(b"0a*k=")),
        ServerInbound::Dropped(Dropped::BadBase64 { channel: 0 })
    );
    assert_eq!(
        d.handle(&Bytes::from_static(b"0")),
        ServerInbound::Dropped(Dropped::EmptyData { port_index: 0 })
    );
}

#[test]
fn client_consumes_port_prefixes() {
    let mut c = ClientDemux::new(ChannelProtocol::V4Binary, vec![8080]);
    let b = |s: &'static [u8]| Bytes::from_static(s);
    assert_eq!(
        c.handle(DataKind::Binary, &b(&hex!("00 90 1f"))),
        Ok(ClientInbound::PortPrefix {
            port_index: 0,
            error_channel: false
        })
    );
    assert!(!c.all_prefixes_seen());
    assert_eq!(
        c.handle(DataKind::Binary, &b(&hex!("01 90 1f"))),
        Ok(ClientInbound::PortPrefix {
            port_index: 0,
            error_channel: true
        })
    );
    assert!(c.all_prefixes_seen());
    // After the prefix, 2-byte payloads are ordinary data.
    assert_eq!(
        c.handle(DataKind::Binary, &b(&hex!("00 90 1f"))),
        Ok(ClientInbound::Data {
            port_index: 0,
            payload: b(&hex!("90 1f"))
        })
    );
    assert_eq!(
        c.handle(DataKind::Binary, &b(b"\x01boom")),
        Ok(ClientInbound::Error {
            port_index: 0,
            text: b(b"boom")
        })
    );
    assert_eq!(
        c.handle(DataKind::Binary, &b(&hex!("02 00"))),
        Err(ChannelError::UnknownChannel {
            channel: 2,
            ports: 1
        })
    );
    assert_eq!(
        c.handle(DataKind::Text, &b(b"0AA==")),
        Err(ChannelError::WrongMessageType {
            kind: DataKind::Text
        })
    );

    let mut c = ClientDemux::new(ChannelProtocol::V4Binary, vec![80]);
    assert_eq!(
        c.handle(DataKind::Binary, &b(&hex!("00 51 00"))),
        Err(ChannelError::BadPortPrefix {
            channel: 0,
            expected: 80,
            got: vec![0x51, 0]
        })
    );
}

proptest! {
    #[test]
    fn channel_round_trip(
        proto in prop_oneof![
            Just(ChannelProtocol::V5Binary),
            Just(ChannelProtocol::V4Binary),
            Just(ChannelProtocol::V4Base64),
            Just(ChannelProtocol::NoSubprotocol),
        ],
        port_index in 0usize..5,
        data in proptest::collection::vec(any::<u8>(), 1..200),
    ) {
        let m = wire(proto, data_channel(port_index), &data, true);
        let (_, p) = payload(&m);
        let d = ServerDemux::new(proto, 5);
        prop_assert_eq!(
            d.handle(&p),
            ServerInbound::Data { port_index, payload: Bytes::from(data.clone()) }
        );
        // And the server→client direction through the client demux.
        let mut c = ClientDemux::new(proto, vec![1, 2, 3, 4, 5]);
        let (k, pre) = payload(&wire(proto, data_channel(port_index), &port_prefix((port_index + 1) as u16), false));
        let is_prefix = matches!(c.handle(k, &pre), Ok(ClientInbound::PortPrefix { .. }));
        prop_assert!(is_prefix, "port prefix not consumed");
        let (k, p) = payload(&wire(proto, data_channel(port_index), &data, false));
        prop_assert_eq!(c.handle(k, &p), Ok(ClientInbound::Data { port_index, payload: Bytes::from(data) }));
    }

    #[test]
    fn demux_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), ports in 0usize..130) {
        for proto in [ChannelProtocol::V5Binary, ChannelProtocol::V4Binary, ChannelProtocol::V4Base64, ChannelProtocol::NoSubprotocol] {
            let _ = ServerDemux::new(proto, ports).handle(&Bytes::from(data.clone()));
            let mut c = ClientDemux::new(proto, vec![80; ports.min(127)]);
            let _ = c.handle(DataKind::Binary, &Bytes::from(data.clone()));
            let _ = c.handle(DataKind::Text, &Bytes::from(data.clone()));
        }
    }
}
