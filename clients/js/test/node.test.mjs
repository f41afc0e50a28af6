// The client in Node against a real gateway (started by crates/pushgate/tests/js_client.rs):
// forced disconnects, transport fallback, token refresh. Every message exactly once, in order.
import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";

import { PushgateClient } from "../dist/index.js";
import { startProxy } from "./proxy.mjs";
import { env, exactlyOnceInOrder, mint, pusher, sleep, startGateway, target, waitFor, api } from "./harness.mjs";

const run = `${process.pid}`;

function client(uid, url, extra = {}) {
  const c = new PushgateClient({
    url,
    getToken: () => mint(uid),
    device: "d1",
    WebSocket,
    ...extra,
  });
  const got = [];
  const from = [];
  c.on("message", (m) => {
    if (m.from === "server") got.push(m.data.n);
    else from.push(m);
  });
  return { c, got, from };
}

/** Pushes a steady stream to `uid` while `disrupt` runs, then checks what `got` holds. */
async function streamThrough(uid, got, disrupt) {
  const p = pusher(uid, 20);
  await disrupt(p);
  const last = await p.stop();
  await waitFor(() => got.length >= last, `${last} messages (have ${got.length})`);
  await sleep(200);
  assert.equal(exactlyOnceInOrder(got, last), null, `received ${JSON.stringify(got)}`);
  return last;
}

test("20 forced disconnects (kicks and TCP resets) during a steady stream", async () => {
  const uid = `kick-${run}`;
  const proxy = await startProxy(target());
  const { c, got } = client(uid, proxy.url);
  c.connect();
  await waitFor(() => c.state === "open", "open");
  let kicks = 0;
  const last = await streamThrough(uid, got, async () => {
    for (let i = 0; i < 20; i++) {
      await sleep(80 + Math.random() * 120);
      const opens = c.opens;
      if (i % 2 === 0) {
        const r = await api("/v1/disconnect", { uid, code: 4001, reason: "test kick" });
        kicks += r.closed;
      } else {
        proxy.cut();
      }
      await waitFor(() => c.opens > opens && c.state === "open", `reconnect ${i + 1}`);
    }
  });
  c.close();
  await proxy.close();
  assert.equal(c.transport, "ws");
  assert.ok(c.opens >= 21, `opened ${c.opens} times`);
  assert.equal(kicks, 10, "every kick closed a connection");
  assert.ok(proxy.stats.resets >= 10, `resets ${proxy.stats.resets}`);
  assert.ok(last > 50, `only ${last} pushes`);
});

test("messages pushed while a user was offline reach its first connection", async () => {
  const uid = `offline-${run}`;
  for (let n = 1; n <= 3; n++) await api("/v1/push", { to: [uid], id: `${uid}-${n}`, data: { n } });
  const { c, got } = client(uid, `http://${env.client}`);
  c.connect();
  await waitFor(() => got.length >= 3, "the retained messages");
  await sleep(100);
  c.close();
  assert.deepEqual(got, [1, 2, 3]);
});

async function fallback(blockSse, expected) {
  const uid = `fb-${expected}-${run}`;
  const peer = `fbpeer-${expected}-${run}`;
  const proxy = await startProxy(target(), { blockWebSocket: true, blockSse });
  const a = client(uid, proxy.url);
  const b = client(peer, `http://${env.client}`);
  a.c.connect();
  b.c.connect();
  await waitFor(() => a.c.state === "open" && b.c.state === "open", "both open");
  assert.equal(a.c.transport, expected);
  assert.equal(b.c.transport, "ws");
  await streamThrough(uid, a.got, async () => {
    for (let i = 0; i < 5; i++) {
      await a.c.send([peer], { hello: i });
      await sleep(100);
    }
    // A cut on the fallback transport too: it resumes from its last seq. (Between two
    // polls there is no connection to cut: then nothing is to reopen.)
    const opens = a.c.opens;
    const resets = proxy.stats.resets;
    proxy.cut();
    if (proxy.stats.resets > resets) {
      await waitFor(() => a.c.opens > opens && a.c.state === "open", "reopen after cut");
    }
    await a.c.send([peer], { hello: 5 });
    await sleep(300);
  });
  await waitFor(() => b.from.length >= 6, "the peer got every send");
  assert.deepEqual(
    b.from.map((m) => [m.from, m.data.hello]),
    [0, 1, 2, 3, 4, 5].map((i) => [uid, i]),
  );
  assert.equal(a.c.transport, expected);
  assert.ok(proxy.stats.refusedUpgrades > 0, "the proxy refused the upgrade");
  if (blockSse) assert.ok(proxy.stats.refusedSse > 0, "the proxy refused the stream");
  a.c.close();
  b.c.close();
  await proxy.close();
}

test("a proxy refusing WebSocket upgrades: SSE, every message received, sends work", () =>
  fallback(false, "sse"));

test("a proxy refusing WebSocket and SSE: long-poll, every message received, sends work", () =>
  fallback(true, "poll"));

test("a token expiring mid-session is refreshed through getToken() without loss", async () => {
  const uid = `tok-${run}`;
  let minted = 0;
  const closes = [];
  const c = new PushgateClient({
    url: `http://${env.client}`,
    getToken: () => {
      minted++;
      return mint(uid, 2);
    },
    device: "d1",
    WebSocket,
  });
  const got = [];
  c.on("message", (m) => got.push(m.data.n));
  c.on("disconnect", (d) => closes.push(d.code));
  c.connect();
  await waitFor(() => c.state === "open", "open");
  await streamThrough(uid, got, async () => {
    await waitFor(() => closes.filter((x) => x === 1008).length >= 2, "two token expiries", 12000);
  });
  c.close();
  assert.ok(minted >= 3, `getToken called ${minted} times`);
});

test("a restarted gateway (history lost): the client starts over from its seqs, nothing dropped", async (t) => {
  const uid = `restart-${run}`;
  let gw = await startGateway();
  const proxy = await startProxy(target(gw.client));
  const { c, got } = client(uid, proxy.url);
  const gaps = [];
  c.on("gap", (g) => gaps.push(g));
  t.after(async () => {
    c.close();
    await proxy.close();
    await gw.stop();
  });
  c.connect();
  await waitFor(() => c.state === "open", "open");
  for (let n = 1; n <= 10; n++) await api("/v1/push", { to: [uid], data: { n } }, gw.control);
  await waitFor(() => got.length >= 10, "10 messages before the restart");
  await gw.stop();
  await waitFor(() => c.state !== "open", "the connection lost");
  gw = await startGateway();
  proxy.target = target(gw.client);
  const opens = c.opens;
  await waitFor(() => c.opens > opens && c.state === "open", "reconnected to the new gateway");
  // The new gateway's seqs start again at 1: without the reset they would look like duplicates.
  for (let n = 11; n <= 20; n++) await api("/v1/push", { to: [uid], data: { n } }, gw.control);
  await waitFor(() => got.length >= 20, `20 messages (have ${got.length})`);
  await sleep(100);
  assert.equal(exactlyOnceInOrder(got, 20), null, `received ${JSON.stringify(got)}`);
  assert.ok(gaps.some((g) => g.reset), `gaps ${JSON.stringify(gaps)}`);
});
