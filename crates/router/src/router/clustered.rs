//! A clustered node's history glue: user messages stored in JetStream through the bus
//! (seqs from the stream), delivered here in seq order once each
//! ([`crate::cluster_history`]), replayed on connect and `resume` from the stream, and
//! device acks kept there (docs/BUS.md, "History in a cluster").

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reactor::ConnRef;
use session::client_protocol::{self as cp, RequestError};
use session::Welcome;

use super::{dedup_strs, Delivered, DeliveredDone, Opened, PushOutcome, Router, DEFAULT_DEVICE};
use crate::bus::jetstream::{self, StoredMsg};
use crate::bus::{BusError, Kind, NatsBus, StoreJob, StoreOk};
use crate::cluster_history::count_unplaceable;
use crate::cluster_history::{
    ClusterHistoryStats, FillJob, Gap, RoomFrame, Step, UserSeq, UserSeqs,
};
use crate::history::HistoryConfig;

use super::openers::{Job, Openers};

/// History of a clustered node: in JetStream, through the bus; here only what each user
/// held got last ([`UserSeqs`]).
#[derive(Debug)]
pub(super) struct Clustered {
    pub(super) bus: Arc<NatsBus>,
    pub(super) config: HistoryConfig,
    pub(super) users: UserSeqs,
    pub(super) rooms: UserSeqs<RoomFrame>,
    pub(super) stats: ClusterHistoryStats,
    /// Gaps and catch-ups for the fill thread (unbounded channel, bounded by `queued`:
    /// a bounded one would allocate all of its slots up front).
    pub(super) fills: crossbeam_channel::Sender<FillJob>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) fills_rx: parking_lot::Mutex<Option<crossbeam_channel::Receiver<FillJob>>>,
    pub(super) id_prefix: u32,
    pub(super) next_id: AtomicU64,
    /// A wait on JetStream timed out and none has been answered in time since: the
    /// openers wait at most [`STALLED_WAIT`] (see [`Clustered::wait`]).
    pub(super) stalled: AtomicBool,
    /// Openings, `resume` and `join` with `since`, read on threads of their own.
    pub(super) openers: Openers,
    /// While stalled: when the next read may probe JetStream (the others fail at once).
    pub(super) probe_at: parking_lot::Mutex<Instant>,
}

/// What an opener waits on JetStream while it is stalled: enough for a healthy server on
/// the same network to answer, so the first answer in time ends the stall.
const STALLED_WAIT: Duration = Duration::from_millis(50);

impl Clustered {
    /// How long an opener may wait on JetStream now: `limit` normally; once a wait timed
    /// out, [`STALLED_WAIT`] until JetStream answers in time again, so during a frozen
    /// JetStream (a lost quorum, a stopped server the bus has not yet given up on) new
    /// connections get their welcome (`unavailable`) quickly rather than one second
    /// each.
    ///
    /// While stalled only one read per [`STALLED_WAIT`] is made (it finds out whether
    /// JetStream answers again); the others get no time at all and fail at once, so a
    /// reconnect storm during a freeze is welcomed (`unavailable`) without waiting.
    pub(super) fn wait(&self, limit: Duration) -> Duration {
        if !self.stalled.load(Ordering::Relaxed) {
            return limit;
        }
        let now = Instant::now();
        let mut at = self.probe_at.lock();
        if now < *at {
            return Duration::ZERO;
        }
        *at = now + STALLED_WAIT;
        limit.min(STALLED_WAIT)
    }

    /// Records whether a wait on JetStream was answered in time.
    pub(super) fn answered<T, E>(&self, result: &Result<T, E>) -> bool {
        let late = result.is_err();
        if self.stalled.swap(late, Ordering::Relaxed) != late {
            if late {
                tracing::warn!(
                    "JetStream did not answer in time: history reads and stores wait at most {} ms until it does",
                    STALLED_WAIT.as_millis()
                );
            } else {
                tracing::info!("JetStream answers again");
            }
        }
        !late
    }

