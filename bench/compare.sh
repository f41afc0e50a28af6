#!/usr/bin/env bash
# pushgate beside two peers, same scenarios, one invocation: a tokio-tungstenite + axum
# gateway (bench/peers/tokio, what a competent Rust user writes in a day) and nginx with
# the nchan module (Debian packages nginx, libnginx-mod-nchan; config in
# bench/peers/nchan.conf; skipped with a note when not installed). Builds everything in
# release, starts the servers on free loopback ports, runs each scenario RUNS times against
# each server (interleaved, so drift on a shared machine hits all of them alike), stops
# the servers (by PID) and prints a table of medians and ratios.
#   bench/compare.sh [OUT_DIR]     (JSON lines and the table land in OUT_DIR, default a temp dir)
#   SCENARIOS="fanout_rate echo" bench/compare.sh   only those (default: all five, and floor;
#     fanout_pipelined, one pipelined API connection as before wave 2, and fanout_20k, a
#     rate every server sustains so latencies compare at equal load, run only when named)
#   SERVERS="pushgate tokio" bench/compare.sh       only those servers (default: all four:
#     pushgate on epoll, pushgate-uring = pushgate --io io-uring, tokio, nchan)
#   RUNS=2 bench/compare.sh                         runs per scenario and server (default 3)
#   PUSHGATE_BASE=/tmp/pushgate-old SERVERS="base pushgate tokio" bench/compare.sh
#     an A/B run: `base` and `base-uring` are that binary (an older build) on epoll and
#     io_uring, interleaved with this tree's build and the peers
#   REACTORS=1 bench/compare.sh                     pushgate's reactors (default 2)
# With 10 000 subscribers and 3 runs the whole script takes about 8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
runs=${RUNS:-3}
servers=" ${SERVERS:-pushgate pushgate-uring tokio nchan} "
only=" ${SCENARIOS:-idle fanout_flat fanout_rate broadcast echo floor} "
if [[ $servers == *" nchan "* ]] && ! { command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; }; then
  echo "nginx + nchan not installed (apt-get install -y nginx libnginx-mod-nchan): running without it" >&2
  servers=${servers/ nchan / }
fi
cargo build --release -q --locked -p pushgate -p pushgate-load
[[ $servers == *" tokio "* ]] && cargo build --release -q --locked --manifest-path bench/peers/tokio/Cargo.toml
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
load=./target/release/pushgate-load
run_dir=$(mktemp -d)
pids=()
stop_servers() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_servers; rm -rf "$run_dir"' EXIT
declare -A port api srv_pids extra
extra[pushgate]=""
extra[pushgate-uring]=""
extra[base]=""
extra[base-uring]=""
extra[tokio]=""
extra[nchan]="--subscribe /sub/{user} --publish /pub/{user} --publish-body {data} --broadcast /pub/all --broadcast-body {data} --echo /pubsub/{user}"

# Fresh servers for every run: memory a previous run's connections left in a free list
# would otherwise be counted as free in the next run's idle figure.
start_servers() {
  # pushgate: 2 reactors (one per core), timers out of the way of a short benchmark; on
  # epoll (`pushgate`) and on io_uring (`pushgate-uring`). The broadcast scenario's 16
  # publishers send their first request up to 8 s after connecting (20 broadcasts at 2/s),
  # past the control listener's 5 s first-request timeout: it is raised here.
  for s in pushgate pushgate-uring base base-uring; do
    [[ $servers == *" $s "* ]] || continue
    local io=epoll; [[ $s == *-uring ]] && io=io-uring
    local bin=./target/release/pushgate; [[ $s == base* ]] && bin=${PUSHGATE_BASE:?PUSHGATE_BASE names the base binary}
    port[$s]=$(free_port); api[$s]=$(free_port)
    "$bin" --dev --listen "127.0.0.1:${port[$s]}" --control "127.0.0.1:${api[$s]}" \
      --io "$io" --reactors "${REACTORS:-2}" --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 \
      --control-first-request-timeout 60 --shutdown-drain 1 >"$run_dir/$s.log" 2>&1 &
    pids+=($!); srv_pids[$s]=$!
  done
  # The tokio peer: a worker thread per core, every route on both ports.
  if [[ $servers == *" tokio "* ]]; then
    port[tokio]=$(free_port); api[tokio]=$(free_port)
    bench/peers/tokio/target/release/tokio-peer --listen "127.0.0.1:${port[tokio]}" \
      --control "127.0.0.1:${api[tokio]}" --threads 2 >"$run_dir/tokio.log" 2>&1 &
    pids+=($!); srv_pids[tokio]=$!
  fi
  # nginx + nchan: 2 workers.
  if [[ $servers == *" nchan "* ]]; then
    port[nchan]=$(free_port); api[nchan]=$(free_port)
    rm -rf "$run_dir/nginx"; mkdir -p "$run_dir/nginx"
    sed -e "s#@PORT@#${port[nchan]}#; s#@APIPORT@#${api[nchan]}#; s#@PREFIX@#$run_dir/nginx#g" bench/peers/nchan.conf \
      >"$run_dir/nginx/nginx.conf"
    nginx -p "$run_dir/nginx" -c "$run_dir/nginx/nginx.conf" -e "$run_dir/nginx/error.log" &
    pids+=($!); srv_pids[nchan]=$!
  fi
  for s in $servers; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/${port[$s]}") 2>/dev/null && break; sleep 0.1; done
  done
  sleep 0.5
  # nginx's workers are the master's children; their CPU and memory count too.
  if [[ $servers == *" nchan "* ]]; then
    srv_pids[nchan]="${srv_pids[nchan]} $(pgrep -P "${srv_pids[nchan]}" | tr '\n' ' ')"
  fi
  for s in $servers; do echo "$s: pids ${srv_pids[$s]} on ${port[$s]}/${api[$s]}"; done
}
echo "results in $out; $runs runs of each scenario"

