//! The bytes of the fallback transports (docs/PROTOCOL.md, "Fallback transports"):
//! a delivered frame turned into a Server-Sent Event or a long-poll answer, and the HTTP
//! responses of `/sse`, `/poll` and `/send`.
//!
//! Deliveries reach a reactor as encoded WebSocket frames (final, unmasked, uncompressed
//! text frames: the router builds one frame per push and shares it); the JSON is the
//! frame's payload, so nothing is re-serialised here.

use bytes::{BufMut, Bytes, BytesMut};

/// Which transport an opened connection of a user uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `/ws`.
    Ws,
    /// `GET /sse`: a `text/event-stream` response.
    Sse,
    /// `GET /poll`: one parked request, answered once.
    Poll,
}

impl Transport {
    /// Every transport, in the order of the per-transport counters.
    pub const ALL: [Transport; 3] = [Transport::Ws, Transport::Sse, Transport::Poll];

    /// The `transport` label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }

    /// Index into per-transport counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The payload of a final, unmasked server frame (what the router and the session build).
pub fn frame_payload(frame: &[u8]) -> Option<&[u8]> {
    match protocol::FrameHeader::parse(frame) {
        Ok(Some((h, n))) if h.mask.is_none() && (frame.len() - n) as u64 == h.payload_len => {
            Some(&frame[n..])
        }
        _ => None,
    }
}

/// The user-stream seq of a delivered `msg` (what `since` and `Last-Event-ID` resume
/// after); `None` for anything else: broadcasts and plain sends carry no seq, and a room
/// message's seq is the room's, not the user's.
///
/// The prefix is the one `client_protocol::msg_frame_seq` writes
/// (`{"type":"msg","from":"..","id":"..","seq":N,...}`), so this reads it back instead of
/// parsing the whole message, whose `data` may be large.
pub fn msg_seq(json: &[u8]) -> Option<u64> {
    let rest = json.strip_prefix(br#"{"type":"msg","from":"#)?;
    let rest = crate::client_protocol::skip_json_string(rest)?;
    let rest = rest.strip_prefix(br#","id":"#)?;
    let rest = crate::client_protocol::skip_json_string(rest)?;
    let rest = rest.strip_prefix(br#","seq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// One event: `id: <seq>` when given, then the JSON as `data:` lines. JSON a pusher sent
/// may hold raw line breaks between tokens; each starts another `data:` line, which an
/// `EventSource` joins back with `\n` (whitespace to JSON), so the event stays one event.
pub fn sse_event(json: &[u8], id: Option<u64>) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 32);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"data: ");
    let mut rest = json;
    while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        out.put_slice(&rest[..i]);
        out.put_slice(b"\ndata: ");
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[i + skip..];
    }
    out.put_slice(rest);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// A delivered frame as an event, with the user seq as its `id`; `None` when `frame` is
/// not a frame this gateway built.
pub fn sse_from_frame(frame: &[u8]) -> Option<Bytes> {
    let json = frame_payload(frame)?;
    Some(sse_event(json, msg_seq(json)))
}

/// The comment sent every heartbeat interval, so proxies keep the stream open and the
/// client sees it alive.
pub const SSE_HEARTBEAT: &[u8] = b":\n\n";

/// The last event before the server ends a stream (kick, drain, slow consumer): a
/// `close` event a client can tell apart from a network failure.
pub fn sse_close(code: u16, reason: &str) -> Bytes {
    let json = serde_json::json!({"type": "close", "code": code, "reason": reason});
    let mut out = BytesMut::from(&b"event: close\n"[..]);
    out.put_slice(&sse_event(json.to_string().as_bytes(), None));
    out.freeze()
}

/// The head of an event stream, and its first line: how long an `EventSource` waits
/// before it reconnects (the welcome's base delay). The body has no length: it ends when
/// the server closes the connection (RFC 9112 §6.3), which is how a stream ends.
pub fn sse_head(origin: Option<&[u8]>, retry_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          X-Accel-Buffering: no\r\n",
    );
    cors(&mut out, origin);
    out.extend_from_slice(b"\r\nretry: ");
    out.extend_from_slice(retry_ms.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// A complete JSON response. `keep_alive` false adds `Connection: close`.
pub fn json_response(status: u16, body: &[u8], keep_alive: bool, origin: Option<&[u8]>) -> Bytes {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    };
    let mut out = Vec::with_capacity(body.len() + 160);
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Type: application/json\r\nCache-Control: no-store\r\n");
    if status == 429 || status == 503 {
        out.extend_from_slice(b"Retry-After: 1\r\n");
    }
    cors(&mut out, origin);
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// The answer to a CORS preflight (`OPTIONS`) from an allowed origin.
pub fn preflight_response(origin: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n");
    cors(&mut out, origin);
    out.extend_from_slice(
        b"Access-Control-Allow-Methods: GET, POST\r\n\
          Access-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID\r\n\
          Access-Control-Max-Age: 600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    out
}

/// A browser page on another origin may read the answer: the origin passed the
/// `--allowed-origins` check already (or any is allowed).
fn cors(out: &mut Vec<u8>, origin: Option<&[u8]>) {
    if let Some(o) = origin {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(o);
        out.extend_from_slice(b"\r\nVary: Origin\r\n");
    }
}

/// `{"messages":[..],"seq":N}`, the answer to a long poll; `seq` is `null` on a node
/// without history.
pub fn poll_body<'a>(messages: impl IntoIterator<Item = &'a [u8]>, seq: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#"{"messages":["#);
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.extend_from_slice(br#"],"seq":"#);
    match seq {
        Some(s) => out.extend_from_slice(s.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

/// The body of a successful `POST /send`.
pub const SENT_JSON: &[u8] = br#"{"ok":true}"#;

/// Statuses `POST /send` answers with once the request was read, in the order of its
/// counters.
pub const SEND_STATUSES: [u16; 4] = [200, 400, 429, 503];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_protocol::{msg_frame, msg_frame_seq};

    #[test]
    fn seq_is_read_from_user_messages_only() {
        let f = msg_frame_seq("a\"\\", "i\"d", None, 42, br#"{"seq":7}"#);
        assert_eq!(msg_seq(frame_payload(&f).unwrap()), Some(42));
        let room = msg_frame_seq("a", "i", Some("r"), 9, b"1");
        assert_eq!(msg_seq(frame_payload(&room).unwrap()), None);
        let plain = msg_frame("a", br#"{"seq":3}"#);
        assert_eq!(msg_seq(frame_payload(&plain).unwrap()), None);
        assert_eq!(msg_seq(br#"{"type":"msg","from":"unterminated"#), None);
        assert_eq!(msg_seq(b""), None);
    }

    #[test]
    fn events_keep_multi_line_json_in_one_event() {
        let e = sse_event(b"{\"a\":\r\n1,\n\"b\":\r2}", Some(5));
        assert_eq!(
            &e[..],
            b"id: 5\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
        // What an EventSource rebuilds is the same JSON value.
        let joined: Vec<&str> = std::str::from_utf8(&e)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let v: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1, "b": 2}));
        assert_eq!(&sse_event(b"{}", None)[..], b"data: {}\n\n");
    }

    #[test]
    fn frames_become_events() {
        let f = msg_frame_seq("s", "i", None, 3, b"[1]");
        assert_eq!(
            &sse_from_frame(&f).unwrap()[..],
            &b"id: 3\ndata: {\"type\":\"msg\",\"from\":\"s\",\"id\":\"i\",\"seq\":3,\"data\":[1]}\n\n"[..]
        );
        assert!(sse_from_frame(b"\x81").is_none());
        assert!(sse_from_frame(b"\x81\x85abcdhello").is_none(), "masked");
    }

    #[test]
    fn poll_bodies_are_json() {
        let b = poll_body([&b"{\"x\":1}"[..], b"2"], Some(9));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, serde_json::json!({"messages": [{"x": 1}, 2], "seq": 9}));
        let v: serde_json::Value = serde_json::from_slice(&poll_body([], None)).unwrap();
        assert_eq!(v, serde_json::json!({"messages": [], "seq": null}));
    }

    #[test]
    fn responses_parse_as_http() {
        let raw = json_response(429, b"{}", true, Some(b"null"));
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&raw).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(resp.code, Some(429));
        assert!(resp
            .headers
            .iter()
            .any(|h| h.name == "Access-Control-Allow-Origin" && h.value == b"null"));
        assert_eq!(&raw[n..], b"{}");
        let head = sse_head(None, 1000);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&head).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(&head[n..], b"retry: 1000\n\n");
    }
}
