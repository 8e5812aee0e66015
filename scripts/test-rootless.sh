#!/usr/bin/env bash
# The end-to-end suite of `porthole up` a second time, as an unprivileged user whose pods run
# rootless (user namespaces). scripts/test.sh runs it after the root run; by hand, as root:
#   bash scripts/test-rootless.sh [PACKAGE/TEST...]      (default: every binary in TESTS below)
# 1. creates the system user porthole-rootless (PORTHOLE_ROOTLESS_USER), once;
# 2. builds the test binaries as root (`cargo test --no-run`, already built by the root run) and
#    copies them, the porthole binary, the repository's files and the test clients (kubectl
#    1.37 and 1.20, the Python and JS clients) under the user's home: the clone and the
#    clients' tools dir may live under /root, which the user cannot read;
# 3. runs each binary as the user with PORTHOLE_TEST_ROOTLESS=1, where no test may skip: one
#    that needs root, or whose pods cannot run rootless, fails, every cluster must log
#    `pods run rootless`, and a SKIPPED or ignored test fails the run. The leak checks
#    (processes, mounts, namespace files, files not owned by the user) are the tests' own.
# Tests that need root by nature (simulated hosts: joins, etcd, haproxy, the testbed) are not
# in TESTS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RL_USER=${PORTHOLE_ROOTLESS_USER:-porthole-rootless}
# Test binaries (package/test) whose every test runs pods, with `porthole up`, the roles as
# processes or the node's runtime (restarts, probes, a crashed agent's leftovers), and so must
# pass rootless.
TESTS=(porthole/e2e_clients porthole/e2e_lifecycle porthole/e2e_rbac porthole/e2e_output
  porthole/e2e_operations porthole/e2e_roles porthole/e2e_resilience porthole/e2e_rootless
  porthole/e2e_forward_set porthole/e2e_udp porthole/readme porthole-node/runtime)
