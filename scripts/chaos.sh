#!/usr/bin/env bash
# The chaos soak (issue 13): a whole cluster on simulated hosts (three etcd members, two API
# servers behind haproxy, three joined nodes, a client host), traffic through three forwards
# at once (HTTP downloads compared byte for byte with what the pods serve, redis-benchmark,
# long-lived echo streams), and faults injected at random, one at a time: kill -9 of an API
# server, a node agent or a pod's process, an etcd member restart, partitions, loss.
#
#   sudo bash scripts/chaos.sh [--duration 20m] [--seed N] [--out DIR] [--no-build]
#
# Prints and writes $OUT/chaos.json: requests done and failed (every failure must overlap a
# fault's window), corrupted bytes (must be 0), recovery time per fault kind (p50, max), leaks
# against the steady state (descriptors, threads, memory, processes, namespaces, mounts: must be
# 0). Exits non-zero when any of those fails. Needs root and the test dependencies
# (scripts/install-test-deps.sh installs them). CI runs it for 3 minutes (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=20m seed="" out=${PBENCH_OUT:-target/chaos} build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-build) build=""; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "chaos.sh: run as root: the soak makes network namespaces and firewall rules" >&2; exit 1; }
for tool in redis-server redis-benchmark etcd haproxy nft; do
  command -v "$tool" >/dev/null || { echo "chaos.sh: $tool is missing: run bash scripts/install-test-deps.sh" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-$PWD/target}
if [ -n "$build" ]; then
  cargo build --release -p porthole -p porthole-bench
fi
# The soak drives many connections and processes at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$out"
# shellcheck disable=SC1091
source "${PORTHOLE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/porthole-tools}/env.sh"
args=(chaos --duration "$duration" --json "$out/chaos.json" --porthole "$target/release/porthole")
[ -n "$seed" ] && args+=(--seed "$seed")
"$target/release/porthole-bench" "${args[@]}" >/dev/null
echo "chaos.sh: report in $out/chaos.json"
