// The client's pure parts: the backoff and the event-stream parser.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";

import { backoffDelay, DEFAULT_ADVICE, PushgateClient, SseParser } from "../dist/index.js";

test("backoff grows by the factor up to the cap, jittered within ±jitter", () => {
  const advice = { base_ms: 100, factor: 2, jitter: 0.5, cap_ms: 1000 };
  assert.equal(backoffDelay(advice, 0, () => 0.5), 100);
  assert.equal(backoffDelay(advice, 3, () => 0.5), 800);
  assert.equal(backoffDelay(advice, 10, () => 0.5), 1000, "capped");
  assert.equal(backoffDelay(advice, 0, () => 0), 50, "1 - jitter");
  assert.equal(backoffDelay(advice, 0, () => 1), 150, "1 + jitter");
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(advice, 2)));
  assert.ok(spread.size > 10, "random");
  for (const d of spread) assert.ok(d >= 200 && d <= 600, `${d}`);
  assert.deepEqual(DEFAULT_ADVICE, { base_ms: 1000, factor: 2, jitter: 0.5, cap_ms: 60000 });
});

test("the SSE parser: ids, named events, multi-line data, comments, any split, CRLF", () => {
  const stream =
    'retry: 50\n\ndata: {"type":"welcome"}\n\nid: 7\ndata: {"a":\ndata: 1}\n\n:\n\n' +
    'event: close\r\ndata: {"type":"close","code":4001}\r\n\r\n';
  const expected = [
    { event: "message", data: '{"type":"welcome"}', id: null },
    { event: "message", data: '{"a":\n1}', id: "7" },
    null,
    { event: "close", data: '{"type":"close","code":4001}', id: null },
  ];
  for (const size of [1, 2, 3, 7, stream.length]) {
    const p = new SseParser();
    const out = [];
    for (let i = 0; i < stream.length; i += size) out.push(...p.feed(stream.slice(i, i + size)));
    assert.deepEqual(out, expected, `chunks of ${size}`);
  }
});

test("a message first delivered without a seq is not handed over again with one", async () => {
  // A cluster node whose bus was down delivers a push unstored (an id, no seq); the
  // backend's retry with the same id then arrives stored, with a seq.
  let sock = null;
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 1;
      this.sent = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sock = this;
    }
    send(data) {
      this.sent.push(data);
    }
    close() {
      this.readyState = 3;
    }
  }
  const client = new PushgateClient({
    url: "http://127.0.0.1:9",
    uid: "u",
    WebSocket: FakeWebSocket,
    transports: ["ws"],
  });
  const got = [];
  client.on("message", (m) => got.push(m.data));
  client.connect();
  for (let i = 0; i < 100 && !(sock && sock.onmessage); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(sock && sock.onmessage, "the client opened a WebSocket");
  const say = (m) => sock.onmessage({ data: JSON.stringify(m) });
  say({ type: "welcome", conn: "c", uid: "u", heartbeat: 25, reconnect: DEFAULT_ADVICE, seq: 1, recovered: true });
  say({ type: "msg", from: "server", id: "p2", data: 2 });
  say({ type: "msg", from: "server", id: "p2", seq: 2, data: 2 });
  say({ type: "msg", from: "server", id: "p3", seq: 3, data: 3 });
  say({ type: "msg", from: "server", id: "p4", seq: 4, data: 4 });
  for (let i = 0; i < 100 && got.length < 3; i++) await new Promise((r) => setTimeout(r, 5));
  await new Promise((r) => setTimeout(r, 20));
  client.close();
  assert.deepEqual(got, [2, 3, 4]);
  assert.equal(client.lastSeq, 4, "the stored copy still moves the resume point");
});

// A hostile or broken server must never throw out of the application nor make the client
// spin: each answer below once made it do one or the other.

/** A server answering every request with `answer(req, res)`, counting requests. */
async function hostile(answer) {
  const hits = { n: 0 };
  const server = createServer((req, res) => {
    hits.n++;
    answer(req, res);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, hits, server };
}

/** Runs a poll-only client against the server for `ms`; returns unhandled rejections. */
async function against(url, ms, options = {}) {
  const rejections = [];
  const onRejection = (e) => rejections.push(e);
  process.on("unhandledRejection", onRejection);
  const client = new PushgateClient({ url, uid: "u", transports: ["poll"], reconnect: { base_ms: 50, cap_ms: 50 }, ...options });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  client.connect();
  await new Promise((r) => setTimeout(r, ms));
  client.close();
  await new Promise((r) => setTimeout(r, 20));
  process.off("unhandledRejection", onRejection);
  return { rejections, errors, client };
}

test("poll answers of the wrong shape neither throw out of the client nor stop it", async () => {
  for (const body of ["null", "5", '{"messages":5,"seq":1}', '{"messages":[null,7,"x"],"seq":1}', '{"messages":[{"type":"joined"}]}']) {
    const { url, hits, server } = await hostile((req, res) => {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(body);
    });
    const { rejections } = await against(url, 300);
    server.close();
    assert.deepEqual(rejections.map(String), [], `answer ${body}`);
    assert.ok(hits.n >= 1, `answer ${body}: polled`);
  }
});

test("a welcome with an absurd heartbeat or backoff does not make the client spin", async () => {
  const welcomes = [
    { heartbeat: "soon" },
    { heartbeat: 1e12 },
    { reconnect: { base_ms: "x", factor: null, jitter: 5, cap_ms: -1 } },
    { reconnect: { base_ms: 0, cap_ms: 0 } },
  ];
  for (const extra of welcomes) {
    // SSE: a welcome, then the stream ends; a sane client waits its backoff before the next.
    const { url, hits, server } = await hostile((req, res) => {
      res.writeHead(200, { "Content-Type": "text/event-stream" });
      res.end(`data: ${JSON.stringify({ type: "welcome", conn: "c", uid: "u", heartbeat: 25, ...extra })}\n\n`);
    });
    const timers = [];
    const real = globalThis.setTimeout;
    globalThis.setTimeout = (fn, ms, ...a) => {
      timers.push(ms);
      return real(fn, ms, ...a);
    };
    let rejections;
    try {
      ({ rejections } = await against(url, 400, { transports: ["sse"], reconnect: undefined }));
    } finally {
      globalThis.setTimeout = real;
      server.close();
    }
    assert.deepEqual(rejections.map(String), [], JSON.stringify(extra));
    // At least 25 ms apart (a 50 ms base, jittered by a half at most).
    assert.ok(hits.n <= 20, `${JSON.stringify(extra)}: ${hits.n} connections in 400 ms`);
    const bad = timers.filter((ms) => !(Number.isFinite(ms) && ms >= 0 && ms <= 2 ** 31 - 1));
    assert.deepEqual(bad, [], `${JSON.stringify(extra)}: timer delays`);
  }
});
