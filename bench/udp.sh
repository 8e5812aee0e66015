#!/usr/bin/env bash
# UDP forwarding (a porthole extension) against the physical limit, in one run: the same UDP
# echo server on the host's loopback (direct) and in a pod of `porthole up`, reached through
# `porthole port-forward :P/udp` over SPDY and over the WebSocket tunnel. Reps interleave the
# routes; medians are reported.
#
#   sudo bash bench/udp.sh [--smoke] [--reps N] [--secs S] [--size B] [--rate R] [--no-build]
#
# Measures: closed loop (32 datagrams in flight) round trips/s and Mbit/s; open loop (R
# datagrams/s offered) share lost. Prints a Markdown table; raw JSON in $OUT/udp.json.
# --smoke (CI): 1 rep of 1 s at 2,000 datagrams/s, fails on any error (≈ 20 s).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3; SECS=3; SIZE=1200; RATE=10000; BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) REPS=1; SECS=1; RATE=2000 ;;
    --reps) REPS=$2; shift ;;
    --secs) SECS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "udp.sh: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "udp.sh: needs root (porthole up makes network namespaces)" >&2; exit 1; }
ENV_SH=${PORTHOLE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/porthole-tools}/env.sh
# shellcheck disable=SC1090
[ -f "$ENV_SH" ] && . "$ENV_SH"
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
[ $BUILD = 1 ] && cargo build --release -q -p porthole -p porthole-bench
OUT=${PBENCH_OUT:-/tmp/porthole-bench-udp-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
"$TARGET/release/porthole-bench" udp --reps "$REPS" --secs "$SECS" --size "$SIZE" --rate "$RATE" > "$OUT/udp.json"
python3 - "$OUT/udp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d = r["routes"]["direct"]
print(f"UDP forwarding: {r['size']} B datagrams, medians of {r['reps']} rep(s) of {r['secs']} s\n")
print(f"| route | round trips/s ({r['window']} in flight) | Mbit/s | vs direct | loss at {r['rate']:,}/s | received/s |")
print("|---|---|---|---|---|---|")
for name, v in r["routes"].items():
    ratio = v["round_trips_per_s"] / d["round_trips_per_s"] if d["round_trips_per_s"] else 0
    print(f"| {name} | {v['round_trips_per_s']:,.0f} | {v['mbit_per_s']:,.1f} | {ratio:.2f}× | "
          f"{v['open_loss_percent']:.2f} % | {v['open_received_per_s']:,.0f} |")
PY
echo "udp.sh: raw results in $OUT/udp.json" >&2
