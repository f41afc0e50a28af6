//! Retained messages per user and per room (docs/PROTOCOL.md, "Delivery"): the last
//! `size` message frames of each stream, each kept `ttl`, and at most `max_bytes` in all.
//!
//! Streams are split into shards by a hash of the ID, each behind one mutex. The router
//! does a whole delivery under a stream's shard lock ([`History::lock`]): it allocates
//! the seq, appends the frame, collects the connections and hands the frame to their
//! reactors; a connection registers and snapshots the stream under the same lock. So
//! every message is either in a new connection's replay or delivered to it live, never
//! both and never neither, and one stream's messages reach each reactor inbox in order.
//!
//! Memory is bounded three ways: `size` frames per stream, `ttl` per frame (a shard drops
//! its expired frames, oldest first, whenever it is locked), and `max_bytes / SHARDS` per
//! shard (past it the shard's oldest frames go first). A stream with no frames left and
//! no connection is dropped with its device acks.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

/// Shards per history: the byte budget is split evenly among them.
pub const SHARDS: usize = 32;

/// Devices whose last ack a stream remembers; past it the oldest ack is forgotten (that
/// device then resumes from 0, like a new one).
pub const MAX_DEVICES: usize = 16;

/// What each retained frame costs beyond its bytes (entry, order slot, key reference, the
/// frame's shared header, the queues' growth slack): 129 B measured by
/// `cargo run --release -p router --example history_memory` (bench/RESULTS.md), so that
/// `history_max_bytes` bounds what the process really holds.
const ENTRY_OVERHEAD: usize = 128;

/// Bounds of a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Frames kept per stream; 0 turns history off.
    pub size: usize,
    /// How long a frame is kept.
    pub ttl: Duration,
    /// Bytes retained in all (frames plus bookkeeping), split evenly over the shards.
    pub max_bytes: usize,
    /// Bytes the IDs and answers of idempotent pushes may take (single node).
    pub idempotency_max_bytes: usize,
}

impl HistoryConfig {
    /// The defaults, which the binary's configuration and `--help` take from here. About
    /// 2 KiB per message at the full 100 for 1 300 users: far below the memory of the
    /// connections a node holds.
    pub const DEFAULT: HistoryConfig = HistoryConfig {
        size: 100,
        ttl: Duration::from_secs(300),
        max_bytes: 256 * 1024 * 1024,
        idempotency_max_bytes: crate::idempotency::DEFAULT_MAX_BYTES,
    };
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig::DEFAULT
    }
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    frame: Bytes,
}

/// One user's or room's stream.
#[derive(Debug, Default)]
struct Log {
    /// The last seq allocated (0: none yet).
    latest: u64,
    entries: VecDeque<Entry>,
    /// Last ack of each device.
    acks: SmallVec<[(Arc<str>, u64); 1]>,
    /// Whether a connection holds the stream open (its seq must not restart).
    pinned: bool,
}

#[derive(Debug, Default)]
struct Shard {
    logs: HashMap<Arc<str>, Log, RandomState>,
    /// Every retained frame of the shard in append order: (stream, seq, expiry, cost).
    order: VecDeque<(Arc<str>, u64, Instant, usize)>,
    bytes: usize,
    /// The highest seq of any stream dropped here: a new stream starts after it, so a
    /// user's seqs never go back, even after the stream was dropped and made again.
    floor: u64,
}

/// Retained messages of one kind of stream (users, or rooms).
#[derive(Debug)]
pub struct History {
    shards: Box<[Mutex<Shard>]>,
    pick: RandomState,
    config: HistoryConfig,
    bytes: AtomicUsize,
}

/// What a connection resuming after some seq gets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// The stream's latest seq.
    pub latest: u64,
    /// Retained frames after the resume point, in seq order.
    pub frames: Vec<Bytes>,
    /// Whether every message after the resume point was retained.
    pub recovered: bool,
}

/// Why an ack was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    /// Past the stream's latest seq.
    Unknown,
}

impl History {
    /// An empty history.
    pub fn new(config: HistoryConfig) -> Self {
        History {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pick: RandomState::default(),
            config,
            bytes: AtomicUsize::new(0),
        }
    }

