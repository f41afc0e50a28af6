//! Delivering a push: resolve recipients to connections, encode the frame once, and give
//! each reactor one command listing all of its recipients.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use protocol::CloseCode;
use reactor::{Command, ConnRef, ReactorHandle};

use crate::bus::control::{Disconnect, PresenceEntry, REPLACED_REASON};
use crate::bus::stats::Counter;
use crate::bus::{BusError, ClusterBus, InProcess, Kind, Outgoing};
use crate::cluster_history::UserSeq;
use crate::history::{History, HistoryConfig};
use crate::idempotency::Idempotency;
use crate::registry::Registry;
use crate::room_presence::{ListingDone, RoomListTask};
use crate::rooms::{RoomChange, RoomStats, RoomTally, RoomTask};
use crate::undelivered::{Deadlines, EventSink};
use session::client_protocol::{self as cp, RequestError};
use session::Welcome;

mod clustered;
mod history_read;
mod openers;

use clustered::Clustered;
pub use clustered::{HISTORY_UNAVAILABLE, REPLAY_TIMEOUT, STORE_WAIT};
pub use history_read::{HistoryDone, HistoryPage, HistoryReadError, MAX_QUEUED_READS};

/// What a push reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// Connections on this node the frame was handed to (their reactors queue it).
    pub connections: usize,
    /// Named users with no connection on this node, counted only on a single node (in a
    /// cluster they may well be on another).
    pub offline_users: usize,
    /// Connections on this node the push did not reach because their reactor's inbox
    /// was full (the node is saturated; the API answers 503).
    pub refused: usize,
    /// Whether the other nodes were reached (always, on a single node).
    pub bus: Result<(), BusError>,
}

/// What a message with seqs reached: the delivery, the message ID and each named user's
/// seq for it.
#[derive(Debug)]
pub struct Delivered {
    /// Connections reached, refused, and the bus.
    pub outcome: PushOutcome,
    /// The message ID (`None` when the node keeps no history: no seqs either).
    pub id: Option<String>,
    /// Each named user (once) and the seq the message has in that user's stream.
    pub seqs: Vec<(String, u64)>,
    /// Named users with no connection: the message waits in their history.
    pub offline: Vec<String>,
}

/// Told what a push reached once it is carried out (on a clustered node with history,
/// on the bus thread once JetStream answered every store): must not block.
pub type DeliveredDone = Box<dyn FnOnce(Delivered) + Send>;

/// Retained messages of the node (single node only).
#[derive(Debug)]
struct Histories {
    users: History,
    rooms: History,
    pushes: Idempotency,
    /// Message IDs: a per-process random prefix and a counter.
    id_prefix: u32,
    next_id: AtomicU64,
}

/// Where a connection's replay started, for a later `resume` request.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// The replay sent behind `welcome` covered the seqs after this one.
    pub replayed_from: u64,
}

/// Close code for a connection displaced by the per-user cap (docs/PROTOCOL.md, "Close codes").
pub const CLOSE_USER_CAP: CloseCode = CloseCode(4008);

/// Connections the router closed: by the per-user cap and by disconnect requests.
#[derive(Debug, Default)]
pub struct CloseStats {
    /// Replaced by a new connection on the same device.
    pub replaced: Counter,
    /// The oldest, closed because a new one would exceed the per-user cap.
    pub over_cap: Counter,
    /// Closed by a disconnect request (from the API here or from another node).
    pub disconnected: Counter,
    /// Closes refused by a full reactor inbox. One displaced by the cap was already taken
    /// out of the registry: it gets no more pushes and ends with its client.
    pub refused: Counter,
}

/// The node's router.
#[derive(Debug)]
pub struct Router {
    registry: Registry,
    reactors: OnceLock<Vec<ReactorHandle>>,
    bus: Box<dyn ClusterBus>,
    history: Option<Histories>,
    clustered: Option<Clustered>,
    max_conns_per_user: usize,
    close_stats: CloseStats,
    room_stats: Arc<RoomStats>,
    /// The undelivered hook's deadlines, when it is on.
    undelivered: OnceLock<Arc<Deadlines>>,
    /// Where connect and disconnect events go, when anywhere.
    conn_events: OnceLock<Arc<dyn EventSink>>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// A single-node router (in-process bus) with no reactors attached yet.
    pub fn new() -> Self {
        Self::with_bus(Box::new(InProcess))
    }

    /// A router reaching the other nodes through `bus`.
    pub fn with_bus(bus: Box<dyn ClusterBus>) -> Self {
        Router {
            registry: Registry::new(),
            reactors: OnceLock::new(),
            bus,
            history: None,
            clustered: None,
            max_conns_per_user: usize::MAX,
            close_stats: CloseStats::default(),
            room_stats: Arc::default(),
            undelivered: OnceLock::new(),
            conn_events: OnceLock::new(),
        }
    }

