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

use std::sync::atomic::{AtomicBool, Ordering};

pub use config::{TlsAcceptor, TlsConfigError, TlsFiles};
pub use stream::{TlsError, TlsStream};

use crate::stats::{ReactorStats, TLS_FAILURE_CAUSES};

/// Whether each failure cause was logged: once per cause per process, since a client
/// hello flood or a port scan would otherwise fill the log.
static LOGGED: [AtomicBool; TLS_FAILURE_CAUSES.len()] =
    [const { AtomicBool::new(false) }; TLS_FAILURE_CAUSES.len()];

/// Counts (and, the first time for its cause, logs) a connection's TLS failure.
pub(crate) fn count_failure(stats: &ReactorStats, handshaking: bool, error: &TlsError) {
    let cause = match (handshaking, error) {
        (true, TlsError::Protocol(rustls::Error::InvalidMessage(_))) => 0,
        (true, _) => 1,
        (false, _) => 3,
    };
    count(stats, cause, Some(error));
}

/// Counts a peer that hung up before the handshake was done.
pub(crate) fn count_truncated(stats: &ReactorStats) {
    count(stats, 2, None);
}

fn count(stats: &ReactorStats, cause: usize, error: Option<&TlsError>) {
    stats.tls_failures[cause].add(1);
    if !LOGGED[cause].swap(true, Ordering::Relaxed) {
        let cause = TLS_FAILURE_CAUSES[cause];
        match error {
            Some(e) => {
                tracing::warn!(cause, error = %e, "TLS connection failed (logged once per cause; see pushgate_tls_failures_total)")
            }
            None => tracing::warn!(
                cause,
                "TLS connection failed (logged once per cause; see pushgate_tls_failures_total)"
            ),
        }
    }
}
