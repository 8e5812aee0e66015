#!/usr/bin/env bash
# A node behind NAT reached through the tunnel it dials (porthole node --tunnel) against a node
# the API server dials directly, both protocols, in one run (issue 13: tunnel ≥ 80 % of direct):
#
#   client → haproxy → api1 ─TLS→ node1 → pod                         (direct)
#   client → haproxy → api1 ═tunnel═ haproxy ← NAT router ← natnode → pod   (tunnel)
#
#   sudo bash bench/tunnel.sh [--smoke] [--reps N] [--iperf-secs S] [--conn-secs S] [--no-build]
#
# Same needs and output as bench/split-roles.sh (medians, ratios against direct-spdy, in
# $OUT/tunnel.md). Full run (5 reps): ≈ 8 min on 2 vCPUs.
set -euo pipefail
PBENCH_SUBCOMMAND=tunnel exec bash "$(dirname "$0")/split-roles.sh" "$@"
