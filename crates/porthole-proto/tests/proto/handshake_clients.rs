//! Replays the exact upgrade requests of real clients (docs/CLIENTS.md) through the node's
//! negotiation and checks our 101, plus the refusal texts of PROTOCOL.md §2.2–§2.4, §6.7.

// Rejection is the contract's (large) error type; the closures below just pass it on.
#![allow(clippy::result_large_err)]

use base64::Engine as _;
use http::{HeaderMap, Method, StatusCode};
use porthole_proto::handshake::{
    check_spdy_response, check_ws_channel_response, check_ws_tunnel_response, classify,
    negotiate_server, node_port_query, parse_api_ports, sec_websocket_accept, spdy_request_headers,
    ws_channel_request_headers, ws_tunnel_request_headers, Rejection, Upgrade, UpgradeError,
    UpgradeKind,
};
use porthole_proto::ws::ChannelProtocol;

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("valid test request").into_parts().0
}

fn response(status: u16, headers: &HeaderMap) -> http::response::Parts {
    let mut r = http::Response::builder()
        .status(status)
        .body(())
        .expect("valid")
        .into_parts()
        .0;
    r.headers = headers.clone();
    r
}

fn names(h: &HeaderMap) -> Vec<String> {
    let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
    v.sort();
    v
}

fn refusal(parts: &http::request::Parts) -> Rejection {
    negotiate_server(parts).expect_err("request must be refused")
}

const KUBECTL_KEY: &str = "d2qvhS5tNtVFI2Ya7VDQVg==";

fn kubectl_tunnel(method: &str) -> http::request::Parts {
    request(
        method,
        "/portForward/default/mypod",
        &[
            ("Host", "127.0.0.1:18201"),
            (
                "User-Agent",
                "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07",
            ),
            ("Connection", "Upgrade"),
            ("Kubectl-Command", "kubectl port-forward"),
            ("Kubectl-Session", "af9db1ed-314a-45b2-ab9f-7e49c51d8b6b"),
            ("Sec-WebSocket-Key", KUBECTL_KEY),
            ("Sec-WebSocket-Protocol", "SPDY/3.1+portforward.k8s.io"),
            ("Sec-WebSocket-Version", "13"),
            ("Upgrade", "websocket"),
        ],
    )
}

fn kubectl_spdy(extra: &[(&str, &str)], with_protocol: bool) -> http::request::Parts {
    let mut h = vec![
        ("Host", "127.0.0.1:18201"),
        (
            "User-Agent",
            "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07",
        ),
        ("Content-Length", "0"),
        ("Connection", "Upgrade"),
        ("Kubectl-Command", "kubectl port-forward"),
        ("Kubectl-Session", "af9db1ed-314a-45b2-ab9f-7e49c51d8b6b"),
        ("Upgrade", "SPDY/3.1"),
    ];
    if with_protocol {
        h.push(("X-Stream-Protocol-Version", "portforward.k8s.io"));
    }
    h.extend_from_slice(extra);
    request("POST", "/portForward/default/mypod", &h)
}

#[test]
fn kubectl_websocket_tunnel() {
    let req = kubectl_tunnel("GET");
    assert_eq!(classify(&req), Some(UpgradeKind::WsTunnel));
    let (up, h) = negotiate_server(&req).expect("kubectl tunnel accepted");
    assert_eq!(
        up,
        Upgrade::WsTunnel {
            flow_control: false
        }
    );
    assert_eq!(
        names(&h),
        [
            "connection",
            "sec-websocket-accept",
            "sec-websocket-protocol",
            "upgrade"
        ]
    );
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "Upgrade");
    assert_eq!(h["sec-websocket-protocol"], "SPDY/3.1+portforward.k8s.io");
    assert_eq!(
        h["sec-websocket-accept"],
        sec_websocket_accept(KUBECTL_KEY.as_bytes())
    );

    // And our own client accepts it, as client-go would.
    let key: [u8; 16] = base64::engine::general_purpose::STANDARD
        .decode(KUBECTL_KEY)
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        check_ws_tunnel_response(&response(101, &h), key, b""),
        Ok(false)
    );
}

