// The client in headless Chromium against a real gateway (started by
// crates/pushgate/tests/js_client.rs), through the same misbehaving proxy as the Node
// tests: forced disconnects, fallback to SSE and long-poll, a token expiring mid-session.
// The page reports what it receives; every message must arrive exactly once, in order.
import assert from "node:assert/strict";
import { test } from "node:test";

import { inBrowser } from "./browser/harness.mjs";
import { api, sleep, waitFor } from "./harness.mjs";

test("Chromium: 20 forced disconnects (kicks and TCP resets) during a steady stream", async (t) => {
  const page = await inBrowser(t, "kick", {}, async (page, proxy, uid) => {
    for (let i = 0; i < 20; i++) {
      await sleep(80 + Math.random() * 120);
      const opens = page.opens;
      if (i % 2 === 0) await api("/v1/disconnect", { uid, code: 4001, reason: "test kick" });
      else proxy.cut();
      await waitFor(() => page.opens > opens && page.state === "open", `reconnect ${i + 1}`);
    }
  });
  assert.equal(page.transport, "ws");
  assert.ok(page.opens >= 21, `opened ${page.opens} times`);
});

for (const [blockSse, expected] of [
  [false, "sse"],
  [true, "poll"],
]) {
  test(`Chromium: a proxy refusing WebSocket${blockSse ? " and SSE" : ""} falls back to ${expected}`, async (t) => {
    const page = await inBrowser(t, expected, { blockWebSocket: true, blockSse }, async (page, proxy) => {
      await sleep(500);
      // Between two polls there is no connection to cut: then nothing is to reopen.
      const opens = page.opens;
      const resets = proxy.stats.resets;
      proxy.cut();
      if (proxy.stats.resets > resets) {
        await waitFor(() => page.opens > opens && page.state === "open", "reopen after a cut");
      }
      await sleep(500);
    });
    assert.equal(page.transport, expected);
  });
}

test("Chromium: a token expiring mid-session is refreshed through getToken() without loss", async (t) => {
  await inBrowser(
    t,
    "token",
    {},
    async (page) => {
      const expired = () => page.events.filter((e) => e.kind === "disconnect" && e.code === 1008).length;
      await waitFor(() => expired() >= 2, "two token expiries", 12000);
    },
    { ttl: 2 },
  );
});
