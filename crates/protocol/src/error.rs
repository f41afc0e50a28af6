//! The protocol's error values. Each is a small `Copy` value that maps to exactly one close
//! code ([`ProtocolError::close_code`]) or HTTP status ([`HandshakeError::status`]), so
//! the driver never decides what a violation means.

use crate::close::CloseCode;
use crate::handshake::Status;

/// A violation of RFC 6455 / RFC 7692 by the peer, or a configured limit exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A client frame without a mask (RFC 6455 §5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A server frame with a mask (RFC 6455 §5.1), seen by the client-side decoder.
    #[error("server frame is masked")]
    MaskedFrame,
    /// RSV1-3 set without an extension that defines them, or RSV1 on a control or
    /// continuation frame (RFC 6455 §5.2, RFC 7692 §6).
    #[error("reserved bits set")]
    ReservedBits,
    /// Opcode 3-7 or B-F (RFC 6455 §5.2).
    #[error("reserved opcode")]
    ReservedOpcode,
    /// A 64-bit length with its most significant bit set (RFC 6455 §5.2).
    #[error("invalid payload length")]
    InvalidLength,
    /// A control frame with more than 125 bytes of payload (RFC 6455 §5.5).
    #[error("control frame payload over 125 bytes")]
    ControlFrameTooLong,
    /// A control frame without FIN (RFC 6455 §5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A continuation frame with no message started (RFC 6455 §5.4).
    #[error("continuation frame without a message")]
    UnexpectedContinuation,
    /// A new text or binary frame inside a fragmented message (RFC 6455 §5.4).
    #[error("data frame inside a fragmented message")]
    ExpectedContinuation,
    /// A close payload of one byte (RFC 6455 §5.5.1).
    #[error("close payload of one byte")]
    InvalidClosePayload,
    /// A close code not allowed on the wire (RFC 6455 §7.4).
    #[error("invalid close code")]
    InvalidCloseCode,
    /// Invalid UTF-8 in a text message or close reason (RFC 6455 §8.1).
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// Compressed data that does not inflate (RFC 7692 §7.2.2).
    #[error("invalid compressed data")]
    InvalidCompressedData,
    /// A frame over the configured frame size limit.
    #[error("frame too large")]
    FrameTooLarge,
    /// A message (after decompression) over the configured message size limit.
    #[error("message too large")]
    MessageTooLarge,
}

impl ProtocolError {
    /// The close code the endpoint sends when it fails the connection for this error.
    pub fn close_code(self) -> CloseCode {
        use ProtocolError::*;
        match self {
            UnmaskedFrame
            | MaskedFrame
            | ReservedBits
            | ReservedOpcode
            | InvalidLength
            | ControlFrameTooLong
            | FragmentedControlFrame
            | UnexpectedContinuation
            | ExpectedContinuation
            | InvalidClosePayload
            | InvalidCloseCode => CloseCode::PROTOCOL_ERROR,
            InvalidUtf8 | InvalidCompressedData => CloseCode::INVALID_PAYLOAD,
            FrameTooLarge | MessageTooLarge => CloseCode::TOO_BIG,
        }
    }
}

/// Why an HTTP upgrade request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The request head is not valid HTTP/1.1.
    #[error("malformed HTTP request")]
    Malformed,
    /// The request head is over the configured size limit.
    #[error("request header block too large")]
    HeadersTooLarge,
    /// More header fields than the parser accepts.
    #[error("too many header fields")]
    TooManyHeaders,
    /// Not a GET request (RFC 6455 §4.1).
    #[error("method is not GET")]
    MethodNotGet,
    /// Not HTTP/1.1 or later.
    #[error("HTTP version below 1.1")]
    HttpVersion,
    /// No Host header.
    #[error("missing Host header")]
    MissingHost,
    /// `Upgrade: websocket` missing.
    #[error("missing Upgrade: websocket")]
    NotWebSocketUpgrade,
    /// `Connection` without the `upgrade` token.
    #[error("Connection header lacks the upgrade token")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Key` missing, repeated, or not 16 bytes of base64.
    #[error("bad Sec-WebSocket-Key")]
    BadKey,
    /// `Sec-WebSocket-Version` other than 13.
    #[error("unsupported Sec-WebSocket-Version")]
    UnsupportedVersion,
}

impl HandshakeError {
    /// The HTTP status the server answers with.
    pub fn status(self) -> Status {
        use HandshakeError::*;
        match self {
            HeadersTooLarge | TooManyHeaders => Status::HeaderFieldsTooLarge,
            UnsupportedVersion => Status::UpgradeRequired,
            Malformed | MethodNotGet | HttpVersion | MissingHost | NotWebSocketUpgrade
            | NoConnectionUpgrade | BadKey => Status::BadRequest,
        }
    }
}
