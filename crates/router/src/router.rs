//! Delivering a push: resolve recipients to connections, encode the frame once, and give
//! each reactor one command listing all of its recipients.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use protocol::frame::{FrameBuilder, OpCode};
use reactor::{Command, ConnRef, ReactorHandle};

use crate::registry::Registry;

/// What a push reached on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Connections the frame was handed to (their reactors queue it).
    pub connections: usize,
    /// Named users with no connection on this node.
    pub offline_users: usize,
}

/// The node's router.
#[derive(Debug)]
pub struct Router {
    registry: Registry,
    reactors: OnceLock<Vec<ReactorHandle>>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// A router with no reactors attached yet.
    pub fn new() -> Self {
        Router {
            registry: Registry::new(),
            reactors: OnceLock::new(),
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

    /// Encodes `{"type":"msg","from":...,"data":...}` once as a text frame.
    pub fn msg_frame(from: &str, data: &[u8]) -> Bytes {
        let body = session::client_protocol::msg_json(from, data);
        let mut f = FrameBuilder::with_capacity(body.len());
        f.extend_from_slice(&body);
        f.finish(OpCode::Text, false)
    }

    /// Delivers `frame` to every connection of `users` and every member of `rooms` on this
    /// node, each connection once.
    pub fn push(
        &self,
        users: &[impl AsRef<str>],
        rooms: &[impl AsRef<str>],
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
        let connections = targets.len();
        self.dispatch(targets, frame, received);
        PushOutcome {
            connections,
            offline_users,
        }
    }

    /// Delivers `frame` to every `/ws` connection of this node.
    pub fn broadcast(&self, frame: Bytes, received: Instant) {
        for r in self.reactors.get().map(Vec::as_slice).unwrap_or_default() {
            r.send(Command::Broadcast {
                frame: frame.clone(),
                received: Some(received),
            });
        }
    }

    /// One `Deliver` per reactor that has recipients, sharing the frame.
    fn dispatch(&self, mut targets: Vec<ConnRef>, frame: Bytes, received: Instant) {
        let Some(reactors) = self.reactors.get() else {
            return;
        };
        if targets.is_empty() {
            return;
        }
        targets.sort_unstable_by_key(|c| c.reactor);
        let mut rest = targets.as_slice();
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .take_while(|c| c.reactor == first.reactor)
                .count();
            let (mine, tail) = rest.split_at(n);
            if let Some(handle) = reactors.get(usize::from(first.reactor)) {
                handle.send(Command::Deliver {
                    frame: frame.clone(),
                    targets: mine.to_vec(),
                    received: Some(received),
                });
            }
            rest = tail;
        }
    }
}
