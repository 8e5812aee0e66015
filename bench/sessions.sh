#!/usr/bin/env bash
# Many port-forward sessions at once, one client process each, on one API server and one node
# agent (separate processes), beside kubectl in one run (issue 15, target 6): setup rate, memory
# per session in each role, and the API server's requests per idle session (a client that
# re-reads its pod every 2 s costs 0.5/s per session; one that watches costs ~0).
#
#   sudo bash bench/sessions.sh [--smoke] [--sessions N] [--kubectl-sessions N] [--idle-secs S] [--no-build]
#
# Defaults: 1000 porthole sessions, 200 kubectl sessions (each kubectl holds tens of MB),
# 30 s idle. --smoke (CI): 20 and 5 sessions, 5 s idle; fails on any error. Needs root (the
# node agent makes the pod's network namespace) and the clients of scripts/install-test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=1000; KUBECTL=200; IDLE=30; BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SESSIONS=20; KUBECTL=5; IDLE=5 ;;
    --sessions) SESSIONS=$2; shift ;;
    --kubectl-sessions) KUBECTL=$2; shift ;;
    --idle-secs) IDLE=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "sessions.sh: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
TOOLS_ENV=${PORTHOLE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/porthole-tools}/env.sh
# shellcheck disable=SC1090
[ -f "$TOOLS_ENV" ] && source "$TOOLS_ENV"
# Each client holds a few descriptors, and the bench two pipes per client.
ulimit -n "$(ulimit -Hn)"
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
[ $BUILD = 1 ] && cargo build --release -q -p porthole -p porthole-bench
OUT=${PBENCH_OUT:-/tmp/porthole-bench-sessions-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
"$TARGET/release/porthole-bench" sessions --sessions "$SESSIONS" --kubectl-sessions "$KUBECTL" \
  --idle-secs "$IDLE" > "$OUT/sessions.json"
echo "sessions.sh: raw results in $OUT/sessions.json" >&2
