//! Frames (RFC 6455 §5): the header, the incremental decoder, the encoders.

pub mod decoder;
pub mod encoder;
pub mod header;

pub use decoder::{Decoder, DecoderConfig, Message, Role};
pub use encoder::{client_frame, client_message, server_close, server_frame, FrameBuilder};
pub use header::{FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, MAX_SERVER_HEADER_LEN};
