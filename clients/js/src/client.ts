import { backoffDelay, DEFAULT_ADVICE } from "./backoff.js";
import { SseParser } from "./sse.js";
import type {
  ClientError,
  ConnectionState,
  Message,
  ReconnectAdvice,
  SeqStorage,
  ServerMessage,
  TransportName,
  WebSocketConstructor,
  WebSocketLike,
  Welcome,
} from "./types.js";

/** How to reach the gateway and who to be. */
export interface ClientOptions {
  /** The client listener, e.g. `https://push.example.com` or `http://127.0.0.1:8080`. */
  url: string;
  /** A JWT. With `getToken` too, used first. */
  token?: string;
  /**
   * Called for a token before the first connection, when the gateway closed for an
   * expired token (1008) or refused one (401), and when the current one expires within
   * 10 s. Cache in the application; this may be called on every reconnect.
   */
  getToken?: () => string | Promise<string>;
  /** The user ID, for a gateway in development mode (`--dev`) only. */
  uid?: string;
  /** This device or tab (`?device=`): where acknowledgements are kept. */
  device?: string;
  /** Keeps the resume point across restarts (`localStorage` fits). */
  storage?: SeqStorage;
  /** The storage key [default: `pushgate:<device or "default">`]. */
  storageKey?: string;
  /** A WebSocket implementation [default: `globalThis.WebSocket`; Node 20 has none: pass `ws`]. */
  WebSocket?: WebSocketConstructor;
  /** A fetch implementation [default: `globalThis.fetch`]. */
  fetch?: typeof fetch;
  /** Transports to try, in order [default: `["ws", "sse", "poll"]`]. */
  transports?: TransportName[];
  /** Acknowledge each user message once its handler returned [default: true]. */
  autoAck?: boolean;
  /** Collect acknowledgements this long before sending the latest [default: 100 ms]. */
  ackDelayMs?: number;
  /** Overrides the backoff the gateway advertises in `welcome`. */
  reconnect?: Partial<ReconnectAdvice>;
  /** An attempt that has not opened after this long is given up [default: 10 000 ms]. */
  openTimeoutMs?: number;
}

/** The events of a client and what their listeners get. */
export interface ClientEvents {
  /** A message, once, in order; the next waits until a returned promise settles. */
  message: Message;
  /** A connection state change. */
  state: ConnectionState;
  /** A refused request (`error` from the gateway), or why the client stopped. */
  error: ClientError;
  /** Every `welcome` (so after every reconnect on WebSocket and SSE). */
  welcome: Welcome;
  /**
   * History no longer covered the resume point (`recovered: false`), or the gateway lost
   * its history (a restarted single node): resync from the application's backend.
   */
  gap: { seq: number | null; reset: boolean };
  /**
   * A connection (or attempt) ended: the close code (WebSocket close, SSE `close` event),
   * the HTTP status of a refused request, or neither for a network failure.
   */
  disconnect: Disconnect;
}

/** How a connection or attempt ended. */
export interface Disconnect {
  transport: TransportName | null;
  code?: number;
  reason?: string;
  status?: number;
}

type Listener<T> = (value: T) => void | Promise<void>;

interface PendingSend {
  to: string[];
  data: unknown;
  resolve: () => void;
  reject: (e: ClientError) => void;
}

type Loss = Omit<Disconnect, "transport">;

const WS_OPEN = 1;
const MAX_QUEUED_SENDS = 1000;

/**
 * A pushgate client: connects, reconnects with the advertised jittered backoff, resumes
 * from the last seq it saw (dropping duplicates by seq), acknowledges per device,
 * refreshes its token, and falls back from WebSocket to SSE to long-poll.
 */
export class PushgateClient {
  /** The current state. */
  state: ConnectionState = "closed";
  /** The transport of the current (or last) connection. */
  transport: TransportName | null = null;
  /** The user ID from the last `welcome`. */
  uid: string | null = null;
  /** The highest user seq received. */
  lastSeq: number | null = null;
  /** Connections opened so far (a reconnect counts one more). */
  opens = 0;

