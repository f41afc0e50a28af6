#!/usr/bin/env bash
# JetStream's cost per push in a cluster (issue 15), history on against off in one run:
# one `nats-server -js` (monitoring on, store in a temporary directory) and four release
# nodes on it: A and B with history on (default size and TTL, prefix `on`), C and D with
# --history-size 0 (prefix `off`). Every push crosses the bus: subscribers on B (or D),
# pushes through A (or C), random single users, measured RUNS times in alternation.
# Then nats-server's RSS per retained message: the stream is purged, RSS read, MESSAGES
# more pushes stored, RSS read again.
#   bench/history_cluster.sh [SUBSCRIBERS] [PUSHES] [RUNS] [MESSAGES]
#   (defaults: 2000, 20000, 3, 30000)
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-2000}
pushes=${2:-20000}
runs=${3:-3}
messages=${4:-30000}
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
tmp=$(mktemp -d)
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"' EXIT

nats_port=$(free_port)
mon_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -m "$mon_port" -js -sd "$tmp/js" >"$tmp/nats.log" 2>&1 &
nats_pid=$!
pids+=($nats_pid)
for _ in $(seq 100); do curl -sf "127.0.0.1:$mon_port/healthz" >/dev/null && break; sleep 0.05; done

start_node() { # NAME PREFIX EXTRA...: sets ${NAME}_port ${NAME}_cport ${NAME}_pid
  local name=$1 prefix=$2; shift 2
  local p c
  p=$(free_port); c=$(free_port)
  ./target/release/pushgate --listen "127.0.0.1:$p" --control "127.0.0.1:$c" \
    --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 --shutdown-drain 1 \
    --node-id "$name" --nats "nats://127.0.0.1:$nats_port" --bus-prefix "$prefix" "$@" \
    >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$c/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$c/readyz" >/dev/null || { cat "$tmp/$name.log"; exit 1; }
  printf -v "${name}_port" %s "$p"
  printf -v "${name}_cport" %s "$c"
  printf -v "${name}_pid" %s "${pids[-1]}"
}
start_node A on
start_node B on
start_node C off --history-size 0
start_node D off --history-size 0
for _ in $(seq 100); do
  [ "$(curl -s "127.0.0.1:$A_cport/metrics" | awk '/^pushgate_history_cluster_ready /{print $2}')" = 1 ] && break
  sleep 0.1
done

for run in $(seq "$runs"); do
  for mode in on off; do
    if [ "$mode" = on ]; then api=$A_cport; srv=$B_port; pid=$B_pid; else api=$C_cport; srv=$D_port; pid=$D_pid; fi
    echo "== history $mode, run $run (subscribers on the other node)"
    ./target/release/pushgate-load fanout --server "127.0.0.1:$srv" --api "127.0.0.1:$api" \
      --subscribers "$subs" --pushes "$pushes" --sources 32 --server-pid "$pid" | tail -1
  done
done
curl -s "127.0.0.1:$A_cport/metrics" | grep -E '^pushgate_history_cluster_events_total' | tr '\n' ' '; echo

rss() { awk '/^VmRSS/{print $2}' "/proc/$nats_pid/status"; }
stream_msgs() { curl -s "127.0.0.1:$mon_port/jsz?streams=true" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(s["state"]["messages"] for a in d.get("account_details",[]) for s in a.get("stream_detail",[])))'; }
echo "== nats-server RSS per retained message ($messages pushes of ~100 B, 100 per user)"
before=$(rss); m0=$(stream_msgs)
python3 - "$A_cport" "$messages" <<'EOF'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    body = json.dumps({"to": ["m%d" % (i % max(n // 100, 1))], "data": {"i": i, "pad": "x" * 32}})
    c.request("POST", "/v1/push", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit("push %d: %d" % (i, r.status))
EOF
sleep 1
after=$(rss); m1=$(stream_msgs)
echo "nats-server RSS ${before} kB -> ${after} kB, retained messages ${m0} -> ${m1}:" \
  "$(( (after - before) * 1024 / (m1 - m0 > 0 ? m1 - m0 : 1) )) B per retained message"
