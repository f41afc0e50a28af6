#!/usr/bin/env bash
# Hundreds of thousands of connections on this machine (issue 14): a real nats-server, as
# many release pushgate nodes as the open-files cap needs (each on its own free ports,
# one reactor each), and `pushgate-load scale` spread over several load processes (each
# under the cap, each with its own users, source addresses 127.0.0.2-127.0.0.254 and
# nodes). It measures: connect time for all; each node's memory per connection (bus
# client included) and nats-server's per subscription; pushes to random users at a fixed
# rate, half published through a node that does not hold the user; broadcasts to every
# connection (time until the last one has it); a reconnect storm; losses in each.
# Beforehand, in the same run, one node without the bus holds one node's share of the
# connections: the baseline for the memory per connection.
#
#   bench/scale.sh [CONNECTIONS] [NODES] [PROCESSES]
#       defaults: 200000, one node per 14000 connections, one process per node.
#   Environment: RATE (pushes/s in all, 10000: what this 2-core machine holds with
#   today's bus; 20000 overflows the bus queues, see bench/RESULTS.md), PUSH_SECS (20), BROADCASTS (10),
#   BROADCAST_INTERVAL (3), STORM (users, CONNECTIONS/10), REACTORS (per node, 1),
#   BASELINE (0 skips the no-bus node), PUBLISHERS (API connections per group, 2),
#   TIME_LIMIT (seconds for the whole load run, 900), EXTRA_NODE_ARGS (appended to each
#   node's command line, e.g. to try a bus option).
#
# Uses the whole machine for minutes; on a shared machine say so beside the figures.
# Every process it starts is stopped by PID when it exits. Changes no sysctl.
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-200000}
per_node_target=14000
nodes=${2:-$(((conns + per_node_target - 1) / per_node_target))}
procs=${3:-$nodes}
rate=${RATE:-10000}
push_secs=${PUSH_SECS:-20}
broadcasts=${BROADCASTS:-10}
interval=${BROADCAST_INTERVAL:-3}
storm=${STORM:-$((conns / 10))}
reactors=${REACTORS:-1}
publishers=${PUBLISHERS:-2}
time_limit=${TIME_LIMIT:-900}
read -r -a extra_node_args <<<"${EXTRA_NODE_ARGS:-}"

echo "== machine and limits ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo "kernel $(uname -r), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E '^(MemTotal|MemAvailable|SwapTotal):' /proc/meminfo | tr -s ' ' | tr '\n' ' '; echo
for k in fs.file-max fs.nr_open net.ipv4.ip_local_port_range net.core.somaxconn \
  net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_mem net.ipv4.tcp_rmem net.ipv4.tcp_wmem \
  net.netfilter.nf_conntrack_max; do
  printf '%s = %s\n' "$k" "$(sysctl -n "$k" 2>/dev/null | tr '\t' ' ' || echo n/a)"
done
echo "open files per process: soft $(ulimit -Sn), hard $(ulimit -Hn); open now: $(cut -f1 /proc/sys/fs/file-nr)"

# The plan must fit the limits; say which one it would break instead of failing later.
nofile=$(ulimit -Hn)
ulimit -n "$nofile"
read -r port_lo port_hi < /proc/sys/net/ipv4/ip_local_port_range
per_node=$(((conns + nodes - 1) / nodes))
per_node_peak=$((per_node + storm / nodes + 1))
per_proc=$(((conns + procs - 1) / procs))
per_source=$(((conns + 252) / 253))
avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
# Budget per connection, from the measured figures in bench/RESULTS.md: ~6.4 KiB in the
# node with today's bus, ~5 KiB of kernel per end (two ends here), ~2 KiB in the load
# tool, ~1 KiB in nats-server.
need_kib=$((conns * 20))
fail() { echo "cannot run: $*" >&2; exit 2; }
[ "$per_node_peak" -lt $((nofile - 200)) ] || fail "$per_node_peak connections per node (storm included) do not fit the open-files limit $nofile; use more nodes"
[ "$per_proc" -lt $((nofile - 300)) ] || fail "$per_proc connections per load process do not fit the open-files limit $nofile; use more processes"
[ "$per_source" -lt $((port_hi - port_lo)) ] || fail "$per_source connections per source address exceed the ephemeral port range"
[ "$procs" -le 253 ] || fail "at most 253 load processes (one source address each at least)"
[ "$need_kib" -lt "$avail_kib" ] || fail "about $((need_kib / 1024)) MiB needed, $((avail_kib / 1024)) MiB available"
somaxconn=$(sysctl -n net.core.somaxconn)
echo "plan: $conns connections, $nodes nodes (~$per_node each, $reactors reactor(s)), $procs load processes (~$per_proc each), ~$per_source per source address; about $((need_kib / 1024)) MiB of $((avail_kib / 1024)) MiB available; listen backlog 4096 capped by somaxconn $somaxconn"

