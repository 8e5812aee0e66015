//! Full stack over loopback TCP: HTTP/1.1 upgrade with `SPDY/3.1+portforward.k8s.io`
//! (porthole_proto::handshake on both ends), then the SPDY port-forward client and server
//! running over `WsStream` (PROTOCOL.md §2.4, §4).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use porthole_proto::handshake::{
    check_ws_tunnel_response, negotiate_server, ws_tunnel_request_headers, Upgrade,
};
use porthole_relay::dial::{DialError, DialFuture, PodDialer};
use porthole_relay::portforward::spdy_client::{ForwardError, PortForwarder};
use porthole_relay::portforward::spdy_server::{self, ServerConfig};
use porthole_relay::spdy;
use porthole_relay::ws::{Role, WsStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct LoopbackDialer(HashMap<u16, SocketAddr>);

impl PodDialer for LoopbackDialer {
    fn dial(&self, port: u16) -> DialFuture {
        let addr = self.0.get(&port).copied();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| {
                DialError::new(format!(
                    "failed to connect to localhost:{port}: connection refused"
                ))
            })?;
            TcpStream::connect(addr)
                .await
                .map_err(|e| DialError::io(e.to_string(), e))
        })
    }
    fn pod_id(&self) -> String {
        "tunnel-pod".into()
    }
}

/// Reads an HTTP/1.1 head (request or response) line by line up to the blank line.
async fn read_head(r: &mut BufReader<TcpStream>) -> (String, Vec<(String, String)>) {
    let mut first = String::new();
    r.read_line(&mut first).await.unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            return (first.trim_end().to_owned(), headers);
        }
        let (k, v) = line.split_once(':').expect("header line");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
}

async fn echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(b"echo:").await.unwrap();
                s.write_all(&all).await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test]
async fn spdy_port_forward_through_the_websocket_tunnel() {
    let app = echo_app().await;
    let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = node.local_addr().unwrap();

    // The node: negotiate, answer 101, serve SPDY over the tunnel.
    let server = tokio::spawn(async move {
        let (sock, _) = node.accept().await.unwrap();
        let mut r = BufReader::new(sock);
        let (request_line, headers) = read_head(&mut r).await;
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
        let mut b = http::Request::builder().method(method).uri(path);
        for (k, v) in &headers {
            b = b.header(k, v);
        }
        let (req, ()) = b.body(()).unwrap().into_parts();
        let (upgrade, resp_headers) = negotiate_server(&req).expect("tunnel accepted");
        assert_eq!(
            upgrade,
            Upgrade::WsTunnel {
                flow_control: false
            }
        );
        let mut head = String::from("HTTP/1.1 101 Switching Protocols\r\n");
        for (k, v) in &resp_headers {
            head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap()));
        }
        head.push_str("\r\n");
        // Nothing can follow the head before our 101 (the client waits for it).
        assert!(r.buffer().is_empty());
        let mut sock = r.into_inner();
        sock.write_all(head.as_bytes()).await.unwrap();
        let dialer = Arc::new(LoopbackDialer(HashMap::from([(80, app)])));
        spdy_server::serve(
            WsStream::new(sock, Role::Server),
            dialer,
            ServerConfig::default(),
        )
        .await
    });

    // The client: kubectl's request, client-go's validation, then port-forward.
    let key = *b"0123456789abcdef";
    let mut sock = TcpStream::connect(node_addr).await.unwrap();
    let mut req = String::from("GET /portForward/default/web-0 HTTP/1.1\r\nHost: node\r\n");
    for (k, v) in &ws_tunnel_request_headers(key, false) {
        req.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap()));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut r = BufReader::new(sock);
    let (status_line, headers) = read_head(&mut r).await;
    assert_eq!(status_line, "HTTP/1.1 101 Switching Protocols");
    let mut b = http::Response::builder().status(101);
    for (k, v) in &headers {
        b = b.header(k, v);
    }
    let (resp, ()) = b.body(()).unwrap().into_parts();
    assert_eq!(check_ws_tunnel_response(&resp, key, b""), Ok(false));
    assert!(r.buffer().is_empty());
    let ws = WsStream::new(r.into_inner(), Role::Client);
    let pf = PortForwarder::new(ws, spdy::Config::default());

    // Two forwarded connections in a row, then a refused port.
    for round in 0..2 {
        let (mut user, local) = tokio::io::duplex(1 << 16);
        let payload = vec![b'a' + round; 70_000];
        let expected = [b"echo:".as_slice(), &payload].concat();
        let user_side = tokio::spawn(async move {
            user.write_all(&payload).await.unwrap();
            user.shutdown().await.unwrap();
            let mut got = Vec::new();
            user.read_to_end(&mut got).await.unwrap();
            got
        });
        let report = pf.forward(local, 80).await.expect("forward succeeds");
        assert_eq!(report.bytes_out, 70_000);
        assert_eq!(user_side.await.unwrap(), expected);
    }
    let (_user, local) = tokio::io::duplex(1024);
    match pf.forward(local, 81).await {
        Err(ForwardError::Remote(text)) => assert_eq!(
            text,
            "error forwarding port 81 to pod tunnel-pod, uid : failed to connect to localhost:81: connection refused"
        ),
        other => panic!("expected the remote error, got {other:?}"),
    }

    pf.shutdown().await;
    server
        .await
        .unwrap()
        .expect("server ends cleanly after GOAWAY");
}
