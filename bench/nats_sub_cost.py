#!/usr/bin/env python3
"""What nats-server itself spends per subscription, whatever the client: starts a
nats-server (Debian package) on a free port, subscribes N subjects of a given shape over
one raw connection, and reads the server's RSS growth per subscription.

  python3 bench/nats_sub_cost.py [N] [SUBJECT_FORMAT ...]
  (defaults: 100000, 'pushgate.u.u{i}' (pushgate's user subjects) and 'u{i}')
"""
import socket
import subprocess
import sys
import time


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def measure(n, fmt):
    port = free_port()
    server = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        conn.recv(4096)  # INFO
        conn.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        reply = b""
        while b"PONG" not in reply:
            reply += conn.recv(4096)
        time.sleep(0.5)
        before = rss(server.pid)
        batch = []
        for i in range(n):
            batch.append(f"SUB {fmt.format(i=i)} {i + 1}\r\n".encode())
            if len(batch) == 1000:
                conn.sendall(b"".join(batch))
                batch = []
        conn.sendall(b"".join(batch) + b"PING\r\n")
        reply = b""
        while b"PONG" not in reply:
            reply += conn.recv(4096)
        time.sleep(1)
        after = rss(server.pid)
        print(f"{fmt!r}: {(after - before) / n:.0f} B of nats-server RSS per subscription ({n} subscriptions)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    formats = sys.argv[2:] or ["pushgate.u.u{i}", "u{i}"]
    print(subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip())
    for f in formats:
        measure(count, f)
