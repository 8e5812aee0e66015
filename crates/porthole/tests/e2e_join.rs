//! Nodes joining with a bootstrap token, as real processes: an API server on the PKI of
//! `porthole certs create`, `porthole token create` with the admin kubeconfig, and
//! `porthole node` run with exactly the join command it printed. The joined node serves a pod
//! that kubectl port-forwards to, keeps its certificates across a restart, and its identity
//! is scoped to its own pods. Wrong, expired and deleted tokens, a wrong CA pin and an
//! unreachable URL are refused with their messages, and the token is never sent when the pin
//! or the signature check fails (the audit log shows no bootstrap user at all).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use porthole_test::{example, http_get, write_file, Child, Forward, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// A control plane: the PKI of `porthole certs create` and one `porthole apiserver`.
struct ControlPlane {
    work: PathBuf,
    pki: PathBuf,
    server: String,
    apiserver: Option<Child>,
    kubectl: PathBuf,
    nodes: u32,
}

fn porthole(args: &[&str]) -> Result<Output> {
    Command::new(bin())
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run porthole {}", args.join(" ")))
}

impl ControlPlane {
    fn start(work: &Path) -> Result<ControlPlane> {
        let pki = work.join("pki");
        let pki_arg = pki.display().to_string();
        porthole_test::expect_success(
            "porthole certs create",
            &porthole(&[
                "certs",
                "create",
                "--dir",
                &pki_arg,
                "--apiserver-san",
                "127.0.0.1",
            ])?,
        )?;
        let p = |name: &str| pki.join(name).display().to_string();
        let mut cmd = Command::new(bin());
        cmd.args([
            "apiserver",
            "--listen=127.0.0.1:0",
            &format!("--data-dir={}", work.join("apiserver").display()),
            &format!("--tls-cert-file={}", p("apiserver.crt")),
            &format!("--tls-private-key-file={}", p("apiserver.key")),
            &format!("--client-ca-file={}", p("ca.crt")),
            &format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            &format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            &format!("--kubelet-certificate-authority={}", p("ca.crt")),
            &format!("--cluster-signing-cert-file={}", p("ca.crt")),
            &format!("--cluster-signing-key-file={}", p("ca.key")),
            &format!("--audit-log-path={}", work.join("audit.log").display()),
        ]);
        let mut apiserver = Child::spawn("apiserver", cmd, work)?;
        let server = apiserver.wait_for_line(porthole_test::READY_TIMEOUT, |l| {
            l.strip_prefix("porthole apiserver listening on ")
                .map(str::to_string)
        })?;
        // The real port is known now: write it into the admin kubeconfig.
        porthole_test::expect_success(
            "porthole certs create --server",
            &porthole(&["certs", "create", "--dir", &pki_arg, "--server", &server])?,
        )?;
        Ok(ControlPlane {
            work: work.to_path_buf(),
            pki,
            server,
            apiserver: Some(apiserver),
            kubectl: porthole_test::Clients::from_env()?.kubectl,
            nodes: 0,
        })
    }

    fn admin_kubeconfig(&self) -> String {
        self.pki.join("admin.kubeconfig").display().to_string()
    }

    /// `porthole token SUBCOMMAND ARGS --kubeconfig admin.kubeconfig`; stdout on success.
    fn token(&self, args: &[&str]) -> Result<String> {
        let kubeconfig = self.admin_kubeconfig();
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--kubeconfig", &kubeconfig]);
        porthole_test::expect_success(&format!("porthole {}", all.join(" ")), &porthole(&all)?)
    }

    /// `porthole token create ARGS`: the printed join command.
    fn token_create(&self, args: &[&str]) -> Result<JoinCommand> {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        let out = self.token(&all)?;
        let line = out.trim();
        ensure!(
            out.lines().count() == 1,
            "token create printed more than one line:\n{out}"
        );
        JoinCommand::parse(line)
    }

    fn kubectl_cmd(&self, kubeconfig: &str) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.work.join("kube-cache"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// kubectl as admin; stdout on success.
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl_cmd(&self.admin_kubeconfig())
            .args(args)
            .output()?;
        porthole_test::expect_success(&format!("kubectl {}", args.join(" ")), &out)
    }

