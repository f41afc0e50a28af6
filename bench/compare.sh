#!/usr/bin/env bash
# pushgate beside nginx + nchan, same scenarios, one run: builds pushgate, starts it and
# nginx with the nchan module (Debian packages nginx, libnginx-mod-nchan; config in
# bench/peers/nchan.conf) on free loopback ports, runs each scenario against one then the
# other, stops both (by PID), and prints a table of pushgate/nchan ratios.
#   bench/compare.sh [OUT_DIR]     (JSON lines and the table land in OUT_DIR, default a temp dir)
#   SCENARIOS="fanout_rate echo" bench/compare.sh   runs only those (default: all five)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || {
  echo "needs nginx and libnginx-mod-nchan: apt-get install -y nginx libnginx-mod-nchan" >&2; exit 1; }
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
load=./target/release/pushgate-load
run_dir=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$run_dir"' EXIT

# pushgate: 2 reactors (one per core), timers out of the way of a short benchmark.
pg_port=$(free_port); pg_api=$(free_port)
./target/release/pushgate --listen "127.0.0.1:$pg_port" --control "127.0.0.1:$pg_api" --reactors 2 \
  --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 --shutdown-drain 1 \
  >"$run_dir/pushgate.log" 2>&1 &
pg_pid=$!; pids+=("$pg_pid")

# nginx + nchan: 2 workers.
nx_port=$(free_port); nx_api=$(free_port)
mkdir -p "$run_dir/nginx"
sed -e "s#@PORT@#$nx_port#; s#@APIPORT@#$nx_api#; s#@PREFIX@#$run_dir/nginx#g" bench/peers/nchan.conf \
  >"$run_dir/nginx/nginx.conf"
nginx -p "$run_dir/nginx" -c "$run_dir/nginx/nginx.conf" -e "$run_dir/nginx/error.log" &
nx_pid=$!; pids+=("$nx_pid")

for _ in $(seq 100); do curl -sf "127.0.0.1:$pg_api/readyz" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nx_port") 2>/dev/null && break; sleep 0.1; done
sleep 0.5
nx_pids=("$nx_pid" $(pgrep -P "$nx_pid"))
echo "pushgate pid $pg_pid on $pg_port/$pg_api; nginx pids ${nx_pids[*]} on $nx_port/$nx_api; results in $out"

pg_args=(--server "127.0.0.1:$pg_port")
nx_args=(--server "127.0.0.1:$nx_port" --subscribe "/sub/{user}" --publish "/pub/{user}"
  --publish-body "{data}" --broadcast "/pub/all" --broadcast-body "{data}" --echo "/pubsub/{user}")

# scenario NAME ARGS...: runs against pushgate then nchan, keeping each one's JSON line.
only=" ${SCENARIOS:-idle fanout_flat fanout_rate broadcast echo} "
scenario() {
  local name=$1; shift
  [[ $only == *" $name "* ]] || return 0
  for server in pushgate nchan; do
    local extra=()
    if [ "$server" = pushgate ]; then extra=("${pg_args[@]}"); api=$pg_api; pidargs=(--server-pid "$pg_pid")
    else extra=("${nx_args[@]}"); api=$nx_api; pidargs=(); for p in "${nx_pids[@]}"; do pidargs+=(--server-pid "$p"); done; fi
    local cmd=("$@")
    case ${cmd[0]} in
      conns) cmd+=("${pidargs[@]}") ;;
      fanout|broadcast) cmd+=(--api "127.0.0.1:$api") ;;
    esac
    echo "== $name: $server"
    "$load" "${cmd[@]}" "${extra[@]}" | tee "$out/$name.$server.txt"
    tail -n 1 "$out/$name.$server.txt" >"$out/$name.$server.json"
    sleep 2
  done
}

scenario idle conns --count 15000 --hold 3 --sources 32
scenario fanout_flat fanout --subscribers 10000 --pushes 200000 --rate 0 --sources 32
scenario fanout_rate fanout --subscribers 10000 --pushes 50000 --rate 5000 --sources 32
scenario broadcast broadcast --subscribers 10000 --broadcasts 20 --rate 2 --sources 32
scenario echo echo --clients 100 --size 64 --duration 5

python3 - "$out" <<'PY' | tee "$out/table.md"
import json, sys, os
out = sys.argv[1]
def load(name, server):
    with open(os.path.join(out, f"{name}.{server}.json")) as f:
        return json.load(f)
rows = [
    # (label, scenario, extractor, better, target)
    ("idle memory per connection (B, server PSS)", "idle", lambda j: j["server_rss_per_conn"], "lower", "≤ 1024 B"),
    ("kernel slab per connection end (B)", "idle", lambda j: j["kernel_slab_per_conn"], "lower", ""),
    ("upgrades per second", "idle", lambda j: j["upgrades_per_sec"], "higher", ""),
    ("fan-out flat out: delivered/s (10k subscribers)", "fanout_flat", lambda j: j["delivered_per_sec"], "higher", "≥ 2× nchan"),
    ("fan-out at 5 000/s: p50 latency (ms)", "fanout_rate", lambda j: j["latency_ms"]["p50"], "lower", ""),
    ("fan-out at 5 000/s: p99 latency (ms)", "fanout_rate", lambda j: j["latency_ms"]["p99"], "lower", "≤ ½ nchan"),
    ("broadcast to 10k: time to reach all, p50 (ms)", "broadcast", lambda j: j["to_all_ms"]["p50"], "lower", ""),
    ("broadcast to 10k: time to reach all, p99 (ms)", "broadcast", lambda j: j["to_all_ms"]["p99"], "lower", "≤ ½ nchan"),
    ("echo, 100 clients × 64 B: round trips/s", "echo", lambda j: j["round_trips_per_sec"], "higher", ""),
    ("echo: p99 round trip (ms)", "echo", lambda j: j["latency_ms"]["p99"], "lower", ""),
]
print("| figure | pushgate | nchan | pushgate / nchan | target | met |")
print("|---|---|---|---|---|---|")
for label, name, f, better, target in rows:
    if not os.path.exists(os.path.join(out, f"{name}.nchan.json")):
        continue
    p, n = f(load(name, "pushgate")), f(load(name, "nchan"))
    ratio = p / n if n else float("inf")
    met = ""
    if target.startswith("≥ 2×"): met = "yes" if ratio >= 2 else "no"
    elif target.startswith("≤ ½"): met = "yes" if ratio <= 0.5 else "no"
    elif target.startswith("≤ 1024"): met = "yes" if p <= 1024 else "no"
    fmt = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.3f}"
    print(f"| {label} | {fmt(p)} | {fmt(n)} | {ratio:.2f} | {target} | {met} |")
PY
