"""Pushes N messages of ~100 B through a node's /v1/push, 100 per user, from 8 keep-alive
connections; a refused push (503) is retried with its id, so each is stored once.
    python3 bench/push_many.py CONTROL_PORT N
"""
import http.client
import json
import sys
import threading

port, n = int(sys.argv[1]), int(sys.argv[2])
users = max(n // 100, 1)
failed = []


def work(first, step):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(first, n, step):
        body = json.dumps(
            {"to": ["m%d" % (i % users)], "id": "p%d" % i, "data": {"i": i, "pad": "x" * 32}}
        )
        for _ in range(50):
            c.request("POST", "/v1/push", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status == 200:
                break
        else:
            failed.append(i)
            return


threads = [threading.Thread(target=work, args=(k, 8)) for k in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failed:
    sys.exit("pushes failed: %s" % failed[:5])
