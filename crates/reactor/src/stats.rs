//! Per-reactor counters. Each reactor is the only writer of its own counters (plain
//! load-and-store, no locked read-modify-write on the hot path); a scrape reads them all
//! and sums.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter or gauge, written by a single thread.
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

impl Cell {
    /// Adds `n` (single writer).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Subtracts `n` (single writer; gauges).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the push latency histogram buckets, in microseconds (+Inf implied).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A histogram with fixed buckets, written by one thread.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last is +Inf.
    pub buckets: [Cell; 15],
    /// Sum of observations, microseconds.
    pub sum_us: Cell,
    /// Observations.
    pub count: Cell,
}

/// Upper bounds of the per-stage histograms' buckets, in microseconds (+Inf implied):
/// finer at the bottom than [`LATENCY_BUCKETS_US`], since a stage of a push on an idle
/// node takes a few microseconds and the tail is what they are there to find.
pub const STAGE_BUCKETS_US: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];

/// Where a push spends its time inside the node, one histogram each
/// (`pushgate_push_stage_seconds{stage}`), in the order of [`ReactorStats::stages`]:
/// - `read`: the reactor woke with the request ready → the request read and served
///   (the work done earlier in the same turn);
/// - `route`: the request served → its delivery queued on the recipient's reactor
///   (parsing, routing; the API's clock starts after the request is parsed);
/// - `handoff_local` / `handoff_cross`: queued → taken off the inbox by the recipient's
///   reactor, when that is the reactor that routed it / another thread (another reactor,
///   the bus);
/// - `write`: taken off the inbox → the frame handed to the kernel (or queued behind
///   earlier data).
pub const STAGES: [&str; 5] = ["read", "route", "handoff_local", "handoff_cross", "write"];

/// Index of each stage in [`STAGES`].
pub mod stage {
    /// Woke with the request ready → request served.
    pub const READ: usize = 0;
    /// Request served → delivery queued.
    pub const ROUTE: usize = 1;
    /// Queued by the recipient's own reactor → taken.
    pub const HANDOFF_LOCAL: usize = 2;
    /// Queued by another thread → taken.
    pub const HANDOFF_CROSS: usize = 3;
    /// Taken → written.
    pub const WRITE: usize = 4;
}

impl Histogram {
    /// Records one observation in the push latency buckets ([`LATENCY_BUCKETS_US`]).
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_in(&LATENCY_BUCKETS_US, d);
    }

    /// Records one observation in the buckets `bounds` (the same on every call for one
    /// histogram).
    #[inline]
    pub fn observe_in(&self, bounds: &[u64; 14], d: std::time::Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = bounds.iter().position(|&b| us <= b).unwrap_or(bounds.len());
        self.buckets[i].add(1);
        self.sum_us.add(us);
        self.count.add(1);
    }
}

/// Reasons a message is not delivered to a connection, in a fixed order for the counters.
pub const DROP_REASONS: [&str; 5] = ["offline", "gone", "slow_consumer", "room_limit", "bus"];

/// Why a service (server API) connection was closed by the server before the client was
/// done with it, for the counters: the table was full and a new connection needed the
/// slot; `accept` ran out of descriptors and a slot was freed to retry it; no complete
/// first request in time; silent past the idle timeout between requests.
pub const SERVICE_EVICT_REASONS: [&str; 5] = [
    "full",
    "fd_limit",
    "first_request_timeout",
    "idle_timeout",
    "per_ip",
];

/// HTTP statuses an upgrade can be refused with, in a fixed order for the counters.
pub const REJECT_STATUSES: [u16; 11] = [400, 401, 403, 404, 405, 411, 413, 426, 429, 431, 503];

/// How a user's connections take messages, in a fixed order for the counters (indexed by
/// `session::Transport::index`).
pub const TRANSPORTS: [&str; 3] = ["ws", "sse", "poll"];

/// How a long poll was answered, in a fixed order for the counters.
pub const POLL_RESULTS: [&str; 2] = ["timeout", "messages"];

/// Why a TLS connection failed, in a fixed order for the counters: its first bytes were
/// not TLS (plain HTTP on the `wss://` port, say); the handshake failed (no shared
/// version or cipher, a bad hello, the client's alert); the peer hung up mid-handshake;
/// a record after the handshake was bad.
pub const TLS_FAILURE_CAUSES: [&str; 4] = ["not_tls", "handshake", "truncated", "record"];

/// Close codes the server sends on protocol violations.
pub const PROTOCOL_CLOSE_CODES: [u16; 3] = [1002, 1007, 1009];

