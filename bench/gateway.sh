# Sourced by the bench scripts: builds release binaries and starts a pushgate on free
# loopback ports, stopped (SIGTERM, by PID) when the script exits. Sets $port, $cport, $pid.
cargo build --release -q -p pushgate -p pushgate-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
cport=$(free_port)
gateway_log=$(mktemp)
./target/release/pushgate --dev --listen "127.0.0.1:$port" --control "127.0.0.1:$cport" \
  --heartbeat 300 --idle-timeout 600 --max-pending-handshakes 4096 >"$gateway_log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$gateway_log"' EXIT
for _ in $(seq 100); do grep -q "pushgate started" "$gateway_log" && break; sleep 0.1; done
grep -q "pushgate started" "$gateway_log" || { cat "$gateway_log"; exit 1; }