  private readonly opts: ClientOptions;
  private readonly transports: TransportName[];
  private readonly listeners: { [K in keyof ClientEvents]: Array<Listener<ClientEvents[K]>> } = {
    message: [],
    state: [],
    error: [],
    welcome: [],
    gap: [],
    disconnect: [],
  };
  private readonly rooms = new Map<string, number | null>();
  private token: string | null;
  private tokenStale = false;
  private advice: ReconnectAdvice = DEFAULT_ADVICE;
  private epoch = 0;
  private stopped = true;
  private failures = 0;
  private transportIndex = 0;
  private openedThisAttempt = false;
  private ws: WebSocketLike | null = null;
  private abort: AbortController | null = null;
  private timers = new Set<ReturnType<typeof setTimeout>>();
  private openTimer: ReturnType<typeof setTimeout> | null = null;
  private lastHeard = 0;
  private heartbeatMs = 25_000;
  private queue: PendingSend[] = [];
  private handling: Promise<void> = Promise.resolve();
  private processedSeq: number | null = null;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private ackedSeq = 0;
  private loaded = false;
  /** The last `welcome`'s seq and `recovered`, until what follows it settles them. */
  private verdict: { seq: number | undefined; recovered: boolean | undefined } | null = null;
  /**
   * IDs of user messages that came without a seq (a cluster node whose bus was down
   * delivered them unstored): their stored retry, with a seq, is not handed over again.
   */
  private readonly unstored = new Set<string>();
  /** Resumes refused in a row because the history store was unavailable. */
  private resumeRetries = 0;

  constructor(opts: ClientOptions) {
    this.opts = opts;
    this.token = opts.token ?? null;
    this.transports = opts.transports?.length ? [...opts.transports] : ["ws", "sse", "poll"];
    this.advice = { ...DEFAULT_ADVICE, ...opts.reconnect };
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(event: K, fn: Listener<ClientEvents[K]>): () => void {
    const list = this.listeners[event] as Array<Listener<ClientEvents[K]>>;
    list.push(fn);
    return () => {
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    };
  }

  /** Starts connecting (and reconnecting until `close()`). */
  connect(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.failures = 0;
    this.setState("connecting");
    void this.attempt();
  }

  /** Closes the connection and stops reconnecting. Queued sends are rejected. */
  close(): void {
    this.stopped = true;
    this.epoch++;
    this.teardown();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const p of this.queue.splice(0)) p.reject({ code: "closed", message: "client closed" });
    this.setState("closed");
  }

