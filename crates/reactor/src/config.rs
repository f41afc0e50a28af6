//! Settings of the client listener and its reactors.

use std::net::SocketAddr;
use std::time::Duration;

use session::SessionConfig;

use crate::outbound::OutboundLimits;

/// Everything the reactors need.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Client listener address.
    pub listen: SocketAddr,
    /// Reactor threads.
    pub reactors: usize,
    /// Listen backlog per reactor socket.
    pub backlog: i32,
    /// Sockets the node holds before refusing upgrades with 503.
    pub max_connections: usize,
    /// Connections per client address (429 past it); 0 for no limit.
    pub max_connections_per_ip: u32,
    /// Per reactor: handshakes in progress at once. Past it, the oldest pending
    /// handshake is reset once it is `pressure_handshake_timeout` old, so clients that
    /// dribble their upgrade request (slowloris) can never lock out clients that send
    /// theirs at once; younger ones make new connections wait in the backlog.
    pub max_pending_handshakes: usize,
    /// The handshake timeout at the pending-handshake bound.
    pub pressure_handshake_timeout: Duration,
    /// Per reactor: most sockets accepted per second; 0 for no limit.
    pub max_accept_rate: u32,
    /// Per-connection outbound queue limits (1013 past them).
    pub outbound: OutboundLimits,
    /// Per reactor: commands waiting in its inbox before senders are refused.
    pub inbox_depth: usize,
    /// Per reactor: bytes the waiting commands may hold before senders are refused.
    pub inbox_bytes: usize,
    /// Timer wheel resolution.
    pub tick: Duration,
    /// Pushes smaller than this are sent uncompressed even to connections that negotiated
    /// permessage-deflate (compressing tiny messages costs more than it saves).
    pub compress_min_bytes: usize,
    /// Per-connection protocol settings.
    pub session: SessionConfig,
    /// A request/response listener (the server API) the reactors also serve, if any.
    pub service: Option<crate::service::ServiceConfig>,
    /// Which I/O backend the reactors use.
    pub io: crate::IoBackend,
    /// io_uring backend, per reactor: receive buffers in the provided buffer ring (a
    /// power of two, at most 32768). Receives that find none free wait for the next
    /// batch of completions (counted as `ENOBUFS`).
    pub io_uring_buffers: u16,
    /// io_uring backend: bytes per receive buffer.
    pub io_uring_buffer_size: usize,
    /// Serve `wss://` only: every client connection starts with a TLS handshake.
    pub tls: Option<crate::tls::TlsAcceptor>,
    /// Ciphertext a connection may hold before its TLS handshake is done.
    pub tls_max_handshake_bytes: usize,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            reactors: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backlog: 4096,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_pending_handshakes: 1024,
            pressure_handshake_timeout: Duration::from_millis(500),
            max_accept_rate: 0,
            outbound: OutboundLimits {
                max_bytes: 256 * 1024,
                max_messages: 256,
                max_pending_pongs: 16,
            },
            inbox_depth: 65_536,
            inbox_bytes: 64 * 1024 * 1024,
            tick: Duration::from_millis(10),
            compress_min_bytes: 256,
            session: SessionConfig::default(),
            service: None,
            io: crate::IoBackend::Auto,
            io_uring_buffers: 64,
            io_uring_buffer_size: 4096,
            tls: None,
            tls_max_handshake_bytes: crate::tls::stream::DEFAULT_MAX_HANDSHAKE_BYTES,
        }
    }
}
