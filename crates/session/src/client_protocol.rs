//! Requests a `/ws` client sends (docs/PROTOCOL.md), parsed with
//! simd-json, and the JSON the server answers with.

use bytes::Bytes;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::auth::MAX_ID_LEN;

/// Most recipients one `send` may name, whatever the configuration says: past this a
/// `send` is an amplification attack, not a chat message.
pub const MAX_RECIPIENTS: usize = 1000;

/// A well-formed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// Deliver `data` (raw JSON) to every connection of each user in `to`.
    Send {
        /// Recipient user IDs.
        to: Vec<String>,
        /// The `data` value, serialized JSON.
        data: Bytes,
    },
    /// Join a room; with `since`, first replay the room's retained messages after it.
    Join {
        /// Room ID.
        room: String,
        /// The last room seq the client holds.
        since: Option<u64>,
    },
    /// Leave a room.
    Leave {
        /// Room ID.
        room: String,
    },
    /// Application-level ping (browsers cannot send ping frames).
    Ping,
    /// Replay the retained messages after `since` (the first request only).
    Resume {
        /// The last seq the client holds.
        since: u64,
    },
    /// This device has processed every message up to `seq`.
    Ack {
        /// The acknowledged seq.
        seq: u64,
    },
}

/// A rejected request: the `code` and `message` of the `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestError {
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: &'static str,
}

const fn err(code: &'static str, message: &'static str) -> RequestError {
    RequestError { code, message }
}

/// Parses one text message; a `send` may name at most `max_recipients` users (capped at
/// [`MAX_RECIPIENTS`]).
pub fn parse(text: &[u8], max_recipients: usize) -> Result<ClientRequest, RequestError> {
    let mut buf = text.to_vec();
    let value =
        simd_json::to_borrowed_value(&mut buf).map_err(|_| err("bad_json", "not valid JSON"))?;
    let Some(obj) = value.as_object() else {
        return Err(err("bad_request", "a request is a JSON object"));
    };
    let Some(kind) = obj.get("type").and_then(|t| t.as_str()) else {
        return Err(err("bad_request", "missing \"type\""));
    };
    match kind {
        "ping" => Ok(ClientRequest::Ping),
        "join" | "leave" => {
            let room = id(obj.get("room"), "room")?;
            Ok(if kind == "join" {
                let since = match obj.get("since") {
                    None => None,
                    Some(v) => Some(
                        v.as_u64()
                            .ok_or(err("bad_since", "\"since\" must be a non-negative integer"))?,
                    ),
                };
                ClientRequest::Join { room, since }
            } else {
                ClientRequest::Leave { room }
            })
        }
        "resume" => Ok(ClientRequest::Resume {
            since: obj
                .get("since")
                .and_then(|v| v.as_u64())
                .ok_or(err("bad_since", "\"since\" must be a non-negative integer"))?,
        }),
        "ack" => Ok(ClientRequest::Ack {
            seq: obj
                .get("seq")
                .and_then(|v| v.as_u64())
                .ok_or(err("bad_ack", "\"seq\" must be a non-negative integer"))?,
        }),
        "send" => {
            let Some(list) = obj.get("to").and_then(|t| t.as_array()) else {
                return Err(err("bad_request", "\"to\" must be an array of user IDs"));
            };
            if list.is_empty() {
                return Err(err("bad_request", "\"to\" must name at least one user"));
            }
            if list.len() > max_recipients.min(MAX_RECIPIENTS) {
                return Err(err(
                    "too_many_recipients",
                    "\"to\" names more users than this server allows",
                ));
            }
            let to = list
                .iter()
                .map(|v| id(Some(v), "to"))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(data) = obj.get("data") else {
                return Err(err("bad_request", "missing \"data\""));
            };
            Ok(ClientRequest::Send {
                to,
                data: Bytes::from(data.encode()),
            })
        }
        _ => Err(err("unknown_type", "unknown request type")),
    }
}

