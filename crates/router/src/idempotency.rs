//! Idempotent pushes: the answer to the first push with a caller's ID, kept for the
//! history TTL, so that a retry is answered the same and delivered nothing.
//!
//! Sharded by a hash of the ID; a push with an ID holds its shard's lock while it is
//! carried out, so two concurrent pushes with the same ID deliver once. Bounded by memory,
//! not by a count: IDs and answers take at most `max_bytes` (`--idempotency-max-bytes`),
//! [`cost`] each, split evenly over the shards, each kept for the TTL. The window is the
//! TTL only while fewer pushes with an ID arrive within it than that memory holds
//! ([`Idempotency::capacity`]); past it the oldest go first, and each one forgotten before
//! its TTL is counted ([`Idempotency::evicted_early`]): its retry would be delivered again.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use parking_lot::Mutex;

use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 32;
/// Default bound on the memory of remembered IDs and answers: at a typical
/// [`TYPICAL_COST`] it holds about 1.8 million IDs, the 300 s TTL at 6 000 pushes a second
/// with an ID — above the ~5 000 a second a node with history on measured on 2 cores
/// (bench/RESULTS.md, docs/OPERATIONS.md "History and resume").
pub const DEFAULT_MAX_BYTES: usize = 512 * 1024 * 1024;
/// What one entry costs besides its ID and answer: the shared ID's allocation, its map
/// slot (with the map's spare capacity) and its place in the expiry queue.
const ENTRY_OVERHEAD: usize = 160;
/// A push to one user with a 36-byte ID: the ID, a ~100-byte answer and the overhead.
pub const TYPICAL_COST: usize = 36 + 100 + ENTRY_OVERHEAD;

/// What one remembered answer costs.
fn cost(id: &str, answer: &Bytes) -> usize {
    id.len() + answer.len() + ENTRY_OVERHEAD
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
    /// Bytes per shard.
    shard_bytes: usize,
    /// IDs forgotten before their TTL for lack of room.
    evicted_early: AtomicU64,
}

impl Idempotency {
    /// Remembers answers for `ttl`, in at most `max_bytes`.
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Idempotency {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pick: RandomState::default(),
            ttl,
            shard_bytes: max_bytes / SHARDS,
            evicted_early: AtomicU64::new(0),
        }
    }

    /// IDs of [`TYPICAL_COST`] the memory holds: the window is the TTL while fewer pushes
    /// with an ID than this arrive within it.
    pub fn capacity(&self) -> usize {
        self.shard_bytes * SHARDS / TYPICAL_COST
    }

    /// IDs forgotten before their TTL to stay within the memory bound.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early.load(Ordering::Relaxed)
    }

    /// Bytes held by remembered IDs and answers.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
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
        self.forget(&mut shard, now);
        if let Some(answer) = shard.answers.get(id) {
            return Ok((answer.clone(), true));
        }
        let answer = push()?;
        let key: Arc<str> = Arc::from(id);
        shard.bytes += cost(id, &answer);
        shard.answers.insert(Arc::clone(&key), answer.clone());
        shard.order.push_back((now, key));
        // Within the bound after the insert too, not only before it.
        self.forget(&mut shard, now);
        Ok((answer, false))
    }

    /// Forgets the expired IDs of `shard`, then the oldest live ones while it holds more
    /// than its bytes (counted: a retry of one would be delivered again).
    fn forget(&self, shard: &mut Shard, now: Instant) {
        while let Some((at, key)) = shard.order.front() {
            let live = *at + self.ttl > now;
            if live && shard.bytes <= self.shard_bytes {
                break;
            }
            if live {
                let first = self.evicted_early.fetch_add(1, Ordering::Relaxed) == 0;
                if first {
                    tracing::warn!(
                        capacity = self.capacity(),
                        ttl_secs = self.ttl.as_secs(),
                        "push IDs forgotten before their TTL: more pushes with an ID than \
                         idempotency_max_bytes holds; a retry of one would be delivered again \
                         (counted in pushgate_idempotency_evicted_total)"
                    );
                }
            }
            let key = Arc::clone(key);
            shard.order.pop_front();
            if let Some(answer) = shard.answers.remove(&key) {
                shard.bytes -= cost(&key, &answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_gets_the_first_answer_until_the_ttl() {
        let d = Idempotency::new(Duration::from_secs(10), DEFAULT_MAX_BYTES);
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

    /// Issue 31: a count bound (131 072 IDs) forgot IDs within the TTL at ~440 pushes a
    /// second. Bounded by memory, the window holds the TTL at the rate the memory allows,
    /// and what it cannot hold is counted.
    #[test]
    fn the_window_holds_the_ttl_at_its_capacity_and_counts_what_it_cannot() {
        let ttl = Duration::from_secs(300);
        let answer = Bytes::from(vec![b'a'; 100]);
        let id = |i: usize| format!("{i:036}");
        // 440 pushes a second for the whole TTL: 132 000 IDs, past the old count bound.
        let rate = 440;
        let n = rate * 300;
        let max_bytes = 2 * n * (36 + 100 + ENTRY_OVERHEAD);
        let d = Idempotency::new(ttl, max_bytes);
        assert!(d.capacity() >= n, "{}", d.capacity());
        let t0 = Instant::now();
        let at = |i: usize| t0 + Duration::from_millis((i * 1000 / rate) as u64);
        for i in 0..n {
            let _ = d.once(&id(i), at(i), || Ok::<_, ()>(answer.clone()));
        }
        // A retry of the first, just within its TTL, is still a retry.
        let last = at(n - 1);
        let retry = d.once(&id(0), last, || Ok::<_, ()>(Bytes::from("again")));
        assert_eq!(retry, Ok((answer.clone(), true)));
        assert_eq!(d.evicted_early(), 0);
        assert!(d.bytes() <= max_bytes);

        // A quarter of the memory: the oldest go before their TTL, and are counted.
        let small = Idempotency::new(ttl, max_bytes / 4);
        for i in 0..n {
            let _ = small.once(&id(i), at(i), || Ok::<_, ()>(answer.clone()));
        }
        assert!(small.bytes() <= max_bytes / 4, "never over its bound");
        let forgotten = small.evicted_early();
        assert!(forgotten as usize >= n / 3, "{forgotten}");
        let retry = small.once(&id(0), last, || Ok::<_, ()>(Bytes::from("again")));
        assert_eq!(retry, Ok((Bytes::from("again"), false)));
        // Expired ones are not counted as early.
        let later = last + ttl + Duration::from_secs(1);
        let _ = d.once("late", later, || Ok::<_, ()>(Bytes::new()));
        assert_eq!(d.evicted_early(), 0);
    }

    #[test]
    fn answer_bytes_are_bounded() {
        const MAX_BYTES: usize = 64 * 1024 * 1024;
        let d = Idempotency::new(Duration::from_secs(1000), MAX_BYTES);
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
        assert!(held <= bytes && bytes <= MAX_BYTES, "{bytes}");
        assert!(bytes > MAX_BYTES / 2, "{bytes}");
    }
}
