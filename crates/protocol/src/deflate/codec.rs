//! The compressor and decompressor of one permessage-deflate context (RFC 7692 §7.2).

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The empty stored block that a sender strips from the end of each message and the
/// receiver appends back before inflating (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is grown in steps of at most this much, so a small message never reserves a
/// large buffer and a large one grows geometrically only up to the limit.
const STEP: usize = 16 * 1024;

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// Not a valid DEFLATE stream.
    #[error("invalid compressed data")]
    Corrupt,
    /// The inflated message would exceed the limit (a "zip bomb" stops here, having
    /// allocated at most the limit).
    #[error("inflated message over the limit")]
    TooLarge,
}

/// Inflates received messages.
#[derive(Debug)]
pub struct Inflater {
    inner: Decompress,
    no_context_takeover: bool,
}

impl Inflater {
    /// An inflater for a peer that compresses with windows of up to `window_bits`
    /// (9..=15). With `no_context_takeover` the state is reset after every message, so
    /// one inflater may serve many connections in turn.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Inflater {
        let window_bits = window_bits.clamp(9, 15);
        Inflater {
            inner: Decompress::new_with_window_bits(false, window_bits),
            no_context_takeover,
        }
    }

    /// Whether this inflater keeps no state between messages.
    pub fn is_stateless(&self) -> bool {
        self.no_context_takeover
    }

    /// Inflates one whole message (the concatenated payloads of its frames). Fails with
    /// [`InflateError::TooLarge`] as soon as the output passes `max_len` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max_len: usize) -> Result<BytesMut, InflateError> {
        let mut out = BytesMut::new();
        let result = match self.run(compressed, max_len, &mut out) {
            Ok(false) => self.run(&TAIL, max_len, &mut out).map(drop),
            other => other.map(drop),
        };
        if result.is_err() || self.no_context_takeover {
            // After an error the stream state is unknown; without context takeover the next
            // message starts from an empty window anyway.
            self.reset();
        }
        result.map(|()| out)
    }

    /// Inflates `input` into `out`; `Ok(true)` when it ended exactly at the end of a final
    /// block, so no tail is to be appended.
    fn run(
        &mut self,
        mut input: &[u8],
        max_len: usize,
        out: &mut BytesMut,
    ) -> Result<bool, InflateError> {
        loop {
            // One byte past the limit is room enough to see that it was passed.
            let filled = out.len();
            let room = (max_len + 1 - filled).min(STEP.max(filled));
            out.resize(filled + room, 0);
            let (in_before, out_before) = (self.inner.total_in(), self.inner.total_out());
            let status = self
                .inner
                .decompress(input, &mut out[filled..], FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt);
            let consumed = (self.inner.total_in() - in_before) as usize;
            let produced = (self.inner.total_out() - out_before) as usize;
            out.truncate(filled + produced);
            input = &input[consumed..];
            if out.len() > max_len {
                return Err(InflateError::TooLarge);
            }
            match status? {
                // A final block ends this DEFLATE stream (RFC 7692 §7.2.3.4 allows one per
                // message). Whatever follows, such as the padding byte of that section's
                // example, starts a new stream.
                Status::StreamEnd => {
                    self.reset();
                    if input.is_empty() {
                        return Ok(true);
                    }
                }
                _ if input.is_empty() && produced < room => return Ok(false),
                _ if consumed == 0 && produced == 0 => return Err(InflateError::Corrupt),
                _ => {}
            }
        }
    }

    /// Back to an empty window without reallocating (flate2 re-initialises with the
    /// window bits the stream was created with).
    fn reset(&mut self) {
        self.inner.reset(false);
    }
}

/// Compresses outgoing messages.
#[derive(Debug)]
pub struct Deflater {
    inner: Compress,
    no_context_takeover: bool,
}

impl Deflater {
    /// A compressor at `level` (0..=9) with windows of `window_bits` (9..=15). With
    /// `no_context_takeover` every message is compressed from an empty window, so one
    /// deflater may serve many connections and a compressed frame can be shared by all.
    pub fn new(level: u32, window_bits: u8, no_context_takeover: bool) -> Deflater {
        Deflater {
            inner: Compress::new_with_window_bits(
                Compression::new(level.min(9)),
                false,
                window_bits.clamp(9, 15),
            ),
            no_context_takeover,
        }
    }

    /// Appends the compressed form of `payload`, without the `00 00 ff ff` tail, to `out`.
    pub fn compress_into(&mut self, payload: &[u8], out: &mut BytesMut) {
        let start = out.len();
        let mut input = payload;
        loop {
            // Sync-flushed DEFLATE grows incompressible data by a few bytes per block;
            // room for half the input again means most messages take one pass.
            let filled = out.len();
            out.resize(filled + input.len() / 2 + 64, 0);
            let (before_in, before_out) = (self.inner.total_in(), self.inner.total_out());
            let status = self
                .inner
                .compress(input, &mut out[filled..], FlushCompress::Sync);
            let consumed = (self.inner.total_in() - before_in) as usize;
            let produced = (self.inner.total_out() - before_out) as usize;
            let room = out.len() - filled;
            out.truncate(filled + produced);
            input = &input[consumed..];
            // Done when all input is in and the flush had room to finish; a compressor
            // error cannot come from data, only from misuse, and ends the loop too.
            if status.is_err() || (input.is_empty() && produced < room) {
                break;
            }
        }
        if out.len() >= start + TAIL.len() && out[out.len() - TAIL.len()..] == TAIL {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // zlib emits nothing for a second sync flush with no new input (an empty
            // message with context takeover); RFC 7692 §7.2.3.6 sends an empty stored
            // block's header, which the receiver's appended tail completes.
            out.extend_from_slice(&[0x00]);
        }
        if self.no_context_takeover {
            self.inner.reset();
        }
    }
}
