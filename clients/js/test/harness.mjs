// What the gateway tests share: the gateway the Rust test started (environment), tokens
// minted by `pushgate token`, pushes through the server API, and waiting.
import { execFileSync } from "node:child_process";

export const env = {
  client: need("PUSHGATE_CLIENT"), // host:port of the client listener
  control: need("PUSHGATE_CONTROL"), // host:port of the control listener
  bin: need("PUSHGATE_BIN"),
  secret: need("PUSHGATE_SECRET"),
  apiKey: need("PUSHGATE_API_KEY"),
};

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run through cargo test -p pushgate --test js_client`);
  return v;
}

export function target(hostPort = env.client) {
  const [host, port] = hostPort.split(":");
  return { host, port: Number(port) };
}

/** An HS256 token from `pushgate token`. */
export function mint(sub, ttl = 3600, bin = env.bin, secret = env.secret) {
  return execFileSync(bin, ["token", "--secret", secret, "--sub", sub, "--ttl", String(ttl)], {
    encoding: "utf8",
  }).trim();
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(cond, what, ms = 15000) {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** POSTs to the control API; a 503 or 504 is retried with the same body (same `id`). */
export async function api(path, body, control = env.control) {
  for (let i = 0; ; i++) {
    const res = await fetch(`http://${control}${path}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${env.apiKey}` },
      body: JSON.stringify(body),
    });
    const answer = await res.json();
    if (res.status === 200) return answer;
    if ((res.status === 503 || res.status === 504) && i < 50) {
      await sleep(20);
      continue;
    }
    throw new Error(`${path} answered ${res.status}: ${JSON.stringify(answer)}`);
  }
}

/**
 * Pushes `{n}` to `uid` every `everyMs`, n = 1, 2, ..., each with its own `id` so a
 * retried push is delivered once. `stop()` resolves to the last n pushed.
 */
export function pusher(uid, everyMs = 20, control = env.control) {
  let n = 0;
  let running = true;
  const done = (async () => {
    while (running) {
      n++;
      await api("/v1/push", { to: [uid], id: `${uid}-${n}`, data: { n } }, control);
      await sleep(everyMs);
    }
    return n;
  })();
  return {
    get count() {
      return n;
    },
    stop() {
      running = false;
      return done;
    },
  };
}

/** Checks that `got` is exactly 1..last, once each, in order. */
export function exactlyOnceInOrder(got, last) {
  const dup = got.find((n, i) => got.indexOf(n) !== i);
  if (dup !== undefined) return `duplicate ${dup}`;
  for (let i = 0; i < got.length; i++) if (got[i] !== i + 1) return `at ${i}: ${got[i]}, expected ${i + 1}`;
  if (got.length !== last) return `${got.length} of ${last} received`;
  return null;
}

/**
 * Starts a gateway of its own (the test's binary, JWT auth, fast backoff) on free ports;
 * resolves once it logged its addresses. `stop()` kills it (SIGKILL: a crash).
 */
export async function startGateway(extra = []) {
  const { spawn } = await import("node:child_process");
  const { createInterface } = await import("node:readline");
  const child = spawn(
    env.bin,
    [
      "--listen", "127.0.0.1:0",
      "--control", "127.0.0.1:0",
      "--log-json", "true",
      "--jwt-secret", env.secret,
      "--api-key", env.apiKey,
      "--reconnect-base-ms", "50",
      "--reconnect-cap-ms", "400",
      ...extra,
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  const exited = new Promise((r) => child.on("exit", r));
  const started = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("gateway did not start")), 20000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (!line.includes("pushgate started")) return;
      clearTimeout(timer);
      resolve(JSON.parse(line).fields);
    });
    child.on("exit", (code) => reject(new Error(`gateway exited with ${code}`)));
  });
  return {
    client: started.listen,
    control: started.control,
    async stop() {
      child.kill("SIGKILL");
      await exited;
    },
  };
}
