//! What a clustered node keeps per user it holds, so that each of its connections sees
//! every stored message once and in seq order (docs/BUS.md, "History in a cluster").
//!
//! Stored messages reach a node live on the core subjects, each with its seq and the
//! user's seq before it (`prev`): from this node's own stores, from the other nodes'.
//! Core NATS is at most once and two nodes' live copies may cross, so per user the node
//! keeps the last seq it handed to its connections and holds back what does not follow
//! it: a copy at or below it is a duplicate; one whose `prev` is past it means something
//! is missing, fetched from the stream (a "fill") before anything later is delivered.
//!
//! A live copy's seq and prev are the publisher's word: backends may publish on the same
//! subjects (docs/BUS.md, "What a backend may send"). So a copy advances the user's last
//! seq only where it can stand in the chain — right after the last one delivered, or once
//! the stream itself returned it — and one that cannot is dropped and counted
//! (`unplaceable`), never made the point later messages are measured from:
//! - `prev >= seq` is no link of any chain;
//! - a copy past the last seq whose `prev` is below it would skip a link delivered here;
//! - a gap is fetched up to the held copy itself, and the copies the stream does not
//!   return are dropped, so a forged `prev` or seq cannot move the last seq;
//! - a copy at or below the last seq that names the same `prev` as the last one delivered
//!   forks the chain: one of the two is not in the stream, so the last seq goes back to
//!   that `prev` and the stream is asked what follows it.
//!
//! A forged copy that continues the chain (right `prev`, any seq) is delivered once, like
//! any message a backend publishes; the next real message forks from it and repairs the
//! chain.
//!
//! The entry lives while the user has a connection here. Its shard's lock is held while
//! frames are handed to the reactors, so one user's frames enter each inbox in order, and
//! while a connection registers, so that it gets every message after the entry's last
//! seq live and the ones up to it from its replay.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use foldhash::fast::RandomState;
use parking_lot::{Mutex, MutexGuard};

use crate::bus::stats::Counter;
use crate::bus::Kind;

/// Shards of the per-user table.
const SHARDS: usize = 64;

/// Messages of one user held back (waiting for a fill, or for the connection opening to
/// learn where to start) at most; past it the oldest is dropped, and fetched from the
/// stream by the fill its absence causes.
pub const MAX_HELD: usize = 1024;

/// How far past the highest seq the stream has vouched for to this node a live copy's seq
/// may be and still be placed on its word: beyond it, the stream is asked first. A forged
/// chain of copies can then shadow the user's real seqs only up to this many stream
/// messages ahead of what the node has seen, not up to `u64::MAX`.
pub const SEQ_ALLOWANCE: u64 = 1 << 16;

/// A range of seqs to fetch from the stream: after `.0`, up to `.1`.
pub type Gap = (u64, u64);

/// One user's (or room's) state on this node; `F` is what is delivered (a frame, or a
/// room's frame and its targets).
#[derive(Debug)]
pub struct UserSeq<F = Bytes> {
    /// The last seq handed to this node's connections (`None`: the first connection is
    /// still learning the user's latest seq).
    last: Option<u64>,
    /// Where delivery started: connections that registered before it replay up to here,
    /// everything after went to them live.
    started: Option<u64>,
    /// Once the latest seq could not be learnt: start from the next message that arrives.
    start_on_next: bool,
    /// A fill is under way.
    filling: bool,
    /// The `prev` of the copy that set `last` live (not through a fill): a later copy
    /// naming it too forks the chain.
    last_prev: Option<u64>,
    /// Copies with a seq past this are placed only once the stream returned them.
    ceiling: u64,
    /// The last seq before a fork rolled it back: if the stream returns it, it was
    /// delivered already.
    forked_from: Option<u64>,
    /// Messages held back: seq → (prev, frame).
    held: BTreeMap<u64, (u64, F)>,
}

impl<F> Default for UserSeq<F> {
    fn default() -> Self {
        UserSeq {
            last: None,
            started: None,
            start_on_next: false,
            filling: false,
            last_prev: None,
            ceiling: u64::MAX,
            forked_from: None,
            held: BTreeMap::new(),
        }
    }
}

/// What a step produced: frames to deliver now, in order, and a gap to fetch.
#[derive(Debug, PartialEq, Eq)]
pub struct Step<F = Bytes> {
    /// Frames for every connection of the user here, in order.
    pub frames: Vec<F>,
    /// The range to fetch before anything held is delivered.
    pub fill: Option<Gap>,
    /// Copies dropped as duplicates.
    pub duplicates: u64,
    /// Held messages dropped past [`MAX_HELD`].
    pub overflow: u64,
    /// Copies that cannot stand in the chain, dropped.
    pub unplaceable: u64,
}

