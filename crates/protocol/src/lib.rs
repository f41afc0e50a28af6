//! The WebSocket protocol with no I/O: bytes in, events and bytes out.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade (RFC 6455 §4): incremental request parsing,
//!   validation, 101 and error responses.
//! - [`frame`]: frame headers, the incremental [`frame::Decoder`] that yields whole
//!   messages and control frames, and the encoders (RFC 6455 §5).
//! - [`close`]: close codes and close payloads (RFC 6455 §7.4).
//! - [`deflate`]: permessage-deflate negotiation and codecs (RFC 7692).
//! - [`mask`]: payload masking with SIMD kernels chosen at run time.
//! - [`utf8`]: incremental UTF-8 validation that fails at the first bad byte.
//! - [`error`]: the error values and the close code or HTTP status each maps to.
//!
//! Nothing here reads a socket or a clock, so every part is tested byte for byte and
//! fuzzed (`fuzz/`).

pub mod close;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use error::{HandshakeError, ProtocolError};
pub use frame::{Decoder, DecoderConfig, FrameBuilder, FrameHeader, Message, OpCode, Role};
