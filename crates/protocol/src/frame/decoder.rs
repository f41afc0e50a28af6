//! The incremental frame decoder: bytes in, whole messages and control frames out
//! (RFC 6455 §5, RFC 7692 §6).
//!
//! [`Decoder::decode`] consumes everything it is given. Bytes that do not yet make a
//! message are kept by the decoder (a header of at most 14 bytes, the payload received so
//! far), so a driver can read every socket into one shared buffer and a connection owns
//! bytes only while it is in the middle of a frame or a fragmented message. A frame whose
//! payload arrived whole is unmasked in place and handed out without a copy.
//!
//! Every check happens as early as the bytes allow: header rules and size limits when the
//! header is complete (before any allocation), UTF-8 as each piece of a text message is
//! unmasked, so a bad byte fails the connection when it arrives.

use bytes::{Buf, Bytes, BytesMut};

use crate::close::{parse_close_payload, CloseFrame};
use crate::deflate::{InflateError, Inflater};
use crate::error::ProtocolError;
use crate::frame::header::{FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::mask::unmask;
use crate::utf8::{self, Utf8Validator};

/// Which side of the connection the decoder reads for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads client frames: they must be masked.
    Server,
    /// Reads server frames: they must not be masked.
    Client,
}

/// Limits and role, shared by every connection of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// The side we are.
    pub role: Role,
    /// Largest payload of one frame.
    pub max_frame_size: usize,
    /// Largest message, summed over its fragments and measured after decompression.
    pub max_message_size: usize,
}

impl DecoderConfig {
    /// Server-side defaults: 1 MiB messages, ample for IM traffic. The frame limit is the
    /// same: browsers send every message as one frame, so a lower frame limit would only
    /// refuse large browser messages that the message limit allows.
    pub const fn server() -> Self {
        DecoderConfig {
            role: Role::Server,
            max_frame_size: 1024 * 1024,
            max_message_size: 1024 * 1024,
        }
    }

    /// Client-side decoder (tests and the load tools) with the same limits.
    pub const fn client() -> Self {
        DecoderConfig {
            role: Role::Client,
            ..Self::server()
        }
    }
}

/// A decoded message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its application data.
    Ping(Bytes),
    /// A pong with its application data.
    Pong(Bytes),
    /// A close frame, with its status when it had one.
    Close(Option<CloseFrame>),
}

/// The header of the frame whose payload is being received.
#[derive(Debug, Clone, Copy)]
struct FrameInFlight {
    header: FrameHeader,
    /// Payload bytes received so far (the masking phase of the next byte).
    received: usize,
}

/// A data message being assembled.
#[derive(Debug, Default)]
struct MessageInFlight {
    text: bool,
    compressed: bool,
    payload: BytesMut,
    utf8: Utf8Validator,
}

/// Per-connection decoder state. Idle, it holds no heap memory.
#[derive(Debug, Default)]
pub struct Decoder {
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    frame: Option<FrameInFlight>,
    /// Boxed: most connections never have a message in flight between reads.
    message: Option<Box<MessageInFlight>>,
    /// Payload of a control frame received in pieces (at most 125 bytes).
    control: BytesMut,
}

