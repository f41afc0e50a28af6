//! Control messages between the nodes of a cluster: which nodes are alive, presence
//! queries and disconnects (`docs/BUS.md`, "Control subjects").
//!
//! Everything lives under `<prefix>.ctl.`, so a backend's NATS permissions can exclude
//! it: a backend publishing pushes never needs it.
//!
//! - `<prefix>.ctl.node`: every node announces itself every [`ANNOUNCE_EVERY`]; a node
//!   not heard from for [`FORGET_AFTER`] (three announcements missed) is no longer
//!   expected to answer. A node that hears a node it did not know announces itself at
//!   once, so a new node knows the others within a round trip.
//! - `<prefix>.ctl.presence`: a query, with the reply subject
//!   `<prefix>.ctl.reply.<boot>.<token>` of the asking process; each node answers once.
//!   The query is answered (through a callback, nobody waits) once every live node
//!   answered or its deadline passed, naming the missing ones, and the nodes lately
//!   gone silent (see [`NAME_GONE_FOR`]) whose users it therefore cannot list.
//! - `<prefix>.ctl.disconnect`: close a user's connections (of one device) everywhere;
//!   no answer.
//! - `<prefix>.h.ack.>` (only on a node with the undelivered hook on): the acks other
//!   nodes store, so that the node owning a message's deadline learns of them.
//! - `<prefix>.events` (published, never subscribed): connect, disconnect and undelivered
//!   events for backends on the bus.
//! - `<prefix>.ctl.room_presence`: a query for who is in a room, answered like a presence
//!   query, but later: the answering node asks its reactors which users its members are
//!   ([`crate::room_presence`]) and queues its answer from the thread that finishes.
//! - `<prefix>.ctl.rooms`: a server-side room change (`POST /v1/rooms/join|leave`) for a
//!   user's connections everywhere; no answer.
//!
//! This module knows no NATS client: the bus thread subscribes to
//! [`Control::subscriptions`], hands every message on them to [`Control::on_message`],
//! and publishes what [`Control::take_outgoing`] returns, and ends the queries whose
//! deadline passed ([`Control::expire_queries`], at [`Control::next_deadline`]). Other
//! threads only queue: nothing here blocks on the bus.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use protocol::CloseCode;
use serde::{Deserialize, Serialize};

use super::inbound::Inbound;
use super::BusError;
use crate::room_presence::RoomMember;

/// How often a node announces itself.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// A node silent this long is forgotten (three announcements missed, and some slack).
pub const FORGET_AFTER: Duration = Duration::from_millis(3500);
/// A node forgotten (gone silent without a word: crashed, cut off, or scaled down) is
/// named in presence answers' `"partial"` this long after, unless it comes back: its
/// users may still be connected to it, and an answer must not pretend they are not.
pub const NAME_GONE_FOR: Duration = Duration::from_secs(300);
/// Most bytes of connection entries one node puts in a presence answer; past it the
/// answer says `"truncated":true` (well below NATS's default 1 MiB payload limit).
pub const ANSWER_MAX_BYTES: usize = 256 * 1024;
/// Control messages waiting for the bus thread before more are refused.
const QUEUE_DEPTH: usize = 4096;
/// Longest close reason, in bytes: a close frame's payload is at most 125 bytes, two of
/// which are the code (RFC 6455 §5.5).
pub const MAX_REASON_BYTES: usize = 123;

/// One connection in a presence answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The node holding it.
    pub node: String,
    /// The connection, unique on its node while it lives.
    pub conn: String,
    /// Its `?device=`, `"default"` when it named none.
    pub device: String,
}

/// A presence query's answer from the rest of the cluster.
#[derive(Debug, Default)]
pub struct ClusterPresence {
    /// Entries by the queried user's position in the query.
    pub users: Vec<Vec<PresenceEntry>>,
    /// Live nodes that did not answer in time.
    pub partial: Vec<String>,
    /// Some node cut its answer at [`ANSWER_MAX_BYTES`].
    pub truncated: bool,
    /// A room query's: the room's connections on the nodes that answered.
    pub connections: usize,
    /// A room query's: the members they listed.
    pub members: Vec<RoomMember>,
}

/// A request to close a user's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// The user.
    pub uid: String,
    /// Only the connections of this device, if given.
    #[serde(default)]
    pub device: Option<String>,
    /// The close code: 4000–4999 or 1008.
    pub code: u16,
    /// The close reason, at most [`MAX_REASON_BYTES`].
    #[serde(default)]
    pub reason: String,
    /// Only connections opened before this, in microseconds since the Unix epoch: set
    /// when a new connection on a named device replaces that device's connections on the
    /// other nodes, so that it never closes one newer than itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// The reason sent with 4008 to a connection replaced by a newer one of its device.
