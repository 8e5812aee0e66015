//! The README's promise: from a fresh copy of the repository, its two commands work.
//!
//! - the quick-start commands in README.md are exactly `bash scripts/demo.sh` and
//!   `bash scripts/test.sh`, and `.ci/run` runs the same test command;
//! - `bash scripts/demo.sh`, copied verbatim, works in a fresh copy of the working tree (made
//!   from the files git knows, like a clone, so uncommitted work is covered too). It reuses the
//!   binary cargo built for this test (`PORTHOLE_BIN`) instead of a second release build.
//!
//! - every documentation reference resolves inside the repository: `bash scripts/docs-refs.sh
//!   --check` passes on the tree, and it does fail (and its rewrite fixes what it can, once) on
//!   a small repository with broken references.
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

/// Runs `bash scripts/docs-refs.sh ARGS` in `dir` (a git work tree holding that script).
fn docs_refs(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg("scripts/docs-refs.sh")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("bash is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_doc_reference_resolves_inside_the_repository() {
    let (ok, out) = docs_refs(&repo_root(), &["--check"]);
    assert!(
        ok,
        "a § reference has no heading in docs/, or a file points outside the repository \
         (`bash scripts/docs-refs.sh` rewrites paths; add the heading or fix the number):\n{out}"
    );
    assert!(out.contains("docs-refs: ok"), "{out}");
}

#[test]
fn docs_refs_check_finds_broken_references_and_the_rewrite_is_idempotent() {
    // The fixtures are assembled at run time: written out literally, they would be broken
    // references in this very file, which the check of the real tree reads too.
    let s = '\u{a7}'; // the section sign
    let shared = ["..", "shared"].join("/");
    let research = "research";
    let fixture = |t: &str| {
        t.replace("S!", &s.to_string())
            .replace("SHARED", &shared)
            .replace("RESEARCH", research)
    };

    let dir = TempDir::new("docs-refs").unwrap();
    let repo = dir.path();
    let write = |rel: &str, text: &str| {
        let path = repo.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, fixture(text)).unwrap();
    };
    fs::create_dir_all(repo.join("scripts")).unwrap();
    fs::copy(
        repo_root().join("scripts/docs-refs.sh"),
        repo.join("scripts/docs-refs.sh"),
    )
    .unwrap();
    write(
        "docs/PROTOCOL.md",
        "# P\n\n## 4. Streams\n\n### 4.3 Client\n\n## 9. Traps\n\n### 9.2 Hangs\n",
    );
    write("docs/PERF_BASELINES.md", "# B\n\n## 5. Workloads\n");
    write("docs/STYLE.md", "# S\n\n## Sans-IO core\n");
    write(
        "src/lib.rs",
        "//! See SHARED/spec/PROTOCOL.md S!4.3 and SHARED/STYLE.md (PROTOCOL.md S!9 item 2).\n\
         //! Wrong: S!7.7. Not ours: RFC 6455 S!5.2, S!7.4.1\u{2013}S!7.4.2. PERF_BASELINES S!5, S!6.\n\
         //! STYLE.md \"Sans-IO core\", STYLE.md \"Errors\".\n",
    );
    write(
        "docs/NOTES.md",
        "Read `SHARED/spec/PROTOCOL.md` and RESEARCH/STYLE.md.\n",
    );
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .expect("git is installed");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);

    let (ok, out) = docs_refs(repo, &["--check"]);
    assert!(!ok, "broken references must fail the check:\n{out}");
    for expected in [
        "src/lib.rs:2: S!7.7 has no heading in docs/PROTOCOL.md",
        "src/lib.rs:2: S!6 has no heading in docs/PERF_BASELINES.md",
        "src/lib.rs:1: write `S!9.2`, not `S!9 item 2`",
        "src/lib.rs:1: points outside the repository: SHARED/",
        "src/lib.rs:3: docs/STYLE.md has no heading \"Errors\"",
        "docs/NOTES.md:1: points outside the repository: RESEARCH/STYLE.md",
    ] {
        let expected = fixture(expected);
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        !out.contains(&fixture("S!5.2")) && !out.contains(&fixture("S!7.4")),
        "RFC sections are not checked:\n{out}"
    );
    assert_eq!(out.matches("src/lib.rs:").count(), 6, "{out}");

    let (ok, out) = docs_refs(repo, &[]);
    assert!(ok && out.contains("2 file(s) changed"), "{out}");
    let lib = fs::read_to_string(repo.join("src/lib.rs")).unwrap();
    assert!(
        lib.starts_with(&fixture(
            "//! See docs/PROTOCOL.md S!4.3 and docs/STYLE.md (PROTOCOL.md S!9.2).\n"
        )),
        "{lib}"
    );
    assert_eq!(
        fs::read_to_string(repo.join("docs/NOTES.md")).unwrap(),
        "Read [PROTOCOL.md](PROTOCOL.md) and [STYLE.md](STYLE.md).\n"
    );
    let (ok, out) = docs_refs(repo, &[]);
    assert!(
        ok && out.contains("0 file(s) changed"),
        "rewrite twice: {out}"
    );

    let (ok, out) = docs_refs(repo, &["--check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("docs-refs: 3 problem(s)"),
        "only the two wrong numbers and the missing title remain:\n{out}"
    );
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
