//! Delivering a push: resolve recipients to connections, encode the frame once, and give
//! each reactor one command listing all of its recipients.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use protocol::frame::{FrameBuilder, OpCode};
use reactor::{Command, ConnRef, ReactorHandle};

use crate::bus::{BusError, ClusterBus, InProcess, Kind, Outgoing};
use crate::registry::Registry;

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

/// The node's router.
#[derive(Debug)]
pub struct Router {
    registry: Registry,
    reactors: OnceLock<Vec<ReactorHandle>>,
    bus: Box<dyn ClusterBus>,
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
        }
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
        if self.registry.leave(room, conn) {
            self.bus.interest_changed(Kind::Room, room);
        }
    }

    /// A delivered message, `{"type":"msg","from":...,"data":...}`, as a text frame.
    pub fn msg_frame(from: &str, data: &[u8]) -> Bytes {
        session::client_protocol::msg_frame(from, data)
    }

    /// `body` as one unmasked text frame.
    pub fn text_frame(body: &[u8]) -> Bytes {
        let mut f = FrameBuilder::with_capacity(body.len());
        f.extend_from_slice(body);
        f.finish(OpCode::Text, false)
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

/// The IDs once each, in order, for the trip to the bus thread.
fn dedup_ids(ids: &[impl AsRef<str>]) -> Vec<Arc<str>> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter()
        .map(AsRef::as_ref)
        .filter(|id| seen.insert(*id))
        .map(Arc::from)
        .collect()
}
