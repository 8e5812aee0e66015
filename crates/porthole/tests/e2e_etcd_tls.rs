//! `porthole apiserver` on a real etcd that serves TLS and demands client certificates
//! (`--client-cert-auth`), as kube-apiserver runs on kubeadm's etcd: `--etcd-cafile`,
//! `--etcd-certfile` and `--etcd-keyfile` with certificates made by the `openssl` CLI. kubectl
//! writes and reads a ConfigMap, the object is in etcd under `/registry/`, `/readyz` is 200;
//! a client certificate from another CA, no `--etcd-cafile`, and a missing `--etcd-certfile`
//! each stop the server at once with a message naming the endpoint and what to fix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use porthole_test::etcd::{Etcd, EtcdTls};
use porthole_test::{expect_success, Child, Cluster, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// How long a failing start may take: two rounds of `--etcd-request-timeout=2s` and change.
const FAIL_FAST: Duration = Duration::from_secs(20);

/// The PKI of Contract 3, from one `porthole up` run.
fn pki(work: &Path) -> PathBuf {
    Cluster::up(Path::new(bin()), work, &[])
        .unwrap()
        .stop()
        .unwrap();
    work.join("data")
}

/// etcd's PKI: its CA, its serving certificate, the API server's client certificate, and a
/// client certificate from an unrelated CA.
struct EtcdPki {
    ca: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    client_crt: PathBuf,
    client_key: PathBuf,
    other_client_crt: PathBuf,
    other_client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("run openssl (apt-get install openssl)")?;
    expect_success(&format!("openssl {}", args.join(" ")), &out).map(|_| ())
}

/// An EC P-256 key (PKCS#8) in `dir/NAME.key`.
fn key(dir: &Path, name: &str) -> Result<PathBuf> {
    let file = format!("{name}.key");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &file,
        ],
    )?;
    Ok(dir.join(file))
}

/// A self-signed CA in `dir/NAME.crt` (and its key).
fn make_ca(dir: &Path, name: &str) -> Result<PathBuf> {
    key(dir, name)?;
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &crt,
        ],
    )?;
    Ok(dir.join(crt))
}

/// A certificate `dir/NAME.crt` for CN `cn`, signed by CA `ca_name`, with the extensions
/// `ext` (one per line, as in an openssl extfile); returns (certificate, key).
fn leaf(dir: &Path, ca_name: &str, name: &str, cn: &str, ext: &str) -> Result<(PathBuf, PathBuf)> {
    let key = key(dir, name)?;
    let (csr, crt, extfile) = (
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext)?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca_name}.crt"),
            "-CAkey",
            &format!("{ca_name}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &crt,
        ],
    )?;
    Ok((dir.join(crt), key))
}

