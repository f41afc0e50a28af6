//! The server API: `POST /v1/push` and `POST /v1/broadcast` (docs/API.md,
//! "Server API"). Bodies are parsed with simd-json; every refusal is a JSON error and the
//! listener keeps serving.

use std::borrow::Cow;
use std::time::Instant;

use router::{Delivered, DeliveredDone, Router};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use session::auth::MAX_ID_LEN;

/// A validated push request, borrowing from the request body: `data` is the caller's
/// JSON exactly as sent (validated, never re-serialised) and is copied once, into the
/// frame the recipients get.
#[derive(Debug)]
pub struct PushRequest<'a> {
    /// Recipient users.
    pub to: Vec<Cow<'a, str>>,
    /// Recipient rooms.
    pub rooms: Vec<Cow<'a, str>>,
    /// Sender named in the delivered message.
    pub from: Cow<'a, str>,
    /// The `data` value, as sent.
    pub data: &'a RawValue,
    /// The caller's message ID: a retry with the same one is delivered once.
    pub id: Option<Cow<'a, str>>,
}

/// Sender named when a push does not say.
pub const DEFAULT_FROM: &str = "server";

/// Why a body was refused (400).
pub type BadRequest = &'static str;

/// The top level of a body; each field is checked on its own so that every refusal says
/// which field is wrong.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
    #[serde(borrow, default)]
    rooms: Option<&'a RawValue>,
    #[serde(borrow, default)]
    from: Option<&'a RawValue>,
    /// `Some` whenever present, `null` included.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A string that borrows from the body unless it had escapes.
#[derive(Deserialize)]
struct Id<'a>(#[serde(borrow)] Cow<'a, str>);

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN
}

fn ids<'a>(v: Option<&'a RawValue>, what: BadRequest) -> Result<Vec<Cow<'a, str>>, BadRequest> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let list: Vec<Id<'a>> = serde_json::from_str(v.get()).map_err(|_| what)?;
    list.into_iter()
        .map(|Id(s)| if valid_id(&s) { Ok(s) } else { Err(what) })
        .collect()
}

fn sender(v: Option<&RawValue>) -> Result<Cow<'_, str>, BadRequest> {
    const BAD: BadRequest = "\"from\" must be a non-empty string";
    match v {
        None => Ok(Cow::Borrowed(DEFAULT_FROM)),
        Some(v) => match serde_json::from_str::<Id<'_>>(v.get()) {
            Ok(Id(s)) if valid_id(&s) => Ok(s),
            _ => Err(BAD),
        },
    }
}

/// One pass over a good body; a second one only to say what is wrong with a bad one.
fn body(bytes: &[u8]) -> Result<Body<'_>, BadRequest> {
    let text = std::str::from_utf8(bytes).map_err(|_| "body is not valid JSON")?;
    // serde would also take the fields from an array, in order; the API takes objects.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => "body must be a JSON object",
            Err(_) => "body is not valid JSON",
        });
    }
    serde_json::from_str(text).map_err(|_| match serde_json::from_str::<&RawValue>(text) {
        Ok(_) => "body must be a JSON object",
        Err(_) => "body is not valid JSON",
    })
}

/// Parses a `/v1/push` body.
pub fn parse_push(bytes: &[u8]) -> Result<PushRequest<'_>, BadRequest> {
    let b = body(bytes)?;
    let to = ids(b.to, "\"to\" must be an array of non-empty user ID strings")?;
    let rooms = ids(
        b.rooms,
        "\"rooms\" must be an array of non-empty room ID strings",
    )?;
    if to.is_empty() && rooms.is_empty() {
        return Err("name at least one recipient in \"to\" or \"rooms\"");
    }
    let id = match b.id {
        None => None,
        Some(v) => match serde_json::from_str::<Id<'_>>(v.get()) {
            Ok(Id(s)) if valid_id(&s) => Some(s),
            _ => return Err("\"id\" must be a non-empty string of at most 256 bytes"),
        },
    };
    Ok(PushRequest {
        to,
        rooms,
        from: sender(b.from)?,
        data: b.data.ok_or("missing \"data\"")?,
        id,
    })
}

/// Parses a `/v1/broadcast` body: `{"data": ..., "from": optional}`.
pub fn parse_broadcast(bytes: &[u8]) -> Result<(Cow<'_, str>, &RawValue), BadRequest> {
    let b = body(bytes)?;
    Ok((sender(b.from)?, b.data.ok_or("missing \"data\"")?))
}

/// Carries out a push: with history, each named user's copy has its seq.
pub fn push(router: &Router, req: &PushRequest<'_>, received: Instant) -> Delivered {
    router.send(
        &req.to,
        &req.rooms,
        &req.from,
        req.data.get().as_bytes(),
        req.id.as_deref(),
        received,
    )
}

