//! `POST /v1/batch`: many pushes in one request (docs/API.md, "Batch push"), each with
//! its own recipients, `data` and `id`, answered with one result per push, in order.
//!
//! Two forms of body: a JSON array of push objects (`application/json`), answered with
//! `{"ok":true,"failed":N,"results":[...]}`; or NDJSON (`application/x-ndjson`), one push
//! object per line, answered with a chunked NDJSON body, one result line per push with
//! its index `i`. A push that is wrong gets its own error; the others are delivered.
//!
//! The point is cost: one request parse and one answer for many deliveries, where
//! `/v1/push` pays a request per message. On a clustered node with history each push
//! waits for JetStream: the request is parked once and answered when the last push of
//! the batch completes, neither the reactor nor the bus thread ever waiting.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use reactor::{Completion, Parking};
use serde::de::{DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::api;
use super::http::{chunk, chunked_head, error_body, json_error, response, Request, LAST_CHUNK};
pub(super) use super::routes::BATCH_PATH as PATH;
use super::routes::{deferred_answer, ApiStats, ControlState, API_STATUSES, PUSH_PARK};

/// Index of `/v1/batch` in the request counters' endpoints.
const ENDPOINT: usize = 2;
/// The limits a whole batch may break, for the counters.
pub const BATCH_LIMITS: [&str; 2] = ["items", "bytes"];
/// The NDJSON media type.
pub(super) const NDJSON: &str = "application/x-ndjson";
/// Answer bytes per chunk of an NDJSON answer (whole lines).
const CHUNK_BYTES: usize = 64 * 1024;

/// Bounds of `/v1/batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most pushes in one request (413 past it).
    pub max_items: usize,
    /// Largest request body (413 past it, before it is read).
    pub max_bytes: usize,
}

/// One push's result: its status and its JSON object (what `/v1/push` would answer).
type Outcome = (u16, Vec<u8>);

/// Serves `POST /v1/batch`: the answer, or `None` when it was parked.
pub(super) fn serve(
    state: &ControlState,
    req: &Request,
    parking: &mut Parking<'_>,
) -> Option<Vec<u8>> {
    let keep = req.keep_alive;
    let stats = &state.api_stats;
    let refuse = |status: u16, msg: &str| {
        stats.count(ENDPOINT, status);
        Some(json_error(status, msg, keep))
    };
    if req.method != "POST" {
        return refuse(405, "method not allowed");
    }
    if !state.authorized(req) {
        return refuse(401, "missing or wrong API key");
    }
    let ndjson = req.head.header("content-type").is_some_and(is_ndjson);
    let items = match split(&req.body, ndjson, state.batch_limits.max_items) {
        Ok(items) => items,
        Err(Refusal::TooMany) => {
            stats.batch_refused[0].add(1);
            return refuse(413, "too many pushes in one batch (see --batch-max-items)");
        }
        Err(Refusal::Bad(e)) => return refuse(400, e),
    };
    let received = Instant::now();
    let max_item = state.max_body_bytes;
    let parsed: Vec<Result<api::PushRequest<'_>, Outcome>> = items
        .iter()
        .map(|raw| {
            if raw.len() > max_item {
                return Err((413, error_body("push larger than --max-body-bytes")));
            }
            api::parse_push(raw).map_err(|e| (400, error_body(e)))
        })
        .collect();
    if !state.router.push_is_deferred() {
        let outcomes: Vec<Outcome> = parsed
            .into_iter()
            .map(|p| match p {
                Ok(p) => match state.push_now(&p, received) {
                    (status, Ok(body)) => (status, body.to_vec()),
                    (status, Err(e)) => (status, error_body(e)),
                },
                Err(o) => o,
            })
            .collect();
        stats.count(ENDPOINT, 200);
        return Some(answer(stats, &outcomes, ndjson, keep));
    }
    let Some(completion) = parking.park(PUSH_PARK, keep) else {
        return refuse(503, "cannot wait for the history store here");
    };
    let gather = Arc::new(Gather {
        stats: Arc::clone(stats),
        ndjson,
        keep,
        left: Mutex::new(Left {
            outcomes: vec![None; parsed.len()],
            // One for this thread, until every push was started: a push answered at
            // once must not complete the batch before the next one is started.
            pending: parsed.len() + 1,
            completion: Some(completion),
        }),
    });
    for (i, p) in parsed.into_iter().enumerate() {
        match p {
            Ok(p) => {
                let g = Arc::clone(&gather);
                api::push_then(
                    &state.router,
                    &p,
                    received,
                    Box::new(move |d| {
                        let o = deferred_answer(&g.stats, &d);
                        g.done(i, o);
                    }),
                );
            }
            Err(o) => gather.done(i, o),
        }
    }
    gather.started();
    None
}

