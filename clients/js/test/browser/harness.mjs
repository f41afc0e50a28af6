// Headless Chromium driving the client: a page server (the page, the built client
// modules, tokens from `pushgate token`) that collects what the page reports, and one
// scenario runner shared by the browser tests.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";

import { PushgateClient } from "../../dist/index.js";
import { startProxy } from "../proxy.mjs";
import { env, exactlyOnceInOrder, mint, pusher, sleep, target, waitFor } from "../harness.mjs";

const here = new URL(".", import.meta.url);
const dist = new URL("../../dist/", import.meta.url);

/** Serves the page, the client modules and tokens; collects what the page reports. */
export async function pageServer() {
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
      res.writeHead(200, { "Content-Type": "text/html" }).end(readFileSync(new URL("page.html", here)));
      return;
    }
    if (url.pathname.startsWith("/client/")) {
      const file = url.pathname.slice("/client/".length);
      if (!/^[a-z]+\.js$/.test(file)) return res.writeHead(404).end();
      res.writeHead(200, { "Content-Type": "text/javascript" }).end(readFileSync(new URL(file, dist)));
      return;
    }
    if (url.pathname === "/token") {
      res.writeHead(200, { "Content-Type": "text/plain" }).end(mint(url.searchParams.get("sub"), Number(url.searchParams.get("ttl") ?? 3600)));
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
    // Its own process group, so that its renderers and helpers are stopped with it.
    { stdio: "ignore", detached: true },
  );
  child.on("error", (e) => {
    throw new Error(`cannot run chromium (run scripts/install-test-deps.sh): ${e.message}`);
  });
  return async () => {
    const exited = new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.on("exit", r)));
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
    await exited;
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  };
}

/**
 * Runs the client in Chromium through a proxy (`proxyOptions`) to `gateway` (a node's
 * client host:port) while a steady stream is pushed through `control`, with `disrupt`
 * running meanwhile; checks every message arrived exactly once, in order, and that the
 * page's sends reached a peer. `ttl`: the seconds each token the page gets is valid.
 */
export async function inBrowser(
  t,
  name,
  proxyOptions,
  disrupt,
  { gateway = env.client, control = env.control, ttl = 3600 } = {},
) {
  const uid = `chromium-${name}-${process.pid}`;
  const peer = `chromium-peer-${name}-${process.pid}`;
  const proxy = await startProxy(target(gateway), proxyOptions);
  const page = await pageServer();
  const peerClient = new PushgateClient({ url: `http://${env.client}`, getToken: () => mint(peer), WebSocket });
  const peerGot = [];
  peerClient.on("message", (m) => peerGot.push(m));
  peerClient.connect();
  const stop = chromium(
    `http://127.0.0.1:${page.port}/page?gw=${encodeURIComponent(proxy.url)}&uid=${uid}&peer=${peer}&ttl=${ttl}`,
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
  const p = pusher(uid, 20, control);
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