#[test]
fn kubectl_tunnel_needs_get() {
    let r = refusal(&kubectl_tunnel("POST"));
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.body.contains("request method is not GET"), "{}", r.body);
}

#[test]
fn kubectl_spdy_post() {
    let req = kubectl_spdy(&[], true);
    assert_eq!(classify(&req), Some(UpgradeKind::Spdy));
    let (up, h) = negotiate_server(&req).expect("kubectl SPDY accepted");
    assert_eq!(
        up,
        Upgrade::Spdy {
            flow_control: false
        }
    );
    assert_eq!(
        names(&h),
        ["connection", "upgrade", "x-stream-protocol-version"]
    );
    assert_eq!(h["connection"], "Upgrade");
    assert_eq!(h["upgrade"], "SPDY/3.1");
    assert_eq!(h["x-stream-protocol-version"], "portforward.k8s.io");
    assert_eq!(check_spdy_response(&response(101, &h), b""), Ok(false));

    // GET is routed too.
    let mut get = req.clone();
    get.method = Method::GET;
    assert!(negotiate_server(&get).is_ok());
}

#[test]
fn spdy_refusals_match_kubernetes() {
    // Six distinct header names besides Host, as Go counts them.
    let r = refusal(&kubectl_spdy(&[], false));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body,
        "unable to upgrade: header X-Stream-Protocol-Version does not exist in request with 6 headers"
    );

    let r = refusal(&kubectl_spdy(&[("X-Stream-Protocol-Version", "")], false));
    assert_eq!(
        r.body,
        "unable to upgrade: header X-Stream-Protocol-Version is empty"
    );

    let r = refusal(&kubectl_spdy(
        &[("X-Stream-Protocol-Version", "v4.channel.k8s.io, bogus")],
        false,
    ));
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.body,
        "unable to upgrade: unable to negotiate protocol: client supports [v4.channel.k8s.io bogus], server accepts [portforward.k8s.io]"
    );
    assert_eq!(
        r.headers["x-accepted-stream-protocol-versions"],
        "portforward.k8s.io"
    );

    // Repeated and comma-separated offers: the supported one is found anywhere.
    let req = kubectl_spdy(
        &[(
            "X-Stream-Protocol-Version",
            "v2.portforward.k8s.io, portforward.k8s.io",
        )],
        false,
    );
    assert!(negotiate_server(&req).is_ok());

    // Protocol header fine but no upgrade headers.
    let req = request(
        "POST",
        "/portForward/default/mypod",
        &[
            ("X-Stream-Protocol-Version", "portforward.k8s.io"),
            ("Authorization", "Bearer secret"),
        ],
    );
    let r = refusal(&req);
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body
            .starts_with("unable to upgrade: missing upgrade headers in request: http.Header{"),
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("secret"),
        "credentials must not be echoed: {}",
        r.body
    );
    assert!(r
        .body
        .contains("\"X-Stream-Protocol-Version\":[]string{\"portforward.k8s.io\"}"));

    let r = refusal(&request("PUT", "/portForward/default/mypod", &[]));
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn porthole_flow_control_is_echoed() {
    let (up, h) =
        negotiate_server(&kubectl_spdy(&[("X-Porthole-Flow-Control", "1")], true)).unwrap();
    assert_eq!(up, Upgrade::Spdy { flow_control: true });
    assert_eq!(h["x-porthole-flow-control"], "1");
    assert_eq!(check_spdy_response(&response(101, &h), b""), Ok(true));

    // Our own tunnel request, end to end through negotiation and validation.
    let key = [7u8; 16];
    let mut req = request("GET", "/portForward/ns/p", &[]);
    req.headers = ws_tunnel_request_headers(key, true);
    let (up, h) = negotiate_server(&req).unwrap();
    assert_eq!(up, Upgrade::WsTunnel { flow_control: true });
    assert_eq!(
        check_ws_tunnel_response(&response(101, &h), key, b""),
        Ok(true)
    );

    let mut req = request("POST", "/portForward/ns/p", &[]);
    req.headers = spdy_request_headers(false);
    assert_eq!(
        negotiate_server(&req).unwrap().0,
        Upgrade::Spdy {
            flow_control: false
        }
    );
}