command -v nats-server >/dev/null || fail "nats-server missing: run scripts/install-test-deps.sh"
cargo build --release -q -p pushgate -p pushgate-load

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
logs=$(mktemp -d)
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # Nodes drain 200 000 connections in a second or two; anything still there after
  # fifteen seconds is killed, by PID.
  for _ in $(seq 150); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT

# start_node NAME [--alone]: a node on free ports; sets node_target (CLIENT/API/PID).
start_node() {
  local name=$1 p c bus=()
  [ "${2:-}" = --alone ] || bus=(--nats "nats://127.0.0.1:$nats_port")
  p=$(free_port); c=$(free_port)
  ./target/release/pushgate --dev --listen "127.0.0.1:$p" --control "127.0.0.1:$c" \
    --reactors "$reactors" --heartbeat 1800 --idle-timeout 3600 \
    --max-pending-handshakes 4096 --shutdown-drain 1 --node-id "$name" \
    "${bus[@]}" "${extra_node_args[@]}" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  local pid=$!
  for _ in $(seq 200); do curl -sf "127.0.0.1:$c/readyz" >/dev/null && break; sleep 0.05; done
  curl -sf "127.0.0.1:$c/readyz" >/dev/null || { cat "$logs/$name.log"; fail "node $name did not become ready"; }
  node_target="127.0.0.1:$p/127.0.0.1:$c/$pid"
  node_cport=$c
}
stop_pid() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

load=(./target/release/pushgate-load scale --publishers "$publishers" --timeout 300)

if [ "${BASELINE:-1}" != 0 ]; then
  echo "== baseline: one node without the bus holding $per_node connections (same run)"
  start_node base --alone
  base_pid=${pids[-1]}
  "${load[@]}" --target "$node_target" --connections "$per_node" --processes 1 \
    --rate 0 --broadcasts 0 --storm-users 0 --hold 3 | grep -E '^(connect|memory|  node)'
  stop_pid "$base_pid"
fi

echo "== cluster: nats-server and $nodes nodes"
nats_port=$(free_port)
nats_monitor=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -m "$nats_monitor" >"$logs/nats.log" 2>&1 &
pids+=($!)
nats_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done
nats-server --version
targets=()
cports=()
for i in $(seq 0 $((nodes - 1))); do
  start_node "n$i"
  targets+=("$node_target")
  cports+=("$node_cport")
done
echo "nodes up: ${#targets[@]}"

echo "== load: ${load[*]} --target <$nodes nodes> --connections $conns --processes $procs --rate $rate --push-secs $push_secs --broadcasts $broadcasts --broadcast-interval $interval --storm-users $storm"
status=0
timeout --signal=TERM "$time_limit" "${load[@]}" --target "$(IFS=,; echo "${targets[*]}")" \
  --connections "$conns" --processes "$procs" --rate "$rate" --push-secs "$push_secs" \
  --broadcasts "$broadcasts" --broadcast-interval "$interval" --storm-users "$storm" \
  --bus-pid "$nats_pid" --bus-monitor "127.0.0.1:$nats_monitor" || status=$?

echo "== after the run (the load processes have left; bus subscriptions linger for the unsubscribe delay)"
curl -s "127.0.0.1:$nats_monitor/varz" | python3 -c 'import json,sys; v=json.load(sys.stdin); print("nats-server: mem %.1f MiB, connections %d, subscriptions %d, slow consumers %d, in_msgs %d, out_msgs %d" % (v["mem"]/1048576, v["connections"], v["subscriptions"], v["slow_consumers"], v["in_msgs"], v["out_msgs"]))' || true
for c in "${cports[@]}"; do curl -s "127.0.0.1:$c/metrics"; done |
  awk '/^pushgate_bus_(subscriptions|slow_consumer_total|publish_errors_total|refused_total|duplicates_total|invalid_total)[ {]/ {k=$1; sub(/\{.*\}/, "", k); s[k]+=$NF} END {for (k in s) printf "sum over nodes: %s %d\n", k, s[k]}' | sort
for f in "$logs"/n*.log; do grep -iE 'error|panic|slow' "$f" | head -3 | sed "s|^|$(basename "$f"): |" || true; done
exit "$status"
