//! Watches (resume from a resourceVersion, selector transitions) and persistence across a
//! restart on the same data dir (objects and resourceVersions survive; old revisions are 410;
//! two servers on one dir are refused).

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{http_once, raw_tls, read_head, Pki, Server};

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME, labels: {app: web}}\nspec:\n  schedulerName: none\n  containers: [{name: app, image: host}]\n";

struct WatchStream {
    conn: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: String,
}

impl WatchStream {
    async fn open(pki: &Pki, s: &Server, query: &str) -> (String, Self) {
        let mut conn = raw_tls(pki, s.addr, Some("admin")).await;
        let req = format!(
            "GET /api/v1/namespaces/default/pods?watch=1&{query} HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.expect("write");
        let (head, rest) = read_head(&mut conn).await;
        (
            head,
            WatchStream {
                conn,
                buf: String::from_utf8_lossy(&rest).into_owned(),
            },
        )
    }

    /// Read until the stream has shown `needle`, returning everything read so far.
    async fn until(&mut self, needle: &str) -> String {
        let mut chunk = [0u8; 8192];
        while !self.buf.contains(needle) {
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                self.conn.read(&mut chunk),
            )
            .await
            .unwrap_or_else(|_| panic!("watch showed {needle:?} within 20s; got {}", self.buf))
            .expect("read watch");
            assert!(n > 0, "watch ended before {needle:?}: {}", self.buf);
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        std::mem::take(&mut self.buf)
    }
}

fn rv_of(json: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    v["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_and_state_survives_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let s = Server::start(&pki, tmp.path()).await;
    assert!(
        s.kubectl_stdin(
            "admin",
            &["create", "-f", "-"],
            Some(&POD.replace("NAME", "a"))
        )
        .await
        .0
    );
    let a = s.kubectl("admin", &["get", "pod", "a", "-o", "json"]).await;
    let rv_a = rv_of(&a.1);

    // Resume from rv_a: only later events arrive.
    let (head, mut w) = WatchStream::open(&pki, &s, &format!("resourceVersion={rv_a}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Selector watches: ADDED when an object starts matching, DELETED when it stops.
    let (_, mut sel) = WatchStream::open(
        &pki,
        &s,
        &format!("resourceVersion={rv_a}&labelSelector=tier%3Dfe"),
    )
    .await;
    assert!(
        s.kubectl_stdin(
            "admin",
            &["create", "-f", "-"],
            Some(&POD.replace("NAME", "b"))
        )
        .await
        .0
    );
    let got = w.until("\"name\":\"b\"").await;
    assert!(got.contains("{\"type\":\"ADDED\""), "{got}");
    assert!(
        !got.contains("\"name\":\"a\""),
        "resume sends nothing at or before {rv_a}: {got}"
    );
    assert!(
        s.kubectl("admin", &["label", "pod", "a", "tier=fe"])
            .await
            .0
    );
    let got = sel.until("\"name\":\"a\"").await;
    assert!(got.contains("{\"type\":\"ADDED\""), "{got}");
    assert!(s.kubectl("admin", &["label", "pod", "a", "tier-"]).await.0);
    let got = sel.until("\"name\":\"a\"").await;
    assert!(got.contains("{\"type\":\"DELETED\""), "{got}");
    let got = w.until("\"tier\":\"fe\"").await;
    assert!(got.contains("{\"type\":\"MODIFIED\""), "{got}");

    // A second server on the same data dir is refused with a clear message.
    let cfg = porthole_apiserver::Config::from_args(&crate::common::args(
        &pki,
        &tmp.path().join("data"),
        &tmp.path().join("a2.log"),
    ))
    .expect("cfg");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = porthole_apiserver::run(cfg, l, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("second server on one data dir");
    let msg = err.to_string();
    assert!(
        msg.contains("in use by another porthole apiserver") && msg.contains("--data-dir"),
        "{msg}"
    );

    let b = s.kubectl("admin", &["get", "pod", "b", "-o", "json"]).await;
    assert!(b.0, "get b: {b:?}");
    let rv_b = rv_of(&b.1);
    s.stop().await;
    drop((w, sel));

    let s = Server::start(&pki, tmp.path()).await;
    let b2 = s.kubectl("admin", &["get", "pod", "b", "-o", "json"]).await;
    assert!(b2.0, "get after restart: {b2:?}");
    assert_eq!(rv_of(&b2.1), rv_b, "resourceVersion survives the restart");
    let v: serde_json::Value = serde_json::from_str(&b2.1).expect("json");
    let uid_before: serde_json::Value = serde_json::from_str(&b.1).expect("json");
    assert_eq!(v["metadata"]["uid"], uid_before["metadata"]["uid"]);
    // History from before the restart is gone: 410 Expired, clients re-list.
    let (st, _, body) = http_once(&pki, s.addr, Some("admin"), format!("GET /api/v1/namespaces/default/pods?watch=1&resourceVersion={rv_a} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
    assert_eq!(st, 410, "{body}");
    assert!(body.contains("too old resource version"), "{body}");
    // New writes continue the sequence.
    assert!(
        s.kubectl_stdin(
            "admin",
            &["create", "-f", "-"],
            Some(&POD.replace("NAME", "c"))
        )
        .await
        .0
    );
    let c = s.kubectl("admin", &["get", "pod", "c", "-o", "json"]).await;
    assert!(rv_of(&c.1) > rv_b);
    // pods/binding assigns a node once; a second binding conflicts.
    let bind = "POST /api/v1/namespaces/default/pods/c/binding HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 67\r\n\r\n{\"apiVersion\":\"v1\",\"kind\":\"Binding\",\"target\":{\"name\":\"n9\"}}\n\n";
    let bind = bind.replace(
        "Content-Length: 67",
        &format!(
            "Content-Length: {}",
            bind.split("\r\n\r\n").nth(1).map_or(0, str::len)
        ),
    );
    let (st, _, body) = http_once(&pki, s.addr, Some("admin"), bind.as_bytes()).await;
    assert_eq!(st, 201, "{body}");
    let r = s
        .kubectl(
            "admin",
            &["get", "pod", "c", "-o", "jsonpath={.spec.nodeName}"],
        )
        .await;
    assert_eq!(r.1, "n9");
    let (st, _, _) = http_once(&pki, s.addr, Some("admin"), bind.as_bytes()).await;
    assert_eq!(st, 409);
    // Update with a stale resourceVersion is a 409 Conflict.
    let stale = b2.1.replace("\"app\": \"web\"", "\"app\": \"changed\"");
    let r = s
        .kubectl_stdin("admin", &["replace", "-f", "-"], Some(&stale))
        .await;
    assert!(r.0, "replace with the current rv works: {r:?}");
    let r = s
        .kubectl_stdin("admin", &["replace", "-f", "-"], Some(&stale))
        .await;
    assert!(
        r.2.contains("Error from server (Conflict)")
            && r.2.contains("the object has been modified"),
        "{}",
        r.2
    );
    s.stop().await;
}
