//! The binary's command line: subcommands, exit codes, and the kubectl plugin name. No cluster
//! and no root needed.

use std::process::Command;

use porthole_test::TempDir;

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}

#[test]
fn version_and_help() {
    let out = Command::new(bin()).arg("version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("porthole {}", env!("CARGO_PKG_VERSION"))
    );

    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "--help is not an error");
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "port-forward",
        "forward",
        "apiserver",
        "node",
        "up",
        "certs",
        "token",
        "version",
    ] {
        assert!(help.contains(sub), "--help lists {sub}:\n{help}");
    }
    let out = Command::new(bin())
        .args(["forward", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "--filename",
        "--all-services",
        "--etc-hosts",
        "--status-addr",
        "porthole forward -f forwards.yaml",
        "kubectl porthole forward",
    ] {
        assert!(help.contains(text), "forward --help shows {text}:\n{help}");
    }
    let out = Command::new(bin()).args(["up", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--filename", "--data-dir", "--listen", "--node-name"] {
        assert!(help.contains(flag), "up --help lists {flag}:\n{help}");
    }
}

#[test]
fn bad_usage_exits_64() {
    for args in [
        &["no-such-command"][..],
        &["up", "--listen", "not-an-address"],
        &[],
    ] {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "porthole {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.stderr.is_empty(),
            "porthole {args:?} says what is wrong"
        );
    }
}

#[test]
fn up_rejects_bad_files_before_starting() {
    let dir = TempDir::new("badfile").unwrap();
    let out = Command::new(bin())
        .args(["up", "--listen", "127.0.0.1:0", "-f"])
        .arg(dir.path().join("missing.yaml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.yaml"), "names the file: {stderr}");
    assert!(!dir.path().join("data/kubeconfig").exists());
}

#[test]
fn a_tunnel_needs_an_api_server_to_dial() {
    let dir = TempDir::new("tunnel-flag").unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new(bin())
        .args([
            "node",
            "--tunnel",
            "--node-name",
            "edge1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert-file")
        .arg(pki.join("n.crt"))
        .arg("--tls-private-key-file")
        .arg(pki.join("n.key"))
        .arg("--client-ca-file")
        .arg(pki.join("ca.crt"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tunnel needs an API server") && stderr.contains("--join"),
        "says what is missing: {stderr}"
    );
}

/// `kubectl porthole ...` runs `kubectl-porthole ...` from PATH, which must behave as `porthole`.
#[test]
fn works_as_a_kubectl_plugin() {
    let clients = match porthole_test::Clients::from_env() {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    };
    let dir = TempDir::new("plugin").unwrap();
    std::os::unix::fs::symlink(bin(), dir.path().join("kubectl-porthole")).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&clients.kubectl)
        .args(["porthole", "version"])
        .env("PATH", path)
        .env("KUBECONFIG", dir.path().join("none"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl porthole version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("porthole "));
}
