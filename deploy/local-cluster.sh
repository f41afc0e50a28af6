#!/usr/bin/env bash
# A pushgate cluster on one machine, as separate hosts: a 3-server NATS JetStream cluster
# and 3 pushgate nodes (history on JetStream with 3 replicas), each process in its own
# network namespace with its own address, all joined by a bridge, so every connection
# between them is real TCP between hosts. Needs root, iproute2, curl and nats-server.
#
#   deploy/local-cluster.sh up [--dir DIR] [--bin PUSHGATE] [--load-ns] [--relay LOADTOOL]
#       brings it up, prints the URLs and the state file, and stays in the foreground:
#       Ctrl-C (or `stop`) tears everything down. For chaos runs (bench/chaos.sh):
#       --load-ns adds a namespace for the load tool (LOAD_{NS,ADDR,LINK});
#       --relay routes every gateway's NATS connections through a fault-injecting relay
#       (`LOADTOOL relay`) on the host: gateway i reaches NATS j at HOST_ADDR:14000+10i+j,
#       route index 3(i-1)+(j-1) on its control socket RELAY_CONTROL (RELAY_PID).
#   deploy/local-cluster.sh stop [DIR]       tears down the cluster whose state is DIR/state
#   deploy/local-cluster.sh kill DIR NODE [SIGNAL]
#                                            signals NODE's process (n1..n3 NATS, g1..g3
#                                            gateways), KILL by default, as a crash would
#   deploy/local-cluster.sh start DIR NODE   starts NODE's process again, as it was
#
# The gateways run with --dev (?uid= trusted: a local cluster to try things on) and a
# generated API key. Everything the script creates is named after its run (pgc<pid>: the
# namespaces pgc<pid>-n1.., the bridge pgc<pid>br, the veths pgc<pid>n1..), recorded in
# DIR/state as it is made, and only that is removed; nothing else on the host is touched.
# DIR/state (KEY=value lines, readable by `source`) tells scripts, such as chaos tests,
# every address, port, URL, namespace and PID:
#   RUN DIR BRIDGE HOST_ADDR API_KEY UP_PID READY STOPPED CREATED_{NS,LINK,BRIDGE}
#   NATS_<i>_{NS,ADDR,URL,MONITOR,PID}  GATEWAY_<i>_{NS,ADDR,WS,CONTROL,PID,LINK}  (i = 1..3)
# A key set again (a PID after `start`) counts by its last line. DIR also holds each
# node's log (<node>.log), configuration and command line (<node>.cmd).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
nodes=3
client_port=8080
control_port=8081
nats_port=4222
route_port=6222
monitor_port=8222

die() { echo "local-cluster: $*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
}

# --- state -------------------------------------------------------------------------------

state_set() { echo "$1=$2" >>"$dir/state"; }

# The last value of KEY in the state file.
state_get() { sed -n "s/^$1=//p" "$2/state" | tail -n 1; }

# --- network -----------------------------------------------------------------------------

# A /24 in 10.64.0.0/10 that no interface or route of this host uses, picked from the PID.
pick_subnet() {
  local n=$$ i a b used
  used=$(ip -4 addr show; ip -4 route show)
  for ((i = 0; i < 256; i++)); do
    a=$((64 + (n / 256 + i) % 64)); b=$(((n + i * 7) % 256))
    if ! grep -qE "(inet |^)10\.$a\.$b\." <<<"$used"; then
      echo "10.$a.$b"; return
    fi
  done
  die "no free 10.64.0.0/10 subnet"
}