impl<F> Default for Step<F> {
    fn default() -> Self {
        Step {
            frames: Vec::new(),
            fill: None,
            duplicates: 0,
            overflow: 0,
            unplaceable: 0,
        }
    }
}

impl<F> UserSeq<F> {
    /// The last seq handed to this node's connections, once known.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// A user whose connections here started with no seq (they opened while the stream
    /// was not there): delivery starts at the next message that arrives.
    pub fn from_next() -> Self {
        UserSeq {
            start_on_next: true,
            ..UserSeq::default()
        }
    }

    /// Where delivery started (see [`UserSeq::start`]).
    pub fn started(&self) -> Option<u64> {
        self.started
    }

    /// The highest seq a live copy may have to be placed without asking the stream.
    pub fn set_ceiling(&mut self, ceiling: u64) {
        self.ceiling = ceiling;
    }

    /// A live message.
    pub fn live(&mut self, seq: u64, prev: u64, frame: F) -> Step<F> {
        let mut step = Step::default();
        if prev >= seq {
            step.unplaceable += 1;
            return step;
        }
        if let Some(last) = self.last {
            let forks = seq != last && self.last_prev == Some(prev);
            if forks && !self.filling {
                // Two copies after the same link: ask the stream which is in the chain.
                // (Not filling, nothing is held: it was all delivered.)
                self.forked_from = Some(last);
                self.last = Some(prev);
                self.last_prev = None;
                self.held.insert(seq, (prev, frame));
                self.filling = true;
                step.fill = Some((prev, seq));
                // One of the two is not in the chain: counted once here.
                step.unplaceable += 1;
                return step;
            }
            if seq > last && prev < last {
                step.unplaceable += 1;
                return step;
            }
        }
        if self.last.is_none() && self.start_on_next {
            self.last = Some(prev);
            self.started = Some(prev);
            self.start_on_next = false;
        }
        if self.last.is_some_and(|l| seq <= l) || self.held.contains_key(&seq) {
            step.duplicates += 1;
            return step;
        }
        self.held.insert(seq, (prev, frame));
        if self.held.len() > MAX_HELD {
            self.held.pop_first();
            step.overflow += 1;
        }
        self.drain(&mut step);
        step
    }

    /// A connection that registered with no start known learnt the user's latest seq
    /// (`None`: it could not; start from the next message). The first to get here sets
    /// the start; the others find it set ([`UserSeq::started`]).
    pub fn start(&mut self, latest: Option<u64>) -> Step<F> {
        let mut step = Step::default();
        if self.last.is_none() {
            self.last = match latest {
                Some(l) => Some(l),
                None => self.held.first_key_value().map(|(_, (prev, _))| *prev),
            };
            self.started = self.last;
            self.start_on_next = self.last.is_none();
        }
        self.drain(&mut step);
        step
    }

    /// A fill ended: the messages of the gap that the stream still had (in order; `Err`
    /// if the fetch failed). Whatever it did not return is skipped.
    ///
    /// A gap reaches up to a held copy, so the stream's answer says whether that copy is in
    /// the chain: held copies up to the gap's end that it did not return are dropped
    /// (forged, or expired meanwhile) rather than believed. When the fetch failed, the held
    /// copy that asked is delivered after the gap unchecked (the stream is not answering;
    /// live delivery goes on).
    pub fn filled(&mut self, gap: Gap, fetched: Result<Vec<(u64, F)>, ()>) -> Step<F> {
        let mut step = Step::default();
        self.filling = false;
        let delivered = self.forked_from.take();
        let Some(last) = self.last.as_mut() else {
            return step;
        };
        match fetched {
            Ok(messages) => {
                for (seq, frame) in messages {
                    if seq > *last && seq <= gap.1 {
                        // From the stream: nothing forks from it.
                        *last = seq;
                        self.last_prev = None;
                        if Some(seq) != delivered {
                            step.frames.push(frame);
                        }
                    }
                }
                let before = self.held.len();
                let upto = gap.1;
                let at = *last;
                self.held.retain(|&s, _| s > upto || s <= at);
                step.unplaceable += (before - self.held.len()) as u64;
            }
            Err(()) => {
                if let Some((prev, frame)) = self.held.remove(&gap.1) {
                    if gap.1 > *last {
                        *last = gap.1;
                        self.last_prev = Some(prev);
                        step.frames.push(frame);
                    }
                }
            }
        }
        self.drain(&mut step);
        step
    }

