"""wss:// probes for crates/pushgate/tests/wss.rs, with Python's own TLS (OpenSSL).

Usage:
  python3 wss.py subscribe HOST:PORT CA UID N   prints "ready <CN>" after the welcome, then
                                                "got <k>" once N pushes arrived (or 20 s)
  python3 wss.py probe HOST:PORT CA             prints "cn <CN>", "v12 ok", "v13 ok" and
                                                "resumed <True|False>"
"""
import json
import socket
import ssl
import sys
import time

from websockets.sync.client import connect


def context(ca, version=None):
    ctx = ssl.create_default_context(cafile=ca)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def common_name(cert):
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "?"


def subscribe(addr, ca, uid, n):
    with connect(f"wss://{addr}/ws?uid={uid}", ssl=context(ca)) as ws:
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome["type"] == "welcome", welcome
        cn = common_name(ws.socket.getpeercert())
        print(f"ready {cn}", flush=True)
        got, deadline = 0, time.monotonic() + 20
        while got < n and time.monotonic() < deadline:
            try:
                msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                break
            if msg.get("type") == "msg":
                got += 1
        print(f"got {got}", flush=True)


def upgrade(tls_sock, host):
    # A complete /echo upgrade, so a TLS 1.3 server's tickets have arrived before we stop.
    tls_sock.sendall(
        (
            f"GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = tls_sock.recv(4096)
        if not chunk:
            break
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:80]


def probe(addr, ca):
    host, port = addr.rsplit(":", 1)
    for name, version in (("v12", ssl.TLSVersion.TLSv1_2), ("v13", ssl.TLSVersion.TLSv1_3)):
        ctx = context(ca, version)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                upgrade(s, host)
                if name == "v13":
                    print(f"cn {common_name(s.getpeercert())}", flush=True)
                print(f"{name} ok {s.version()} {s.selected_alpn_protocol()}", flush=True)
    ctx = context(ca, ssl.TLSVersion.TLSv1_3)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            upgrade(s, host)
            print(f"alpn {s.selected_alpn_protocol()}", flush=True)
            session = s.session
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host, session=session) as s:
            upgrade(s, host)
            print(f"resumed {s.session_reused}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "subscribe":
        subscribe(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif sys.argv[1] == "probe":
        probe(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