fn id(v: Option<&BorrowedValue<'_>>, field: &'static str) -> Result<String, RequestError> {
    match v.and_then(|v| v.as_str()) {
        Some(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => Ok(s.to_owned()),
        _ => Err(err(
            "bad_request",
            match field {
                "room" => "\"room\" must be a non-empty string of at most 256 bytes",
                _ => "user IDs must be non-empty strings of at most 256 bytes",
            },
        )),
    }
}

/// The reply to a request past the connection's rate limit.
pub const RATE_LIMITED: RequestError = err("rate_limited", "too many requests; slow down");

/// The reply to a `join` of a room the token does not grant.
pub const FORBIDDEN: RequestError = err("forbidden", "this token does not grant that room");

/// `{"type":"pong"}`.
pub fn pong_json() -> &'static [u8] {
    br#"{"type":"pong"}"#
}

/// `{"type":"error","code":...,"message":...}`.
pub fn error_json(e: RequestError) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"type": "error", "code": e.code, "message": e.message}))
        .unwrap_or_default()
}

/// A delivered message: the one encoder of the client `msg` JSON, whichever path delivers
/// it (a local push, a stored copy replayed, a copy from another node through the bus),
/// so a client gets the same bytes wherever its message came from. Fields go in this
/// order: `type`, `from`, `id`, `room`, `seq`, `data`; absent ones are left out.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    /// The sender (a user ID or a backend's name).
    pub from: &'a str,
    /// The message ID (pushes that are kept in a stream have one).
    pub id: Option<&'a str>,
    /// The room a room message went to.
    pub room: Option<&'a str>,
    /// Its place in the user's (or, with `room`, the room's) stream.
    pub seq: Option<u64>,
    /// The `data` value, serialized JSON as the caller sent it.
    pub data: &'a [u8],
}

impl Msg<'_> {
    /// A message with neither ID nor seq (`send`s and broadcasts).
    pub fn plain<'a>(from: &'a str, data: &'a [u8]) -> Msg<'a> {
        Msg {
            from,
            id: None,
            room: None,
            seq: None,
            data,
        }
    }

    /// Writes the JSON into `out` (`data` copied as it came, never re-serialized).
    pub fn write_json(&self, out: &mut impl std::io::Write) {
        // Writing JSON into memory cannot fail.
        let _ = out.write_all(MSG_FROM);
        let _ = serde_json::to_writer(&mut *out, self.from);
        if let Some(id) = self.id {
            let _ = out.write_all(br#","id":"#);
            let _ = serde_json::to_writer(&mut *out, id);
        }
        if let Some(room) = self.room {
            let _ = out.write_all(br#","room":"#);
            let _ = serde_json::to_writer(&mut *out, room);
        }
        if let Some(seq) = self.seq {
            let _ = write!(out, r#","seq":{seq}"#);
        }
        let _ = out.write_all(MSG_DATA);
        let _ = out.write_all(self.data);
        let _ = out.write_all(b"}");
    }

    /// The JSON on its own (what a node stores, what the bus carries).
    pub fn json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_hint());
        self.write_json(&mut out);
        out
    }

    /// The JSON as one unmasked text frame, written straight into the frame buffer (one
    /// copy of the payload).
    pub fn frame(&self) -> Bytes {
        let mut f = protocol::frame::FrameBuilder::with_capacity(self.len_hint());
        self.write_json(&mut f);
        f.finish(protocol::OpCode::Text, false)
    }

    fn len_hint(&self) -> usize {
        let extra = self.from.len() + self.id.map_or(0, str::len) + self.room.map_or(0, str::len);
        self.data.len() + extra + 80
    }
}

/// Where every `msg` starts.
const MSG_FROM: &[u8] = br#"{"type":"msg","from":"#;
/// What precedes a `msg`'s data.
const MSG_DATA: &[u8] = br#","data":"#;