[ $# -gt 0 ] && TESTS=("$@")
# Per binary: libtest arguments. crash_child is a helper that leftovers_of_a_crashed_agent_…
# runs itself (it is #[ignore]d, which the check below would count as a skipped test);
# udp_through_a_node_behind_nat needs simulated hosts (root by nature); --etc-hosts writes the
# hosts file and binds each Service's own port (80 here), which only root may (README, "Without
# root"); the doc reference check reads the whole tree (crates/, docs/), which the copy below
# leaves out, and runs no pod (the root run has it).
declare -A TEST_ARGS=([porthole-node/runtime]="--skip crash_child"
  [porthole/readme]="--skip every_doc_reference_resolves_inside_the_repository"
  [porthole/e2e_udp]="--skip udp_through_a_node_behind_nat"
  [porthole/e2e_forward_set]="--skip all_services_etc_hosts_and_the_readme_example")
start=$(date +%s)
say() { echo "test-rootless: $* ($(( $(date +%s) - start ))s)"; }
die() { echo "test-rootless: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it creates the user $RL_USER and runs the tests as that user"
for tool in useradd runuser unshare setpriv tar git python3; do
  command -v "$tool" >/dev/null || die "required tool $tool is missing"
done
if ! id -u "$RL_USER" >/dev/null 2>&1; then
  say "creating the system user $RL_USER"
  useradd --system --user-group --create-home --home-dir "/var/lib/$RL_USER" \
    --shell /usr/sbin/nologin "$RL_USER" || die "useradd $RL_USER"
fi
RL_HOME=$(getent passwd "$RL_USER" | cut -d: -f6)
[ -n "$RL_HOME" ] || die "no home directory for $RL_USER"
mkdir -p "$RL_HOME" && chown "$RL_USER:" "$RL_HOME" && chmod 700 "$RL_HOME"
as_user() { runuser -u "$RL_USER" -- "$@"; }
# Hard links where the file system allows (no data written: the clients' tools are ~12,000
# files), else copies. Everything linked stays root's and read-only to the user.
link_or_copy() { cp -al "$@" 2>/dev/null || cp -a "$@"; }

# --- the test binaries and porthole, built as root --------------------------------------------
say "cargo test --no-run (${TESTS[*]})"
json=$(mktemp /tmp/porthole-rootless-build.XXXXXX)
build_args=()
declare -A packages=()
for t in "${TESTS[@]}"; do
  [[ $t == */* ]] || die "$t: want PACKAGE/TEST, e.g. porthole/e2e_clients"
  packages[${t%%/*}]=1
  build_args+=(--test "${t#*/}")
done
for p in "${!packages[@]}"; do build_args+=(-p "$p"); done
# porthole: the binary the end-to-end tests run.
cargo test -p porthole "${build_args[@]}" --no-run --message-format=json > "$json" \
  || { rm -f "$json"; die "cargo test --no-run"; }
# "NAME PATH" per test binary, and "bin PATH" for porthole itself.
artifacts=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind = m["target"]["kind"]
    if kind == ["test"]:
        pkg = m["package_id"]
        # package_id: "path+file:///.../DIR#name@version", or "...#version" when the name is
        # DIR, or the older "name version (...)".
        if "#" in pkg:
            url, frag = pkg.split("#", 1)
            name = frag.split("@")[0] if "@" in frag else url.rstrip("/").split("/")[-1]
        else:
            name = pkg.split()[0]
        print(name + "/" + m["target"]["name"], m["executable"])
    elif kind == ["bin"] and m["target"]["name"] == "porthole":
        print("bin", m["executable"])
' "$json")
rm -f "$json"

WORK=$RL_HOME/run
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$WORK/tests" "$WORK/repo" "$WORK/tools/bin"
while read -r name path; do
  if [ "$name" = bin ]; then link_or_copy "$path" "$WORK/bin/porthole"
  else mkdir -p "$WORK/tests/${name%%/*}" && link_or_copy "$path" "$WORK/tests/$name"; fi
done <<< "$artifacts"
[ -x "$WORK/bin/porthole" ] || die "cargo built no porthole binary"
for t in "${TESTS[@]}"; do [ -x "$WORK/tests/$t" ] || die "no test binary $t"; done

# --- the repository's files the tests read (what a clone has of them: examples, scripts,
# README.md, .ci/run), in a git repository of the user's own (the README test lists it) -------
git ls-files -z --cached --others --exclude-standard -- README.md .ci scripts examples \
  | python3 -c 'import os, sys; [sys.stdout.buffer.write(p + b"\0") for p in sys.stdin.buffer.read().split(b"\0") if p and os.path.isfile(p)]' \
  | tar --null -T - -cf - | tar -xf - -C "$WORK/repo" || die "copy the repository"

# --- the test clients, where the user can read them -------------------------------------------
# shellcheck disable=SC1091
source "${PORTHOLE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/porthole-tools}/env.sh"
T=$WORK/tools
# Resolved first: a symlink (install-test-deps.sh's $TOOLS/bin/kubectl) may point under /root.
link_or_copy "$(readlink -f "$PORTHOLE_KUBECTL_137")" "$T/bin/kubectl-1.37"
link_or_copy "$(readlink -f "$PORTHOLE_KUBECTL_120")" "$T/bin/kubectl-1.20"
case $PORTHOLE_KUBECTL in
  /usr/*|/bin/*) KUBECTL=$PORTHOLE_KUBECTL ;;   # the system's, readable by everyone
  *) link_or_copy "$(readlink -f "$PORTHOLE_KUBECTL")" "$T/bin/kubectl"; KUBECTL=$T/bin/kubectl ;;
esac
JS_DIR=""
if [ -n "${PORTHOLE_JS_CLIENT_DIR:-}" ]; then link_or_copy "$PORTHOLE_JS_CLIENT_DIR" "$T/js"; JS_DIR=$T/js; fi
# The clients' venv may be made from a python under /root (pyenv): a venv of the python the
# user finds on PATH, with the same packages.
USER_PATH=/usr/local/bin:/usr/bin:/bin
user_python=$(as_user env PATH="$USER_PATH" sh -c 'command -v python3') || die "no python3 on $USER_PATH for $RL_USER"
"$user_python" -m venv --without-pip "$T/venv" || die "$user_python -m venv"
src_site=$("$PORTHOLE_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dst_site=$("$T/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
link_or_copy "$src_site/." "$dst_site/"
chmod 755 "$WORK"
chown -R "$RL_USER:" "$WORK/repo"
as_user env HOME="$RL_HOME" "$T/venv/bin/python" -c 'import kubernetes' \
  || die "the Python client does not import with $user_python for $RL_USER (venv packages from $PORTHOLE_PYTHON)"
as_user env HOME="$RL_HOME" sh -c "cd '$WORK/repo' && git init -q && git add -A" || die "git init the repository copy"

# --- run them as the user ------------------------------------------------------------------
failed=()
total_passed=0
for t in "${TESTS[@]}"; do
  say "running $t as $RL_USER"
  log=$WORK/${t//\//-}.log
  read -r -a extra <<< "${TEST_ARGS[$t]:-}"
  set +e
  runuser -u "$RL_USER" -- env -i HOME="$RL_HOME" PATH="$USER_PATH" TMPDIR=/tmp LANG=C.UTF-8 \
    PORTHOLE_TEST_ROOTLESS=1 PORTHOLE_TEST_BIN="$WORK/bin/porthole" PORTHOLE_TEST_REPO="$WORK/repo" \
    PORTHOLE_KUBECTL="$KUBECTL" PORTHOLE_KUBECTL_137="$T/bin/kubectl-1.37" \
    PORTHOLE_KUBECTL_120="$T/bin/kubectl-1.20" PORTHOLE_PYTHON="$T/venv/bin/python" \
    PORTHOLE_JS_CLIENT_DIR="$JS_DIR" RUST_BACKTRACE=1 \
    sh -c 'cd "$1" && shift && exec "$@"' sh "$WORK/repo" "$WORK/tests/$t" "${extra[@]}" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  summary=$(grep '^test result:' "$log" | tail -1 || true)
  if [ "$rc" != 0 ]; then
    failed+=("$t (exit $rc)")
  elif grep -q 'SKIPPED' "$log"; then
    failed+=("$t (a test skipped: $(grep -m1 'SKIPPED' "$log"))")
  elif ! [[ $summary =~ \ ([0-9]+)\ passed\;\ 0\ failed\;\ 0\ ignored ]] || [ "${BASH_REMATCH[1]}" = 0 ]; then
    failed+=("$t (want every test run and passed: ${summary:-no summary})")
  else
    total_passed=$(( total_passed + BASH_REMATCH[1] ))
  fi
done
say "done: $total_passed tests passed as $RL_USER in ${#TESTS[@]} binaries"
[ ${#failed[@]} = 0 ] || die "rootless: ${failed[*]}"
rm -rf "$WORK"