# A namespace with its veth on the bridge and address .$2.
add_host() {
  local ns=$1 addr=$2 veth=$3
  ip netns add "$ns"
  state_set CREATED_NS "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  state_set CREATED_LINK "$veth"
  ip link set "$veth" master "$bridge" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

# --- processes ---------------------------------------------------------------------------

# Starts NODE (n<i> or g<i>) from its recorded command line; records its PID.
start_node() {
  local node=$1 ns cmd pid key
  ns=$(cat "$dir/$node.ns")
  # One word per line, as written by `up`.
  mapfile -t cmd <"$dir/$node.cmd"
  ip netns exec "$ns" "${cmd[@]}" >>"$dir/$node.log" 2>&1 </dev/null &
  pid=$!
  case $node in n*) key=NATS_${node#n}_PID ;; g*) key=GATEWAY_${node#g}_PID ;; esac
  state_set "$key" "$pid"
}

# Every process in our namespaces, so nothing outside them is ever signalled.
kill_node() {
  local d=$1 node=$2 sig=${3:-KILL} ns
  ns=$(cat "$d/$node.ns" 2>/dev/null) || die "no node $node in $d"
  ip netns pids "$ns" 2>/dev/null | xargs -r kill "-$sig" 2>/dev/null || true
}

# Waits until URL answers 2xx; NODE's process must stay up meanwhile.
wait_http() {
  local url=$1 what=$2 node=$3 limit=60 t=0
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    [ -n "$(ip netns pids "$(cat "$dir/$node.ns")")" ] ||
      die "$what exited: $(tail -n 1 "$dir/$node.log")"
    t=$((t + 1))
    [ "$t" -le $((limit * 5)) ] || die "$what did not answer $url within ${limit}s (logs in $dir)"
    sleep 0.2
  done
}

# --- teardown ----------------------------------------------------------------------------

# Removes what DIR/state records as created, newest first; safe to run twice.
teardown() {
  local d=$1 ns link
  [ -f "$d/state" ] || return 0
  for ns in $(sed -n 's/^CREATED_NS=//p' "$d/state"); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -TERM 2>/dev/null || true
  done
  for _ in $(seq 20); do
    local left=0
    for ns in $(sed -n 's/^CREATED_NS=//p' "$d/state"); do
      [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] || left=1
    done
    [ "$left" = 0 ] && break
    sleep 0.2
  done
  for ns in $(sed -n 's/^CREATED_NS=//p' "$d/state"); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  for ns in $(sed -n 's/^CREATED_NS=//p' "$d/state" | tac); do
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(sed -n 's/^CREATED_LINK=//p' "$d/state" | tac); do
    ip link del "$link" 2>/dev/null || true
  done
  local relay br
  relay=$(state_get RELAY_PID "$d")
  if [ -n "$relay" ] && grep -q relay "/proc/$relay/cmdline" 2>/dev/null; then
    kill -KILL "$relay" 2>/dev/null || true
  fi
  br=$(state_get CREATED_BRIDGE "$d")
  [ -z "$br" ] || ip link del "$br" 2>/dev/null || true
  rm -rf "$d"/n*/jetstream
  echo "STOPPED=1" >>"$d/state"
}

# --- commands ----------------------------------------------------------------------------

up() {
  local bin=${PUSHGATE_BIN:-} load_ns= relay_bin=
  dir=
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) dir=$2; shift 2 ;;
      --bin) bin=$2; shift 2 ;;
      --load-ns) load_ns=1; shift ;;
      --relay) relay_bin=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  command -v nats-server >/dev/null || die "no nats-server on PATH (scripts/install-test-deps.sh)"
  command -v curl >/dev/null || die "no curl"
  if [ -z "$bin" ]; then
    for b in "$here/target/release/pushgate" "$here/target/debug/pushgate"; do
      [ -x "$b" ] && { bin=$b; break; }
    done
  fi
  [ -n "$bin" ] && [ -x "$bin" ] || die "no pushgate binary: cargo build --release -p pushgate, or --bin"
  if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/pushgate-cluster.XXXXXX); else mkdir -p "$dir"; fi
  dir=$(cd "$dir" && pwd)
  [ ! -s "$dir/state" ] || die "$dir/state exists: one cluster per directory"

  local run=pgc$$
  bridge=${run}br
  : >"$dir/state"
  state_set RUN "$run"
  state_set DIR "$dir"
  state_set UP_PID "$$"
  sleeper=
  trap 'finish; exit 130' INT
  trap 'finish; exit 143' TERM
  trap 'finish' EXIT

  local net api_key i j routes urls
  net=$(pick_subnet)
  api_key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  ip link add "$bridge" type bridge
  state_set CREATED_BRIDGE "$bridge"
  ip addr add "$net.254/24" dev "$bridge"
  ip link set "$bridge" up
  state_set BRIDGE "$bridge"
  state_set HOST_ADDR "$net.254"
  state_set API_KEY "$api_key"

  urls=
  for ((i = 1; i <= nodes; i++)); do
    add_host "$run-n$i" "$net.$((10 + i))" "${run}n$i"
    add_host "$run-g$i" "$net.$((20 + i))" "${run}g$i"
    urls+=${urls:+,}nats://$net.$((10 + i)):$nats_port
  done
  if [ -n "$load_ns" ]; then
    add_host "$run-l1" "$net.31" "${run}l1"
    state_set LOAD_NS "$run-l1"
    state_set LOAD_ADDR "$net.31"
    state_set LOAD_LINK "${run}l1"
  fi
  if [ -n "$relay_bin" ]; then
    local relay_args=(relay --control "$net.254:14000" --latency 2 --jitter 3)
    for ((i = 1; i <= nodes; i++)); do
      for ((j = 1; j <= nodes; j++)); do
        relay_args+=(--route "$net.254:$((14000 + 10 * i + j))=$net.$((10 + j)):$nats_port")
      done
    done
    "$relay_bin" "${relay_args[@]}" >>"$dir/relay.log" 2>&1 </dev/null &
    state_set RELAY_PID "$!"
    state_set RELAY_CONTROL "$net.254:14000"
  fi

  # NATS: one JetStream server per namespace, routes to the others.
  for ((i = 1; i <= nodes; i++)); do
    local addr=$net.$((10 + i))
    routes=
    for ((j = 1; j <= nodes; j++)); do
      [ "$j" = "$i" ] || routes+="    nats://$net.$((10 + j)):$route_port"$'\n'
    done
    mkdir -p "$dir/n$i"
    cat >"$dir/n$i/nats.conf" <<EOF