    /// Delivers what follows the last seq; stops at a gap and asks for it.
    fn drain(&mut self, step: &mut Step<F>) {
        if self.filling {
            return;
        }
        let Some(last) = self.last.as_mut() else {
            return;
        };
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            let prev = entry.get().0;
            if seq <= *last {
                entry.remove();
                step.duplicates += 1;
            } else if prev == *last && seq > self.ceiling {
                // Far past anything the stream vouched for: its word first.
                self.filling = true;
                step.fill = Some((*last, seq));
                return;
            } else if prev == *last {
                let (_, frame) = entry.remove();
                *last = seq;
                self.last_prev = Some(prev);
                step.frames.push(frame);
            } else if prev < *last {
                // It would skip the link delivered last.
                entry.remove();
                step.unplaceable += 1;
            } else {
                // Fetched up to the held copy itself: the stream vouches for it or not.
                self.filling = true;
                step.fill = Some((*last, seq));
                return;
            }
        }
    }
}

/// Counters of the clustered history.
#[derive(Debug, Default)]
pub struct ClusterHistoryStats {
    /// Live copies dropped because the connections here already had them.
    pub duplicates: Counter,
    /// Gaps fetched from the stream (a live copy lost, or overtaken by a later one).
    pub fills: Counter,
    /// Gaps the stream could not fill in time (those messages were skipped).
    pub fill_failures: Counter,
    /// Replays (on connect or `resume`) that failed or timed out.
    pub replay_failures: Counter,
    /// Held messages dropped past [`MAX_HELD`].
    pub overflow: Counter,
    /// Live copies that could not stand in the chain (a forged or corrupt seq), dropped.
    pub unplaceable: Counter,
    /// Catch-ups done: a subscription took effect and the stream's latest message for it
    /// was looked at (what was stored while the node was away is delivered then).
    pub catch_ups: Counter,
}

/// Counts live copies of `id`'s chain that could not stand in it, and logs them: the
/// first, then at each power of two, so a flood of forged copies costs a few lines.
pub fn count_unplaceable(stats: &ClusterHistoryStats, kind: Kind, id: &str, n: u64) {
    if n == 0 {
        return;
    }
    let before = stats.unplaceable.get();
    stats.unplaceable.add(n);
    let after = before + n;
    if before == 0 || (before + 1..=after).any(u64::is_power_of_two) {
        tracing::warn!(
            kind = ?kind,
            id,
            total = after,
            "bus copies with a seq that cannot stand in the stream's chain dropped \
             (forged or corrupt Pushgate-Seq/Pushgate-Prev; see docs/BUS.md)"
        );
    }
}

/// One shard of the per-user (or per-room) table.
pub type Shard<F = Bytes> = HashMap<Arc<str>, UserSeq<F>, RandomState>;

/// Work for the fill thread.
#[derive(Debug)]
pub enum FillJob {
    /// Fetch a gap of one user's (or room's) messages.
    Gap(Kind, Arc<str>, Gap),
    /// Read the user's (or room's) latest stored message and take it as if it arrived
    /// live (its subscription here just took effect: anything stored before was not seen
    /// live).
    CatchUp(Kind, Arc<str>),
}

/// A room's message as held: its frame and, for a push with several recipients, who
/// they were (connections reached through a listed user or an earlier listed room get
/// it from there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomFrame {
    /// The frame.
    pub frame: Bytes,
    /// `Pushgate-Targets`, if any.
    pub targets: Option<Arc<str>>,
}

/// The per-user (or per-room) table, sharded by a hash of the ID.
#[derive(Debug)]
pub struct UserSeqs<F = Bytes> {
    shards: Box<[Mutex<Shard<F>>]>,
    pick: RandomState,
    /// The highest seq the stream itself gave this node (its stores' acks, fills, reads).
    vouched: std::sync::atomic::AtomicU64,
}