#[test]
fn python_kubernetes_client() {
    let headers = [
        ("Upgrade", "websocket"),
        ("Host", "127.0.0.1:22201"),
        ("Origin", "http://127.0.0.1:22201"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Connection", "Upgrade"),
        ("authorization", "Bearer fake-token"),
        (
            "sec-websocket-protocol",
            "v5.channel.k8s.io,v4.channel.k8s.io",
        ),
    ];
    // Through the API server: `ports=80%2C81` is rewritten to the node's `port=` query.
    let api_ports = parse_api_ports(Some("ports=80%2C81")).unwrap();
    assert_eq!(api_ports, [80, 81]);
    let node_query = node_port_query(&api_ports).unwrap();
    assert_eq!(node_query, "port=80%2C81");
    for uri in [
        format!("/portForward/default/mypod?{node_query}"),
        // Straight to the node with the API server's parameter name.
        "/portForward/default/mypod?ports=80%2C81".to_owned(),
    ] {
        let req = request("GET", &uri, &headers);
        assert_eq!(classify(&req), Some(UpgradeKind::WsChannels));
        let (up, h) = negotiate_server(&req).unwrap();
        assert_eq!(
            up,
            Upgrade::WsChannels {
                proto: ChannelProtocol::V5Binary,
                ports: vec![80, 81]
            }
        );
        assert_eq!(h["sec-websocket-protocol"], "v5.channel.k8s.io");
        assert_eq!(h["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}

#[test]
fn javascript_client_node() {
    let req = request(
        "GET",
        "/portForward/default/mypod?port=80",
        &[
            ("Authorization", "Bearer fake-token"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            (
                "Sec-WebSocket-Protocol",
                "v5.channel.k8s.io,v4.channel.k8s.io,v3.channel.k8s.io,v2.channel.k8s.io,channel.k8s.io",
            ),
            ("Host", "127.0.0.1:19513"),
        ],
    );
    let (up, h) = negotiate_server(&req).unwrap();
    assert_eq!(
        up,
        Upgrade::WsChannels {
            proto: ChannelProtocol::V5Binary,
            ports: vec![80]
        }
    );
    // It needs a sub-protocol in the 101; permessage-deflate is never accepted.
    assert_eq!(h["sec-websocket-protocol"], "v5.channel.k8s.io");
    assert!(h.get("sec-websocket-extensions").is_none());
}

#[test]
fn kube_rs() {
    let req = request(
        "GET",
        "/portForward/default/mypod?&ports=80",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "sec-websocket-protocol",
                "v5.channel.k8s.io, v4.channel.k8s.io",
            ),
            ("authorization", "Bearer fake-token"),
            ("host", "127.0.0.1:21037"),
        ],
    );
    let (up, h) = negotiate_server(&req).unwrap();
    assert_eq!(
        up,
        Upgrade::WsChannels {
            proto: ChannelProtocol::V5Binary,
            ports: vec![80]
        }
    );
    // kube-rs requires exactly v4 or v5 echoed.
    assert_eq!(h["sec-websocket-protocol"], "v5.channel.k8s.io");
}

#[test]
fn channel_protocol_choice() {
    let with = |protocols: Option<&str>| {
        let mut h = vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        if let Some(p) = protocols {
            h.push(("Sec-WebSocket-Protocol", p));
        }
        negotiate_server(&request("GET", "/portForward/ns/p?port=8080&port=9090", &h))
    };
    let (up, h) = with(None).unwrap();
    assert_eq!(
        up,
        Upgrade::WsChannels {
            proto: ChannelProtocol::NoSubprotocol,
            ports: vec![8080, 9090]
        }
    );
    assert!(h.get("sec-websocket-protocol").is_none());
    let (up, h) = with(Some("v4.base64.channel.k8s.io, v4.channel.k8s.io")).unwrap();
    assert!(matches!(
        up,
        Upgrade::WsChannels {
            proto: ChannelProtocol::V4Base64,
            ..
        }
    ));
    assert_eq!(h["sec-websocket-protocol"], "v4.base64.channel.k8s.io");
    let (up, _) = with(Some(
        "base64url.bearer.authorization.k8s.io.dG9rZW4, v4.channel.k8s.io",
    ))
    .unwrap();
    assert!(matches!(
        up,
        Upgrade::WsChannels {
            proto: ChannelProtocol::V4Binary,
            ..
        }
    ));

    // A browser's token entry alone means binary mode with nothing echoed.
    let (up, h) = with(Some("base64url.bearer.authorization.k8s.io.dG9rZW4")).unwrap();
    assert!(matches!(
        up,
        Upgrade::WsChannels {
            proto: ChannelProtocol::NoSubprotocol,
            ..
        }
    ));
    assert!(h.get("sec-websocket-protocol").is_none());

    let r = with(Some(
        "channel.k8s.io, base64url.bearer.authorization.k8s.io.c2VjcmV0",
    ))
    .unwrap_err();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!r.body.contains("c2VjcmV0"), "token leaked: {}", r.body);
}

#[test]
fn websocket_refusals() {
    let ws = |uri: &str, extra: &[(&str, &str)], version: &str, key: &str| {
        let mut h = vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", version),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Protocol", "v4.channel.k8s.io"),
        ];
        h.extend_from_slice(extra);
        negotiate_server(&request("GET", uri, &h))
    };
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let body = |uri: &str| ws(uri, &[], "13", key).unwrap_err().body;
    assert_eq!(
        body("/portForward/ns/p"),
        "query parameter \"port\" is required"
    );
    assert_eq!(
        body("/portForward/ns/p?port="),
        "query parameter \"port\" cannot be empty"
    );
    assert_eq!(
        body("/portForward/ns/p?port=80,abc"),
        "unable to parse \"80,abc\" as a port: strconv.ParseUint: parsing \"abc\": invalid syntax"
    );
    assert_eq!(
        body("/portForward/ns/p?port=70000"),
        "unable to parse \"70000\" as a port: strconv.ParseUint: parsing \"70000\": value out of range"
    );
    assert_eq!(body("/portForward/ns/p?port=0"), "port \"0\" must be > 0");
    let many: Vec<String> = (1..=128).map(|p| p.to_string()).collect();
    assert!(body(&format!("/portForward/ns/p?port={}", many.join(",")))
        .starts_with("too many ports: 128"));

    let r = ws("/portForward/ns/p?port=80", &[], "8", key).unwrap_err();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.headers["sec-websocket-version"], "13");
    let r = ws("/portForward/ns/p?port=80", &[], "13", "short").unwrap_err();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("Sec-WebSocket-Key"), "{}", r.body);

    // A tunnel offering only an unknown SPDY protocol fails the SPDY negotiation, as the
    // Kubernetes TunnelingHandler's upstream would (the v2 name of KEP-4006 is not real).
    let mut req = kubectl_tunnel("GET");
    req.headers.insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("SPDY/3.1+v2.portforward.k8s.io"),
    );
    let r = refusal(&req);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.headers["x-accepted-stream-protocol-versions"],
        "portforward.k8s.io"
    );
}

