#!/usr/bin/env bash
# Rootless vs root `porthole up` side by side, in one run (issue 17): one-connection throughput
# and new connections per second through `porthole port-forward`, interleaved reps, medians and
# the ratio rootless ÷ root (bench/rootless.py has the details).
#
#   sudo bash bench/rootless.sh [--smoke] [--reps N] [--iperf-secs S] [--conn-secs S] [--no-build]
#
# Builds porthole and porthole-bench (release) unless --no-build (then the binaries in
# $CARGO_TARGET_DIR/release are used). The rootless cluster runs as the system user
# porthole-rootless (PORTHOLE_ROOTLESS_USER), created if missing. Output: the table on stdout and
# in $OUT/rootless.md, raw figures in $OUT/results.tsv (--out DIR, default
# /tmp/porthole-bench-rootless-<time>). Full run (5 reps): ≈ 2 min on 2 vCPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
args=()
for arg in "$@"; do
  if [ "$arg" = --no-build ]; then build=0; else args+=("$arg"); fi
done
[ "$(id -u)" = 0 ] || { echo "bench/rootless: FAILED: run as root (sudo)" >&2; exit 1; }
if [ "$build" = 1 ]; then
  cargo build --release -p porthole -p porthole-bench
fi
exec python3 bench/rootless.py --bin-dir "${CARGO_TARGET_DIR:-$PWD/target}/release" "${args[@]}"