# scenario NAME ARGS...: runs against each server, keeping each one's JSON line. A run that
# fails (losses, refused connections) is noted and the comparison goes on.
scenario() {
  local name=$1; shift
  [[ $only == *" $name "* ]] || return 0
  for s in $servers; do
    local cmd=("$@") pidargs=()
    for p in ${srv_pids[$s]}; do pidargs+=(--server-pid "$p"); done
    cmd+=(--server "127.0.0.1:${port[$s]}" "${pidargs[@]}")
    case ${cmd[0]} in fanout|broadcast) cmd+=(--api "127.0.0.1:${api[$s]}") ;; esac
    # shellcheck disable=SC2206  # the templates hold no spaces
    cmd+=(${extra[$s]})
    echo "== $name: $s (run $run)"
    "$load" "${cmd[@]}" | tee "$out/$name.$s.$run.txt" || echo "   ($name against $s failed: $?)"
    tail -n 1 "$out/$name.$s.$run.txt" >"$out/$name.$s.$run.json"
    sleep 2
  done
}

for run in $(seq "$runs"); do
  echo "== run $run: starting servers"
  start_servers
  scenario idle conns --count 15000 --hold 3 --sources 32
  scenario fanout_flat fanout --subscribers 10000 --pushes 200000 --rate 0 --sources 32
  scenario fanout_pipelined fanout --subscribers 10000 --pushes 200000 --rate 0 --sources 32 --pipelined
  scenario fanout_rate fanout --subscribers 10000 --pushes 50000 --rate 5000 --sources 32
  scenario fanout_20k fanout --subscribers 10000 --pushes 200000 --rate 20000 --sources 32
  scenario broadcast broadcast --subscribers 10000 --broadcasts 20 --rate 2 --sources 32
  scenario echo echo --clients 100 --size 64 --duration 5
  stop_servers
done

# The physical floor: one small send() on loopback, to one hot socket and spread over
# 1000 (as a fan-out spreads over connections).
if [[ $only == *" floor "* ]]; then
  for k in 1 1000; do
    echo "== floor: $k socket(s)"
    "$load" floor --sends 200000 --size 60 --sockets "$k" | tee "$out/floor.$k.txt"
    tail -n 1 "$out/floor.$k.txt" >"$out/floor.$k.json"
  done
fi

