#!/usr/bin/env bash
# A whole multi-host porthole cluster on one machine, to try it out, as root:
#
#   bash scripts/cluster.sh up     [--dir DIR] [--name NAME] [--bin PATH]
#   bash scripts/cluster.sh status [--dir DIR] [--name NAME]
#   bash scripts/cluster.sh down   [--dir DIR] [--name NAME]
#
# The hosts are simulated the way crates/porthole-test/src/testbed.rs does it: each host is a
# network namespace `NAME-HOST` with one interface eth0 (198.18.0.10, .11, ... /24), whose veth
# peer sits on bridge br0 in one more namespace, `NAME-switch`. Both ends of every veth are
# created inside the namespaces, so nothing appears in the machine's root namespace, and no host
# has a default route: traffic stays between the hosts.
#
#   etcd    198.18.0.10   etcd, data in DIR/etcd
#   api1    198.18.0.11   porthole apiserver on :6443, store on etcd
#   api2    198.18.0.12   porthole apiserver on :6443, store on etcd
#   lb      198.18.0.13   haproxy on :6443 (TCP passthrough, GET /readyz health checks)
#   node1   198.18.0.14   porthole node --join https://198.18.0.13:6443 ..., on :10250
#   node2   198.18.0.15   same
#   node3   198.18.0.16   same
#   client  198.18.0.17   for kubectl and porthole port-forward
#
# `up` waits for each component's ready line in its log (DIR/logs/COMPONENT.log) and then for
# three Ready nodes; the processes keep running in the background (pids in DIR/pids). If any
# step fails, `up` runs the cleanup of `down` before it exits. `down` stops everything
# (SIGTERM, then SIGKILL), kills whatever is still inside the namespaces, removes them and DIR;
# it is safe to run more than once and after a failed `up`.
#
# Defaults: NAME=phc, DIR=/tmp/porthole-cluster-NAME, PATH=target/release/porthole (build it
# with `cargo build --release -p porthole`). CLUSTER_READY_TIMEOUT (seconds, default 90)
# bounds each wait.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="bash scripts/cluster.sh"
# Hosts in address order: HOSTS[i] gets 198.18.0.(10+i).
HOSTS=(etcd api1 api2 lb node1 node2 node3 client)
NODES=(node1 node2 node3)
# Components (log and pid file names) and the host each runs on.
COMPONENTS=(etcd api1 api2 haproxy node1 node2 node3)
declare -A HOST_OF=([etcd]=etcd [api1]=api1 [api2]=api2 [haproxy]=lb [node1]=node1 [node2]=node2 [node3]=node3)
LB_URL=https://198.18.0.13:6443
ETCD_URL=http://198.18.0.10:2379
RECORDS=/run/porthole-cluster
TIMEOUT=${CLUSTER_READY_TIMEOUT:-90}
MARKER=.porthole-cluster

say() { printf 'cluster.sh: %s\n' "$*"; }
warn() { printf 'cluster.sh: warning: %s\n' "$*" >&2; }
fail() { printf 'cluster.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<EOF
usage: $SELF up|down|status [--dir DIR] [--name NAME] [--bin PATH]

  up      create the hosts (network namespaces NAME-*), start etcd, two API servers, haproxy
          and three joined nodes, and wait until the nodes are Ready
  status  which components run, haproxy's backend states, kubectl get nodes
  down    stop everything, remove the namespaces and DIR (also after a failed up)

  --dir DIR    state, logs and pids (default /tmp/porthole-cluster-NAME)
  --name NAME  namespace prefix: 1-15 of a-z and 0-9, starting with a letter (default phc)
  --bin PATH   the porthole binary (default $ROOT/target/release/porthole)
EOF
}

# ---------------------------------------------------------------------------------------------
# Arguments.

[ $# -ge 1 ] || { usage >&2; exit 64; }
CMD=$1
shift
case $CMD in
  up | down | status) ;;
  -h | --help | help) usage; exit 0 ;;
  *) printf 'cluster.sh: unknown command %q\n' "$CMD" >&2; usage >&2; exit 64 ;;
