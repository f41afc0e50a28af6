//! What a session asks its driver to do after each call.

use bytes::Bytes;
use protocol::handshake::Status;
use protocol::CloseCode;

/// How a transmit is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// HTTP response bytes, before any frame.
    Handshake,
    /// Ping: goes ahead of queued data at the next frame boundary and never counts
    /// against the outbound limit.
    Control,
    /// Pong: like a ping, but only the most recent one waiting is kept (RFC 6455 §5.5.3
    /// allows answering only the latest ping), so a peer that pings without reading
    /// cannot grow the queue.
    Pong,
    /// A close frame: goes after everything queued before it (nothing may follow it on the
    /// wire, RFC 6455 §5.5.1) and is never refused.
    Close,
    /// A data frame: subject to the outbound limit.
    Data,
}

/// Bytes to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Queueing class.
    pub kind: TransmitKind,
    /// The bytes (a whole frame or response).
    pub bytes: Bytes,
}

/// What happened that the rest of the gateway must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The upgrade was refused with this status (counted by reason).
    Rejected(Status),
    /// A connection of this user opened: `/ws` upgraded, `/sse` streaming, `/poll` parked.
    Opened {
        /// Authenticated user ID.
        uid: String,
        /// Optional device ID.
        device: Option<String>,
        /// `?since=`: the last seq the client holds, to resume after.
        since: Option<u64>,
        /// How messages reach it.
        transport: crate::fallback::Transport,
        /// Rooms the token's `subs` claim joins it to.
        subs: Vec<String>,
    },
    /// A `POST /send` was read: the router is to deliver it, and the driver hands the
    /// outcome back to [`crate::Session::send_answered`].
    HttpSend {
        /// The sender's authenticated ID.
        uid: String,
        /// Recipient user IDs.
        to: Vec<String>,
        /// The `data` value, serialized JSON.
        data: bytes::Bytes,
    },
    /// A `POST /send` was answered with this status (200, 400, 429, 503).
    SendAnswered(u16),
    /// A long poll was answered: with messages (`true`) or empty at its timeout or a
    /// server-side close (`false`).
    PollAnswered(bool),
    /// A `/echo` connection was upgraded.
    EchoOpened,
    /// A well-formed request from a `/ws` client, for the router.
    Request(crate::client_protocol::ClientRequest),
    /// An application-level ping was answered.
    AppPing,
    /// A malformed or unknown request was answered with an `error` message.
    BadRequest,
    /// Too many malformed requests: closed with 1008.
    TooManyBadRequests,
    /// A `join` of a room the token does not grant was refused with `forbidden`.
    Forbidden,
    /// A request past the connection's rate limit was refused with `rate_limited`.
    RateLimited,
    /// Too many rate-limited requests in a row: closed with 1008.
    TooManyRateLimited,
    /// The token expired while connected: closed with 1008.
    TokenExpired,
    /// A `/echo` message was received and sent back.
    Echoed,
    /// The connection failed with a protocol error; the close code was sent.
    ProtocolError(CloseCode),
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The server pinged a silent connection.
    HeartbeatSent,
    /// The connection was silent past the idle timeout and was closed.
    IdleTimeout,
    /// The peer did not answer our close frame in time.
    CloseTimeout,
}

/// How the driver should end the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// Flush what is queued, then close.
    Graceful,
    /// Flush what is queued, then shut down writing; keep reading (and discarding) until
    /// the peer closes or the session's deadline passes.
    ShutdownWrite,
    /// Close now with a reset (SO_LINGER 0): the peer broke the protocol or stopped
    /// answering.
    Reset,
}

/// The sink a session writes into; the driver owns one per reactor and drains it after
/// every call, so a connection holds no queue of its own.
#[derive(Debug, Default)]
pub struct Effects {
    /// Bytes to write, in order.
    pub transmits: Vec<Transmit>,
    /// Events, in order.
    pub events: Vec<Event>,
    /// Set when the socket is to be closed.
    pub close: Option<CloseKind>,
}

impl Effects {
    /// Empties the sink for the next call.
    pub fn clear(&mut self) {
        self.transmits.clear();
        self.events.clear();
        self.close = None;
    }

    pub(crate) fn send(&mut self, kind: TransmitKind, bytes: Bytes) {
        self.transmits.push(Transmit { kind, bytes });
    }
}
