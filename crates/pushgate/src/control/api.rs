//! The server API: `POST /v1/push` and `POST /v1/broadcast` (shared/CONTRACT.md,
//! "Server API"). Bodies are parsed with simd-json; every refusal is a JSON error and the
//! listener keeps serving.

use std::time::Instant;

use bytes::Bytes;
use router::{PushOutcome, Router};
use session::auth::MAX_ID_LEN;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// A validated push request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// Recipient users.
    pub to: Vec<String>,
    /// Recipient rooms.
    pub rooms: Vec<String>,
    /// Sender named in the delivered message.
    pub from: String,
    /// The `data` value, serialized.
    pub data: Bytes,
}

/// Sender named when a push does not say.
pub const DEFAULT_FROM: &str = "server";

/// Why a body was refused (400).
pub type BadRequest = &'static str;

fn ids(v: Option<&BorrowedValue<'_>>, what: BadRequest) -> Result<Vec<String>, BadRequest> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    if v.is_null() {
        return Ok(Vec::new());
    }
    let list = v.as_array().ok_or(what)?;
    list.iter()
        .map(|x| match x.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => Ok(s.to_owned()),
            _ => Err(what),
        })
        .collect()
}

/// Parses a `/v1/push` body.
pub fn parse_push(body: &[u8]) -> Result<PushRequest, BadRequest> {
    let mut buf = body.to_vec();
    let value = simd_json::to_borrowed_value(&mut buf).map_err(|_| "body is not valid JSON")?;
    let obj = value.as_object().ok_or("body must be a JSON object")?;
    let to = ids(
        obj.get("to"),
        "\"to\" must be an array of non-empty user ID strings",
    )?;
    let rooms = ids(
        obj.get("rooms"),
        "\"rooms\" must be an array of non-empty room ID strings",
    )?;
    if to.is_empty() && rooms.is_empty() {
        return Err("name at least one recipient in \"to\" or \"rooms\"");
    }
    let from = match obj.get("from") {
        None => DEFAULT_FROM.to_owned(),
        Some(f) => match f.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => s.to_owned(),
            _ => return Err("\"from\" must be a non-empty string"),
        },
    };
    let data = obj.get("data").ok_or("missing \"data\"")?;
    Ok(PushRequest {
        to,
        rooms,
        from,
        data: Bytes::from(data.encode()),
    })
}

/// Parses a `/v1/broadcast` body: `{"data": ..., "from": optional}`.
pub fn parse_broadcast(body: &[u8]) -> Result<(String, Bytes), BadRequest> {
    let mut buf = body.to_vec();
    let value = simd_json::to_borrowed_value(&mut buf).map_err(|_| "body is not valid JSON")?;
    let obj = value.as_object().ok_or("body must be a JSON object")?;
    let from = match obj.get("from") {
        None => DEFAULT_FROM.to_owned(),
        Some(f) => f
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
            .ok_or("\"from\" must be a non-empty string")?
            .to_owned(),
    };
    let data = obj.get("data").ok_or("missing \"data\"")?;
    Ok((from, Bytes::from(data.encode())))
}

/// Carries out a push.
pub fn push(router: &Router, req: &PushRequest, received: Instant) -> PushOutcome {
    let body = Router::msg_body(&req.from, &req.data);
    router.push(&req.to, &req.rooms, body, received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_bodies() {
        let p =
            parse_push(br#"{"to":["u1","u2"],"rooms":["r1"],"from":"svc","data":{"a":[1,"x"]}}"#)
                .unwrap();
        assert_eq!((p.to.len(), p.rooms.len(), p.from.as_str()), (2, 1, "svc"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&p.data).unwrap(),
            serde_json::json!({"a": [1, "x"]})
        );
        let p = parse_push(br#"{"rooms":["r"],"data":null}"#).unwrap();
        assert_eq!((p.from.as_str(), &p.data[..]), (DEFAULT_FROM, &b"null"[..]));
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
        ] {
            assert!(parse_push(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn broadcast_bodies() {
        assert_eq!(
            parse_broadcast(br#"{"data":"hi"}"#).unwrap().1,
            Bytes::from_static(b"\"hi\"")
        );
        assert!(parse_broadcast(br#"{"nodata":1}"#).is_err());
        assert!(parse_broadcast(b"nope").is_err());
    }
}