pub const REPLACED_REASON: &str = "replaced by a new connection of the same device";

impl Disconnect {
    /// Why the request cannot be carried out, if it cannot.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.uid.is_empty() || self.uid.len() > session::auth::MAX_ID_LEN {
            return Err("\"uid\" must be a non-empty string of at most 256 bytes");
        }
        if self.device.as_ref().is_some_and(|d| d.is_empty()) {
            return Err("\"device\" must be a non-empty string when given");
        }
        if !valid_kick_code(self.code) {
            return Err("\"code\" must be 1008 or between 4000 and 4999");
        }
        if self.reason.len() > MAX_REASON_BYTES {
            return Err("\"reason\" must be at most 123 bytes of UTF-8");
        }
        Ok(())
    }
}

/// Close codes an operator may close a connection with.
pub fn valid_kick_code(code: u16) -> bool {
    code == CloseCode::POLICY.0 || (4000..=4999).contains(&code)
}

#[derive(Serialize, Deserialize)]
struct Announce<'a> {
    node: &'a str,
}

#[derive(Serialize, Deserialize)]
struct Query {
    node: String,
    uids: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct RoomQuery {
    node: String,
    room: String,
    limit: usize,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    node: String,
    #[serde(default)]
    users: Vec<Vec<PresenceEntry>>,
    #[serde(default)]
    truncated: bool,
    /// A room query's: the room's connections on the node, and those listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    connections: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    members: Vec<RoomMember>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Wakes the bus thread when an answer was queued from another thread (a reactor that
/// finished a room listing).
#[derive(Default)]
struct Waker(std::sync::OnceLock<Arc<dyn Fn() + Send + Sync>>);

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// Told a presence query's answers from the other nodes (on the bus thread, or on the
/// asking thread when nobody is to be waited for): must not block.
pub type PresenceDone = Box<dyn FnOnce(Result<ClusterPresence, BusError>) + Send>;

/// A presence query waiting for answers.
struct Gathering {
    /// Nodes that have not answered yet.
    expected: Vec<String>,
    result: ClusterPresence,
    deadline: Instant,
    done: PresenceDone,
}

impl std::fmt::Debug for Gathering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gathering")
            .field("expected", &self.expected)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// A message for the bus thread to publish.
#[derive(Debug)]
pub struct ControlOut {
    /// Where to.
    pub subject: String,
    /// Where answers go, for a query.
    pub reply: Option<String>,
    /// The JSON.
    pub payload: Bytes,
}

/// What control counts.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Control messages that were not what they should be (dropped).
    pub invalid: super::stats::Counter,
    /// Disconnect requests received from other nodes.
    pub disconnects_received: super::stats::Counter,
    /// Server-side room changes received from other nodes.
    pub room_changes_received: super::stats::Counter,
    /// Presence queries answered for other nodes.
    pub queries_answered: super::stats::Counter,
    /// Requests whose reply subject was not a control inbox (a delivery subject, say):
    /// not answered.
    pub bad_reply: super::stats::Counter,
}

/// The control state of one node.
#[derive(Debug)]
pub struct Control {
    node: String,
    node_subject: String,
    presence_subject: String,
    disconnect_subject: String,
    rooms_subject: String,
    room_presence_subject: String,
    /// `<prefix>.ctl.`
    ctl_root: String,
    waker: Waker,
    /// `<prefix>.h.ack.`: acks stored by the nodes, under it.
    acks_prefix: String,
    /// Subscribe to the acks (the undelivered hook is on).
    watch_acks: std::sync::atomic::AtomicBool,
    events_subject: String,
    /// `<prefix>.ctl.reply.<boot>.`: this process's answers arrive under it.
    reply_prefix: String,
    /// Other nodes by name, and when each was last heard from.
    peers: Mutex<HashMap<String, Instant>>,
    /// Live nodes that missed a query's deadline and have not been heard from since:
    /// later queries name them at once instead of waiting for them again. The wait
    /// holds the thread that serves the query (a reactor), so a frozen node costs one
    /// wait, not one per query, until it announces itself again.
    suspect: Mutex<HashSet<String>>,
    next_announce: Mutex<Instant>,
    /// Nodes forgotten, and when: named in presence answers for [`NAME_GONE_FOR`].
    gone: Mutex<HashMap<String, Instant>>,
    /// Queries waiting for answers, by token.
    waiting: Mutex<HashMap<u64, Gathering>>,
    next_token: AtomicU64,
    tx: Sender<ControlOut>,
    rx: Receiver<ControlOut>,
    stats: ControlStats,
}

impl Control {
    /// Control for node `node` under `prefix` (already checked); `boot` tells this
    /// process apart from an earlier one of the same node.
    pub fn new(prefix: &str, node: &str, boot: u64) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
        Control {
            node: node.to_owned(),
            node_subject: format!("{prefix}.ctl.node"),
            presence_subject: format!("{prefix}.ctl.presence"),
            disconnect_subject: format!("{prefix}.ctl.disconnect"),
            rooms_subject: format!("{prefix}.ctl.rooms"),
            room_presence_subject: format!("{prefix}.ctl.room_presence"),
            ctl_root: format!("{prefix}.ctl."),
            waker: Waker::default(),
            acks_prefix: format!("{prefix}.h.ack."),
            watch_acks: std::sync::atomic::AtomicBool::new(false),
            events_subject: format!("{prefix}.events"),
            reply_prefix: format!("{prefix}.ctl.reply.{boot:016x}."),
            peers: Mutex::new(HashMap::new()),
            suspect: Mutex::new(HashSet::new()),
            gone: Mutex::new(HashMap::new()),
            next_announce: Mutex::new(Instant::now()),
            waiting: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            tx,
            rx,
            stats: ControlStats::default(),
        }
    }