    /// kubectl with a bearer token and no other credentials; the whole output.
    fn kubectl_with_token(&self, token: &str, args: &[&str]) -> Result<Output> {
        let kubeconfig = write_file(
            &self.work,
            "token.kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                self.server,
                self.pki.join("ca.crt").display()
            ),
        )?;
        Ok(self
            .kubectl_cmd(&kubeconfig.display().to_string())
            .args(args)
            .output()?)
    }

    /// A kubeconfig for a joined node's own client certificate.
    fn node_kubeconfig(&self, data_dir: &Path, node: &str) -> Result<String> {
        let pki = data_dir.join("pki");
        let path = write_file(
            &self.work,
            format!("{node}.kubeconfig"),
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: c\n",
                self.server,
                pki.join("ca.crt").display(),
                pki.join(format!("node-{node}-client.crt")).display(),
                pki.join(format!("node-{node}-client.key")).display(),
            ),
        )?;
        Ok(path.display().to_string())
    }

    /// `porthole node` with the join command's arguments plus ours.
    fn node_command(&self, args: &[String], node: &str, data_dir: &Path) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .arg(format!("--node-name={node}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg("--listen=127.0.0.1:0")
            .arg("--join-timeout=30s")
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Start a node and wait for its ready line.
    fn start_node(&mut self, args: &[String], node: &str, data_dir: &Path) -> Result<Child> {
        self.nodes += 1;
        let cmd = self.node_command(args, node, data_dir);
        let mut child = Child::spawn(&format!("node-{node}-{}", self.nodes), cmd, &self.work)?;
        let prefix = format!("porthole node {node} listening on https://127.0.0.1:");
        child.wait_for_line(porthole_test::READY_TIMEOUT, |l| {
            l.starts_with(&prefix).then_some(())
        })?;
        Ok(child)
    }

    /// Run a node that must fail: its exit status and everything it printed.
    fn failing_node(&mut self, args: &[String], node: &str) -> Result<String> {
        self.nodes += 1;
        let data_dir = self.work.join(format!("refused-{}", self.nodes));
        let cmd = self.node_command(args, node, &data_dir);
        let name = format!("node-{node}-{}", self.nodes);
        let mut child = Child::spawn(&name, cmd, &self.work)?;
        let status = child.wait_timeout(Duration::from_secs(60))?;
        let report = child.report();
        ensure!(
            !status.success(),
            "the node was expected to fail, but exited with {status}\n{report}"
        );
        ensure!(
            !report.contains("listening on"),
            "the refused node started serving:\n{report}"
        );
        ensure!(
            !data_dir.join("pki").exists(),
            "the refused node wrote {}",
            data_dir.join("pki").display()
        );
        Ok(report)
    }

    fn audit_log(&self) -> String {
        std::fs::read_to_string(self.work.join("audit.log")).unwrap_or_default()
    }

    fn report(&self) -> String {
        self.apiserver
            .as_ref()
            .map(Child::report)
            .unwrap_or_default()
    }

    /// SIGTERM the API server; it must exit 0.
    fn stop(&mut self) -> Result<()> {
        if let Some(mut a) = self.apiserver.take() {
            a.signal(Signal::SIGTERM)?;
            let status = a.wait_timeout(porthole_test::STOP_TIMEOUT)?;
            ensure!(
                status.success(),
                "apiserver exited with {status}\n{}",
                a.report()
            );
        }
        Ok(())
    }
}

/// `porthole node --join URL --token T --ca-cert-hash H`, parsed.
#[derive(Debug, Clone)]
struct JoinCommand {
    url: String,
    token: String,
    hash: String,
}

impl JoinCommand {
    fn parse(line: &str) -> Result<JoinCommand> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["porthole", "node", "--join", url, "--token", token, "--ca-cert-hash", hash] => {
                Ok(JoinCommand {
                    url: url.to_string(),
                    token: token.to_string(),
                    hash: hash.to_string(),
                })
            }
            _ => bail!("not a join command: {line:?}"),
        }
    }

    fn id(&self) -> &str {
        self.token.split('.').next().unwrap_or("")
    }

    /// The arguments after `porthole`, with the token and hash given.
    fn args_with(&self, url: &str, token: &str, hash: &str) -> Vec<String> {
        [
            "node",
            "--join",
            url,
            "--token",
            token,
            "--ca-cert-hash",
            hash,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn args(&self) -> Vec<String> {
        self.args_with(&self.url, &self.token, &self.hash)
    }
}

/// The CA pin computed by openssl, independently of our code (RFC 7469 SPKI hash).
fn openssl_pin(ca: &Path) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | sha256sum",
            ca.display()
        ))
        .output()
        .context("run openssl")?;
    let text = porthole_test::expect_success("openssl pin", &out)?;
    let hex = text.split_whitespace().next().unwrap_or("");
    ensure!(hex.len() == 64, "openssl printed {text:?}");
    Ok(format!("sha256:{hex}"))
}