/// Everything one reactor counts.
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Gauge: open sockets (any phase).
    pub connections: Cell,
    /// Gauge: sockets still in the upgrade handshake.
    pub handshaking: Cell,
    /// Gauge: upgraded `/ws` and `/echo` connections.
    pub upgraded: Cell,
    /// Sockets accepted.
    pub accepted: Cell,
    /// Upgrades completed.
    pub handshakes_ok: Cell,
    /// Upgrades refused, by status (index into [`REJECT_STATUSES`]).
    pub rejected: [Cell; 11],
    /// Gauge: open connections of users, by transport ([`TRANSPORTS`]).
    pub transport_connections: [Cell; 3],
    /// Connections of users opened, by transport.
    pub transport_opened: [Cell; 3],
    /// Messages queued to connections, by transport.
    pub transport_delivered: [Cell; 3],
    /// `POST /send` answers, by status (`session::fallback::SEND_STATUSES`).
    pub send_answers: [Cell; 4],
    /// Long polls answered, by [`POLL_RESULTS`].
    pub poll_answers: [Cell; 2],
    /// Bytes read from clients.
    pub bytes_in: Cell,
    /// Bytes written to clients.
    pub bytes_out: Cell,
    /// Data messages received from clients.
    pub messages_in: Cell,
    /// Frames queued to clients (data and control).
    pub frames_out: Cell,
    /// Handshakes not completed in time.
    pub handshake_timeouts: Cell,
    /// Connections closed for silence.
    pub idle_timeouts: Cell,
    /// Close handshakes the peer did not finish.
    pub close_timeouts: Cell,
    /// Pings sent to silent connections.
    pub heartbeats: Cell,
    /// Connections closed with 1013 because their queue overflowed.
    pub slow_consumer_closes: Cell,
    /// Connections failed for protocol violations, by close code.
    pub protocol_errors: [Cell; 3],
    /// Handshakes reset to make room for a new connection at the pending-handshake bound.
    pub handshakes_evicted: Cell,
    /// `accept` failures (e.g. out of file descriptors).
    pub accept_errors: Cell,
    /// io_uring backend: receives that found the provided buffer ring empty (`ENOBUFS`)
    /// and were re-armed.
    pub recv_buffers_exhausted: Cell,
    /// Push frames queued to connections.
    pub delivered: Cell,
    /// Messages not delivered, by reason (index into [`DROP_REASONS`]).
    pub dropped: [Cell; 5],
    /// Push latency: receipt to frame handed to the kernel (or queued behind earlier data).
    pub push_latency: Histogram,
    /// Push latency by stage ([`STAGES`]), buckets [`STAGE_BUCKETS_US`].
    pub stages: [Histogram; 5],
    /// How long one loop turn works, from waking to going back to the wait (buckets
    /// [`STAGE_BUCKETS_US`]): everything a turn does before it writes waits at most this.
    pub turn: Histogram,
    /// Client `send` requests.
    pub client_sends: Cell,
    /// Client room joins and leaves.
    pub client_room_ops: Cell,
    /// Application-level pings answered.
    pub app_pings: Cell,
    /// Malformed client requests.
    pub bad_requests: Cell,
    /// Client requests refused by the per-connection rate limit.
    pub rate_limited: Cell,
    /// Room joins the connection's token does not grant.
    pub forbidden: Cell,
    /// Connections closed with 1008 (token expiry, repeated malformed requests).
    pub policy_closes: Cell,
    /// TLS handshakes completed: full, then resumed.
    pub tls_handshakes: [Cell; 2],
    /// TLS connections failed, by cause (index into [`TLS_FAILURE_CAUSES`]).
    pub tls_failures: [Cell; 4],
    /// Service (server API) connections accepted.
    pub service_accepted: Cell,
    /// Service reads that produced answers.
    pub service_requests: Cell,
    /// Gauge: open service connections.
    pub service_connections: Cell,
    /// Service connections closed by the server, by reason ([`SERVICE_EVICT_REASONS`]).
    pub service_evicted: [Cell; 5],
    /// Gauge: connections whose opening is pending (their welcome and replay on the way).
    pub openings_pending: Cell,
    /// Gauge: service requests parked, waiting for their answer from another thread.
    pub service_parked: Cell,
    /// Parked requests answered 504: their deadline passed first.
    pub service_parked_timeouts: Cell,
    /// Parked requests answered 503: their completion was dropped unanswered.
    pub service_parked_dropped: Cell,
    /// Answers of parked requests that came after their connection went or their
    /// deadline answered them.
    pub service_answers_late: Cell,
}

impl ReactorStats {
    /// Records the time a push spent in stage `i` (an index of [`stage`]).
    #[inline]
    pub fn observe_stage(&self, i: usize, d: std::time::Duration) {
        self.stages[i].observe_in(&STAGE_BUCKETS_US, d);
    }

    /// Counts a refused upgrade.
    pub fn count_rejected(&self, status: u16) {
        if let Some(i) = REJECT_STATUSES.iter().position(|&s| s == status) {
            self.rejected[i].add(1);
        }
    }

    /// Counts a `POST /send` answer.
    pub fn count_send_answer(&self, status: u16) {
        if let Some(i) = session::fallback::SEND_STATUSES
            .iter()
            .position(|&s| s == status)
        {
            self.send_answers[i].add(1);
        }
    }

    /// Counts an undelivered message.
    pub fn count_dropped(&self, reason: &str, n: u64) {
        if let Some(i) = DROP_REASONS.iter().position(|&r| r == reason) {
            self.dropped[i].add(n);
        }
    }

    /// Counts a service connection the server closed.
    pub fn count_service_evicted(&self, reason: &str) {
        if let Some(i) = SERVICE_EVICT_REASONS.iter().position(|&r| r == reason) {
            self.service_evicted[i].add(1);
        }
    }

    /// Counts a protocol failure.
    pub fn count_protocol_error(&self, code: u16) {
        if let Some(i) = PROTOCOL_CLOSE_CODES.iter().position(|&c| c == code) {
            self.protocol_errors[i].add(1);
        }
    }
}
