//! The undelivered hook's deadlines: a message to a user that none of the user's devices
//! acknowledged within `after` becomes a notice for the backend (docs/API.md,
//! "Undelivered hook"), which then sends a mobile notification.
//!
//! The node that accepted the push owns the message's deadline, so a cluster gives one
//! notice per message. Acks are cumulative per device (`{"type":"ack","seq":N}` covers
//! every seq up to N): the tracker keeps, per user with a deadline pending, the highest
//! seq any device acked. This node's connections report their acks directly; in a cluster
//! the other nodes' acks, which they store in JetStream on `<prefix>.h.ack.<user>.<device>`,
//! reach it through a subscription to those subjects.
//!
//! A thread of its own sleeps until the oldest deadline, so neither a reactor nor the bus
//! thread ever waits for it; deadlines are kept in arrival order (they all wait the same
//! `after`). Bounded by `max_pending`: past it a message is not tracked, and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use crate::bus::stats::Counter;

/// One message nobody acknowledged in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unacked {
    /// The message ID (the pusher's `id`, or the one assigned).
    pub id: String,
    /// Its seq in the user's stream.
    pub seq: u64,
}

/// Where the node's events go (the webhook, the bus's event subject). Called on the
/// tracker's thread and on reactors: must not block.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Messages to `uid` that no device acknowledged within the deadline, in seq order.
    fn undelivered(&self, uid: &str, messages: Vec<Unacked>);
    /// A connection of `uid` opened (`true`) or closed, for the bus's event subject.
    fn connection(&self, _uid: &str, _device: Option<&str>, _conn: &str, _opened: bool) {}
}

/// What the tracker counts (`pushgate_undelivered_total{result}`).
#[derive(Debug, Default)]
pub struct UndeliveredStats {
    /// Messages given a deadline.
    pub tracked: Counter,
    /// Acknowledged in time: no notice.
    pub acked: Counter,
    /// Not acknowledged in time: a notice was handed to the sink.
    pub notified: Counter,
    /// Not tracked: `max_pending` deadlines were pending already.
    pub dropped: Counter,
}

/// Results in the order of [`UndeliveredStats`], for `/metrics`.
pub const UNDELIVERED_RESULTS: [&str; 4] = ["tracked", "acked", "notified", "dropped"];

#[derive(Debug)]
struct Pending {
    due: Instant,
    uid: Arc<str>,
    id: String,
    seq: u64,
}

#[derive(Debug, Default)]
struct User {
    /// Deadlines of the user still pending.
    pending: u32,
    /// The highest seq any of the user's devices acknowledged since.
    acked: u64,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Pending>,
    users: HashMap<Arc<str>, User>,
}

/// The deadlines of the messages this node accepted.
#[derive(Debug)]
pub struct Deadlines {
    after: Duration,
    max_pending: usize,
    state: Mutex<State>,
    wake: Condvar,
    stats: UndeliveredStats,
}

impl Deadlines {
    /// Deadlines `after` each message, at most `max_pending` at a time.
    pub fn new(after: Duration, max_pending: usize) -> Arc<Self> {
        Arc::new(Deadlines {
            after,
            max_pending,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            stats: UndeliveredStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &UndeliveredStats {
        &self.stats
    }

    /// Messages waiting for their deadline.
    pub fn pending(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// A message to `uid` with `seq` was accepted here: its deadline starts now.
    pub fn track(&self, uid: &str, id: &str, seq: u64) {
        let mut s = self.state.lock();
        if s.queue.len() >= self.max_pending {
            drop(s);
            self.stats.dropped.add(1);
            return;
        }
        let key = match s.users.get_key_value(uid) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(uid),
        };
        s.users.entry(Arc::clone(&key)).or_default().pending += 1;
        let was_empty = s.queue.is_empty();
        s.queue.push_back(Pending {
            due: Instant::now() + self.after,
            uid: key,
            id: id.to_owned(),
            seq,
        });
        drop(s);
        self.stats.tracked.add(1);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// A device of `uid` acknowledged everything up to `seq` (here or on another node).
    /// Remembered only while the user has a deadline pending.
    pub fn acked(&self, uid: &str, seq: u64) {
        if let Some(u) = self.state.lock().users.get_mut(uid) {
            u.acked = u.acked.max(seq);
        }
    }

    /// Ends the messages whose deadline passed at `now`: the unacknowledged ones, by
    /// user in seq order.
    fn take_due(&self, now: Instant) -> Vec<(Arc<str>, Vec<Unacked>)> {
        let mut out: Vec<(Arc<str>, Vec<Unacked>)> = Vec::new();
        let mut s = self.state.lock();
        while s.queue.front().is_some_and(|p| p.due <= now) {
            let Some(p) = s.queue.pop_front() else {
                break;
            };
            let acked = match s.users.get_mut(&p.uid) {
                Some(u) => {
                    u.pending = u.pending.saturating_sub(1);
                    let acked = u.acked >= p.seq;
                    if u.pending == 0 {
                        s.users.remove(&p.uid);
                    }
                    acked
                }
                None => false,
            };
            if acked {
                self.stats.acked.add(1);
                continue;
            }
            self.stats.notified.add(1);
            let m = Unacked {
                id: p.id,
                seq: p.seq,
            };
            match out.iter_mut().find(|(u, _)| *u == p.uid) {
                Some((_, ms)) => ms.push(m),
                None => out.push((p.uid, vec![m])),
            }
        }
        out
    }

    /// Runs the deadlines for the life of the process, handing notices to `sink`.
    pub fn run(&self, sink: &dyn EventSink) {
        loop {
            for (uid, messages) in self.take_due(Instant::now()) {
                sink.undelivered(&uid, messages);
            }
            let mut s = self.state.lock();
            let until = s
                .queue
                .front()
                .map_or(Instant::now() + Duration::from_secs(3600), |p| p.due);
            if until > Instant::now() {
                let _ = self.wake.wait_until(&mut s, until);
            }
        }
    }

    /// Starts [`Deadlines::run`] on a thread of its own.
    pub fn start(
        self: &Arc<Self>,
        sink: Arc<dyn EventSink>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("pushgate-undelivered".into())
            .spawn(move || me.run(&*sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacked_messages_are_noticed_once_acked_ones_not() {
        let d = Deadlines::new(Duration::ZERO, 10);
        d.track("alice", "m1", 1);
        d.track("alice", "m2", 2);
        d.track("bob", "m3", 7);
        d.acked("alice", 1);
        d.acked("carol", 9);
        let due = d.take_due(Instant::now() + Duration::from_secs(1));
        assert_eq!(due.len(), 2);
        assert_eq!(&*due[0].0, "alice");
        assert_eq!(
            due[0].1,
            [Unacked {
                id: "m2".into(),
                seq: 2
            }]
        );
        assert_eq!((&*due[1].0, due[1].1[0].seq), ("bob", 7));
        assert!(d
            .take_due(Instant::now() + Duration::from_secs(2))
            .is_empty());
        assert_eq!(
            (d.stats.acked.get(), d.stats.notified.get()),
            (1, 2),
            "each message once"
        );
        assert!(d.state.lock().users.is_empty(), "nothing kept after");
    }

    #[test]
    fn deadlines_are_bounded() {
        let d = Deadlines::new(Duration::from_secs(60), 2);
        for seq in 1..=5 {
            d.track("u", "m", seq);
        }
        assert_eq!((d.pending(), d.stats.dropped.get()), (2, 3));
        assert!(d.take_due(Instant::now()).is_empty(), "not due yet");
    }
}