fn etcd_pki(dir: &Path) -> Result<EtcdPki> {
    std::fs::create_dir_all(dir)?;
    const CLIENT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=clientAuth\n";
    let ca = make_ca(dir, "etcd-ca")?;
    let (server_crt, server_key) = leaf(
        dir,
        "etcd-ca",
        "etcd-server",
        "etcd",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    let (client_crt, client_key) = leaf(
        dir,
        "etcd-ca",
        "apiserver-etcd-client",
        "kube-apiserver-etcd-client",
        CLIENT,
    )?;
    make_ca(dir, "unrelated-ca")?;
    let (other_client_crt, other_client_key) =
        leaf(dir, "unrelated-ca", "unrelated-client", "intruder", CLIENT)?;
    Ok(EtcdPki {
        ca,
        server_crt,
        server_key,
        client_crt,
        client_key,
        other_client_crt,
        other_client_key,
    })
}

/// `porthole apiserver` on `etcd` with the API server's PKI from `data` and `etcd_flags`.
fn apiserver_cmd(data: &Path, etcd: &str, etcd_flags: &[String]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args([
        "apiserver",
        "--listen=127.0.0.1:0",
        &format!("--etcd-servers={etcd}"),
        &format!("--token-auth-file={}", data.join("tokens.csv").display()),
        "--etcd-request-timeout=2s",
    ])
    .args(porthole_test::apiserver_pki_args(&data.join("pki")))
    .args(etcd_flags);
    cmd
}

fn apiserver(
    name: &str,
    data: &Path,
    etcd: &str,
    etcd_flags: &[String],
    log_dir: &Path,
) -> Result<(Child, String)> {
    let mut child = Child::spawn(name, apiserver_cmd(data, etcd, etcd_flags), log_dir)?;
    let url = child.wait_for_line(porthole_test::READY_TIMEOUT, |l| {
        l.strip_prefix("porthole apiserver listening on ")
            .map(str::to_string)
    })?;
    Ok((child, url))
}

/// Starts the API server with `etcd_flags`, expects it to exit non-zero within [`FAIL_FAST`]
/// without ever serving, and returns its stderr.
fn start_fails(
    name: &str,
    data: &Path,
    etcd: &str,
    etcd_flags: &[String],
    log_dir: &Path,
) -> Result<String> {
    let mut child = Child::spawn(name, apiserver_cmd(data, etcd, etcd_flags), log_dir)?;
    let started = tokio::time::Instant::now();
    let status = child
        .wait_timeout(FAIL_FAST)
        .with_context(|| format!("{name}: a bad TLS setup must stop the server quickly"))?;
    let stderr = std::fs::read_to_string(log_dir.join(format!("{name}.stderr")))?;
    ensure!(
        !status.success(),
        "{name} exits non-zero ({status}):\n{}",
        child.report()
    );
    ensure!(
        !child.stdout_lines().iter().any(|l| l.contains("listening")),
        "{name} never says it is serving:\n{}",
        child.report()
    );
    ensure!(
        !stderr.contains("panicked"),
        "{name} fails with a message, not a panic:\n{stderr}"
    );
    eprintln!(
        "{name}: exited {status} after {:?}: {}",
        started.elapsed(),
        stderr.trim()
    );
    Ok(stderr)
}

/// `curl` against the API server without credentials: (HTTP status, body).
fn curl(data: &Path, url: &str) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(data.join("pki/ca.crt"))
        .args(["-w", "\n%{http_code}"])
        .arg(url)
        .output()
        .context("run curl (apt-get install curl)")?;
    let text = expect_success(&format!("curl {url}"), &out)?;
    let (body, code) = text
        .rsplit_once('\n')
        .with_context(|| format!("curl printed no status for {url}: {text:?}"))?;
    Ok((
        code.trim().parse().context("status code")?,
        body.to_string(),
    ))
}

fn flags(ca: Option<&Path>, cert: &Path, key: &Path) -> Vec<String> {
    let mut f = Vec::new();
    if let Some(ca) = ca {
        f.push(format!("--etcd-cafile={}", ca.display()));
    }
    f.push(format!("--etcd-certfile={}", cert.display()));
    f.push(format!("--etcd-keyfile={}", key.display()));
    f
}

