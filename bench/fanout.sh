#!/usr/bin/env bash
# Push fan-out through the server API: a release pushgate, 10000 subscribers (one per
# user) in a separate pushgate-load process, pushes to random single users.
#   bench/fanout.sh [SUBSCRIBERS] [PUSHES] [RATE]   (defaults: 10000, 100000, 0 = flat out)
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-10000}
pushes=${2:-100000}
rate=${3:-0}
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
cport=$(free_port)
log=$(mktemp)
./target/release/pushgate --listen "127.0.0.1:$port" --control "127.0.0.1:$cport" \
  --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "pushgate started" "$log" && break; sleep 0.1; done
./target/release/pushgate-load fanout --server "127.0.0.1:$port" --api "127.0.0.1:$cport" \
  --subscribers "$subs" --pushes "$pushes" --rate "$rate" --sources 32