impl<F> Default for UserSeqs<F> {
    fn default() -> Self {
        UserSeqs {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pick: RandomState::default(),
            vouched: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<F> UserSeqs<F> {
    /// A seq the stream itself gave this node.
    pub fn vouch(&self, seq: u64) {
        self.vouched
            .fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
    }

    /// The highest seq a live copy may carry to be placed on its word
    /// ([`SEQ_ALLOWANCE`] past the highest the stream vouched for).
    pub fn ceiling(&self) -> u64 {
        self.vouched
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_add(SEQ_ALLOWANCE)
    }

    /// Locks the shard of `uid`.
    pub fn lock(&self, uid: &str) -> MutexGuard<'_, Shard<F>> {
        let i = self.pick.hash_one(uid) as usize & (SHARDS - 1);
        self.shards[i].lock()
    }

    /// Users held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no user is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    fn tags(s: &Step) -> Vec<String> {
        s.frames
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut u = UserSeq::default();
        assert_eq!(tags(&u.start(Some(3))), Vec::<String>::new());
        assert_eq!(tags(&u.live(5, 3, f(5))), ["5"]);
        let d = u.live(5, 3, f(5));
        assert_eq!((d.frames.len(), d.duplicates), (0, 1));
        // 9 follows 7, which has not arrived: held, and 5..9 fetched (9 itself too: the
        // stream vouches for it).
        let s = u.live(9, 7, f(9));
        assert_eq!((s.frames.len(), s.fill), (0, Some((5, 9))));
        // 12 follows 9: held behind the fill, no second fill.
        assert_eq!(u.live(12, 9, f(12)), Step::default());
        // 7 arrives live meanwhile: held too.
        assert!(u.live(7, 5, f(7)).frames.is_empty());
        let s = u.filled((5, 9), Ok(vec![(7, f(7)), (9, f(9))]));
        assert_eq!(tags(&s), ["7", "9", "12"]);
        assert_eq!(
            s.duplicates, 2,
            "the held copies of 7 and 9 came with the fill too"
        );
        assert_eq!(u.last(), Some(12));
    }

    #[test]
    fn an_unfillable_gap_is_skipped() {
        let mut u = UserSeq::default();
        u.start(Some(0));
        let s = u.live(10, 8, f(10));
        assert_eq!(s.fill, Some((0, 10)));
        let s = u.filled((0, 10), Err(()));
        assert_eq!(tags(&s), ["10"]);
        assert_eq!(u.last(), Some(10));
    }

    #[test]
    fn held_until_the_start_is_known() {
        let mut u = UserSeq::default();
        assert!(u.live(4, 2, f(4)).frames.is_empty());
        assert!(u.live(6, 4, f(6)).frames.is_empty());
        // The opening connection's replay covers up to 4.
        let s = u.start(Some(4));
        assert_eq!(tags(&s), ["6"]);
        assert_eq!(s.duplicates, 1);
        // A second connection that registered meanwhile replays up to the start, not
        // up to what was delivered since (6 reached it live).
        assert!(u.start(Some(6)).frames.is_empty());
        assert_eq!((u.started(), u.last()), (Some(4), Some(6)));
        // Without a known start: from the first held one's prev.
        let mut v = UserSeq::default();
        v.live(8, 5, f(8));
        assert_eq!(tags(&v.start(None)), ["8"]);
        // Nothing held: from the next one to arrive.
        let mut w = UserSeq::default();
        w.start(None);
        assert_eq!(tags(&w.live(30, 20, f(30))), ["30"]);
    }

    #[test]
    fn holding_is_bounded() {
        let mut u = UserSeq::default();
        let mut overflow = 0;
        for i in 1..=(MAX_HELD as u64 + 10) {
            overflow += u.live(i, i - 1, f(i)).overflow;
        }
        assert_eq!(overflow, 10);
        let s = u.start(Some(0));
        // The first ten were dropped: fetched by a fill (up to the first held).
        assert_eq!(s.fill, Some((0, 11)));
    }

    /// Issue 31: one bus message with `Pushgate-Seq: 18446744073709551615` made every
    /// later message of the user a "duplicate". Whatever its `prev`, it either stands in
    /// the chain once (and the next real message repairs it) or is dropped and counted;
    /// the user's later messages are delivered.
    #[test]
    fn a_forged_seq_never_silences_later_messages() {
        const POISON: u64 = u64::MAX;
        for forged_prev in [0, 2, 3, 4, 5, 6, 1_000, POISON - 1, POISON] {
            let mut u = UserSeq::default();
            u.start(Some(3));
            assert_eq!(tags(&u.live(5, 3, f(5))), ["5"]);
            let mut s = u.live(POISON, forged_prev, f(POISON));
            let mut unplaceable = s.unplaceable;
            let mut delivered = tags(&s);
            // What the stream holds of the user (its answer to a fill).
            let stream = |gap: Gap, seqs: &[u64]| {
                Ok(seqs
                    .iter()
                    .filter(|&&q| q > gap.0 && q <= gap.1)
                    .map(|&q| (q, f(q)))
                    .collect())
            };
            if let Some(gap) = s.fill {
                s = u.filled(gap, stream(gap, &[5]));
                unplaceable += s.unplaceable;
                delivered.extend(tags(&s));
            }
            // The next real message, and the one after it.
            let mut s = u.live(8, 5, f(8));
            if let Some(gap) = s.fill {
                s = u.filled(gap, stream(gap, &[5, 8]));
            }
            unplaceable += s.unplaceable;
            delivered.extend(tags(&s));
            let s = u.live(10, 8, f(10));
            delivered.extend(tags(&s));
            assert_eq!(u.last(), Some(10), "prev {forged_prev}");
            let real: Vec<&String> = delivered
                .iter()
                .filter(|t| *t != "18446744073709551615")
                .collect();
            // Each real message once (a fork re-reads from the stream, but not what was
            // delivered at the fork).
            assert_eq!(real, ["8", "10"], "prev {forged_prev}: {delivered:?}");
            // Delivered once as any backend's message would be, or dropped and counted.
            assert!(
                delivered.contains(&POISON.to_string()) || unplaceable >= 1,
                "prev {forged_prev}: {delivered:?}, {unplaceable} unplaceable"
            );
        }
    }

    #[test]
    fn copies_that_cannot_stand_in_the_chain_are_dropped_and_counted() {
        let mut u = UserSeq::default();
        u.start(Some(10));
        // prev not below seq.
        assert_eq!(u.live(12, 12, f(12)).unplaceable, 1);
        assert_eq!(u.live(12, 20, f(12)).unplaceable, 1);
        // Past the last seq, but skipping it.
        assert_eq!(tags(&u.live(11, 10, f(11))), ["11"]);
        assert_eq!(u.live(15, 9, f(15)).unplaceable, 1);
        assert_eq!(u.last(), Some(11));
        // A gap whose held copy the stream does not have: dropped at the fill.
        let s = u.live(30, 20, f(30));
        assert_eq!(s.fill, Some((11, 30)));
        let s = u.filled((11, 30), Ok(vec![(14, f(14))]));
        assert_eq!((tags(&s), s.unplaceable), (vec!["14".to_owned()], 1));
        assert_eq!(u.last(), Some(14));
    }

    /// A forged chain of two copies (the first continuing the chain, the second with a
    /// seq far ahead) is stopped at the ceiling: the stream is asked, and the real
    /// messages after it are delivered.
    #[test]
    fn a_forged_chain_cannot_run_past_the_ceiling() {
        let mut u = UserSeq::default();
        u.start(Some(100));
        u.set_ceiling(100 + SEQ_ALLOWANCE);
        assert_eq!(tags(&u.live(110, 100, f(110))), ["110"]);
        // Forged: continues from 110, then jumps to u64::MAX.
        assert_eq!(tags(&u.live(120, 110, f(120))), ["120"]);
        let s = u.live(u64::MAX, 120, f(u64::MAX));
        assert_eq!((s.frames.len(), s.fill), (0, Some((120, u64::MAX))));
        // The stream has 130 after 120 (real, prev 110 — what the node could not know).
        let s = u.filled((120, u64::MAX), Ok(vec![(130, f(130))]));
        assert_eq!((tags(&s), s.unplaceable), (vec!["130".to_owned()], 1));
        assert_eq!(tags(&u.live(140, 130, f(140))), ["140"]);
        assert_eq!(u.last(), Some(140));
        // The same chain before the real message is stored: the stream has nothing after
        // 150 yet, so the forged 160 stays the last seq; the real 155 forks from it.
        let mut v = UserSeq::default();
        v.start(Some(150));
        v.set_ceiling(150 + SEQ_ALLOWANCE);
        assert_eq!(tags(&v.live(160, 150, f(160))), ["160"]);
        let s = v.live(u64::MAX, 160, f(0));
        assert_eq!(s.fill, Some((160, u64::MAX)));
        assert_eq!(v.filled((160, u64::MAX), Ok(vec![])).unplaceable, 1);
        let s = v.live(155, 150, f(155));
        assert_eq!(s.fill, Some((150, 155)), "a fork from 150");
        assert_eq!(
            tags(&v.filled((150, 155), Ok(vec![(155, f(155))]))),
            ["155"]
        );
        assert_eq!(tags(&v.live(157, 155, f(157))), ["157"]);
        // A fill that fails delivers the copy that asked, once, and moves on.
        let s = u.live(u64::MAX - 1, 140, f(7));
        assert_eq!(s.fill, Some((140, u64::MAX - 1)));
        let s = u.filled((140, u64::MAX - 1), Err(()));
        assert_eq!(tags(&s), ["7"]);
    }
}
