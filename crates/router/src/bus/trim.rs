//! Giving freed heap back to the operating system after a mass unsubscribe.
//!
//! Measured (bench/bus_churn.sh, bench/RESULTS.md): after user churn, a node whose bus had
//! dropped every subscription still held ~75 MB more than before it. All of it was free
//! memory glibc's malloc kept in its arenas (the per-subscription channel blocks of
//! async-nats, the client then, were ~6 KB each, freed in no particular order, so the
//! arenas' tops are rarely free and nothing is returned by itself); one `malloc_trim(0)`
//! gave it back. The bus's own table is far smaller now, but the ID strings and registry
//! entries of departed users are still freed in no particular order. So
//! the bus thread trims after it has dropped many subscriptions, at most every
//! [`MIN_INTERVAL`].

use std::time::{Duration, Instant};

/// Subscriptions dropped before a trim is worth its cost (it walks every arena, holding
/// each one's lock for a moment).
pub(super) const AFTER_RELEASES: usize = 1024;
/// At most one trim this often, however fast subscriptions come and go.
pub(super) const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Counts released subscriptions and decides when to trim.
#[derive(Debug)]
pub(super) struct Trimmer {
    released: usize,
    last: Option<Instant>,
}

impl Trimmer {
    pub(super) fn new() -> Self {
        Trimmer {
            released: 0,
            last: None,
        }
    }

    /// `n` more subscriptions were dropped.
    pub(super) fn released(&mut self, n: usize) {
        self.released = self.released.saturating_add(n);
    }

    /// Trims if enough was released since the last trim and that was long enough ago;
    /// true if it trimmed.
    pub(super) fn maybe_trim(&mut self, now: Instant) -> bool {
        if self.released < AFTER_RELEASES
            || self
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
        {
            return false;
        }
        self.released = 0;
        self.last = Some(now);
        release_free_heap();
        true
    }
}

/// Returns the free memory of every malloc arena to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: glibc's malloc_trim takes no pointers and is thread-safe (it locks each arena
    // while it walks it); on glibc targets this process's allocator is glibc malloc.
    unsafe {
        malloc_trim(0);
    }
}

/// Other allocators return memory by their own rules.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_enough_releases_and_not_too_often() {
        let mut t = Trimmer::new();
        let t0 = Instant::now();
        t.released(AFTER_RELEASES - 1);
        assert!(!t.maybe_trim(t0));
        t.released(1);
        assert!(t.maybe_trim(t0));
        t.released(10 * AFTER_RELEASES);
        assert!(!t.maybe_trim(t0 + MIN_INTERVAL / 2));
        assert!(t.maybe_trim(t0 + MIN_INTERVAL));
        assert!(!t.maybe_trim(t0 + 3 * MIN_INTERVAL));
    }
}
