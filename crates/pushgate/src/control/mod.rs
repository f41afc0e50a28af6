//! The control listener: health, readiness and metrics now; the server API joins it.
//! It runs on its own thread with its own small mio loop, so a slow scrape or API client
//! never touches a reactor.

pub mod api;
pub mod http;
mod routes;
mod server;

pub use routes::{ApiStats, ControlState, API_ENDPOINTS, API_STATUSES};
pub use server::{spawn, ControlServer};
