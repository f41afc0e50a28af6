//! The engine that holds the connections: N reactor threads, each with its own
//! `mio::Poll`, `SO_REUSEPORT` listener, connection slab, timer wheel and inbox.
//!
//! - [`server`]: starting the reactors and draining them on shutdown.
//! - [`event_loop`]: one reactor's loop — where a connection lives.
//! - [`inbox`]: commands other threads send a reactor, and the hooks it calls back.
//! - [`outbound`]: a connection's write queue, its limits, vectored flushing.
//! - [`wheel`]: the hashed timer wheel.
//! - [`admission`]: connection caps shared by all reactors.
//! - [`listener`]: `SO_REUSEPORT` listening sockets.
//! - [`stats`]: per-reactor counters, summed at scrape.
//! - [`config`]: every limit, with its default.

pub mod admission;
mod clock;
pub mod config;
pub mod event_loop;
pub mod inbox;
pub mod listener;
pub mod outbound;
pub mod server;
pub mod service;
pub mod stats;
pub mod tls;
pub mod wheel;

pub use config::ReactorConfig;
pub use inbox::{Command, ConnRef, Hooks, InboxError, ReactorHandle, INBOX_DROP_REASONS};
pub use outbound::OutboundLimits;
pub use server::Server;
pub use service::{Flow, Service, ServiceConfig, ServiceLimits};
pub use stats::ReactorStats;
