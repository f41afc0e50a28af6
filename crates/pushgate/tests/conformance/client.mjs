// Conformance of /echo and /ws against the Node `ws` library (npm).
// Usage: node client.mjs HOST:PORT   (gateway with --max-message-size 100000)
// With PUSHGATE_WSS_CA (a PEM CA file) every case runs over wss:// trusting that CA.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import WebSocket from "ws";

const addr = process.argv[2];
const ca = process.env.PUSHGATE_WSS_CA ? readFileSync(process.env.PUSHGATE_WSS_CA) : null;
const scheme = ca ? "wss" : "ws";
const failures = [];

function open(path, opts = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${scheme}://${addr}${path}`, ca ? { ...opts, ca } : opts);
    const queue = [];
    const waiters = [];
    ws.on("message", (data, isBinary) => {
      const m = isBinary ? Buffer.from(data) : data.toString("utf8");
      if (waiters.length) waiters.shift()(m);
      else queue.push(m);
    });
    ws.next = () =>
      new Promise((res, rej) => {
        if (queue.length) return res(queue.shift());
        const t = setTimeout(() => rej(new Error("timeout")), 5000);
        waiters.push((m) => {
          clearTimeout(t);
          res(m);
        });
      });
    ws.closed = new Promise((res) => ws.on("close", (code) => res(code)));
    ws.on("open", () => resolve(ws));
    ws.on("unexpected-response", (_req, res) => reject(new Error(`status ${res.statusCode}`)));
    ws.on("error", reject);
  });
}

async function run(name, fn) {
  try {
    await fn();
    console.log(`PASS ${name}`);
  } catch (e) {
    failures.push(name);
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

await run("welcome on /ws", async () => {
  const ws = await open("/ws?uid=node-user");
  const w = JSON.parse(await ws.next());
  assert(w.type === "welcome" && w.uid === "node-user", JSON.stringify(w));
  ws.close();
});

await run("permessage-deflate negotiated", async () => {
  const ws = await open("/echo", { perMessageDeflate: true });
  assert(ws.extensions.includes("permessage-deflate"), ws.extensions);
  ws.close();
});

await run("text echo across length classes, compressed", async () => {
  const ws = await open("/echo", { perMessageDeflate: { threshold: 0 } });
  // Mostly ASCII so that n UTF-16 units stay under the 100000-byte message limit.
  for (const n of [0, 1, 125, 126, 1000, 65535, 65536, 90000]) {
    const msg = "abcdefgh κ ".repeat(Math.ceil(n / 11) + 1).slice(0, n);
    ws.send(msg);
    assert((await ws.next()) === msg, `length ${n}`);
  }
  ws.close();
});

await run("binary echo across length classes, uncompressed", async () => {
  const ws = await open("/echo", { perMessageDeflate: false });
  for (const n of [0, 1, 125, 126, 65535, 65536]) {
    const data = randomBytes(n);
    ws.send(data);
    assert(Buffer.compare(await ws.next(), data) === 0, `length ${n}`);
  }
  ws.close();
});

await run("fragmented message", async () => {
  const ws = await open("/echo", { perMessageDeflate: false });
  ws.send("frag", { fin: false });
  ws.send("men", { fin: false });
  ws.send("ted", { fin: true });
  assert((await ws.next()) === "fragmented", "fragments");
  ws.close();
});

await run("ping with payload is answered", async () => {
  const ws = await open("/echo");
  const pong = new Promise((res) => ws.on("pong", (d) => res(d.toString())));
  ws.ping("hello");
  assert((await pong) === "hello", "pong payload");
  ws.close();
});

await run("message over the limit closes with 1009", async () => {
  const ws = await open("/echo", { perMessageDeflate: false });
  ws.send(randomBytes(150000));
  const code = await ws.closed;
  assert(code === 1009, `close code ${code}`);
});

await run("close handshake: 4000 from the client, 1000 back", async () => {
  const ws = await open("/echo");
  ws.close(4000, "bye");
  const code = await ws.closed;
  assert(code === 1000, `close code ${code}`);
});

await run("upgrade refused on an unknown path", async () => {
  try {
    await open("/nope");
    throw new Error("upgrade accepted");
  } catch (e) {
    assert(e.message === "status 404", e.message);
  }
});

console.log(`${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
