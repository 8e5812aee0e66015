#!/usr/bin/env bash
# porthole's whole test suite, as CI runs it (.ci/run execs this) and as the README says:
#   bash scripts/test.sh
# 1. installs the test clients (scripts/install-test-deps.sh: apt, pip venv, kubectl 1.20 aside)
# 2. cargo fmt --check, cargo clippy -D warnings
# 3. cargo build --release, cargo test --workspace (as root in CI: pods privileged, simulated
#    hosts), then the end-to-end suite of `porthole up` again as an unprivileged user, pods
#    rootless (scripts/test-rootless.sh)
# 4. the public smoke check ../shared/acceptance/smoke.sh, when it is there
# 5. fuzz and bench smoke runs and a 3-minute chaos soak, when their scripts exist
# Any failure fails the run; a missing tool is an error, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
start=$(date +%s)
# 10,000-connection tests and benchmarks need many descriptors: take what the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
step() { echo; echo "=== test.sh: $* ($(( $(date +%s) - start ))s)"; }
die() { echo "test.sh: FAILED: $*" >&2; exit 1; }

# CI builds from scratch once: incremental caches would only cost disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
echo "test.sh: disk free where the build goes: $(df -h --output=avail . | tail -1 | tr -d ' ')"

step "installing test dependencies"
# The JavaScript client is tested too unless PORTHOLE_WITH_JS=0.
PORTHOLE_WITH_JS=${PORTHOLE_WITH_JS:-1} bash scripts/install-test-deps.sh
# shellcheck disable=SC1091
source "${PORTHOLE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/porthole-tools}/env.sh"
for tool in cargo python3 curl pgrep "$PORTHOLE_KUBECTL" "$PORTHOLE_KUBECTL_137" "$PORTHOLE_KUBECTL_120" "$PORTHOLE_PYTHON"; do
  command -v "$tool" >/dev/null || die "required tool $tool is missing"
done
[ "$(id -u)" = 0 ] || echo "test.sh: WARNING: not root: pods run rootless, and the tests of simulated hosts (joins, etcd, haproxy) are ignored" >&2

step "cargo fmt --check"
cargo fmt --all --check || die "cargo fmt --check (run cargo fmt --all)"

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || die "clippy"

step "cargo build --release"
cargo build --release || die "cargo build --release"