    /// The bounds.
    pub fn config(&self) -> HistoryConfig {
        self.config
    }

    /// Bytes retained now (frames and bookkeeping).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Locks the shard of `id`, after dropping what expired there by `now`.
    pub fn lock(&self, id: &str, now: Instant) -> Locked<'_> {
        let i = self.pick.hash_one(id) as usize & (SHARDS - 1);
        let mut shard = self.shards[i].lock();
        let before = shard.bytes;
        shard.evict(now, usize::MAX);
        let freed = before - shard.bytes;
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        Locked {
            shard,
            history: self,
            now,
        }
    }
}

impl Shard {
    /// Drops frames that expired by `now`, then the oldest ones while over `budget`.
    fn evict(&mut self, now: Instant, budget: usize) {
        while let Some((id, seq, expires, cost)) = self.order.front() {
            if *expires > now && self.bytes <= budget {
                break;
            }
            let (id, seq, cost) = (Arc::clone(id), *seq, *cost);
            self.order.pop_front();
            self.bytes -= cost;
            if let Some(log) = self.logs.get_mut(&id) {
                // Frames already dropped by the per-stream bound are no longer there.
                if log.entries.front().is_some_and(|e| e.seq == seq) {
                    log.entries.pop_front();
                }
                if log.entries.is_empty() && !log.pinned {
                    self.floor = self.floor.max(log.latest);
                    self.logs.remove(&id);
                }
            }
        }
    }
}

/// A locked shard of a [`History`].
#[derive(Debug)]
pub struct Locked<'a> {
    shard: MutexGuard<'a, Shard>,
    history: &'a History,
    now: Instant,
}

