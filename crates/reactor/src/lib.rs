//! The engine that holds the connections: N reactor threads, each with its own I/O
//! driver (epoll or io_uring), `SO_REUSEPORT` listener, connection slab, timer wheel and
//! inbox.
//!
//! - [`server`]: starting the reactors and draining them on shutdown.
//! - `connections`: one reactor, whatever its backend — where a connection lives and
//!   what it does with its bytes.
//! - `driver`: how bytes get in and out — `driver/epoll.rs`, `driver/uring.rs`.
//! - [`inbox`]: commands other threads send a reactor, and the hooks it calls back.
//! - [`outbound`]: a connection's write queue, its limits, vectored flushing.
//! - [`wheel`]: the hashed timer wheel.
//! - [`admission`]: connection caps shared by all reactors.
//! - [`listener`]: `SO_REUSEPORT` listening sockets.
//! - [`stats`]: per-reactor counters, summed at scrape.
//! - [`config`]: every limit, with its default.

mod address_limit;
pub mod admission;
mod clock;
pub mod config;
mod connections;
mod driver;
pub mod inbox;
pub mod listener;
pub mod outbound;
pub mod parked;
pub mod server;
pub mod service;
pub mod stats;
pub mod tls;
pub mod wheel;

pub use config::ReactorConfig;
pub use driver::IoBackend;
pub use inbox::{
    Command, ConnRef, DetachedInbox, Hooks, InboxError, ReactorHandle, INBOX_DROP_REASONS,
};
pub use outbound::OutboundLimits;
pub use parked::{Completion, Parking, Unanswered};
pub use server::Server;
pub use service::{ConnState, Flow, Service, ServiceConfig, ServiceLimits};
pub use stats::ReactorStats;