server_name: n$i
listen: 0.0.0.0:$nats_port
http: 0.0.0.0:$monitor_port
pid_file: "$dir/n$i/nats.pid"
jetstream {
  store_dir: "$dir/n$i/jetstream"
  max_memory_store: 64MB
  max_file_store: 1GB
}
cluster {
  name: $run
  listen: 0.0.0.0:$route_port
  routes: [
$routes  ]
}
# nats-server's minimum: a graceful stop (kill DIR n1 TERM) takes this long.
lame_duck_duration: "30s"
lame_duck_grace_period: "2s"
EOF
    echo "$run-n$i" >"$dir/n$i.ns"
    printf '%s\n' nats-server -c "$dir/n$i/nats.conf" >"$dir/n$i.cmd"
    state_set "NATS_${i}_NS" "$run-n$i"
    state_set "NATS_${i}_ADDR" "$addr"
    state_set "NATS_${i}_URL" "nats://$addr:$nats_port"
    state_set "NATS_${i}_MONITOR" "http://$addr:$monitor_port"
    start_node "n$i"
  done
  # JetStream's meta leader elected on every server (/healthz checks it).
  for ((i = 1; i <= nodes; i++)); do
    wait_http "http://$net.$((10 + i)):$monitor_port/healthz" "nats-server n$i" "n$i"
  done

  # Gateways: one per namespace, every NATS server listed, history replicated 3 times.
  for ((i = 1; i <= nodes; i++)); do
    local addr=$net.$((20 + i))
    local gateway_urls=$urls
    if [ -n "$relay_bin" ]; then
      gateway_urls=
      for ((j = 1; j <= nodes; j++)); do
        gateway_urls+=${gateway_urls:+,}nats://$net.254:$((14000 + 10 * i + j))
      done
    fi
    gateway_args=(--dev --node-id "g$i" --listen "0.0.0.0:$client_port"
      --control "0.0.0.0:$control_port" --api-key "$api_key" --nats "$gateway_urls"
      --history-replicas 3 --reactors 1 --shutdown-drain 1)
    echo "$run-g$i" >"$dir/g$i.ns"
    printf '%s\n' "$bin" "${gateway_args[@]}" >"$dir/g$i.cmd"
    state_set "GATEWAY_${i}_NS" "$run-g$i"
    state_set "GATEWAY_${i}_ADDR" "$addr"
    state_set "GATEWAY_${i}_WS" "ws://$addr:$client_port/ws"
    state_set "GATEWAY_${i}_CONTROL" "http://$addr:$control_port"
    state_set "GATEWAY_${i}_LINK" "${run}g$i"
    start_node "g$i"
  done
  for ((i = 1; i <= nodes; i++)); do
    local control=http://$net.$((20 + i)):$control_port
    wait_http "$control/readyz" "gateway g$i" "g$i"
    local t=0 metrics=
    until grep -q '^pushgate_history_cluster_ready 1' <<<"$metrics"; do
      t=$((t + 1)); [ "$t" -le 150 ] || die "gateway g$i has no history stream (logs in $dir)"
      sleep 0.2
      metrics=$(curl -fsS --max-time 2 "$control/metrics" 2>/dev/null || true)
    done
  done
  state_set READY 1

  cat <<EOF