    /// How another thread wakes the bus thread to publish what it queued: set once,
    /// by the bus, before it starts.
    pub fn set_waker(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.waker.0.set(wake);
    }

    /// The counters.
    pub fn stats(&self) -> &ControlStats {
        &self.stats
    }

    /// The subjects the bus thread subscribes to for this module.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut subjects = vec![
            self.node_subject.clone(),
            self.presence_subject.clone(),
            self.disconnect_subject.clone(),
            self.rooms_subject.clone(),
            self.room_presence_subject.clone(),
            format!("{}*", self.reply_prefix),
        ];
        if self.watch_acks.load(Ordering::Relaxed) {
            subjects.push(format!("{}>", self.acks_prefix));
        }
        subjects
    }

    /// Subscribes to the acks the nodes store (the undelivered hook): to be called
    /// before the bus thread starts.
    pub fn watch_acks(&self) {
        self.watch_acks.store(true, Ordering::Relaxed);
    }

    /// Queues an event for `<prefix>.events`.
    pub fn send_event(&self, payload: Bytes) -> Result<(), BusError> {
        self.queue(ControlOut {
            subject: self.events_subject.clone(),
            reply: None,
            payload,
        })
    }

    /// What to publish now: queued messages, and an announcement when one is due.
    pub fn take_outgoing(&self, now: Instant, max: usize) -> Vec<ControlOut> {
        let mut out: Vec<ControlOut> = self.rx.try_iter().take(max).collect();
        let mut next = self.next_announce.lock();
        if now >= *next {
            *next = now + ANNOUNCE_EVERY;
            out.push(self.announcement());
        }
        out
    }

    /// Whether messages wait in the queue.
    pub fn has_outgoing(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Announce at the next pass (a new connection to NATS, or a node we did not know).
    pub fn announce_soon(&self) {
        *self.next_announce.lock() = Instant::now();
    }

    fn announcement(&self) -> ControlOut {
        ControlOut {
            subject: self.node_subject.clone(),
            reply: None,
            payload: json(&Announce { node: &self.node }),
        }
    }

    fn queue(&self, msg: ControlOut) -> Result<(), BusError> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(BusError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(BusError::Disconnected),
        }
    }

    /// The other nodes heard from within [`FORGET_AFTER`], sorted; forgets the rest
    /// (remembering them as gone).
    pub fn live_peers(&self, now: Instant) -> Vec<String> {
        let mut peers = self.peers.lock();
        let mut gone = Vec::new();
        peers.retain(|name, seen| {
            let live = now.saturating_duration_since(*seen) <= FORGET_AFTER;
            if !live {
                gone.push(name.clone());
            }
            live
        });
        let mut names: Vec<String> = peers.keys().cloned().collect();
        drop(peers);
        if !gone.is_empty() {
            let mut g = self.gone.lock();
            for name in gone {
                g.insert(name, now);
            }
        }
        names.sort_unstable();
        names
    }

    /// Nodes forgotten within [`NAME_GONE_FOR`], sorted; forgets older ones.
    pub fn gone_peers(&self, now: Instant) -> Vec<String> {
        let mut g = self.gone.lock();
        g.retain(|_, at| now.saturating_duration_since(*at) <= NAME_GONE_FOR);
        let mut names: Vec<String> = g.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Records that `node` is alive; true if it was not known.
    fn seen(&self, node: &str, now: Instant) -> bool {
        if node == self.node {
            return false;
        }
        self.suspect.lock().remove(node);
        self.gone.lock().remove(node);
        self.peers.lock().insert(node.to_owned(), now).is_none()
    }

    /// Queues a disconnect for every other node.
    pub fn send_disconnect(&self, req: &Disconnect) -> Result<(), BusError> {
        self.queue(ControlOut {
            subject: self.disconnect_subject.clone(),
            reply: None,
            payload: json(req),
        })
    }

    /// Queues a server-side room change for every other node.
    pub fn send_room_change(&self, req: &crate::rooms::RoomChange) -> Result<(), BusError> {
        self.queue(ControlOut {
            subject: self.rooms_subject.clone(),
            reply: None,
            payload: json(req),
        })
    }

    /// Asks every other live node for the connections of `uids`; `done` is told their
    /// answers once all came or `deadline` passed (on the bus thread, or here when there
    /// is nobody to wait for or the query could not be queued). `wake` tells the bus
    /// thread a message is queued.
    pub fn ask_presence(
        &self,
        uids: &[String],
        deadline: Instant,
        wake: impl FnOnce(),
        done: PresenceDone,
    ) {
        let query = Query {
            node: self.node.clone(),
            uids: uids.to_vec(),
        };
        let subject = self.presence_subject.clone();
        self.ask(subject, json(&query), uids.len(), deadline, wake, done);
    }

    /// Asks every other live node who is in `room`, listing at most `limit` members
    /// each; `done` is told as by [`Control::ask_presence`].
    pub fn ask_room_presence(
        &self,
        room: &str,
        limit: usize,
        deadline: Instant,
        wake: impl FnOnce(),
        done: PresenceDone,
    ) {
        let query = RoomQuery {
            node: self.node.clone(),
            room: room.to_owned(),
            limit,
        };
        let subject = self.room_presence_subject.clone();
        self.ask(subject, json(&query), 0, deadline, wake, done);
    }

    fn ask(
        &self,
        subject: String,
        payload: Bytes,
        users: usize,
        deadline: Instant,
        wake: impl FnOnce(),
        done: PresenceDone,
    ) {
        let now = Instant::now();
        let mut expected = self.live_peers(now);
        let mut result = ClusterPresence {
            users: vec![Vec::new(); users],
            ..ClusterPresence::default()
        };
        result.partial.extend(self.gone_peers(now));
        {
            let suspect = self.suspect.lock();
            expected.retain(|n| {
                let wait = !suspect.contains(n);
                if !wait {
                    result.partial.push(n.clone());
                }
                wait
            });
        }
        if expected.is_empty() {
            result.partial.sort_unstable();
            return done(Ok(result));
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.waiting.lock().insert(
            token,
            Gathering {
                expected,
                result,
                deadline,
                done,
            },
        );
        let sent = self.queue(ControlOut {
            subject,
            reply: Some(format!("{}{token}", self.reply_prefix)),
            payload,
        });
        if let Err(e) = sent {
            let g = self.waiting.lock().remove(&token);
            if let Some(g) = g {
                (g.done)(Err(e));
            }
            return;
        }
        wake();
    }

    /// When the earliest query waiting for answers ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.lock().values().map(|g| g.deadline).min()
    }

    /// Ends the queries whose deadline passed, naming the nodes that did not answer.
    pub fn expire_queries(&self, now: Instant) {
        let late: Vec<Gathering> = {
            let mut w = self.waiting.lock();
            if w.values().all(|g| g.deadline > now) {
                return;
            }
            let tokens: Vec<u64> = w
                .iter()
                .filter(|(_, g)| g.deadline <= now)
                .map(|(t, _)| *t)
                .collect();
            tokens.iter().filter_map(|t| w.remove(t)).collect()
        };
        for g in late {
            self.finish(g);
        }
    }

    /// Tells a query's asker what it gathered; the nodes that did not answer are
    /// suspect from now on.
    fn finish(&self, g: Gathering) {
        let Gathering {
            expected,
            mut result,
            done,
            ..
        } = g;
        self.suspect.lock().extend(expected.iter().cloned());
        result.partial.extend(expected);
        result.partial.sort_unstable();
        result.partial.dedup();
        done(Ok(result));
    }

    /// Handles one message on a control subject (called on the bus thread); `reply` is
    /// the message's reply subject.
    pub fn on_message(
        &self,
        router: &dyn Inbound,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) {
        let now = Instant::now();
        if subject == self.node_subject {
            match serde_json::from_slice::<Announce<'_>>(payload) {
                Ok(a) => {
                    if self.seen(a.node, now) {
                        self.announce_soon();
                    }
                }
                Err(_) => self.stats.invalid.add(1),
            }
        } else if subject == self.presence_subject {
            let ctl_root = self.ctl_root.as_str();
            match (serde_json::from_slice::<Query>(payload), reply) {
                (Ok(_), Some(reply))
                    if !super::reply_subject::is_control_inbox(ctl_root, reply) =>
                {
                    self.stats.bad_reply.add(1);
                }
                (Ok(q), Some(reply)) => {
                    if self.seen(&q.node, now) {
                        self.announce_soon();
                    }
                    let answer = self.local_answer(router, &q.uids);
                    self.stats.queries_answered.add(1);
                    let _ = self.queue(ControlOut {
                        subject: reply.to_owned(),
                        reply: None,
                        payload: json(&answer),
                    });
                }
                _ => self.stats.invalid.add(1),
            }
        } else if subject == self.room_presence_subject {
            match (serde_json::from_slice::<RoomQuery>(payload), reply) {
                (Ok(_), Some(reply))
                    if !super::reply_subject::is_control_inbox(&self.ctl_root, reply) =>
                {
                    self.stats.bad_reply.add(1);
                }
                (Ok(q), Some(reply)) if !q.room.is_empty() => {
                    if self.seen(&q.node, now) {
                        self.announce_soon();
                    }
                    self.stats.queries_answered.add(1);
                    self.answer_room(router, &q, reply);
                }
                _ => self.stats.invalid.add(1),
            }
        } else if subject == self.disconnect_subject {
            match serde_json::from_slice::<Disconnect>(payload) {
                Ok(d) if d.check().is_ok() => {
                    self.stats.disconnects_received.add(1);
                    router.disconnect_local(&d);
                }
                _ => self.stats.invalid.add(1),
            }
        } else if let Some(rest) = subject.strip_prefix(&self.acks_prefix) {
            // `<user>.<device>`, each encoded without dots; the payload is the seq.
            let uid = rest
                .split_once('.')
                .and_then(|(u, _)| super::subject::decode_id(u));
            let seq = std::str::from_utf8(payload)
                .ok()
                .and_then(|p| p.trim().parse::<u64>().ok());
            match (uid, seq) {
                (Some(uid), Some(seq)) => router.acked_elsewhere(&uid, seq),
                _ => self.stats.invalid.add(1),
            }
        } else if subject == self.rooms_subject {
            match serde_json::from_slice::<crate::rooms::RoomChange>(payload) {
                Ok(c) if c.check().is_ok() => {
                    self.stats.room_changes_received.add(1);
                    router.change_rooms_local(&c);
                }
                _ => self.stats.invalid.add(1),
            }
        } else if let Some(token) = subject.strip_prefix(&self.reply_prefix) {
            let (Ok(token), Ok(answer)) = (
                token.parse::<u64>(),
                serde_json::from_slice::<Answer>(payload),
            ) else {
                self.stats.invalid.add(1);
                return;
            };
            self.seen(&answer.node, now);
            // A late answer finds nobody waiting: dropped.
            let complete = {
                let mut w = self.waiting.lock();
                let Some(g) = w.get_mut(&token) else {
                    return;
                };
                if !g.expected.contains(&answer.node) {
                    // A node not known when asked, or a second answer: not counted.
                    return;
                }
                g.expected.retain(|n| *n != answer.node);
                g.result.truncated |= answer.truncated;
                g.result.connections += answer.connections;
                g.result.members.extend(answer.members);
                for (mine, theirs) in g.result.users.iter_mut().zip(answer.users) {
                    mine.extend(theirs);
                }
                if g.expected.is_empty() {
                    w.remove(&token)
                } else {
                    None
                }
            };
            if let Some(g) = complete {
                self.finish(g);
            }
        }
    }

    /// Lists this node's members of a room for another node: the answer is queued (and
    /// the bus thread woken) by the thread that finishes the listing, cut at
    /// [`ANSWER_MAX_BYTES`].
    fn answer_room(&self, router: &dyn Inbound, q: &RoomQuery, reply: &str) {
        let (tx, node, reply) = (self.tx.clone(), self.node.clone(), reply.to_owned());
        let waker = self.waker.0.get().cloned();
        let limit = q.limit.min(crate::room_presence::MAX_LISTED);
        router.room_presence_local(
            &q.room,
            &self.node.clone(),
            limit,
            Box::new(move |listing| {
                let mut bytes = 0;
                let mut members = listing.members;
                let keep = members
                    .iter()
                    .take_while(|m| {
                        bytes += m.uid.len() + m.device.len() + m.node.len() + m.conn.len() + 48;
                        bytes <= ANSWER_MAX_BYTES
                    })
                    .count();
                let truncated = keep < members.len();
                members.truncate(keep);
                let answer = Answer {
                    node,
                    users: Vec::new(),
                    truncated,
                    connections: listing.connections,
                    members,
                };
                let _ = tx.try_send(ControlOut {
                    subject: reply,
                    reply: None,
                    payload: json(&answer),
                });
                if let Some(wake) = waker {
                    wake();
                }
            }),
        );
    }

    /// This node's answer to a query for `uids`, cut at [`ANSWER_MAX_BYTES`].
    fn local_answer(&self, router: &dyn Inbound, uids: &[String]) -> Answer {
        let mut bytes = 0;
        let mut truncated = false;
        let users = uids
            .iter()
            .map(|uid| {
                let mut entries = router.presence_local(uid, &self.node);
                let mut keep = 0;
                for e in &entries {
                    // The JSON of one entry is its strings plus some 40 bytes of syntax.
                    let len = e.node.len() + e.conn.len() + e.device.len() + 40;
                    if bytes + len > ANSWER_MAX_BYTES {
                        truncated = true;
                        break;
                    }
                    bytes += len;
                    keep += 1;
                }
                entries.truncate(keep);
                entries
            })
            .collect();
        Answer {
            node: self.node.clone(),
            users,
            truncated,
            connections: 0,
            members: Vec::new(),
        }
    }
}

