//! Idempotent pushes: the answer to the first push with a caller's ID, kept for the
//! history TTL, so that a retry is answered the same and delivered nothing.
//!
//! Sharded by a hash of the ID; a push with an ID holds its shard's lock while it is
//! carried out, so two concurrent pushes with the same ID deliver once. Bounded: per
//! shard at most [`PER_SHARD`] IDs and [`MAX_BYTES`]` / 32` bytes of IDs and answers (the
//! oldest go first; an answer names every recipient, so a push to many users is large),
//! and each for the TTL.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use parking_lot::Mutex;

const SHARDS: usize = 32;
/// IDs remembered per shard: 131 072 in all.
pub const PER_SHARD: usize = 4096;
/// Bytes of IDs and answers remembered in all.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// What one remembered answer costs.
fn cost(id: &str, answer: &Bytes) -> usize {
    id.len() + answer.len() + 96
}

#[derive(Debug, Default)]
struct Shard {
    answers: HashMap<Arc<str>, Bytes, RandomState>,
    order: VecDeque<(Instant, Arc<str>)>,
    bytes: usize,
}

/// Answers of pushes by the caller's ID.
#[derive(Debug)]
pub struct Idempotency {
    shards: Box<[Mutex<Shard>]>,
    pick: RandomState,
    ttl: Duration,
}

impl Idempotency {
    /// Remembers answers for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Idempotency {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pick: RandomState::default(),
            ttl,
        }
    }

    /// The answer already given for `id`, or `push()`'s, remembered when it is `Ok`.
    /// Returns the answer and whether it was a retry.
    pub fn once<E>(
        &self,
        id: &str,
        now: Instant,
        push: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<(Bytes, bool), E> {
        let mut shard = self.shards[self.pick.hash_one(id) as usize & (SHARDS - 1)].lock();
        while let Some((at, key)) = shard.order.front() {
            if *at + self.ttl > now
                && shard.order.len() <= PER_SHARD
                && shard.bytes <= MAX_BYTES / SHARDS
            {
                break;
            }
            let key = Arc::clone(key);
            shard.order.pop_front();
            if let Some(answer) = shard.answers.remove(&key) {
                shard.bytes -= cost(&key, &answer);
            }
        }
        if let Some(answer) = shard.answers.get(id) {
            return Ok((answer.clone(), true));
        }
        let answer = push()?;
        let key: Arc<str> = Arc::from(id);
        shard.bytes += cost(id, &answer);
        shard.answers.insert(Arc::clone(&key), answer.clone());
        shard.order.push_back((now, key));
        Ok((answer, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_gets_the_first_answer_until_the_ttl() {
        let d = Idempotency::new(Duration::from_secs(10));
        let t = Instant::now();
        let ok = |b: &'static str| move || Ok::<_, ()>(Bytes::from(b));
        assert_eq!(d.once("x", t, ok("1")), Ok((Bytes::from("1"), false)));
        assert_eq!(d.once("x", t, ok("2")), Ok((Bytes::from("1"), true)));
        assert_eq!(d.once("y", t, ok("3")), Ok((Bytes::from("3"), false)));
        // A failed push is not remembered: the retry is carried out.
        assert_eq!(d.once("z", t, || Err::<Bytes, _>(7)), Err(7));
        assert_eq!(d.once("z", t, ok("4")), Ok((Bytes::from("4"), false)));
        let later = t + Duration::from_secs(11);
        assert_eq!(d.once("x", later, ok("5")), Ok((Bytes::from("5"), false)));
    }

    #[test]
    fn ids_are_bounded() {
        let d = Idempotency::new(Duration::from_secs(1000));
        let t = Instant::now();
        for i in 0..SHARDS * PER_SHARD * 2 {
            let _ = d.once(&i.to_string(), t, || Ok::<_, ()>(Bytes::new()));
        }
        let held: usize = d.shards.iter().map(|s| s.lock().answers.len()).sum();
        assert!(held <= SHARDS * (PER_SHARD + 1), "{held}");
    }

    #[test]
    fn answer_bytes_are_bounded() {
        let d = Idempotency::new(Duration::from_secs(1000));
        let t = Instant::now();
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        for i in 0..4 * MAX_BYTES / big.len() {
            let _ = d.once(&i.to_string(), t, || Ok::<_, ()>(big.clone()));
        }
        let bytes: usize = d.shards.iter().map(|s| s.lock().bytes).sum();
        let held: usize = d
            .shards
            .iter()
            .map(|s| s.lock().answers.values().map(Bytes::len).sum::<usize>())
            .sum();
        assert!(
            held <= bytes && bytes <= MAX_BYTES + SHARDS * (big.len() + 200),
            "{bytes}"
        );
        assert!(bytes > MAX_BYTES / 2, "{bytes}");
    }
}