pushgate cluster $run is up (state: $dir/state, logs: $dir/*.log)
  NATS JetStream: $urls  (monitoring on :$monitor_port)
EOF
  for ((i = 1; i <= nodes; i++)); do
    echo "  gateway g$i: ws://$net.$((20 + i)):$client_port/ws?uid=alice  control http://$net.$((20 + i)):$control_port"
  done
  cat <<EOF
  push:  curl -H 'Authorization: Bearer $api_key' -d '{"to":["alice"],"data":"hi"}' http://$net.21:$control_port/v1/push
  stop:  Ctrl-C, or $0 stop $dir
EOF
  sleep infinity &
  sleeper=$!
  wait "$sleeper"
}

# `up`'s exit, however it comes: stop waiting, tear down once.
finish() {
  [ -z "${sleeper:-}" ] || kill "$sleeper" 2>/dev/null || true
  sleeper=
  grep -q '^STOPPED=1' "$dir/state" 2>/dev/null || teardown "$dir"
}

stop() {
  local d=${1:-}
  if [ -z "$d" ]; then
    local running=()
    for s in /tmp/pushgate-cluster.*/state; do
      [ -f "$s" ] && ! grep -q '^STOPPED=1' "$s" && running+=("$(dirname "$s")")
    done
    [ "${#running[@]}" = 1 ] || die "name the cluster's DIR: running ${running[*]:-none}"
    d=${running[0]}
  fi
  [ -f "$d/state" ] || die "no $d/state"
  [ "$(id -u)" = 0 ] || die "needs root"
  local up_pid
  up_pid=$(state_get UP_PID "$d")
  # The `up` process tears down on TERM; if it is gone, do it from the state here.
  if [ -n "$up_pid" ] && grep -q "local-cluster.sh" "/proc/$up_pid/cmdline" 2>/dev/null; then
    kill -TERM "$up_pid"
    for _ in $(seq 100); do
      kill -0 "$up_pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  grep -q '^STOPPED=1' "$d/state" || teardown "$d"
  echo "stopped $(state_get RUN "$d")"
}

case ${1:-} in
  up) shift; up "$@" ;;
  stop) shift; stop "$@" ;;
  kill) [ $# = 3 ] || [ $# = 4 ] || usage; kill_node "$2" "$3" "${4:-KILL}" ;;
  start)
    [ $# = 3 ] || usage
    dir=$2
    [ -f "$dir/$3.cmd" ] || die "no node $3 in $dir"
    start_node "$3"
    ;;
  *) usage ;;
esac
