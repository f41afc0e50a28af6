//! `GET /v1/history?uid=..` or `?room=..`, with `since` and `limit` (docs/API.md,
//! "History"): the retained messages of a user or a room after a seq, as their clients
//! got them (same `id`, same `seq`), oldest first.
//!
//! On a single node they are read from memory at once; on a clustered node from
//! JetStream on an opener thread, the request parked meanwhile (the reactor serves
//! everything else and the bus thread is not involved).

use std::sync::Arc;
use std::time::Duration;

use reactor::Parking;
use router::bus::Kind;
use router::{HistoryPage, HistoryReadError};
use session::auth::MAX_ID_LEN;

use super::http::{json_error, response, Request};
use super::routes::{ApiStats, ControlState};

/// Results of history reads, for the counters.
pub const HISTORY_READ_RESULTS: [&str; 4] = ["ok", "bad_request", "off", "unavailable"];
/// Messages a read returns when it names no `limit`.
const DEFAULT_LIMIT: usize = 100;
/// How long a clustered read may stay parked: past the openers' own JetStream timeout,
/// which normally answers first (503).
const READ_PARK: Duration = router::REPLAY_TIMEOUT.saturating_add(Duration::from_secs(2));

/// A read's arguments.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    kind: Kind,
    id: String,
    since: u64,
    limit: usize,
}

/// Serves `GET /v1/history`: the answer, or `None` when it was parked.
pub(super) fn serve(
    state: &ControlState,
    req: &Request,
    parking: &mut Parking<'_>,
) -> Option<Vec<u8>> {
    let keep = req.keep_alive;
    if req.method != "GET" {
        return Some(json_error(405, "method not allowed", keep));
    }
    if !state.authorized(req) {
        return Some(json_error(401, "missing or wrong API key", keep));
    }
    let stats = &state.api_stats;
    let q = match query(req.head.query().unwrap_or(""), state.history_max_limit) {
        Ok(q) => q,
        Err(e) => {
            stats.history_reads[1].add(1);
            return Some(json_error(400, e, keep));
        }
    };
    let completion = if state.router.history_is_deferred() {
        match parking.park(READ_PARK, keep) {
            Some(c) => Some(c),
            None => {
                return Some(json_error(
                    503,
                    "cannot wait for the history store here",
                    keep,
                ))
            }
        }
    } else {
        None
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let stats2 = Arc::clone(stats);
    let (kind, id) = (q.kind, q.id.clone());
    state.router.history_then(
        q.kind,
        &q.id,
        q.since,
        q.limit,
        Box::new(move |page| {
            let answer = answer(&stats2, kind, &id, q.since, page, keep);
            match completion {
                Some(c) => c.complete(answer),
                None => {
                    let _ = tx.send(answer);
                }
            }
        }),
    );
    // Not deferred: answered before `history_then` returned.
    rx.try_recv().ok()
}

fn query(query: &str, max_limit: usize) -> Result<Query, &'static str> {
    let (mut who, mut since, mut limit) = (None, 0, DEFAULT_LIMIT.min(max_limit));
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "uid" | "room" => {
                if who.is_some() {
                    return Err("name one user (uid) or one room (room)");
                }
                if value.is_empty() || value.len() > MAX_ID_LEN {
                    return Err("uid and room must be 1 to 256 bytes");
                }
                let kind = if key == "uid" { Kind::User } else { Kind::Room };
                who = Some((kind, value.into_owned()));
            }
            "since" => {
                since = value
                    .parse()
                    .map_err(|_| "since must be a seq: a whole number")?;
            }
            "limit" => {
                limit = match value.parse::<usize>() {
                    Ok(n) if (1..=max_limit).contains(&n) => n,
                    _ => return Err("limit must be between 1 and --history-read-max"),
                };
            }
            _ => {}
        }
    }
    let (kind, id) = who.ok_or("name a user (?uid=...) or a room (?room=...)")?;
    Ok(Query {
        kind,
        id,
        since,
        limit,
    })
}

fn answer(
    stats: &ApiStats,
    kind: Kind,
    id: &str,
    since: u64,
    page: Result<HistoryPage, HistoryReadError>,
    keep: bool,
) -> Vec<u8> {
    let page = match page {
        Ok(page) => page,
        Err(HistoryReadError::Off) => {
            stats.history_reads[2].add(1);
            return json_error(404, "this node keeps no history (--history-size 0)", keep);
        }
        Err(HistoryReadError::Unavailable) => {
            stats.history_reads[3].add(1);
            return json_error(503, "history store unavailable; retry", keep);
        }
    };
    stats.history_reads[0].add(1);
    let last = page
        .messages
        .last()
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(m).ok())
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or(since);
    let size: usize = page.messages.iter().map(|m| m.len() + 1).sum();
    let mut out = Vec::with_capacity(128 + id.len() + size);
    out.extend_from_slice(match kind {
        Kind::User => b"{\"ok\":true,\"uid\":",
        Kind::Room => b"{\"ok\":true,\"room\":",
    });
    // Writing JSON into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, id);
    out.extend_from_slice(b",\"messages\":[");
    for (i, m) in page.messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.extend_from_slice(
        format!(
            "],\"last\":{last},\"more\":{},\"complete\":{}}}",
            page.more, page.complete
        )
        .as_bytes(),
    );
    response(200, "application/json", &out, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = query("uid=a%20b&since=7&limit=3", 10).unwrap();
        assert_eq!(
            q,
            Query {
                kind: Kind::User,
                id: "a b".into(),
                since: 7,
                limit: 3
            }
        );
        let q = query("room=r", 50).unwrap();
        assert_eq!((q.kind, q.since, q.limit), (Kind::Room, 0, 50));
        for bad in [
            "",
            "since=1",
            "uid=",
            "uid=a&room=b",
            "uid=a&uid=b",
            "uid=a&since=-1",
            "uid=a&since=x",
            "uid=a&limit=0",
            "uid=a&limit=11",
        ] {
            assert!(query(bad, 10).is_err(), "{bad}");
        }
    }
}
