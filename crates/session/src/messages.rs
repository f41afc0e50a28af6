//! JSON messages the server sends (docs/PROTOCOL.md).

use bytes::Bytes;
use protocol::frame::{FrameBuilder, OpCode};

use crate::client_protocol::RequestError;
use crate::config::ReconnectAdvice;

/// What the router says about a `/ws` connection that just opened: the fields of its
/// `welcome`, the retained messages to replay right behind it (before any live message),
/// and an `error` to send after them when the resume request was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Welcome {
    /// The user's latest seq (`None` when history is off: the field is left out).
    pub seq: Option<u64>,
    /// Whether every message after the resume point was still retained.
    pub recovered: Option<bool>,
    /// Retained message frames, in seq order.
    pub replay: Vec<Bytes>,
    /// Why the resume point was refused (`since` in the future, history off).
    pub error: Option<RequestError>,
}

/// The `welcome` frame sent right after the upgrade; `seq` and `recovered` only when the
/// node keeps history.
pub fn welcome(
    conn: &str,
    uid: &str,
    heartbeat_secs: u64,
    reconnect: &ReconnectAdvice,
    seq: Option<u64>,
    recovered: Option<bool>,
) -> Bytes {
    let mut body = serde_json::json!({
        "type": "welcome",
        "conn": conn,
        "uid": uid,
        "heartbeat": heartbeat_secs,
        "reconnect": {
            "base_ms": reconnect.base_ms,
            "factor": reconnect.factor,
            "jitter": reconnect.jitter,
            "cap_ms": reconnect.cap_ms,
        },
    });
    if let Some(seq) = seq {
        body["seq"] = seq.into();
    }
    if let Some(recovered) = recovered {
        body["recovered"] = recovered.into();
    }
    text_frame(&body)
}

/// `{"type":"joined","room":...,"seq":N,"recovered":bool}`, the answer to a `join` with
/// `since`, sent right behind the room's replayed messages.
pub fn joined(room: &str, seq: u64, recovered: bool) -> Bytes {
    text_frame(
        &serde_json::json!({"type": "joined", "room": room, "seq": seq, "recovered": recovered}),
    )
}

/// `{"type":"joined","room":...,"by":"server"}`: the server API (or the token's `subs`
/// claim) put the connection in the room.
pub fn joined_by_server(room: &str) -> Bytes {
    text_frame(&serde_json::json!({"type": "joined", "room": room, "by": "server"}))
}

/// `{"type":"left","room":...,"by":"server"}`: the server API took the connection out of
/// the room; nothing more of it comes after this message.
pub fn left_by_server(room: &str) -> Bytes {
    text_frame(&serde_json::json!({"type": "left", "room": room, "by": "server"}))
}

/// `{"type":"resumed","seq":N,"recovered":bool}`, the answer to a `resume` request, sent
/// right behind the replayed messages.
pub fn resumed(seq: u64, recovered: bool) -> Bytes {
    text_frame(&serde_json::json!({"type": "resumed", "seq": seq, "recovered": recovered}))
}

/// A text frame holding `value` as JSON.
pub fn text_frame(value: &serde_json::Value) -> Bytes {
    let mut f = FrameBuilder::with_capacity(128);
    // Writing JSON into memory cannot fail.
    let _ = serde_json::to_writer(&mut f, value);
    f.finish(OpCode::Text, false)
}