#[test]
fn apiserver_talks_to_etcd_over_tls_with_a_client_certificate() {
    let work = TempDir::new("etcd-tls").unwrap();
    let certs = etcd_pki(&work.path().join("etcd-pki")).unwrap();
    let data = pki(work.path());
    let etcd = Etcd::start_local_tls(
        work.path(),
        EtcdTls {
            cert_file: certs.server_crt.clone(),
            key_file: certs.server_key.clone(),
            ca_file: certs.ca.clone(),
            client_cert_file: certs.client_crt.clone(),
            client_key_file: certs.client_key.clone(),
        },
    )
    .unwrap();
    let etcd_url = etcd.client_url();
    assert!(etcd_url.starts_with("https://127.0.0.1:"), "{etcd_url}");

    let good = flags(Some(&certs.ca), &certs.client_crt, &certs.client_key);
    let (mut server, url) = apiserver("apiserver", &data, &etcd_url, &good, work.path()).unwrap();
    let kubectl = porthole_test::Clients::from_env().unwrap().kubectl;
    let k = |args: &[&str]| -> Result<String> {
        let out = Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(data.join("kubeconfig"))
            .arg("--server")
            .arg(&url)
            .arg("--cache-dir")
            .arg(work.path().join("kube-cache"))
            .args(args)
            .output()?;
        expect_success(&format!("kubectl {}", args.join(" ")), &out)
    };

    let res = (|| -> Result<()> {
        k(&[
            "create",
            "configmap",
            "over-tls",
            "--from-literal=store=etcd-with-client-certs",
        ])?;
        let value = k(&["get", "configmap/over-tls", "-o", "jsonpath={.data.store}"])?;
        ensure!(
            value == "etcd-with-client-certs",
            "the ConfigMap reads back: {value:?}"
        );

        // The object is in etcd itself, under the prefix, as kube-apiserver keeps it.
        let out = etcd
            .etcdctl()
            .args(["get", "--prefix", "/registry", "--keys-only"])
            .output()
            .context("run etcdctl (Debian's etcd-client)")?;
        let keys = expect_success("etcdctl get --prefix /registry --keys-only", &out)?;
        ensure!(
            keys.lines()
                .any(|l| l.starts_with("/registry/") && l.ends_with("/default/over-tls")),
            "etcd holds the ConfigMap under /registry/: {keys}"
        );

        let (code, body) = curl(&data, &format!("{url}/readyz?verbose"))?;
        ensure!(code == 200, "/readyz on etcd over TLS: {code} {body}");
        ensure!(
            body.contains("[+]store ok"),
            "/readyz checked the store: {body}"
        );

        // (a) A client certificate etcd's CA did not sign: etcd rejects it.
        let err = start_fails(
            "apiserver-unrelated-client-cert",
            &data,
            &etcd_url,
            &flags(
                Some(&certs.ca),
                &certs.other_client_crt,
                &certs.other_client_key,
            ),
            work.path(),
        )?;
        ensure!(err.contains(&etcd_url), "names the endpoint: {err}");
        ensure!(
            err.contains("client certificate")
                && err.contains(&certs.other_client_crt.display().to_string()),
            "says the client certificate was rejected, and which: {err}"
        );
        ensure!(
            err.contains("--trusted-ca-file"),
            "says which certificate etcd accepts: {err}"
        );

        // (b) No --etcd-cafile: etcd's serving certificate is not trusted.
        let err = start_fails(
            "apiserver-no-cafile",
            &data,
            &etcd_url,
            &flags(None, &certs.client_crt, &certs.client_key),
            work.path(),
        )?;
        ensure!(err.contains(&etcd_url), "names the endpoint: {err}");
        ensure!(
            err.contains("certificate") && err.contains("not trusted"),
            "says etcd's certificate is not trusted: {err}"
        );
        ensure!(err.contains("--etcd-cafile"), "says what to give: {err}");

        // (c) --etcd-certfile names a file that is not there.
        let missing = work.path().join("etcd-pki/no-such-client.crt");
        let err = start_fails(
            "apiserver-missing-certfile",
            &data,
            &etcd_url,
            &flags(Some(&certs.ca), &missing, &certs.client_key),
            work.path(),
        )?;
        ensure!(err.contains(&etcd_url), "names the endpoint: {err}");
        ensure!(
            err.contains("--etcd-certfile") && err.contains(&missing.display().to_string()),
            "names the flag and the file: {err}"
        );
        ensure!(
            err.contains("client certificate"),
            "says what the file is for: {err}"
        );

        // The server that has the right certificates was not disturbed by any of that.
        let value = k(&["get", "configmap/over-tls", "-o", "jsonpath={.data.store}"])?;
        ensure!(
            value == "etcd-with-client-certs",
            "still readable: {value:?}"
        );
        Ok(())
    })();
    server.signal(Signal::SIGTERM).ok();
    let stopped = server.wait_timeout(porthole_test::STOP_TIMEOUT);
    if let Err(e) = res {
        panic!("{e:#}\n\n{}", server.report());
    }
    let status = stopped.unwrap_or_else(|e| panic!("the apiserver did not stop: {e:#}"));
    assert!(
        status.success(),
        "the apiserver exits 0 on SIGTERM: {status:?}"
    );
}
