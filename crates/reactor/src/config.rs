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

/// The defaults of [`ReactorConfig`]'s plain values, which the binary's configuration and
/// `--help` take from here.
pub mod default {
    use std::time::Duration;

    /// Listen backlog.
    pub const BACKLOG: i32 = 4096;
    /// Connections per client address; 0 = no limit.
    pub const MAX_CONNECTIONS_PER_IP: u32 = 0;
    /// Per reactor: handshakes in progress at once.
    pub const MAX_PENDING_HANDSHAKES: usize = 1024;
    /// A handshake's time while the pending-handshake bound is reached.
    pub const PRESSURE_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
    /// Per reactor: connections accepted per second; 0 = no limit.
    pub const MAX_ACCEPT_RATE: u32 = 0;
    /// Per reactor; far above what a healthy reactor ever holds (it drains 1 024 a turn).
    pub const INBOX_DEPTH: usize = 65_536;
    /// Per reactor: bytes in the inbox.
    pub const INBOX_BYTES: usize = 64 * 1024 * 1024;
    /// Pushes smaller than this go uncompressed.
    pub const COMPRESS_MIN_BYTES: usize = 256;
    /// io_uring receive buffers per reactor.
    pub const IO_URING_BUFFERS: u16 = 64;
    /// io_uring bytes per receive buffer.
    pub const IO_URING_BUFFER_SIZE: usize = 4096;
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            reactors: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backlog: default::BACKLOG,
            max_connections: 10_000,
            max_connections_per_ip: default::MAX_CONNECTIONS_PER_IP,
            max_pending_handshakes: default::MAX_PENDING_HANDSHAKES,
            pressure_handshake_timeout: default::PRESSURE_HANDSHAKE_TIMEOUT,
            max_accept_rate: default::MAX_ACCEPT_RATE,
            outbound: OutboundLimits::DEFAULT,
            inbox_depth: default::INBOX_DEPTH,
            inbox_bytes: default::INBOX_BYTES,
            tick: Duration::from_millis(10),
            compress_min_bytes: default::COMPRESS_MIN_BYTES,
            session: SessionConfig::default(),
            service: None,
            io: crate::IoBackend::Auto,
            io_uring_buffers: default::IO_URING_BUFFERS,
            io_uring_buffer_size: default::IO_URING_BUFFER_SIZE,
            tls: None,
            tls_max_handshake_bytes: crate::tls::stream::DEFAULT_MAX_HANDSHAKE_BYTES,
        }
    }
}
