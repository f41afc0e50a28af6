//! What the bus counts, read by `/metrics` and `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reactor::stats::Histogram;

/// A counter any thread may add to (the bus's, and the server API's, which every reactor
/// serves).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets a gauge.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// Reasons a push did not go onto the bus, in a fixed order for the counters.
pub const REFUSE_REASONS: [&str; 4] = ["disconnected", "queue_full", "too_large", "history"];

/// The bus counters.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Connected to NATS now.
    pub connected: AtomicBool,
    /// Connections made to NATS (the first and every reconnect).
    pub connects: Counter,
    /// Connections to NATS lost.
    pub disconnects: Counter,
    /// Messages published (one per recipient subject).
    pub published: Counter,
    /// Pushes the bus could not take, by [`REFUSE_REASONS`].
    pub refused: [Counter; 4],
    /// Publishes NATS refused after they were queued.
    pub publish_errors: Counter,
    /// Messages received from other nodes or backends.
    pub received: Counter,
    /// Received copies of a multi-recipient push already delivered here.
    pub duplicates: Counter,
    /// Received messages dropped as malformed (bad UTF-8, bad headers).
    pub invalid: Counter,
    /// Subjects subscribed to now (users, rooms and broadcast).
    pub subscriptions: Counter,
    /// Subscribe and unsubscribe operations sent.
    pub interest_changes: Counter,
    /// Messages NATS dropped because a subscription fell behind.
    pub slow_consumer_drops: Counter,
    /// Times NATS left a round trip unanswered past the ping timeout (the node turned
    /// unready).
    pub ping_timeouts: Counter,
    /// History stream setups asked again after JetStream did not answer.
    pub stream_setup_retries: Counter,
    /// Publish (by the header timestamp) to delivery handed to the reactors; written by
    /// the bus thread only.
    pub latency: Histogram,
}

impl BusStats {
    /// Whether the node is connected to NATS.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
