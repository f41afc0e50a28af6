import type { ReconnectAdvice } from "./types.js";

/** What the gateway advertises by default, used until the first `welcome`. */
export const DEFAULT_ADVICE: ReconnectAdvice = {
  base_ms: 1000,
  factor: 2,
  jitter: 0.5,
  cap_ms: 60_000,
};

/**
 * The delay before reconnect attempt `attempt` (0 for the first after a working
 * connection): `min(cap, base × factor^attempt)`, times a random factor in
 * `[1 − jitter, 1 + jitter]` so that a node's clients do not all come back at once.
 */
export function backoffDelay(
  advice: ReconnectAdvice,
  attempt: number,
  random: () => number = Math.random,
): number {
  const raw = Math.min(advice.cap_ms, advice.base_ms * Math.pow(advice.factor, attempt));
  const jitter = Math.min(Math.max(advice.jitter, 0), 1);
  const spread = 1 + jitter * (2 * random() - 1);
  return Math.max(0, Math.round(raw * spread));
}