esac
NAME=phc
DIR=""
BIN=$ROOT/target/release/porthole
while [ $# -gt 0 ]; do
  case $1 in
    --dir | --name | --bin)
      [ $# -ge 2 ] || { printf 'cluster.sh: %s needs a value\n' "$1" >&2; exit 64; }
      case $1 in --dir) DIR=$2 ;; --name) NAME=$2 ;; --bin) BIN=$2 ;; esac
      shift 2 ;;
    --dir=*) DIR=${1#*=}; shift ;;
    --name=*) NAME=${1#*=}; shift ;;
    --bin=*) BIN=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'cluster.sh: unknown argument %q\n' "$1" >&2; usage >&2; exit 64 ;;
  esac
done
if ! [[ $NAME =~ ^[a-z][a-z0-9]{0,14}$ ]]; then
  printf 'cluster.sh: --name %q: use 1-15 of a-z and 0-9, starting with a letter (no "-": it separates NAME from the host)\n' "$NAME" >&2
  exit 64
fi
if [[ $NAME == phtb* ]]; then
  # The Rust testbed removes phtb<pid>... namespaces of test processes that are gone.
  printf 'cluster.sh: --name %q: names starting with phtb belong to the Rust tests; pick another\n' "$NAME" >&2
  exit 64
fi
[ "$(id -u)" = 0 ] || fail "not root: run with sudo (the hosts are network namespaces)"
# Which directory: --dir, else the one `up` recorded for NAME, else the default.
if [ -z "$DIR" ] && [ -f "$RECORDS/$NAME" ]; then
  DIR=$(<"$RECORDS/$NAME")
fi
DIR=${DIR:-/tmp/porthole-cluster-$NAME}
DIR=$(realpath -m -- "$DIR")
[[ $DIR =~ ^[A-Za-z0-9/._+-]+$ ]] || fail "--dir $DIR: use a path of letters, digits and / . _ + - only (it goes into haproxy's config)"
[ "$DIR" != / ] || fail "--dir /: pick a directory of its own"

# ---------------------------------------------------------------------------------------------
# Helpers.

ns() { printf '%s-%s' "$NAME" "$1"; }
ip_of() {
  local i
  for i in "${!HOSTS[@]}"; do
    if [ "${HOSTS[$i]}" = "$1" ]; then printf '198.18.0.%d' $((10 + i)); return; fi
  done
  fail "internal: no host $1"
}
on() { local host=$1; shift; ip netns exec "$(ns "$host")" "$@"; }
# The namespaces of this cluster that exist now (the hosts, the switch, and any NAME-* left).
existing_namespaces() {
  local f
  for f in /run/netns/"$NAME"-*; do
    [ -e "$f" ] && basename "$f"
  done
  return 0
}
# Runs a command; on failure stops with what it was for and what the command printed.
run() {
  local what=$1 out
  shift
  if ! out=$("$@" 2>&1); then
    fail "$what: \`$*\` failed: $out"
  fi
}
alive() {
  local state
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ]
}
# The pid of a component, if it is running and is really ours (its command line names DIR).
pid_of() {
  local file=$DIR/pids/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(<"$file")
  alive "$pid" || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" || return 1
  printf '%s' "$pid"
}
log_tail() {
  local log=$1
  [ -f "$log" ] || return 0
  printf -- '--- last 40 lines of %s ---\n' "$log" >&2
  tail -n 40 "$log" >&2
  printf -- '---\n' >&2
}
die_log() { printf 'cluster.sh: error: %s\n' "$1" >&2; log_tail "$2"; exit 1; }

# haproxy's `show stat` CSV through its stats socket.
stats() {
  local sock=$DIR/haproxy/stats.sock
  [ -S "$sock" ] || return 1
  if command -v socat >/dev/null; then
    printf 'show stat\n' | socat -t 2 - "UNIX-CONNECT:$sock"
  else
    python3 - "$sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.write(out.decode())
EOF
  fi
}
# One line per API server backend: NAME STATUS LAST_CHECK (e.g. `api1 UP L7OK`).
backend_states() {
  stats | awk -F, '$1 == "apiservers" && $2 ~ /^api/ { print $2, $18, ($37 == "" ? "-" : $37) }'
}

