#!/usr/bin/env bash
# porthole's benchmark suite, one command (issue 7; see bench/README.md):
#
#   bash bench/run.sh [--smoke] [--reps N] [--paths a,b,...] [--mem 1000,10000] [--no-build]
#                     [--up-arg ARG]...   (e.g. --up-arg --node-over-tls)
#
# Builds porthole and porthole-bench (release), starts `porthole up` with a pod running an echo
# server and iperf3, sets up every path (physical limit, TLS relay chain, socat+nsenter, ssh -L,
# kubectl port-forward, porthole port-forward), measures them interleaved rep by rep, and writes
# BENCHMARKS.md (full runs) or OUT/BENCHMARKS.smoke.md (--smoke: tiny sizes, 1 rep, fails on any
# error; for CI). Needs root (network namespaces, nsenter, taskset of other processes).
# Everything it starts is stopped on exit (the suite's own cleanup, and the trap below).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0; BUILD=1; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; ARGS+=("$1") ;;
    --no-build) BUILD=0 ;;
    --reps|--paths|--mem|--mem-reps) ARGS+=("$1" "$2"); shift ;;
    --up-arg) ARGS+=("--up-arg=$2"); shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (netns, nsenter, taskset)" >&2; exit 1; }

need=()
for t in iperf3:iperf3 socat:socat sshd:openssh-server ssh:openssh-client nsenter:util-linux \
         taskset:util-linux ip:iproute2 kubectl:kubectl python3:python3; do
  command -v "${t%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${t%%:*}" ] || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need[@]}" | grep -v '^kubectl$' | sort -u | tr '\n' ' ')
  if [ -n "$pkgs" ] && command -v apt-get >/dev/null; then
    echo "run.sh: installing $pkgs" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs >&2
  fi
  command -v kubectl >/dev/null || { echo "run.sh: kubectl is missing (/usr/bin/kubectl)" >&2; exit 1; }
fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ $BUILD = 1 ]; then
  cargo build --release -q -p porthole-bench -p porthole
fi
BENCH=${PORTHOLE_BENCH_BIN:-$TARGET/release/porthole-bench}
PORTHOLE=${PORTHOLE_BIN:-$TARGET/release/porthole}
[ -x "$BENCH" ] || { echo "run.sh: no $BENCH" >&2; exit 1; }

ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${PBENCH_OUT:-/tmp/porthole-bench-$STAMP}
mkdir -p "$OUT"
echo "run.sh: results and logs in $OUT" >&2

SUITE_PID=""
cleanup() {
  # The suite cleans up after itself; this catches what a killed suite left behind.
  if [ -n "$SUITE_PID" ] && kill -0 "$SUITE_PID" 2>/dev/null; then
    kill -TERM "$SUITE_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$SUITE_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SUITE_PID" 2>/dev/null || true
  fi
  ip netns del "pbench-$SUITE_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 "$ROOT/bench/suite.py" --out "$OUT" --bench "$BENCH" --porthole "$PORTHOLE" \
  --command "bash bench/run.sh${ARGS[*]:+ ${ARGS[*]}}" "${ARGS[@]}" &
SUITE_PID=$!
rc=0; wait $SUITE_PID || rc=$?
SUITE_PID_DONE=$SUITE_PID; SUITE_PID=""
ip netns del "pbench-$SUITE_PID_DONE" 2>/dev/null || true

if [ $SMOKE = 1 ]; then
  python3 "$ROOT/bench/summarize.py" "$OUT" > "$OUT/BENCHMARKS.smoke.md"
  echo "run.sh: smoke report $OUT/BENCHMARKS.smoke.md (exit $rc)" >&2
else
  python3 "$ROOT/bench/summarize.py" "$OUT" > "$ROOT/BENCHMARKS.md"
  cp "$ROOT/BENCHMARKS.md" "$OUT/"
  echo "run.sh: wrote BENCHMARKS.md (suite exit $rc)" >&2
fi
exit $rc
