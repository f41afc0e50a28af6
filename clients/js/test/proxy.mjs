// A TCP proxy in front of the gateway's client listener that misbehaves on demand, as the
// networks clients live behind do: it cuts every connection with a TCP reset, refuses
// WebSocket upgrades, or refuses SSE streams (as some corporate proxies do).
import net from "node:net";

/**
 * Starts a proxy to `target` ({host, port}). Options: `blockWebSocket`, `blockSse`.
 * Every plain HTTP request is forwarded with `Connection: close`, so that one TCP
 * connection carries one request and each is seen here.
 */
export async function startProxy(target, { blockWebSocket = false, blockSse = false } = {}) {
  const pairs = new Set();
  const stats = { refusedUpgrades: 0, refusedSse: 0, resets: 0, forwarded: 0 };
  const server = net.createServer((client) => {
    let head = Buffer.alloc(0);
    client.on("error", () => {});
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) {
        if (head.length > 65536) client.destroy();
        return;
      }
      client.off("data", onData);
      client.pause();
      const text = head.subarray(0, end).toString("latin1");
      const [requestLine, ...headers] = text.split("\r\n");
      const path = requestLine.split(" ")[1] ?? "";
      const upgrade = headers.some((h) => /^upgrade:\s*websocket/i.test(h));
      if ((upgrade && blockWebSocket) || (blockSse && path.startsWith("/sse"))) {
        if (upgrade) stats.refusedUpgrades++;
        else stats.refusedSse++;
        client.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nConnection: close\r\n\r\nForbidden");
        return;
      }
      let out = head;
      if (!upgrade) {
        const kept = headers.filter((h) => !/^connection:/i.test(h));
        out = Buffer.concat([
          Buffer.from([requestLine, ...kept, "Connection: close"].join("\r\n"), "latin1"),
          head.subarray(end),
        ]);
      }
      stats.forwarded++;
      const upstream = net.connect(proxy.target.port, proxy.target.host);
      const pair = { client, upstream };
      pairs.add(pair);
      upstream.on("error", () => client.destroy());
      client.on("error", () => upstream.destroy());
      const done = () => {
        pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      upstream.on("close", done);
      client.on("close", done);
      upstream.write(out);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    };
    client.on("data", onData);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const proxy = {
    /** Where new connections go; change it to move clients (with `cut()`), as a load balancer would. */
    target,
    port: server.address().port,
    url: `http://127.0.0.1:${server.address().port}`,
    stats,
    /** Resets every connection through the proxy, both sides. */
    cut() {
      for (const { client, upstream } of [...pairs]) {
        stats.resets++;
        client.resetAndDestroy();
        upstream.resetAndDestroy();
      }
      pairs.clear();
    },
    get connections() {
      return pairs.size;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
  return proxy;
}
