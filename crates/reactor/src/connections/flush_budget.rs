//! How much work a loop turn does before it delivers what it routed and writes: a
//! bounded number of events or a bounded time, whichever comes first, rather than only
//! at the turn's end. Batching survives (everything routed since the last flush goes out
//! in one write per connection); what a turn's first events routed no longer waits for
//! hundreds of later ones (`pushgate_push_stage_seconds`, `bench/RESULTS.md`, issue 30).

use std::time::{Duration, Instant};

/// Ready sockets (or completions) handled between flushes at most.
pub(crate) const EVENTS_PER_FLUSH: u32 = 16;
/// Time spent between flushes at most (checked every [`CLOCK_EVERY`] events).
pub(crate) const FLUSH_AFTER: Duration = Duration::from_micros(100);
/// Events between two looks at the clock.
const CLOCK_EVERY: u32 = 4;

/// Counts a turn's work since its last flush.
#[derive(Debug)]
pub(crate) struct FlushBudget {
    events: u32,
    since: Instant,
}

impl FlushBudget {
    /// A budget starting at `now` (the turn's start).
    pub(crate) fn new(now: Instant) -> Self {
        FlushBudget {
            events: 0,
            since: now,
        }
    }

    /// One event was handled: true when the budget is spent, and it starts over.
    #[inline]
    pub(crate) fn spent(&mut self) -> bool {
        self.events += 1;
        if self.events < EVENTS_PER_FLUSH {
            // The clock is read every few events only: on some virtual machines a read
            // costs 0.1–0.2 µs (`cargo bench -p reactor --bench stages`).
            if self.events % CLOCK_EVERY != 0 {
                return false;
            }
            let now = Instant::now();
            if now.saturating_duration_since(self.since) < FLUSH_AFTER {
                return false;
            }
            self.restart(now);
            return true;
        }
        self.restart(Instant::now());
        true
    }

    /// A flush happened for another reason: the budget starts over.
    pub(crate) fn restart(&mut self, now: Instant) {
        self.events = 0;
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spent_after_a_bounded_number_of_events() {
        // Started far in the future, so only the event count can spend it.
        let mut b = FlushBudget::new(Instant::now() + Duration::from_secs(3600));
        for _ in 1..EVENTS_PER_FLUSH {
            assert!(!b.spent());
        }
        assert!(b.spent());
    }

    #[test]
    fn spent_after_a_bounded_time() {
        let mut b = FlushBudget::new(Instant::now() - FLUSH_AFTER);
        for _ in 1..CLOCK_EVERY {
            assert!(!b.spent(), "the clock is not read at every event");
        }
        assert!(
            b.spent(),
            "a look at the clock after the time bound spends it"
        );
    }
}
