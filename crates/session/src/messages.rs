//! JSON messages the server sends (shared/CONTRACT.md, "Client protocol").

use bytes::Bytes;
use protocol::frame::{FrameBuilder, OpCode};

use crate::config::ReconnectAdvice;

/// The `welcome` frame sent right after the upgrade.
pub fn welcome(conn: &str, uid: &str, heartbeat_secs: u64, reconnect: &ReconnectAdvice) -> Bytes {
    let body = serde_json::json!({
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
    text_frame(&body)
}

/// A text frame holding `value` as JSON.
pub fn text_frame(value: &serde_json::Value) -> Bytes {
    let mut f = FrameBuilder::with_capacity(128);
    // Writing JSON into memory cannot fail.
    let _ = serde_json::to_writer(&mut f, value);
    f.finish(OpCode::Text, false)
}
