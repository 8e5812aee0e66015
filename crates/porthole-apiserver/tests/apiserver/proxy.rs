//! The port-forward proxy against a TLS node double that answers upgrades with 101 and
//! echoes bytes: all three protocols, the node-proxy and OpenShift paths, every refusal before
//! the upgrade, pass-through of node errors, an unreachable node, and the audit record.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{http_once, raw_tls, read_head, NodeDouble, Pki, Server};

async fn setup() -> (tempfile::TempDir, Pki, NodeDouble, Server) {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let node = NodeDouble::start(&pki).await;
    let s = Server::start(&pki, tmp.path()).await;
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(&node.node_yaml("n1")))
            .await
            .0
    );
    for (name, node_name) in [
        ("web", "n1"),
        ("pending", "n1"),
        ("unbound", ""),
        ("missing", "n1"),
        ("dead", "gone"),
    ] {
        let spec_node = if node_name.is_empty() {
            String::new()
        } else {
            format!("  nodeName: {node_name}\n")
        };
        let pod = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{spec_node}  schedulerName: none\n  containers: [{{name: app, image: host}}]\n");
        let r = s
            .kubectl_stdin("admin", &["create", "-f", "-"], Some(&pod))
            .await;
        assert!(r.0, "{r:?}");
        if name != "pending" && name != "unbound" {
            let r = s.patch_pod_status(name, r#"{"phase":"Running"}"#).await;
            assert!(r.0, "{r:?}");
        }
    }
    (tmp, pki, node, s)
}

fn pf_request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
}

const SPDY: &str = "Authorization: Bearer admin-token\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\nX-Porthole-Flow-Control: 1\r\nContent-Length: 0\r\n";

