#!/usr/bin/env bash
# Idle connection cost and upgrade rate: starts a release pushgate, opens N idle /ws
# connections from a separate pushgate-load process (sources 127.0.0.2…), holds them, reads
# the server's RSS growth per connection and the kernel's memory, then stops the server.
#   bench/idle.sh [COUNT] [RATE]      (defaults: 15000 connections, as fast as possible)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-15000}
rate=${2:-0}
source bench/gateway.sh
grep -o 'max_connections=[0-9]*' "$gateway_log" || true
sleep 1
./target/release/pushgate-load conns --server "127.0.0.1:$port" --count "$count" --rate "$rate" \
  --hold 3 --server-pid "$pid" --sources 32
