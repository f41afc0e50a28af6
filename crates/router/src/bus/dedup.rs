//! Push IDs seen lately, so the copies of a multi-recipient push (one per recipient
//! subject) are delivered once. Copies of one push are published back to back by one
//! connection, so they arrive within moments of each other; the memory is bounded both
//! by age and by count.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct RecentIds {
    seen: HashSet<Box<str>>,
    order: VecDeque<(Instant, Box<str>)>,
    window: Duration,
    max: usize,
}

impl RecentIds {
    pub(crate) fn new(window: Duration, max: usize) -> Self {
        RecentIds {
            seen: HashSet::new(),
            order: VecDeque::new(),
            window,
            max: max.max(1),
        }
    }

    /// True the first time `id` is offered within the window.
    pub(crate) fn first_sight(&mut self, id: &str, now: Instant) -> bool {
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) <= self.window && self.order.len() < self.max {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains(id) {
            return false;
        }
        let id: Box<str> = id.into();
        self.seen.insert(id.clone());
        self.order.push_back((now, id));
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_id_within_the_window() {
        let t0 = Instant::now();
        let mut r = RecentIds::new(Duration::from_secs(10), 100);
        assert!(r.first_sight("a", t0));
        assert!(!r.first_sight("a", t0));
        assert!(r.first_sight("b", t0));
        assert!(!r.first_sight("a", t0 + Duration::from_secs(9)));
        // Past the window the old IDs are forgotten.
        assert!(r.first_sight("a", t0 + Duration::from_secs(11)));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn bounded_by_count() {
        let t0 = Instant::now();
        let mut r = RecentIds::new(Duration::from_secs(60), 3);
        for id in ["a", "b", "c", "d", "e"] {
            assert!(r.first_sight(id, t0));
        }
        assert!(r.len() <= 3);
        assert!(!r.first_sight("e", t0));
    }
}
