#!/usr/bin/env bash
# porthole's main job, end to end, on a fresh Debian machine:
#   bash scripts/demo.sh
# installs what is missing (apt; only this step needs root), builds porthole, starts `porthole up -f examples/web.yaml` in
# the background, waits for its kubeconfig, runs `porthole port-forward web 8080:8000` and
# fetches the page through it with curl. Stops everything on exit.
#
# Knobs: PORTHOLE_BIN=path (skip the build and use this binary), DEMO_LOCAL_PORT (default 8080;
# 0 picks a free one), PORTHOLE_LISTEN (API server address, default 127.0.0.1:0 = a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "demo: $*"; }
die() { echo "demo: FAILED: $*" >&2; [ -n "${WORK:-}" ] && [ -f "$WORK/up.log" ] && tail -30 "$WORK/up.log" >&2; exit 1; }

# 1. What is needed: a C toolchain and protoc for the build (the etcd client's gRPC code is
#    generated at build time), python3 for the example pod, curl.
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v python3 >/dev/null || missing+=(python3)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: install them as root (apt-get install ${missing[*]}), or run this script as root once"
  say "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]}"
fi
# Pods run as any user: as root in bind-mounted network namespaces, otherwise rootless (user
# namespaces); `porthole up` says which, and why not when neither works.

# 2. Build (or use a given binary).
if [ -n "${PORTHOLE_BIN:-}" ]; then
  BIN=$PORTHOLE_BIN
else
  command -v cargo >/dev/null || die "cargo not found: install Rust (stable) first"
  say "cargo build --release"
  cargo build --release
  BIN=$PWD/target/release/porthole
fi
[ -x "$BIN" ] || die "no porthole binary at $BIN"

WORK=$(mktemp -d /tmp/porthole-demo.XXXXXX)
UP=""; FWD=""
stop() {  # SIGINT like Ctrl-C, then wait (bounded) for a clean exit
  local pid=$1; [ -n "$pid" ] || return 0
  kill -INT "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() { stop "$FWD"; stop "$UP"; rm -rf "$WORK"; }
trap cleanup EXIT

# 3. The cluster, in the background.
say "\$ porthole up -f examples/web.yaml --data-dir $WORK/data"
: > "$WORK/up.log"
"$BIN" up -f examples/web.yaml --data-dir "$WORK/data" --listen "${PORTHOLE_LISTEN:-127.0.0.1:0}" \
  >> "$WORK/up.log" 2>&1 &
UP=$!
export KUBECONFIG=$WORK/data/kubeconfig
for _ in $(seq 1 480); do
  grep -q "^porthole up: cluster ready" "$WORK/up.log" && break
  kill -0 "$UP" 2>/dev/null || die "porthole up exited"
  sleep 0.25
done
grep -q "^porthole up: cluster ready" "$WORK/up.log" || die "porthole up was not ready within 120 s"
sed -n '/^porthole up: cluster ready/p' "$WORK/up.log"

# 4. Wait for the pod to be Ready, then forward to it.
if command -v kubectl >/dev/null; then
  say "\$ kubectl wait --for=condition=Ready pod/web"
  kubectl wait --for=condition=Ready pod/web --timeout=90s || die "pod web not Ready"
  kubectl get pods
fi
LOCAL=${DEMO_LOCAL_PORT:-8080}
say "\$ porthole port-forward web $LOCAL:8000"
# Created before the background job opens it, so the poll below never reads a missing file.
: > "$WORK/pf.log"
"$BIN" port-forward web "$LOCAL:8000" >> "$WORK/pf.log" 2>&1 &
FWD=$!
port=""
for _ in $(seq 1 240); do
  port=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) -> 8000$/\1/p;T;q' "$WORK/pf.log")
  [ -n "$port" ] && break
  kill -0 "$FWD" 2>/dev/null || { cat "$WORK/pf.log" >&2; die "porthole port-forward exited"; }
  sleep 0.25
done
[ -n "$port" ] || die "porthole port-forward printed no 'Forwarding from' line within 60 s"
cat "$WORK/pf.log"

# 5. The page, through the forward.
say "\$ curl localhost:$port"
# Retries cover a pod whose server is still starting (without kubectl there was no wait above).
page=$(curl -sS --max-time 30 --retry 20 --retry-delay 1 --retry-all-errors "http://localhost:$port/") \
  || die "curl through the forward failed"
# No pipes here: `grep -q` or `head` closing early would kill the writer with SIGPIPE, which
# pipefail turns into a failure.
sed -n 1,5p <<< "$page"
[[ $page == *"Directory listing"* ]] || die "unexpected page from the web pod"
say "ok: fetched the web pod's page through porthole port-forward"