  /**
   * Sends `data` to every connection of the users in `to`. Resolves once the gateway has
   * it (WebSocket: once written; SSE and long-poll: once `POST /send` answered 200);
   * sends made while disconnected wait for the next connection.
   */
  send(to: string[], data: unknown): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.stopped) return reject({ code: "closed", message: "client closed" });
      if (this.state === "open") return void this.deliverSend({ to, data, resolve, reject });
      if (this.queue.length >= MAX_QUEUED_SENDS) {
        return reject({ code: "queue_full", message: "too many sends waiting for a connection" });
      }
      this.queue.push({ to, data, resolve, reject });
    });
  }

  /**
   * Joins a room (WebSocket only): its messages come as `message` events with `room`. With
   * `since`, the room's retained messages after it come first. Rejoined, from the last
   * room seq seen, after every reconnect.
   */
  join(room: string, options: { since?: number } = {}): void {
    this.rooms.set(room, options.since ?? this.rooms.get(room) ?? null);
    this.sendJoin(room);
  }

  /** Leaves a room. */
  leave(room: string): void {
    this.rooms.delete(room);
    this.wsSend({ type: "leave", room });
  }

  /** Acknowledges every user message up to `seq` for this device (with `autoAck: false`). */
  ack(seq: number): void {
    if (seq <= this.ackedSeq) return;
    if (this.wsSend({ type: "ack", seq })) this.ackedSeq = seq;
  }

  // ---- attempts ------------------------------------------------------------------------

  private async attempt(): Promise<void> {
    const epoch = ++this.epoch;
    this.openedThisAttempt = false;
    try {
      if (!this.loaded) await this.load();
      const token = await this.currentToken();
      if (epoch !== this.epoch || this.stopped) return;
      const transport = this.transports[this.transportIndex] ?? "ws";
      this.transport = transport;
      this.lastHeard = Date.now();
      this.openTimer = this.later(() => {
        if (epoch === this.epoch && !this.openedThisAttempt) this.lost(epoch, { reason: "open timeout" });
      }, this.opts.openTimeoutMs ?? 10_000);
      if (transport === "ws") this.openWs(epoch, token);
      else if (transport === "sse") void this.openSse(epoch, token);
      else void this.pollLoop(epoch, token);
    } catch (e) {
      if (epoch === this.epoch) {
        this.emit("error", { code: "token", message: `getToken failed: ${String(e)}` });
        this.lost(epoch, {});
      }
    }
  }

  private async currentToken(): Promise<string | null> {
    const get = this.opts.getToken;
    if (get && (this.token === null || this.tokenStale || expiresWithin(this.token, 10_000))) {
      this.token = await get();
      this.tokenStale = false;
    }
    return this.token;
  }

  private query(extra: Record<string, string | number | null | undefined>): string {
    const q = new URLSearchParams();
    if (this.opts.uid !== undefined) q.set("uid", this.opts.uid);
    if (this.opts.device !== undefined) q.set("device", this.opts.device);
    for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined) q.set(k, String(v));
    return q.toString();
  }

  private httpUrl(path: string, query: string): string {
    return `${this.opts.url.replace(/\/+$/, "")}${path}${query ? `?${query}` : ""}`;
  }

  private headers(token: string | null): Record<string, string> {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  private get fetchImpl(): typeof fetch {
    const f = this.opts.fetch ?? globalThis.fetch;
    if (!f) throw new Error("no fetch: pass options.fetch");
    // A browser's fetch must be called on the window, not on this client.
    return (input, init) => f.call(globalThis, input, init);
  }

  private openWs(epoch: number, token: string | null): void {
    const Ctor = this.opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) {
      // No WebSocket here at all: the next transport.
      this.later(() => this.lost(epoch, { reason: "no WebSocket implementation" }), 0);
      return;
    }
    const url = this.httpUrl("/ws", this.query({ token, since: this.lastSeq })).replace(/^http/, "ws");
    let ws: WebSocketLike;
    try {
      ws = new Ctor(url);
    } catch (e) {
      this.later(() => this.lost(epoch, { reason: String(e) }), 0);
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (epoch !== this.epoch) return;
      const text = typeof ev.data === "string" ? ev.data : new TextDecoder().decode(ev.data as ArrayBuffer);
      this.receiveText(epoch, text);
    };
    ws.onclose = (ev) => this.lost(epoch, { code: ev.code, reason: ev.reason });
    ws.onerror = () => {};
  }

  private async openSse(epoch: number, token: string | null): Promise<void> {
    const abort = new AbortController();
    this.abort = abort;
    let res: Response;
    try {
      res = await this.fetchImpl(this.httpUrl("/sse", this.query({ since: this.lastSeq })), {
        headers: { ...this.headers(token), Accept: "text/event-stream" },
        signal: abort.signal,
        cache: "no-store",
      });
    } catch (e) {
      return this.lost(epoch, { reason: `fetch failed: ${String(e)}` });
    }
    if (res.status !== 200 || !res.body) {
      return this.lost(epoch, { status: res.status, reason: await res.text().catch(() => "") });
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    let closeEvent: Loss | null = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || epoch !== this.epoch) break;
        this.lastHeard = Date.now();
        for (const ev of parser.feed(decoder.decode(value, { stream: true }))) {
          if (ev === null) continue;
          if (ev.event === "close") {
            const c = safeJson(ev.data) as { code?: number; reason?: string } | null;
            closeEvent = { code: c?.code ?? 1006, reason: c?.reason ?? "" };
            continue;
          }
          this.receiveText(epoch, ev.data);
        }
      }
    } catch {
      // The stream was cut (or aborted by us).
    }
    abort.abort();
    this.lost(epoch, closeEvent ?? { reason: "stream ended" });
  }

  private async pollLoop(epoch: number, token: string | null): Promise<void> {
    const abort = new AbortController();
    this.abort = abort;
    while (epoch === this.epoch && !this.stopped) {
      let res: Response;
      try {
        res = await this.fetchImpl(this.httpUrl("/poll", this.query({ since: this.lastSeq })), {
          headers: this.headers(token),
          signal: abort.signal,
          cache: "no-store",
        });
      } catch (e) {
        return this.lost(epoch, { reason: `fetch failed: ${String(e)}` });
      }
      if (res.status !== 200) {
        return this.lost(epoch, { status: res.status, reason: await res.text().catch(() => "") });
      }
      let body: { messages?: unknown; seq?: unknown };
      try {
        body = (await res.json()) as typeof body;
      } catch {
        return this.lost(epoch, { reason: "bad poll answer" });
      }
      if (!body || typeof body !== "object" || (body.messages !== undefined && !Array.isArray(body.messages))) {
        return this.lost(epoch, { reason: "bad poll answer" });
      }
      if (epoch !== this.epoch) return;
      this.lastHeard = Date.now();
      if (!this.openedThisAttempt) this.opened(epoch);
      const messages = (body.messages ?? []) as unknown[];
      if (typeof body.seq === "number" && this.lastSeq !== null && body.seq < this.lastSeq && messages.length === 0) {
        this.resetSeq(body.seq);
      }
      for (const m of messages) if (m && typeof m === "object") this.receive(epoch, m as ServerMessage);
      if (typeof body.seq === "number" && (this.lastSeq === null || body.seq > this.lastSeq)) {
        this.lastSeq = body.seq;
      }
    }
  }

  // ---- what arrives --------------------------------------------------------------------

  private receiveText(epoch: number, text: string): void {
    this.lastHeard = Date.now();
    const m = safeJson(text);
    if (m && typeof m === "object") this.receive(epoch, m as ServerMessage);
  }

  private receive(epoch: number, m: ServerMessage): void {
    if (epoch !== this.epoch) return;
    if (m.type !== "welcome" && this.verdict && this.settle(epoch, m)) return;
    switch (m.type) {
      case "welcome": {
        this.uid = m.uid;
        this.advice = saneAdvice({ ...DEFAULT_ADVICE, ...m.reconnect, ...this.opts.reconnect });
        this.heartbeatMs = between(m.heartbeat, 1, 3600, 25) * 1000;
        // What the resume point came to is known from what follows: an `error` about it
        // comes right behind the welcome (before any replayed message).
        this.verdict = { seq: m.seq, recovered: m.recovered };
        this.later(() => this.settle(epoch, null), 200);
        this.emit("welcome", m);
        this.opened(epoch);
        return;
      }
      case "msg":
        return this.deliver(m);
      case "joined":
        if (typeof m.room !== "string" || !this.rooms.has(m.room)) return;
        this.rooms.set(m.room, typeof m.seq === "number" ? m.seq : null);
        if (!m.recovered) this.emit("gap", { seq: null, reset: false });
        return;
      case "resumed":
        if (!m.recovered) this.emit("gap", { seq: this.lastSeq, reset: false });
        return;
      case "error":
        this.emit("error", { code: m.code, message: m.message });
        return;
      default:
        return;
    }
  }

  private deliver(m: Message): void {
    if (typeof m.seq === "number") {
      if (typeof m.room === "string") {
        const last = this.rooms.get(m.room);
        if (last !== undefined && last !== null && m.seq <= last) return;
        if (this.rooms.has(m.room)) this.rooms.set(m.room, m.seq);
      } else {
        if (this.lastSeq !== null && m.seq <= this.lastSeq) return;
        this.lastSeq = m.seq;
      }
    }
    const userSeq = typeof m.seq === "number" && typeof m.room !== "string" ? m.seq : null;
    const repeat = this.seenUnstored(m);
    this.handling = this.handling.then(async () => {
      for (const fn of repeat ? [] : [...this.listeners.message]) {
        try {
          await fn(m);
        } catch (e) {
          this.emit("error", { code: "handler", message: String(e) });
        }
      }
      if (userSeq !== null) {
        this.processedSeq = userSeq;
        await this.save();
        if (this.opts.autoAck !== false) this.scheduleAck();
      }
    });
  }

  /**
   * Whether `m` is the stored retry of a user message already handed over without a seq;
   * remembers the IDs of those (the last 1 024).
   */
  private seenUnstored(m: Message): boolean {
    if (typeof m.room === "string" || typeof m.id !== "string") return false;
    if (typeof m.seq === "number") return this.unstored.delete(m.id);
    this.unstored.add(m.id);
    if (this.unstored.size > 1024) {
      const oldest = this.unstored.values().next().value;
      if (oldest !== undefined) this.unstored.delete(oldest);
    }
    return false;
  }

  /**
   * Settles the resume point of the last `welcome` on the message after it (`null`: none
   * came). Returns true when the message was the verdict and is handled.
   */
  private settle(epoch: number, next: ServerMessage | null): boolean {
    const v = this.verdict;
    if (!v || epoch !== this.epoch) return false;
    this.verdict = null;
    if (next?.type === "error" && next.code === "bad_since") {
      // `since` past the gateway's latest seq: it lost its history (a restarted node).
      if (typeof v.seq === "number") this.resetSeq(v.seq);
      return true;
    }
    if (next?.type === "error" && next.code === "unavailable") {
      // The node could not reach the history store: try the resume again, later.
      this.resumeRetries++;
      this.lost(epoch, { reason: next.message });
      return true;
    }
    this.resumeRetries = 0;
    if (v.recovered === false) this.emit("gap", { seq: this.lastSeq, reset: false });
    return false;
  }

  private resetSeq(seq: number): void {
    this.lastSeq = seq;
    this.processedSeq = seq;
    for (const room of this.rooms.keys()) this.rooms.set(room, null);
    this.emit("gap", { seq, reset: true });
  }

  // ---- open and lost -------------------------------------------------------------------

  private opened(epoch: number): void {
    if (epoch !== this.epoch || this.openedThisAttempt) return;
    this.openedThisAttempt = true;
    if (this.openTimer) clearTimeout(this.openTimer);
    this.failures = 0;
    this.opens++;
    this.setState("open");
    this.watch(epoch);
    if (this.transport === "ws") {
      for (const room of this.rooms.keys()) this.sendJoin(room);
      if (this.opts.autoAck !== false) this.scheduleAck();
    } else if (this.rooms.size > 0) {
      this.emit("error", { code: "rooms_unavailable", message: `rooms need WebSocket; on ${this.transport}` });
    }
    for (const p of this.queue.splice(0)) void this.deliverSend(p);
  }

  /** Liveness: pings a silent WebSocket, and drops a connection silent for two heartbeats. */
  private watch(epoch: number): void {
    const tick = () => {
      if (epoch !== this.epoch) return;
      const silent = Date.now() - this.lastHeard;
      if (silent > 2 * this.heartbeatMs + 5000) {
        this.ws?.close(4000, "silent");
        return this.lost(epoch, { reason: "silent" });
      }
      if (silent >= this.heartbeatMs) this.wsSend({ type: "ping" });
      this.later(tick, this.heartbeatMs);
    };
    this.later(tick, this.heartbeatMs);
  }

  private lost(epoch: number, loss: Loss): void {
    if (epoch !== this.epoch || this.stopped) return;
    this.epoch++;
    this.verdict = null;
    const wasOpen = this.openedThisAttempt;
    this.teardown();
    this.emit("disconnect", { transport: this.transport, ...loss });
    if (loss.code === 4008) {
      this.stopped = true;
      this.emit("error", { code: "replaced", message: loss.reason || "replaced by a newer connection" });
      this.setState("closed");
      return;
    }
    if (loss.code === 1008 || loss.status === 401) {
      if (!this.opts.getToken && loss.status === 401) {
        this.stopped = true;
        this.emit("error", { code: "http_401", message: "the token was refused and there is no getToken" });
        this.setState("closed");
        return;
      }
      this.tokenStale = true;
    }
    this.setState("reconnecting");
    if (!wasOpen && loss.status !== 401 && this.transportIndex + 1 < this.transports.length) {
      // This transport does not get through (a proxy refusing upgrades or streams): the next, now.
      this.transportIndex++;
      this.later(() => void this.attempt(), 0);
      return;
    }
    if (!wasOpen && loss.status !== 401) this.transportIndex = 0;
    const delay = backoffDelay(this.advice, wasOpen ? this.resumeRetries : this.failures);
    if (!wasOpen) this.failures++;
    this.later(() => void this.attempt(), delay);
  }

  private teardown(): void {
    if (this.openTimer) clearTimeout(this.openTimer);
    this.openTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      try {
        if (ws.readyState <= WS_OPEN) ws.close(1000);
      } catch {
        // Closing a socket that never opened may throw; it is gone either way.
      }
    }
    this.abort?.abort();
    this.abort = null;
  }

  // ---- what the client sends -----------------------------------------------------------

  private wsSend(req: object): boolean {
    const ws = this.ws;
    if (!ws || this.state !== "open" || ws.readyState !== WS_OPEN) return false;
    ws.send(JSON.stringify(req));
    return true;
  }

  private sendJoin(room: string): void {
    const since = this.rooms.get(room);
    this.wsSend(since === null || since === undefined ? { type: "join", room } : { type: "join", room, since });
  }

  private async deliverSend(p: PendingSend): Promise<void> {
    const req = { type: "send", to: p.to, data: p.data };
    if (this.transport === "ws") {
      if (this.wsSend(req)) p.resolve();
      else this.queue.push(p);
      return;
    }
    try {
      const res = await this.fetchImpl(this.httpUrl("/send", this.query({})), {
        method: "POST",
        headers: { ...this.headers(this.token), "Content-Type": "application/json" },
        body: JSON.stringify(req),
      });
      if (res.status === 200) return p.resolve();
      const body = (await res.json().catch(() => null)) as { code?: string; message?: string } | null;
      p.reject({ code: body?.code ?? `http_${res.status}`, message: body?.message ?? res.statusText });
    } catch (e) {
      p.reject({ code: "network", message: String(e) });
    }
  }

  private scheduleAck(): void {
    if (this.ackTimer !== null) return;
    this.ackTimer = this.later(() => {
      this.ackTimer = null;
      if (this.processedSeq !== null && this.processedSeq > this.ackedSeq) this.ack(this.processedSeq);
    }, this.opts.ackDelayMs ?? 100);
  }

  // ---- storage, events, timers ---------------------------------------------------------

  private get storageKey(): string {
    return this.opts.storageKey ?? `pushgate:${this.opts.device ?? "default"}`;
  }

  private async load(): Promise<void> {
    this.loaded = true;
    const raw = await this.opts.storage?.getItem(this.storageKey);
    const saved = raw ? (safeJson(raw) as { seq?: number; rooms?: Record<string, number | null> } | null) : null;
    if (saved && typeof saved.seq === "number" && this.lastSeq === null) {
      this.lastSeq = saved.seq;
      this.processedSeq = saved.seq;
    }
    for (const [room, seq] of Object.entries(saved?.rooms ?? {})) {
      if (!this.rooms.has(room)) this.rooms.set(room, seq);
    }
  }

  private async save(): Promise<void> {
    const storage = this.opts.storage;
    if (!storage) return;
    const rooms: Record<string, number | null> = {};
    for (const [room, seq] of this.rooms) rooms[room] = seq;
    try {
      await storage.setItem(this.storageKey, JSON.stringify({ seq: this.processedSeq, rooms }));
    } catch (e) {
      this.emit("error", { code: "storage", message: String(e) });
    }
  }

  private setState(s: ConnectionState): void {
    if (this.state === s) return;
    this.state = s;
    this.emit("state", s);
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    if (event === "message") return;
    for (const fn of [...(this.listeners[event] as Array<Listener<ClientEvents[K]>>)]) {
      try {
        void fn(value);
      } catch {
        // A listener's failure is the application's; the client goes on.
      }
    }
  }

  private later(fn: () => void, ms: number): ReturnType<typeof setTimeout> {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }
}

