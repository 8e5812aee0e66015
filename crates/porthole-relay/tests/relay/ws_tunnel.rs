//! The SPDY-in-WebSocket tunnel byte stream (PROTOCOL.md §2.4) against a raw scripted peer.

use bytes::BytesMut;
use hex_literal::hex;
use porthole_proto::ws::frame::{
    encode_close, encode_frame, FrameDecoder, Message, MessageDecoder,
};
use porthole_proto::ws::{CloseCode, CloseFrame, OpCode, Role};
use porthole_relay::ws::{WsStream, MAX_TUNNEL_MESSAGE};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// kubectl 1.32's first frames (CLIENTS.md "Wire details").
const KUBECTL_SPDY: &[u8] = &hex!(
    "800300010000003d0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45a024cc6461c0c0c0c0590489c44c50e2663400000000ffff"
    "0000000101000000"
    "800300010000001c00000003000000000000826ac51445350c542e25a29a05000000ffff"
    "000000030000000570696e670a"
    "0000000301000000"
);

/// Reads every message the WsStream under test sent to the raw peer.
async fn read_messages(peer: &mut DuplexStream, role: Role, until_close: bool) -> Vec<Message> {
    let mut d = MessageDecoder::new(role);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        while let Some(m) = d.decode(&mut buf).expect("valid frames from WsStream") {
            let close = matches!(m, Message::Close(_));
            out.push(m);
            if close && until_close {
                return out;
            }
        }
        if peer.read_buf(&mut buf).await.expect("peer read") == 0 {
            return out;
        }
    }
}

#[tokio::test]
async fn kubectl_chunking_reassembles() {
    // kubectl writes each SPDY field as its own message, and an empty message after FIN data.
    let pieces: &[&[u8]] = &[
        &KUBECTL_SPDY[0..2],
        &KUBECTL_SPDY[2..4],
        &KUBECTL_SPDY[4..8],
        &KUBECTL_SPDY[8..12],
        &KUBECTL_SPDY[12..16],
        &KUBECTL_SPDY[16..17],
        &KUBECTL_SPDY[17..18],
        &KUBECTL_SPDY[18..69],
        &KUBECTL_SPDY[69..73],
        &KUBECTL_SPDY[73..77],
        &[],
        &KUBECTL_SPDY[77..],
        &[],
    ];
    let (server_io, mut peer) = tokio::io::duplex(1 << 16);
    let mut wire = BytesMut::new();
    for p in pieces {
        encode_frame(
            &mut wire,
            true,
            OpCode::Binary,
            Some([0xa1, 0xb2, 0xc3, 0xd4]),
            p,
        );
    }
    encode_close(&mut wire, Some((CloseCode::NORMAL, "")), Some([1, 2, 3, 4]));
    peer.write_all(&wire).await.unwrap();

    let mut ws = WsStream::new(server_io, Role::Server);
    let mut got = Vec::new();
    ws.read_to_end(&mut got).await.expect("Close 1000 is EOF");
    assert_eq!(got, KUBECTL_SPDY);
    // Our Close 1000 answers theirs, unmasked from the server.
    drop(ws);
    let replies = read_messages(&mut peer, Role::Client, true).await;
    assert_eq!(
        replies,
        vec![Message::Close(Some(CloseFrame {
            code: CloseCode::NORMAL,
            reason: String::new()
        }))]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_boundaries_reassemble(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(0usize..3000, 0..40),
        fragment_every in 0usize..4,
        ping_every in 0usize..5,
        key in any::<[u8; 4]>(),
    ) {
        // Message boundaries at random cuts (duplicates give empty messages), some messages
        // fragmented into continuation frames, pings in between.
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.push(0);
        cuts.push(data.len());
        cuts.sort_unstable();
        let mut wire = BytesMut::new();
        let mut pings = 0;
        for (i, w) in cuts.windows(2).enumerate() {
            let msg = &data[w[0]..w[1]];
            if fragment_every > 0 && i % (fragment_every + 1) == 0 && msg.len() >= 2 {
                let mid = msg.len() / 2;
                encode_frame(&mut wire, false, OpCode::Binary, Some(key), &msg[..mid]);
                if ping_every > 0 {
                    encode_frame(&mut wire, true, OpCode::Ping, Some(key), b"mid");
                    pings += 1;
                }
                encode_frame(&mut wire, true, OpCode::Continuation, Some(key), &msg[mid..]);
            } else {
                encode_frame(&mut wire, true, OpCode::Binary, Some(key), msg);
            }
            if ping_every > 0 && i % ping_every == 0 {
                encode_frame(&mut wire, true, OpCode::Ping, Some(key), &[i as u8]);
                pings += 1;
            }
        }
        encode_close(&mut wire, Some((CloseCode::NORMAL, "")), Some(key));

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (got, replies) = rt.block_on(async move {
            let (server_io, mut peer) = tokio::io::duplex(1 << 20);
            peer.write_all(&wire).await.unwrap();
            let mut ws = WsStream::new(server_io, Role::Server);
            let mut got = Vec::new();
            ws.read_to_end(&mut got).await.unwrap();
            drop(ws);
            (got, read_messages(&mut peer, Role::Client, true).await)
        });
        prop_assert_eq!(got, data);
        let pongs = replies.iter().filter(|m| matches!(m, Message::Pong(_))).count();
        prop_assert_eq!(pongs, pings);
        prop_assert!(matches!(replies.last(), Some(Message::Close(_))));
    }
}

#[tokio::test]
async fn client_and_server_streams_talk() {
    let (a, b) = tokio::io::duplex(64 << 10);
    let mut client = WsStream::new(a, Role::Client);
    let mut server = WsStream::new(b, Role::Server);
    let big: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i % 251) as u8).collect();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        // shutdown sends Close 1000: EOF for the server.
        client.shutdown().await.unwrap();
        let mut echo = Vec::new();
        client.read_to_end(&mut echo).await.unwrap();
        echo
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got == big);
    // The server answered the client's Close when it read EOF (a WebSocket has no
    // half-close), so writing now fails cleanly instead of corrupting the stream.
    let err = server.write_all(b"bye").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    server.flush().await.unwrap();
    // The client sees the server's Close 1000 as EOF.
    assert!(writer.await.unwrap().is_empty());
}

