#!/usr/bin/env bash
# The control listener under siege (issue 19): starts a release pushgate, opens IDLE idle
# TCP connections to its control port (sources 127.0.0.2…, 500 per address), holds them,
# and times ROUNDS requests each to /healthz, /metrics and /v1/push, each on a fresh
# connection (connect to last byte of the response), as a scraper, a probe and a backend
# see it. Then a client that sends a 2× oversized body before reading (Python's urllib)
# must get its 413. Target: every request answered within 100 ms.
#   bench/control_siege.sh [IDLE] [ROUNDS]      (defaults: 2000 idle, 200 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
idle=${1:-2000}
rounds=${2:-200}
cargo build --release -q --locked -p pushgate
cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
# A first-request timeout longer than the run, so only eviction frees slots (the default
# 5 s would also close the idle sockets, which would flatter the result).
./target/release/pushgate --dev --listen 127.0.0.1:0 --control "127.0.0.1:$cport" \
  --control-first-request-timeout 600 --max-body-bytes 1048576 >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "pushgate started" "$log" && break; sleep 0.1; done
grep -q "pushgate started" "$log" || { cat "$log"; exit 1; }

python3 - "$cport" "$idle" "$rounds" <<'EOF'
import resource, socket, sys, time, urllib.error, urllib.request

port, idle, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
addr = ("127.0.0.1", port)

start = time.monotonic()
held = []
for i in range(idle):
    s = socket.socket()
    s.bind((f"127.0.0.{2 + i // 500}", 0))
    s.settimeout(10)
    s.connect(addr)
    held.append(s)
print(f"opened {idle} idle control connections in {time.monotonic() - start:.2f} s")

def request(raw):
    t = time.monotonic()
    s = socket.create_connection(addr, timeout=10)
    s.sendall(raw)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out, time.monotonic() - t

body = b'{"to":["nobody"],"data":1}'
cases = {
    "/healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "/metrics": b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "/v1/push": b"POST /v1/push HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
    + str(len(body)).encode() + b"\r\n\r\n" + body,
}
worst = 0.0
print("| endpoint | requests | failed | p50 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|")
for name, raw in cases.items():
    times, failed = [], 0
    for _ in range(rounds):
        out, took = request(raw)
        if not out.startswith(b"HTTP/1.1 200"):
            failed += 1
        times.append(took * 1000)
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    worst = max(worst, times[-1])
    print(f"| {name} | {rounds} | {failed} | {p(0.5):.2f} | {p(0.99):.2f} | {times[-1]:.2f} |")

still_open = 0
for s in held:
    s.setblocking(False)
    try:
        still_open += s.recv(1) != b""
    except BlockingIOError:
        still_open += 1
    except OSError:
        pass
print(f"idle connections still open: {still_open} of {idle}")
metrics, _ = request(cases["/metrics"])
for line in metrics.decode().splitlines():
    if line.startswith("pushgate_control_"):
        print(line)

try:
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/push", data=b"x" * (2 * 1048576)), timeout=10)
    print("oversized body: accepted?!")
except urllib.error.HTTPError as e:
    print(f"oversized body (urllib, sends all then reads): HTTP {e.code}")
except Exception as e:
    print(f"oversized body (urllib, sends all then reads): {e!r}")
print(f"worst request: {worst:.2f} ms (target 100 ms)")
EOF
