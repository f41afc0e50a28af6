//! TLS for the client listener (`wss://`), sans-I/O: the reactors move ciphertext between
//! sockets and a [`TlsStream`]; every line of HTTP, WebSocket and session code above it
//! sees plaintext exactly as on a plain connection.
//!
//! - [`config`]: the certificate chain and key from PEM files, the rustls server
//!   configuration (TLS 1.2 and 1.3, ALPN `http/1.1`, session tickets), reloadable on
//!   `SIGHUP` without touching connections already made.
//! - [`stream`]: one connection's TLS state, ciphertext in and out, plaintext in and out.

pub mod config;
pub mod stream;

pub use config::{TlsAcceptor, TlsConfigError, TlsFiles};
pub use stream::{TlsError, TlsStream};
