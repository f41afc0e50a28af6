//! Subscriptions whose user or room has no local connection left, kept for the
//! unsubscribe delay in case it comes straight back, oldest first.
//!
//! Bounded by distinct subjects, never by events: a subject appears once in the map, and
//! the queue (which keeps entries of subjects that came back until they reach its front)
//! is compacted whenever stale entries outnumber live ones.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::interest::Key;

/// Lingering subscriptions and when each may go.
#[derive(Debug, Default)]
pub(super) struct Lingering {
    /// When each may go, and the number of the departure that started its lingering.
    due: HashMap<Key, (Instant, u64)>,
    /// `(departure, due, key)` in the order they started lingering (all wait the same
    /// delay, so that is also the order they fall due); an entry is stale when `due` holds
    /// another departure for its key, or none.
    order: VecDeque<(u64, Instant, Key)>,
    departures: u64,
}

impl Lingering {
    /// `key` lost its last local connection; it may go at `due` (unless it was already
    /// lingering: the first departure counts).
    pub(super) fn start(&mut self, key: Key, due: Instant) {
        if self.due.contains_key(&key) {
            return;
        }
        self.departures += 1;
        self.due.insert(key.clone(), (due, self.departures));
        self.order.push_back((self.departures, due, key));
        if self.order.len() > 2 * self.due.len() + 64 {
            let live = &self.due;
            self.order
                .retain(|(n, _, k)| live.get(k).is_some_and(|(_, m)| m == n));
        }
    }

    /// `key` has a local connection again.
    pub(super) fn cancel(&mut self, key: &Key) {
        self.due.remove(key);
        if self.due.is_empty() {
            // Nothing live left: drop the stale entries and the memory they grew.
            self.order = VecDeque::new();
        }
    }

    /// How many subscriptions linger.
    pub(super) fn len(&self) -> usize {
        self.due.len()
    }

    /// Up to `limit` subscriptions to drop now, oldest first: those due by `now`, and
    /// beyond them as many as it takes to leave at most `keep` lingering.
    pub(super) fn take_due(&mut self, now: Instant, limit: usize, keep: usize) -> Vec<Key> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((_, when, _)) = self.order.front() else {
                break;
            };
            if *when > now && self.due.len() <= keep {
                break;
            }
            let Some((n, _, key)) = self.order.pop_front() else {
                break;
            };
            if self.due.get(&key).is_some_and(|(_, m)| *m == n) {
                self.due.remove(&key);
                out.push(key);
            }
        }
        if self.due.is_empty() && self.order.capacity() > 64 {
            self.order = VecDeque::new();
        }
        out
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.order.len()
    }
}

/// The most local users and rooms over the last `window`, which bounds how many
/// subscriptions may linger.
#[derive(Debug)]
pub(super) struct RecentPeak {
    peak: usize,
    until: Option<Instant>,
    window: Duration,
}

impl RecentPeak {
    pub(super) fn new(window: Duration) -> Self {
        RecentPeak {
            peak: 0,
            until: None,
            window,
        }
    }

