#!/usr/bin/env bash
# Idle connection cost and upgrade rate: starts a release pushgate, opens N idle /ws
# connections from a separate pushgate-load process (sources 127.0.0.2…), holds them, reads
# the server's RSS growth per connection and the kernel's TCP memory, then stops the server.
#   bench/idle.sh [COUNT] [RATE]      (defaults: 15000 connections, as fast as possible)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-15000}
rate=${2:-0}
cargo build --release -q -p pushgate -p pushgate-load
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
./target/release/pushgate --listen "127.0.0.1:$port" --control "127.0.0.1:$cport" \
  --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "pushgate started" "$log" && break; sleep 0.1; done
grep -o 'max_connections=[0-9]*' "$log" || true
sleep 1
./target/release/pushgate-load conns --server "127.0.0.1:$port" --count "$count" --rate "$rate" \
  --hold 3 --server-pid "$pid" --sources 32
