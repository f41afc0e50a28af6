// The client's pure parts: the backoff and the event-stream parser.
import assert from "node:assert/strict";
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