fn files_of(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path())?,
        ));
    }
    out.sort();
    Ok(out)
}

fn csr_names(cp: &ControlPlane) -> Result<Vec<String>> {
    let out = cp.kubectl(&["get", "csr", "-o", "jsonpath={.items[*].metadata.name}"])?;
    Ok(out.split_whitespace().map(str::to_string).collect())
}

/// The web pod through kubectl port-forward: GET / answers 200.
fn forward_to_web(cp: &ControlPlane, name: &str) -> Result<()> {
    let mut cmd = cp.kubectl_cmd(&cp.admin_kubeconfig());
    cmd.args(["port-forward", "pod/web", ":8000"]);
    Forward::with(name, cmd, &cp.work, 8000, |port| {
        let (status, _) = http_get(port, "/")?;
        ensure!(status == 200, "GET / through the joined node: {status}");
        Ok(())
    })
}

/// kubectl's words for a 401 (with or without cached discovery).
fn unauthorized(out: &Output) -> bool {
    !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("You must be logged in to the server")
}

/// A command that must fail with `want` in its output (and must not hang).
fn expect_refused(what: &str, cmd: Command, work: &Path, want: &str) -> Result<()> {
    let mut child = Child::spawn(what, cmd, work)?;
    let status = child.wait_timeout(Duration::from_secs(60))?;
    let report = child.report();
    ensure!(
        !status.success(),
        "{what} succeeded but must be refused\n{report}"
    );
    ensure!(report.contains(want), "{what}: want {want:?} in\n{report}");
    Ok(())
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn node_joins_serves_restarts_and_is_scoped() {
    porthole_test::require_root("node_joins_serves_restarts_and_is_scoped");
    let work = TempDir::new("join").unwrap();
    let mut cp = ControlPlane::start(work.path()).unwrap();
    let n1_dir = work.path().join("n1");
    let mut node: Option<Child> = None;
    let res = (|| -> Result<()> {
        let join = cp.token_create(&["--description", "e2e join"])?;
        ensure!(
            join.url == cp.server,
            "join URL {} vs {}",
            join.url,
            cp.server
        );
        ensure!(
            join.hash == openssl_pin(&cp.pki.join("ca.crt"))?,
            "--ca-cert-hash {} differs from openssl's",
            join.hash
        );
        let list = cp.token(&["list"])?;
        let row = list
            .lines()
            .find(|l| l.starts_with(&join.token))
            .ok_or_else(|| anyhow!("token list lacks the token:\n{list}"))?;
        ensure!(
            row.contains("authentication,signing") && row.contains("e2e join"),
            "{row}"
        );
        ensure!(
            list.lines().next().is_some_and(|h| h.starts_with("TOKEN")),
            "{list}"
        );

        // Join with exactly the printed command.
        node = Some(cp.start_node(&join.args(), "n1", &n1_dir)?);
        cp.kubectl(&["wait", "--for=condition=Ready", "node/n1", "--timeout=60s"])?;
        for key in ["node-n1.key", "node-n1-client.key"] {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(n1_dir.join("pki").join(key))?.permissions(),
            ) & 0o777;
            ensure!(mode == 0o600, "{key} has mode {mode:o}");
        }
        let csrs = cp.kubectl(&[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.spec.signerName} {.spec.username} {.status.conditions[0].reason}{\"\\n\"}{end}",
        ])?;
        let id = join.id();
        for signer in [
            "kubernetes.io/kube-apiserver-client-kubelet",
            "kubernetes.io/kubelet-serving",
        ] {
            let want = format!("{signer} system:bootstrap:{id} AutoApproved");
            ensure!(csrs.lines().any(|l| l == want), "no {want:?} in\n{csrs}");
        }

        // A pod on the joined node, port-forwarded with kubectl.
        cp.kubectl(&["create", "-f", &example("web.yaml").display().to_string()])?;
        cp.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=90s"])?;
        let bound = cp.kubectl(&["get", "pod", "web", "-o", "jsonpath={.spec.nodeName}"])?;
        ensure!(bound == "n1", "web is on {bound:?}");
        forward_to_web(&cp, "kubectl-pf-1")?;

        // The node's identity: its own pods only, no port-forward, no pod creation.
        let ghost = write_file(
            &cp.work,
            "ghost.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: ghost}\nspec:\n  nodeName: other-node\n  containers: [{name: c, image: x, command: [sleep, '600']}]\n",
        )?;
        cp.kubectl(&["create", "-f", &ghost.display().to_string()])?;
        let as_node = cp.node_kubeconfig(&n1_dir, "n1")?;
        let node_kubectl = |args: &[&str]| cp.kubectl_cmd(&as_node).args(args).output();
        let own = node_kubectl(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "name",
        ])?;
        let own = porthole_test::expect_success("node lists its own pods", &own)?;
        ensure!(own.trim() == "pod/web", "{own}");
        for (args, want) in [
            (
                &["get", "pods", "-A"][..],
                "node \"n1\" can only list pods with fieldSelector spec.nodeName=n1",
            ),
            (
                &[
                    "get",
                    "pods",
                    "-A",
                    "--field-selector",
                    "spec.nodeName=other-node",
                ][..],
                "node \"n1\" can only list pods with fieldSelector spec.nodeName=n1",
            ),
            (
                &["get", "pod", "ghost"][..],
                "node \"n1\" can only read pods bound to it",
            ),
            (
                &["delete", "pod", "ghost", "--wait=false"][..],
                "node \"n1\" can only modify pods bound to it",
            ),
            (
                &["create", "-f", &example("echo.yaml").display().to_string()][..],
                "cannot create resource \"pods\"",
            ),
            (
                &["get", "secrets", "-A"][..],
                "cannot list resource \"secrets\"",
            ),
        ] {
            let out = node_kubectl(args)?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                !out.status.success() && text.contains(want),
                "kubectl {} as node n1: want {want:?}, got {}:\n{text}",
                args.join(" "),
                out.status
            );
        }
        let mut pf = cp.kubectl_cmd(&as_node);
        pf.args(["port-forward", "pod/web", ":8000"]);
        expect_refused(
            "node-port-forward",
            pf,
            &cp.work,
            "cannot create resource \"pods/portforward\"",
        )?;

        // Restart: the same data dir, no token; the certificates are reused as they are.
        let files_before = files_of(&n1_dir.join("pki"))?;
        let csrs_before = csr_names(&cp)?;
        let mut n = node.take().ok_or_else(|| anyhow!("node not running"))?;
        let pods_of_first_run = porthole_test::descendants(n.pid());
        n.signal(Signal::SIGTERM)?;
        let status = n.wait_timeout(porthole_test::STOP_TIMEOUT)?;
        ensure!(
            status.success(),
            "node exited with {status} after SIGTERM\n{}",
            n.report()
        );
        porthole_test::check_no_leftovers(&n1_dir, &pods_of_first_run)?;
        let url_only: Vec<String> = ["node", "--join", &join.url]
            .iter()
            .map(|s| s.to_string())
            .collect();
        node = Some(cp.start_node(&url_only, "n1", &n1_dir)?);
        ensure!(
            files_of(&n1_dir.join("pki"))? == files_before,
            "the restart changed the node's files"
        );
        ensure!(
            csr_names(&cp)? == csrs_before,
            "the restart sent new certificate requests"
        );
        cp.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=90s"])?;
        forward_to_web(&cp, "kubectl-pf-2")?;

        // Deleting the token: it no longer authenticates, and a new join with it fails.
        let deleted = cp.token(&["delete", join.id()])?;
        ensure!(
            deleted.trim() == format!("bootstrap token \"{}\" deleted", join.id()),
            "{deleted}"
        );
        let list = cp.token(&["list"])?;
        ensure!(!list.contains(&join.token), "token still listed:\n{list}");
        let out = cp.kubectl_with_token(&join.token, &["get", "csr"])?;
        ensure!(
            unauthorized(&out),
            "a deleted token still authenticates: {out:?}"
        );
        let report = cp.failing_node(&join.args(), "n2")?;
        ensure!(
            report.contains(&format!(
                "bootstrap token {} is not valid on this cluster",
                join.id()
            )) || report.contains("the API server refused the bootstrap token (401 Unauthorized)"),
            "the deleted token's join: {report}"
        );
        Ok(())
    })();
    let node_report = node.as_ref().map(Child::report).unwrap_or_default();
    let stopped = (|| -> Result<()> {
        let mut before = BTreeSet::new();
        if let Some(mut n) = node.take() {
            before = porthole_test::descendants(n.pid());
            n.signal(Signal::SIGTERM)?;
            let status = n.wait_timeout(porthole_test::STOP_TIMEOUT)?;
            ensure!(status.success(), "node exited with {status}");
        }
        cp.stop()?;
        porthole_test::check_no_leftovers(work.path(), &before)
    })();
    if let Err(e) = res {
        panic!("{e:#}\n\n{node_report}\n\n{}", cp.report());
    }
    stopped.unwrap();
}

