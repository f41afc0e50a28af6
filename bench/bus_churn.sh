#!/usr/bin/env bash
# The bus under user churn (issue 19): one release pushgate with --nats and a real
# nats-server on free loopback ports. For CHURN_SECS, pushgate-load's storm runs back to
# back: USERS users (s0 ... s<USERS-1>, the same IDs every cycle) connect within a second,
# all drop and reconnect within a second, and leave. The gateway's RSS is sampled every
# second; the script prints the steady RSS (connected to NATS, before the churn), the peak
# during the churn, and the RSS SETTLE_SECS after the churn stopped, with the bus gauges.
# Everything it starts is stopped by PID when it exits.
#   bench/bus_churn.sh [USERS=5000] [CHURN_SECS=60] [SETTLE_SECS=30]
# PUSHGATE=/path/to/pushgate (and PUSHGATE_LOAD=...) measure other builds (default: a
# release build of this tree). Extra gateway flags: GATEWAY_ARGS="--bus-unsubscribe-delay 2".
# FRESH_IDS=1: every run of the storm uses new user IDs (c<run>-s0 ...), so the distinct
# users grow by USERS per run and every subject is subscribed once and unsubscribed once.
# NO_BUS=1: the same churn on a node routing in-process (the reference without a bus).
# KEEP_LOGS=DIR: keep the gateway, nats-server and load tool logs and the RSS samples.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-5000}
churn_secs=${2:-60}
settle_secs=${3:-30}
if [ -z "${PUSHGATE:-}" ]; then
  cargo build --release --locked -q -p pushgate -p pushgate-load
fi
gw_bin=${PUSHGATE:-./target/release/pushgate}
load_bin=${PUSHGATE_LOAD:-./target/release/pushgate-load}
read -r -a gw_extra <<<"${GATEWAY_ARGS:-}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
logs=$(mktemp -d)
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP_LOGS:-}" ]; then cp -r "$logs" "$KEEP_LOGS"; fi
  rm -rf "$logs"
}
trap cleanup EXIT

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" >"$logs/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done

port=$(free_port)
cport=$(free_port)
bus=(--nats "nats://127.0.0.1:$nats_port")
if [ "${NO_BUS:-0}" = 1 ]; then bus=(); fi
"$gw_bin" --dev --listen "127.0.0.1:$port" --control "127.0.0.1:$cport" --reactors 2 \
  --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 --shutdown-drain 1 \
  "${bus[@]}" --node-id churn "${gw_extra[@]}" >"$logs/gw.log" 2>&1 &
gw=$!
pids+=("$gw")
for _ in $(seq 100); do curl -sf "127.0.0.1:$cport/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "127.0.0.1:$cport/readyz" >/dev/null || { cat "$logs/gw.log"; exit 1; }

rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$gw/status"; }
bus_gauges() {
  curl -s "127.0.0.1:$cport/metrics" |
    awk '/^pushgate_bus_(subscriptions|interest_changes_total|connected) / { printf "%s=%s ", $1, $2 }'
}

# Steady: connected, idle, the median of five samples a second apart.
steady=$(for _ in 1 2 3 4 5; do rss_mb; echo; sleep 1; done | sort -n | sed -n 3p)
echo "gateway pid $gw, nats-server pid ${pids[0]}"
echo "steady RSS ${steady} MB ($(bus_gauges))"

# Sample every second from here on, into phase-tagged lines.
phase_file=$logs/phase
echo churn >"$phase_file"
(
  t=0
  while kill -0 "$gw" 2>/dev/null && [ "$t" -lt $((churn_secs + settle_secs + 120)) ]; do
    echo "$t $(cat "$phase_file") $(rss_mb)"
    sleep 1
    t=$((t + 1))
  done
) >"$logs/rss" &
pids+=($!)

start=$(date +%s)
cycles=0
while [ $(($(date +%s) - start)) -lt "$churn_secs" ]; do
  # Ten subscribers and a hundred pushes only to drive the storm; the storm is the load.
  id='{user}'
  if [ "${FRESH_IDS:-0}" = 1 ]; then id="c$cycles-{user}"; fi
  timeout 60 "$load_bin" fanout --server "127.0.0.1:$port" --api "127.0.0.1:$cport" \
    --subscribe "/ws?uid=$id" --publish-body "{\"to\":[\"$id\"],\"data\":{data}}" \
    --subscribers 10 --pushes 100 --rate 100 --drain 0.5 --timeout 50 \
    --storm-users "$users" --storm-after 0 >>"$logs/load.log" 2>&1 ||
    { echo "load tool failed:"; tail -5 "$logs/load.log"; exit 1; }
  cycles=$((cycles + 2))
done
echo settle >"$phase_file"
churned=$(($(date +%s) - start))
peak=$(awk '$2 == "churn" && $3 > m { m = $3 } END { print m + 0 }' "$logs/rss")
echo "churn: $cycles cycles of $users users in ${churned}s; peak RSS ${peak} MB ($(bus_gauges))"

for s in $(seq "$settle_secs"); do
  sleep 1
  if [ $((s % 10)) -eq 0 ]; then echo "  ${s}s after: $(rss_mb) MB ($(bus_gauges))"; fi
done
after=$(rss_mb)
echo "steady ${steady} MB, peak ${peak} MB (+$(awk -v a="$peak" -v b="$steady" 'BEGIN { printf "%.1f", a - b }')), ${settle_secs}s after ${after} MB (+$(awk -v a="$after" -v b="$steady" 'BEGIN { printf "%.1f", a - b }'))"
printf '{"users":%s,"churn_secs":%s,"cycles":%s,"steady_mb":%s,"peak_mb":%s,"after_mb":%s,"settle_secs":%s}\n' \
  "$users" "$churned" "$cycles" "$steady" "$peak" "$after" "$settle_secs"
