#!/usr/bin/env bash
# Slow-handshake siege: holds N connections that dribble their upgrade request a byte at a
# time (and re-open whatever the gateway evicts), and meanwhile times honest upgrades.
# Target (issue "Under siege"): with 5 000 slow handshakes held open, every honest upgrade
# completes within 1 s. Starts a release pushgate with default limits on free loopback
# ports and stops it by PID; bounded in count and time.
#   bench/siege_handshake.sh [SLOW] [SECONDS]     (defaults: 5000 slow connections, 30 s)
set -euo pipefail
cd "$(dirname "$0")/.."
slow=${1:-5000}
seconds=${2:-30}
cargo build --release -q -p pushgate
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
cport=$(free_port)
log=$(mktemp)
./target/release/pushgate --dev --listen "127.0.0.1:$port" --control "127.0.0.1:$cport" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "pushgate started" "$log" && break; sleep 0.1; done
grep -q "pushgate started" "$log" || { cat "$log"; exit 1; }

python3 - "$port" "$cport" "$slow" "$seconds" <<'EOF'
import base64, os, resource, selectors, socket, sys, time, urllib.request

port, cport, n_slow, seconds = (int(a) for a in sys.argv[1:5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def source(i):
    return f"127.0.{1 + i // 250}.{2 + i % 250}"

def open_slow(i):
    s = socket.socket()
    s.setblocking(False)
    s.bind((source(i), 0))
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    return s

head = b"GET /ws?uid=slow HTTP/1.1\r\nHost: x\r\n"
slow = [open_slow(i) for i in range(n_slow)]
sent = [0] * n_slow
reopened = 0

def dribble():
    """One more byte on every slow connection; a reset one is opened again."""
    global reopened
    for i, s in enumerate(slow):
        try:
            s.send(head[sent[i] % len(head):][:1])
            sent[i] += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            s.close()
            slow[i] = open_slow(i)
            sent[i] = 0
            reopened += 1

def honest(k):
    key = base64.b64encode(os.urandom(16)).decode()
    start = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall((f"GET /ws?uid=honest{k} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    took = time.monotonic() - start
    s.close()
    return took, buf.startswith(b"HTTP/1.1 101")

deadline = time.monotonic() + seconds
times, failures, k = [], 0, 0
while time.monotonic() < deadline:
    dribble()
    for _ in range(5):
        try:
            took, ok = honest(k)
        except OSError:
            took, ok = 10.0, False
        k += 1
        times.append(took)
        failures += 0 if ok else 1
    time.sleep(0.2)

def metric(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{cport}/metrics", timeout=5).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name))

times.sort()
pct = lambda p: times[min(len(times) - 1, int(p * len(times)))] * 1000
print(f"slow connections held: {n_slow}, re-opened after eviction: {reopened}")
print(f"honest upgrades: {len(times)}, failed: {failures}, over 1 s: {sum(t > 1 for t in times)}")
print(f"upgrade time ms: p50 {pct(0.5):.2f}  p99 {pct(0.99):.2f}  max {times[-1]*1000:.2f}")
print(f"handshakes evicted: {metric('pushgate_handshakes_evicted_total'):.0f}, "
      f"in progress: {metric('pushgate_handshakes_in_progress'):.0f}")
sys.exit(1 if failures or times[-1] > 1 else 0)
EOF