impl Decoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the decoder is between frames with no message in progress (so it holds no
    /// bytes of the peer's).
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && self.frame.is_none() && self.message.is_none()
    }

    /// Bytes of the peer's the decoder currently holds.
    pub fn buffered(&self) -> usize {
        usize::from(self.header_len)
            + self.control.len()
            + self.message.as_ref().map_or(0, |m| m.payload.len())
    }

    /// Decodes the next message from `input`, consuming what it uses. Returns `Ok(None)`
    /// when `input` is used up without completing one; call again after each `Some` until
    /// it returns `None`. `inflater` is the permessage-deflate context when the extension
    /// was negotiated: a frame with RSV1 set is a protocol error without one.
    ///
    /// After an error the connection must be failed; the decoder's state is unspecified.
    pub fn decode(
        &mut self,
        input: &mut BytesMut,
        config: &DecoderConfig,
        mut inflater: Option<&mut Inflater>,
    ) -> Result<Option<Message>, ProtocolError> {
        loop {
            let frame = match self.frame {
                Some(f) => f,
                None => match self.next_header(input)? {
                    Some(header) => {
                        self.check_header(&header, config, inflater.is_some())?;
                        FrameInFlight {
                            header,
                            received: 0,
                        }
                    }
                    None => return Ok(None),
                },
            };
            let len = frame.header.payload_len as usize;
            let key = frame.header.mask;
            if frame.received == 0 && input.len() >= len {
                // The whole payload is here: unmask in place and hand it out uncopied.
                self.frame = None;
                let mut payload = input.split_to(len);
                if let Some(key) = key {
                    unmask(&mut payload, key, 0);
                }
                if let Some(m) =
                    self.on_frame(frame.header, payload, config, inflater.as_deref_mut())?
                {
                    return Ok(Some(m));
                }
                continue;
            }
            // Take what is here of the payload.
            let take = (len - frame.received).min(input.len());
            let mut piece = input.split_to(take);
            if let Some(key) = key {
                unmask(&mut piece, key, frame.received);
            }
            let received = frame.received + take;
            if frame.header.opcode.is_control() {
                self.control.extend_from_slice(&piece);
            } else {
                self.append(frame.header, &piece)?;
            }
            if received < len {
                self.frame = Some(FrameInFlight { received, ..frame });
                return Ok(None);
            }
            self.frame = None;
            let payload = if frame.header.opcode.is_control() {
                self.control.split()
            } else {
                BytesMut::new()
            };
            if let Some(m) =
                self.on_frame(frame.header, payload, config, inflater.as_deref_mut())?
            {
                return Ok(Some(m));
            }
        }
    }

    /// Parses the next header, keeping a partial one across calls.
    fn next_header(&mut self, input: &mut BytesMut) -> Result<Option<FrameHeader>, ProtocolError> {
        if self.header_len == 0 {
            if let Some((header, n)) = FrameHeader::parse(input)? {
                input.advance(n);
                return Ok(Some(header));
            }
        }
        let have = usize::from(self.header_len);
        let take = (MAX_HEADER_LEN - have).min(input.len());
        self.header[have..have + take].copy_from_slice(&input[..take]);
        match FrameHeader::parse(&self.header[..have + take])? {
            Some((header, n)) => {
                input.advance(n - have);
                self.header_len = 0;
                Ok(Some(header))
            }
            None => {
                input.advance(take);
                self.header_len = (have + take) as u8;
                Ok(None)
            }
        }
    }

    /// The rules a header must follow, checked before any of its payload is stored.
    fn check_header(
        &self,
        h: &FrameHeader,
        config: &DecoderConfig,
        deflate: bool,
    ) -> Result<(), ProtocolError> {
        match (config.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        // RFC 7692 §6.1: RSV1 marks the first frame of a compressed data message only.
        if h.rsv2
            || h.rsv3
            || (h.rsv1 && (!deflate || !matches!(h.opcode, OpCode::Text | OpCode::Binary)))
        {
            return Err(ProtocolError::ReservedBits);
        }
        if h.opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
            return Ok(());
        }
        match (h.opcode, &self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        if h.payload_len > config.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge);
        }
        let so_far = self.message.as_ref().map_or(0, |m| m.payload.len());
        if so_far as u64 + h.payload_len > config.max_message_size as u64 {
            return Err(ProtocolError::MessageTooLarge);
        }
        Ok(())
    }

    /// Adds a piece of a data frame's payload to the message in flight, starting one for
    /// the first frame of a message.
    fn append(&mut self, h: FrameHeader, piece: &[u8]) -> Result<(), ProtocolError> {
        let m = self.message.get_or_insert_with(|| {
            Box::new(MessageInFlight {
                text: h.opcode == OpCode::Text,
                compressed: h.rsv1,
                ..MessageInFlight::default()
            })
        });
        if m.text && !m.compressed {
            m.utf8.feed(piece).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        m.payload.extend_from_slice(piece);
        Ok(())
    }

    /// A frame's payload is complete. For a data frame received whole, `payload` holds it;
    /// for one received in pieces it is already in the message in flight.
    fn on_frame(
        &mut self,
        h: FrameHeader,
        payload: BytesMut,
        config: &DecoderConfig,
        inflater: Option<&mut Inflater>,
    ) -> Result<Option<Message>, ProtocolError> {
        match h.opcode {
            OpCode::Ping => return Ok(Some(Message::Ping(payload.freeze()))),
            OpCode::Pong => return Ok(Some(Message::Pong(payload.freeze()))),
            OpCode::Close => {
                return parse_close_payload(payload.freeze()).map(|c| Some(Message::Close(c)))
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
        }
        let whole_single_frame =
            h.fin && h.opcode != OpCode::Continuation && self.message.is_none();
        if whole_single_frame && !h.rsv1 {
            // The common case: one frame, all here, uncompressed. No copy.
            return if h.opcode == OpCode::Text {
                utf8::validate(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Some(Message::Text(payload.freeze())))
            } else {
                Ok(Some(Message::Binary(payload.freeze())))
            };
        }
        if !payload.is_empty() || self.message.is_none() {
            self.append(h, &payload)?;
        }
        if !h.fin {
            return Ok(None);
        }
        let Some(m) = self.message.take() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let MessageInFlight {
            text,
            compressed,
            payload,
            mut utf8,
        } = *m;
        let payload = if compressed {
            let inflater = inflater.ok_or(ProtocolError::ReservedBits)?;
            let data = inflater
                .inflate(&payload, config.max_message_size)
                .map_err(|e| match e {
                    InflateError::Corrupt => ProtocolError::InvalidCompressedData,
                    InflateError::TooLarge => ProtocolError::MessageTooLarge,
                })?;
            if text {
                utf8::validate(&data).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            data
        } else {
            if text {
                utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            payload
        };
        let payload = payload.freeze();
        Ok(Some(if text {
            Message::Text(payload)
        } else {
            Message::Binary(payload)
        }))
    }
}