/// A `msg` JSON written without its seq (what a node stores before the stream gives it
/// one) with `"seq":N` put where [`Msg::write_json`] puts it, so a stored copy reads the
/// same as the message delivered on the node that took it. A body a node did not write
/// (a backend storing by hand) is returned as it is.
pub fn msg_json_with_seq(body: &[u8], seq: u64) -> Vec<u8> {
    let Some(data_at) = msg_data_offset(body) else {
        return body.to_vec();
    };
    let seq = format!(r#","seq":{seq}"#);
    let mut out = Vec::with_capacity(body.len() + seq.len());
    out.extend_from_slice(&body[..data_at]);
    out.extend_from_slice(seq.as_bytes());
    out.extend_from_slice(&body[data_at..]);
    out
}

/// Where `,"data":` starts in a `msg` [`Msg::write_json`] wrote without a seq; `None` for
/// anything else (a seq already there, another shape).
fn msg_data_offset(body: &[u8]) -> Option<usize> {
    let mut rest = skip_json_string(body.strip_prefix(MSG_FROM)?)?;
    for key in [&br#","id":"#[..], br#","room":"#] {
        if let Some(value) = rest.strip_prefix(key) {
            rest = skip_json_string(value)?;
        }
    }
    rest.starts_with(MSG_DATA).then(|| body.len() - rest.len())
}

/// What follows the JSON string at the start of `s`.
pub(crate) fn skip_json_string(s: &[u8]) -> Option<&[u8]> {
    if s.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(&s[i + 1..]),
            _ => i += 1,
        }
    }
    None
}

/// A delivered message as one unmasked text frame: `{"type":"msg","from":...,"data":...}`.
pub fn msg_frame(from: &str, data: &[u8]) -> Bytes {
    Msg::plain(from, data).frame()
}

/// A delivered message with its place in a stream, as one unmasked text frame:
/// `{"type":"msg","from":...,"id":...,"seq":N,"data":...}`, with `"room":...` before
/// `seq` for a room message (whose seq is the room's).
pub fn msg_frame_seq(from: &str, id: &str, room: Option<&str>, seq: u64, data: &[u8]) -> Bytes {
    Msg {
        from,
        id: Some(id),
        room,
        seq: Some(seq),
        data,
    }
    .frame()
}

/// The reply to a `since` or `resume` past the user's latest seq.
pub const SINCE_IN_FUTURE: RequestError =
    err("bad_since", "\"since\" is past the latest seq of this user");
