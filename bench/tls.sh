#!/usr/bin/env bash
# wss:// against ws:// on the same build, one invocation: idle memory per connection,
# TLS handshakes per second of server CPU (full, and resuming with tickets after a warm-up
# that collects them: the server's count says how many did), and fan-out
# CPU per push. Each measurement gets fresh release gateways (one plaintext, one with a
# certificate made here by openssl), one at a time, runs interleaved RUNS times; the
# load tool (`pushgate-load --tls off|full|resume`) runs in its own process.
#   bench/tls.sh                 (COUNT=15000 idle connections, SUBS=10000, RUNS=2)
#   COUNT=5000 SUBS=2000 PUSHES=20000 RUNS=1 bench/tls.sh   a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-15000}
subs=${SUBS:-10000}
pushes=${PUSHES:-100000}
rate=${RATE:-20000}
handshakes=${HANDSHAKES:-5000}
runs=${RUNS:-2}
cargo build --release -q --locked -p pushgate -p pushgate-load
dir=$(mktemp -d)
gw_pid=
stop() { if [ -n "$gw_pid" ]; then kill -TERM "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi; gw_pid=; }
trap 'stop; rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_gateway plain|tls: sets $port, $cport, $gw_pid
start_gateway() {
  port=$(free_port); cport=$(free_port)
  local tls=()
  [ "$1" = tls ] && tls=(--tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
  ./target/release/pushgate --dev --listen "127.0.0.1:$port" --control "127.0.0.1:$cport" \
    --reactors 2 --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 \
    --history-size 0 --shutdown-drain 1 "${tls[@]}" >"$dir/gw.log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 100); do grep -q "pushgate started" "$dir/gw.log" && break; sleep 0.1; done
  grep -q "pushgate started" "$dir/gw.log" || { cat "$dir/gw.log"; exit 1; }
  sleep 0.5
}
load=./target/release/pushgate-load
json() { grep '^{' | tail -1; }
results="$dir/results.jsonl"
for run in $(seq "$runs"); do
  for mode in plain tls; do
    t=off; [ $mode = tls ] && t=full
    start_gateway $mode
    $load --tls $t conns --server "127.0.0.1:$port" --count "$count" --hold 3 \
      --server-pid "$gw_pid" --sources 32 | json | sed "s/^{/{\"bench\":\"idle\",\"mode\":\"$mode\",/" >>"$results"
    stop
  done
  for t in full resume; do
    start_gateway tls
    $load --tls $t conns --server "127.0.0.1:$port" --count "$handshakes" --hold 0 \
      --server-pid "$gw_pid" --sources 32 | json | sed "s/^{/{\"bench\":\"handshakes\",\"mode\":\"$t\",/" >>"$results"
    resumed=$(curl -s "127.0.0.1:$cport/metrics" | awk '/^pushgate_tls_handshakes_total\{kind="resumed"\}/ {print $2}')
    echo "{\"bench\":\"resumed\",\"mode\":\"$t\",\"resumed\":$resumed}" >>"$results"
    echo "  handshakes $t: $resumed resumed (of $handshakes measured, after a warm-up in resume mode)" >&2
    stop
  done
  for mode in plain tls; do
    t=off; [ $mode = tls ] && t=full
    start_gateway $mode
    $load --tls $t fanout --server "127.0.0.1:$port" --api "127.0.0.1:$cport" \
      --subscribers "$subs" --pushes "$pushes" --rate "$rate" --sources 32 --server-pid "$gw_pid" \
      | json | sed "s/^{/{\"bench\":\"fanout\",\"mode\":\"$mode\",/" >>"$results"
    stop
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(bench, mode, key):
    vals = [r[key] for r in rows if r["bench"] == bench and r["mode"] == mode and r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")
print(f"runs per cell: {len([r for r in rows if r['bench']=='idle' and r['mode']=='tls'])} (medians)")
p, t = med("idle", "plain", "server_rss_per_conn"), med("idle", "tls", "server_rss_per_conn")
print(f"idle memory per connection:   ws {p:8.0f} B   wss {t:8.0f} B   ({t/p:.2f}x)")
for m in ("full", "resume"):
    print(f"TLS handshakes ({m:6}):      {med('handshakes', m, 'upgrades_per_sec'):8.0f}/s wall, "
          f"{med('handshakes', m, 'upgrades_per_server_cpu_sec'):8.0f} per second of server CPU (one core), "
          f"{med('resumed', m, 'resumed'):.0f} resumed by the server's count")
p, t = med("fanout", "plain", "server_cpu_us_per_push"), med("fanout", "tls", "server_cpu_us_per_push")
print(f"fan-out CPU per push:         ws {p:8.2f} us  wss {t:8.2f} us  ({t/p:.2f}x)")
for m in ("plain", "tls"):
    lat = [r["latency_ms"] for r in rows if r["bench"] == "fanout" and r["mode"] == m]
    p50 = statistics.median(l["p50"] for l in lat) if lat else float("nan")
    p99 = statistics.median(l["p99"] for l in lat) if lat else float("nan")
    print(f"fan-out {m:5}: {med('fanout', m, 'delivered_per_sec'):8.0f} delivered/s, "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, lost {med('fanout', m, 'lost')}")
print("raw:", sys.argv[1])
PY
cp "$results" "${OUT:-/tmp}/tls-bench-$(date +%s).jsonl"
