//! What this run may do and with which binary: root or rootless, pods or not, the `porthole`
//! binary under test and the log filter that keeps the node's isolation line.

use std::fs;
use std::os::unix::fs::MetadataExt;

/// True when running as root, which bind-mounted pod namespaces and simulated hosts need.
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Set to 1 by `scripts/test.sh` for its second run of the end-to-end suite, as an unprivileged
/// user: then no selected test may skip. A test that needs root, or whose pods cannot run,
/// fails instead, and every cluster must say that its pods run rootless.
pub const ROOTLESS_RUN_VAR: &str = "PORTHOLE_TEST_ROOTLESS";

/// Whether this is the rootless run ([`ROOTLESS_RUN_VAR`]).
pub fn rootless_run() -> bool {
    std::env::var_os(ROOTLESS_RUN_VAR).is_some_and(|v| v == "1")
}

/// For tests that need root by nature (simulated hosts, joins on a testbed). Such tests are
/// `#[ignore = "needs root ..."]`, so a plain `cargo test` lists them as ignored rather than
/// passing them unseen; `scripts/test.sh` (root in CI) runs them with `--include-ignored`.
/// Run without root, one fails here with what to do, instead of passing without testing.
pub fn require_root(test: &str) {
    assert!(
        !rootless_run(),
        "{test} needs root but was selected for the rootless run ({ROOTLESS_RUN_VAR}=1): leave it out of that run's filters"
    );
    assert!(
        is_root(),
        "{test} needs root (it is #[ignore]d for that reason): run it as root, e.g. sudo cargo test -- --ignored {test}"
    );
}

/// For tests that run pods (`porthole up`, the node agent): they run as root (privileged
/// namespaces) and as any other user whose kernel allows unprivileged user namespaces
/// (rootless). Returns false with a loud SKIPPED line when neither holds; in the rootless run
/// that fails the test, as does running it as root there.
pub fn require_pods(test: &str) -> bool {
    if is_root() {
        assert!(
            !rootless_run(),
            "{test}: {ROOTLESS_RUN_VAR}=1 but running as root; the rootless run must run as an unprivileged user"
        );
        return true;
    }
    let probe = porthole_netns::Isolation::Rootless.probe(&std::env::temp_dir());
    let Err(e) = probe else {
        return true;
    };
    let why = format!("{e}");
    if rootless_run() {
        panic!("{test}: pods cannot run rootless here: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: not root and pods cannot run rootless: {why} ***\n");
    false
}

/// The log line of a node agent (or `porthole up`) naming how its pods run, expected for this
/// user: `pods run privileged` as root, `pods run rootless` otherwise.
pub fn expected_isolation_line() -> &'static str {
    if is_root() {
        "pods run privileged: "
    } else {
        "pods run rootless: "
    }
}

/// The test's `RUST_LOG` (default `info`) plus the node agent's isolation line (its own log
/// target), so that [`Child::expect_isolation_line`] finds it whatever the filter.
pub fn log_filter_keeping_isolation_line() -> String {
    match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.trim().is_empty() => {
            format!("{filter},porthole_node::isolation=info")
        }
        _ => "info".into(),
    }
}

/// The `porthole` binary for tests: `PORTHOLE_TEST_BIN` when set (the rootless run uses a copy
/// its user can read), else `compiled` (`env!("CARGO_BIN_EXE_porthole")`).
pub fn porthole_bin(compiled: &'static str) -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("PORTHOLE_TEST_BIN").unwrap_or_else(|_| compiled.to_owned()))
}
