#!/usr/bin/env bash
# What the cluster bus costs per online user, beside a node without it, in one run: a real
# nats-server and, one after the other, release pushgate nodes on free loopback ports
# (stopped by PID), each holding COUNT idle /ws connections of distinct users opened by
# pushgate-load (sources 127.0.0.2…), so with the bus COUNT user subscriptions.
#   bench/bus_idle.sh [COUNT] [ROUNDS]     (defaults: 15000 connections, 2 rounds)
# Each round measures: no bus; --nats; and, if BEFORE=path/to/an/older/pushgate is set,
# that binary with --nats (the baseline of a change to the bus). Prints the server's RSS
# memory growth (PSS) per connection for each, nats-server's RSS, and the bus's bytes per user (with
# the bus minus without, same round).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-15000}
rounds=${2:-2}
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
logs=$(mktemp -d)
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$logs"' EXIT

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" >"$logs/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done

# measure LABEL BINARY [ARGS...]: one node, COUNT connections; prints "LABEL bytes/conn".
measure() {
  local label=$1 bin=$2; shift 2
  local p c pid out
  p=$(free_port); c=$(free_port)
  "$bin" --dev --listen "127.0.0.1:$p" --control "127.0.0.1:$c" --heartbeat 300 --idle-timeout 600 \
    --max-pending-handshakes 4096 --shutdown-drain 1 "$@" >"$logs/$label.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$c/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$c/readyz" >/dev/null || { cat "$logs/$label.log"; exit 1; }
  sleep 1
  out=$(./target/release/pushgate-load conns --server "127.0.0.1:$p" --count "$count" \
    --hold 3 --server-pid "$pid" --sources 32 2>&1)
  local subs
  subs=$(curl -s "127.0.0.1:$c/metrics" | awk '$1=="pushgate_bus_subscriptions"{print $2}')
  local per
  per=$(grep -oE '[0-9]+ bytes per connection' <<<"$out" | head -1 | grep -oE '^[0-9]+' || true)
  [ -n "$per" ] || { echo "$out"; exit 1; }
  echo "$label: $per B per connection (bus subscriptions: ${subs:-none}); nats-server RSS $(ps -o rss= -p "$nats_pid") KiB"
  echo "$out" | sed 's/^/    /' >"$logs/$label.out"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  eval "last_$label=$per"
}

nats=(--nats "nats://127.0.0.1:$nats_port")
for r in $(seq "$rounds"); do
  echo "== round $r: $count connections"
  measure none ./target/release/pushgate
  measure bus ./target/release/pushgate "${nats[@]}"
  echo "   bus bytes per online user: $((last_bus - last_none))"
  if [ -n "${BEFORE:-}" ]; then
    measure before "$BEFORE" "${nats[@]}"
    echo "   before: bus bytes per online user: $((last_before - last_none))"
  fi
done
