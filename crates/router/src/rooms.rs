//! Server-side room membership (`POST /v1/rooms/join` and `/v1/rooms/leave`, and the
//! token's `subs` claim): the server puts a user's connections into a room or takes them
//! out.
//!
//! Which rooms a connection is in lives with the hooks on its reactor's thread
//! ([`crate::hooks`]), so a change is carried to each connection as a
//! [`reactor::Command::Task`] holding a [`RoomTask`]; the reactors apply it when they
//! get to it, and nobody waits for them. A [`RoomTally`] shared by the tasks counts what
//! they did and tells its owner once the last task is done with it (the API parks its
//! request until then).

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::bus::stats::Counter;

/// What a room change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomOp {
    /// Put the connections in the room.
    Join,
    /// Take them out.
    Leave,
}

impl RoomOp {
    /// `join` or `leave`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomOp::Join => "join",
            RoomOp::Leave => "leave",
        }
    }
}

/// A room change for every connection of a user (of one device, if given), on every
/// node: the API's request, and the message on `<prefix>.ctl.rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomChange {
    /// Join or leave.
    pub op: RoomOp,
    /// The user.
    pub uid: String,
    /// The room.
    pub room: String,
    /// Only the connections of this device (`"default"`: those that named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl RoomChange {
    /// Why the change cannot be carried out, if it cannot.
    pub fn check(&self) -> Result<(), &'static str> {
        let max = session::auth::MAX_ID_LEN;
        if self.uid.is_empty() || self.uid.len() > max {
            return Err("\"uid\" must be a non-empty string of at most 256 bytes");
        }
        if self.room.is_empty() || self.room.len() > max {
            return Err("\"room\" must be a non-empty string of at most 256 bytes");
        }
        if self
            .device
            .as_ref()
            .is_some_and(|d| d.is_empty() || d.len() > max)
        {
            return Err("\"device\" must be a non-empty string of at most 256 bytes when given");
        }
        Ok(())
    }
}

/// What the connections of a change did, once every reactor is done with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomCounts {
    /// Connections of the user the change was sent to on this node.
    pub connections: usize,
    /// Joined (or left) the room.
    pub changed: usize,
    /// Were in the room already (a join) or not in it (a leave).
    pub unchanged: usize,
    /// Refused: a join past the rooms one connection may be in.
    pub refused: usize,
    /// Not reached: the connection closed meanwhile, or its reactor's inbox was full.
    pub unreached: usize,
}

/// Told a change's [`RoomCounts`] on the thread that finished it last: must not block.
pub type RoomsDone = Box<dyn FnOnce(RoomCounts) + Send>;

/// Counts what the connections did with one change; tells `done` when dropped.
pub struct RoomTally {
    connections: AtomicUsize,
    changed: AtomicUsize,
    unchanged: AtomicUsize,
    refused: AtomicUsize,
    done: Mutex<Option<RoomsDone>>,
}

impl std::fmt::Debug for RoomTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomTally")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl RoomTally {
    /// A tally that tells `done` (if any) the counts once the last holder lets go.
    pub fn new(done: Option<RoomsDone>) -> Arc<Self> {
        Arc::new(RoomTally {
            connections: AtomicUsize::new(0),
            changed: AtomicUsize::new(0),
            unchanged: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            done: Mutex::new(done),
        })
    }

    pub(crate) fn addressed(&self, n: usize) {
        self.connections.fetch_add(n, Ordering::Relaxed);
    }

    fn count(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Changed => &self.changed,
            Outcome::Unchanged => &self.unchanged,
            Outcome::Refused => &self.refused,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> RoomCounts {
        let connections = self.connections.load(Ordering::Relaxed);
        let changed = self.changed.load(Ordering::Relaxed);
        let unchanged = self.unchanged.load(Ordering::Relaxed);
        let refused = self.refused.load(Ordering::Relaxed);
        RoomCounts {
            connections,
            changed,
            unchanged,
            refused,
            unreached: connections.saturating_sub(changed + unchanged + refused),
        }
    }
}

