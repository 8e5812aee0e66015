#!/usr/bin/env bash
# One forwarded connection over links with a real round trip (issue 15, target 5): 1, 10 and
# 50 ms at 1 Gbit/s each way on the client host's link, against plain TCP over the same link
# and kubectl port-forward, in one run, on the split-roles cluster of simulated hosts:
#
#   client host ──(delay, 1 Gbit/s)── haproxy → API server → node1 → pod   (porthole, kubectl)
#   client host ──(delay, 1 Gbit/s)── node1's own iperf3                    (plain TCP)
#
#   sudo bash bench/links.sh [--smoke] [--rtt-ms 1,10,50] [--reps N] [--iperf-secs S] [--rate 1gbit] [--no-build]
#
# Needs root (network namespaces), etcd, haproxy, iperf3, kubectl, tc. Prints a Markdown table
# of medians and ratios (also kept in $OUT/links.md). --smoke (CI): 10 ms only, 1 rep, 1 s
# tests. Full run (3 round trips × 3 reps): ≈ 8 min on 2 vCPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(); BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) ARGS+=(--smoke) ;;
    --rtt-ms|--reps|--iperf-secs|--rate) ARGS+=("$1" "$2"); shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "links.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "links.sh: needs root for the simulated hosts: run it with sudo" >&2; exit 1; }
for tool in etcd haproxy iperf3 kubectl tc; do
  command -v "$tool" >/dev/null || { echo "links.sh: $tool is missing: run scripts/install-test-deps.sh" >&2; exit 1; }
done
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
[ $BUILD = 1 ] && cargo build --release -q -p porthole -p porthole-bench
OUT=${PBENCH_OUT:-/tmp/porthole-bench-links-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
"$TARGET/release/porthole-bench" links --porthole "$TARGET/release/porthole" "${ARGS[@]}" \
  2> "$OUT/links.log" | tee "$OUT/links.md" \
  || { echo "links: FAILED; log: $OUT/links.log" >&2; tail -40 "$OUT/links.log" >&2; exit 1; }
echo "results: $OUT/links.md, log: $OUT/links.log"
