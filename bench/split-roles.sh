#!/usr/bin/env bash
# porthole with its roles on separate simulated hosts against the bare TLS relay chain (path 2)
# laid on the same hosts, in one run (issue 12):
#
#   client host → haproxy (lb) → API server host → node host → pod      (porthole, SPDY and WS)
#   client host → haproxy (lb) → relay host api1 → relay host node1 → pod (path 2)
#
#   sudo bash bench/split-roles.sh [--smoke] [--reps N] [--iperf-secs S] [--conn-secs S] [--no-build]
#
# Needs root (network namespaces), etcd, haproxy, iperf3, kubectl. Prints a Markdown table of
# medians and ratios against path 2 (also kept in $OUT/split-roles.md). --smoke (CI): 1 rep,
# 1 s per test; fails on any error. Full run (5 reps): ≈ 6 min on 2 vCPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(); BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) ARGS+=(--smoke) ;;
    --reps|--iperf-secs|--conn-secs|--rtt-count) ARGS+=("$1" "$2"); shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "split-roles.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "split-roles.sh: needs root for the simulated hosts: run it with sudo" >&2; exit 1; }
for tool in etcd haproxy iperf3 kubectl nft; do
  command -v "$tool" >/dev/null || { echo "split-roles.sh: $tool is missing: run scripts/install-test-deps.sh" >&2; exit 1; }
done
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
[ $BUILD = 1 ] && cargo build --release -q -p porthole -p porthole-bench
# bench/tunnel.sh runs the same way with PBENCH_SUBCOMMAND=tunnel.
SUB=${PBENCH_SUBCOMMAND:-split-roles}
OUT=${PBENCH_OUT:-/tmp/porthole-bench-$SUB-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
"$TARGET/release/porthole-bench" "$SUB" --porthole "$TARGET/release/porthole" "${ARGS[@]}" \
  2> "$OUT/$SUB.log" | tee "$OUT/$SUB.md" \
  || { echo "$SUB: FAILED; log: $OUT/$SUB.log" >&2; tail -40 "$OUT/$SUB.log" >&2; exit 1; }
echo "results: $OUT/$SUB.md, log: $OUT/$SUB.log"
