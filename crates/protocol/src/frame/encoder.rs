//! Frame encoding. Server frames are built with room for the header in front of the
//! payload, so the finished frame is one contiguous buffer (one write, one `Bytes` shared
//! by every connection it goes to). The masked client encoder serves tests and the load
//! tools.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::close::CloseCode;
use crate::deflate::Deflater;
use crate::frame::header::{FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_SERVER_HEADER_LEN};
use crate::mask::unmask;

/// A server frame under construction: payload bytes are appended after reserved headroom,
/// and [`finish`](Self::finish) writes the header into the headroom's tail.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: BytesMut,
}

impl FrameBuilder {
    /// An empty frame with room for `payload_capacity` bytes of payload.
    pub fn with_capacity(payload_capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(MAX_SERVER_HEADER_LEN + payload_capacity);
        buf.put_bytes(0, MAX_SERVER_HEADER_LEN);
        FrameBuilder { buf }
    }

    /// Payload bytes written so far.
    pub fn payload(&self) -> &[u8] {
        &self.buf[MAX_SERVER_HEADER_LEN..]
    }

    /// Appends payload bytes.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Appends `payload` compressed with `deflater` (the frame must then be finished with
    /// `compressed = true`).
    pub fn extend_compressed(&mut self, deflater: &mut Deflater, payload: &[u8]) {
        deflater.compress_into(payload, &mut self.buf);
    }

    /// Writes the header and returns the frame: a final frame of `opcode`, RSV1 set when
    /// `compressed`.
    pub fn finish(mut self, opcode: OpCode, compressed: bool) -> Bytes {
        let payload_len = self.buf.len() - MAX_SERVER_HEADER_LEN;
        let header = FrameHeader {
            rsv1: compressed,
            ..FrameHeader::server(opcode, payload_len as u64)
        };
        let start = MAX_SERVER_HEADER_LEN - header.encoded_len();
        header.write(&mut self.buf[start..MAX_SERVER_HEADER_LEN]);
        // Advance rather than `Bytes::slice`: slicing a freshly frozen buffer promotes it
        // to a shared allocation, which doubled the cost of encoding a small frame.
        self.buf.advance(start);
        self.buf.freeze()
    }
}

impl std::io::Write for FrameBuilder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A final, unmasked frame carrying `payload`.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut f = FrameBuilder::with_capacity(payload.len());
    f.extend_from_slice(payload);
    f.finish(opcode, false)
}

/// A server close frame with `code` and `reason`; the reason is cut at a character
/// boundary so the payload fits the 125-byte control-frame limit.
pub fn server_close(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut f = FrameBuilder::with_capacity(2 + end);
    f.extend_from_slice(&code.0.to_be_bytes());
    f.extend_from_slice(&reason.as_bytes()[..end]);
    f.finish(OpCode::Close, false)
}

/// A masked client frame, with every header bit under the caller's control so tests can
/// build invalid frames too.
pub fn client_frame(header: FrameHeader, payload: &[u8]) -> BytesMut {
    let header = FrameHeader {
        payload_len: payload.len() as u64,
        ..header
    };
    let mut out = BytesMut::with_capacity(header.encoded_len() + payload.len());
    out.put_bytes(0, header.encoded_len());
    header.write(&mut out);
    let at = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = header.mask {
        unmask(&mut out[at..], key, 0);
    }
    out
}

/// A masked, final client frame of `opcode`.
pub fn client_message(opcode: OpCode, payload: &[u8], key: [u8; 4]) -> BytesMut {
    client_frame(
        FrameHeader {
            mask: Some(key),
            ..FrameHeader::server(opcode, 0)
        },
        payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_unmasked_hello() {
        assert_eq!(
            &server_frame(OpCode::Text, b"Hello")[..],
            &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn rfc6455_masked_hello() {
        assert_eq!(
            &client_message(OpCode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d])[..],
            &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn header_fills_headroom_for_every_length_class() {
        for (len, hdr) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let f = server_frame(OpCode::Binary, &vec![7u8; len]);
            assert_eq!(f.len(), hdr + len, "len {len}");
            let (h, n) = FrameHeader::parse(&f).unwrap().unwrap();
            assert_eq!(
                (h.payload_len as usize, n, h.fin, h.mask),
                (len, hdr, true, None)
            );
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let f = server_close(CloseCode::GOING_AWAY, &"é".repeat(100));
        assert_eq!(f[1] as usize, 2 + 122);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
