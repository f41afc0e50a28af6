//! The cluster bus: how a push reaches the recipients held by other nodes.
//!
//! The node that accepts a push delivers its own local recipients directly and hands the
//! push to the bus once; every other node delivers its local recipients when the push
//! arrives. Two implementations:
//!
//! - [`InProcess`]: one node, no other nodes to reach (the embedded default).
//! - [`NatsBus`]: NATS, through a client of its own on the core NATS protocol. A node
//!   subscribes to the subject of every user and room it holds and to the broadcast
//!   subject; its connection to NATS is opened with `no_echo`, so a push it published
//!   never comes back to it and local recipients get it exactly once. Besides pushes it
//!   carries control traffic between nodes: publishes to any subject, requests with
//!   replies to the node's inbox, and handlers on fixed subjects.
//!
//! The message format on NATS, so that a backend can publish without the HTTP API, is in
//! `docs/BUS.md`:
//!
//! - subjects `<prefix>.user.<id>`, `<prefix>.room.<id>`, `<prefix>.all` ([`subject`]);
//! - the payload is the JSON text the clients receive, `{"type":"msg",...}`;
//! - optional headers: [`HEADER_ID`] and [`HEADER_TARGETS`] (a push to several
//!   recipients is published once per recipient subject; a node delivers the first copy
//!   to all of its local recipients of the listed targets and ignores the rest), and
//!   [`HEADER_SENT`] (for the bus latency histogram).

mod chains;
mod conn;
pub mod control;
mod dedup;
pub mod inbound;
mod interest;
pub mod jetstream;
mod lingering;
mod liveness;
mod nats;
mod reply_subject;
mod servers;
pub mod stats;
pub mod subject;
mod subs;
mod trim;
mod wire;
mod worker;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

pub use control::{ClusterPresence, ControlStats, Disconnect, PresenceDone, PresenceEntry};
pub use inbound::Inbound;
pub use jetstream::{JsConfig, StoredMsg};
pub use nats::{
    BusMessage, Handler, NatsBus, NatsConfig, ReplyHandler, StoreDone, StoreJob, StoreOk,
    MAX_PENDING_REQUESTS,
};
pub use stats::BusStats;
pub use subject::{Kind, Subjects};

/// Header naming a push uniquely across the cluster (present when it has several
/// recipient subjects).
pub const HEADER_ID: &str = "Pushgate-Id";
/// Header listing every recipient of a push as `user.<id>` / `room.<id>` tokens,
/// separated by spaces, IDs escaped as in subjects.
pub const HEADER_TARGETS: &str = "Pushgate-Targets";
/// Header holding the publish time, microseconds since the Unix epoch.
pub const HEADER_SENT: &str = "Pushgate-Sent";

/// A push on its way to the other nodes.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Recipient users (empty for a broadcast).
    pub users: Vec<Arc<str>>,
    /// Recipient rooms (empty for a broadcast).
    pub rooms: Vec<Arc<str>>,
    /// To every connection of the cluster.
    pub broadcast: bool,
    /// The message JSON the clients receive.
    pub body: Bytes,
}

/// The bus could not take a push: the other nodes will not get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// Not connected to the bus.
    Disconnected,
    /// The queue to the bus thread is full.
    QueueFull,
    /// The message is larger than the bus accepts.
    TooLarge,
    /// JetStream did not confirm storing the message (refused, or no answer in time): it
    /// may or may not have been stored, so a retry must carry the same push `id`.
    History,
}

impl BusError {
    /// Short name, for logs and error replies.
    pub fn as_str(self) -> &'static str {
        match self {
            BusError::Disconnected => "cluster bus disconnected",
            BusError::QueueFull => "cluster bus queue full",
            BusError::TooLarge => "message larger than the cluster bus accepts",
            BusError::History => "history store not confirmed by JetStream",
        }
    }
}