/// Why a batch is refused whole.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// More than the item limit (413).
    TooMany,
    /// Not a batch at all (400).
    Bad(&'static str),
}

fn is_ndjson(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    media.eq_ignore_ascii_case(NDJSON.as_bytes())
}

/// The raw pushes of a body, at most `max`.
fn split(body: &[u8], ndjson: bool, max: usize) -> Result<Vec<&[u8]>, Refusal> {
    let items: Vec<&[u8]> = if ndjson {
        let mut items = Vec::new();
        for line in body.split(|&b| b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            if items.len() == max {
                return Err(Refusal::TooMany);
            }
            items.push(line);
        }
        items
    } else {
        let text = std::str::from_utf8(body).map_err(|_| Refusal::Bad("body is not valid JSON"))?;
        let mut over = false;
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = Items {
            max,
            over: &mut over,
        }
        .deserialize(&mut de)
        .and_then(|items| de.end().map(|()| items));
        match parsed {
            Ok(items) => items.into_iter().map(|r| r.get().as_bytes()).collect(),
            Err(_) if over => return Err(Refusal::TooMany),
            Err(_) => {
                return Err(Refusal::Bad(
                    match serde_json::from_str::<&RawValue>(text) {
                        Ok(_) => "body must be a JSON array of push objects",
                        Err(_) => "body is not valid JSON",
                    },
                ))
            }
        }
    };
    if items.is_empty() {
        return Err(Refusal::Bad("name at least one push"));
    }
    Ok(items)
}

/// A JSON array of raw values, refused past `max` elements before more are read.
struct Items<'o> {
    max: usize,
    over: &'o mut bool,
}

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of push objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if out.len() == self.max {
                *self.over = true;
                return Err(A::Error::custom("too many pushes"));
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// The pushes of a parked batch still to complete.
struct Gather {
    stats: Arc<ApiStats>,
    ndjson: bool,
    keep: bool,
    left: Mutex<Left>,
}

struct Left {
    outcomes: Vec<Option<Outcome>>,
    pending: usize,
    completion: Option<Completion>,
}

impl Gather {
    /// Push `i` completed (on the bus thread, or here).
    fn done(&self, i: usize, o: Outcome) {
        let mut l = self.left.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = l.outcomes.get_mut(i) {
            *slot = Some(o);
        }
        self.one_less(l);
    }

    /// Every push was started.
    fn started(&self) {
        let l = self.left.lock().unwrap_or_else(|e| e.into_inner());
        self.one_less(l);
    }

    fn one_less(&self, mut l: std::sync::MutexGuard<'_, Left>) {
        l.pending = l.pending.saturating_sub(1);
        if l.pending > 0 {
            return;
        }
        let Some(completion) = l.completion.take() else {
            return;
        };
        let outcomes: Vec<Outcome> = std::mem::take(&mut l.outcomes)
            .into_iter()
            .map(|o| o.unwrap_or_else(|| (503, error_body("not carried out; retry"))))
            .collect();
        drop(l);
        self.stats.count(ENDPOINT, 200);
        completion.complete(answer(&self.stats, &outcomes, self.ndjson, self.keep));
    }
}

/// The whole answer: every push's result, counted.
fn answer(stats: &ApiStats, outcomes: &[Outcome], ndjson: bool, keep: bool) -> Vec<u8> {
    for (status, _) in outcomes {
        if let Some(i) = API_STATUSES.iter().position(|s| s == status) {
            stats.batch_items[i].add(1);
        }
    }
    if ndjson {
        ndjson_answer(outcomes, keep)
    } else {
        response(200, "application/json", &json_answer(outcomes), keep)
    }
}

/// `{"status":S,` followed by the rest of a push's own answer object.
fn item(out: &mut Vec<u8>, status: u16, body: &[u8]) {
    out.extend_from_slice(format!("{{\"status\":{status}").as_bytes());
    match body.get(1..) {
        Some(rest) if rest.len() > 1 => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        _ => out.push(b'}'),
    }
}

/// `{"ok":true,"failed":N,"results":[...]}`.
fn json_answer(outcomes: &[Outcome]) -> Vec<u8> {
    let failed = outcomes.iter().filter(|(s, _)| *s != 200).count();
    let size: usize = outcomes.iter().map(|(_, b)| b.len() + 16).sum();
    let mut out = Vec::with_capacity(48 + size);
    out.extend_from_slice(format!("{{\"ok\":true,\"failed\":{failed},\"results\":[").as_bytes());
    for (i, (status, body)) in outcomes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(&mut out, *status, body);
    }
    out.extend_from_slice(b"]}");
    out
}

