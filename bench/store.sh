#!/usr/bin/env bash
# The API server's store backends side by side in one run (issue 12): the embedded redb file
# and a real etcd on loopback, through the same Store trait the API server uses.
#
#   bash bench/store.sh [--smoke] [--objects N] [--threads N] [--reps N] [--no-build]
#
# Prints a Markdown table of medians and etcd/redb ratios, and keeps the raw JSON in
# $OUT/store.json. --smoke (CI): 100 objects, 1 rep, fails on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
OBJECTS=2000; THREADS=8; REPS=3; BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) OBJECTS=100; REPS=1 ;;
    --objects) OBJECTS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "store.sh: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
command -v etcd >/dev/null || { echo "store.sh: etcd is missing: apt-get install etcd-server etcd-client" >&2; exit 1; }
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
[ $BUILD = 1 ] && cargo build --release -q -p porthole-bench
OUT=${PBENCH_OUT:-/tmp/porthole-bench-store-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
"$TARGET/release/porthole-bench" store --objects "$OBJECTS" --threads "$THREADS" --reps "$REPS" > "$OUT/store.json"
python3 - "$OUT/store.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rows = [("creates/s, 1 writer", "creates_per_s_1", "{:,.0f}"),
        (f"creates/s, {r['threads']} writers", "creates_per_s_n", "{:,.0f}"),
        ("get, p50 (µs)", "get_p50_us", "{:,.1f}"),
        (f"list of {r['objects']}, p50 (ms)", "list_p50_ms", "{:,.2f}")]
print(f"Store backends: {r['objects']} objects, medians of {r['reps']} rep(s)\n")
print("| measure | redb | etcd | etcd / redb |\n|---|---|---|---|")
for label, key, fmt in rows:
    print(f"| {label} | {fmt.format(r['redb'][key])} | {fmt.format(r['etcd'][key])} | {r['etcd_over_redb'][key]:.2f}× |")
PY
echo "store.sh: raw results in $OUT/store.json" >&2