/// How pushes reach other nodes.
pub trait ClusterBus: Send + Sync + Debug {
    /// Hands a push to the other nodes, without blocking.
    fn publish(&self, push: Outgoing) -> Result<(), BusError>;
    /// A user or room gained its first or lost its last connection on this node.
    fn interest_changed(&self, kind: Kind, id: &Arc<str>);
    /// Whether pushes reach the other nodes now.
    fn is_ready(&self) -> bool;
    /// The bus counters, when there is a bus.
    fn stats(&self) -> Option<&BusStats>;
    /// Asks the other nodes for the connections of `uids` (one list per uid, in order);
    /// `done` is told their answers once all came or `deadline` passed, naming the nodes
    /// that did not answer. Nothing waits: `done` runs on the bus thread, or at once when
    /// there is nobody to ask (a node alone) or the query could not be sent.
    fn presence(&self, uids: &[String], _deadline: Instant, done: PresenceDone) {
        done(Ok(ClusterPresence {
            users: vec![Vec::new(); uids.len()],
            ..ClusterPresence::default()
        }))
    }
    /// Asks the other nodes who is in `room` (listing at most `limit` members each);
    /// `done` is told their answers once all came or `deadline` passed, never waiting.
    fn room_presence(&self, _room: &str, _limit: usize, _deadline: Instant, done: PresenceDone) {
        done(Ok(ClusterPresence::default()))
    }
    /// Asks the other nodes to close connections, without waiting.
    fn disconnect(&self, _req: &Disconnect) -> Result<(), BusError> {
        Ok(())
    }
    /// Asks the other nodes to carry out a server-side room change, without waiting.
    fn change_rooms(&self, _req: &crate::rooms::RoomChange) -> Result<(), BusError> {
        Ok(())
    }
    /// Publishes an event (JSON) on `<prefix>.events`, without waiting; a node alone has
    /// no bus to publish it on.
    fn publish_event(&self, _payload: Bytes) -> Result<(), BusError> {
        Err(BusError::Disconnected)
    }
    /// The other nodes alive now.
    fn live_nodes(&self) -> Vec<String> {
        Vec::new()
    }
    /// The control counters, when there is a bus.
    fn control_stats(&self) -> Option<&ControlStats> {
        None
    }
}

/// A node alone: nothing to reach beyond it.
#[derive(Debug, Default)]
pub struct InProcess;

impl ClusterBus for InProcess {
    fn publish(&self, _push: Outgoing) -> Result<(), BusError> {
        Ok(())
    }

    fn interest_changed(&self, _kind: Kind, _id: &Arc<str>) {}

    fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> Option<&BusStats> {
        None
    }
}

/// A bus shared with its owner (which starts and stops it) is a bus too.
impl<T: ClusterBus + ?Sized> ClusterBus for Arc<T> {
    fn publish(&self, push: Outgoing) -> Result<(), BusError> {
        (**self).publish(push)
    }

    fn interest_changed(&self, kind: Kind, id: &Arc<str>) {
        (**self).interest_changed(kind, id);
    }

    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }

    fn stats(&self) -> Option<&BusStats> {
        (**self).stats()
    }

    fn presence(&self, uids: &[String], deadline: Instant, done: PresenceDone) {
        (**self).presence(uids, deadline, done)
    }

    fn room_presence(&self, room: &str, limit: usize, deadline: Instant, done: PresenceDone) {
        (**self).room_presence(room, limit, deadline, done)
    }

    fn disconnect(&self, req: &Disconnect) -> Result<(), BusError> {
        (**self).disconnect(req)
    }

    fn change_rooms(&self, req: &crate::rooms::RoomChange) -> Result<(), BusError> {
        (**self).change_rooms(req)
    }

    fn publish_event(&self, payload: Bytes) -> Result<(), BusError> {
        (**self).publish_event(payload)
    }

    fn live_nodes(&self) -> Vec<String> {
        (**self).live_nodes()
    }

    fn control_stats(&self) -> Option<&ControlStats> {
        (**self).control_stats()
    }
}