#[test]
fn classify_requests() {
    assert_eq!(classify(&request("GET", "/x", &[])), None);
    assert_eq!(
        classify(&request("GET", "/x", &[("Upgrade", "websocket")])),
        None
    );
    assert_eq!(
        classify(&request(
            "POST",
            "/x",
            &[
                ("Connection", "keep-alive, Upgrade"),
                ("Upgrade", "spdy/3.1")
            ]
        )),
        Some(UpgradeKind::Spdy)
    );
    // Only the first Sec-WebSocket-Protocol line counts.
    let mut req = request(
        "GET",
        "/x",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Protocol", "v4.channel.k8s.io"),
        ],
    );
    req.headers.append(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("SPDY/3.1+portforward.k8s.io"),
    );
    assert_eq!(classify(&req), Some(UpgradeKind::WsChannels));
    assert_eq!(parse_api_ports(None), Ok(vec![]));
    assert_eq!(node_port_query(&[]), None);
    assert_eq!(
        parse_api_ports(Some("ports=80&ports=x")),
        Err("cannot convert to []int32: strconv.ParseUint: parsing \"x\": invalid syntax".into())
    );
    assert_eq!(parse_api_ports(Some("ports=0")), Ok(vec![0]));
}

#[test]
fn client_side_validation_texts() {
    // SPDY 101 without / with a bogus negotiated protocol (CLIENTS.md).
    let mut h = HeaderMap::new();
    h.insert("connection", "Upgrade".parse().unwrap());
    h.insert("upgrade", "SPDY/3.1".parse().unwrap());
    let e = check_spdy_response(&response(101, &h), b"").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unable to negotiate protocol: client supports \"portforward.k8s.io\", server returned \"\""
    );
    h.insert("x-stream-protocol-version", "bogus.k8s.io".parse().unwrap());
    assert_eq!(
        check_spdy_response(&response(101, &h), b"").unwrap_err().to_string(),
        "unable to negotiate protocol: client supports \"portforward.k8s.io\", server returned \"bogus.k8s.io\""
    );
    // A refusal with a Status body shows its message; a text body is wrapped.
    let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" is forbidden: User \"u\" cannot create resource \"pods/portforward\"","code":403}"#;
    let e = check_spdy_response(&response(403, &HeaderMap::new()), status).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pods \"x\" is forbidden: User \"u\" cannot create resource \"pods/portforward\""
    );
    let e = check_spdy_response(&response(404, &HeaderMap::new()), b"pod does not exist\n")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unable to upgrade connection: pod does not exist"
    );

    // WebSocket tunnel: wrong or missing echo triggers kubectl's fallback.
    let key = [1u8; 16];
    let mut req = request("GET", "/portForward/ns/p?port=80", &[]);
    req.headers = ws_channel_request_headers(key, &[ChannelProtocol::V4Binary]);
    let (_, h) = negotiate_server(&req).unwrap();
    let e = check_ws_tunnel_response(&response(101, &h), key, b"").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid protocol, expected one of [\"SPDY/3.1+portforward.k8s.io\"], got \"v4.channel.k8s.io\""
    );
    assert!(e.is_upgrade_failure());
    let mut no_proto = h.clone();
    no_proto.remove("sec-websocket-protocol");
    assert_eq!(
        check_ws_tunnel_response(&response(101, &no_proto), key, b"")
            .unwrap_err()
            .to_string(),
        "invalid protocol, expected one of [\"SPDY/3.1+portforward.k8s.io\"], got \"\""
    );
    // Wrong accept hash.
    assert_eq!(
        check_ws_tunnel_response(&response(101, &h), [2u8; 16], b"").unwrap_err(),
        UpgradeError::BadHandshake {
            status: StatusCode::SWITCHING_PROTOCOLS
        }
    );
    assert_eq!(
        check_ws_tunnel_response(
            &response(400, &HeaderMap::new()),
            key,
            b"query parameter \"port\" is required"
        )
        .unwrap_err()
        .to_string(),
        "websocket: bad handshake (400 Bad Request): query parameter \"port\" is required"
    );

    // Channel client: the echoed protocol decides the mode.
    assert_eq!(
        check_ws_channel_response(&response(101, &h), key, &[ChannelProtocol::V4Binary], b""),
        Ok(ChannelProtocol::V4Binary)
    );
    assert!(
        check_ws_channel_response(&response(101, &h), key, &[ChannelProtocol::V5Binary], b"")
            .is_err()
    );
    assert_eq!(
        check_ws_channel_response(&response(101, &no_proto), key, &[], b""),
        Ok(ChannelProtocol::NoSubprotocol)
    );
}

proptest::proptest! {
    /// The fuzz target's entry point (fuzz/fuzz_targets/ws_handshake.rs) on random input,
    /// so every `cargo test` runs it too.
    #[test]
    fn negotiation_never_panics(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
    ) {
        porthole_proto::ws::fuzz_logic::negotiate(&data);
    }
}

#[test]
fn fuzz_seed_corpus_runs() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/ws_handshake"
    );
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let data = std::fs::read(entry.path()).unwrap();
        porthole_proto::ws::fuzz_logic::negotiate(&data);
    }
}
