#!/usr/bin/env python3
"""A reactor never waits on the network (issue 24), measured on a release node.

One `nats-server -js` and one node with history on (2 reactors). Two phases, each with
a baseline measured in the same run:

1. `since` ahead of the node: a connection of user `u` is open (so the node knows its
   last seq); then COUNT connections of `u` with `?since=1000000` are opened at once
   (each waits for its welcome). `/healthz` is asked every 5 ms meanwhile; its
   p99 is compared with the same probe over the same time without the connects.
2. Frozen JetStream (nats-server SIGSTOPped): HOLD connections are open, spread over the
   reactors; during the freeze PUSHES pushes are sent (each on its own connection) while
   `/healthz` and pings on 20 of the held connections are measured every 10 ms; then
   NEW new connections are opened at once, `/healthz` probed meanwhile from a thread;
   then the server is thawed. Reported: `/healthz` and ping round trip p99 before and
   during the freeze, what the pushes answered and when, and how long the new
   connections took to get their welcome.

    bench/never_waits.py [COUNT=100] [HOLD=5000] [PUSHES=20] [NEW=1000]

Needs target/release/pushgate (cargo build --release -p pushgate), nats-server on PATH
and python3-websockets. Loopback only; every process is stopped at the end.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import websockets

COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 100
HOLD = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
PUSHES = int(sys.argv[3]) if len(sys.argv) > 3 else 20
NEW = int(sys.argv[4]) if len(sys.argv) > 4 else 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else float("nan")


def healthz_ms(cport):
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{cport}/healthz", timeout=10) as r:
        r.read()
    return (time.perf_counter() - t) * 1000


def push(cport, body, timeout=10):
    req = urllib.request.Request(
        f"http://127.0.0.1:{cport}/v1/push", data=json.dumps(body).encode(), method="POST"
    )
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, (time.perf_counter() - t) * 1000


async def probe_healthz(cport, stop, out, every=0.005):
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        out.append(await loop.run_in_executor(None, healthz_ms, cport))
        await asyncio.sleep(every)


async def welcome(port, path, source=None):
    kw = {"max_size": None, "open_timeout": 60, "ping_interval": None}
    if source:
        kw["local_addr"] = (source, 0)
    ws = await websockets.connect(f"ws://127.0.0.1:{port}{path}", **kw)
    while True:
        m = json.loads(await ws.recv())
        if m.get("type") == "welcome":
            return ws, m


async def ping_ms(ws):
    t = time.perf_counter()
    pong = await ws.ping()
    await asyncio.wait_for(pong, 10)
    return (time.perf_counter() - t) * 1000


async def main():
    exe = "target/release/pushgate"
    tmp = tempfile.mkdtemp()
    procs = []
    try:
        nport, port, cport = free_port(), free_port(), free_port()
        nats = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(nport), "-js", "-sd", tmp + "/js"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(nats)
        time.sleep(0.5)
        node = subprocess.Popen(
            [exe, "--dev", "--listen", f"127.0.0.1:{port}", "--control", f"127.0.0.1:{cport}",
             "--nats", f"nats://127.0.0.1:{nport}", "--node-id", "n1", "--reactors", "2",
             "--heartbeat", "300", "--idle-timeout", "600", "--bus-ping-timeout", "30",
             "--max-connections-per-ip", "100000", "--max-pending-handshakes", "4096",
             "--max-conns-per-user", "1000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(node)
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{cport}/metrics") as r:
                    if b"pushgate_history_cluster_ready 1" in r.read():
                        break
            except OSError:
                pass
            time.sleep(0.05)
        assert push(cport, {"to": ["u"], "data": 1})[0] == 200

        # 1. since ahead of the node.
        u, _ = await welcome(port, "/ws?uid=u")
        stop, base = asyncio.Event(), []
        task = asyncio.create_task(probe_healthz(cport, stop, base))
        await asyncio.sleep(2)
        stop.set()
        await task
        stop, during = asyncio.Event(), []
        task = asyncio.create_task(probe_healthz(cport, stop, during))
        t = time.perf_counter()

        async def ahead():
            ws, w = await welcome(port, "/ws?uid=u&since=1000000")
            await ws.close()

        await asyncio.gather(*(ahead() for _ in range(COUNT)))
        took = time.perf_counter() - t
        stop.set()
        await task
        print(f"since ahead: {COUNT} connects at once, all welcomed within {took:.2f} s "
              f"(the node gives itself up to 1 s to catch up with such a since, on its "
              f"openers); /healthz p99 {p99(during):.2f} ms during them, "
              f"{p99(base):.2f} ms before ({len(during)} and {len(base)} probes)")

        # 2. frozen JetStream.
        held = []
        for i in range(HOLD):
            src = f"127.0.0.{2 + i % 200}"
            ws, _ = await welcome(port, f"/ws?uid=h{i}", src)
            held.append(ws)
        sample = held[:: max(1, HOLD // 20)][:20]

        async def measure(seconds):
            hz, pings = [], []
            end = time.perf_counter() + seconds
            loop = asyncio.get_running_loop()
            while time.perf_counter() < end:
                hz.append(await loop.run_in_executor(None, healthz_ms, cport))
                pings.extend(await asyncio.gather(*(ping_ms(w) for w in sample)))
                await asyncio.sleep(0.01)
            return hz, pings

        hz0, pings0 = await measure(2)
        os.kill(nats.pid, signal.SIGSTOP)
        t0 = time.perf_counter()
        answered = []

        def push_one(i):
            answered.append(push(cport, {"to": [f"h{i}"], "data": i}))

        # Threads of their own: the executor the probes use must not be held by them.
        pushers = [threading.Thread(target=push_one, args=(i,)) for i in range(PUSHES)]
        for p in pushers:
            p.start()
        # While the pushes wait for the frozen store.
        hz1, pings1 = await measure(1.5)
        for p in pushers:
            p.join()
        print(f"frozen JetStream, {HOLD} connections held, {PUSHES} pushes pending: "
              f"/healthz p99 {p99(hz1):.2f} ms (before the freeze: {p99(hz0):.2f} ms), "
              f"ping round trip p99 {p99(pings1):.2f} ms (before: {p99(pings0):.2f} ms); "
              f"{len(hz1)} and {len(pings1)} probes")
        print(f"  the pushes answered {sorted({s for s, _ in answered})} after "
              f"{min(ms for _, ms in answered):.0f}-{max(ms for _, ms in answered):.0f} ms")

        # New connections during the freeze; /healthz probed from a thread of its own
        # (this process's event loop is busy with the handshakes).
        hz2, done = [], threading.Event()

        def probe():
            while not done.is_set():
                hz2.append(healthz_ms(cport))
                time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        t1 = time.perf_counter()

        async def new_conn(i):
            t = time.perf_counter()
            ws, w = await welcome(port, f"/ws?uid=new{i}", f"127.0.1.{2 + i % 200}")
            await ws.close()
            return time.perf_counter() - t, w.get("recovered")

        opened = await asyncio.gather(*(new_conn(i) for i in range(NEW)))
        took = time.perf_counter() - t1
        done.set()
        prober.join()
        os.kill(nats.pid, signal.SIGCONT)
        times = sorted(s for s, _ in opened)
        print(f"  {NEW} new connections opened at once during the freeze all welcomed "
              f"(recovered: {sorted({str(r) for _, r in opened})}) within {took:.2f} s; "
              f"welcome after p50 {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s; "
              f"/healthz p99 {p99(hz2):.2f} ms meanwhile ({len(hz2)} probes); "
              f"{time.perf_counter() - t0:.1f} s frozen in all")
        for ws in held:
            await ws.close()
    finally:
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGCONT)
            except OSError:
                pass
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
