//! The bus thread's stores in flight, per user (and per room): one at a time, so that each names the
//! seq it expects to follow (`Nats-Expected-Last-Subject-Sequence`) and its `prev` is
//! exact. Users are independent: stores for different users are all in flight at once.
//!
//! Each chain caches the user's last seq; a store that finds another node's message
//! there learns the right one from JetStream's "wrong last sequence" answer and is sent
//! again. Idle chains are dropped in bulk past [`MAX_IDLE`] (the cache is only an
//! optimisation: an unknown last seq costs one more round trip).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::interest::Key;
use super::nats::StoreJob;

/// Chains kept with nothing in flight before they are forgotten.
pub(super) const MAX_IDLE: usize = 65_536;
/// Stores waiting behind the one in flight, per user; more are refused.
pub(super) const MAX_QUEUED: usize = 4096;
/// Times a store is sent again after another node's message got in first.
pub(super) const MAX_ATTEMPTS: u32 = 16;

/// A store sent and not answered yet.
#[derive(Debug)]
pub(super) struct Busy {
    pub(super) req: u64,
    pub(super) job: StoreJob,
    /// The seq it was sent expecting as the user's last (its `prev`).
    pub(super) expected: u64,
    pub(super) attempts: u32,
    pub(super) deadline: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Chain {
    /// The user's last seq as last seen (`None`: not known).
    pub(super) last: Option<u64>,
    pub(super) busy: Option<Busy>,
    pub(super) queue: VecDeque<StoreJob>,
}

/// Every user's chain, and which user each request ID is for.
#[derive(Debug, Default)]
pub(super) struct Chains {
    pub(super) users: HashMap<Key, Chain>,
    pub(super) by_req: HashMap<u64, Key>,
}

impl Chains {
    /// Queues `job`; `Some(job)` if it is its user's turn now, `Err(job)` if its user
    /// has too many waiting.
    pub(super) fn push(&mut self, job: StoreJob) -> Result<Option<StoreJob>, StoreJob> {
        if self.users.len() > MAX_IDLE {
            self.users
                .retain(|_, c| c.busy.is_some() || !c.queue.is_empty());
        }
        let chain = self.users.entry(job.key()).or_default();
        if chain.busy.is_none() {
            return Ok(Some(job));
        }
        if chain.queue.len() >= MAX_QUEUED {
            return Err(job);
        }
        chain.queue.push_back(job);
        Ok(None)
    }

    /// The user's last seq as cached (0 if unknown: JetStream then says the right one).
    pub(super) fn last(&self, key: &Key) -> u64 {
        self.users.get(key).and_then(|c| c.last).unwrap_or(0)
    }

    /// Records that `busy` was sent.
    pub(super) fn sent(&mut self, busy: Busy) {
        let key = busy.job.key();
        self.by_req.insert(busy.req, key.clone());
        if let Some(c) = self.users.get_mut(&key) {
            c.busy = Some(busy);
        }
    }

    /// Takes the store that request `req` answers.
    pub(super) fn answered(&mut self, req: u64) -> Option<Busy> {
        let key = self.by_req.remove(&req)?;
        self.users.get_mut(&key)?.busy.take()
    }

    /// Sets the user's last seq (`None`: forget it).
    pub(super) fn set_last(&mut self, key: &Key, last: Option<u64>) {
        if let Some(c) = self.users.get_mut(key) {
            c.last = last;
        }
    }

    /// The user's next waiting store, if any.
    pub(super) fn next(&mut self, key: &Key) -> Option<StoreJob> {
        self.users.get_mut(key)?.queue.pop_front()
    }

    /// Takes the stores in flight past their deadline.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<Busy> {
        let late: Vec<u64> = self
            .users
            .values()
            .filter_map(|c| c.busy.as_ref())
            .filter(|b| b.deadline <= now)
            .map(|b| b.req)
            .collect();
        late.into_iter().filter_map(|r| self.answered(r)).collect()
    }

    /// Takes every store, in flight and waiting (the connection was lost), and forgets
    /// every cached seq.
    pub(super) fn drain(&mut self) -> Vec<StoreJob> {
        self.by_req.clear();
        let mut out = Vec::new();
        for (_, mut c) in self.users.drain() {
            out.extend(c.busy.take().map(|b| b.job));
            out.extend(c.queue.drain(..));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Kind;
    use bytes::Bytes;
    use std::sync::Arc;

    fn job(uid: &str) -> StoreJob {
        StoreJob {
            kind: Kind::User,
            id: Arc::from(uid),
            msg_id: String::new(),
            body: Bytes::new(),
            targets: None,
            done: None,
        }
    }

    fn k(uid: &str) -> Key {
        (Kind::User, Arc::from(uid))
    }

    fn busy(req: u64, uid: &str, deadline: Instant) -> Busy {
        Busy {
            req,
            job: job(uid),
            expected: 0,
            attempts: 0,
            deadline,
        }
    }

    #[test]
    fn one_in_flight_per_user() {
        let mut c = Chains::default();
        let t = Instant::now();
        let a = c.push(job("a")).unwrap().expect("a's turn");
        c.sent(Busy {
            req: 1,
            ..busy(0, "a", t)
        });
        drop(a);
        assert!(
            c.push(job("a")).unwrap().is_none(),
            "waits behind the first"
        );
        assert!(c.push(job("b")).unwrap().is_some(), "b is independent");
        let done = c.answered(1).unwrap();
        assert_eq!(&*done.job.id, "a");
        c.set_last(&k("a"), Some(9));
        assert_eq!(c.last(&k("a")), 9);
        let room = StoreJob {
            kind: Kind::Room,
            ..job("a")
        };
        assert!(c.push(room).unwrap().is_some(), "room a is not user a");
        assert!(c.next(&k("a")).is_some());
        assert!(c.next(&k("a")).is_none());
        assert!(c.answered(1).is_none(), "answered once");
    }

    #[test]
    fn queues_are_bounded_and_deadlines_kept() {
        let mut c = Chains::default();
        let t = Instant::now();
        c.push(job("a")).unwrap();
        c.sent(busy(5, "a", t));
        for _ in 0..MAX_QUEUED {
            assert!(c.push(job("a")).is_ok());
        }
        assert!(c.push(job("a")).is_err());
        assert_eq!(c.expired(t).len(), 1);
        assert_eq!(c.drain().len(), MAX_QUEUED);
        assert_eq!(c.last(&k("a")), 0);
    }
}
