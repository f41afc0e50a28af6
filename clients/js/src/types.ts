/** The messages of the pushgate client protocol (docs/PROTOCOL.md in the repository). */

/** The backoff `welcome` advertises. */
export interface ReconnectAdvice {
  base_ms: number;
  factor: number;
  jitter: number;
  cap_ms: number;
}

/** The first message of a `/ws` connection or `/sse` stream. */
export interface Welcome {
  type: "welcome";
  conn: string;
  uid: string;
  heartbeat: number;
  reconnect: ReconnectAdvice;
  /** The user's latest seq; absent when the node keeps no history. */
  seq?: number;
  /** Whether everything after the resume point was still retained. */
  recovered?: boolean;
}

/** A delivered message. */
export interface Message<T = unknown> {
  type: "msg";
  from: string;
  /** The message ID (with history). */
  id?: string;
  /** Set on a room message. */
  room?: string;
  /** The user's seq, or the room's on a room message (with history). */
  seq?: number;
  data: T;
}

/** A refused request. */
export interface ErrorMessage {
  type: "error";
  code: string;
  message: string;
}

/** Any JSON object the server sends. */
export type ServerMessage =
  | Welcome
  | Message
  | ErrorMessage
  | { type: "pong" }
  | { type: "resumed"; seq: number; recovered: boolean }
  | { type: "joined"; room: string; seq: number; recovered: boolean }
  | { type: "close"; code: number; reason: string };

/** The transports, in the order tried by default. */
export type TransportName = "ws" | "sse" | "poll";

/** What a client is doing. */
export type ConnectionState =
  | "connecting"
  | "open"
  | "reconnecting"
  | "closed";

/** The part of the WebSocket API the client uses (browsers' `WebSocket`, Node's `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/**
 * Where the client keeps its resume point (the last user seq and room seqs it processed)
 * across page loads or process restarts. `localStorage` fits as is.
 */
export interface SeqStorage {
  getItem(key: string): string | null | undefined | Promise<string | null | undefined>;
  setItem(key: string, value: string): void | Promise<void>;
}

/** Why the client stopped for good, or a request that was refused. */
export interface ClientError {
  /** A protocol error code (`bad_request`, `forbidden`, ...), `http_<status>`, or `replaced`. */
  code: string;
  message: string;
}