    /// Hands `job` to the fill thread; false past [`MAX_FILLS`] waiting.
    fn queue_fill(&self, job: FillJob) -> bool {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_FILLS {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.fills.send(job).is_ok()
    }
}

/// How long a connection opening may wait for its user's latest seq, and then for its
/// replay, each (on an opener: its reactor serves everything else; past it the welcome
/// says `unavailable`).
pub const REPLAY_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the fill thread waits for one gap.
const FILL_TIMEOUT: Duration = Duration::from_secs(2);
/// Gaps and catch-ups waiting for the fill thread (a reconnect queues one catch-up per
/// user held); past it a gap is skipped at once, a catch-up waits for the user's next
/// message.
const MAX_FILLS: usize = 1 << 18;
/// A push waits this long for JetStream to store it (its answer, or a 503).
pub const STORE_WAIT: Duration = Duration::from_millis(2500);

/// The reply when the history stream could not be read in time.
pub const HISTORY_UNAVAILABLE: RequestError = RequestError {
    code: "unavailable",
    message: "history not reachable in time; the replay is incomplete",
};

impl Router {
    /// Keeps history in JetStream through `bus` (a clustered node), within `config`'s
    /// size and TTL; a size of 0 keeps none. User messages get seqs once the stream is
    /// there; until then (and on a server without JetStream) delivery is live only.
    pub fn with_cluster_history(mut self, bus: Arc<NatsBus>, config: HistoryConfig) -> Self {
        if config.size == 0 || bus.history_config().is_none() {
            return self;
        }
        let (fills, rx) = crossbeam_channel::unbounded();
        self.clustered = Some(Clustered {
            bus,
            config,
            users: UserSeqs::default(),
            rooms: UserSeqs::default(),
            stats: ClusterHistoryStats::default(),
            fills,
            queued: Arc::default(),
            fills_rx: parking_lot::Mutex::new(Some(rx)),
            id_prefix: foldhash::fast::RandomState::default().hash_one(1u8) as u32,
            next_id: AtomicU64::new(1),
            stalled: AtomicBool::new(false),
            openers: Openers::default(),
            probe_at: parking_lot::Mutex::new(Instant::now()),
        });
        self
    }