/// The reply to `since`, `resume` or `ack` on a node that keeps no history.
pub const HISTORY_DISABLED: RequestError = err(
    "history_disabled",
    "this node keeps no history (history_size is 0 or clustered)",
);
/// The reply to a `resume` that is not the connection's first request.
pub const RESUME_NOT_FIRST: RequestError = err(
    "bad_request",
    "\"resume\" is only accepted as the first request",
);
/// The reply to an `ack` of a seq this user never had.
pub const UNKNOWN_ACK: RequestError = err("bad_ack", "no message with this seq was delivered");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_type() {
        assert_eq!(parse(br#"{"type":"ping"}"#, 100), Ok(ClientRequest::Ping));
        assert_eq!(
            parse(br#"{"type":"join","room":"r1"}"#, 100),
            Ok(ClientRequest::Join {
                room: "r1".into(),
                since: None
            })
        );
        assert_eq!(
            parse(br#"{"type":"join","room":"r1","since":4}"#, 100),
            Ok(ClientRequest::Join {
                room: "r1".into(),
                since: Some(4)
            })
        );
        assert_eq!(
            parse(br#"{"type":"join","room":"r1","since":"4"}"#, 100).map_err(|e| e.code),
            Err("bad_since")
        );
        assert_eq!(
            parse(br#"{"type":"leave","room":"r1"}"#, 100),
            Ok(ClientRequest::Leave { room: "r1".into() })
        );
        let Ok(ClientRequest::Send { to, data }) = parse(
            br#"{"type":"send","to":["u2","u3"],"data":{"t":"hi","n":[1,2]}}"#,
            100,
        ) else {
            panic!()
        };
        assert_eq!(to, ["u2", "u3"]);
        let back: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(back, serde_json::json!({"t": "hi", "n": [1, 2]}));
    }

    #[test]
    fn malformed_requests_get_codes() {
        let cases: [(&[u8], &str); 10] = [
            (b"not json", "bad_json"),
            (b"[1,2]", "bad_request"),
            (br#"{"kind":"ping"}"#, "bad_request"),
            (br#"{"type":"dance"}"#, "unknown_type"),
            (br#"{"type":"join"}"#, "bad_request"),
            (br#"{"type":"join","room":7}"#, "bad_request"),
            (br#"{"type":"send","to":"u2","data":1}"#, "bad_request"),
            (br#"{"type":"send","to":[],"data":1}"#, "bad_request"),
            (br#"{"type":"send","to":["u2",3],"data":1}"#, "bad_request"),
            (br#"{"type":"send","to":["u2"]}"#, "bad_request"),
        ];
        for (input, code) in cases {
            assert_eq!(
                parse(input, 100).map_err(|e| e.code),
                Err(code),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let long = format!(
            r#"{{"type":"join","room":"{}"}}"#,
            "r".repeat(MAX_ID_LEN + 1)
        );
        assert!(parse(long.as_bytes(), 100).is_err());
    }

    #[test]
    fn recipients_are_capped_by_configuration_and_by_the_hard_limit() {
        let send = |n: usize| {
            let to: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
            serde_json::to_vec(&serde_json::json!({"type": "send", "to": to, "data": 1})).unwrap()
        };
        assert!(parse(&send(3), 3).is_ok());
        assert_eq!(
            parse(&send(4), 3).map_err(|e| e.code),
            Err("too_many_recipients")
        );
        assert!(parse(&send(MAX_RECIPIENTS), usize::MAX).is_ok());
        assert_eq!(
            parse(&send(MAX_RECIPIENTS + 1), usize::MAX).map_err(|e| e.code),
            Err("too_many_recipients")
        );
    }

    #[test]
    fn msg_frame_holds_msg_json() {
        let f = msg_frame("a\"b", br#"{"x":[1,2]}"#);
        let (h, n) = protocol::FrameHeader::parse(&f).unwrap().unwrap();
        assert_eq!(h.opcode, protocol::OpCode::Text);
        assert_eq!(&f[n..], &Msg::plain("a\"b", br#"{"x":[1,2]}"#).json()[..]);
    }

    #[test]
    fn msg_frame_seq_carries_id_room_and_seq() {
        let parse_frame = |f: Bytes| -> serde_json::Value {
            let (_, n) = protocol::FrameHeader::parse(&f).unwrap().unwrap();
            serde_json::from_slice(&f[n..]).unwrap()
        };
        assert_eq!(
            parse_frame(msg_frame_seq("s\"", "i\\d", None, 7, b"[1]")),
            serde_json::json!({"type": "msg", "from": "s\"", "id": "i\\d", "seq": 7, "data": [1]})
        );
        assert_eq!(
            parse_frame(msg_frame_seq("s", "i", Some("r\n"), 1, b"null")),
            serde_json::json!({"type": "msg", "from": "s", "id": "i", "room": "r\n", "seq": 1, "data": null})
        );
    }

    #[test]
    fn resume_and_ack() {
        assert_eq!(
            parse(br#"{"type":"resume","since":5}"#, 1),
            Ok(ClientRequest::Resume { since: 5 })
        );
        assert_eq!(
            parse(br#"{"type":"ack","seq":0}"#, 1),
            Ok(ClientRequest::Ack { seq: 0 })
        );
        for bad in [
            &br#"{"type":"resume"}"#[..],
            br#"{"type":"resume","since":-1}"#,
            br#"{"type":"resume","since":"5"}"#,
            br#"{"type":"resume","since":1.5}"#,
        ] {
            assert_eq!(parse(bad, 1).map_err(|e| e.code), Err("bad_since"));
        }
        assert_eq!(
            parse(br#"{"type":"ack","seq":"x"}"#, 1).map_err(|e| e.code),
            Err("bad_ack")
        );
    }

    #[test]
    fn a_seq_added_later_goes_where_the_encoder_puts_it() {
        for room in [None, Some("r\",\"data\":")] {
            let m = |seq| Msg {
                from: "\\\"",
                id: Some(",\"data\":"),
                room,
                seq,
                data: br#"{"data":1}"#,
            };
            assert_eq!(msg_json_with_seq(&m(None).json(), 9), m(Some(9)).json());
        }
        let unkeyed = Msg::plain("s", b"1").json();
        assert_eq!(
            msg_json_with_seq(&unkeyed, 3),
            br#"{"type":"msg","from":"s","seq":3,"data":1}"#
        );
        for foreign in [&b"[1]"[..], br#"{"type":"msg","seq":1,"data":2}"#, b""] {
            assert_eq!(msg_json_with_seq(foreign, 3), foreign, "left as it is");
        }
    }

    #[test]
    fn msg_json_escapes_the_sender() {
        let m = Msg::plain("a\"b", br#"{"x":1}"#).json();
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "msg", "from": "a\"b", "data": {"x": 1}})
        );
    }
}
