#!/usr/bin/env bash
# The fallback transports beside /ws in one run (issue 18). For each transport (ws, sse,
# poll) a fresh release pushgate; `pushgate-load conns` opens COUNT idle connections of
# users u0… (sources 127.0.0.2…) and reads the server's memory growth per connection while
# they are held (/sse streaming, /poll parked). Then, unless FANOUT=0, `pushgate-load
# fanout` over SUBS subscribers of each streaming transport (ws, sse): PUSHES pushes to
# single users at RATE per second, and `pushgate-load broadcast`: BROADCASTS broadcasts to
# all SUBS (4 a second); latency from the push's timestamp to its arrival. Each transport ROUNDS
# times, interleaved, so drift on the shared machine hits all alike.
#   bench/fallback.sh [COUNT] [ROUNDS]     (defaults: 10000 connections, 3 rounds)
#   IDLE=0 skips the idle part, FANOUT=0 the fan-out; SUBS=10000 PUSHES=100000 RATE=10000
#   BROADCASTS=50 set it.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
rounds=${2:-3}
subs=${SUBS:-10000}
pushes=${PUSHES:-100000}
rate=${RATE:-10000}
BROADCASTS=${BROADCASTS:-50}
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pid=
log=$(mktemp)
trap '[ -n "$pid" ] && kill -TERM $pid 2>/dev/null; wait 2>/dev/null; rm -f "$log"' EXIT
start_gateway() {
  port=$(free_port)
  cport=$(free_port)
  ./target/release/pushgate --dev --listen "127.0.0.1:$port" --control "127.0.0.1:$cport" \
    --heartbeat 300 --idle-timeout 600 --poll-timeout 600 --max-pending-handshakes 4096 \
    >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "pushgate started" "$log" && break; sleep 0.1; done
  grep -q "pushgate started" "$log" || { cat "$log"; exit 1; }
  sleep 1
}
stop_gateway() {
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
}
path_of() {
  case $1 in
    ws) echo '/ws?uid={user}' ;;
    sse) echo '/sse?uid={user}' ;;
    poll) echo '/poll?uid={user}' ;;
  esac
}
gauge() {
  curl -s "127.0.0.1:$cport/metrics" | awk -v t="$1" \
    '$1 == "pushgate_transport_connections{transport=\"" t "\"}" { print $2 }'
}
echo "== idle: $count connections per transport, $rounds rounds"
for round in $(seq "$rounds"); do
  [ "${IDLE:-1}" = 0 ] && break
  for t in ws sse poll; do
    start_gateway
    out_file=$(mktemp)
    ./target/release/pushgate-load conns --server "127.0.0.1:$port" --count "$count" \
      --hold 3 --server-pid "$pid" --sources 32 --subscribe "$(path_of $t)" >"$out_file" &
    load=$!
    # What the gateway itself counts open of that transport while they are held.
    held=0
    while kill -0 "$load" 2>/dev/null; do
      g=$(gauge "$t")
      [ "${g:-0}" -gt "$held" ] && held=$g
      sleep 0.5
    done
    if ! wait "$load"; then
      echo "idle round=$round transport=$t FAILED:"; tail -3 "$out_file"
      rm -f "$out_file"; stop_gateway; continue
    fi
    out=$(tail -1 "$out_file")
    rm -f "$out_file"
    per=$(echo "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["server_rss_per_conn"]))')
    echo "idle round=$round transport=$t open_by_gateway=$held rss_per_conn_bytes=$per"
    stop_gateway
  done
done
[ "${FANOUT:-1}" = 0 ] && exit 0
echo "== fan-out: $subs subscribers, $pushes pushes at $rate/s"
for round in $(seq "$rounds"); do
  for t in ws sse; do
    start_gateway
    echo "fanout round=$round transport=$t"
    ./target/release/pushgate-load fanout --server "127.0.0.1:$port" --api "127.0.0.1:$cport" \
      --subscribers "$subs" --pushes "$pushes" --rate "$rate" --sources 32 \
      --server-pid "$pid" --subscribe "$(path_of $t)" 2>/dev/null | grep -v '^{' || true
    stop_gateway
    start_gateway
    echo "broadcast round=$round transport=$t"
    ./target/release/pushgate-load broadcast --server "127.0.0.1:$port" --api "127.0.0.1:$cport" \
      --subscribers "$subs" --broadcasts "$BROADCASTS" --sources 32 \
      --server-pid "$pid" --subscribe "$(path_of $t)" 2>/dev/null | grep -v '^{' || true
    stop_gateway
  done
done