python3 - "$out" "$runs" $servers <<'PY' | tee "$out/table.md"
import json, os, statistics, sys
out, runs, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(path):
    try:
        with open(os.path.join(out, path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def values(name, server, f):
    vs = []
    for r in range(1, runs + 1):
        j = load(f"{name}.{server}.{r}.json")
        try:
            v = f(j) if j else None
        except (KeyError, TypeError):
            v = None
        if v is not None:
            vs.append(v)
    return vs
rows = [
    # (label, scenario, extractor)
    ("idle memory per connection (B, server PSS)", "idle", lambda j: j["server_rss_per_conn"]),
    ("upgrades per second", "idle", lambda j: j["upgrades_per_sec"]),
    ("fan-out flat out, 16 publishers: delivered/s", "fanout_flat", lambda j: j["delivered_per_sec"]),
    ("fan-out flat out: server CPU per push (µs)", "fanout_flat", lambda j: j["server_cpu_us_per_push"]),
    ("fan-out flat out: p90 latency (ms)", "fanout_flat", lambda j: j["latency_ms"]["p90"]),
    ("fan-out flat out: p99 latency (ms)", "fanout_flat", lambda j: j["latency_ms"]["p99"]),
    ("fan-out flat out: server CPU per delivery (µs)", "fanout_flat", lambda j: j["server_cpu_us_per_delivered"]),
    ("fan-out flat out: lost", "fanout_flat", lambda j: j["lost"]),
    ("fan-out flat out: load tool CPU (% of one core)", "fanout_flat", lambda j: 100 * j["load_tool_cpu_secs"] / j["elapsed_secs"]),
    ("fan-out flat out, 1 pipelined connection: delivered/s", "fanout_pipelined", lambda j: j["delivered_per_sec"]),
    ("fan-out pipelined: server CPU per push (µs)", "fanout_pipelined", lambda j: j["server_cpu_us_per_push"]),
    ("fan-out at 5 000/s: p50 latency (ms)", "fanout_rate", lambda j: j["latency_ms"]["p50"]),
    ("fan-out at 5 000/s: p90 latency (ms)", "fanout_rate", lambda j: j["latency_ms"]["p90"]),
    ("fan-out at 5 000/s: p99 latency (ms)", "fanout_rate", lambda j: j["latency_ms"]["p99"]),
    ("fan-out at 5 000/s: server CPU per push (µs)", "fanout_rate", lambda j: j["server_cpu_us_per_push"]),
    ("fan-out at 20 000/s: p50 latency (ms)", "fanout_20k", lambda j: j["latency_ms"]["p50"]),
    ("fan-out at 20 000/s: p90 latency (ms)", "fanout_20k", lambda j: j["latency_ms"]["p90"]),
    ("fan-out at 20 000/s: p99 latency (ms)", "fanout_20k", lambda j: j["latency_ms"]["p99"]),
    ("fan-out at 20 000/s: server CPU per push (µs)", "fanout_20k", lambda j: j["server_cpu_us_per_push"]),
    ("broadcast to 10k: time to reach all, p50 (ms)", "broadcast", lambda j: j["to_all_ms"]["p50"]),
    ("broadcast to 10k: time to reach all, p99 (ms)", "broadcast", lambda j: j["to_all_ms"]["p99"]),
    ("broadcast: server CPU per delivered message (µs)", "broadcast", lambda j: j["server_cpu_us_per_delivered"]),
    ("echo, 100 clients × 64 B: round trips/s", "echo", lambda j: j["round_trips_per_sec"]),
    ("echo: p99 round trip (ms)", "echo", lambda j: j["latency_ms"]["p99"]),
    ("echo: server CPU per round trip (µs)", "echo", lambda j: j["server_cpu_us_per_round_trip"]),
]
fmt = lambda v: "—" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if v else "0")
peers = [s for s in servers if s not in ("pushgate", "pushgate-uring", "base", "base-uring")]
head = ["figure"] + [f"{s} (median)" for s in servers]
both = "pushgate" in servers and "pushgate-uring" in servers
if both:
    head += ["io_uring / epoll"]
ab = "pushgate" in servers and "base" in servers
if ab:
    head += ["pushgate / base"]
if "pushgate" in servers:
    head += [f"pushgate / {p}" for p in peers]
print(f"Medians of {runs} runs each.\n")
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
spread = []
for label, name, f in rows:
    med = {}
    for s in servers:
        vs = values(name, s, f)
        med[s] = statistics.median(vs) if vs else None
        spread.append((label, s, vs))
    if all(v is None for v in med.values()):
        continue
    cells = [label] + [fmt(med[s]) for s in servers]
    if both:
        a, b = med["pushgate-uring"], med["pushgate"]
        cells.append("—" if a is None or not b else f"{a / b:.2f}")
    if ab:
        a, b = med["pushgate"], med["base"]
        cells.append("—" if a is None or not b else f"{a / b:.2f}")
    if "pushgate" in servers:
        for p in peers:
            a, b = med["pushgate"], med[p]
            cells.append("—" if a is None or not b else f"{a / b:.2f}")
    print("| " + " | ".join(cells) + " |")
floor = {k: load(f"floor.{k}.json") for k in (1, 1000)}
if any(floor.values()):
    print("\nFloor, one 60 B `send()` on loopback TCP (CPU µs per frame):\n")
    print("| sockets | sender | of which system | reader | both | frames per read |")
    print("|---|---|---|---|---|---|")
    for k, j in floor.items():
        if j:
            print(f"| {k} | {j['sender_cpu_us_per_send']:.3f} | {j['sender_sys_us_per_send']:.3f} | "
                  f"{j['reader_cpu_us_per_send']:.3f} | {j['total_cpu_us_per_send']:.3f} | {j['frames_per_read']:.1f} |")
print("\nEvery run:\n")
print("| figure | server | runs |")
print("|---|---|---|")
for label, s, vs in spread:
    if vs:
        print(f"| {label} | {s} | {', '.join(fmt(v) for v in vs)} |")
PY
