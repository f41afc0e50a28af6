//! Close codes and close-frame payloads (RFC 6455 §5.5.1, §7.4).

use bytes::{Buf, Bytes};

use crate::error::ProtocolError;
use crate::utf8;

/// A close status code as carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure, e.g. answering the peer's close.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: going away (shutdown drain, idle timeout).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint does not accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1007: payload inconsistent with the message type (bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: frame or message too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: internal server error.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 1013: try again later (slow consumer, overload).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether the code may appear in a close frame. 1004, 1005, 1006 and 1015 are
    /// reserved for local use and never sent; 1012–1014 are registered with IANA (the
    /// gateway itself sends 1013, and clients commonly echo the code they received);
    /// 3000–3999 are registered by libraries and 4000–4999 are private. Everything else
    /// below 5000 is unassigned and rejected, as the Autobahn suite expects.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A received close frame with a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code, valid on the wire.
    pub code: CloseCode,
    /// The reason, valid UTF-8 (possibly empty).
    pub reason: Bytes,
}

impl CloseFrame {
    /// The reason as text.
    pub fn reason_str(&self) -> &str {
        // The decoder validated the reason; an empty string is the harmless fallback.
        std::str::from_utf8(&self.reason).unwrap_or_default()
    }
}

/// Parses a close payload: empty (no status), or a valid code and a UTF-8 reason.
pub fn parse_close_payload(mut payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::InvalidClosePayload),
        _ => {
            let code = CloseCode(payload.get_u16());
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode);
            }
            utf8::validate(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: payload,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_follows_the_registry() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1010, 1011, 1013, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(c).is_valid_on_wire(), "{c}");
        }
        for c in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(c).is_valid_on_wire(), "{c}");
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(Bytes::new()), Ok(None));
        assert_eq!(
            parse_close_payload(Bytes::from_static(&[3])),
            Err(ProtocolError::InvalidClosePayload)
        );
        assert_eq!(
            parse_close_payload(Bytes::from_static(&[0x03, 0xed])),
            Err(ProtocolError::InvalidCloseCode)
        );
        assert_eq!(
            parse_close_payload(Bytes::from_static(b"\x03\xe8bye\xff")),
            Err(ProtocolError::InvalidUtf8)
        );
        let f = parse_close_payload(Bytes::from_static(b"\x03\xe8bye"))
            .ok()
            .flatten();
        assert_eq!(f.as_ref().map(|f| f.code), Some(CloseCode::NORMAL));
        assert_eq!(f.as_ref().map(CloseFrame::reason_str), Some("bye"));
    }
}
