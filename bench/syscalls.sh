#!/usr/bin/env bash
# System calls per delivered message on each I/O backend: one fixed fan-out run (2 000
# subscribers, 20 000 pushes at 5 000/s) and one fixed echo run against a fresh gateway per
# backend, counting the gateway's system calls with `perf stat -e 'syscalls:sys_enter_*'`
# (tracepoints; hardware counters are not needed). Prints, per backend and scenario, the
# calls per delivered message (fan-out) or round trip (echo) and the five most frequent.
#   bench/syscalls.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
cargo build --release -q --locked -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
load=./target/release/pushgate-load
gw=""; perf_pid=""
cleanup() {
  [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null || true
  [ -n "$gw" ] && kill -TERM "$gw" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for io in epoll io-uring; do
  for scen in fanout echo; do
    port=$(free_port); api=$(free_port)
    ./target/release/pushgate --dev --listen "127.0.0.1:$port" --control "127.0.0.1:$api" --io "$io" \
      --reactors 2 --heartbeat 300 --idle-timeout 600 --control-first-request-timeout 60 \
      --shutdown-drain 1 >"$out/$io.$scen.log" 2>&1 &
    gw=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    perf stat -e 'syscalls:sys_enter_*' -p "$gw" -o "$out/$io.$scen.perf" &
    perf_pid=$!
    sleep 0.5
    if [ "$scen" = fanout ]; then
      "$load" fanout --server "127.0.0.1:$port" --api "127.0.0.1:$api" --subscribers 2000 \
        --pushes 20000 --rate 5000 --sources 8 --drain 2 | tail -n 1 >"$out/$io.$scen.json"
    else
      "$load" echo --server "127.0.0.1:$port" --clients 100 --size 64 --duration 5 \
        | tail -n 1 >"$out/$io.$scen.json"
    fi
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; perf_pid=""
    kill -TERM "$gw"; wait "$gw" 2>/dev/null || true; gw=""
  done
done
python3 - "$out" <<'PY' | tee "$out/syscalls.md"
import json, re, sys, os
out = sys.argv[1]
print("| backend | scenario | messages | system calls (whole run) | per message | top calls |")
print("|---|---|---|---|---|---|")
for io in ("epoll", "io-uring"):
    for scen in ("fanout", "echo"):
        j = json.load(open(os.path.join(out, f"{io}.{scen}.json")))
        n = j["delivered"] if scen == "fanout" else j["round_trips"]
        counts = {}
        for line in open(os.path.join(out, f"{io}.{scen}.perf")):
            m = re.match(r"\s*([\d,]+)\s+syscalls:sys_enter_(\w+)", line)
            if m:
                counts[m.group(2)] = int(m.group(1).replace(",", ""))
        total = sum(counts.values())
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
        tops = ", ".join(f"{k} {v / n:.2f}" for k, v in top)
        print(f"| {io} | {scen} | {n} | {total} | {total / n:.2f} | {tops} |")
PY