    /// Starts the thread that fetches the gaps in users' live messages from the stream,
    /// and the openers (a clustered node with history; once).
    pub fn start_history(self: &Arc<Self>) -> std::io::Result<()> {
        if let Some(rx) = self
            .clustered
            .as_ref()
            .and_then(|c| c.openers.rx.lock().take())
        {
            super::openers::start(Arc::downgrade(self), rx)?;
        }
        let Some(rx) = self
            .clustered
            .as_ref()
            .and_then(|c| c.fills_rx.lock().take())
        else {
            return Ok(());
        };
        let router = Arc::downgrade(self);
        let queued = self
            .clustered
            .as_ref()
            .map(|c| Arc::clone(&c.queued))
            .unwrap_or_default();
        std::thread::Builder::new()
            .name("pushgate-fills".into())
            .spawn(move || loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(job) => {
                        queued.fetch_sub(1, Ordering::Relaxed);
                        let Some(r) = router.upgrade() else {
                            return;
                        };
                        match job {
                            FillJob::Gap(Kind::User, uid, gap) => r.fill(&uid, gap),
                            FillJob::Gap(Kind::Room, room, gap) => r.fill_room(&room, gap),
                            FillJob::CatchUp(kind, id) => r.catch_up_now(kind, &id),
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        if router.strong_count() == 0 {
                            return;
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            })
            .map(|_| ())
    }

    /// The clustered history, when the stream is there.
    pub(super) fn clustered(&self) -> Option<&Clustered> {
        self.clustered.as_ref().filter(|c| c.bus.history_ready())
    }

    /// The clustered history's counters, if the node has one.
    pub fn cluster_history_stats(&self) -> Option<&ClusterHistoryStats> {
        self.clustered.as_ref().map(|c| &c.stats)
    }

    /// A seq JetStream itself gave this node (a store's acknowledgement): live copies up
    /// to [`crate::cluster_history::SEQ_ALLOWANCE`] past the highest are placed on their
    /// word.
    pub fn vouch(&self, seq: u64) {
        if let Some(c) = &self.clustered {
            c.users.vouch(seq);
            c.rooms.vouch(seq);
        }
    }

    /// A stored user message arrived live (from this node's store or another node's):
    /// delivered to the user's connections here in seq order, once. False if this node
    /// keeps no clustered history (the caller delivers it as a plain message).
    pub fn deliver_stored(&self, uid: &str, seq: u64, prev: u64, frame: Bytes) -> bool {
        let Some(c) = &self.clustered else {
            return false;
        };
        let mut shard = c.users.lock(uid);
        let u = match shard.get_mut(uid) {
            Some(u) => u,
            // Connections that opened while the stream was not there (no JetStream yet)
            // have no entry: they take stored messages from this one on.
            None if self.registry.contains(Kind::User, uid) => shard
                .entry(Arc::from(uid))
                .or_insert_with(UserSeq::from_next),
            None => return true,
        };
        u.set_ceiling(c.users.ceiling());
        let step = u.live(seq, prev, frame);
        self.apply(c, uid, u, step);
        true
    }

    /// Delivers a step's frames to the user's connections here and sends its gap to the
    /// fill thread (under the user's shard lock).
    fn apply(&self, c: &Clustered, uid: &str, u: &mut UserSeq, mut step: Step) {
        loop {
            c.stats.duplicates.add(step.duplicates);
            c.stats.overflow.add(step.overflow);
            count_unplaceable(&c.stats, Kind::User, uid, step.unplaceable);
            if !step.frames.is_empty() {
                let mut targets = Vec::new();
                self.registry.user_connections(uid, &mut targets);
                let now = Instant::now();
                for frame in step.frames.drain(..) {
                    let mut t = targets.clone();
                    self.dispatch(&mut t, frame, now);
                }
            }
            let Some(gap) = step.fill else {
                return;
            };
            c.stats.fills.add(1);
            if c.queue_fill(FillJob::Gap(Kind::User, Arc::from(uid), gap)) {
                return;
            }
            c.stats.fill_failures.add(1);
            step = u.filled(gap, Err(()));
        }
    }

    /// `uid`'s subscription on this node took effect (called by the bus thread): its
    /// latest stored message is looked at on the fill thread. Best effort: with the
    /// fill queue full, the user catches up at its next message.
    pub fn catch_up(&self, kind: Kind, uid: &Arc<str>) {
        if let Some(c) = &self.clustered {
            if !c.queue_fill(FillJob::CatchUp(kind, Arc::clone(uid))) {
                c.stats.fill_failures.add(1);
            }
        }
    }

    /// The user's latest stored message, taken as if it arrived live: a duplicate if
    /// delivered, else delivered, with whatever is missing before it fetched.
    fn catch_up_now(&self, kind: Kind, uid: &str) {
        let Some(c) = &self.clustered else {
            return;
        };
        let last = |c: &Clustered| match kind {
            Kind::User => c.users.lock(uid).get(uid).map(UserSeq::last),
            Kind::Room => c.rooms.lock(uid).get(uid).map(UserSeq::last),
        };
        if last(c).is_none() {
            return;
        }
        let latest = c.bus.latest(kind, uid, FILL_TIMEOUT);
        c.stats.catch_ups.add(1);
        match latest {
            Ok(Some(m)) => {
                c.users.vouch(m.seq);
                c.rooms.vouch(m.seq);
                if last(c).flatten().is_none_or(|l| m.seq > l) {
                    let frame = stored_frame(&m);
                    match kind {
                        Kind::User => self.deliver_stored(uid, m.seq, m.prev, frame),
                        Kind::Room => {
                            let t = m.targets.as_deref();
                            self.deliver_stored_room(uid, m.seq, m.prev, frame, t)
                        }
                    };
                }
            }
            Ok(None) => {}
            Err(_) => c.stats.fill_failures.add(1),
        }
    }

    /// Fetches a gap of `uid`'s messages and delivers it (on the fill thread).
    fn fill(&self, uid: &str, gap: Gap) {
        let Some(c) = &self.clustered else {
            return;
        };
        let fetched = c
            .bus
            .fetch_after(Kind::User, uid, gap.0, gap.1, c.config.size, FILL_TIMEOUT)
            .map(|msgs| {
                msgs.iter()
                    .map(|m| (m.seq, stored_frame(m)))
                    .collect::<Vec<_>>()
            })
            .map_err(|_| c.stats.fill_failures.add(1));
        if let Ok(msgs) = &fetched {
            msgs.iter().for_each(|(seq, _)| c.users.vouch(*seq));
        }
        let mut shard = c.users.lock(uid);
        if let Some(u) = shard.get_mut(uid) {
            let step = u.filled(gap, fetched);
            self.apply(c, uid, u, step);
        }
    }

    /// A connection of `uid` opened on a clustered node (on its reactor): handed to the
    /// openers ([`super::openers`]), which register it and send its welcome; the
    /// reactor waits for nothing.
    pub(super) fn open_clustered(
        &self,
        c: &Clustered,
        uid: &str,
        conn: ConnRef,
        device: Option<&str>,
        since: Option<u64>,
    ) -> Arc<str> {
        let uid: Arc<str> = Arc::from(uid);
        c.openers.pending.opens.lock().insert(conn);
        let _ = c.openers.tx.send(Job::Open {
            uid: Arc::clone(&uid),
            conn,
            device: device.map(Arc::from),
            since,
            until: Instant::now() + c.wait(REPLAY_TIMEOUT),
        });
        uid
    }

    /// A `resume` on a clustered node (on its reactor): handed to the openers.
    pub(super) fn resume_later(
        &self,
        c: &Clustered,
        uid: &str,
        conn: ConnRef,
        since: u64,
        opened: Opened,
    ) {
        let _ = c.openers.tx.send(Job::Resume {
            uid: Arc::from(uid),
            conn,
            since,
            opened,
        });
    }

    /// A `join` with `since` on a clustered node (on its reactor): handed to the
    /// openers, which register the connection in the room with its replay.
    pub(super) fn join_later(
        &self,
        c: &Clustered,
        room: &str,
        conn: ConnRef,
        since: u64,
    ) -> Arc<str> {
        let room: Arc<str> = Arc::from(room);
        c.openers
            .pending
            .joins
            .lock()
            .insert((conn, Arc::clone(&room)));
        let _ = c.openers.tx.send(Job::Join {
            room: Arc::clone(&room),
            conn,
            since,
        });
        room
    }

    /// Joins `room` if the join is still pending (not left, connection not closed
    /// meanwhile); call under the room's shard lock.
    fn join_if_pending(&self, c: &Clustered, room: &str, conn: ConnRef) -> bool {
        let key = (conn, Arc::from(room));
        if !c.openers.pending.joins.lock().remove(&key) {
            return false;
        }
        self.join(room, conn);
        true
    }

    /// The welcome of a connection of `uid` just registered (on an opener): its replay
    /// read from the stream (`known`: the user's last seq here when it registered).
    pub(super) fn open_registered(
        &self,
        c: &Clustered,
        uid: &str,
        device: Option<&str>,
        since: Option<u64>,
        known: Option<u64>,
    ) -> (Welcome, Opened) {
        let mut error = None;
        let latest = match known {
            Some(l) => l,
            None => {
                let got = c.bus.latest(Kind::User, uid, c.wait(REPLAY_TIMEOUT));
                if !c.answered(&got) {
                    c.stats.replay_failures.add(1);
                    error = Some(HISTORY_UNAVAILABLE);
                }
                let mut shard = c.users.lock(uid);
                match shard.get_mut(uid) {
                    Some(u) => {
                        let step = u.start(got.ok().map(|m| m.map_or(0, |m| m.seq)));
                        self.apply(c, uid, u, step);
                        // Registered before delivery started: everything after the
                        // start reached this connection live.
                        u.started().unwrap_or(0)
                    }
                    None => 0,
                }
            }
        };
        let opened = Opened {
            replayed_from: latest,
        };
        if let Some(e) = error {
            let w = Welcome {
                seq: Some(latest),
                recovered: Some(false),
                error: Some(e),
                ..Welcome::default()
            };
            return (w, opened);
        }
        if let Some(since) = since.filter(|s| *s > latest) {
            // Past what this node delivered: in the future only if past the stream's
            // latest too (else this node is behind: the client resyncs).
            let stored = c.bus.latest(Kind::User, uid, c.wait(REPLAY_TIMEOUT));
            c.answered(&stored);
            // Only the stream's own word puts `since` in the future: a read that failed
            // or timed out says nothing, and a client told `bad_since` would drop a gap it
            // can still get.
            let behind =
                !matches!(stored, Ok(Some(ref m)) if m.seq < since) && !matches!(stored, Ok(None));
            let w = Welcome {
                seq: Some(latest),
                recovered: behind.then_some(false),
                error: Some(if behind {
                    HISTORY_UNAVAILABLE
                } else {
                    cp::SINCE_IN_FUTURE
                }),
                ..Welcome::default()
            };
            return (w, opened);
        }
        // Without `since`, from the device's last ack (else from the start).
        let from = match since {
            Some(s) => s,
            None => {
                let device = device.unwrap_or(DEFAULT_DEVICE);
                let ack = c.bus.last_ack(uid, device, c.wait(REPLAY_TIMEOUT));
                c.answered(&ack);
                match ack {
                    Ok(ack) => ack.unwrap_or(0).min(latest),
                    Err(_) => {
                        c.stats.replay_failures.add(1);
                        let w = Welcome {
                            seq: Some(latest),
                            recovered: Some(false),
                            error: Some(HISTORY_UNAVAILABLE),
                            ..Welcome::default()
                        };
                        return (w, opened);
                    }
                }
            }
        };
        let w = match self.replay_clustered(c, uid, from, latest) {
            Ok((frames, recovered)) => Welcome {
                seq: Some(latest),
                recovered: Some(recovered),
                replay: frames,
                error: None,
            },
            Err(e) => Welcome {
                seq: Some(latest),
                recovered: Some(false),
                error: Some(e),
                ..Welcome::default()
            },
        };
        (
            w,
            Opened {
                replayed_from: from,
            },
        )
    }

    /// `uid`'s stored messages after `from` up to `upto`, and whether none was lost.
    pub(super) fn replay_clustered(
        &self,
        c: &Clustered,
        uid: &str,
        from: u64,
        upto: u64,
    ) -> Result<(Vec<Bytes>, bool), RequestError> {
        if from >= upto {
            return Ok((Vec::new(), true));
        }
        let fetched = c.bus.fetch_after(
            Kind::User,
            uid,
            from,
            upto,
            c.config.size,
            c.wait(REPLAY_TIMEOUT),
        );
        c.answered(&fetched);
        match fetched {
            Ok(msgs) => {
                // The retained messages are a suffix of the user's chain: nothing is
                // missing when the first one follows the resume point.
                let recovered = msgs.first().is_some_and(|m| m.prev <= from);
                Ok((msgs.iter().map(stored_frame).collect(), recovered))
            }
            Err(_) => {
                c.stats.replay_failures.add(1);
                Err(HISTORY_UNAVAILABLE)
            }
        }
    }

    /// A stored room message arrived live: delivered to the room's members here in seq
    /// order, once (a member reached through a listed user or an earlier listed room
    /// gets it from there). False if this node keeps no clustered history.
    pub fn deliver_stored_room(
        &self,
        room: &str,
        seq: u64,
        prev: u64,
        frame: Bytes,
        targets: Option<&str>,
    ) -> bool {
        let Some(c) = &self.clustered else {
            return false;
        };
        let mut shard = c.rooms.lock(room);
        let u = match shard.get_mut(room) {
            Some(u) => u,
            None if self.registry.contains(Kind::Room, room) => shard
                .entry(Arc::from(room))
                .or_insert_with(UserSeq::from_next),
            None => return true,
        };
        let frame = RoomFrame {
            frame,
            targets: targets.map(Arc::from),
        };
        u.set_ceiling(c.rooms.ceiling());
        let step = u.live(seq, prev, frame);
        self.apply_room(c, room, u, step);
        true
    }

    /// [`Router::apply`] for a room (under the room's shard lock).
    fn apply_room(
        &self,
        c: &Clustered,
        room: &str,
        u: &mut UserSeq<RoomFrame>,
        mut step: Step<RoomFrame>,
    ) {
        loop {
            c.stats.duplicates.add(step.duplicates);
            c.stats.overflow.add(step.overflow);
            count_unplaceable(&c.stats, Kind::Room, room, step.unplaceable);
            if !step.frames.is_empty() {
                let mut members = Vec::new();
                self.registry.room_connections(room, &mut members);
                let now = Instant::now();
                for f in step.frames.drain(..) {
                    let mut to = members.clone();
                    if let Some(targets) = &f.targets {
                        self.reached_elsewhere(room, targets, &mut to);
                    }
                    self.dispatch(&mut to, f.frame, now);
                }
            }
            let Some(gap) = step.fill else {
                return;
            };
            c.stats.fills.add(1);
            if c.queue_fill(FillJob::Gap(Kind::Room, Arc::from(room), gap)) {
                return;
            }
            c.stats.fill_failures.add(1);
            step = u.filled(gap, Err(()));
        }
    }

    /// Drops from `conns` (members of `room`) those a push listing `targets` reaches
    /// through a listed user or a room listed before `room`.
    fn reached_elsewhere(&self, room: &str, targets: &str, conns: &mut Vec<ConnRef>) {
        let mut skip = Vec::new();
        for t in targets.split(' ').filter(|t| !t.is_empty()) {
            match crate::bus::subject::parse_target(t) {
                Some((Kind::User, u)) => {
                    self.registry.user_connections(&u, &mut skip);
                }
                Some((Kind::Room, r)) if r == room => break,
                Some((Kind::Room, r)) => {
                    self.registry.room_connections(&r, &mut skip);
                }
                None => {}
            }
        }
        if !skip.is_empty() {
            let skip: std::collections::HashSet<ConnRef> = skip.into_iter().collect();
            conns.retain(|c| !skip.contains(c));
        }
    }

    /// Fetches a gap of `room`'s messages and delivers it (on the fill thread).
    fn fill_room(&self, room: &str, gap: Gap) {
        let Some(c) = &self.clustered else {
            return;
        };
        let fetched = c
            .bus
            .fetch_after(Kind::Room, room, gap.0, gap.1, c.config.size, FILL_TIMEOUT)
            .map(|msgs| {
                msgs.iter()
                    .map(|m| (m.seq, room_frame(m)))
                    .collect::<Vec<_>>()
            })
            .map_err(|_| c.stats.fill_failures.add(1));
        if let Ok(msgs) = &fetched {
            msgs.iter().for_each(|(seq, _)| c.rooms.vouch(*seq));
        }
        let mut shard = c.rooms.lock(room);
        if let Some(u) = shard.get_mut(room) {
            let step = u.filled(gap, fetched);
            self.apply_room(c, room, u, step);
        }
    }

    /// `conn` joins `room` with `since` on a clustered node (on an opener): the room's
    /// stored messages after it are read (unlocked) up to the last seq this node
    /// delivered to the room; then, under the room's lock, the connection is registered
    /// and the replay and `joined` go to its inbox, so every later room message lands
    /// behind them. Joined in any case (unless left or closed meanwhile); the error says
    /// why nothing was replayed.
    pub(super) fn join_clustered(
        &self,
        c: &Clustered,
        room: &str,
        conn: ConnRef,
        since: u64,
    ) -> Result<(), RequestError> {
        let failed = |e: RequestError| {
            let mut shard = c.rooms.lock(room);
            if self.join_if_pending(c, room, conn) {
                shard
                    .entry(Arc::from(room))
                    .or_insert_with(UserSeq::from_next);
                return Err(e);
            }
            Ok(())
        };
        let known = c.rooms.lock(room).get(room).and_then(UserSeq::last);
        let mut upto = match known {
            Some(l) => l,
            None => match c.bus.latest(Kind::Room, room, c.wait(REPLAY_TIMEOUT)) {
                Ok(m) => {
                    c.answered(&Ok::<(), ()>(()));
                    m.map_or(0, |m| m.seq)
                }
                Err(_) => {
                    c.answered(&Err::<(), ()>(()));
                    c.stats.replay_failures.add(1);
                    return failed(HISTORY_UNAVAILABLE);
                }
            },
        };
        if since > upto {
            return failed(cp::SINCE_IN_FUTURE);
        }
        let mut frames: Vec<StoredMsg> = Vec::new();
        let mut from = since;
        let mut recovered = None;
        // Each round catches up with what the node delivered meanwhile; a room that
        // busy is given up on after a few.
        for _ in 0..4 {
            let fetched = c.bus.fetch_after(
                Kind::Room,
                room,
                from,
                upto,
                c.config.size,
                c.wait(REPLAY_TIMEOUT),
            );
            c.answered(&fetched);
            match fetched {
                Ok(msgs) => {
                    if recovered.is_none() {
                        recovered =
                            Some(from >= upto || msgs.first().is_some_and(|m| m.prev <= since));
                    }
                    frames.extend(msgs);
                    from = upto;
                }
                Err(_) => {
                    c.stats.replay_failures.add(1);
                    return failed(HISTORY_UNAVAILABLE);
                }
            }
            let mut shard = c.rooms.lock(room);
            let u = shard.entry(Arc::from(room)).or_default();
            if u.last().is_none() {
                let step = u.start(Some(upto));
                self.apply_room(c, room, u, step);
            }
            let last = u.last().unwrap_or(upto);
            if last <= upto {
                // The node delivered up to `last`: what follows reaches the connection
                // live once it is registered.
                if !self.join_if_pending(c, room, conn) {
                    return Ok(());
                }
                frames.retain(|m| m.seq <= last);
                for m in &frames {
                    self.deliver_to(conn, stored_frame(m));
                }
                let recovered = recovered.unwrap_or(false);
                self.deliver_to(conn, session::messages::joined(room, last, recovered));
                return Ok(());
            }
            upto = last;
        }
        c.stats.replay_failures.add(1);
        failed(HISTORY_UNAVAILABLE)
    }

    /// A `resume` on a clustered node (on an opener): replays, through the connection's
    /// inbox, the stored messages after `since` up to where its opening replay started,
    /// then `resumed`.
    pub(super) fn resume_clustered(
        &self,
        c: &Clustered,
        uid: &str,
        conn: ConnRef,
        since: u64,
        opened: Opened,
    ) -> Result<(), RequestError> {
        let latest = c.users.lock(uid).get(uid).and_then(UserSeq::last);
        let latest = latest.unwrap_or(opened.replayed_from);
        if since > latest {
            // As at opening: past the stream's latest too, or this node is behind.
            let stored = c.bus.latest(Kind::User, uid, c.wait(REPLAY_TIMEOUT));
            c.answered(&stored);
            return Err(match stored {
                Ok(Some(m)) if m.seq < since => cp::SINCE_IN_FUTURE,
                Ok(None) => cp::SINCE_IN_FUTURE,
                _ => HISTORY_UNAVAILABLE,
            });
        }
        let (frames, recovered) = self.replay_clustered(c, uid, since, opened.replayed_from)?;
        for frame in frames {
            self.deliver_to(conn, frame);
        }
        self.deliver_to(conn, session::messages::resumed(latest, recovered));
        Ok(())
    }

    /// A message from `from` to `users` and `rooms` on a clustered node, each stored with
    /// its seq. With `done`, it is told (on the bus thread, or here when nothing could be
    /// handed to the bus) every user's seq or the error once JetStream answered every
    /// store; nobody waits for that (a client's `send` does not even ask). Returns what
    /// is known at once: whether every store was handed to the bus.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_clustered(
        &self,
        c: &Clustered,
        users: &[&str],
        rooms: &[&str],
        from: &str,
        data: &[u8],
        id: Option<&str>,
        done: Option<DeliveredDone>,
    ) -> Result<(), BusError> {
        let id = match id {
            Some(id) => id.to_owned(),
            None => format!(
                "{:08x}{:x}",
                c.id_prefix,
                c.next_id.fetch_add(1, Ordering::Relaxed)
            ),
        };
        // A room's copy lists every recipient when there are several: a connection
        // reached through a listed user or an earlier listed room gets it from there.
        let targets = (users.len() + rooms.len() > 1).then(|| {
            let mut t = String::new();
            for (kind, ids) in [(Kind::User, users), (Kind::Room, rooms)] {
                for id in ids {
                    if !t.is_empty() {
                        t.push(' ');
                    }
                    crate::bus::subject::write_target(kind, id, &mut t);
                }
            }
            t
        });
        let user_body = jetstream::stored_body(from, &id, None, data);
        if !self.bus.is_ready() {
            // NATS is gone: nothing can be stored, but this node's connections still get
            // the message, without a seq (docs/BUS.md, "Failures").
            let d = self.deliver_unstored(users, rooms, from, &id, data, &user_body);
            if let Some(done) = done {
                done(d);
            }
            return Err(BusError::Disconnected);
        }
        // Told of every store as JetStream answers it; the last one tells `done`.
        let gather = done.map(|done| {
            Arc::new(parking_lot::Mutex::new(Gather {
                left: users.len() + rooms.len(),
                delivered: Some(Delivered {
                    outcome: PushOutcome {
                        connections: 0,
                        offline_users: 0,
                        refused: 0,
                        bus: Ok(()),
                    },
                    id: Some(id.clone()),
                    seqs: Vec::new(),
                    offline: Vec::new(),
                }),
                seqs: vec![None; users.len()],
                done: Some(done),
            }))
        });
        let mut slot = 0;
        let mut handed = Ok(());
        let recipients = users
            .iter()
            .map(|u| (Kind::User, *u))
            .chain(rooms.iter().map(|r| (Kind::Room, *r)));
        for (kind, to) in recipients {
            // The push ID and the recipient: a retry of the push within the TTL is
            // stored (and delivered) once.
            let mut msg_id = String::with_capacity(id.len() + to.len() + 8);
            crate::bus::subject::encode_id(&id, &mut msg_id);
            msg_id.push('.');
            crate::bus::subject::write_target(kind, to, &mut msg_id);
            let (body, targets) = match kind {
                Kind::User => (user_body.clone(), None),
                Kind::Room => (
                    jetstream::stored_body(from, &id, Some(to), data),
                    targets.clone(),
                ),
            };
            let user = (kind == Kind::User).then(|| (slot, to.to_owned()));
            slot += usize::from(kind == Kind::User);
            // This node accepted the message: it owns the user's undelivered deadline,
            // from the seq JetStream gave it.
            let deadline = match (kind, self.undelivered()) {
                (Kind::User, Some(d)) => Some((Arc::clone(d), to.to_owned(), id.clone())),
                _ => None,
            };
            let g = gather.as_ref().map(Arc::clone);
            let done = (g.is_some() || deadline.is_some()).then(|| {
                Box::new(move |r: Result<StoreOk, BusError>| {
                    if let (Some((d, uid, id)), Ok(ok)) = (&deadline, &r) {
                        if !ok.duplicate {
                            d.track(uid, id, ok.seq);
                        }
                    }
                    if let Some(g) = &g {
                        Gather::stored(g, user, r);
                    }
                }) as crate::bus::StoreDone
            });
            let job = StoreJob {
                kind,
                id: Arc::from(to),
                msg_id,
                body,
                targets,
                done,
            };
            if let Err(e) = c.bus.store(job) {
                handed = Err(e);
                if let Some(g) = &gather {
                    Gather::stored(g, None, Err(e));
                }
            }
        }
        handed
    }

    /// A client's `send`: like [`Router::send`], except that on a clustered node nobody
    /// is told when the stores are done (the sender learns of its message as its
    /// recipients do).
    pub fn send_from_client(&self, to: &[impl AsRef<str>], from: &str, data: &[u8]) -> Delivered {
        match self.clustered() {
            Some(c) => {
                let bus = self.send_clustered(c, &dedup_strs(to), &[], from, data, None, None);
                Delivered {
                    outcome: PushOutcome {
                        connections: 0,
                        offline_users: 0,
                        refused: 0,
                        bus,
                    },
                    id: None,
                    seqs: Vec::new(),
                    offline: Vec::new(),
                }
            }
            None => self.send(to, &[] as &[&str], from, data, None, Instant::now()),
        }
    }
}

impl Router {
    /// A message that could not be stored (NATS is gone), delivered to this node's
    /// connections as it is: with its `id`, without a seq. Each connection gets it once,
    /// through the first recipient that names it.
    fn deliver_unstored(
        &self,
        users: &[&str],
        rooms: &[&str],
        from: &str,
        id: &str,
        data: &[u8],
        user_body: &[u8],
    ) -> Delivered {
        let now = Instant::now();
        let user_frame = Router::text_frame(user_body);
        let mut reached = std::collections::HashSet::new();
        let (mut connections, mut refused) = (0, 0);
        let mut offline = Vec::new();
        let mut targets = Vec::new();
        for uid in users {
            targets.clear();
            if !self.registry.user_connections(uid, &mut targets) {
                offline.push((*uid).to_owned());
            }
            targets.retain(|c| reached.insert(*c));
            let r = self.dispatch(&mut targets, user_frame.clone(), now);
            refused += r;
            connections += targets.len() - r;
        }
        for room in rooms {
            targets.clear();
            self.registry.room_connections(room, &mut targets);
            targets.retain(|c| reached.insert(*c));
            let frame = Router::text_frame(&jetstream::stored_body(from, id, Some(room), data));
            let r = self.dispatch(&mut targets, frame, now);
            refused += r;
            connections += targets.len() - r;
        }
        Delivered {
            outcome: PushOutcome {
                connections,
                offline_users: offline.len(),
                refused,
                bus: Err(BusError::Disconnected),
            },
            id: Some(id.to_owned()),
            seqs: Vec::new(),
            offline,
        }
    }
}

/// The stores of one push as JetStream answers them: each user's seq, the first error,
/// and who is told once the last one is answered.
struct Gather {
    left: usize,
    delivered: Option<Delivered>,
    /// Each named user's seq, in the order the push named them.
    seqs: Vec<Option<(String, u64)>>,
    done: Option<DeliveredDone>,
}

impl Gather {
    /// One store answered (`user`: the user it was for and its place among them; a
    /// room's store names none).
    fn stored(
        this: &parking_lot::Mutex<Gather>,
        user: Option<(usize, String)>,
        result: Result<StoreOk, BusError>,
    ) {
        let mut g = this.lock();
        match result {
            Ok(ok) => {
                if let Some((i, u)) = user {
                    if let Some(s) = g.seqs.get_mut(i) {
                        *s = Some((u, ok.seq));
                    }
                }
            }
            Err(e) => {
                if let Some(d) = g.delivered.as_mut() {
                    d.outcome.bus = Err(e);
                }
            }
        }
        g.left = g.left.saturating_sub(1);
        if g.left > 0 {
            return;
        }
        let (Some(mut d), Some(done)) = (g.delivered.take(), g.done.take()) else {
            return;
        };
        d.seqs = g.seqs.drain(..).flatten().collect();
        drop(g);
        done(d);
    }
}

/// A stored room message as held: its frame and targets.
fn room_frame(m: &StoredMsg) -> RoomFrame {
    RoomFrame {
        frame: stored_frame(m),
        targets: m.targets.as_deref().map(Arc::from),
    }
}

/// A stored message as the frame its user's clients get.
fn stored_frame(m: &StoredMsg) -> Bytes {
    Router::text_frame(&jetstream::with_seq(&m.body, m.seq))
}
