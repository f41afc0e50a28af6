//! Is this request a valid WebSocket upgrade (RFC 6455 §4.2.1)?

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::HandshakeError;
use crate::handshake::request::Request;
use crate::handshake::response::accept_key;

/// What a valid upgrade request asks for, for the caller's policy to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// Subprotocols offered in `Sec-WebSocket-Protocol`, in order.
    pub protocols: Vec<String>,
}

/// Checks the request against RFC 6455 §4.2.1 and returns what the response needs.
/// Extension offers are read with [`Request::header_values`] and
/// [`crate::deflate::negotiate`].
pub fn validate(req: &Request) -> Result<Upgrade, HandshakeError> {
    if req.method() != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.minor_version() < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if req.header("host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    if !req
        .header_values("upgrade")
        .any(|v| has_token(v, "websocket"))
    {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !req
        .header_values("connection")
        .any(|v| has_token(v, "upgrade"))
    {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    let mut keys = req.header_values("sec-websocket-key");
    let key = keys.next().ok_or(HandshakeError::BadKey)?;
    if keys.next().is_some() {
        return Err(HandshakeError::BadKey);
    }
    let key = trim(key);
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    if !req
        .header_values("sec-websocket-version")
        .any(|v| trim(v) == b"13")
    {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let origin = req
        .header("origin")
        .map(|o| String::from_utf8_lossy(trim(o)).into_owned());
    let protocols = req
        .header_values("sec-websocket-protocol")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Ok(Upgrade {
        accept: accept_key(key),
        origin,
        protocols,
    })
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::RequestParser;

    fn parse(raw: &str) -> Request {
        RequestParser::new(8192)
            .feed(raw.as_bytes())
            .unwrap()
            .unwrap()
    }

    const GOOD: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc6455_section_1_3_example() {
        let up = validate(&parse(GOOD)).unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.origin.as_deref(), Some("http://example.com"));
        assert_eq!(up.protocols, ["chat", "superchat"]);
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        let req = GOOD
            .replace("Connection: Upgrade", "connection: keep-alive, UPGRADE")
            .replace("Upgrade: websocket", "upgrade: WebSocket");
        assert!(validate(&parse(&req)).is_ok());
    }

    #[test]
    fn each_requirement_has_its_error() {
        let cases = [
            (GOOD.replace("GET", "POST"), HandshakeError::MethodNotGet),
            (
                GOOD.replace("HTTP/1.1", "HTTP/1.0"),
                HandshakeError::HttpVersion,
            ),
            (
                GOOD.replace("Host: server.example.com\r\n", ""),
                HandshakeError::MissingHost,
            ),
            (
                GOOD.replace("Upgrade: websocket", "Upgrade: h2c"),
                HandshakeError::NotWebSocketUpgrade,
            ),
            (
                GOOD.replace("Connection: Upgrade", "Connection: close"),
                HandshakeError::NoConnectionUpgrade,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="),
                HandshakeError::BadKey,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!"),
                HandshakeError::BadKey,
            ),
            (
                GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                HandshakeError::BadKey,
            ),
            (
                GOOD.replace(
                    "Origin",
                    "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nOrigin",
                ),
                HandshakeError::BadKey,
            ),
            (
                GOOD.replace("Version: 13", "Version: 8"),
                HandshakeError::UnsupportedVersion,
            ),
        ];
        for (req, want) in cases {
            assert_eq!(validate(&parse(&req)), Err(want), "{req}");
        }
    }
}
