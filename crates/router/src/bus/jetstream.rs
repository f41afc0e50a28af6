//! History in a cluster on NATS JetStream (docs/BUS.md, "History in a cluster"): the
//! stream's settings, the PubAck and direct-get answers, and the stored message format.
//!
//! One stream per deployment, named from the bus prefix, holds `<prefix>.h.user.<id>`:
//! the last `history_size` messages of each user, each kept `history_ttl`. A message's
//! seq is its stream sequence; the node storing it says which seq it expects to be the
//! user's last (`Nats-Expected-Last-Subject-Sequence`) and writes that seq in
//! [`HEADER_PREV`], so the stored messages of a user form a chain: a reader knows from
//! `prev` whether anything between two of them is missing.

use std::time::Duration;

use bytes::Bytes;
use session::client_protocol::{msg_json_with_seq, Msg};

use super::wire;

/// Header of a stored or live user message: the user's seq before this one (0: none).
pub const HEADER_PREV: &str = "Pushgate-Prev";
/// Header of a live user message: its seq (the stream sequence it was stored at).
pub const HEADER_SEQ: &str = "Pushgate-Seq";
/// JetStream's de-duplication header (within the stream's `duplicate_window`).
pub(super) const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// JetStream's optimistic-concurrency header.
pub(super) const HEADER_EXPECTED_LAST: &str = "Nats-Expected-Last-Subject-Sequence";
/// JetStream's "wrong last sequence" error.
const ERR_WRONG_LAST: u64 = 10071;
/// JetStream's "stream name already in use with a different configuration".
pub(super) const ERR_STREAM_EXISTS: u64 = 10058;

/// History settings of a clustered node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsConfig {
    /// Messages kept per user (`--history-size`).
    pub size: usize,
    /// How long each is kept (`--history-ttl`), also the window in which a push `id`
    /// is de-duplicated.
    pub ttl: Duration,
    /// Copies of the stream (`--history-replicas`): 3 needs a 3-server JetStream cluster.
    pub replicas: usize,
}

/// The stream of deployment `prefix`: the prefix with dots as underscores, then
/// `_history` (stream names may not hold dots).
pub fn stream_name(prefix: &str) -> String {
    let mut s: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.push_str("_history");
    s
}

/// The stream configuration, as `STREAM.CREATE` / `STREAM.UPDATE` take it.
pub(super) fn stream_config(name: &str, prefix: &str, c: &JsConfig) -> Bytes {
    let ttl = c.ttl.as_nanos().min(i64::MAX as u128) as i64;
    let v = serde_json::json!({
        "name": name,
        "subjects": [format!("{prefix}.h.>")],
        "retention": "limits",
        "max_msgs_per_subject": c.size as i64,
        "max_age": ttl,
        "duplicate_window": ttl,
        "allow_direct": true,
        "discard": "old",
        "storage": "file",
        "num_replicas": c.replicas.max(1),
    });
    Bytes::from(v.to_string())
}

/// A JetStream API error (`{"error":{"code":..,"err_code":..,"description":..}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiError {
    pub(super) err_code: u64,
    pub(super) description: String,
}

/// The error in a JetStream API answer, if it is one.
pub(super) fn api_error(payload: &[u8]) -> Option<ApiError> {
    #[derive(serde::Deserialize)]
    struct Err {
        #[serde(default)]
        err_code: u64,
        #[serde(default)]
        description: String,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<Err>,
    }
    match serde_json::from_slice::<Answer>(payload) {
        Ok(Answer { error: Some(e) }) => Some(ApiError {
            err_code: e.err_code,
            description: e.description,
        }),
        Ok(_) => None,
        Err(e) => Some(ApiError {
            err_code: 0,
            description: format!("unreadable JetStream answer: {e}"),
        }),
    }
}

/// What a store came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PubAck {
    /// Stored at `seq` (`duplicate`: an earlier store with the same message ID was).
    Stored { seq: u64, duplicate: bool },
    /// The user's last seq is not the one expected: it is this one.
    WrongLast(u64),
    /// Refused for another reason.
    Failed(String),
}

/// Reads a PubAck.
pub(super) fn pub_ack(payload: &[u8]) -> PubAck {
    if let Some(e) = api_error(payload) {
        if e.err_code == ERR_WRONG_LAST {
            // "wrong last sequence: 42"
            if let Some(n) = e
                .description
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
            {
                return PubAck::WrongLast(n);
            }
        }
        return PubAck::Failed(e.description);
    }
    #[derive(serde::Deserialize)]
    struct Ack {
        seq: u64,
        #[serde(default)]
        duplicate: bool,
    }
    match serde_json::from_slice::<Ack>(payload) {
        Ok(a) if a.seq > 0 => PubAck::Stored {
            seq: a.seq,
            duplicate: a.duplicate,
        },
        _ => PubAck::Failed("unreadable PubAck".into()),
    }
}

/// A stored user message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    /// Its seq (stream sequence).
    pub seq: u64,
    /// The user's seq before it.
    pub prev: u64,
    /// The stored JSON, without its seq ([`with_seq`] adds it).
    pub body: Bytes,
    /// A room message's `Pushgate-Targets`, if it had several recipients.
    pub targets: Option<String>,
}

