//! Settings shared by every connection of a listener.

use std::time::Duration;

use protocol::deflate::DeflateConfig;
use protocol::DecoderConfig;

pub use crate::auth::AuthMode;

/// What `welcome` tells clients about reconnecting, so a node's clients do not all come
/// back at the same moment after it restarts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectAdvice {
    /// First delay.
    pub base_ms: u64,
    /// Growth per attempt.
    pub factor: f64,
    /// Random fraction added to or taken from each delay (0..=1).
    pub jitter: f64,
    /// Largest delay.
    pub cap_ms: u64,
}

impl ReconnectAdvice {
    /// The defaults, which the binary's configuration and `--help` take from here.
    pub const DEFAULT: ReconnectAdvice = ReconnectAdvice {
        base_ms: 1000,
        factor: 2.0,
        jitter: 0.5,
        cap_ms: 60_000,
    };
}

impl Default for ReconnectAdvice {
    fn default() -> Self {
        ReconnectAdvice::DEFAULT
    }
}

/// The defaults of [`SessionConfig`]'s plain values, which the binary's configuration and
/// `--help` take from here.
pub mod default {
    use std::time::Duration;

    /// From accept to a complete upgrade request.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Silence before the server pings.
    pub const HEARTBEAT: Duration = Duration::from_secs(25);
    /// Silence before the connection is closed with 1001.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Time for the peer's close frame.
    pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Malformed requests tolerated before 1008.
    pub const MAX_BAD_REQUESTS: u32 = 10;
    /// Client requests per second per connection.
    pub const CLIENT_RATE: u32 = 50;
    /// Users one `send` may name.
    pub const MAX_RECIPIENTS: usize = 100;
    /// How long a `GET /poll` is held open.
    pub const POLL_TIMEOUT: Duration = Duration::from_secs(25);
    /// Close a connection when its token expires.
    pub const CLOSE_ON_TOKEN_EXPIRY: bool = true;
}

/// Timeouts, limits and endpoints.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Time allowed from accept to a complete upgrade request (slowloris guard).
    pub handshake_timeout: Duration,
    /// Silence after which the server pings.
    pub heartbeat: Duration,
    /// Silence after which the connection is closed with 1001.
    pub idle_timeout: Duration,
    /// Time allowed for the peer's close frame after ours, before the socket is dropped.
    pub close_timeout: Duration,
    /// Largest upgrade request head (431 past it).
    pub max_header_bytes: usize,
    /// Frame and message limits.
    pub decoder: DecoderConfig,
    /// permessage-deflate policy.
    pub deflate: DeflateConfig,
    /// Serve `/echo`: to anyone with [`AuthMode::Dev`], else with `/ws`'s credentials.
    pub echo: bool,
    /// Identity on `/ws`.
    pub auth: AuthMode,
    /// Origins allowed to open `/ws` and `/echo` (403 otherwise); `None` allows any. A
    /// request without `Origin` (not a browser) is allowed.
    pub allowed_origins: Option<Vec<String>>,
    /// Close with 1008 when the connection's token expires.
    pub close_on_token_expiry: bool,
    /// Malformed client requests tolerated before the connection is closed with 1008.
    pub max_bad_requests: u32,
    /// Backoff advertised in `welcome`.
    pub reconnect: ReconnectAdvice,
    /// Client requests per second per connection (burst twice that); 0 for no limit.
    pub client_rate: u32,
    /// Most users one client `send` may name.
    pub max_recipients: usize,
    /// How long a `GET /poll` is held open before it is answered with no messages.
    pub poll_timeout: Duration,
}

/// Rate-limited requests in a row after which the connection is closed with 1008
/// (docs/PROTOCOL.md, "Limits").
pub const MAX_RATE_LIMITED_IN_A_ROW: u32 = 10;

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            handshake_timeout: default::HANDSHAKE_TIMEOUT,
            heartbeat: default::HEARTBEAT,
            idle_timeout: default::IDLE_TIMEOUT,
            close_timeout: default::CLOSE_TIMEOUT,
            max_header_bytes: protocol::handshake::DEFAULT_MAX_HEADER_BYTES,
            decoder: DecoderConfig::server(),
            deflate: DeflateConfig::default(),
            echo: true,
            auth: AuthMode::Dev,
            allowed_origins: None,
            close_on_token_expiry: default::CLOSE_ON_TOKEN_EXPIRY,
            max_bad_requests: default::MAX_BAD_REQUESTS,
            reconnect: ReconnectAdvice::DEFAULT,
            client_rate: default::CLIENT_RATE,
            max_recipients: default::MAX_RECIPIENTS,
            poll_timeout: default::POLL_TIMEOUT,
        }
    }
}