#[tokio::test]
async fn writes_become_single_binary_messages() {
    let (a, mut peer) = tokio::io::duplex(1 << 20);
    let mut ws = WsStream::new(a, Role::Client);
    let data = vec![5u8; 100_000];
    let n = ws.write(&data).await.unwrap();
    assert_eq!(n, MAX_TUNNEL_MESSAGE);
    ws.write_all(&data[n..]).await.unwrap();
    ws.shutdown().await.unwrap();
    drop(ws);
    // The client masks, so the peer decodes as a server.
    let msgs = read_messages(&mut peer, Role::Server, false).await;
    let sizes: Vec<usize> = msgs
        .iter()
        .map(|m| match m {
            Message::Binary(p) => p.len(),
            Message::Close(_) => 0,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sizes, [MAX_TUNNEL_MESSAGE, 100_000 - MAX_TUNNEL_MESSAGE, 0]);
}

#[tokio::test]
async fn text_message_is_an_error() {
    let (a, mut peer) = tokio::io::duplex(1 << 16);
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, true, OpCode::Text, None, b"hello");
    peer.write_all(&wire).await.unwrap();
    let mut ws = WsStream::new(a, Role::Client);
    let mut buf = [0u8; 16];
    let err = ws.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        err.to_string().contains("invalid message type received"),
        "{err}"
    );
    // Repeated reads keep failing the same way.
    assert!(ws.read(&mut buf).await.is_err());
    drop(ws);
    let replies = read_messages(&mut peer, Role::Server, true).await;
    assert!(matches!(
        replies.last(),
        Some(Message::Close(Some(CloseFrame {
            code: CloseCode::UNSUPPORTED_DATA,
            ..
        })))
    ));
}

#[tokio::test]
async fn abnormal_close_and_eof_are_errors() {
    let (a, mut peer) = tokio::io::duplex(1 << 16);
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, true, OpCode::Binary, None, b"ab");
    encode_close(
        &mut wire,
        Some((CloseCode::INTERNAL_ERROR, "node exploded")),
        None,
    );
    peer.write_all(&wire).await.unwrap();
    let mut ws = WsStream::new(a, Role::Client);
    let mut buf = [0u8; 2];
    ws.read_exact(&mut buf).await.unwrap();
    let err = ws.read(&mut buf).await.unwrap_err();
    assert!(err.to_string().contains("1011"), "{err}");
    assert!(err.to_string().contains("node exploded"), "{err}");

    let (a, peer) = tokio::io::duplex(1 << 16);
    drop(peer);
    let mut ws = WsStream::new(a, Role::Client);
    let err = ws.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("without a Close frame"), "{err}");
}

#[tokio::test]
async fn protocol_violation_closes_with_1002() {
    // The server must not receive unmasked frames.
    let (a, mut peer) = tokio::io::duplex(1 << 16);
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, true, OpCode::Binary, None, b"x");
    peer.write_all(&wire).await.unwrap();
    let mut ws = WsStream::new(a, Role::Server);
    let err = ws.read(&mut [0u8; 4]).await.unwrap_err();
    assert!(err.to_string().contains("unmasked"), "{err}");
    drop(ws);
    let mut d = FrameDecoder::new(Role::Client);
    let mut buf = BytesMut::new();
    peer.read_buf(&mut buf).await.unwrap();
    let f = d.decode(&mut buf).unwrap().unwrap();
    assert_eq!(f.opcode, OpCode::Close);
    assert_eq!(&f.payload[..2], &1002u16.to_be_bytes());
}