/** `v` when it is a number within `[lo, hi]`, else `fallback`: a server's word is not trusted with timers. */
function between(v: unknown, lo: number, hi: number, fallback: number): number {
  return typeof v === "number" && Number.isFinite(v) ? Math.min(Math.max(v, lo), hi) : fallback;
}

/**
 * A backoff whose every field is a number in range: a timer fed NaN or 2^31 ms fires at
 * once, and a base under 50 ms would let a server make its clients reconnect in a loop.
 */
function saneAdvice(a: ReconnectAdvice): ReconnectAdvice {
  const cap = between(a.cap_ms, 50, 3_600_000, DEFAULT_ADVICE.cap_ms);
  return {
    base_ms: between(a.base_ms, 50, cap, DEFAULT_ADVICE.base_ms),
    factor: between(a.factor, 1, 10, DEFAULT_ADVICE.factor),
    jitter: between(a.jitter, 0, 1, DEFAULT_ADVICE.jitter),
    cap_ms: cap,
  };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** Whether a JWT's `exp` is less than `ms` away (false when it cannot be read). */
function expiresWithin(token: string, ms: number): boolean {
  const part = token.split(".")[1];
  if (!part) return false;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" && exp * 1000 - Date.now() < ms;
  } catch {
    return false;
  }
}
