//! Node lifecycle (heartbeats stop → NotReady, pods not Ready), `kubectl get -w` (Table
//! watch), `kubectl apply`, and `--anonymous-auth`.

use tokio::io::AsyncBufReadExt as _;

use crate::common::{http_once, Pki, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lifecycle_watch_table_and_apply() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let s = Server::start_with(&pki, tmp.path(), |a| {
        a.node_monitor_grace_period = std::time::Duration::from_secs(2);
        a.anonymous_auth = true;
    })
    .await;
    // A node whose last heartbeat is old, with a Ready pod on it.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus:\n  addresses: [{type: InternalIP, address: 127.0.0.1}]\n  conditions: [{type: Ready, status: 'True', lastHeartbeatTime: '2020-01-01T00:00:00Z', lastTransitionTime: '2020-01-01T00:00:00Z'}]\n";
    let r = s
        .kubectl_stdin("admin", &["create", "-f", "-"], Some(node))
        .await;
    assert!(r.0, "{r:?}");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  nodeName: n1\n  containers: [{name: app, image: host}]\n";
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(pod))
            .await
            .0
    );
    let r = s
        .patch_pod_status(
            "web",
            r#"{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}"#,
        )
        .await;
    assert!(r.0, "{r:?}");
    let r = s
        .kubectl(
            "admin",
            &[
                "wait",
                "--for=jsonpath={.status.conditions[0].status}=Unknown",
                "node/n1",
                "--timeout=20s",
            ],
        )
        .await;
    assert!(r.0, "node marked NotReady: {r:?}");
    let r = s
        .kubectl(
            "admin",
            &[
                "wait",
                "--for=condition=Ready=false",
                "pod/web",
                "--timeout=20s",
            ],
        )
        .await;
    assert!(r.0, "pod marked not Ready: {r:?}");
    let r = s.kubectl("admin", &["get", "nodes"]).await;
    assert!(r.1.contains("n1     NotReady"), "{}", r.1);

    // kubectl get -w prints the Table rows as they change.
    let mut child = tokio::process::Command::new("/usr/bin/kubectl")
        .env("KUBECONFIG", &s.kubeconfig)
        .arg("--cache-dir")
        .arg(&s.cache)
        .args(["get", "pods", "-w"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl get -w");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("line within 20s")
            .expect("read")
            .expect("kubectl still running")
    };
    assert!(next().await.starts_with("NAME   READY   STATUS"));
    assert!(next().await.starts_with("web    0/1     Running"));
    let pod2 = "apiVersion: v1\nkind: Pod\nmetadata: {name: web2}\nspec:\n  schedulerName: none\n  containers: [{name: app, image: host}]\n";
    assert!(
        s.kubectl_stdin("admin", &["create", "-f", "-"], Some(pod2))
            .await
            .0
    );
    assert!(next().await.starts_with("web2   0/1     Pending"));
    let _ = child.kill().await;

    // kubectl apply: create, then a change through its patch.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";
    let r = s
        .kubectl_stdin("admin", &["apply", "-f", "-"], Some(svc))
        .await;
    assert!(r.0 && r.1.contains("service/api created"), "{r:?}");
    let r = s
        .kubectl_stdin(
            "admin",
            &["apply", "-f", "-"],
            Some(&svc.replace("port: 80", "port: 81")),
        )
        .await;
    assert!(r.0 && r.1.contains("service/api configured"), "{r:?}");
    let r = s
        .kubectl(
            "admin",
            &["get", "svc", "api", "-o", "jsonpath={.spec.ports[0].port}"],
        )
        .await;
    assert_eq!(r.1, "81");

    // A bound pod whose node is gone is not left Terminating forever (PodGC).
    assert!(s.kubectl("admin", &["delete", "node", "n1"]).await.0);
    let r = s
        .kubectl("admin", &["delete", "pod", "web", "--timeout=20s"])
        .await;
    assert!(r.0, "{r:?}");

    // Anonymous access (enabled here) gets health but not resources.
    let (st, _, body) = http_once(
        &pki,
        s.addr,
        None,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!((st, body.as_str()), (200, "ok"));
    let (st, _, body) = http_once(
        &pki,
        s.addr,
        None,
        b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body.contains("User \\\"system:anonymous\\\" cannot list resource \\\"pods\\\""),
        "{body}"
    );
    s.stop().await;
}