step "cargo test --workspace"
log=$(mktemp /tmp/porthole-cargo-test.XXXXXX)
set +e
# Tests that need root are #[ignore = "needs root ..."] (a plain `cargo test` lists them as
# ignored); as root they run here with the rest. The other ignored tests (helpers that a test
# runs itself, release-only measurements) stay out: found in the sources, by their reason.
root_args=()
if [ "$(id -u)" = 0 ]; then
  root_args=(--include-ignored --exact)
  while read -r name; do root_args+=(--skip "$name"); done < <(
    grep -rH -A3 --include='*.rs' '#\[ignore = "' crates | awk '
      # grep -H gives "FILE:TEXT" on a match and "FILE-TEXT" after it. --exact wants the full
      # name: a test in tests/DIR/MOD.rs (a module of the binary tests/DIR/main.rs) is MOD::NAME.
      match($0, /\.rs[-:]/) == 0 { next }
      { file = substr($0, 1, RSTART + 2); $0 = substr($0, RSTART + 4); mod = ""
        if (file ~ /\/tests\/[^\/]+\/[^\/]+\.rs$/ && file !~ /\/main\.rs$/) {
          mod = file; sub(/.*\//, "", mod); sub(/\.rs$/, "::", mod)
        } }
      /#\[ignore = "/ { root = ($0 ~ /#\[ignore = "needs root/) }
      /^ *(pub )?(async )?fn [a-z_0-9]+/ && root == 0 { sub(/.*fn /, ""); sub(/\(.*/, ""); print mod $0 }
      /^ *(pub )?(async )?fn / { root = 1 }' | sort -u)
fi
cargo test --workspace --no-fail-fast -- "${root_args[@]}" 2>&1 | tee "$log"
test_rc=${PIPESTATUS[0]}
set -e
# As root, no test that needs root may have been left out.
if [ "$(id -u)" = 0 ] && grep -q 'ignored, needs root' "$log"; then
  echo "test.sh: FAILED: tests that need root did not run as root: $(grep 'ignored, needs root' "$log" | head -3)" >&2
  test_rc=1
fi

# Tests that only make sense optimised (ignored in the debug run): 1 GiB through one forwarded
# connection (sha256 both ways) and the node's memory with 10,000 idle forwarded connections.
step "release-only tests (1 GiB transfer, 10,000 idle connections)"
set +e
cargo test --release -p porthole-node --test portforward --test bench_memory -- --ignored --nocapture 2>&1 | tee -a "$log"
release_rc=${PIPESTATUS[0]}
set -e
[ "$release_rc" = 0 ] || test_rc=$release_rc

# The same `porthole up` suite as an unprivileged user: pods in user namespaces, every client,
# the leak checks; nothing may skip there.
step "end-to-end suite as an unprivileged user (scripts/test-rootless.sh)"
rootless_rc=0
if [ "$(id -u)" = 0 ]; then
  set +e
  bash scripts/test-rootless.sh 2>&1 | tee -a "$log"
  rootless_rc=${PIPESTATUS[0]}
  set -e
else
  echo "test.sh: not root: the run above already ran pods rootless; the second run as another user needs root to create that user"
fi

smoke_rc=0
if [ -f ../shared/acceptance/smoke.sh ]; then
  step "acceptance smoke (../shared/acceptance/smoke.sh)"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/porthole bash ../shared/acceptance/smoke.sh || smoke_rc=$?
else
  step "no ../shared/acceptance/smoke.sh beside the clone: smoke check not run"
fi

hooks_rc=0
if [ -f scripts/fuzz-smoke.sh ]; then
  step "fuzz smoke (scripts/fuzz-smoke.sh)"
  bash scripts/fuzz-smoke.sh || hooks_rc=$?
fi
if [ -f bench/run.sh ]; then
  step "bench smoke (bench/run.sh --smoke)"
  bash bench/run.sh --smoke || hooks_rc=$?
fi
if [ -f bench/split-roles.sh ]; then
  step "split-roles bench smoke (bench/split-roles.sh --smoke)"
  bash bench/split-roles.sh --smoke --no-build || hooks_rc=$?
fi
if [ -f bench/tunnel.sh ]; then
  step "tunnel bench smoke (bench/tunnel.sh --smoke)"
  bash bench/tunnel.sh --smoke --no-build || hooks_rc=$?
fi
if [ -f bench/links.sh ]; then
  step "links bench smoke (bench/links.sh --smoke)"
  bash bench/links.sh --smoke --no-build || hooks_rc=$?
fi
if [ -f bench/sessions.sh ]; then
  step "sessions bench smoke (bench/sessions.sh --smoke)"
  bash bench/sessions.sh --smoke --no-build || hooks_rc=$?
fi
if [ -f bench/udp.sh ]; then
  step "UDP forwarding bench smoke (bench/udp.sh --smoke)"
  bash bench/udp.sh --smoke --no-build || hooks_rc=$?
fi
if [ -f bench/rootless.sh ]; then
  step "rootless bench smoke (bench/rootless.sh --smoke)"
  bash bench/rootless.sh --smoke --no-build || hooks_rc=$?
fi
if [ -f bench/store.sh ]; then
  step "store bench smoke (bench/store.sh --smoke)"
  bash bench/store.sh --smoke || hooks_rc=$?
fi
if [ -f scripts/chaos.sh ]; then
  # The 20-minute soak is a script a person runs; CI keeps 3 minutes of it.
  step "chaos soak, 3 minutes (scripts/chaos.sh --duration 3m)"
  bash scripts/chaos.sh --duration 3m --no-build --out "${CARGO_TARGET_DIR:-$ROOT/target}/chaos" || hooks_rc=$?
fi

# One closing line over every cargo test binary, so the total is not hidden among the
# per-binary "test result:" lines.
read -r passed failed ignored < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) {
    if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
  END { print p+0, f+0, g+0 }' "$log")
rm -f "$log"
step "done"
[ "$test_rc" = 0 ] || echo "test.sh: FAILED: cargo test exited $test_rc" >&2
[ "$rootless_rc" = 0 ] || echo "test.sh: FAILED: the rootless run (scripts/test-rootless.sh) exited $rootless_rc" >&2
[ "$smoke_rc" = 0 ] || echo "test.sh: FAILED: the acceptance smoke check exited $smoke_rc" >&2
[ "$hooks_rc" = 0 ] || echo "test.sh: FAILED: a fuzz/bench smoke run exited $hooks_rc" >&2
echo "cargo-test: $passed passed, $failed failed, $ignored skipped"
[ "$test_rc" = 0 ] && [ "$rootless_rc" = 0 ] && [ "$smoke_rc" = 0 ] && [ "$hooks_rc" = 0 ]
