"""wss:// probes for crates/pushgate/tests/wss.rs, with Python's own TLS (OpenSSL).

Usage:
  python3 wss.py subscribe HOST:PORT CA UID N   prints "ready <CN>" after the welcome, then
                                                "got <k>" once N pushes arrived (or 20 s)
  python3 wss.py probe HOST:PORT CA             prints "cn <CN>", "v12 ok", "v13 ok" and
                                                "resumed <True|False>"
  python3 wss.py stall HOST:PORT CA UID SECS    a /ws client with a small receive buffer
                                                that reads nothing for SECS, then prints
                                                "closed <code>" (or "open <messages>")
  python3 wss.py protoerr HOST:PORT CA          sends a frame with a reserved opcode over
                                                /echo; prints "close <code>" and how TLS
                                                ended: "tls close_notify" or "tls eof"
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


def open_ws(uri, ca):
    # A handshake that times out is tried again: websockets' sync client sometimes never
    # sends its request over TLS (see client.py's connect).
    for attempt in range(3):
        try:
            return connect(uri, ssl=context(ca), open_timeout=4)
        except TimeoutError:
            if attempt == 2:
                raise


def subscribe(addr, ca, uid, n):
    with open_ws(f"wss://{addr}/ws?uid={uid}", ca) as ws:
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


def upgrade(tls_sock, host, path="/echo"):
    """A complete upgrade on `path` (on /echo, a TLS 1.3 server's tickets have arrived
    before we stop). The head is read a byte at a time: frames behind it stay unread."""
    tls_sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = tls_sock.recv(1)
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


def raw_upgrade(addr, ca, path, rcvbuf=None):
    host, port = addr.rsplit(":", 1)
    raw = socket.socket()
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect((host, int(port)))
    s = context(ca).wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False)
    upgrade(s, host, path)
    return s


def frames(sock):
    """Yields (opcode, payload) of server frames until the TLS stream ends."""
    buf = b""
    while True:
        while True:
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                at = 2
                if n == 126 and len(buf) >= 4:
                    n, at = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127 and len(buf) >= 10:
                    n, at = int.from_bytes(buf[2:10], "big"), 10
                elif n >= 126:
                    n = None
                if n is not None and len(buf) >= at + n:
                    yield buf[0] & 0x0F, buf[at:at + n]
                    buf = buf[at + n:]
                    continue
            break
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk


def stall(addr, ca, uid, secs):
    s = raw_upgrade(addr, ca, f"/ws?uid={uid}", rcvbuf=4096)
    print("ready", flush=True)
    time.sleep(secs)
    got = 0
    try:
        for opcode, payload in frames(s):
            if opcode == 8:
                print(f"closed {int.from_bytes(payload[:2], 'big')}", flush=True)
                return
            got += 1
    except (ssl.SSLError, OSError) as e:
        print(f"error {type(e).__name__} after {got}", flush=True)
        return
    print(f"open {got}", flush=True)


def protoerr(addr, ca):
    s = raw_upgrade(addr, ca, "/echo")
    # FIN, reserved opcode 0x3, masked, empty payload.
    s.sendall(bytes([0x83, 0x80, 1, 2, 3, 4]))
    code = None
    try:
        for opcode, payload in frames(s):
            if opcode == 8:
                code = int.from_bytes(payload[:2], "big")
        print(f"close {code}", flush=True)
        print("tls close_notify", flush=True)
    except ssl.SSLEOFError:
        print(f"close {code}", flush=True)
        print("tls eof", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "subscribe":
        subscribe(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif sys.argv[1] == "probe":
        probe(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "stall":
        stall(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif sys.argv[1] == "protoerr":
        protoerr(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
