//! Responses to an upgrade request: the 101 and the error statuses the gateway uses.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `base64(SHA-1(key ++ GUID))`, the `Sec-WebSocket-Accept` value for a key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

/// The 101 response, with the chosen subprotocol and extensions.
pub fn switching_protocols(
    accept: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    if let Some(p) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    if let Some(e) = extensions {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// The error statuses the gateway answers an upgrade with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 400: not a valid upgrade request.
    BadRequest,
    /// 401: missing or bad credentials.
    Unauthorized,
    /// 403: origin not allowed.
    Forbidden,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint exists but not for this method (`GET /send`).
    MethodNotAllowed,
    /// 411: a request body without `Content-Length` (chunked bodies are not taken).
    LengthRequired,
    /// 413: a request body past the message-size limit.
    PayloadTooLarge,
    /// 426: unsupported WebSocket version.
    UpgradeRequired,
    /// 429: too many connections from this address.
    TooManyRequests,
    /// 431: request head too large.
    HeaderFieldsTooLarge,
    /// 503: at connection capacity, or draining.
    ServiceUnavailable,
}

impl Status {
    /// The numeric status code.
    pub fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::LengthRequired => 411,
            Status::PayloadTooLarge => 413,
            Status::UpgradeRequired => 426,
            Status::TooManyRequests => 429,
            Status::HeaderFieldsTooLarge => 431,
            Status::ServiceUnavailable => 503,
        }
    }

    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::LengthRequired => "Length Required",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::UpgradeRequired => "Upgrade Required",
            Status::TooManyRequests => "Too Many Requests",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }

    /// Headers this status needs beyond the common ones.
    fn extra_headers(self) -> &'static str {
        match self {
            // RFC 6455 §4.4: name the versions we speak.
            Status::UpgradeRequired => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            Status::Unauthorized => "WWW-Authenticate: Bearer\r\n",
            Status::MethodNotAllowed => "Allow: GET, POST\r\n",
            // Ask clients to wait before reconnecting; they add their own jitter.
            Status::TooManyRequests | Status::ServiceUnavailable => "Retry-After: 5\r\n",
            _ => "",
        }
    }
}

/// A complete error response with a short JSON body; the connection is closed after it.
pub fn error_response(status: Status, message: &str) -> Vec<u8> {
    let mut body = String::with_capacity(message.len() + 32);
    body.push_str("{\"ok\":false,\"error\":\"");
    for c in message.chars() {
        match c {
            '"' => body.push_str("\\\""),
            '\\' => body.push_str("\\\\"),
            c if (c as u32) < 0x20 => body.push_str(&format!("\\u{:04x}", c as u32)),
            c => body.push(c),
        }
    }
    body.push_str("\"}");
    format!(
        "HTTP/1.1 {} {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        status.code(),
        status.reason(),
        status.extra_headers(),
        body.len(),
        body
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn switching_protocols_is_byte_exact() {
        let r = switching_protocols("abc=", Some("chat"), Some("permessage-deflate"));
        assert_eq!(
            r,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: abc=\r\nSec-WebSocket-Protocol: chat\r\n\
              Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        );
    }

    #[test]
    fn error_responses_parse_as_http() {
        for s in [
            Status::BadRequest,
            Status::Unauthorized,
            Status::Forbidden,
            Status::NotFound,
            Status::MethodNotAllowed,
            Status::LengthRequired,
            Status::PayloadTooLarge,
            Status::UpgradeRequired,
            Status::TooManyRequests,
            Status::HeaderFieldsTooLarge,
            Status::ServiceUnavailable,
        ] {
            let raw = error_response(s, "bad \"thing\"\n");
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(&raw).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial"),
            };
            assert_eq!(resp.code, Some(s.code()));
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            assert_eq!(raw.len() - n, len);
            assert_eq!(&raw[n..], br#"{"ok":false,"error":"bad \"thing\"\u000a"}"#);
        }
        let raw = error_response(Status::UpgradeRequired, "");
        assert!(raw
            .windows(27)
            .any(|w| w == b"Sec-WebSocket-Version: 13\r\n"));
    }
}
