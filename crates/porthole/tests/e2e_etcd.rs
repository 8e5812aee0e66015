//! Two `porthole apiserver` processes on one real etcd (`--etcd-servers`), a node agent
//! registered through one of them, and real kubectl and `porthole port-forward` through both:
//! a watch on one server shows what is written through the other, a stale write through one
//! is a 409 after a write through the other, port-forward through either reaches the pod,
//! etcd going away is a 503 with a Status body (and comes back without a restart), and an
//! unreachable etcd at start is a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use porthole_test::etcd::Etcd;
use porthole_test::{example, http_get, Child, Cluster, Forward, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// The PKI of Contract 3, from one `porthole up` run.
fn pki(work: &Path) -> PathBuf {
    Cluster::up(Path::new(bin()), work, &[])
        .unwrap()
        .stop()
        .unwrap();
    work.join("data")
}

fn apiserver(name: &str, data: &Path, etcd: &str, log_dir: &Path) -> Result<(Child, String)> {
    let mut cmd = Command::new(bin());
    cmd.args([
        "apiserver",
        "--listen=127.0.0.1:0",
        &format!("--etcd-servers={etcd}"),
        &format!("--token-auth-file={}", data.join("tokens.csv").display()),
        "--etcd-request-timeout=2s",
    ])
    .args(porthole_test::apiserver_pki_args(&data.join("pki")));
    let mut child = Child::spawn(name, cmd, log_dir)?;
    let url = child.wait_for_line(porthole_test::READY_TIMEOUT, |l| {
        l.strip_prefix("porthole apiserver listening on ")
            .map(str::to_string)
    })?;
    Ok((child, url))
}

fn node(data: &Path, server: &str, log_dir: &Path) -> Result<Child> {
    let p = |f: &str| data.join("pki").join(f).display().to_string();
    let mut cmd = Command::new(bin());
    cmd.args([
        "node",
        "--listen=127.0.0.1:0",
        "--node-name=porthole-node",
        &format!("--data-dir={}", data.display()),
        &format!("--api-server={server}"),
        &format!("--api-ca-file={}", p("ca.crt")),
        &format!("--client-cert-file={}", p("node-porthole-node-client.crt")),
        &format!("--client-key-file={}", p("node-porthole-node-client.key")),
        &format!("--tls-cert-file={}", p("node-porthole-node.crt")),
        &format!("--tls-private-key-file={}", p("node-porthole-node.key")),
        &format!("--client-ca-file={}", p("ca.crt")),
    ]);
    let mut child = Child::spawn("node", cmd, log_dir)?;
    child.wait_for_line(porthole_test::READY_TIMEOUT, |l| {
        l.starts_with("porthole node porthole-node listening on ")
            .then_some(())
    })?;
    Ok(child)
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn cmd(&self, server: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--server")
            .arg(server)
            .arg("--cache-dir")
            .arg(&self.cache);
        c
    }
    fn run(&self, server: &str, args: &[&str]) -> Result<String> {
        let out = self.cmd(server).args(args).output()?;
        porthole_test::expect_success(&format!("kubectl {}", args.join(" ")), &out)
    }
    fn fails(&self, server: &str, args: &[&str]) -> Result<String> {
        let out = self.cmd(server).args(args).output()?;
        ensure!(
            !out.status.success(),
            "kubectl {} should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn two_apiservers_share_one_etcd() {
    porthole_test::require_root("two_apiservers_share_one_etcd");
    let work = TempDir::new("etcd-e2e").unwrap();
    let data = pki(work.path());
    let mut etcd = Etcd::start_local(work.path()).unwrap();
    let (mut one, url_one) =
        apiserver("apiserver-1", &data, &etcd.client_url(), work.path()).unwrap();
    let (mut two, url_two) =
        apiserver("apiserver-2", &data, &etcd.client_url(), work.path()).unwrap();
    let mut node = node(&data, &url_one, work.path()).unwrap();
    let clients = porthole_test::Clients::from_env().unwrap();
    let k = Kubectl {
        bin: clients.kubectl.clone(),
        kubeconfig: data.join("kubeconfig"),
        cache: work.path().join("kube-cache"),
    };

    let res = (|| -> Result<()> {
        k.run(
            &url_two,
            &[
                "wait",
                "--for=condition=Ready",
                "node/porthole-node",
                "--timeout=60s",
            ],
        )
        .context("the node registered through server 1 is Ready through server 2")?;

        // A watch on server 2 shows a pod created through server 1.
        let mut watch_cmd = k.cmd(&url_two);
        watch_cmd.args(["get", "pods", "--watch", "--output=name"]);
        let mut watch = Child::spawn("kubectl-watch", watch_cmd, work.path())?;
        k.run(
            &url_one,
            &["create", "-f", &example("web.yaml").display().to_string()],
        )?;
        watch
            .wait_for_line(Duration::from_secs(20), |l| {
                (l.trim() == "pod/web").then_some(())
            })
            .context("the watch on server 2 shows pod/web created through server 1")?;
        drop(watch);
        k.run(
            &url_two,
            &["wait", "--for=condition=Ready", "pod/web", "--timeout=90s"],
        )?;

        // A stale write through server 2 after a write through server 1: 409, not lost.
        let stale = k.run(&url_two, &["get", "pod/web", "-o", "json"])?;
        k.run(&url_one, &["label", "pod/web", "written-by=one"])?;
        let stale_file = work.path().join("stale.json");
        std::fs::write(&stale_file, stale)?;
        let err = k.fails(
            &url_two,
            &["replace", "-f", &stale_file.display().to_string()],
        )?;
        ensure!(
            err.contains("Conflict") || err.contains("has been modified"),
            "a stale replace is a conflict: {err}"
        );
        let labels = k.run(
            &url_two,
            &["get", "pod/web", "-o", "jsonpath={.metadata.labels}"],
        )?;
        ensure!(
            labels.contains("written-by"),
            "the first write survived: {labels}"
        );

        // Port-forward through either server reaches the pod on the node.
        for (name, server) in [("pf-via-1", &url_one), ("pf-via-2", &url_two)] {
            let mut cmd = Command::new(&k.bin);
            cmd.arg("--kubeconfig").arg(&k.kubeconfig).args([
                "--server",
                server,
                "port-forward",
                "pod/web",
                ":8000",
            ]);
            Forward::with(name, cmd, work.path(), 8000, |port| {
                let (status, _) = http_get(port, "/")?;
                ensure!(status == 200, "GET / through {server}: {status}");
                Ok(())
            })?;
        }
        let mut cmd = Command::new(bin());
        cmd.env("KUBECONFIG", &k.kubeconfig).args([
            "port-forward",
            "--server",
            &url_two,
            "web",
            ":8000",
        ]);
        Forward::with("porthole-pf-via-2", cmd, work.path(), 8000, |port| {
            let (status, _) = http_get(port, "/")?;
            ensure!(
                status == 200,
                "porthole port-forward through server 2: {status}"
            );
            Ok(())
        })?;

        // etcd goes away: 503 with a Status body (kubectl shows its reason), no crash.
        etcd.kill();
        let err = k.fails(&url_one, &["get", "pods", "--request-timeout=20s"])?;
        ensure!(
            err.contains("ServiceUnavailable") || err.contains("unavailable"),
            "a store outage is a 503 the user can read: {err}"
        );
        ensure!(
            one.wait_timeout(Duration::from_millis(1)).is_err(),
            "server 1 is still running while etcd is down"
        );
        // It comes back: both servers answer again without a restart, nothing lost.
        etcd.start()?;
        for server in [&url_one, &url_two] {
            let pods = k.run(
                server,
                &["get", "pods", "-o", "name", "--request-timeout=20s"],
            )?;
            ensure!(
                pods.contains("pod/web"),
                "pod/web survived the outage ({server}): {pods}"
            );
        }
        Ok(())
    })();
    node.signal(Signal::SIGTERM).ok();
    let node_stop = node.wait_timeout(porthole_test::STOP_TIMEOUT);
    for s in [&mut one, &mut two] {
        s.signal(Signal::SIGTERM).ok();
    }
    let one_stop = one.wait_timeout(porthole_test::STOP_TIMEOUT);
    let two_stop = two.wait_timeout(porthole_test::STOP_TIMEOUT);
    if let Err(e) = res {
        panic!(
            "{e:#}\n\n{}\n\n{}\n\n{}",
            one.report(),
            two.report(),
            node.report()
        );
    }
    for (what, st) in [
        ("node", node_stop),
        ("apiserver 1", one_stop),
        ("apiserver 2", two_stop),
    ] {
        let st = st.unwrap_or_else(|e| panic!("{what} did not stop: {e:#}"));
        assert!(st.success(), "{what} exits 0 on SIGTERM: {st:?}");
    }
}

#[test]
fn unreachable_etcd_at_start_is_a_clear_error() {
    let work = TempDir::new("etcd-unreachable").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    // The serving files are checked first, so give real ones.
    let data = work.path().join("pki");
    std::fs::create_dir_all(&data).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(data.join("s.crt"), cert.cert.pem()).unwrap();
    std::fs::write(data.join("s.key"), cert.signing_key.serialize_pem()).unwrap();
    let out = Command::new(bin())
        .args([
            "apiserver",
            "--listen=127.0.0.1:0",
            &format!("--etcd-servers={url}"),
            "--etcd-request-timeout=1s",
            &format!("--tls-cert-file={}", data.join("s.crt").display()),
            &format!("--tls-private-key-file={}", data.join("s.key").display()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exits non-zero: {stderr}");
    assert!(stderr.contains(&url), "names the endpoint: {stderr}");
    assert!(stderr.contains("etcd"), "says what failed: {stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "never says it is serving"
    );
}