/// Reads a direct-get answer: `Ok(None)` when there is no such message (404).
pub(super) fn direct_answer(
    headers: Option<&[u8]>,
    payload: &[u8],
) -> Result<Option<StoredMsg>, String> {
    let Some(h) = headers else {
        // Errors without headers are API errors in JSON.
        return Err(api_error(payload).map_or_else(
            || "direct get answered without headers".to_owned(),
            |e| e.description,
        ));
    };
    match wire::status(h) {
        None | Some(200) => {}
        Some(404) => return Ok(None),
        Some(code) => return Err(format!("direct get answered {code}")),
    }
    let seq = wire::header(h, "Nats-Sequence")
        .and_then(|v| v.parse().ok())
        .ok_or("direct get answer without Nats-Sequence")?;
    let prev = wire::header(h, HEADER_PREV)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Some(StoredMsg {
        seq,
        prev,
        body: Bytes::copy_from_slice(payload),
        targets: wire::header(h, super::HEADER_TARGETS).map(str::to_owned),
    }))
}

/// Whether a reply to a batch direct get is its last: the end-of-batch status (204),
/// an error or "not found", or a message without the batch's `Nats-Num-Pending` header
/// (a server without batch get answers one message, as to a plain direct get).
pub(super) fn ends_batch(headers: Option<&[u8]>) -> bool {
    let Some(h) = headers else {
        return true;
    };
    match wire::status(h) {
        None | Some(200) => wire::header(h, "Nats-Num-Pending").is_none(),
        Some(_) => true,
    }
}

/// The client JSON of a stored body with its seq, byte for byte what the node that took
/// the message delivered (session's [`msg_json_with_seq`]). A body not written by a node
/// (a backend storing by hand) is returned as it is.
pub fn with_seq(body: &[u8], seq: u64) -> Vec<u8> {
    msg_json_with_seq(body, seq)
}

/// The body a node stores for a user's (or, with `room`, a room's) message: the client
/// JSON without the seq.
pub fn stored_body(from: &str, id: &str, room: Option<&str>, data: &[u8]) -> Bytes {
    Bytes::from(
        Msg {
            from,
            id: Some(id),
            room,
            seq: None,
            data,
        }
        .json(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_acks() {
        assert_eq!(
            pub_ack(br#"{"stream":"s","seq":7}"#),
            PubAck::Stored {
                seq: 7,
                duplicate: false
            }
        );
        assert_eq!(
            pub_ack(br#"{"stream":"s","seq":7,"duplicate":true}"#),
            PubAck::Stored {
                seq: 7,
                duplicate: true
            }
        );
        assert_eq!(
            pub_ack(
                br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 42"}}"#
            ),
            PubAck::WrongLast(42)
        );
        assert!(matches!(
            pub_ack(br#"{"error":{"code":503,"description":"no"}}"#),
            PubAck::Failed(_)
        ));
        assert!(matches!(pub_ack(b"garbage"), PubAck::Failed(_)));
        assert!(matches!(pub_ack(br#"{"seq":0}"#), PubAck::Failed(_)));
    }

    #[test]
    fn bodies_get_their_seq() {
        let b = stored_body("svc\"x", "id1", None, br#"{"a":1}"#);
        let full = with_seq(&b, 12);
        let v: serde_json::Value = serde_json::from_slice(&full).unwrap();
        assert_eq!(v["seq"], 12);
        assert_eq!(v["from"], "svc\"x");
        assert_eq!(v["id"], "id1");
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(with_seq(b"[1]", 3), b"[1]", "foreign bodies untouched");
        let r: serde_json::Value =
            serde_json::from_slice(&with_seq(&stored_body("s", "i", Some("r"), b"1"), 4)).unwrap();
        assert_eq!(
            (&r["room"], &r["seq"]),
            (&serde_json::json!("r"), &serde_json::json!(4))
        );
    }

    /// A message a client gets through the cluster (stored, then given its seq) is byte
    /// for byte the one a client of a single node gets, for senders, IDs and rooms that
    /// need escaping and data that holds the keys themselves.
    #[test]
    fn a_stored_message_reads_as_the_one_delivered_on_a_single_node() {
        for (from, id, room, data) in [
            ("svc", "id1", None, &br#"{"a":1}"#[..]),
            ("a\",\"data\":\"x", "i\\d", None, br#"{"seq":7,"data":"x"}"#),
            ("s", "i", Some("r\"oom"), br#","data":1"#),
            ("\u{e9}\n", "", Some(""), b"null"),
        ] {
            let single_node = session::client_protocol::msg_frame_seq(from, id, room, 42, data);
            let payload = session::fallback::frame_payload(&single_node).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&with_seq(&stored_body(from, id, room, data), 42)),
                String::from_utf8_lossy(payload),
            );
        }
    }

    #[test]
    fn direct_answers() {
        let h = b"NATS/1.0\r\nNats-Stream: s\r\nNats-Sequence: 9\r\nPushgate-Prev: 4\r\n\r\n";
        let m = direct_answer(Some(h), b"x").unwrap().unwrap();
        assert_eq!((m.seq, m.prev, &m.body[..]), (9, 4, &b"x"[..]));
        assert_eq!(
            direct_answer(Some(b"NATS/1.0 404 Message Not Found\r\n\r\n"), b""),
            Ok(None)
        );
        assert!(direct_answer(Some(b"NATS/1.0 408 Bad\r\n\r\n"), b"").is_err());
        assert!(direct_answer(None, br#"{"error":{"description":"x"}}"#).is_err());
    }

    #[test]
    fn names_and_config() {
        assert_eq!(stream_name("acme.push"), "acme_push_history");
        let c = stream_config(
            "n",
            "p",
            &JsConfig {
                size: 5,
                ttl: Duration::from_secs(2),
                replicas: 0,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["subjects"][0], "p.h.>");
        assert_eq!(v["max_msgs_per_subject"], 5);
        assert_eq!(v["max_age"], 2_000_000_000i64);
        assert_eq!(v["num_replicas"], 1);
    }
}