    /// Caps the connections one user holds on this node (at least 1): past it the
    /// oldest is closed with [`CLOSE_USER_CAP`], and a new connection on a named device
    /// replaces the user's connection on that device.
    pub fn with_max_conns_per_user(mut self, cap: usize) -> Self {
        self.max_conns_per_user = cap.max(1);
        self
    }

    /// What the router closed.
    pub fn close_stats(&self) -> &CloseStats {
        &self.close_stats
    }

    /// Starts the close handshake of `conn` with `code`; false if its reactor refused
    /// the command (inbox full) or is unknown.
    pub fn close_conn(&self, conn: ConnRef, code: CloseCode, reason: Cow<'static, str>) -> bool {
        let reactors = self.reactors.get().map(Vec::as_slice).unwrap_or_default();
        reactors.get(usize::from(conn.reactor)).is_some_and(|r| {
            r.send(Command::Close {
                target: conn,
                code,
                reason,
            })
            .is_ok()
        })
    }

    /// The connections of `uid` on this node (`node`), for a presence answer.
    pub fn presence_local(&self, uid: &str, node: &str) -> Vec<PresenceEntry> {
        let mut conns = Vec::new();
        self.registry.user_conns(uid, None, None, &mut conns);
        conns.sort_unstable_by_key(|c| c.opened);
        conns
            .into_iter()
            .map(|c| PresenceEntry {
                node: node.to_owned(),
                conn: format!("{}.{}.{}", c.conn.reactor, c.conn.index, c.conn.generation),
                device: c.device().unwrap_or(DEFAULT_DEVICE).to_owned(),
            })
            .collect()
    }

    /// Closes the connections of a disconnect request on this node (the request is
    /// checked); returns how many closes were queued. A request with `before` replaces a
    /// device's connections (another node has a newer one): counted as replaced.
    pub fn disconnect_local(&self, req: &Disconnect) -> usize {
        let mut conns = Vec::new();
        self.registry
            .user_conns(&req.uid, req.device.as_deref(), req.before, &mut conns);
        let mut closed = 0;
        for c in conns {
            let reason = Cow::Owned(req.reason.clone());
            if self.close_conn(c.conn, CloseCode(req.code), reason) {
                closed += 1;
            } else {
                self.close_stats.refused.add(1);
            }
        }
        let counter = match req.before {
            Some(_) => &self.close_stats.replaced,
            None => &self.close_stats.disconnected,
        };
        counter.add(closed as u64);
        closed
    }

    /// Gives every user message this node accepts from now on a deadline in `d` (the
    /// undelivered hook); set once.
    pub fn set_undelivered(&self, d: Arc<Deadlines>) {
        let _ = self.undelivered.set(d);
    }

    /// The undelivered hook's deadlines, when it is on.
    pub fn undelivered(&self) -> Option<&Arc<Deadlines>> {
        self.undelivered.get()
    }

    /// Tells `sink` of every connection opened and closed from now on; set once.
    pub fn set_conn_events(&self, sink: Arc<dyn EventSink>) {
        let _ = self.conn_events.set(sink);
    }

    /// A connection opened or closed, for the connect and disconnect events.
    pub fn conn_event(&self, uid: &str, device: Option<&str>, conn: ConnRef, opened: bool) {
        if let Some(sink) = self.conn_events.get() {
            let name = format!("{}.{}.{}", conn.reactor, conn.index, conn.generation);
            sink.connection(uid, device, &name, opened);
        }
    }

    /// A device of `uid` acknowledged up to `seq`, here or on another node.
    pub fn acked(&self, uid: &str, seq: u64) {
        if let Some(d) = self.undelivered.get() {
            d.acked(uid, seq);
        }
    }

    /// Server-side room changes on this node's connections.
    pub fn room_stats(&self) -> &Arc<RoomStats> {
        &self.room_stats
    }

    /// Carries a room change to this node's connections of the user (of the device):
    /// one [`Command::Task`] per reactor, counted into `tally`, which tells its owner
    /// once every reactor is done with it. Never waits. Returns the connections found.
    pub fn change_rooms_local(&self, req: &RoomChange, tally: &Arc<RoomTally>) -> usize {
        let mut conns = Vec::new();
        self.registry
            .user_conns(&req.uid, req.device.as_deref(), None, &mut conns);
        tally.addressed(conns.len());
        if conns.is_empty() {
            return 0;
        }
        let task = RoomTask::shared(
            req.op,
            &req.room,
            Arc::clone(tally),
            Arc::clone(&self.room_stats),
        );
        let mut targets: Vec<ConnRef> = conns.iter().map(|c| c.conn).collect();
        self.task_per_reactor(&mut targets, task, |n| self.room_stats.unreached(req.op, n));
        conns.len()
    }