    /// How many subscriptions may linger with `online` local users and rooms now: as many
    /// as left since the recent peak (a reconnect storm after a blip brings them all back,
    /// and lingering they cost no more than they did online), plus `extra`. Users who
    /// never come back while new ones keep arriving cannot pile up beyond that.
    pub(super) fn lingering_bound(&mut self, online: usize, extra: usize, now: Instant) -> usize {
        if online >= self.peak || self.until.is_none_or(|t| now >= t) {
            self.peak = online;
            self.until = Some(now + self.window);
        }
        self.peak.saturating_sub(online).saturating_add(extra)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::subject::Kind;
    use super::*;

    fn key(i: usize) -> Key {
        (Kind::User, Arc::from(format!("u{i}")))
    }

    /// Issue 19: a user who leaves and comes back over and over costs one entry, not one
    /// per departure.
    #[test]
    fn flapping_users_cost_distinct_entries() {
        let mut l = Lingering::default();
        let t0 = Instant::now();
        for round in 0..100_000 {
            let k = key(round % 10);
            l.start(k.clone(), t0 + Duration::from_secs(5));
            l.cancel(&k);
            l.start(k, t0 + Duration::from_secs(5));
        }
        assert_eq!(l.len(), 10);
        assert!(l.queued() <= 2 * 10 + 65, "{}", l.queued());
    }

    #[test]
    fn oldest_go_first_when_due_or_over_the_bound() {
        let mut l = Lingering::default();
        let t0 = Instant::now();
        for i in 0..10 {
            l.start(key(i), t0 + Duration::from_millis(i as u64));
        }
        l.cancel(&key(1));
        // Nothing due yet and within the bound: nothing goes.
        assert!(l.take_due(t0 - Duration::from_secs(1), 100, 9).is_empty());
        // Over a bound of 6: the three oldest still lingering go early.
        assert_eq!(
            l.take_due(t0 - Duration::from_secs(1), 100, 6),
            [key(0), key(2), key(3)]
        );
        // Due by t0 + 5 ms, two per call.
        assert_eq!(
            l.take_due(t0 + Duration::from_millis(5), 2, 100),
            [key(4), key(5)]
        );
        assert_eq!(
            l.take_due(t0 + Duration::from_millis(5), 2, 100),
            Vec::<Key>::new()
        );
        assert_eq!(l.len(), 4);
        assert_eq!(l.take_due(t0 + Duration::from_secs(1), 100, 100).len(), 4);
        assert_eq!(l.len(), 0);
    }
}

/// Issue 19: churn through new IDs (a few hundred online, each group gone for good before
/// the delay ends) kept every departed user subscribed for the whole delay, so the
/// subscriptions grew with the churn rate. Bounded, they stay within the online peak plus
/// the extra; a blip (everyone gone at once, then back) drops nobody early.
#[cfg(test)]
mod churn {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::subject::Kind;
    use super::*;

    const ONLINE: usize = 300;
    const EXTRA: usize = 50;

    /// Runs `rounds` of churn, one a second with a 5 s delay; the most subscriptions held.
    fn churn(rounds: usize, fresh_ids: bool, bounded: bool) -> usize {
        let delay = Duration::from_secs(5);
        let mut lingering = Lingering::default();
        let mut peak = RecentPeak::new(delay);
        let t0 = Instant::now();
        let mut most = 0;
        for round in 0..rounds {
            let now = t0 + Duration::from_secs(round as u64);
            let gen = if fresh_ids { round } else { 0 };
            let ids: Vec<Key> = (0..ONLINE)
                .map(|i| (Kind::User, Arc::from(format!("g{gen}-u{i}"))))
                .collect();
            for k in &ids {
                lingering.cancel(k);
            }
            most = most.max(ONLINE + lingering.len());
            peak.lingering_bound(ONLINE, EXTRA, now);
            for k in ids {
                lingering.start(k, now + delay);
            }
            let keep = if bounded {
                peak.lingering_bound(0, EXTRA, now)
            } else {
                usize::MAX
            };
            let _ = lingering.take_due(now, usize::MAX, keep);
        }
        most
    }

    #[test]
    fn fresh_ids_stay_within_the_online_peak_plus_the_extra() {
        assert!(
            churn(60, true, true) <= 2 * ONLINE + EXTRA,
            "{}",
            churn(60, true, true)
        );
        // What it was: every departed group subscribed for the whole delay.
        assert!(churn(60, true, false) >= 5 * ONLINE);
    }

    #[test]
    fn a_blip_drops_nobody_early() {
        let delay = Duration::from_secs(5);
        let mut lingering = Lingering::default();
        let mut peak = RecentPeak::new(delay);
        let t0 = Instant::now();
        // Long steady with ONLINE users, then all gone at once.
        for s in 0..100 {
            peak.lingering_bound(ONLINE, EXTRA, t0 + Duration::from_secs(s));
        }
        let now = t0 + Duration::from_secs(100);
        for i in 0..ONLINE {
            lingering.start((Kind::User, Arc::from(format!("u{i}"))), now + delay);
        }
        let keep = peak.lingering_bound(0, EXTRA, now + Duration::from_secs(1));
        assert!(lingering
            .take_due(now + Duration::from_secs(1), usize::MAX, keep)
            .is_empty());
        assert_eq!(churn(60, false, true), ONLINE);
    }
}