/// Carries out a push without waiting: `done` is told what it reached (at once, or on the
/// bus thread once JetStream stored it).
pub fn push_then(router: &Router, req: &PushRequest<'_>, received: Instant, done: DeliveredDone) {
    router.send_then(
        &req.to,
        &req.rooms,
        &req.from,
        req.data.get().as_bytes(),
        req.id.as_deref(),
        received,
        done,
    )
}

/// The 503 of a push that NATS being gone kept from being stored: it reached this node's
/// connections only, without a seq (so no replay and no resume will bring it back, and
/// offline users will never get it); a retry with the same `id` once the bus is back
/// stores and delivers it with a seq, and a client that got the first copy knows the
/// second by its `id`.
pub fn unstored_answer(id: &str, d: &Delivered) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        br#"{"ok":false,"error":"cluster bus disconnected: delivered to this node's connections only, without a seq, and not stored; retry with the same \"id\" once the bus is back","id":"#,
    );
    // Writing JSON into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, id);
    out.extend_from_slice(b",\"stored\":false,\"connections\":");
    out.extend_from_slice(d.outcome.connections.to_string().as_bytes());
    out.extend_from_slice(b",\"offline\":");
    let _ = serde_json::to_writer(&mut out, &d.offline);
    out.push(b'}');
    out
}

/// The answer to a successful push: `{"ok":true}`, and with history
/// `"id"`, `"seq":{"u1":N,...}` and `"offline":[...]`.
pub fn push_answer(d: &Delivered) -> Vec<u8> {
    let Some(id) = &d.id else {
        return b"{\"ok\":true}".to_vec();
    };
    // Written in the contract's order: `ok` first.
    let mut out = Vec::with_capacity(64 + 24 * d.seqs.len());
    out.extend_from_slice(b"{\"ok\":true,\"id\":");
    // Writing JSON into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, id);
    out.extend_from_slice(b",\"seq\":{");
    for (i, (uid, n)) in d.seqs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, uid);
        out.extend_from_slice(format!(":{n}").as_bytes());
    }
    out.extend_from_slice(b"},\"offline\":");
    let _ = serde_json::to_writer(&mut out, &d.offline);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_bodies() {
        let p =
            parse_push(br#"{"to":["u1","u2"],"rooms":["r1"],"from":"svc","data":{"a":[1,"x"]}}"#)
                .unwrap();
        assert_eq!((p.to.len(), p.rooms.len(), &*p.from), (2, 1, "svc"));
        assert_eq!(
            p.data.get(),
            r#"{"a":[1,"x"]}"#,
            "data is forwarded as sent"
        );
        let p = parse_push(br#"{"rooms":["r"],"data":null}"#).unwrap();
        assert_eq!((&*p.from, p.data.get()), (DEFAULT_FROM, "null"));
        let p = parse_push(br#"{"to":["a\"b"],"rooms":null,"data":1}"#).unwrap();
        assert_eq!(p.to, ["a\"b"], "escapes are decoded");
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"data":1}"#,
            br#"{"to":[],"data":1}"#,
            br#"{"to":"u1","data":1}"#,
            br#"{"to":[1],"data":1}"#,
            br#"{"to":[""],"data":1}"#,
            br#"{"to":["u"]}"#,
            br#"{"to":["u"],"from":5,"data":1}"#,
            br#"{"to":["u"],"data":1"#,
            br#"{"to":["u"],"data":1} x"#,
            b"\xff",
            br#"[["u"],null,null,1]"#,
            br#"{"to":["u"],"data":1,"id":""}"#,
            br#"{"to":["u"],"data":1,"id":7}"#,
        ] {
            assert!(parse_push(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn push_answers_in_contract_order() {
        let d = Delivered {
            outcome: router::PushOutcome {
                connections: 1,
                offline_users: 1,
                refused: 0,
                bus: Ok(()),
            },
            id: Some("m\"1".into()),
            seqs: vec![("u2".into(), 7), ("u1".into(), 1)],
            offline: vec!["u1".into()],
        };
        let a = String::from_utf8(push_answer(&d)).unwrap();
        assert_eq!(
            a,
            r#"{"ok":true,"id":"m\"1","seq":{"u2":7,"u1":1},"offline":["u1"]}"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&a).is_ok());
    }

    #[test]
    fn broadcast_bodies() {
        assert_eq!(
            parse_broadcast(br#"{"data":"hi"}"#).unwrap().1.get(),
            "\"hi\""
        );
        assert!(parse_broadcast(br#"{"nodata":1}"#).is_err());
        assert!(parse_broadcast(b"nope").is_err());
    }
}
