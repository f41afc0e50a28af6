#!/usr/bin/env bash
# Chaos on a multi-host cluster (issue 27): deploy/local-cluster.sh's rig (3 NATS
# JetStream servers, 3 gateways, each in its own network namespace; every gateway's NATS
# connections through pushgate-load's fault-injecting relay with 2+-3 ms latency; the
# devices in a namespace of their own) under load while gateways are SIGKILLed, SIGSTOPped
# and rolled with SIGTERM, NATS servers SIGKILLed, a gateway host's link goes down, the
# devices are cut from a node, and a node's traffic to NATS is blackholed. The checker
# fails the run on any push answered 200 that a device lost, got twice or out of order.
#
#   bench/chaos.sh [OUT] [-- pushgate-load chaos options]
#     e.g. bench/chaos.sh /tmp/chaos -- --users 10000 --devices 2 --client-procs 2 \
#            --rate 400 --min-secs 600
#
# Writes OUT/report.md (the per-fault table), OUT/timeline.{csv,png}, the event logs and
# the rig's logs; needs root, iproute2, curl, nats-server (scripts/install-test-deps.sh)
# and, for the PNG, gnuplot. Everything the rig creates is removed at the end, also on
# Ctrl-C or SIGTERM.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$(mktemp -d /tmp/pushgate-chaos.XXXXXX)}
[ $# -gt 0 ] && shift
[ "${1:-}" != "--" ] || shift
mkdir -p "$out"
out=$(cd "$out" && pwd)

cd "$here"
cargo build --release -p pushgate -p pushgate-load
driver=
cleanup() {
  [ -z "$driver" ] || kill -TERM "$driver" 2>/dev/null || true
  [ ! -f "$out/rig/state" ] || deploy/local-cluster.sh stop "$out/rig" >/dev/null 2>&1 || true
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

echo "chaos: $(date -u +%FT%TZ), $(nproc) cores, $(uname -r); output in $out"
target/release/pushgate-load chaos --script deploy/local-cluster.sh \
  --bin target/release/pushgate --dir "$out" "$@" &
driver=$!
wait "$driver"