fn json<T: Serialize>(v: &T) -> Bytes {
    // Serialising plain structs into memory cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Router;

    fn answer(node: &str, uid_entries: usize) -> Vec<u8> {
        serde_json::to_vec(&Answer {
            node: node.into(),
            users: vec![vec![
                PresenceEntry {
                    node: node.into(),
                    conn: "0.1.1".into(),
                    device: "default".into(),
                };
                uid_entries
            ]],
            truncated: false,
            connections: 0,
            members: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn peers_are_forgotten_after_missed_announcements() {
        let c = Control::new("p", "me", 7);
        let router = Router::new();
        let t0 = Instant::now();
        c.on_message(&router, "p.ctl.node", None, br#"{"node":"n2"}"#);
        c.on_message(&router, "p.ctl.node", None, br#"{"node":"me"}"#);
        c.on_message(&router, "p.ctl.node", None, b"nope");
        assert_eq!(c.live_peers(t0), ["n2"]);
        assert_eq!(c.stats().invalid.get(), 1);
        assert!(c
            .live_peers(t0 + FORGET_AFTER + Duration::from_millis(10))
            .is_empty());
    }

    /// A query's answer, delivered to a channel by its callback.
    fn ask(
        c: &Control,
        deadline: Instant,
    ) -> crossbeam_channel::Receiver<Result<ClusterPresence, BusError>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        c.ask_presence(
            &["u1".to_owned()],
            deadline,
            || {},
            Box::new(move |r| {
                let _ = tx.try_send(r);
            }),
        );
        rx
    }

    #[test]
    fn a_query_collects_answers_and_names_the_silent() {
        let c = Control::new("p", "me", 7);
        let router = Router::new();
        for n in ["n2", "n3"] {
            c.on_message(
                &router,
                "p.ctl.node",
                None,
                format!(r#"{{"node":"{n}"}}"#).as_bytes(),
            );
        }
        let t0 = Instant::now();
        let got = ask(&c, t0 + Duration::from_millis(300));
        // The query goes out through the queue; answer it as n2 only.
        let q = c
            .take_outgoing(Instant::now(), 16)
            .into_iter()
            .find(|m| m.subject == "p.ctl.presence")
            .unwrap();
        let reply = q.reply.unwrap();
        assert!(reply.starts_with("p.ctl.reply.0000000000000007."));
        c.on_message(&router, &reply, None, &answer("n2", 2));
        c.on_message(&router, &reply, None, b"{}");
        assert!(got.try_recv().is_err(), "n3 is still awaited");
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_millis(300)));
        // Nothing waits for the deadline: whoever ends queries does, then.
        c.expire_queries(t0 + Duration::from_millis(299));
        assert!(got.try_recv().is_err());
        c.expire_queries(t0 + Duration::from_millis(300));
        let got = got.try_recv().unwrap().unwrap();
        assert_eq!(got.partial, ["n3"]);
        assert_eq!(got.users.len(), 1);
        assert_eq!(got.users[0].len(), 2);
        assert_eq!(c.stats().invalid.get(), 1);
        assert_eq!(c.next_deadline(), None);
        // n3 missed the deadline: the next query names it without waiting for it, and
        // is answered as soon as n2 is.
        let got = ask(&c, Instant::now() + Duration::from_secs(60));
        let q = c
            .take_outgoing(Instant::now(), 16)
            .into_iter()
            .find(|m| m.subject == "p.ctl.presence")
            .unwrap();
        c.on_message(&router, &q.reply.unwrap(), None, &answer("n2", 1));
        let got = got.try_recv().unwrap().unwrap();
        assert_eq!(got.partial, ["n3"], "not waited for again");
        // A late answer finds nobody waiting, and n3 is waited for again.
        c.on_message(&router, &reply, None, &answer("n3", 1));
        assert!(!c.suspect.lock().contains("n3"));
    }

    #[test]
    fn a_room_query_is_answered_by_whoever_finishes_the_listing() {
        let c = Control::new("p", "me", 7);
        let woken = Arc::new(AtomicU64::new(0));
        let w = Arc::clone(&woken);
        c.set_waker(Arc::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }));
        let router = Router::new();
        c.on_message(&router, "p.ctl.node", None, br#"{"node":"n2"}"#);
        // Two members here; no reactor runs in this test, so none is listed.
        for index in [1, 2] {
            let conn = reactor::ConnRef {
                reactor: 0,
                index,
                generation: 1,
            };
            router.registry().join("team", conn);
        }
        let (tx, got) = crossbeam_channel::bounded(1);
        c.ask_room_presence(
            "team",
            5,
            Instant::now() + Duration::from_secs(60),
            || {},
            Box::new(move |r| {
                let _ = tx.try_send(r);
            }),
        );
        let q = c
            .take_outgoing(Instant::now(), 16)
            .into_iter()
            .find(|m| m.subject == "p.ctl.room_presence")
            .unwrap();
        let reply = q.reply.unwrap();
        // This node answers its own query as a peer would.
        c.on_message(&router, "p.ctl.room_presence", Some(&reply), &q.payload);
        assert_eq!(woken.load(Ordering::Relaxed), 1, "the bus thread is woken");
        let a = c
            .take_outgoing(Instant::now(), 16)
            .into_iter()
            .find(|m| m.subject == reply)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&a.payload).unwrap();
        assert_eq!(
            (v["node"].as_str(), v["connections"].as_u64()),
            (Some("me"), Some(2))
        );
        // n2's answer, with a member, ends the query.
        let theirs = br#"{"node":"n2","connections":3,"members":[{"uid":"u","device":"default","node":"n2","conn":"0.1.1"}]}"#;
        c.on_message(&router, &reply, None, theirs);
        let r = got.try_recv().unwrap().unwrap();
        assert_eq!((r.connections, r.members.len()), (3, 1));
        assert!(r.partial.is_empty());
        // A query without a room, or answered elsewhere than a control inbox, is not.
        c.on_message(
            &router,
            "p.ctl.room_presence",
            Some(&reply),
            br#"{"node":"n2","room":"","limit":1}"#,
        );
        c.on_message(
            &router,
            "p.ctl.room_presence",
            Some("p.all"),
            br#"{"node":"n2","room":"r","limit":1}"#,
        );
        assert_eq!((c.stats().invalid.get(), c.stats().bad_reply.get()), (1, 1));
    }

    #[test]
    fn a_node_gone_silent_is_named_not_forgotten() {
        let c = Control::new("p", "me", 7);
        let router = Router::new();
        c.on_message(&router, "p.ctl.node", None, br#"{"node":"n2"}"#);
        // Long past FORGET_AFTER: n2 is no longer expected to answer, so nobody is
        // asked, but its users are not listed either: the answer says so.
        let later = Instant::now() + FORGET_AFTER + Duration::from_secs(1);
        assert!(c.live_peers(later).is_empty());
        let got = ask(&c, Instant::now() + Duration::from_secs(60));
        let got = got.try_recv().expect("answered at once").unwrap();
        assert_eq!(got.partial, ["n2"]);
        // Named for NAME_GONE_FOR, or until it announces itself again.
        assert!(c
            .gone_peers(later + NAME_GONE_FOR + Duration::from_secs(1))
            .is_empty());
        c.on_message(&router, "p.ctl.node", None, br#"{"node":"n3"}"#);
        let _ = c.live_peers(later);
        c.on_message(&router, "p.ctl.node", None, br#"{"node":"n3"}"#);
        assert!(c.gone_peers(Instant::now()).is_empty());
    }

    #[test]
    fn an_answer_is_cut_at_its_byte_bound() {
        let c = Control::new("p", "me", 7);
        let router = Router::new();
        let device = "d".repeat(1000);
        for i in 0..400 {
            let conn = reactor::ConnRef {
                reactor: 0,
                index: i,
                generation: 1,
            };
            let d = format!("{i}{device}");
            router
                .registry()
                .add_user_capped("big", conn, Some(&d), usize::MAX, &mut Vec::new());
        }
        router.registry().add_user(
            "small",
            reactor::ConnRef {
                reactor: 1,
                index: 0,
                generation: 1,
            },
        );
        let a = c.local_answer(&router, &["small".to_owned(), "big".to_owned()]);
        assert!(a.truncated);
        assert_eq!(a.users[0].len(), 1);
        let kept = a.users[1].len();
        assert!(kept > 200 && kept < 400, "{kept}");
        let bytes = serde_json::to_vec(&a).unwrap().len();
        assert!(bytes <= ANSWER_MAX_BYTES, "{bytes}");
        let a = c.local_answer(&router, &["small".to_owned()]);
        assert!(!a.truncated);
    }

    #[test]
    fn bad_control_messages_are_dropped_and_counted() {
        let c = Control::new("p", "me", 7);
        let router = Router::new();
        for (subject, payload) in [
            ("p.ctl.disconnect", &br#"{"uid":"u","code":1000}"#[..]),
            ("p.ctl.disconnect", br#"{"uid":"","code":4000}"#),
            ("p.ctl.disconnect", b"[]"),
            ("p.ctl.presence", br#"{"node":"n2","uids":["u"]}"#), // no reply subject
            (
                "p.ctl.reply.0000000000000007.x",
                br#"{"node":"n2","users":[]}"#,
            ),
        ] {
            c.on_message(&router, subject, None, payload);
        }
        assert_eq!(c.stats().invalid.get(), 5);
        // Issue 31: a query whose reply subject is a delivery subject (the broadcast,
        // a user's) made this node publish presence there, to every client.
        let query = br#"{"node":"n2","uids":["u"]}"#;
        for reply in ["p.all", "p.user.u", "p.room.r", "p.ctl.reply.>"] {
            c.on_message(&router, "p.ctl.presence", Some(reply), query);
        }
        assert_eq!(c.stats().bad_reply.get(), 4);
        let published = |c: &Control| {
            c.take_outgoing(Instant::now(), 100)
                .into_iter()
                .filter(|o| o.subject != "p.ctl.node")
                .collect::<Vec<_>>()
        };
        assert!(published(&c).is_empty(), "nothing published");
        c.on_message(
            &router,
            "p.ctl.presence",
            Some("p.ctl.reply.0000000000000009.3"),
            query,
        );
        let out = published(&c);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, "p.ctl.reply.0000000000000009.3");
        assert_eq!(c.stats().disconnects_received.get(), 0);
        c.on_message(
            &router,
            "p.ctl.disconnect",
            None,
            br#"{"uid":"u","code":4000}"#,
        );
        assert_eq!(c.stats().disconnects_received.get(), 1);
    }

    #[test]
    fn a_full_queue_refuses_rather_than_waits() {
        let c = Control::new("p", "me", 7);
        let d = Disconnect {
            uid: "u".into(),
            device: None,
            code: 4000,
            reason: String::new(),
            before: None,
        };
        for _ in 0..QUEUE_DEPTH {
            assert_eq!(c.send_disconnect(&d), Ok(()));
        }
        assert_eq!(c.send_disconnect(&d), Err(BusError::QueueFull));
        assert_eq!(
            c.take_outgoing(Instant::now(), 10).len(),
            11,
            "10 and the announcement"
        );
        assert_eq!(c.send_disconnect(&d), Ok(()));
    }

    #[test]
    fn disconnect_requests_are_checked() {
        let ok = Disconnect {
            uid: "u".into(),
            device: None,
            code: 4001,
            reason: "bye".into(),
            before: None,
        };
        assert!(ok.check().is_ok());
        assert!(Disconnect {
            code: 1008,
            ..ok.clone()
        }
        .check()
        .is_ok());
        for code in [0, 1000, 1001, 3999, 5000, 65535] {
            assert!(Disconnect { code, ..ok.clone() }.check().is_err(), "{code}");
        }
        assert!(Disconnect {
            reason: "é".repeat(62),
            ..ok.clone()
        }
        .check()
        .is_err());
        assert!(Disconnect {
            reason: "x".repeat(123),
            ..ok.clone()
        }
        .check()
        .is_ok());
        assert!(Disconnect {
            uid: String::new(),
            ..ok.clone()
        }
        .check()
        .is_err());
        assert!(Disconnect {
            device: Some(String::new()),
            ..ok
        }
        .check()
        .is_err());
    }
}
