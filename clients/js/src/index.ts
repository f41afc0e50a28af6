export { PushgateClient } from "./client.js";
export type { ClientEvents, ClientOptions, Disconnect } from "./client.js";
export { backoffDelay, DEFAULT_ADVICE } from "./backoff.js";
export { SseParser } from "./sse.js";
export type { SseEvent } from "./sse.js";
export type * from "./types.js";