    /// The connections in `room` on this node (`node`), listing at most `limit` of them
    /// with their user and device: `done` is told once the reactors holding them answered
    /// (see [`crate::room_presence`]), at once when none is to be asked. Never waits.
    pub fn room_presence_local(&self, room: &str, node: &str, limit: usize, done: ListingDone) {
        let mut targets = Vec::new();
        let connections = self.registry.room_members(room, limit, &mut targets);
        let task = RoomListTask::new(node, connections, done);
        // A reactor whose inbox is full does not list its members: the answer says
        // `"more"` (fewer listed than counted) rather than wait.
        self.task_per_reactor(&mut targets, task, |_| {});
    }

    /// Hands `task` to each reactor holding some of `targets`, once, with its share of
    /// them; `refused(n)` for each share a reactor did not take. Never waits.
    fn task_per_reactor(
        &self,
        targets: &mut [ConnRef],
        task: Arc<dyn std::any::Any + Send + Sync>,
        mut refused: impl FnMut(usize),
    ) {
        targets.sort_unstable_by_key(|c| c.reactor);
        let reactors = self.reactors.get().map(Vec::as_slice).unwrap_or_default();
        for mine in targets.chunk_by(|a, b| a.reactor == b.reactor) {
            let sent = reactors.get(usize::from(mine[0].reactor)).map(|r| {
                r.send(Command::Task {
                    targets: mine.to_vec(),
                    task: Arc::clone(&task),
                })
            });
            if !matches!(sent, Some(Ok(()))) {
                refused(mine.len());
            }
        }
    }

    /// Registers a connection of `uid` on `device` under the per-user cap, closing what
    /// it displaces.
    fn add_user_on(&self, uid: &str, conn: ConnRef, device: Option<&str>) -> Arc<str> {
        let mut evicted = Vec::new();
        let (id, first, opened) =
            self.registry
                .add_user_capped(uid, conn, device, self.max_conns_per_user, &mut evicted);
        if first {
            self.bus.interest_changed(Kind::User, &id);
        }
        if let (Some(device), true) = (device, self.is_clustered()) {
            // The device's older connections on the other nodes go too. Best effort:
            // with the bus down they stay, as they would without this.
            let _ = self.bus.disconnect(&Disconnect {
                uid: uid.to_owned(),
                device: Some(device.to_owned()),
                code: CLOSE_USER_CAP.0,
                reason: REPLACED_REASON.to_owned(),
                before: Some(opened),
            });
        }
        for old in evicted {
            let replaced = device.is_some() && old.device() == device;
            let (counter, reason) = if replaced {
                (&self.close_stats.replaced, REPLACED_REASON)
            } else {
                (
                    &self.close_stats.over_cap,
                    "too many connections for this user",
                )
            };
            counter.add(1);
            if !self.close_conn(old.conn, CLOSE_USER_CAP, Cow::Borrowed(reason)) {
                self.close_stats.refused.add(1);
            }
        }
        id
    }

    /// Keeps history (seqs, resume, acks, offline delivery, idempotent pushes) within
    /// `config`; a size of 0 keeps none. For a single node: a clustered router stays
    /// live-only.
    pub fn with_history(mut self, config: HistoryConfig) -> Self {
        // Users and rooms share the byte budget evenly.
        let half = HistoryConfig {
            max_bytes: config.max_bytes / 2,
            ..config
        };
        self.history = (config.size > 0 && !self.is_clustered()).then(|| Histories {
            users: History::new(half),
            rooms: History::new(half),
            pushes: {
                let pushes = Idempotency::new(config.ttl, config.idempotency_max_bytes);
                tracing::info!(
                    ids = pushes.capacity(),
                    per_second = pushes.capacity() as u64 / config.ttl.as_secs().max(1),
                    ttl_secs = config.ttl.as_secs(),
                    "idempotent pushes: the window holds the TTL up to this many pushes with an ID"
                );
                pushes
            },
            id_prefix: foldhash::fast::RandomState::default().hash_one(0u8) as u32,
            next_id: AtomicU64::new(1),
        });
        self
    }

    /// Why a request that needs history gets none here: `history_disabled` on a node
    /// configured without it, `unavailable` on a clustered node whose history stream is
    /// not there yet (just started, or JetStream not found), which is not a reason for a
    /// client to give up its resume point.
    fn no_history(&self) -> RequestError {
        if self.clustered.is_some() {
            clustered::HISTORY_UNAVAILABLE
        } else {
            cp::HISTORY_DISABLED
        }
    }

