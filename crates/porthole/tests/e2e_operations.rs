//! What operators and load balancers see of a real `porthole apiserver` process: `/livez`,
//! `/readyz` and `/healthz` without credentials (haproxy's health checks have none),
//! `/metrics` only for those allowed to read it, request counters that grow, and the
//! controllers' Lease that `kubectl get leases` shows, released on a clean stop so the next
//! server takes over at once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use porthole_test::{Roles, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

/// `curl` against the API server: (HTTP status, body). `auth` adds curl's credential flags.
fn curl(roles: &Roles, path: &str, auth: &[String]) -> Result<(u16, String)> {
    let ca = roles.data_dir.join("pki/ca.crt");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .args(["-w", "\n%{http_code}"])
        .args(auth)
        .arg(format!("{}{path}", roles.server))
        .output()
        .context("run curl (apt-get install curl)")?;
    let text = porthole_test::expect_success(&format!("curl {path}"), &out)?;
    let (body, code) = text
        .rsplit_once('\n')
        .with_context(|| format!("curl printed no status for {path}: {text:?}"))?;
    Ok((
        code.trim().parse().context("status code")?,
        body.to_string(),
    ))
}

fn admin(roles: &Roles) -> Vec<String> {
    let pki = roles.data_dir.join("pki");
    vec![
        "--cert".into(),
        pki.join("admin.crt").display().to_string(),
        "--key".into(),
        pki.join("admin.key").display().to_string(),
    ]
}

/// The example user's bearer token from `DIR/tokens.csv` (not in system:masters).
fn developer(roles: &Roles) -> Result<Vec<String>> {
    let csv = std::fs::read_to_string(roles.data_dir.join("tokens.csv"))?;
    let token = csv
        .lines()
        .find_map(|l| {
            let mut f = l.split(',');
            let token = f.next()?;
            (f.next()? == "developer").then(|| token.to_string())
        })
        .context("developer in tokens.csv")?;
    Ok(vec!["-H".into(), format!("Authorization: Bearer {token}")])
}

