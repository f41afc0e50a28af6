//! The control listener: health, readiness, metrics and the server API. It runs on its
//! own thread with its own small mio loop, so a slow scrape or API client never touches a
//! reactor, and it evicts rather than refuses when full, so idle sockets cannot lock the
//! operators and backends out (issue 19).

pub mod api;
mod conn;
pub mod http;
mod routes;
mod server;
pub mod stats;
mod table;

use std::time::Duration;

pub use routes::{ApiStats, ControlState, API_ENDPOINTS, API_STATUSES};
pub use server::{spawn, ControlServer};
pub use stats::ListenerStats;

/// How many control connections are held, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held; one more evicts the one that matters least.
    pub max_clients: usize,
    /// A connection silent this long between requests is closed.
    pub idle_timeout: Duration,
    /// A connection that has not sent a complete first request (head and body) this long
    /// after its accept is closed: real clients send at once, so this only shortens what
    /// an idle or trickling socket costs. A first body that needs longer than this to
    /// upload needs a longer setting.
    pub first_request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 1024,
            idle_timeout: Duration::from_secs(60),
            first_request_timeout: Duration::from_secs(5),
        }
    }
}