/// Upgrade, then check a byte round trip through the proxy and the echoing node.
async fn upgrade_and_echo(pki: &Pki, s: &Server, req: Vec<u8>, client: Option<&str>) -> String {
    let mut c = raw_tls(pki, s.addr, client).await;
    c.write_all(&req).await.expect("write");
    let (head, rest) = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(rest.is_empty());
    c.write_all(b"hello through the proxy")
        .await
        .expect("write data");
    let mut buf = vec![0u8; 23];
    tokio::time::timeout(std::time::Duration::from_secs(10), c.read_exact(&mut buf))
        .await
        .expect("echo within 10s")
        .expect("read echo");
    assert_eq!(&buf, b"hello through the proxy");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_protocols_are_proxied_byte_for_byte() {
    let (_tmp, pki, node, s) = setup().await;

    // SPDY POST.
    let head = upgrade_and_echo(
        &pki,
        &s,
        pf_request(
            "POST",
            "/api/v1/namespaces/default/pods/web/portforward",
            SPDY,
        ),
        None,
    )
    .await;
    let h = head.to_ascii_lowercase();
    assert!(
        h.contains("x-stream-protocol-version: portforward.k8s.io"),
        "{head}"
    );
    assert!(
        h.contains("x-node-double: yes"),
        "node headers verbatim: {head}"
    );
    {
        let seen = node.seen.lock().expect("seen");
        let last = seen.last().expect("node saw the request");
        assert_eq!(last.uri, "/portForward/default/web");
        assert_eq!(last.method, "POST");
        assert!(
            last.headers.get("authorization").is_none(),
            "credentials stripped"
        );
        assert_eq!(last.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(last.headers["x-porthole-flow-control"], "1");
        assert_eq!(
            last.headers["x-stream-protocol-version"],
            "portforward.k8s.io"
        );
    }

    // WebSocket tunnel with the token in the bearer subprotocol (and a client cert-less conn).
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: d2qvhS5tNtVFI2Ya7VDQVg==\r\n\
Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io, base64url.bearer.authorization.k8s.io.YWRtaW4tdG9rZW4\r\n";
    let head = upgrade_and_echo(
        &pki,
        &s,
        pf_request("GET", "/api/v1/namespaces/default/pods/web/portforward", ws),
        None,
    )
    .await;
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: spdy/3.1+portforward.k8s.io"),
        "{head}"
    );
    {
        let seen = node.seen.lock().expect("seen");
        let last = seen.last().expect("node saw the request");
        assert_eq!(
            last.headers["sec-websocket-protocol"], "SPDY/3.1+portforward.k8s.io",
            "bearer entry stripped"
        );
        assert_eq!(
            last.headers["sec-websocket-key"],
            "d2qvhS5tNtVFI2Ya7VDQVg=="
        );
    }

    // WebSocket channels with kube-rs' `?&ports=` and Python's `%2C` lists, client cert auth.
    let ch = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n";
    upgrade_and_echo(
        &pki,
        &s,
        pf_request(
            "GET",
            "/api/v1/namespaces/default/pods/web/portforward?&ports=80&ports=81%2C82",
            ch,
        ),
        Some("admin"),
    )
    .await;
    assert_eq!(
        node.seen.lock().expect("seen").last().expect("seen").uri,
        "/portForward/default/web?port=80%2C81%2C82"
    );

    // Node proxy subresource and OpenShift's legacy path.
    upgrade_and_echo(
        &pki,
        &s,
        pf_request(
            "POST",
            "/api/v1/nodes/n1/proxy/portForward/default/web",
            SPDY,
        ),
        None,
    )
    .await;
    upgrade_and_echo(
        &pki,
        &s,
        pf_request("POST", "/proxy/nodes/n1/portForward/default/web", SPDY),
        None,
    )
    .await;
    assert_eq!(
        node.seen.lock().expect("seen").last().expect("seen").uri,
        "/portForward/default/web"
    );

    let before = node.seen.lock().expect("seen").len();
    // Refusals before the upgrade, as Status objects.
    let cases: Vec<(&str, &str, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/namespaces/default/pods/web/portforward",
            400,
            "Upgrade request required",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/nope/portforward",
            404,
            "pods \\\"nope\\\" not found",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/unbound/portforward",
            400,
            "pod unbound does not have a host assigned",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/pending/portforward",
            400,
            "Current status=Pending",
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/pods/web/portforward",
            405,
            "MethodNotAllowed",
        ),
    ];
    for (method, path, code, msg) in cases {
        let hdrs = if code == 400 && msg.starts_with("Upgrade") {
            "Authorization: Bearer admin-token\r\nContent-Length: 0\r\n"
        } else {
            SPDY
        };
        let (st, head, body) = http_once(&pki, s.addr, None, &pf_request(method, path, hdrs)).await;
        assert_eq!(st, code, "{path}: {head}\n{body}");
        assert!(body.contains(msg), "{path}: {body}");
        assert!(body.contains("\"kind\":\"Status\""), "{body}");
    }
    assert_eq!(
        node.seen.lock().expect("seen").len(),
        before,
        "refused requests never reach the node"
    );

    // Node errors pass through; an unreachable node is a 503 before any upgrade.
    let (st, _, body) = http_once(
        &pki,
        s.addr,
        None,
        &pf_request(
            "POST",
            "/api/v1/namespaces/default/pods/missing/portforward",
            SPDY,
        ),
    )
    .await;
    assert_eq!((st, body.as_str()), (404, "pod does not exist"));
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let dead = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: gone}}\nstatus:\n  addresses: [{{type: InternalIP, address: 127.0.0.1}}]\n  daemonEndpoints: {{kubeletEndpoint: {{Port: {dead_port}}}}}\n");
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(&dead))
            .await
            .0
    );
    let (st, _, body) = http_once(
        &pki,
        s.addr,
        None,
        &pf_request(
            "POST",
            "/api/v1/namespaces/default/pods/dead/portforward",
            SPDY,
        ),
    )
    .await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("error dialing backend"), "{body}");

    // One audit record per session, with the byte counts of the echo.
    s.stop().await;
    let audit = std::fs::read_to_string(tmp_audit(&_tmp)).expect("audit log");
    let sessions: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "portforward")
        .collect();
    let ok: Vec<&serde_json::Value> = sessions.iter().filter(|v| v["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 5, "{audit}");
    assert_eq!(ok[0]["bytes_client_to_node"], 23);
    assert_eq!(ok[0]["bytes_node_to_client"], 23);
    assert_eq!(ok[0]["protocol"], "spdy");
    assert_eq!(ok[0]["user"], "admin-tok");
    assert_eq!(ok[0]["node"], "n1");
    assert_eq!(ok[1]["protocol"], "websocket-tunnel");
    assert_eq!(ok[2]["protocol"], "websocket-channels");
    assert_eq!(ok[2]["ports"], serde_json::json!([80, 81, 82]));
    assert!(!audit.contains("admin-token"), "tokens never logged");
}

fn tmp_audit(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    tmp.path().join("audit.log")
}