#[test]
fn joins_with_bad_credentials_are_refused_before_the_token_is_sent() {
    let work = TempDir::new("join-refused").unwrap();
    let mut cp = ControlPlane::start(work.path()).unwrap();
    let res = (|| -> Result<()> {
        let join = cp.token_create(&[])?;

        // A wrong pin: the CA is refused and the token stays here.
        let zeros = format!("sha256:{}", "0".repeat(64));
        let report = cp.failing_node(&join.args_with(&join.url, &join.token, &zeros), "n1")?;
        ensure!(
            report.contains(&format!(
                "the API server's CA does not match --ca-cert-hash {zeros}"
            )) && report.contains("check the join command")
                && report.contains(&join.hash),
            "wrong pin: {report}"
        );

        // A token the cluster does not know, and a known id with the wrong secret.
        let unknown = if join.id() == "zzzzzz" {
            "yyyyyy"
        } else {
            "zzzzzz"
        };
        let report = cp.failing_node(
            &join.args_with(
                &join.url,
                &format!("{unknown}.0123456789abcdef"),
                &join.hash,
            ),
            "n1",
        )?;
        ensure!(
            report.contains(&format!(
                "bootstrap token {unknown} is not valid on this cluster"
            )) && report.contains("porthole token create"),
            "unknown token: {report}"
        );
        let wrong_secret = format!("{}.0000000000000000", join.id());
        let report =
            cp.failing_node(&join.args_with(&join.url, &wrong_secret, &join.hash), "n1")?;
        ensure!(
            report.contains(&format!(
                "the secret of bootstrap token {} does not match the cluster's signature",
                join.id()
            )),
            "wrong secret: {report}"
        );
        // The server's side of a wrong secret: 401.
        let out = cp.kubectl_with_token(&wrong_secret, &["get", "csr"])?;
        ensure!(unauthorized(&out), "a wrong secret authenticated: {out:?}");

        // An expired token: wait (polling `token list`) until the cleaner has removed it.
        let short = cp.token_create(&["--ttl", "1s"])?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while cp.token(&["list"])?.contains(&short.token) {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the expired token was not removed within 30s"
            );
            // Polling a condition that has no signal, bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = cp.kubectl_with_token(&short.token, &["get", "csr"])?;
        ensure!(
            unauthorized(&out),
            "an expired token authenticated: {out:?}"
        );
        let report = cp.failing_node(&short.args(), "n1")?;
        ensure!(
            report.contains(&format!(
                "bootstrap token {} is not valid on this cluster",
                short.id()
            )) && report.contains("has expired"),
            "expired token: {report}"
        );

        // Nothing listens on port 1.
        let report = cp.failing_node(
            &join.args_with("https://127.0.0.1:1", &join.token, &join.hash),
            "n1",
        )?;
        ensure!(
            report.contains("cannot reach the API server at https://127.0.0.1:1"),
            "unreachable: {report}"
        );

        // A malformed token is bad usage (exit 64) and names the expected form.
        let mut cmd = cp.node_command(
            &join.args_with(&join.url, "not-a-token", &join.hash),
            "n1",
            &cp.work.join("malformed"),
        );
        let out = cmd.stdin(Stdio::null()).output()?;
        ensure!(out.status.code() == Some(64), "malformed token: {out:?}");
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("[a-z0-9]{6}.[a-z0-9]{16}"),
            "{out:?}"
        );

        // None of the refused joins sent a token: no request was made as a bootstrap user.
        let audit = cp.audit_log();
        ensure!(!audit.is_empty(), "the audit log is empty");
        ensure!(
            !audit.contains("system:bootstrap:"),
            "a refused join sent its token:\n{audit}"
        );

        // What a valid token may do: request node certificates, nothing else.
        let out = cp.kubectl_with_token(&join.token, &["get", "pods", "-A"])?;
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains(&format!(
                "User \"system:bootstrap:{}\" cannot list resource \"pods\"",
                join.id()
            )),
            "{out:?}"
        );
        let out = cp.kubectl_with_token(&join.token, &["get", "csr"])?;
        ensure!(
            String::from_utf8_lossy(&out.stderr)
                .contains("list and watch need fieldSelector=metadata.name="),
            "{out:?}"
        );
        let csr = admin_csr_manifest()?;
        let file = write_file(&cp.work, "bad-csr.yaml", &csr)?;
        let out =
            cp.kubectl_with_token(&join.token, &["create", "-f", &file.display().to_string()])?;
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("may only request node certificates")
                && String::from_utf8_lossy(&out.stderr).contains("O=system:nodes"),
            "{out:?}"
        );
        Ok(())
    })();
    let report = cp.report();
    let stopped = cp.stop();
    if let Err(e) = res {
        panic!("{e:#}\n\n{report}");
    }
    stopped.unwrap();
}

