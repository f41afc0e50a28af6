#!/usr/bin/env bash
# GET /v1/presence across a cluster: a real nats-server and three release pushgate nodes
# (n1, n2, n3) on free loopback ports, stopped by PID when the script exits. Each node
# holds CONNS idle connections, of users u0..u<CONNS-1> (so each queried user has one
# connection on every node); QUERIES queries of 10 users each go to n1 over one keep-alive connection,
# first with every node up, then with n3 frozen (SIGSTOP), and the latency percentiles are
# printed beside a /healthz round trip on the same connection (the floor).
#   bench/presence.sh [QUERIES] [CONNS]     (defaults: 500 3000)
set -euo pipefail
cd "$(dirname "$0")/.."
queries=${1:-500}; conns=${2:-3000}; users=$conns
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
load_pids=()
logs=$(mktemp -d)
stopped=""
cleanup() {
  [ -n "$stopped" ] && kill -CONT "$stopped" 2>/dev/null || true
  for p in "${load_pids[@]}" "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null; rm -rf "$logs"
}
trap cleanup EXIT

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" >"$logs/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done

start_node() {
  local name=$1 p c
  p=$(free_port); c=$(free_port)
  ./target/release/pushgate --dev --listen "127.0.0.1:$p" --control "127.0.0.1:$c" \
    --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 --shutdown-drain 1 \
    --node-id "$name" --nats "nats://127.0.0.1:$nats_port" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$c/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$c/readyz" >/dev/null || { cat "$logs/$name.log"; exit 1; }
  printf -v "${name}_port" %s "$p"
  printf -v "${name}_cport" %s "$c"
  printf -v "${name}_pid" %s "${pids[-1]}"
}
for n in n1 n2 n3; do start_node $n; done
# Idle connections on every node, held while the queries run.
for n in n1 n2 n3; do
  port_var=${n}_port
  ./target/release/pushgate-load conns --server "127.0.0.1:${!port_var}" --count "$conns" \
    --hold 600 --sources 8 >"$logs/load-$n.log" 2>&1 &
  load_pids+=($!)
done
for n in n1 n2 n3; do
  cport_var=${n}_cport
  for _ in $(seq 200); do
    online=$(curl -s "127.0.0.1:${!cport_var}/metrics" | awk '/^pushgate_users_online /{print $2}')
    peers=$(curl -s "127.0.0.1:${!cport_var}/metrics" | awk '/^pushgate_cluster_peers /{print $2}')
    [ "${online:-0}" = "$users" ] && [ "${peers:-0}" = 2 ] && break
    sleep 0.1
  done
  echo "$n: users online ${online:-?}, peers ${peers:-?}"
done

measure() {
  python3 - "$n1_cport" "$queries" "$users" <<'EOF'
import http.client, sys, time
port, n, users = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
def timed(path):
    t = time.perf_counter(); c.request("GET", path); r = c.getresponse(); body = r.read()
    return (time.perf_counter() - t) * 1000, r.status, body
def pct(xs, p): xs = sorted(xs); return xs[min(len(xs) - 1, int(p * len(xs)))]
floor = [timed("/healthz")[0] for _ in range(n)]
lat, partial, entries = [], 0, 0
for i in range(n):
    q = "&".join(f"uid=u{(i * 10 + k) % users}" for k in range(10))
    ms, status, body = timed("/v1/presence?" + q)
    assert status == 200, body
    lat.append(ms); partial += b'"partial"' in body; entries += body.count(b'"conn"')
print(f"  presence (10 uids, {entries / n:.1f} connections listed): p50 {pct(lat, .5):.2f} ms, "
      f"p99 {pct(lat, .99):.2f} ms, max {max(lat):.2f} ms; partial answers {partial}/{n}")
print(f"  /healthz floor: p50 {pct(floor, .5):.2f} ms, p99 {pct(floor, .99):.2f} ms")
EOF
}
echo "== every node up"
measure
echo "== n3 frozen (SIGSTOP)"
kill -STOP "$n3_pid"; stopped=$n3_pid
measure
kill -CONT "$n3_pid"; stopped=""
