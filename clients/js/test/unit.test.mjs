// The client's pure parts: the backoff and the event-stream parser.
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, DEFAULT_ADVICE, SseParser } from "../dist/index.js";

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