/// A CSR asking the node client signer for `system:masters`: a bootstrap token must not get it.
fn admin_csr_manifest() -> Result<String> {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:n1");
    let pem = params.serialize_request(&key)?.pem()?;
    Ok(format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: sneaky}}\nspec:\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [digital signature, client auth]\n  request: {}\n",
        base64::engine::general_purpose::STANDARD.encode(pem)
    ))
}

/// What an admin does by hand with kubectl's typed (protobuf) commands: `certificate approve`
/// and `deny` on requests that are not auto-approved, `create secret generic`, and reading a
/// bootstrap token Secret written with `stringData`.
#[test]
fn admin_approves_and_denies_requests_with_kubectl() {
    let work = TempDir::new("join-admin").unwrap();
    let mut cp = ControlPlane::start(work.path()).unwrap();
    let res = (|| -> Result<()> {
        for name in ["by-hand", "refused"] {
            let manifest = node_csr_manifest(name, "system:node:manual")?;
            let file = write_file(&cp.work, format!("{name}.yaml"), &manifest)?;
            cp.kubectl(&["create", "-f", &file.display().to_string()])?;
        }
        let pending = cp.kubectl(&["get", "csr", "by-hand", "--no-headers"])?;
        ensure!(
            pending.contains("Pending") && pending.contains(" admin "),
            "{pending}"
        );
        cp.kubectl(&["certificate", "approve", "by-hand"])?;
        cp.kubectl(&["certificate", "deny", "refused"])?;
        cp.kubectl(&[
            "wait",
            "--for=jsonpath={.status.certificate}",
            "csr/by-hand",
            "--timeout=30s",
        ])?;
        let rows = cp.kubectl(&["get", "csr", "--no-headers"])?;
        ensure!(
            rows.lines()
                .any(|l| l.starts_with("by-hand ") && l.ends_with("Approved,Issued"))
                && rows
                    .lines()
                    .any(|l| l.starts_with("refused ") && l.ends_with("Denied")),
            "{rows}"
        );
        let issued = cp.kubectl(&[
            "get",
            "csr",
            "refused",
            "-o",
            "jsonpath={.status.certificate}",
        ])?;
        ensure!(issued.is_empty(), "a denied request was signed");

        cp.kubectl(&["create", "secret", "generic", "s1", "--from-literal=a=b"])?;
        let secret = cp.kubectl(&["get", "secret", "s1", "-o", "jsonpath={.type} {.data.a}"])?;
        ensure!(secret == "Opaque Yg==", "{secret}");
        let join = cp.token_create(&["--description", "by admin"])?;
        let data = cp.kubectl(&[
            "get",
            "secret",
            "-n",
            "kube-system",
            &format!("bootstrap-token-{}", join.id()),
            "-o",
            "jsonpath={.type} {.data.token-id} {.stringData}",
        ])?;
        use base64::Engine as _;
        let id_b64 = base64::engine::general_purpose::STANDARD.encode(join.id());
        ensure!(
            data.trim() == format!("bootstrap.kubernetes.io/token {id_b64}"),
            "stringData was not folded into data: {data:?}"
        );
        Ok(())
    })();
    let report = cp.report();
    let stopped = cp.stop();
    if let Err(e) = res {
        panic!("{e:#}\n\n{report}");
    }
    stopped.unwrap();
}

/// A node client certificate request created by someone who is not that node.
fn node_csr_manifest(name: &str, cn: &str) -> Result<String> {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let pem = params.serialize_request(&key)?.pem()?;
    Ok(format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [digital signature, client auth]\n  request: {}\n",
        base64::engine::general_purpose::STANDARD.encode(pem)
    ))
}
