//! The life of one client connection, with no sockets and no clock: bytes and `now` go in;
//! bytes to send, events for the router, what to do with the socket and the next deadline
//! come out.
//!
//! - [`auth`]: JWT or dev-mode identity, decided before the upgrade.
//! - [`client_protocol`]: `send`, `join`, `leave`, `ping`, parsed with simd-json.
//! - [`config`]: timeouts, limits, endpoints and auth mode shared by a listener's
//!   connections.
//! - [`conn`]: the state machine ([`Session`]) a reactor keeps per connection.
//! - [`effects`]: what a call on a session asks the driver to do.
//! - [`fallback`]: the bytes of `/sse`, `/poll` and `/send` (events, poll answers).
//! - [`messages`]: the JSON the server sends (`welcome`, ...).
//!
//! A driver calls the `handle_*` methods, then applies the [`Effects`] in order: queue
//! each transmit (control frames ahead of data, never dropped), hand events to the router,
//! then carry out the socket action; finally it re-arms its timer at
//! [`Session::next_deadline`].

pub mod auth;
pub mod client_protocol;
pub mod config;
pub mod conn;
pub mod effects;
pub mod fallback;
pub mod messages;

pub use auth::{AuthMode, JwtAuth};
pub use client_protocol::ClientRequest;
pub use config::{ReconnectAdvice, SessionConfig};
pub use conn::{Codecs, ConnId, Ctx, Session};
pub use effects::{CloseKind, Effects, Event, Transmit, TransmitKind};
pub use fallback::Transport;
pub use messages::Welcome;
