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

impl Default for ReconnectAdvice {
    fn default() -> Self {
        ReconnectAdvice {
            base_ms: 1000,
            factor: 2.0,
            jitter: 0.5,
            cap_ms: 60_000,
        }
    }
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
            handshake_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            max_header_bytes: protocol::handshake::DEFAULT_MAX_HEADER_BYTES,
            decoder: DecoderConfig::server(),
            deflate: DeflateConfig::default(),
            echo: true,
            auth: AuthMode::Dev,
            allowed_origins: None,
            close_on_token_expiry: true,
            max_bad_requests: 10,
            reconnect: ReconnectAdvice::default(),
            client_rate: 50,
            max_recipients: 100,
            poll_timeout: Duration::from_secs(25),
        }
    }
}
