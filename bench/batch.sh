#!/usr/bin/env bash
# Batch push against single pushes (issue 28): deliveries per server CPU-second with
# BATCH pushes per `POST /v1/batch` request against one push per `POST /v1/push` request,
# same pushgate process, same run, 16 publishers (each waiting for its answer before its
# next request, as backends do); the tokio peer (bench/peers/tokio) with single pushes
# beside them. SUBSCRIBERS /ws users, PUSHES to random single users, flat out; each mode
# RUNS times, interleaved, so drift on a shared machine hits all of them alike.
#   bench/batch.sh [SUBSCRIBERS] [PUSHES] [BATCH]   (defaults: 2000, 100000, 100)
#   RUNS=3 bench/batch.sh                           (default 2)
set -euo pipefail
set -f  # the push templates hold brackets, never a glob
cd "$(dirname "$0")/.."
subs=${1:-2000}
pushes=${2:-100000}
batch=${3:-100}
runs=${RUNS:-2}
cargo build --release -q --locked -p pushgate -p pushgate-load
cargo build --release -q --locked --manifest-path bench/peers/tokio/Cargo.toml
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
load=./target/release/pushgate-load
out=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$out"' EXIT
gport=$(free_port); gapi=$(free_port); tport=$(free_port); tapi=$(free_port)
# pushgate as in bench/compare.sh: 2 reactors, defaults otherwise (history on: every push
# gets its seq and is retained, as a chat backend runs it).
./target/release/pushgate --dev --listen "127.0.0.1:$gport" --control "127.0.0.1:$gapi" \
  --reactors 2 --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 \
  --control-first-request-timeout 60 --shutdown-drain 1 >"$out/pushgate.log" 2>&1 &
pids+=($!); gpid=$!
bench/peers/tokio/target/release/tokio-peer --listen "127.0.0.1:$tport" \
  --control "127.0.0.1:$tapi" --threads 2 >"$out/tokio.log" 2>&1 &
pids+=($!); tpid=$!
for p in $gport $tport; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
common=(--subscribers "$subs" --pushes "$pushes" --rate 0 --sources 32 --publishers 16)
# Users of their own for each pushgate run: a user who reconnects is replayed what an
# earlier run left unacknowledged in its history, which is not this run's work.
users() { echo --subscribe "/ws?uid=$1-{user}" --publish-body "{\"to\":[\"$1-{user}\"],\"data\":{data}}"; }
for run in $(seq "$runs"); do
  echo "== run $run: pushgate, one push per request"
  # shellcheck disable=SC2046  # the templates hold no spaces
  "$load" fanout "${common[@]}" --server "127.0.0.1:$gport" --api "127.0.0.1:$gapi" \
    --server-pid "$gpid" $(users "s$run") | tee "$out/single.$run.txt"
  sleep 2
  echo "== run $run: pushgate, $batch pushes per request"
  # shellcheck disable=SC2046
  "$load" fanout "${common[@]}" --server "127.0.0.1:$gport" --api "127.0.0.1:$gapi" \
    --server-pid "$gpid" --batch "$batch" $(users "b$run") | tee "$out/batch.$run.txt"
  sleep 2
  echo "== run $run: tokio peer, one push per request"
  "$load" fanout "${common[@]}" --server "127.0.0.1:$tport" --api "127.0.0.1:$tapi" \
    --server-pid "$tpid" | tee "$out/tokio.$run.txt"
  sleep 2
done
python3 - "$out" "$runs" "$batch" <<'PY'
import json, statistics, sys
out, runs, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {}
for mode in ["single", "batch", "tokio"]:
    per = []
    for run in range(1, runs + 1):
        with open(f"{out}/{mode}.{run}.txt") as f:
            j = json.loads(f.read().strip().splitlines()[-1])
        us = j["server_cpu_us_per_delivered"]
        per.append((1e6 / us if us else 0.0, j["delivered_per_sec"], j["lost"], j["api_errors"]))
    rows[mode] = per
names = {"single": "pushgate, 1 push/request", "batch": f"pushgate, {batch} pushes/request",
         "tokio": "tokio peer, 1 push/request"}
print("| server, mode | deliveries per server CPU-second (each run) | median | deliveries/s (median) | lost, API errors |")
print("|---|---|---|---|---|")
med = {}
for mode, per in rows.items():
    med[mode] = statistics.median(p[0] for p in per)
    rate = statistics.median(p[1] for p in per)
    each = ", ".join(f"{p[0]:,.0f}" for p in per)
    print(f"| {names[mode]} | {each} | {med[mode]:,.0f} | {rate:,.0f} | {sum(p[2] for p in per)}, {sum(p[3] for p in per)} |")
if med["single"]:
    print(f"\nbatch / single (pushgate): {med['batch'] / med['single']:.1f}x; "
          f"pushgate single / tokio single: {med['single'] / med['tokio']:.2f}x")
PY
