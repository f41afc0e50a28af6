//! The control listener's clients, indexed twice so that neither accepting nor timing out
//! ever scans them: by eviction rank (who goes first when the table is full) and by
//! deadline (who times out next). Both are ordered sets over `(key, slab key)`, so
//! insert, update, remove, "first to evict" and "next deadline" are all O(log n).

use std::collections::BTreeSet;
use std::time::Instant;

use slab::Slab;

/// What a connection is doing, in the order connections are evicted when the table is
/// full: a connection further down the list is only evicted when none above it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Class {
    /// Its last response is delivered and its write side shut: only draining.
    Lingering,
    /// Connected but never sent a byte: what a lock-out attack is made of.
    Silent,
    /// Served at least one request and waiting, keep-alive, for the next.
    Idle,
    /// A request partly received or a response partly written.
    Busy,
}

/// Eviction order: by class, then idlest (earliest activity) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank {
    /// What the connection is doing.
    pub(super) class: Class,
    /// When it last made progress (bytes in or out, or its accept).
    pub(super) since: Instant,
}

/// When a connection's time runs out, and where it stands for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Schedule {
    /// Eviction rank.
    pub(super) rank: Rank,
    /// Close it at this instant unless it makes progress (its schedule is then renewed).
    pub(super) deadline: Instant,
}

#[derive(Debug)]
struct Entry<T> {
    value: T,
    schedule: Schedule,
}

/// Clients by slab key (the mio token), with the two orderings.
#[derive(Debug)]
pub(super) struct Table<T> {
    entries: Slab<Entry<T>>,
    by_rank: BTreeSet<(Rank, usize)>,
    by_deadline: BTreeSet<(Instant, usize)>,
}

impl<T> Table<T> {
    pub(super) fn new() -> Self {
        Table {
            entries: Slab::new(),
            by_rank: BTreeSet::new(),
            by_deadline: BTreeSet::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Inserts what `make` builds from the key it will live at (so it can register its
    /// socket under that token first); nothing is inserted if `make` fails.
    pub(super) fn insert_with<E>(
        &mut self,
        make: impl FnOnce(usize) -> Result<(T, Schedule), E>,
    ) -> Result<usize, E> {
        let entry = self.entries.vacant_entry();
        let key = entry.key();
        let (value, schedule) = make(key)?;
        entry.insert(Entry { value, schedule });
        self.by_rank.insert((schedule.rank, key));
        self.by_deadline.insert((schedule.deadline, key));
        Ok(key)
    }

    pub(super) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// Moves `key` in both orderings; a no-op when nothing changed, which is the common
    /// case for a connection that answered a request and is idle again.
    pub(super) fn reschedule(&mut self, key: usize, schedule: Schedule) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let old = entry.schedule;
        if old == schedule {
            return;
        }
        entry.schedule = schedule;
        if old.rank != schedule.rank {
            self.by_rank.remove(&(old.rank, key));
            self.by_rank.insert((schedule.rank, key));
        }
        if old.deadline != schedule.deadline {
            self.by_deadline.remove(&(old.deadline, key));
            self.by_deadline.insert((schedule.deadline, key));
        }
    }

    pub(super) fn remove(&mut self, key: usize) -> Option<T> {
        let entry = self.entries.try_remove(key)?;
        self.by_rank.remove(&(entry.schedule.rank, key));
        self.by_deadline.remove(&(entry.schedule.deadline, key));
        Some(entry.value)
    }

    /// The connection to evict first, and its class.
    pub(super) fn first_to_evict(&self) -> Option<(usize, Class)> {
        self.by_rank.first().map(|&(rank, key)| (key, rank.class))
    }

    /// A connection whose deadline is at or before `now`, earliest first.
    pub(super) fn expired(&self, now: Instant) -> Option<usize> {
        self.by_deadline
            .first()
            .filter(|&&(deadline, _)| deadline <= now)
            .map(|&(_, key)| key)
    }

    /// The earliest deadline, for the poll timeout.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|&(deadline, _)| deadline)
    }

    /// Class and deadline of `key`, for tests.
    #[cfg(test)]
    fn schedule(&self, key: usize) -> Option<Schedule> {
        self.entries.get(key).map(|e| e.schedule)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(base: Instant, class: Class, secs: u64, deadline_secs: u64) -> Schedule {
        Schedule {
            rank: Rank {
                class,
                since: base + Duration::from_secs(secs),
            },
            deadline: base + Duration::from_secs(deadline_secs),
        }
    }

    fn add(t: &mut Table<&'static str>, name: &'static str, s: Schedule) -> usize {
        t.insert_with(|_| Ok::<_, ()>((name, s))).unwrap()
    }

    #[test]
    fn eviction_prefers_lingering_then_silent_then_idle_then_busy_idlest_first() {
        let base = Instant::now();
        let mut t = Table::new();
        add(&mut t, "busy", at(base, Class::Busy, 0, 100));
        add(&mut t, "idle-old", at(base, Class::Idle, 1, 100));
        add(&mut t, "idle-new", at(base, Class::Idle, 5, 100));
        add(&mut t, "silent-new", at(base, Class::Silent, 9, 100));
        add(&mut t, "silent-old", at(base, Class::Silent, 3, 100));
        add(&mut t, "lingering", at(base, Class::Lingering, 8, 100));
        let mut order = Vec::new();
        while let Some((key, _)) = t.first_to_evict() {
            order.push(t.remove(key).unwrap());
        }
        assert_eq!(
            order,
            [
                "lingering",
                "silent-old",
                "silent-new",
                "idle-old",
                "idle-new",
                "busy"
            ]
        );
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn reschedule_moves_both_orderings_and_remove_forgets_them() {
        let base = Instant::now();
        let mut t = Table::new();
        let a = add(&mut t, "a", at(base, Class::Silent, 0, 5));
        let b = add(&mut t, "b", at(base, Class::Silent, 1, 6));
        assert_eq!(t.first_to_evict(), Some((a, Class::Silent)));
        assert_eq!(t.expired(base + Duration::from_secs(4)), None);
        assert_eq!(t.expired(base + Duration::from_secs(5)), Some(a));
        // `a` sends a request: it becomes idle with a later deadline.
        t.reschedule(a, at(base, Class::Idle, 2, 62));
        assert_eq!(t.schedule(a).map(|s| s.rank.class), Some(Class::Idle));
        assert_eq!(t.first_to_evict(), Some((b, Class::Silent)));
        assert_eq!(t.next_deadline(), Some(base + Duration::from_secs(6)));
        assert_eq!(t.expired(base + Duration::from_secs(7)), Some(b));
        assert_eq!(t.remove(b), Some("b"));
        assert_eq!(t.remove(b), None);
        assert_eq!(t.expired(base + Duration::from_secs(61)), None);
        assert_eq!(t.first_to_evict(), Some((a, Class::Idle)));
        // Rescheduling a removed key is harmless (a stale event).
        t.reschedule(b, at(base, Class::Busy, 0, 0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.by_rank.len(), 1);
        assert_eq!(t.by_deadline.len(), 1);
    }

    #[test]
    fn a_failed_insert_leaves_nothing_behind() {
        let mut t: Table<&str> = Table::new();
        assert_eq!(
            t.insert_with(|_| Err::<(&str, Schedule), _>("no")),
            Err("no")
        );
        assert_eq!(t.len(), 0);
        assert_eq!(t.first_to_evict(), None);
    }
}
