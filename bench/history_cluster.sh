#!/usr/bin/env bash
# JetStream's cost per push in a cluster (issue 15), history on against off in one run:
# one `nats-server -js` (store in a temporary directory) and release nodes on it: A and B
# with history on (default size and TTL, prefix `on`), C and D with --history-size 0
# (prefix `off`), and E like A with --reactors 8. Every push crosses the bus: subscribers
# on B (or D), pushes through A (or C, or E: "on8"), random single users from 16
# keep-alive publishers flat out, then at a fixed RATE pushes/s ("on@", "off@": the p99
# to compare), measured RUNS times in alternation. A push is parked while JetStream
# stores it (its reactor serves the rest), so more reactors should change little: "on8"
# shows it. RSS=0 skips the nats-server memory part.
# Then nats-server's memory per retained message: a second server, RSS with an empty
# stream against RSS holding MESSAGES messages, each read after a restart (caches cold:
# what holding them costs, not what writing them did), beside the store's bytes on disk.
#   [RATE=5000] [RSS=1] bench/history_cluster.sh [SUBSCRIBERS] [PUSHES] [RUNS] [MESSAGES]
#   (defaults: 2000, 20000, 3, 30000)
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-2000}
pushes=${2:-20000}
runs=${3:-3}
messages=${4:-30000}
rate=${RATE:-5000}
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
tmp=$(mktemp -d)
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"' EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; }

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$tmp/js" >"$tmp/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port"

history_ready() { # CONTROL_PORT
  for _ in $(seq 100); do
    [ "$(curl -s "127.0.0.1:$1/metrics" | awk '/^pushgate_history_cluster_ready /{print $2}')" = 1 ] && return
    sleep 0.1
  done
  echo "history never ready on control port $1" >&2; exit 1
}
start_node() { # NAME NATS_PORT PREFIX EXTRA...: sets ${NAME}_port ${NAME}_cport ${NAME}_pid
  local name=$1 np=$2 prefix=$3; shift 3
  local p c
  p=$(free_port); c=$(free_port)
  ./target/release/pushgate --dev --listen "127.0.0.1:$p" --control "127.0.0.1:$c" \
    --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 --shutdown-drain 1 \
    --node-id "$name" --nats "nats://127.0.0.1:$np" --bus-prefix "$prefix" "$@" \
    >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$c/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$c/readyz" >/dev/null || { cat "$tmp/$name.log"; exit 1; }
  printf -v "${name}_port" %s "$p"
  printf -v "${name}_cport" %s "$c"
  printf -v "${name}_pid" %s "${pids[-1]}"
}
start_node A "$nats_port" on
start_node B "$nats_port" on
start_node E "$nats_port" on --reactors 8
start_node C "$nats_port" off --history-size 0
start_node D "$nats_port" off --history-size 0
history_ready "$A_cport"
history_ready "$E_cport"

for run in $(seq "$runs"); do
  for mode in on off on8 on@ off@; do
    r=0
    case $mode in
    on) api=$A_cport; srv=$B_port; pid=$B_pid ;;
    off) api=$C_cport; srv=$D_port; pid=$D_pid ;;
    on8) api=$E_cport; srv=$B_port; pid=$B_pid ;;
    on@) api=$A_cport; srv=$B_port; pid=$B_pid; r=$rate ;;
    off@) api=$C_cport; srv=$D_port; pid=$D_pid; r=$rate ;;
    esac
    # Users of their own per run and mode: a subscriber that connects without `since`
    # gets its user's retained messages, and those of an earlier run would count as
    # deliveries (with their old send times).
    tag="r${run}${mode/@/at}-"
    echo "== history $mode, run $run (subscribers on the other node; rate $r, 0: flat out)"
    ./target/release/pushgate-load fanout --server "127.0.0.1:$srv" --api "127.0.0.1:$api" \
      --subscribers "$subs" --pushes "$pushes" --sources 32 --server-pid "$pid" \
      --publishers 16 --rate "$r" --subscribe "/ws?uid=${tag}{user}" \
      --publish-body "{\"to\":[\"${tag}{user}\"],\"data\":{data}}" | tail -1
  done
done
curl -s "127.0.0.1:$B_cport/metrics" | grep -E '^pushgate_history_cluster_events_total' | tr '\n' ' '; echo

[ "${RSS:-1}" = 0 ] && exit 0
rss_port=$(free_port)
start_rss_nats() {
  nats-server -a 127.0.0.1 -p "$rss_port" -js -sd "$tmp/js2" >>"$tmp/nats2.log" 2>&1 &
  rss_pid=$!
  pids+=($rss_pid)
  wait_port "$rss_port"
}
restart_rss_nats() { kill -TERM "$rss_pid"; wait "$rss_pid" 2>/dev/null || true; start_rss_nats; sleep 3; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$rss_pid/status"; }
start_rss_nats
start_node R "$rss_port" rss
history_ready "$R_cport"
restart_rss_nats
history_ready "$R_cport"
empty=$(rss_kb)
echo "== nats-server memory per retained message ($messages pushes of ~100 B, 100 per user)"
python3 bench/push_many.py "$R_cport" "$messages"
warm=$(rss_kb)
restart_rss_nats
full=$(rss_kb)
disk=$(du -sb "$tmp/js2" | cut -f1)
echo "nats-server RSS: ${empty} kB with an empty stream (after a restart), ${warm} kB right" \
  "after storing, ${full} kB holding ${messages} messages (after a restart):" \
  "$(((full - empty) * 1024 / messages)) B per retained message; on disk $((disk / messages)) B per message"
