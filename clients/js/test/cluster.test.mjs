// The client in a 2-node cluster with history on JetStream (started by
// crates/pushgate/tests/js_client.rs): moved from node A to node B and back, as a load
// balancer would move it, it resumes on the other node with no gap and no duplicate — in
// Node and in headless Chromium.
import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";

import { PushgateClient } from "../dist/index.js";
import { inBrowser } from "./browser/harness.mjs";
import { startProxy } from "./proxy.mjs";
import { exactlyOnceInOrder, mint, pusher, sleep, target, waitFor } from "./harness.mjs";

const nodes = [target(process.env.PUSHGATE_CLIENT), target(process.env.PUSHGATE_CLIENT_B)];
const controls = [process.env.PUSHGATE_CONTROL, process.env.PUSHGATE_CONTROL_B];

test("a client moved between nodes resumes with no gap or duplicate", async (t) => {
  assert.ok(controls[1], "PUSHGATE_CONTROL_B is not set");
  const uid = `move-${process.pid}`;
  const proxy = await startProxy(nodes[0]);
  const c = new PushgateClient({ url: proxy.url, getToken: () => mint(uid), device: "d1", WebSocket });
  t.after(() => {
    c.close();
    return proxy.close();
  });
  const got = [];
  const welcomes = [];
  c.on("message", (m) => got.push(m.data.n));
  c.on("welcome", (w) => welcomes.push(w.conn));
  c.connect();
  await waitFor(() => c.state === "open", "open");
  // Pushes enter through node A throughout: to reach the client on B they cross the bus.
  const p = pusher(uid, 20, controls[0]);
  for (let move = 1; move <= 4; move++) {
    await sleep(300);
    const opens = c.opens;
    proxy.target = nodes[move % 2];
    proxy.cut();
    await waitFor(() => c.opens > opens && c.state === "open", `reconnect on the other node (${move})`);
  }
  await sleep(300);
  const last = await p.stop();
  await waitFor(() => got.length >= last, `${last} messages (have ${got.length})`);
  await sleep(300);
  assert.equal(exactlyOnceInOrder(got, last), null, `received ${JSON.stringify(got)}`);
  assert.ok(welcomes.length >= 5, `welcomes ${welcomes.length}`);
});

test("Chromium: a client moved between nodes resumes with no gap or duplicate", async (t) => {
  await inBrowser(
    t,
    "move",
    {},
    async (page, proxy) => {
      for (let move = 1; move <= 4; move++) {
        await sleep(300);
        const opens = page.opens;
        proxy.target = nodes[move % 2];
        proxy.cut();
        await waitFor(() => page.opens > opens && page.state === "open", `reconnect on the other node (${move})`);
      }
      await sleep(300);
    },
    { gateway: process.env.PUSHGATE_CLIENT, control: controls[0] },
  );
});
