//! Settings shared by every connection of a listener.

use std::time::Duration;

use protocol::deflate::DeflateConfig;
use protocol::DecoderConfig;

/// How `/ws` identifies the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// `?uid=` is trusted as is. Only for development; the binary says so loudly.
    Dev,
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
    /// Serve `/echo`.
    pub echo: bool,
    /// Identity on `/ws`.
    pub auth: AuthMode,
}

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
        }
    }
}