    /// Whether this node keeps history (single node, or clustered with the stream there).
    pub fn keeps_history(&self) -> bool {
        self.history.is_some() || self.clustered().is_some()
    }

    /// The idempotency window (single node with history): IDs forgotten before their
    /// TTL for lack of memory, and bytes held.
    pub fn idempotency_stats(&self) -> (u64, usize) {
        self.history
            .as_ref()
            .map_or((0, 0), |h| (h.pushes.evicted_early(), h.pushes.bytes()))
    }

    /// IDs the idempotency window holds in its memory (0 without it).
    pub fn idempotency_capacity(&self) -> usize {
        self.history.as_ref().map_or(0, |h| h.pushes.capacity())
    }

    /// Bytes retained by the users' and rooms' histories.
    pub fn history_bytes(&self) -> usize {
        self.history
            .as_ref()
            .map_or(0, |h| h.users.bytes() + h.rooms.bytes())
    }

    /// Connects the router to the reactors (once, right after they start).
    pub fn attach(&self, reactors: Vec<ReactorHandle>) {
        let _ = self.reactors.set(reactors);
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The bus.
    pub fn bus(&self) -> &dyn ClusterBus {
        &*self.bus
    }

    /// Whether other nodes may hold recipients.
    pub fn is_clustered(&self) -> bool {
        self.bus.stats().is_some()
    }

    /// A connection of `uid` opened here; returns the interned ID.
    pub fn add_user(&self, uid: &str, conn: ConnRef) -> Arc<str> {
        let (id, first) = self.registry.add_user(uid, conn);
        if first {
            self.bus.interest_changed(Kind::User, &id);
        }
        id
    }

    /// A connection of `uid` went away.
    pub fn remove_user(&self, uid: &Arc<str>, conn: ConnRef) {
        if self.registry.remove_user(uid, conn) {
            self.bus.interest_changed(Kind::User, uid);
        }
    }

    /// `conn` joined `room`; returns the interned ID.
    pub fn join(&self, room: &str, conn: ConnRef) -> Arc<str> {
        let (id, first) = self.registry.join(room, conn);
        if first {
            self.bus.interest_changed(Kind::Room, &id);
        }
        id
    }

    /// `conn` left `room`.
    pub fn leave(&self, room: &Arc<str>, conn: ConnRef) {
        if let Some(c) = &self.clustered {
            let mut shard = c.rooms.lock(room);
            let key = (conn, Arc::clone(room));
            if c.openers.pending.joins.lock().remove(&key) {
                // Its join had not registered it yet: now it never will.
                return;
            }
            if self.registry.leave(room, conn) {
                shard.remove(&**room);
                drop(shard);
                self.bus.interest_changed(Kind::Room, room);
            }
            return;
        }
        if self.registry.leave(room, conn) {
            self.bus.interest_changed(Kind::Room, room);
        }
    }

    /// A `/ws` connection of `uid` opened, resuming after `since` (else after the
    /// device's last ack, else from the start): registers it and, under the user's
    /// history lock, snapshots the replay, so that every later push lands behind it.
    /// The caller queues the replay before anything from the connection's inbox.
    pub fn open_user(
        &self,
        uid: &str,
        conn: ConnRef,
        device: Option<&str>,
        since: Option<u64>,
    ) -> (Arc<str>, Option<Welcome>, Opened) {
        if let Some(c) = self.clustered() {
            // Pending: the welcome comes through the reactor's welcome queue.
            let id = self.open_clustered(c, uid, conn, device, since);
            return (id, None, Opened { replayed_from: 0 });
        }
        let Some(h) = &self.history else {
            let id = self.add_user_on(uid, conn, device);
            // Clustered, a `since` is not lost, only out of reach now (see `no_history`):
            // the client resumes again later from the same seq.
            let w = Welcome {
                recovered: since.filter(|_| self.clustered.is_some()).map(|_| false),
                error: since.map(|_| self.no_history()),
                ..Welcome::default()
            };
            return (id, Some(w), Opened { replayed_from: 0 });
        };
        let mut l = h.users.lock(uid, Instant::now());
        let id = self.add_user_on(uid, conn, device);
        let latest = l.latest(uid);
        l.pin(uid, true);
        if since.is_some_and(|s| s > latest) {
            let w = Welcome {
                seq: Some(latest),
                error: Some(cp::SINCE_IN_FUTURE),
                ..Welcome::default()
            };
            return (
                id,
                Some(w),
                Opened {
                    replayed_from: latest,
                },
            );
        }
        let from = since
            .or_else(|| l.last_ack(uid, device.unwrap_or(DEFAULT_DEVICE)))
            .unwrap_or(0);
        let r = l.replay(uid, from, latest);
        let w = Welcome {
            seq: Some(latest),
            recovered: Some(r.recovered),
            replay: r.frames,
            error: None,
        };
        (
            id,
            Some(w),
            Opened {
                replayed_from: from,
            },
        )
    }

    /// A connection of `uid` went away (with history: under the user's lock, so that a
    /// connection opening meanwhile keeps the stream).
    pub fn close_user(&self, uid: &Arc<str>, conn: ConnRef) {
        if let Some(c) = &self.clustered {
            let mut shard = c.users.lock(uid);
            if c.openers.pending.opens.lock().remove(&conn) {
                // Its opening had not registered it yet: now it never will.
                return;
            }
            if self.registry.remove_user(uid, conn) {
                shard.remove(&**uid);
                drop(shard);
                self.bus.interest_changed(Kind::User, uid);
            }
            return;
        }
        match &self.history {
            Some(h) => {
                let mut l = h.users.lock(uid, Instant::now());
                if self.registry.remove_user(uid, conn) {
                    l.pin(uid, false);
                    self.bus.interest_changed(Kind::User, uid);
                }
            }
            None => self.remove_user(uid, conn),
        }
    }

    /// A `resume` request, the connection's first: replays, through its inbox, the
    /// retained messages after `since` up to where its opening replay started (later
    /// ones it has had), then `resumed`.
    pub fn resume(
        &self,
        uid: &str,
        conn: ConnRef,
        since: u64,
        opened: Opened,
    ) -> Result<(), RequestError> {
        if let Some(c) = self.clustered() {
            // Read on an opener; its errors are replied from there.
            self.resume_later(c, uid, conn, since, opened);
            return Ok(());
        }
        let h = self.history.as_ref().ok_or_else(|| self.no_history())?;
        let l = h.users.lock(uid, Instant::now());
        let latest = l.latest(uid);
        if since > latest {
            return Err(cp::SINCE_IN_FUTURE);
        }
        let r = l.replay(uid, since, opened.replayed_from);
        for frame in r.frames {
            self.deliver_to(conn, frame);
        }
        self.deliver_to(conn, session::messages::resumed(latest, r.recovered));
        Ok(())
    }

    /// `conn` joined `room`; with `since`, under the room's history lock, the room's
    /// retained messages after it and then `joined` go to the connection through its
    /// inbox before the lock is released, so every later room message lands behind
    /// them. Joined in any case; the error says why nothing was replayed.
    pub fn join_since(
        &self,
        room: &str,
        conn: ConnRef,
        since: Option<u64>,
    ) -> (Arc<str>, Result<(), RequestError>) {
        if let Some(c) = self.clustered() {
            let Some(since) = since else {
                let mut shard = c.rooms.lock(room);
                let id = self.join(room, conn);
                shard
                    .entry(Arc::clone(&id))
                    .or_insert_with(UserSeq::from_next);
                return (id, Ok(()));
            };
            // Read on an opener; its errors are replied from there.
            return (self.join_later(c, room, conn, since), Ok(()));
        }
        let (Some(h), Some(since)) = (&self.history, since) else {
            let id = self.join(room, conn);
            let result = match since {
                Some(_) => Err(self.no_history()),
                None => Ok(()),
            };
            return (id, result);
        };
        let l = h.rooms.lock(room, Instant::now());
        let id = self.join(room, conn);
        let latest = l.latest(room);
        if since > latest {
            return (id, Err(cp::SINCE_IN_FUTURE));
        }
        let r = l.replay(room, since, latest);
        let mut ok = true;
        for frame in r.frames {
            ok &= self.deliver_to(conn, frame);
        }
        ok &= self.deliver_to(conn, session::messages::joined(room, latest, r.recovered));
        drop(l);
        if !ok {
            return (
                id,
                Err(RequestError {
                    code: "unavailable",
                    message: "node saturated; the replay was cut short",
                }),
            );
        }
        (id, Ok(()))
    }

    /// An `ack`: `device` of `uid` processed everything up to `seq`.
    pub fn ack(&self, uid: &str, device: Option<&str>, seq: u64) -> Result<(), RequestError> {
        if let Some(c) = self.clustered() {
            let latest = c.users.lock(uid).get(uid).and_then(UserSeq::last);
            if latest.is_none_or(|l| seq > l) {
                return Err(cp::UNKNOWN_ACK);
            }
            c.bus
                .store_ack(uid, device.unwrap_or(DEFAULT_DEVICE), seq)
                .map_err(|_| RequestError {
                    code: "unavailable",
                    message: "the ack could not be stored; send it again",
                })?;
            self.acked(uid, seq);
            return Ok(());
        }
        let h = self.history.as_ref().ok_or_else(|| self.no_history())?;
        let mut l = h.users.lock(uid, Instant::now());
        l.ack(uid, device.unwrap_or(DEFAULT_DEVICE), seq)
            .map_err(|_| cp::UNKNOWN_ACK)?;
        drop(l);
        self.acked(uid, seq);
        Ok(())
    }

    /// Carries out a push with the caller's `key` once: a retry within the history TTL
    /// gets the first answer (`true`: it was a retry) and delivers nothing. `push`'s
    /// error is not remembered. Without history, `push` is simply called.
    pub fn once<E>(
        &self,
        key: Option<&str>,
        push: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<(Bytes, bool), E> {
        match (&self.history, key) {
            (Some(h), Some(key)) => h.pushes.once(key, Instant::now(), push),
            _ => push().map(|b| (b, false)),
        }
    }

    /// Delivers a message from `from` to `users` and `rooms`, each connection once. With
    /// history, each named user's copy carries that user's next seq and the message `id`
    /// (the caller's, else a new one), each room's copy the room's next seq, and every
    /// copy is retained; without, it is [`Router::push`] of one frame.
    ///
    /// On a clustered node with history the answer needs JetStream's: this waits for it
    /// (at most [`STORE_WAIT`]), so it is for tools and tests; a reactor uses
    /// [`Router::send_then`].
    pub fn send(
        &self,
        users: &[impl AsRef<str>],
        rooms: &[impl AsRef<str>],
        from: &str,
        data: &[u8],
        id: Option<&str>,
        received: Instant,
    ) -> Delivered {
        if self.push_is_deferred() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let done: DeliveredDone = Box::new(move |d| {
                let _ = tx.try_send(d);
            });
            self.send_then(users, rooms, from, data, id, received, done);
            return rx.recv_timeout(STORE_WAIT).unwrap_or_else(|_| Delivered {
                outcome: PushOutcome {
                    connections: 0,
                    offline_users: 0,
                    refused: 0,
                    bus: Err(BusError::History),
                },
                id: None,
                seqs: Vec::new(),
                offline: Vec::new(),
            });
        }
        self.send_now(users, rooms, from, data, id, received)
    }

    /// Whether a push's answer has to wait for JetStream (a clustered node with history
    /// ready): then [`Router::send_then`] tells it later.
    pub fn push_is_deferred(&self) -> bool {
        self.clustered().is_some()
    }

    /// [`Router::send`] without waiting: `done` is told what the push reached, here and
    /// now, or, when the push waits for JetStream, on the bus thread once it answered
    /// every store (or the bus gave up on it).
    #[allow(clippy::too_many_arguments)]
    pub fn send_then(
        &self,
        users: &[impl AsRef<str>],
        rooms: &[impl AsRef<str>],
        from: &str,
        data: &[u8],
        id: Option<&str>,
        received: Instant,
        done: DeliveredDone,
    ) {
        match self.clustered() {
            Some(c) => {
                // Refusals reach `done` too.
                let _ = self.send_clustered(
                    c,
                    &dedup_strs(users),
                    &dedup_strs(rooms),
                    from,
                    data,
                    id,
                    Some(done),
                );
            }
            None => done(self.send_now(users, rooms, from, data, id, received)),
        }
    }

    /// [`Router::send`] where nothing waits: without history, or with it on this node.
    fn send_now(
        &self,
        users: &[impl AsRef<str>],
        rooms: &[impl AsRef<str>],
        from: &str,
        data: &[u8],
        id: Option<&str>,
        received: Instant,
    ) -> Delivered {
        let Some(h) = &self.history else {
            let frame = Self::msg_frame(from, data);
            return Delivered {
                outcome: self.push(users, rooms, frame, received),
                id: None,
                seqs: Vec::new(),
                offline: Vec::new(),
            };
        };
        let id = match id {
            Some(id) => id.to_owned(),
            None => format!(
                "{:08x}{:x}",
                h.id_prefix,
                h.next_id.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let now = Instant::now();
        let mut seqs = Vec::with_capacity(users.len());
        let mut offline = Vec::new();
        let mut reached = HashSet::new();
        let mut targets = Vec::new();
        let (mut connections, mut refused) = (0, 0);
        for uid in dedup_strs(users) {
            targets.clear();
            // Under the user's lock: seq, retain, collect and hand to the reactors, so a
            // connection opening meanwhile finds the message in its replay or gets it
            // live, and the user's messages enter each inbox in seq order.
            let mut l = h.users.lock(uid, now);
            let online = self.registry.user_connections(uid, &mut targets);
            let (seq, frame) = l.append(uid, |seq| cp::msg_frame_seq(from, &id, None, seq, data));
            if let Some(d) = self.undelivered.get() {
                d.track(uid, &id, seq);
            }
            if online {
                l.pin(uid, true);
            }
            if !rooms.is_empty() {
                reached.extend(targets.iter().copied());
            }
            let r = self.dispatch(&mut targets, frame, received);
            drop(l);
            refused += r;
            connections += targets.len() - r;
            seqs.push((uid.to_owned(), seq));
            if !online {
                offline.push(uid.to_owned());
            }
        }
        for room in dedup_strs(rooms) {
            targets.clear();
            let mut l = h.rooms.lock(room, now);
            self.registry.room_connections(room, &mut targets);
            // A connection gets the message once: as its user's, or the first named room's.
            if users.len() + rooms.len() > 1 {
                targets.retain(|c| reached.insert(*c));
            }
            let (_, frame) = l.append(room, |seq| {
                cp::msg_frame_seq(from, &id, Some(room), seq, data)
            });
            let r = self.dispatch(&mut targets, frame, received);
            drop(l);
            refused += r;
            connections += targets.len() - r;
        }
        Delivered {
            outcome: PushOutcome {
                connections,
                offline_users: offline.len(),
                refused,
                bus: Ok(()),
            },
            id: Some(id),
            seqs,
            offline,
        }
    }

    /// A delivered message, `{"type":"msg","from":...,"data":...}`, as a text frame.
    pub fn msg_frame(from: &str, data: &[u8]) -> Bytes {
        session::client_protocol::msg_frame(from, data)
    }

    /// `body` as one unmasked text frame.
    pub fn text_frame(body: &[u8]) -> Bytes {
        crate::bus::inbound::text_frame(body)
    }

    /// Delivers `frame` (a text frame holding a message's JSON) to every connection of
    /// `users` and every member of `rooms`, each connection once: the local ones directly,
    /// the rest through the bus, which carries the frame's payload.
    pub fn push(
        &self,
        users: &[impl AsRef<str>],
        rooms: &[impl AsRef<str>],
        frame: Bytes,
        received: Instant,
    ) -> PushOutcome {
        let body = payload_of(&frame);
        let mut outcome = self.deliver_local(users, rooms, &[] as &[&str], frame, received);
        if self.is_clustered() {
            outcome.offline_users = 0;
            outcome.bus = self.bus.publish(Outgoing {
                users: dedup_ids(users),
                rooms: dedup_ids(rooms),
                broadcast: false,
                body,
            });
        }
        outcome
    }

    /// Delivers `frame` (a text frame) to every `/ws` connection of the cluster.
    /// `Ok(refused)` counts the reactors here whose inbox was full.
    pub fn broadcast(&self, frame: Bytes, received: Instant) -> Result<usize, BusError> {
        let body = payload_of(&frame);
        let refused = self.broadcast_local(frame, received);
        self.bus.publish(Outgoing {
            users: Vec::new(),
            rooms: Vec::new(),
            broadcast: true,
            body,
        })?;
        Ok(refused)
    }

    /// Delivers `frame` to every connection here of `users` and every member here of
    /// `rooms`, except the connections of `except_users`, each connection once.
    pub fn deliver_local(
        &self,
        users: &[impl AsRef<str>],
        rooms: &[impl AsRef<str>],
        except_users: &[impl AsRef<str>],
        frame: Bytes,
        received: Instant,
    ) -> PushOutcome {
        let mut targets = Vec::new();
        let mut offline_users = 0;
        for u in users {
            if !self.registry.user_connections(u.as_ref(), &mut targets) {
                offline_users += 1;
            }
        }
        for r in rooms {
            self.registry.room_connections(r.as_ref(), &mut targets);
        }
        if users.len() + rooms.len() > 1 {
            // A user named twice, or in a named room too, still gets the push once.
            let mut seen = HashSet::with_capacity(targets.len());
            targets.retain(|c| seen.insert(*c));
        }
        if !except_users.is_empty() && !targets.is_empty() {
            let mut skip = Vec::new();
            for u in except_users {
                self.registry.user_connections(u.as_ref(), &mut skip);
            }
            if !skip.is_empty() {
                let skip: HashSet<ConnRef> = skip.into_iter().collect();
                targets.retain(|c| !skip.contains(c));
            }
        }
        let refused = self.dispatch(targets.as_mut_slice(), frame, received);
        PushOutcome {
            connections: targets.len() - refused,
            offline_users,
            refused,
            bus: Ok(()),
        }
    }

    /// Delivers `frame` to one connection of this node; false if its reactor refused it.
    pub fn deliver_to(&self, conn: ConnRef, frame: Bytes) -> bool {
        self.dispatch(&mut [conn], frame, Instant::now()) == 0
    }

    /// Delivers `frame` to every `/ws` connection of this node; returns how many reactors
    /// refused it (inbox full).
    pub fn broadcast_local(&self, frame: Bytes, received: Instant) -> usize {
        let reactors = self.reactors.get().map(Vec::as_slice).unwrap_or_default();
        reactors
            .iter()
            .filter(|r| {
                r.send(Command::Broadcast {
                    frame: frame.clone(),
                    received: Some(received),
                })
                .is_err()
            })
            .count()
    }

    /// One `Deliver` per reactor that has recipients, sharing the frame. Returns the
    /// recipients whose reactor refused the command (its inbox is full): never waits.
    fn dispatch(&self, targets: &mut [ConnRef], frame: Bytes, received: Instant) -> usize {
        let Some(reactors) = self.reactors.get() else {
            return targets.len();
        };
        if targets.is_empty() {
            return 0;
        }
        targets.sort_unstable_by_key(|c| c.reactor);
        let mut refused = 0;
        let mut rest = &*targets;
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .take_while(|c| c.reactor == first.reactor)
                .count();
            let (mine, tail) = rest.split_at(n);
            let sent = reactors.get(usize::from(first.reactor)).map(|handle| {
                handle.send(Command::Deliver {
                    frame: frame.clone(),
                    targets: mine.to_vec(),
                    received: Some(received),
                })
            });
            if !matches!(sent, Some(Ok(()))) {
                refused += n;
            }
            rest = tail;
        }
        refused
    }
}

/// The payload of an unmasked server frame, sharing its memory (what the bus carries).
fn payload_of(frame: &Bytes) -> Bytes {
    match protocol::FrameHeader::parse(frame) {
        Ok(Some((_, n))) => frame.slice(n..),
        _ => frame.clone(),
    }
}

/// The device of a connection that named none.
pub const DEFAULT_DEVICE: &str = "default";

/// The IDs once each, in order.
fn dedup_strs(ids: &[impl AsRef<str>]) -> Vec<&str> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter()
        .map(AsRef::as_ref)
        .filter(|id| seen.insert(*id))
        .collect()
}

/// The IDs once each, in order, for the trip to the bus thread.
fn dedup_ids(ids: &[impl AsRef<str>]) -> Vec<Arc<str>> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter()
        .map(AsRef::as_ref)
        .filter(|id| seen.insert(*id))
        .map(Arc::from)
        .collect()
}

