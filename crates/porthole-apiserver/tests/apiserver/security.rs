//! Authentication, RBAC and robustness: 401 without (or with wrong) credentials, 403 with
//! Kubernetes' exact message and nothing reaching the node, RoleBinding-granted port-forward
//! (and the 1.35 rule that the WebSocket GET needs `create`), hostile requests answered with
//! 4xx while the server stays up.

use tokio::io::AsyncWriteExt as _;

use crate::common::{http_once, raw_tls, read_head, NodeDouble, Pki, Server};

const SPDY_HDRS: &str = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n";
const WS_HDRS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: d2qvhS5tNtVFI2Ya7VDQVg==\r\nSec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authn_authz_and_hostile_input() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let node = NodeDouble::start(&pki).await;
    let s = Server::start(&pki, tmp.path()).await;
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(&node.node_yaml("n1")))
            .await
            .0
    );
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  nodeName: n1\n  containers: [{name: app, image: host}]\n";
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(pod))
            .await
            .0
    );
    assert!(s.patch_pod_status("web", r#"{"phase":"Running"}"#).await.0);

    // 401: wrong token (kubectl), no credentials (raw: kubectl would prompt on stdin).
    let r = s.kubectl("wrong", &["get", "pods"]).await;
    assert!(!r.0);
    assert!(
        r.2.contains("error: You must be logged in to the server (Unauthorized)"),
        "{}",
        r.2
    );
    let (st, _, body) = http_once(
        &pki,
        s.addr,
        None,
        b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(st, 401);
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");

    // 403 with Kubernetes' message forms.
    let r = s.kubectl("bob", &["get", "pods"]).await;
    assert!(r.2.contains("Error from server (Forbidden): pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""), "{}", r.2);
    let r = s.kubectl("bob", &["get", "nodes"]).await;
    assert!(r.2.contains("nodes is forbidden: User \"bob\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"), "{}", r.2);
    let r = s.kubectl("bob", &["get", "deploy", "x"]).await;
    assert!(r.2.contains("deployments.apps \"x\" is forbidden: User \"bob\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"default\""), "{}", r.2);

    let before = node.seen.lock().expect("seen").len();
    let req = format!("POST /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bob-token\r\n{SPDY_HDRS}\r\n");
    let (st, _, body) = http_once(&pki, s.addr, None, req.as_bytes()).await;
    assert_eq!(st, 403);
    let status: serde_json::Value = serde_json::from_str(&body).expect("status json");
    assert_eq!(
        status["message"],
        "pods \"web\" is forbidden: User \"bob\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(status["details"]["kind"], "pods");
    assert_eq!(status["details"]["name"], "web");
    // The node proxy path is nodes/proxy.
    let req = format!("POST /api/v1/nodes/n1/proxy/portForward/default/web HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bob-token\r\n{SPDY_HDRS}\r\n");
    let (st, _, body) = http_once(&pki, s.addr, None, req.as_bytes()).await;
    assert_eq!(st, 403);
    assert!(body.contains("nodes \\\"n1\\\" is forbidden: User \\\"bob\\\" cannot create resource \\\"nodes/proxy\\\" in API group \\\"\\\" at the cluster scope"), "{body}");
    // A node identity may not forward ports.
    let req = format!("POST /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: x\r\n{SPDY_HDRS}\r\n");
    let (st, _, body) = http_once(&pki, s.addr, Some("node-client"), req.as_bytes()).await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body.contains(
            "User \\\"system:node:n1\\\" cannot create resource \\\"pods/portforward\\\""
        ),
        "{body}"
    );
    assert_eq!(
        node.seen.lock().expect("seen").len(),
        before,
        "nothing reached the node"
    );

    // RBAC objects grant access: alice's group may only `get` pods/portforward first...
    let rbac = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pf-get, namespace: default}\nrules:\n- apiGroups: ['']\n  resources: [pods/portforward]\n  verbs: [get]\n---\n\
apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: pf, namespace: default}\nsubjects:\n- {kind: Group, name: pf-users, apiGroup: rbac.authorization.k8s.io}\nroleRef: {kind: Role, name: pf-get, apiGroup: rbac.authorization.k8s.io}\n";
    let r = s
        .kubectl_stdin("admin", &["create", "-f", "-"], Some(rbac))
        .await;
    assert!(r.0, "{r:?}");
    let ws_req = format!("GET /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-token\r\n{WS_HDRS}\r\n");
    let (st, _, body) = http_once(&pki, s.addr, None, ws_req.as_bytes()).await;
    assert_eq!(st, 403, "WebSocket GET needs create too (1.35): {body}");
    assert!(
        body.contains("User \\\"alice\\\" cannot create resource \\\"pods/portforward\\\""),
        "{body}"
    );
    // ...then `create` too: both transports work.
    let r = s
        .kubectl(
            "admin",
            &[
                "patch",
                "role",
                "pf-get",
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/rules/0/verbs/-","value":"create"}]"#,
            ],
        )
        .await;
    assert!(r.0, "{r:?}");
    for req in [ws_req.clone(), format!("POST /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-token\r\n{SPDY_HDRS}\r\n")] {
        let mut c = raw_tls(&pki, s.addr, None).await;
        c.write_all(req.as_bytes()).await.expect("write");
        let (head, _) = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
    // carol (client cert, group devs) is bound by a ClusterRoleBinding with resourceNames.
    let crb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: read-web}\nrules:\n- apiGroups: ['']\n  resources: [pods]\n  resourceNames: [web]\n  verbs: [get]\n---\n\
apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: devs-read-web}\nsubjects:\n- {kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}\nroleRef: {kind: ClusterRole, name: read-web, apiGroup: rbac.authorization.k8s.io}\n";
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(crb))
            .await
            .0
    );
    let (st, _, _) = http_once(
        &pki,
        s.addr,
        Some("carol"),
        b"GET /api/v1/namespaces/default/pods/web HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(st, 200);
    let (st, _, _) = http_once(
        &pki,
        s.addr,
        Some("carol"),
        b"GET /api/v1/namespaces/default/pods/other HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(st, 403);
    // system:authenticated may read discovery and version.
    let (st, _, _) = http_once(
        &pki,
        s.addr,
        None,
        b"GET /version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bob-token\r\n\r\n",
    )
    .await;
    assert_eq!(st, 200);

    // Hostile input: huge headers, huge body, huge names, garbage, bad JSON.
    let big_header = format!("GET /api/v1/pods HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\nX-Big: {}\r\n\r\n", "a".repeat(400 * 1024));
    let mut c = raw_tls(&pki, s.addr, None).await;
    let _ = c.write_all(big_header.as_bytes()).await;
    let (head, _) = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    let body = "x".repeat(4 * 1024 * 1024);
    let req = format!("POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let (st, _, msg) = http_once(&pki, s.addr, None, req.as_bytes()).await;
    assert_eq!(st, 413, "{msg}");
    let req = format!("GET /api/v1/namespaces/default/pods/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n\r\n", "n".repeat(5000));
    let (st, _, _) = http_once(&pki, s.addr, None, req.as_bytes()).await;
    assert_eq!(st, 400);
    let long_name = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {}}}\nspec:\n  containers: [{{name: app, image: host}}]\n", "a".repeat(300));
    let r = s
        .kubectl_stdin("admin", &["create", "-f", "-"], Some(&long_name))
        .await;
    assert!(
        r.2.contains("is invalid: metadata.name: Invalid value")
            && r.2.contains("must be no more than 253 characters"),
        "{}",
        r.2
    );
    let req = "POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"kind\":[";
    let (st, _, _) = http_once(&pki, s.addr, None, req.as_bytes()).await;
    assert_eq!(st, 400);
    let (st, _, _) = http_once(&pki, s.addr, None, b"\x00\x01GARBAGE \xff\xfe\r\n\r\n").await;
    assert!((400..500).contains(&st), "{st}");
    let (st, _, _) = http_once(&pki, s.addr, None, b"GET /api/v1/namespaces/default/pods/web%ZZ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n\r\n").await;
    assert!((400..500).contains(&st), "{st}");
    // Still serving.
    let r = s
        .kubectl("admin", &["get", "pod", "web", "-o", "name"])
        .await;
    assert_eq!(r.1.trim(), "pod/web");
    s.stop().await;
}
