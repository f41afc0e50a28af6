//! Whether NATS answers: round trips (`PING`, `PONG`) the bus thread makes on a timer and
//! after changing its subscriptions.
//!
//! A TCP connection to a frozen server (stopped by `SIGSTOP`, wedged, behind a black-holed
//! route) stays "connected": writes land in the kernel's buffer and nothing says the
//! server is gone. So every `timeout / 3` the bus thread sends a `PING`; one unanswered
//! for `timeout` makes the node unready, and any `PONG` makes it ready again. A `PING`
//! needs no permission and reaches no subscriber, unlike a request to some subject.
//!
//! The server handles one connection's operations in order, so the `PONG` to a `PING`
//! sent after some `SUB`s also says the server has those subscriptions: that is when the
//! subscription gauge is updated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Probe state shared by the bus thread (which sends and receives) and readers of
/// readiness (any thread).
#[derive(Debug)]
pub(super) struct Liveness {
    epoch: Instant,
    timeout: Duration,
    /// When the oldest probe unanswered so far was sent, in microseconds since `epoch`
    /// plus one; 0 when every probe sent has been answered.
    waiting_since: AtomicU64,
    /// The highest probe sequence number answered.
    answered: AtomicU64,
}

impl Liveness {
    pub(super) fn new(timeout: Duration) -> Self {
        Liveness {
            epoch: Instant::now(),
            timeout,
            waiting_since: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        }
    }

    /// How often the bus thread probes.
    pub(super) fn interval(&self) -> Duration {
        self.timeout / 3
    }

    fn stamp(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }

    /// A probe went out at `now`.
    pub(super) fn sent(&self, now: Instant) {
        // Only the oldest unanswered probe counts: later ones must not push it back.
        let _ = self.waiting_since.compare_exchange(
            0,
            self.stamp(now),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The answer to probe `seq` arrived.
    pub(super) fn answered(&self, seq: u64) {
        self.waiting_since.store(0, Ordering::Relaxed);
        self.answered.fetch_max(seq, Ordering::Relaxed);
    }

    /// The highest probe sequence number answered.
    pub(super) fn answered_seq(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Forgets unanswered probes (a new connection: they went down with the old one).
    pub(super) fn reset(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    /// False once a probe has gone unanswered for longer than the timeout.
    pub(super) fn answering(&self, now: Instant) -> bool {
        let since = self.waiting_since.load(Ordering::Relaxed);
        since == 0 || self.stamp(now).saturating_sub(since) <= self.timeout.as_micros() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_past_the_timeout_is_not_answering() {
        let l = Liveness::new(Duration::from_secs(3));
        let t0 = Instant::now();
        assert!(l.answering(t0));
        l.sent(t0);
        // Later probes do not restart the clock of the first unanswered one.
        l.sent(t0 + Duration::from_secs(2));
        assert!(l.answering(t0 + Duration::from_secs(3)));
        assert!(!l.answering(t0 + Duration::from_millis(3001)));
        l.answered(2);
        assert!(l.answering(t0 + Duration::from_secs(10)));
        assert_eq!(l.answered_seq(), 2);
        l.answered(1);
        assert_eq!(l.answered_seq(), 2);
        l.sent(t0 + Duration::from_secs(10));
        l.reset();
        assert!(l.answering(t0 + Duration::from_secs(60)));
    }
}
