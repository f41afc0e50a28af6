//! Recipient-ID routing: messages are addressed to users and rooms, never to sockets.
//!
//! - [`registry`]: user ID → the connections of that user on this node (every device),
//!   room → member connections; sharded so reactors rarely meet on a lock.
//! - [`router`]: resolves a push to connections, encodes the frame once and hands each
//!   reactor one command with all of its recipients; hands the push to the bus once.
//! - [`bus`]: the cluster bus that carries pushes to the other nodes (in-process for a
//!   single node, NATS for a cluster).
//! - [`history`]: retained messages per user and per room, their seqs and device acks
//!   (single node); [`idempotency`]: answers of pushes by the caller's ID;
//!   [`cluster_history`]: per user, the last seq this clustered node delivered (history
//!   itself is in JetStream, `bus::jetstream`).
//! - [`rooms`]: server-side room membership (the API's joins and leaves, the `subs`
//!   claim), carried to each connection's reactor.
//! - [`undelivered`]: deadlines of the messages this node accepted, for the undelivered
//!   hook.
//! - [`hooks`]: the per-reactor bookkeeping of which user and rooms each connection has,
//!   fed by the reactor and feeding the registry.

pub mod bus;
pub mod cluster_history;
pub mod history;
pub mod hooks;
pub mod idempotency;
pub mod registry;
pub mod room_presence;
pub mod rooms;
pub mod router;
pub mod undelivered;

pub use bus::{BusError, ClusterBus, InProcess, JsConfig, NatsBus, NatsConfig};
pub use history::HistoryConfig;
pub use hooks::RouterHooks;
pub use registry::Registry;
pub use registry::UserConn;
pub use router::{
    CloseStats, Delivered, DeliveredDone, HistoryPage, HistoryReadError, Opened, PushOutcome,
    Router, CLOSE_USER_CAP, REPLAY_TIMEOUT, STORE_WAIT,
};
