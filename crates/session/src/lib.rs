//! The life of one client connection, with no sockets and no clock: bytes and `now` go in;
//! bytes to send, events for the router, what to do with the socket and the next deadline
//! come out.
//!
//! - [`config`]: timeouts, limits, endpoints and auth mode shared by a listener's
//!   connections.
//! - [`conn`]: the state machine ([`Session`]) a reactor keeps per connection.
//! - [`effects`]: what a call on a session asks the driver to do.
//! - [`messages`]: the JSON the server sends (`welcome`, ...).
//!
//! A driver calls the `handle_*` methods, then applies the [`Effects`] in order: queue
//! each transmit (control frames ahead of data, never dropped), hand events to the router,
//! then carry out the socket action; finally it re-arms its timer at
//! [`Session::next_deadline`].

pub mod config;
pub mod conn;
pub mod effects;
pub mod messages;

pub use config::{AuthMode, SessionConfig};
pub use conn::{Codecs, Ctx, Session};
pub use effects::{CloseKind, Effects, Event, Transmit, TransmitKind};
