#!/usr/bin/env bash
# The cluster bus under load, beside the single-node figures of the same run: a real
# nats-server and two release pushgate nodes (A and B) on free loopback ports, stopped by
# PID when the script exits.
#   bench/cluster.sh fanout [SUBSCRIBERS] [PUSHES] [RATE]
#       single node (subscribers on A, pushes to A) then cross node (subscribers on B,
#       pushes to A: every delivery crosses the bus), same arguments.
#   bench/cluster.sh storm [STORM_USERS] [UNSUBSCRIBE_DELAY]
#       1000 users online on B get 2000 pushes/s through A for 12 s; 2 s in, STORM_USERS
#       more connect to B within a second, all drop and reconnect within a second, leave.
#       Deliveries before/during/after the storm are reported apart.
# PUSHGATE_BIN=path runs the nodes from another pushgate binary (an older build, as the
# baseline of a change to the bus); the load tool is always this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-fanout}
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
logs=$(mktemp -d)
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$logs"' EXIT

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" >"$logs/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done

# start_node NAME EXTRA_ARGS...: a node on the bus; sets ${NAME}_port, ${NAME}_cport and
# ${NAME}_pid. start_node NAME --alone: a single node routing in-process.
start_node() {
  local name=$1; shift
  local p c bus=(--nats "nats://127.0.0.1:$nats_port")
  if [ "${1:-}" = --alone ]; then bus=(); shift; fi
  p=$(free_port); c=$(free_port)
  "${PUSHGATE_BIN:-./target/release/pushgate}" --dev --listen "127.0.0.1:$p" --control "127.0.0.1:$c" \
    --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 --shutdown-drain 1 \
    --node-id "$name" "${bus[@]}" "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$c/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$c/readyz" >/dev/null || { cat "$logs/$name.log"; exit 1; }
  printf -v "${name}_port" %s "$p"
  printf -v "${name}_cport" %s "$c"
  printf -v "${name}_pid" %s "${pids[-1]}"
}
stop_node() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }

case $mode in
fanout)
  subs=${2:-10000}; pushes=${3:-100000}; rate=${4:-0}
  start_node A
  start_node B
  echo "== single node: subscribers on A, pushes through A"
  ./target/release/pushgate-load fanout --server "127.0.0.1:$A_port" --api "127.0.0.1:$A_cport" \
    --subscribers "$subs" --pushes "$pushes" --rate "$rate" --sources 32
  echo "== cross node: subscribers on B, pushes through A"
  ./target/release/pushgate-load fanout --server "127.0.0.1:$B_port" --api "127.0.0.1:$A_cport" \
    --subscribers "$subs" --pushes "$pushes" --rate "$rate" --sources 32
  echo "B's bus latency histogram (publish on A to handed to B's reactors), cumulative:"
  curl -s "127.0.0.1:$B_cport/metrics" | grep -E '^pushgate_bus_latency_seconds_(bucket|count)' | tr '\n' ' '; echo
  ;;
storm)
  storm=${2:-10000}; delay=${3:-5}
  load=(--subscribers 1000 --pushes 24000 --rate 2000 --sources 8 --storm-users "$storm" --storm-after 2)
  echo "== reference: one node, no bus; subscribers, pushes and storm all on L"
  start_node L --alone
  ./target/release/pushgate-load fanout --server "127.0.0.1:$L_port" --api "127.0.0.1:$L_cport" "${load[@]}"
  stop_node "$L_pid"
  echo "== cluster: subscribers and storm on B, pushes through A (unsubscribe delay ${delay}s)"
  start_node A --bus-unsubscribe-delay "$delay"
  start_node B --bus-unsubscribe-delay "$delay"
  ./target/release/pushgate-load fanout --server "127.0.0.1:$B_port" --api "127.0.0.1:$A_cport" "${load[@]}"
  curl -s "127.0.0.1:$B_cport/metrics" | grep -E '^pushgate_bus_(interest_changes_total|subscriptions|slow_consumer_total) '
  ;;
*) echo "usage: $0 fanout|storm ..." >&2; exit 2 ;;
esac
