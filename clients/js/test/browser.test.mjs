// The client in headless Chromium against a real gateway (started by
// crates/pushgate/tests/js_client.rs), through the same misbehaving proxy as the Node
// tests: forced disconnects, and fallback to SSE and long-poll. The page reports what it
// receives; every message must arrive exactly once, in order.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import WebSocket from "ws";

import { PushgateClient } from "../dist/index.js";
import { startProxy } from "./proxy.mjs";
import { api, env, exactlyOnceInOrder, mint, pusher, sleep, target, waitFor } from "./harness.mjs";

const here = new URL(".", import.meta.url);
const dist = new URL("../dist/", import.meta.url);

/** Serves the page, the client modules and tokens; collects what the page reports. */
async function pageServer() {
  const page = { events: [], got: [], opens: 0, state: null, transport: null, sent: false };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (req.method === "POST" && url.pathname === "/event") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const e = JSON.parse(body);
        page.events.push(e);
        if (e.kind === "msg" && e.from === "server") page.got.push(e.data.n);
        if (e.kind === "state") Object.assign(page, { state: e.state, opens: e.opens, transport: e.transport });
        if (e.kind === "sent") page.sent = true;
        res.writeHead(204).end();
      });
      return;
    }
    if (url.pathname === "/page") {
      res.writeHead(200, { "Content-Type": "text/html" }).end(readFileSync(new URL("browser/page.html", here)));
      return;
    }
    if (url.pathname.startsWith("/client/")) {
      const file = url.pathname.slice("/client/".length);
      if (!/^[a-z]+\.js$/.test(file)) return res.writeHead(404).end();
      res.writeHead(200, { "Content-Type": "text/javascript" }).end(readFileSync(new URL(file, dist)));
      return;
    }
    if (url.pathname === "/token") {
      res.writeHead(200, { "Content-Type": "text/plain" }).end(mint(url.searchParams.get("sub")));
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  page.port = server.address().port;
  page.close = () => new Promise((r) => server.close(r));
  return page;
}

function chromium(url) {
  const profile = mkdtempSync(join(tmpdir(), "pushgate-client-chromium-"));
  const child = spawn(
    "chromium",
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
      `--user-data-dir=${profile}`,
      url,
    ],
    { stdio: "ignore" },
  );
  child.on("error", (e) => {
    throw new Error(`cannot run chromium (run scripts/install-test-deps.sh): ${e.message}`);
  });
  return async () => {
    child.kill("SIGKILL");
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.on("exit", r)));
    rmSync(profile, { recursive: true, force: true });
  };
}

async function inBrowser(t, name, proxyOptions, disrupt) {
  const uid = `chromium-${name}-${process.pid}`;
  const peer = `chromium-peer-${name}-${process.pid}`;
  const proxy = await startProxy(target(), proxyOptions);
  const page = await pageServer();
  const peerClient = new PushgateClient({ url: `http://${env.client}`, getToken: () => mint(peer), WebSocket });
  const peerGot = [];
  peerClient.on("message", (m) => peerGot.push(m));
  peerClient.connect();
  const stop = chromium(
    `http://127.0.0.1:${page.port}/page?gw=${encodeURIComponent(proxy.url)}&uid=${uid}&peer=${peer}`,
  );
  t.after(async () => {
    await stop();
    peerClient.close();
    await proxy.close();
    await page.close();
  });
  await waitFor(
    () => page.state === "open" && peerClient.state === "open",
    "the page's client open",
    30000,
  ).catch((e) => {
    throw new Error(`${e.message}; page reported ${JSON.stringify(page.events.slice(0, 20))}`);
  });
  const p = pusher(uid, 20);
  await disrupt(page, proxy, uid);
  const last = await p.stop();
  await waitFor(() => page.got.length >= last, `${last} messages in the page (have ${page.got.length})`);
  await sleep(200);
  assert.equal(exactlyOnceInOrder(page.got, last), null, `received ${JSON.stringify(page.got)}`);
  await waitFor(() => page.sent && peerGot.length >= 3, "the page's sends");
  assert.deepEqual(peerGot.map((m) => [m.from, m.data.hello]), [0, 1, 2].map((i) => [uid, i]));
  const errors = page.events.filter((e) => e.kind === "page-error");
  assert.deepEqual(errors, []);
  return page;
}

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
