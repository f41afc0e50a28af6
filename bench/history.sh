#!/usr/bin/env bash
# Delivery with history on against off (issue 15), interleaved in one run: a release
# pushgate with the default history and one with --history-size 0, each measured RUNS
# times in alternation with the same fan-out (16 keep-alive publishers, random single
# users), then the recovery time of missed messages on the history-on gateway.
#   bench/history.sh [SUBSCRIBERS] [PUSHES] [RUNS]   (defaults: 5000, 50000, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-5000}
pushes=${2:-50000}
runs=${3:-3}
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null' EXIT
start() { # name, extra args...; sets ${name}_port ${name}_cport ${name}_pid
  local name=$1; shift
  local p c log
  p=$(free_port); c=$(free_port); log=$(mktemp)
  ./target/release/pushgate --dev --listen "127.0.0.1:$p" --control "127.0.0.1:$c" \
    --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 "$@" >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q "pushgate started" "$log" && break; sleep 0.1; done
  grep -q "pushgate started" "$log" || { cat "$log"; exit 1; }
  printf -v "${name}_port" %s "$p"; printf -v "${name}_cport" %s "$c"; printf -v "${name}_pid" %s "$!"
}
start on
start off --history-size 0
for run in $(seq "$runs"); do
  for mode in on off; do
    p=${mode}_port; c=${mode}_cport; g=${mode}_pid
    echo "== history $mode, run $run"
    ./target/release/pushgate-load fanout --server "127.0.0.1:${!p}" --api "127.0.0.1:${!c}" \
      --subscribers "$subs" --pushes "$pushes" --sources 32 --server-pid "${!g}" | tail -1
  done
done
echo "== recovery of 100 missed messages (history on)"
./target/release/pushgate-load recover --server "127.0.0.1:$on_port" --api "127.0.0.1:$on_cport" \
  --users 200 --missed 100 | tail -1