/// The value of one series in a `/metrics` answer (0 when absent).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `spec.holderIdentity` and `spec.leaseTransitions` of the controllers' lease, once it
/// exists (polled: the election's first round runs right after the ready line).
fn lease(roles: &Roles) -> Result<(String, i64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = roles.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "porthole-controllers",
            "--ignore-not-found",
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.leaseTransitions}",
        ])?;
        if let Some((holder, transitions)) = out.trim().split_once(' ') {
            if !holder.is_empty() {
                return Ok((holder.to_string(), transitions.parse()?));
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no holder of lease kube-system/porthole-controllers after 20 s: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn is_micro_time(s: &str) -> bool {
    // 2026-01-02T03:04:05.123456Z
    let b = s.as_bytes();
    b.len() == 27
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[26] == b'Z'
        && b[20..26].iter().all(u8::is_ascii_digit)
}

#[test]
fn health_metrics_and_the_controllers_lease() {
    if !porthole_test::require_pods("health_metrics_and_the_controllers_lease") {
        return;
    }
    let work = TempDir::new("ops").unwrap();
    let mut roles = Roles::start(Path::new(bin()), work.path()).unwrap();
    let res = (|| -> Result<()> {
        // Health without credentials: what haproxy's `http-check` gets.
        for path in ["/livez", "/readyz", "/healthz"] {
            let (code, body) = curl(&roles, path, &[])?;
            ensure!(
                (code, body.as_str()) == (200, "ok"),
                "{path}: {code} {body:?}"
            );
        }
        let (code, body) = curl(&roles, "/readyz?verbose", &[])?;
        ensure!(code == 200, "{code} {body}");
        for line in [
            "[+]ping ok",
            "[+]store ok",
            "[+]shutdown ok",
            "readyz check passed",
        ] {
            ensure!(body.lines().any(|l| l == line), "{line:?} in {body}");
        }
        // Only the three top-level paths are public; everything else still needs credentials.
        let (code, _) = curl(&roles, "/readyz/store", &[])?;
        ensure!(code == 401, "/readyz/store without credentials: {code}");
        let (code, body) = curl(&roles, "/readyz/store", &admin(&roles))?;
        ensure!((code, body.as_str()) == (200, "ok"), "{code} {body}");
        let (code, _) = curl(&roles, "/api/v1/namespaces", &[])?;
        ensure!(code == 401, "a resource without credentials: {code}");

        // /metrics: 401 without credentials, 403 for a user outside system:masters.
        let (code, _) = curl(&roles, "/metrics", &[])?;
        ensure!(code == 401, "/metrics without credentials: {code}");
        let (code, body) = curl(&roles, "/metrics", &developer(&roles)?)?;
        ensure!(code == 403, "/metrics as developer: {code} {body}");
        ensure!(body.contains("cannot get path \\\"/metrics\\\""), "{body}");

        let series = r#"apiserver_request_total{verb="LIST",resource="namespaces",code="200"}"#;
        let (code, before) = curl(&roles, "/metrics", &admin(&roles))?;
        ensure!(code == 200, "/metrics as admin: {code}");
        for name in [
            "apiserver_request_total",
            "apiserver_request_duration_seconds",
            "porthole_store_request_duration_seconds",
            "porthole_portforward_sessions_active",
            "porthole_leader_is_leader",
        ] {
            ensure!(
                before.contains(&format!("# HELP {name} ")),
                "no HELP for {name} in\n{before}"
            );
        }
        roles.kubectl(&["get", "namespaces"])?;
        roles.kubectl(&["get", "namespaces"])?;
        let (_, after) = curl(&roles, "/metrics", &admin(&roles))?;
        ensure!(
            sample(&after, series) >= sample(&before, series) + 2.0,
            "{series}: {} before, {} after two `kubectl get namespaces`",
            sample(&before, series),
            sample(&after, series)
        );
        ensure!(
            sample(
                &after,
                r#"apiserver_request_total{verb="GET",resource="",code="401"}"#
            ) >= 2.0,
            "the 401s above are counted:\n{after}"
        );
        ensure!(
            sample(
                &after,
                r#"porthole_store_request_duration_seconds_count{operation="list"}"#
            ) > 0.0
        );

        // The controllers' lease, as kubectl shows it.
        let (holder, transitions) = lease(&roles)?;
        let table = roles.kubectl(&["get", "leases", "-n", "kube-system"])?;
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        ensure!(header == ["NAME", "HOLDER", "AGE"], "{table}");
        ensure!(
            lines.any(|l| l
                .split_whitespace()
                .take(2)
                .eq(["porthole-controllers", holder.as_str()])),
            "{table}"
        );
        let (host, id) = holder
            .rsplit_once('_')
            .with_context(|| format!("holder {holder:?} is not HOST_UUID"))?;
        ensure!(host == hostname(), "holder {holder:?}: host part");
        ensure!(
            id.len() == 36 && id.matches('-').count() == 4,
            "holder {holder:?}: uuid"
        );
        // `porthole up` wrote the PKI with this same store: it led, then released the lease.
        ensure!(
            transitions == 1,
            "one holder before this server: {transitions}"
        );
        let yaml = roles.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "porthole-controllers",
            "-o",
            "yaml",
        ])?;
        for field in ["acquireTime", "renewTime"] {
            let value = yaml
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{field}: ")))
                .with_context(|| format!("{field} in\n{yaml}"))?;
            ensure!(is_micro_time(value.trim_matches('"')), "{field}: {value}");
        }
        ensure!(yaml.contains("leaseDurationSeconds: 15"), "{yaml}");
        let (_, metrics) = curl(&roles, "/metrics", &admin(&roles))?;
        ensure!(
            sample(&metrics, "porthole_leader_is_leader") == 1.0,
            "{metrics}"
        );

        // A clean stop releases the lease: the next server leads at once, long before the
        // 15 s lease would have expired.
        let mut first = roles.apiserver.take().context("apiserver running")?;
        first.signal(Signal::SIGTERM)?;
        let status = first.wait_timeout(porthole_test::STOP_TIMEOUT)?;
        ensure!(status.success(), "apiserver exited with {status}");
        let log = std::fs::read_to_string(work.path().join("apiserver-1.stderr"))?;
        ensure!(log.contains("released the controllers' lease"), "{log}");
        let listen = roles.server.trim_start_matches("https://").to_string();
        roles.start_apiserver(&listen)?;
        let restarted = tokio::time::Instant::now();
        let deadline = restarted + Duration::from_secs(8);
        let (next, next_transitions) = loop {
            let (h, t) = lease(&roles)?;
            if h != holder {
                break (h, t);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the lease is still held by the stopped server {holder} 8 s after the restart"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(next.starts_with(&format!("{}_", hostname())), "{next}");
        ensure!(
            next_transitions == transitions + 1,
            "one more change of holder: {transitions} -> {next_transitions}"
        );
        Ok(())
    })();
    let report = roles.report();
    let stopped = roles.stop();
    if let Err(e) = res {
        panic!("{e:#}\n\n{report}");
    }
    stopped.unwrap();
}

#[test]
fn leader_election_durations_are_validated() {
    if !porthole_test::require_pods("leader_election_durations_are_validated") {
        return;
    }
    let work = TempDir::new("ops-flags").unwrap();
    porthole_test::Cluster::up(Path::new(bin()), work.path(), &[])
        .unwrap()
        .stop()
        .unwrap();
    let pki = work.path().join("data/pki");
    let p = |n: &str| pki.join(n).display().to_string();
    for (flags, names) in [
        (
            &["--leader-elect-renew-deadline=15s"][..],
            "--leader-elect-renew-deadline (15s) must be shorter than --leader-elect-lease-duration (15s)",
        ),
        (
            &["--leader-elect-retry-period=10s"][..],
            "--leader-elect-retry-period (10s) must be shorter than --leader-elect-renew-deadline (10s)",
        ),
    ] {
        let out = Command::new(bin())
            .args([
                "apiserver",
                "--listen=127.0.0.1:0",
                &format!("--data-dir={}", work.path().join("store").display()),
                &format!("--tls-cert-file={}", p("apiserver.crt")),
                &format!("--tls-private-key-file={}", p("apiserver.key")),
            ])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flags:?}: {stderr}");
        assert!(stderr.contains(names), "{flags:?}: {stderr}");
    }
}