impl Locked<'_> {
    /// Appends the next message of `id`, made by `frame(seq)`; returns its seq and frame.
    pub fn append(&mut self, id: &str, frame: impl FnOnce(u64) -> Bytes) -> (u64, Bytes) {
        let config = self.history.config;
        let shard = &mut *self.shard;
        let key = match shard.logs.get_key_value(id) {
            Some((k, _)) => Arc::clone(k),
            None => {
                let k: Arc<str> = Arc::from(id);
                let log = Log {
                    latest: shard.floor,
                    ..Log::default()
                };
                shard.logs.insert(Arc::clone(&k), log);
                k
            }
        };
        let before = shard.bytes;
        let Some(log) = shard.logs.get_mut(id) else {
            return (0, frame(0));
        };
        log.latest += 1;
        let seq = log.latest;
        let f = frame(seq);
        let cost = f.len() + ENTRY_OVERHEAD;
        log.entries.push_back(Entry {
            seq,
            frame: f.clone(),
        });
        // A frame dropped by the per-stream bound keeps its order slot, and its bytes stay
        // counted, until the slot reaches the front: the count only ever overestimates.
        while log.entries.len() > config.size {
            log.entries.pop_front();
        }
        shard
            .order
            .push_back((key, seq, self.now + config.ttl, cost));
        shard.bytes += cost;
        shard.evict(self.now, config.max_bytes / SHARDS);
        let after = shard.bytes;
        if after >= before {
            self.history
                .bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.history
                .bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
        (seq, f)
    }

    /// The latest seq of `id` (0 if it never had a message; a stream that was dropped
    /// answers the shard's floor, at least what it had).
    pub fn latest(&self, id: &str) -> u64 {
        self.shard
            .logs
            .get(id)
            .map_or(self.shard.floor, |l| l.latest)
    }

    /// The last ack of `device` on `id`.
    pub fn last_ack(&self, id: &str, device: &str) -> Option<u64> {
        let log = self.shard.logs.get(id)?;
        log.acks
            .iter()
            .find(|(d, _)| **d == *device)
            .map(|(_, seq)| *seq)
    }

    /// Records that `device` processed `id`'s messages up to `seq`.
    pub fn ack(&mut self, id: &str, device: &str, seq: u64) -> Result<(), AckError> {
        let floor = self.shard.floor;
        let Some(log) = self.shard.logs.get_mut(id) else {
            return if seq <= floor {
                Ok(())
            } else {
                Err(AckError::Unknown)
            };
        };
        if seq > log.latest {
            return Err(AckError::Unknown);
        }
        if let Some(i) = log.acks.iter().position(|(d, _)| **d == *device) {
            let (d, prev) = log.acks.remove(i);
            log.acks.push((d, prev.max(seq)));
        } else {
            if log.acks.len() >= MAX_DEVICES {
                log.acks.remove(0);
            }
            log.acks.push((Arc::from(device), seq));
        }
        Ok(())
    }

    /// The retained frames of `id` with `after < seq <= upto`, and whether every message
    /// in that range was retained.
    pub fn replay(&self, id: &str, after: u64, upto: u64) -> Replay {
        let Some(log) = self.shard.logs.get(id) else {
            let floor = self.shard.floor;
            return Replay {
                latest: floor,
                frames: Vec::new(),
                // No stream: any message after `after` would have made one with a seq
                // past the floor; below the floor, a dropped stream may have held some.
                recovered: after >= floor,
            };
        };
        let upto = upto.min(log.latest);
        let frames: Vec<Bytes> = log
            .entries
            .iter()
            .filter(|e| e.seq > after && e.seq <= upto)
            .map(|e| e.frame.clone())
            .collect();
        let first = log.entries.front().map_or(u64::MAX, |e| e.seq);
        Replay {
            latest: log.latest,
            frames,
            recovered: after >= upto || first <= after + 1,
        }
    }

    /// Keeps `id`'s stream, if it has one, while a connection holds it, so that its
    /// frames expiring do not drop it (its next seq would then start from the shard's
    /// floor, a jump for a client that saw every message); unpinned, a stream with no
    /// frames left is dropped. A user with no stream costs nothing here.
    pub fn pin(&mut self, id: &str, pinned: bool) {
        if pinned {
            if let Some(log) = self.shard.logs.get_mut(id) {
                log.pinned = true;
            }
        } else if let Some(log) = self.shard.logs.get_mut(id) {
            log.pinned = false;
            if log.entries.is_empty() {
                let latest = log.latest;
                self.shard.floor = self.shard.floor.max(latest);
                self.shard.logs.remove(id);
            }
        }
    }

    /// Streams held in this shard (for tests).
    pub fn streams(&self) -> usize {
        self.shard.logs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: usize, ttl: u64, max_bytes: usize) -> HistoryConfig {
        HistoryConfig {
            size,
            ttl: Duration::from_secs(ttl),
            max_bytes,
            ..HistoryConfig::default()
        }
    }

    fn f(tag: u64) -> Bytes {
        Bytes::from(tag.to_string())
    }

    fn tags(r: &Replay) -> Vec<String> {
        r.frames
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn seqs_are_per_stream_and_replays_in_order() {
        let h = History::new(cfg(100, 300, usize::MAX));
        let t = Instant::now();
        for i in 1..=5 {
            assert_eq!(h.lock("a", t).append("a", |s| f(s * 10)).0, i);
        }
        assert_eq!(h.lock("b", t).append("b", f).0, 1, "b has its own seq");
        let l = h.lock("a", t);
        assert_eq!(l.latest("a"), 5);
        let r = l.replay("a", 2, u64::MAX);
        assert_eq!(tags(&r), ["30", "40", "50"]);
        assert!(r.recovered);
        assert_eq!(r.latest, 5);
        assert!(l.replay("a", 5, u64::MAX).frames.is_empty());
        assert_eq!(tags(&l.replay("a", 1, 3)), ["20", "30"]);
    }

    #[test]
    fn the_count_bound_loses_the_oldest_and_says_so() {
        let h = History::new(cfg(3, 300, usize::MAX));
        let t = Instant::now();
        for _ in 0..10 {
            h.lock("a", t).append("a", f);
        }
        let l = h.lock("a", t);
        let r = l.replay("a", 0, u64::MAX);
        assert_eq!(tags(&r), ["8", "9", "10"]);
        assert!(!r.recovered);
        assert!(l.replay("a", 7, u64::MAX).recovered, "8.. all there");
        assert!(!l.replay("a", 6, u64::MAX).recovered, "7 is gone");
    }

    #[test]
    fn frames_expire_with_a_virtual_clock_and_empty_streams_go() {
        let h = History::new(cfg(100, 10, usize::MAX));
        let t0 = Instant::now();
        h.lock("a", t0).append("a", f);
        h.lock("a", t0 + Duration::from_secs(5)).append("a", f);
        let l = h.lock("a", t0 + Duration::from_secs(9));
        assert_eq!(l.replay("a", 0, u64::MAX).frames.len(), 2);
        drop(l);
        let mut l = h.lock("a", t0 + Duration::from_secs(11));
        let r = l.replay("a", 0, u64::MAX);
        assert_eq!(tags(&r), ["2"]);
        assert!(!r.recovered);
        l.ack("a", "phone", 2).unwrap();
        drop(l);
        let mut l = h.lock("a", t0 + Duration::from_secs(16));
        assert_eq!(
            l.last_ack("a", "phone"),
            None,
            "the stream and its acks are dropped"
        );
        assert_eq!(l.streams(), 0);
        assert_eq!(l.latest("a"), 2, "the seq does not go back");
        assert!(l.replay("a", 2, u64::MAX).recovered);
        assert!(!l.replay("a", 1, u64::MAX).recovered);
        assert_eq!(l.append("a", f).0, 3);
        drop(l);
        assert_eq!(h.bytes(), 1 + ENTRY_OVERHEAD);
    }

    #[test]
    fn a_pinned_stream_keeps_its_seq_after_its_frames_expire() {
        let h = History::new(cfg(100, 10, usize::MAX));
        let t0 = Instant::now();
        h.lock("a", t0).pin("a", true);
        assert_eq!(h.lock("a", t0).streams(), 0, "pinning makes no stream");
        h.lock("a", t0).append("a", f);
        h.lock("a", t0).pin("a", true);
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(h.lock("a", t1).latest("a"), 1);
        assert_eq!(h.lock("a", t1).append("a", f).0, 2);
        h.lock("a", t1).pin("a", false);
        assert_eq!(h.lock("a", t1).streams(), 1, "frames left: kept");
        assert_eq!(h.lock("a", t1 + Duration::from_secs(11)).streams(), 0);
    }

    #[test]
    fn the_byte_bound_holds_over_many_streams() {
        let max = SHARDS * 2000;
        let h = History::new(cfg(100, 300, max));
        let t = Instant::now();
        let body = Bytes::from(vec![b'x'; 300]);
        for i in 0..5000 {
            let id = format!("u{}", i % 700);
            h.lock(&id, t).append(&id, |_| body.clone());
            assert!(h.bytes() <= max, "{} > {max}", h.bytes());
        }
        assert!(h.bytes() > max / 2, "the budget is used: {}", h.bytes());
        // The newest frame of a stream survives; old ones were evicted first.
        let l = h.lock("u99", t);
        let r = l.replay("u99", 0, u64::MAX);
        assert!(!r.recovered);
        assert_eq!(r.frames.len(), 1);
        assert!(r.latest > 1, "seqs never restart: {}", r.latest);
    }

    #[test]
    fn acks_are_bounded_and_never_past_the_latest() {
        let h = History::new(cfg(100, 300, usize::MAX));
        let t = Instant::now();
        let mut l = h.lock("a", t);
        assert_eq!(l.ack("a", "d", 1), Err(AckError::Unknown));
        l.append("a", f);
        l.append("a", f);
        assert_eq!(l.ack("a", "d", 3), Err(AckError::Unknown));
        l.ack("a", "d", 2).unwrap();
        l.ack("a", "d", 1).unwrap();
        assert_eq!(
            l.last_ack("a", "d"),
            Some(2),
            "an older ack does not go back"
        );
        for i in 0..MAX_DEVICES + 5 {
            l.ack("a", &format!("dev{i}"), 1).unwrap();
        }
        assert_eq!(l.last_ack("a", "d"), None, "the oldest device is forgotten");
        assert_eq!(l.last_ack("a", &format!("dev{}", MAX_DEVICES + 4)), Some(1));
    }
}