/// The bus hands the router what arrives for its connections through this, and knows
/// nothing else of it.
impl crate::bus::Inbound for Router {
    fn broadcast_local(&self, frame: Bytes, received: Instant) {
        Router::broadcast_local(self, frame, received);
    }

    fn deliver_local(
        &self,
        users: &[&str],
        rooms: &[&str],
        except_users: &[&str],
        frame: Bytes,
        received: Instant,
    ) {
        Router::deliver_local(self, users, rooms, except_users, frame, received);
    }

    fn deliver_stored(&self, uid: &str, seq: u64, prev: u64, frame: Bytes) -> bool {
        Router::deliver_stored(self, uid, seq, prev, frame)
    }

    fn vouch(&self, seq: u64) {
        Router::vouch(self, seq);
    }

    fn deliver_stored_room(
        &self,
        room: &str,
        seq: u64,
        prev: u64,
        frame: Bytes,
        targets: Option<&str>,
    ) -> bool {
        Router::deliver_stored_room(self, room, seq, prev, frame, targets)
    }

    fn catch_up(&self, kind: Kind, id: &Arc<str>) {
        Router::catch_up(self, kind, id);
    }

    fn holds(&self, kind: Kind, id: &str) -> bool {
        self.registry.contains(kind, id)
    }

    fn presence_local(&self, uid: &str, node: &str) -> Vec<PresenceEntry> {
        Router::presence_local(self, uid, node)
    }

    fn disconnect_local(&self, req: &Disconnect) -> usize {
        Router::disconnect_local(self, req)
    }

    fn room_presence_local(&self, room: &str, node: &str, limit: usize, done: ListingDone) {
        Router::room_presence_local(self, room, node, limit, done);
    }

    fn change_rooms_local(&self, req: &RoomChange) {
        Router::change_rooms_local(self, req, &RoomTally::new(None));
    }

    fn acked_elsewhere(&self, uid: &str, seq: u64) {
        Router::acked(self, uid, seq);
    }
}