kubectl_client() {
  on client kubectl --kubeconfig "$DIR/admin.kubeconfig" --cache-dir "$DIR/kube-cache" \
    --request-timeout=10s "$@"
}

# ---------------------------------------------------------------------------------------------
# down (also the cleanup of a failed up).

# SIGTERM the running ones among the components, wait up to $1 seconds, then SIGKILL.
stop_components() {
  local grace=$1 c pid deadline
  shift
  local pids=()
  for c in "$@"; do
    if pid=$(pid_of "$c"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      say "stopping $c (pid $pid)"
    fi
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  deadline=$((SECONDS + grace))
  for pid in "${pids[@]}"; do
    # Polls the exit of processes that are not our children (no `wait` for those).
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if alive "$pid"; then
      warn "pid $pid did not stop within ${grace}s of SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# Every process whose mount namespace is one recorded by `up` (each `ip netns exec` makes one:
# a node and its pods share it, so pods of a node that died are found too). The mount
# namespace of this shell and of init are never taken, whatever a file says.
processes_in_mount_namespaces() {
  local f mine init want p
  mine=$(readlink /proc/self/ns/mnt)
  init=$(readlink /proc/1/ns/mnt)
  want=()
  for f in "$DIR"/pids/*.mnt; do
    [ -f "$f" ] || continue
    local m
    m=$(<"$f")
    [ -n "$m" ] && [ "$m" != "$mine" ] && [ "$m" != "$init" ] && want+=("$m")
  done
  [ ${#want[@]} -gt 0 ] || return 0
  for p in /proc/[0-9]*; do
    local m
    m=$(readlink "$p/ns/mnt" 2>/dev/null) || continue
    for f in "${want[@]}"; do
      if [ "$m" = "$f" ]; then basename "$p"; break; fi
    done
  done
}

kill_leftovers() {
  local round pids n p
  for round in 1 2 3 4 5 6 7 8 9 10; do
    pids=()
    for n in $(existing_namespaces); do
      for p in $(ip netns pids "$n" 2>/dev/null); do pids+=("$p"); done
    done
    for p in $(processes_in_mount_namespaces); do pids+=("$p"); done
    [ ${#pids[@]} -gt 0 ] || return 0
    [ "$round" -gt 1 ] || say "killing ${#pids[@]} process(es) still in the cluster's namespaces: ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for p in "${pids[@]}"; do
      local deadline=$((SECONDS + 10))
      while alive "$p" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    done
  done
  warn "processes keep appearing in the cluster's namespaces"
}

# Ancestors of this shell (their command lines name DIR: this script's own arguments).
ancestors() {
  local p=$$
  while [ -n "$p" ] && [ "$p" != 0 ]; do
    printf '%s\n' "$p"
    p=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f2) || break
  done
}

cleanup() {
  local n left
  # Nodes first (each stops its pods: SIGTERM, grace period, SIGKILL), then the balancer, the
  # API servers (the leader releases its lease) and the store.
  stop_components 60 "${NODES[@]}"
  stop_components 20 haproxy
  stop_components 20 api1 api2
  stop_components 20 etcd
  kill_leftovers
  for n in $(existing_namespaces); do
    ip netns delete "$n" 2>/dev/null || warn "could not delete namespace $n"
  done
  left=$(existing_namespaces)
  [ -z "$left" ] || fail "namespaces left behind: $left (see \`ip netns pids NAME\`)"
  # Nothing should be mounted under DIR (the nodes mount in their own mount namespaces).
  awk -v d="$DIR" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
    | sort -r | while read -r m; do umount -l "$m" || warn "could not unmount $m"; done
  if [ -d "$DIR" ]; then
    if [ -f "$DIR/$MARKER" ]; then
      rm -rf -- "$DIR" || fail "could not remove $DIR"
    else
      warn "not removing $DIR: it has no $MARKER file, so it is not a cluster's directory"
    fi
  fi
  rm -f -- "$RECORDS/$NAME"
  rmdir --ignore-fail-on-non-empty "$RECORDS" 2>/dev/null || true
  # Report (do not kill) anything else still naming DIR, e.g. a shell reading its logs.
  local anc p
  anc=" $(ancestors | tr '\n' ' ') "
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $anc == *" $p "* ]] && continue
    if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$DIR"; then
      warn "pid $p still mentions $DIR: $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)"
    fi
  done
}

cmd_down() {
  if [ -z "$(existing_namespaces)" ] && [ ! -d "$DIR" ]; then
    rm -f -- "$RECORDS/$NAME"
    say "cluster $NAME is not up: nothing to remove"
    return 0
  fi
  cleanup
  if [ -d "$DIR" ]; then
    say "cluster $NAME is down: processes stopped, namespaces $NAME-* removed ($DIR kept)"
  else
    say "cluster $NAME is down: processes stopped, namespaces $NAME-* and $DIR removed"
  fi
}

# ---------------------------------------------------------------------------------------------
# up.

need() {
  command -v "$1" >/dev/null || fail "$1 not installed: $2"
}

create_hosts() {
  local sw i h n cidr
  sw=$(ns switch)
  run "create the switch namespace" ip netns add "$sw"
  run "bring up the switch's loopback" ip -n "$sw" link set lo up
  run "create the switch's bridge" ip -n "$sw" link add br0 type bridge
  run "bring up the bridge" ip -n "$sw" link set br0 up
  for i in "${!HOSTS[@]}"; do
    h=${HOSTS[$i]}
    n=$(ns "$h")
    cidr=$(ip_of "$h")/24
    run "create host $h" ip netns add "$n"
    # Both ends are created inside their namespaces: nothing appears in the root namespace.
    run "create the link of host $h" \
      ip link add eth0 netns "$n" type veth peer name "port$i" netns "$sw"
    run "attach host $h to the bridge" ip -n "$sw" link set "port$i" master br0 up
    run "address host $h" ip -n "$n" addr add "$cidr" dev eth0
    run "bring up eth0 of host $h" ip -n "$n" link set eth0 up
    run "bring up loopback of host $h" ip -n "$n" link set lo up
  done
  say "hosts: $(for h in "${HOSTS[@]}"; do printf '%s=%s ' "$(ns "$h")" "$(ip_of "$h")"; done)"
}

# start COMPONENT COMMAND...: in the background on the component's host, detached from this
# terminal (setsid), stdin closed, stdout and stderr in DIR/logs/COMPONENT.log. setsid and
# `ip netns exec` exec the command, so the recorded pid is the command's.
start() {
  local c=$1
  shift
  : > "$DIR/logs/$c.log"
  setsid ip netns exec "$(ns "${HOST_OF[$c]}")" "$@" < /dev/null >> "$DIR/logs/$c.log" 2>&1 &
  printf '%s\n' "$!" > "$DIR/pids/$c.pid"
}

# wait_ready COMPONENT TEXT: until TEXT is in the component's log; fails with the log's tail
# when the process exits first or after TIMEOUT seconds.
wait_ready() {
  local c=$1 text=$2 log=$DIR/logs/$1.log pid deadline
  pid=$(<"$DIR/pids/$c.pid")
  deadline=$((SECONDS + TIMEOUT))
  until grep -qF -- "$text" "$log"; do
    if ! alive "$pid"; then
      grep -qF -- "$text" "$log" && break
      die_log "$c (on host $(ns "${HOST_OF[$c]}")) exited before it was ready" "$log"
    fi
    [ $SECONDS -lt $deadline ] || die_log "$c printed no \"$text\" within ${TIMEOUT}s" "$log"
    sleep 0.2
  done
  # Its own mount namespace (made by `ip netns exec`): down finds its children through it.
  readlink "/proc/$pid/ns/mnt" > "$DIR/pids/$c.mnt" 2>/dev/null || true
}

start_etcd() {
  local ip
  ip=$(ip_of etcd)
  start etcd etcd --name "$NAME-etcd" --data-dir "$DIR/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "$NAME-etcd=http://$ip:2380" \
    --logger zap --log-outputs stderr
  wait_ready etcd "serving client traffic"
  say "etcd serves $ETCD_URL (host $(ns etcd))"
}

make_pki() {
  run "create the PKI" "$BIN" certs create --dir "$DIR/pki" \
    --apiserver-san "$(ip_of lb)" --apiserver-san "$(ip_of api1)" --apiserver-san "$(ip_of api2)" \
    --server "$LB_URL"
  cp "$DIR/pki/admin.kubeconfig" "$DIR/admin.kubeconfig"
  chmod 600 "$DIR/admin.kubeconfig"
  say "PKI in $DIR/pki (API server SANs: $(ip_of lb), $(ip_of api1), $(ip_of api2))"
}

start_apiservers() {
  local a ip p=$DIR/pki
  for a in api1 api2; do
    ip=$(ip_of "$a")
    mkdir -p "$DIR/$a"
    start "$a" "$BIN" apiserver --listen "$ip:6443" --etcd-servers "$ETCD_URL" \
      --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
      --client-ca-file "$p/ca.crt" \
      --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" \
      --kubelet-client-key "$p/apiserver-kubelet-client.key" \
      --kubelet-certificate-authority "$p/ca.crt" \
      --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
      --audit-log-path "$DIR/$a/audit.log"
  done
  for a in api1 api2; do
    wait_ready "$a" "porthole apiserver listening on https://$(ip_of "$a"):6443"
    say "$a: porthole apiserver on https://$(ip_of "$a"):6443 (host $(ns "$a"))"
  done
}

start_haproxy() {
  local cfg=$DIR/haproxy/haproxy.cfg states deadline
  mkdir -p "$DIR/haproxy"
  cat > "$cfg" <<EOF
# Written by scripts/cluster.sh for cluster $NAME.
global
  stats socket $DIR/haproxy/stats.sock mode 600 level admin
  log stderr format raw local0
defaults
  mode tcp
  log global
  option dontlognull
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend apiservers
  bind $(ip_of lb):6443
  no log  # connections are not logged; health check changes are (backend apiservers)
  default_backend apiservers
backend apiservers
  # TLS passes through to the API servers (client certificates reach them); each is checked
  # with GET /readyz over TLS and leaves rotation while it answers anything but 200.
  balance leastconn
  option httpchk
  http-check send meth GET uri /readyz
  http-check expect status 200
  default-server check check-ssl verify none inter 1s fall 2 rise 1
  server api1 $(ip_of api1):6443
  server api2 $(ip_of api2):6443
EOF
  run "check the haproxy config $cfg" haproxy -c -q -f "$cfg"
  start haproxy haproxy -db -f "$cfg"
  # Ready: the stats socket answers and both backends passed a /readyz check.
  deadline=$((SECONDS + TIMEOUT))
  while :; do
    states=$(backend_states 2>/dev/null || true)
    if [ "$(grep -c ' UP L7OK$' <<< "$states")" = 2 ]; then break; fi
    alive "$(<"$DIR/pids/haproxy.pid")" || die_log "haproxy (on host $(ns lb)) exited" "$DIR/logs/haproxy.log"
    [ $SECONDS -lt $deadline ] \
      || die_log "haproxy's backends did not both pass /readyz within ${TIMEOUT}s: ${states:-stats socket not answering}" "$DIR/logs/haproxy.log"
    sleep 0.3
  done
  readlink "/proc/$(<"$DIR/pids/haproxy.pid")/ns/mnt" > "$DIR/pids/haproxy.mnt" 2>/dev/null || true
  say "haproxy on $LB_URL (host $(ns lb)): $(paste -sd ' ' <<< "$states" | sed 's/ \(api[0-9]\)/, \1/g')"
}

join_nodes() {
  local line words url token hash n ip
  line=$(on client timeout "$TIMEOUT" "$BIN" token create --kubeconfig "$DIR/admin.kubeconfig" \
    --description "scripts/cluster.sh $NAME" 2> "$DIR/logs/token-create.log") \
    || die_log "porthole token create (on host $(ns client), through $LB_URL) failed" "$DIR/logs/token-create.log"
  read -r -a words <<< "$line"
  if [ ${#words[@]} -ne 8 ] || [ "${words[*]:0:3}" != "porthole node --join" ]; then
    fail "porthole token create printed no join command: $line"
  fi
  url=${words[3]} token=${words[5]} hash=${words[7]}
  [ "$url" = "$LB_URL" ] || fail "the join command names $url, not the balancer $LB_URL"
  say "join command: porthole node --join $url --token ${token%%.*}.<secret> --ca-cert-hash $hash"
  for n in "${NODES[@]}"; do
    ip=$(ip_of "$n")
    # The token goes through the environment (PORTHOLE_JOIN_TOKEN, what --token reads), so it
    # does not show in the process list.
    start "$n" env "PORTHOLE_JOIN_TOKEN=$token" "$BIN" node --join "$url" --ca-cert-hash "$hash" \
      --node-name "$n" --node-ip "$ip" --listen "$ip:10250" --data-dir "$DIR/$n"
  done
  for n in "${NODES[@]}"; do
    wait_ready "$n" "porthole node $n listening on https://$(ip_of "$n"):10250"
    say "$n: joined, porthole node on https://$(ip_of "$n"):10250 (host $(ns "$n"))"
  done
}

wait_nodes_ready() {
  local deadline out ready n
  deadline=$((SECONDS + TIMEOUT))
  while :; do
    out=$(kubectl_client get nodes --no-headers 2>&1 || true)
    ready=$(awk '$2 == "Ready"' <<< "$out" | wc -l)
    [ "$ready" -ge ${#NODES[@]} ] && break
    for n in "${NODES[@]}"; do
      alive "$(<"$DIR/pids/$n.pid")" || die_log "$n exited" "$DIR/logs/$n.log"
    done
    [ $SECONDS -lt $deadline ] || fail "not all ${#NODES[@]} nodes were Ready within ${TIMEOUT}s; kubectl get nodes: $out"
    sleep 0.5
  done
  printf '%s\n' "$out" | sed 's/^/  /'
}

UP_DONE=0
on_up_exit() {
  local rc=$?
  if [ "$UP_DONE" != 1 ]; then
    trap - INT TERM
    printf 'cluster.sh: up failed (exit %s): removing what it started\n' "$rc" >&2
    cleanup || true
    printf 'cluster.sh: fix the error above, then run up again\n' >&2
  fi
}

cmd_up() {
  need ip "apt-get install iproute2"
  need etcd "apt-get install etcd-server"
  need haproxy "apt-get install haproxy"
  need kubectl "install kubectl (e.g. apt-get install kubernetes-client)"
  command -v socat >/dev/null || command -v python3 >/dev/null \
    || fail "socat not installed (needed for haproxy's stats socket): apt-get install socat"
  [ -x "$BIN" ] || fail "no porthole binary at $BIN: build it with \`cargo build --release -p porthole\` or pass --bin PATH"
  BIN=$(realpath -- "$BIN")
  if [ -n "$(existing_namespaces)" ]; then
    fail "cluster $NAME already up (namespaces $(existing_namespaces | paste -sd ' ')): run \`$SELF down --name $NAME\` first"
  fi
  if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then
    if [ -f "$DIR/$MARKER" ]; then
      fail "$DIR holds the state of an earlier cluster: run \`$SELF down --name $NAME --dir $DIR\` first"
    fi
    fail "$DIR exists and is not empty: pass --dir with a new or empty directory"
  fi
  [ ${#DIR} -le 90 ] || fail "--dir $DIR is too long for haproxy's stats socket path (at most 90 characters)"
  mkdir -p "$DIR/logs" "$DIR/pids" "$RECORDS"
  printf 'porthole cluster %s\n' "$NAME" > "$DIR/$MARKER"
  printf '%s\n' "$DIR" > "$RECORDS/$NAME"
  trap on_up_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  say "bringing up cluster $NAME in $DIR"
  create_hosts
  start_etcd
  make_pki
  start_apiservers
  start_haproxy
  join_nodes
  wait_nodes_ready
  UP_DONE=1

  local k=$DIR/admin.kubeconfig c
  c=$(ns client)
  cat <<EOF

cluster $NAME is up: etcd, 2 API servers behind haproxy, 3 nodes.
  kubeconfig: $k
  server $LB_URL (the balancer) is reachable from the cluster's hosts, e.g. $c
  logs: $DIR/logs/   pids: $DIR/pids/

Try (as root):
  ip netns exec $c kubectl --kubeconfig $k get nodes -o wide
  ip netns exec $c kubectl --kubeconfig $k get leases -n kube-system
  ip netns exec $c kubectl --kubeconfig $k create -f $ROOT/examples/web.yaml
  ip netns exec $c kubectl --kubeconfig $k wait --for=condition=Ready pod/web --timeout=90s
  ip netns exec $c $BIN port-forward --kubeconfig $k web 8080:8000
  ip netns exec $c curl -s localhost:8080          # in a second terminal
  ip netns exec $c bash                            # a shell on the client host
Then:
  $SELF status --name $NAME
  $SELF down --name $NAME
EOF
}

# ---------------------------------------------------------------------------------------------
# status.

cmd_status() {
  local n c pid rc=0 states what
  if [ -z "$(existing_namespaces)" ] && [ ! -d "$DIR" ]; then
    say "cluster $NAME is not up (no namespaces $NAME-*, no $DIR): \`$SELF up --name $NAME\` starts it"
    return 3
  fi
  echo "cluster $NAME, state in $DIR"
  echo "hosts:"
  for n in switch "${HOSTS[@]}"; do
    if [ -e "/run/netns/$(ns "$n")" ]; then
      if [ "$n" = switch ]; then what="bridge br0"; else what=$(ip_of "$n"); fi
      printf '  %-14s %s\n' "$(ns "$n")" "$what"
    else
      printf '  %-14s MISSING\n' "$(ns "$n")"
      rc=1
    fi
  done
  echo "components:"
  for c in "${COMPONENTS[@]}"; do
    if pid=$(pid_of "$c"); then
      printf '  %-8s running   pid %-8s host %-14s log %s\n' "$c" "$pid" "$(ns "${HOST_OF[$c]}")" "$DIR/logs/$c.log"
    else
      printf '  %-8s NOT RUNNING               host %-14s log %s\n' "$c" "$(ns "${HOST_OF[$c]}")" "$DIR/logs/$c.log"
      rc=1
    fi
  done
  echo "haproxy backends (stats socket $DIR/haproxy/stats.sock; status, last /readyz check):"
  if states=$(backend_states 2>/dev/null) && [ -n "$states" ]; then
    printf '  %s\n' "${states//$'\n'/$'\n'  }"
    grep -q -v ' UP ' <<< "$states" && rc=1
  else
    echo "  stats socket not answering"
    rc=1
  fi
  if [ -e "/run/netns/$(ns client)" ] && [ -f "$DIR/admin.kubeconfig" ]; then
    echo "kubectl get nodes (from $(ns client), through $LB_URL):"
    if ! kubectl_client get nodes -o wide 2>&1 | sed 's/^/  /'; then rc=1; fi
    if command -v etcdctl >/dev/null; then
      echo "etcd:"
      on client env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_URL" --dial-timeout=3s \
        endpoint health 2>&1 | sed 's/^/  /' || rc=1
    fi
  fi
  return $rc
}

case $CMD in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
esac