impl Drop for RoomTally {
    fn drop(&mut self) {
        if let Some(done) = self.done.get_mut().take() {
            done(self.counts());
        }
    }
}

/// What one connection did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Changed,
    Unchanged,
    Refused,
}

/// The task a reactor hands its hooks for each connection of a change.
#[derive(Debug)]
pub struct RoomTask {
    pub(crate) op: RoomOp,
    pub(crate) room: Arc<str>,
    tally: Arc<RoomTally>,
    stats: Arc<RoomStats>,
}

impl RoomTask {
    /// The task, as a [`reactor::Command::Task`] carries it.
    pub(crate) fn shared(
        op: RoomOp,
        room: &str,
        tally: Arc<RoomTally>,
        stats: Arc<RoomStats>,
    ) -> Arc<dyn Any + Send + Sync> {
        Arc::new(RoomTask {
            op,
            room: Arc::from(room),
            tally,
            stats,
        })
    }

    pub(crate) fn done(&self, outcome: Outcome) {
        self.tally.count(outcome);
        self.stats.count(self.op, outcome);
    }
}

/// Results of server-side room changes, per connection, for `/metrics`
/// (`pushgate_server_rooms_total{op,result}`).
pub const ROOM_RESULTS: [&str; 4] = ["changed", "unchanged", "refused", "unreached"];

/// Results of `/v1/rooms/join` and `/v1/rooms/leave` requests, for `/metrics`.
pub const ROOM_REQUEST_RESULTS: [&str; 3] = ["ok", "bad_request", "unavailable"];

/// Server-side room changes on this node's connections, by op and [`ROOM_RESULTS`], and
/// the API requests that asked for them.
#[derive(Debug, Default)]
pub struct RoomStats {
    /// Joins (including the `subs` claim's) by result.
    pub join: [Counter; 4],
    /// Leaves by result.
    pub leave: [Counter; 4],
    /// API requests by [`ROOM_REQUEST_RESULTS`].
    pub requests: [Counter; 3],
}

impl RoomStats {
    pub(crate) fn count(&self, op: RoomOp, outcome: Outcome) {
        let i = match outcome {
            Outcome::Changed => 0,
            Outcome::Unchanged => 1,
            Outcome::Refused => 2,
        };
        self.of(op)[i].add(1);
    }

    pub(crate) fn unreached(&self, op: RoomOp, n: usize) {
        self.of(op)[3].add(n as u64);
    }

    fn of(&self, op: RoomOp) -> &[Counter; 4] {
        match op {
            RoomOp::Join => &self.join,
            RoomOp::Leave => &self.leave,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_checked() {
        let ok = RoomChange {
            op: RoomOp::Join,
            uid: "u".into(),
            room: "r".into(),
            device: None,
        };
        assert!(ok.check().is_ok());
        for bad in [
            RoomChange {
                uid: String::new(),
                ..ok.clone()
            },
            RoomChange {
                room: String::new(),
                ..ok.clone()
            },
            RoomChange {
                room: "x".repeat(257),
                ..ok.clone()
            },
            RoomChange {
                device: Some(String::new()),
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_tally_reports_once_its_last_holder_lets_go() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let tally = RoomTally::new(Some(Box::new(move |c| {
            let _ = tx.send(c);
        })));
        tally.addressed(3);
        let task = RoomTask {
            op: RoomOp::Join,
            room: Arc::from("r"),
            tally: Arc::clone(&tally),
            stats: Arc::default(),
        };
        drop(tally);
        task.done(Outcome::Changed);
        task.done(Outcome::Refused);
        assert!(rx.try_recv().is_err(), "a task still holds it");
        drop(task);
        let c = rx.try_recv().unwrap();
        assert_eq!(
            (c.connections, c.changed, c.refused, c.unreached),
            (3, 1, 1, 1)
        );
    }
}
