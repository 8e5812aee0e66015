//! The README's promise: from a fresh copy of the repository, its two commands work.
//!
//! - the quick-start commands in README.md are exactly `bash scripts/demo.sh` and
//!   `bash scripts/test.sh`, and `.ci/run` runs the same test command;
//! - `bash scripts/demo.sh`, copied verbatim, works in a fresh copy of the working tree (made
//!   from the files git knows, like a clone, so uncommitted work is covered too). It reuses the
//!   binary cargo built for this test (`PORTHOLE_BIN`) instead of a second release build.
//!
//! `scripts/test.sh` itself is not run from here: it runs this test.

use std::fs;
use std::path::Path;
use std::process::Command;

use porthole_test::{repo_root, TempDir};

/// The `porthole` binary (a copy its user can read in the rootless run).
fn bin() -> &'static str {
    porthole_test::porthole_bin(env!("CARGO_BIN_EXE_porthole"))
}
const DEMO: &str = "bash scripts/demo.sh";
const TESTS: &str = "bash scripts/test.sh";

/// The shell commands of README's "Quick start" section, in order.
fn quick_start_commands(readme: &str) -> Vec<String> {
    let section = readme
        .split("## Quick start")
        .nth(1)
        .expect("README has a '## Quick start' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut commands = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if in_block && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            commands.push(line.trim().to_string());
        }
    }
    commands
}

#[test]
fn readme_quick_start_is_the_two_scripts_and_ci_runs_the_same() {
    let root = repo_root();
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    assert_eq!(
        quick_start_commands(&readme),
        [DEMO, TESTS],
        "README quick start commands"
    );
    for script in ["scripts/demo.sh", "scripts/test.sh"] {
        assert!(root.join(script).is_file(), "{script} exists");
    }
    let ci = fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == format!("exec {TESTS}")),
        ".ci/run execs the README's test command:\n{ci}"
    );
}

#[test]
fn demo_works_from_a_fresh_copy() {
    if !porthole_test::require_pods("demo_works_from_a_fresh_copy") {
        return;
    }
    let root = repo_root();
    let copy = TempDir::new("readme").unwrap();
    let dest = copy.path().join("porthole");
    copy_tracked_tree(&root, &dest);

    let readme = fs::read_to_string(dest.join("README.md")).unwrap();
    let demo = quick_start_commands(&readme)
        .into_iter()
        .next()
        .expect("a first quick-start command");
    let out = Command::new("bash")
        .args(["-c", &demo])
        .current_dir(&dest)
        .env("PORTHOLE_BIN", bin())
        .env("DEMO_LOCAL_PORT", "0") // 8080 may be taken on a test machine
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`{demo}` failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("demo: ok: fetched the web pod's page"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("Forwarding from 127.0.0.1:"), "{stdout}");
}

/// Copies the files git tracks or would track (not ignored ones like target/), as a clone of
/// the working tree would have them.
fn copy_tracked_tree(root: &Path, dest: &Path) {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rel in out.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).expect("utf-8 path"));
        let from = root.join(rel);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = dest.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}