/// A chunked NDJSON answer: `{"i":N,"status":S,...}` per push, in order.
fn ndjson_answer(outcomes: &[Outcome], keep: bool) -> Vec<u8> {
    let mut out = chunked_head(NDJSON, keep);
    let mut lines = Vec::with_capacity(CHUNK_BYTES + 1024);
    for (i, (status, body)) in outcomes.iter().enumerate() {
        lines.extend_from_slice(format!("{{\"i\":{i},").as_bytes());
        let at = lines.len();
        item(&mut lines, *status, body);
        // `item` starts with `{`: this line's object already has one.
        lines.remove(at);
        lines.push(b'\n');
        if lines.len() >= CHUNK_BYTES {
            chunk(&mut out, &lines);
            lines.clear();
        }
    }
    chunk(&mut out, &lines);
    out.extend_from_slice(LAST_CHUNK);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_pushes() {
        let items = split(br#"[{"a":1}, {"b":[1,2]} ,3]"#, false, 3).unwrap();
        assert_eq!(items, [&br#"{"a":1}"#[..], br#"{"b":[1,2]}"#, b"3"]);
        assert_eq!(split(b"[1,2,3]", false, 2), Err(Refusal::TooMany));
        for bad in [&b"{}"[..], b"[", b"[1] x", b"\xff", b"[]", b""] {
            assert!(
                matches!(split(bad, false, 10), Err(Refusal::Bad(_))),
                "{bad:?}"
            );
        }
        let items = split(b"{\"a\":1}\r\n\n  \n{\"b\":2}", true, 2).unwrap();
        assert_eq!(items, [&b"{\"a\":1}"[..], b"{\"b\":2}"]);
        assert_eq!(split(b"1\n2\n3\n", true, 2), Err(Refusal::TooMany));
        assert!(matches!(split(b"\n\n", true, 2), Err(Refusal::Bad(_))));
    }

    #[test]
    fn media_types() {
        assert!(is_ndjson(b"application/x-ndjson"));
        assert!(is_ndjson(b"Application/X-NDJSON; charset=utf-8"));
        assert!(!is_ndjson(b"application/json"));
    }

    #[test]
    fn answers_are_json_with_one_result_per_push() {
        let outcomes = vec![
            (
                200,
                br#"{"ok":true,"id":"m1","seq":{"u":1},"offline":[]}"#.to_vec(),
            ),
            (400, error_body("missing \"data\"")),
            (200, br#"{"ok":true}"#.to_vec()),
        ];
        let a = json_answer(&outcomes);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["failed"], 1);
        assert_eq!(v["results"][0]["status"], 200);
        assert_eq!(v["results"][0]["seq"]["u"], 1);
        assert_eq!(v["results"][1]["error"], "missing \"data\"");
        assert_eq!(v["results"][2]["ok"], true);
        let a = ndjson_answer(&outcomes, true);
        let text = String::from_utf8(a).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        let (len, rest) = body.split_once("\r\n").unwrap();
        let len = usize::from_str_radix(len, 16).unwrap();
        assert!(rest[len..].starts_with("\r\n0\r\n\r\n"));
        let lines: Vec<serde_json::Value> = rest[..len]
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            (lines[1]["i"].as_u64(), lines[1]["status"].as_u64()),
            (Some(1), Some(400))
        );
        assert_eq!(lines[2]["ok"], true);
    }
}
