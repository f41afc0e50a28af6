#!/usr/bin/env bash
# Push fan-out through the server API: a release pushgate, SUBSCRIBERS /ws connections (one
# per user) in a separate pushgate-load process, PUSHES to random single users at RATE.
#   bench/fanout.sh [SUBSCRIBERS] [PUSHES] [RATE]   (defaults: 10000, 100000, 0 = flat out)
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-10000}
pushes=${2:-100000}
rate=${3:-0}
source bench/gateway.sh
./target/release/pushgate-load fanout --server "127.0.0.1:$port" --api "127.0.0.1:$cport" \
  --subscribers "$subs" --pushes "$pushes" --rate "$rate" --sources 32
