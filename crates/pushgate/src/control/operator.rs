//! The operator routes (docs/API.md):
//!
//! - `GET /v1/presence?uid=u1&uid=u2`: every connection of those users in the cluster,
//!   this node's from its registry and the others' over the bus, waiting for them at most
//!   `presence_timeout`; nodes that did not answer in time are named in `"partial"`.
//! - `GET /v1/rooms/presence?room=r&limit=n&count_only=1`: how many connections a room
//!   has in the cluster and (up to `limit`) whose they are, gathered like presence;
//!   each node's count comes from its registry, its listing from its reactors
//!   ([`router::room_presence`]).
//! - `POST /v1/disconnect {"uid":..,"device":..,"code":..,"reason":..}`: closes those
//!   connections here and asks every other node to, without waiting for them.
//!
//! A presence query does not hold the reactor that serves it: the request is parked and
//! answered once every live node answered or `presence_timeout` (default 80 ms) passed,
//! the reactor serving everything else meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use router::bus::stats::Counter;
use router::bus::{BusError, ClusterPresence, Disconnect, PresenceEntry};
use router::room_presence::{sort_members, RoomListing, RoomMember};
use router::Router;
use session::auth::MAX_ID_LEN;

/// Results of presence queries, for the counters.
pub const PRESENCE_RESULTS: [&str; 4] = ["complete", "partial", "bad_request", "unavailable"];
/// Results of disconnect requests, for the counters.
pub const DISCONNECT_RESULTS: [&str; 3] = ["ok", "bad_request", "unavailable"];

/// Bounds of the operator routes.
#[derive(Debug, Clone, Copy)]
pub struct OperatorLimits {
    /// How long a presence query waits for the other nodes.
    pub presence_timeout: Duration,
    /// Most users one presence query may name.
    pub presence_max_uids: usize,
    /// Most members one room presence query may list.
    pub room_presence_max_limit: usize,
}

/// Counters of the operator routes.
#[derive(Debug, Default)]
pub struct OperatorStats {
    /// Presence queries by [`PRESENCE_RESULTS`].
    pub presence: [Counter; 4],
    /// Room presence queries by [`PRESENCE_RESULTS`].
    pub room_presence: [Counter; 4],
    /// Disconnect requests by [`DISCONNECT_RESULTS`].
    pub disconnects: [Counter; 3],
}

/// An answer: status and body, or status and error message.
pub type Answer = (u16, Result<Vec<u8>, &'static str>);

/// `GET /v1/presence` with `query` (the part after `?`): `done` is told the answer,
/// at once or once the other nodes answered (on the bus thread).
pub fn presence_then(
    router: &Arc<Router>,
    node: &str,
    limits: &OperatorLimits,
    stats: &Arc<OperatorStats>,
    query: &str,
    done: Box<dyn FnOnce(Answer) + Send>,
) {
    let uids = match presence_uids(query, limits.presence_max_uids) {
        Ok(uids) => uids,
        Err(e) => {
            stats.presence[2].add(1);
            return done((400, Err(e)));
        }
    };
    let deadline = Instant::now() + limits.presence_timeout;
    let (r, s, node) = (Arc::clone(router), Arc::clone(stats), node.to_owned());
    let asked = uids.clone();
    router.bus().presence(
        &asked,
        deadline,
        Box::new(move |remote| {
            let remote = match remote {
                Ok(remote) => remote,
                Err(e) => {
                    s.presence[3].add(1);
                    return done((503, Err(bus_error(e))));
                }
            };
            s.presence[usize::from(!remote.partial.is_empty())].add(1);
            // Local entries after the wait: a connection that closed meanwhile is not
            // listed.
            let users: Vec<(String, Vec<PresenceEntry>)> = uids
                .into_iter()
                .zip(remote.users)
                .map(|(uid, theirs)| {
                    let mut all = r.presence_local(&uid, &node);
                    all.extend(theirs);
                    (uid, all)
                })
                .collect();
            done((
                200,
                Ok(presence_answer(&users, &remote.partial, remote.truncated)),
            ))
        }),
    );
}

/// Members a room presence query lists when it names no `limit`.
pub const ROOM_PRESENCE_DEFAULT_LIMIT: usize = 100;

/// A room presence query's arguments.
#[derive(Debug, PartialEq, Eq)]
struct RoomQuery {
    room: String,
    /// Members to list (0: count only).
    limit: usize,
}

fn room_query(query: &str, max: usize) -> Result<RoomQuery, &'static str> {
    let mut room = None;
    let mut limit = None;
    let mut count_only = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "room" if room.is_some() => return Err("name one room: ?room=..."),
            "room" if value.is_empty() || value.len() > MAX_ID_LEN => {
                return Err("room must be 1 to 256 bytes")
            }
            "room" => room = Some(value.into_owned()),
            "limit" => match value.parse::<usize>() {
                Ok(n) if n <= max => limit = Some(n),
                Ok(_) => return Err("limit is past --room-presence-max-limit"),
                Err(_) => return Err("limit must be a non-negative integer"),
            },
            "count_only" => match &*value {
                "1" | "true" => count_only = true,
                "0" | "false" => count_only = false,
                _ => return Err("count_only must be 1 or 0"),
            },
            _ => {}
        }
    }
    let room = room.ok_or("name the room: ?room=...")?;
    let limit = if count_only {
        0
    } else {
        limit.unwrap_or(ROOM_PRESENCE_DEFAULT_LIMIT.min(max))
    };
    Ok(RoomQuery { room, limit })
}

/// `GET /v1/rooms/presence` with `query`: `done` is told the answer once this node's
/// reactors and the other nodes answered (or the others' time ran out), on whichever
/// thread finished last. Nothing waits: both halves are callbacks.
pub fn room_presence_then(
    router: &Arc<Router>,
    node: &str,
    limits: &OperatorLimits,
    stats: &Arc<OperatorStats>,
    query: &str,
    done: Box<dyn FnOnce(Answer) + Send>,
) {
    let q = match room_query(query, limits.room_presence_max_limit) {
        Ok(q) => q,
        Err(e) => {
            stats.room_presence[2].add(1);
            return done((400, Err(e)));
        }
    };
    let deadline = Instant::now() + limits.presence_timeout;
    let join = Arc::new(std::sync::Mutex::new(RoomJoin {
        local: None,
        remote: None,
        done: Some(done),
        room: q.room.clone(),
        limit: q.limit,
        stats: Arc::clone(stats),
    }));
    let j = Arc::clone(&join);
    router.room_presence_local(
        &q.room,
        node,
        q.limit,
        Box::new(move |listing| RoomJoin::local(&j, listing)),
    );
    router.bus().room_presence(
        &q.room,
        q.limit,
        deadline,
        Box::new(move |remote| RoomJoin::remote(&join, remote)),
    );
}

/// The two halves of a room presence answer, whichever comes first.
struct RoomJoin {
    local: Option<RoomListing>,
    remote: Option<Result<ClusterPresence, BusError>>,
    done: Option<Box<dyn FnOnce(Answer) + Send>>,
    room: String,
    limit: usize,
    stats: Arc<OperatorStats>,
}

impl RoomJoin {
    fn local(this: &std::sync::Mutex<Self>, listing: RoomListing) {
        let mut j = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        j.local = Some(listing);
        j.try_finish();
    }

    fn remote(this: &std::sync::Mutex<Self>, remote: Result<ClusterPresence, BusError>) {
        let mut j = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        j.remote = Some(remote);
        j.try_finish();
    }

    fn try_finish(&mut self) {
        if self.local.is_none() || self.remote.is_none() {
            return;
        }
        let (Some(local), Some(remote), Some(done)) =
            (self.local.take(), self.remote.take(), self.done.take())
        else {
            return;
        };
        let remote = match remote {
            Ok(r) => r,
            Err(e) => {
                self.stats.room_presence[3].add(1);
                return done((503, Err(bus_error(e))));
            }
        };
        self.stats.room_presence[usize::from(!remote.partial.is_empty())].add(1);
        let connections = local.connections + remote.connections;
        let mut members = local.members;
        members.extend(remote.members);
        sort_members(&mut members);
        members.truncate(self.limit);
        done((
            200,
            Ok(room_answer(
                &self.room,
                connections,
                &members,
                self.limit == 0,
                &remote.partial,
            )),
        ))
    }
}

/// `{"ok":true,"room":..,"connections":n,"users":n?,"members":[..]?,"more":b?,
/// "partial":[..]?}`: `users` (distinct users) only when every connection is listed;
/// `members` and `more` not for a count-only query.
fn room_answer(
    room: &str,
    connections: usize,
    members: &[RoomMember],
    count_only: bool,
    partial: &[String],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + 96 * members.len());
    out.extend_from_slice(b"{\"ok\":true,\"room\":");
    let _ = serde_json::to_writer(&mut out, room);
    out.extend_from_slice(format!(",\"connections\":{connections}").as_bytes());
    if !count_only {
        // Fewer listed than counted: cut at the limit or a node's byte bound, or a
        // member closed while being listed.
        let more = members.len() < connections;
        if !more {
            let mut uids: Vec<&str> = members.iter().map(|m| m.uid.as_str()).collect();
            uids.dedup();
            out.extend_from_slice(format!(",\"users\":{}", uids.len()).as_bytes());
        }
        out.extend_from_slice(b",\"members\":");
        let _ = serde_json::to_writer(&mut out, members);
        out.extend_from_slice(format!(",\"more\":{more}").as_bytes());
    }
    if !partial.is_empty() {
        out.extend_from_slice(b",\"partial\":");
        let _ = serde_json::to_writer(&mut out, partial);
    }
    out.push(b'}');
    out
}

/// The distinct `uid` parameters of a query, in order.
fn presence_uids(query: &str, max: usize) -> Result<Vec<String>, &'static str> {
    let mut uids: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "uid" {
            continue;
        }
        if value.is_empty() || value.len() > MAX_ID_LEN {
            return Err("each uid must be 1 to 256 bytes");
        }
        if uids.iter().any(|u| *u == value) {
            continue;
        }
        if uids.len() == max {
            return Err("too many uids in one query (see --presence-max-uids)");
        }
        uids.push(value.into_owned());
    }
    if uids.is_empty() {
        return Err("name at least one user: ?uid=...");
    }
    Ok(uids)
}

/// `{"ok":true,"users":{...}}`, with `"partial"` and `"truncated"` when they apply.
fn presence_answer(
    users: &[(String, Vec<PresenceEntry>)],
    partial: &[String],
    truncated: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 96 * users.len());
    out.extend_from_slice(b"{\"ok\":true,\"users\":{");
    for (i, (uid, entries)) in users.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing JSON into memory cannot fail.
        let _ = serde_json::to_writer(&mut out, uid);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, entries);
    }
    out.push(b'}');
    if !partial.is_empty() {
        out.extend_from_slice(b",\"partial\":");
        let _ = serde_json::to_writer(&mut out, partial);
    }
    if truncated {
        out.extend_from_slice(b",\"truncated\":true");
    }
    out.push(b'}');
    out
}

/// `POST /v1/disconnect` with `body`.
pub fn disconnect(router: &Router, stats: &OperatorStats, body: &[u8]) -> Answer {
    let req = match parse_disconnect(body) {
        Ok(r) => r,
        Err(e) => {
            stats.disconnects[1].add(1);
            return (400, Err(e));
        }
    };
    let closed = router.disconnect_local(&req);
    match router.bus().disconnect(&req) {
        Ok(()) => {
            let nodes = router.bus().live_nodes();
            stats.disconnects[0].add(1);
            let mut out = format!("{{\"ok\":true,\"closed\":{closed},\"nodes\":").into_bytes();
            let _ = serde_json::to_writer(&mut out, &nodes);
            out.push(b'}');
            (200, Ok(out))
        }
        Err(_) => {
            stats.disconnects[2].add(1);
            (
                503,
                Err("cluster bus disconnected: closed on this node only"),
            )
        }
    }
}

fn parse_disconnect(body: &[u8]) -> Result<Disconnect, &'static str> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "body is not valid JSON")?;
    if !v.is_object() {
        return Err("body must be a JSON object");
    }
    let mut req: Disconnect = serde_json::from_value(v).map_err(|_| {
        "expected {\"uid\":string,\"code\":number,\"device\":string?,\"reason\":string?}"
    })?;
    req.check()?;
    // Nodes set `before` among themselves; the API closes every matching connection.
    req.before = None;
    Ok(req)
}

fn bus_error(e: BusError) -> &'static str {
    match e {
        BusError::Disconnected => "cluster bus disconnected",
        BusError::QueueFull => "cluster bus queue full; retry later",
        BusError::TooLarge => "query too large for the cluster bus",
        BusError::History => "history store not confirmed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_queries() {
        assert_eq!(
            presence_uids("uid=a&x=1&uid=b%20c&uid=a", 10).unwrap(),
            ["a", "b c"]
        );
        assert!(presence_uids("", 10).is_err());
        assert!(presence_uids("uid=", 10).is_err());
        assert!(presence_uids(&format!("uid={}", "x".repeat(257)), 10).is_err());
        assert!(presence_uids("uid=a&uid=b&uid=c", 2).is_err());
        assert!(presence_uids("uid=a&uid=b&uid=a", 2).is_ok());
    }

    #[test]
    fn presence_answers_are_json() {
        let e = PresenceEntry {
            node: "n\"1".into(),
            conn: "0.1.1".into(),
            device: "d".into(),
        };
        let a = presence_answer(
            &[("u1".into(), vec![e]), ("u2".into(), vec![])],
            &["n3".into()],
            true,
        );
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["users"]["u1"][0]["node"], "n\"1");
        assert_eq!(v["users"]["u2"], serde_json::json!([]));
        assert_eq!(v["partial"], serde_json::json!(["n3"]));
        assert_eq!(v["truncated"], true);
        let a = presence_answer(&[("u".into(), vec![])], &[], false);
        assert_eq!(a, br#"{"ok":true,"users":{"u":[]}}"#);
    }

    #[test]
    fn room_queries() {
        let q = |s| room_query(s, 50);
        assert_eq!(
            q("room=a%20b&x=1").unwrap(),
            RoomQuery {
                room: "a b".into(),
                limit: 50
            }
        );
        assert_eq!(q("room=r&limit=3").unwrap().limit, 3);
        assert_eq!(q("room=r&limit=0").unwrap().limit, 0);
        assert_eq!(q("room=r&limit=9&count_only=1").unwrap().limit, 0);
        assert_eq!(room_query("room=r", 500).unwrap().limit, 100);
        for bad in [
            "",
            "room=",
            "limit=3",
            "room=a&room=b",
            "room=r&limit=51",
            "room=r&limit=-1",
            "room=r&limit=x",
            "room=r&count_only=yes",
        ] {
            assert!(q(bad).is_err(), "{bad}");
        }
        assert!(q(&format!("room={}", "x".repeat(257))).is_err());
    }

    #[test]
    fn room_answers_are_json() {
        let m = |uid: &str| RoomMember {
            uid: uid.into(),
            device: "default".into(),
            node: "n1".into(),
            conn: "0.1.1".into(),
        };
        let a = room_answer("r\"", 3, &[m("a"), m("a"), m("b")], false, &[]);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["room"], "r\"");
        assert_eq!(
            (v["connections"].as_u64(), v["users"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(v["members"][2]["uid"], "b");
        assert_eq!(v["more"], false);
        assert!(v.get("partial").is_none());
        let a = room_answer("r", 5, &[m("a")], false, &["n2".into()]);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert!(v.get("users").is_none(), "not every connection listed");
        assert_eq!(
            (v["more"].as_bool(), v["partial"][0].as_str()),
            (Some(true), Some("n2"))
        );
        let a = room_answer("r", 5, &[], true, &[]);
        assert_eq!(a, br#"{"ok":true,"room":"r","connections":5}"#);
    }

    #[test]
    fn disconnect_bodies() {
        let d =
            parse_disconnect(br#"{"uid":"u1","device":"d","code":4001,"reason":"bye"}"#).unwrap();
        assert_eq!(
            (d.uid.as_str(), d.device.as_deref(), d.code),
            ("u1", Some("d"), 4001)
        );
        assert!(parse_disconnect(br#"{"uid":"u1","code":1008}"#).is_ok());
        for bad in [
            &b"nope"[..],
            b"[]",
            br#"{"uid":"u1"}"#,
            br#"{"uid":"u1","code":1000}"#,
            br#"{"uid":"u1","code":5000}"#,
            br#"{"uid":"u1","code":70000}"#,
            br#"{"uid":"u1","code":"4001"}"#,
            br#"{"uid":"","code":4001}"#,
            br#"{"uid":"u1","code":4001,"device":""}"#,
        ] {
            assert!(
                parse_disconnect(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"uid":"u","code":4001,"reason":"{}"}}"#,
            "x".repeat(124)
        );
        assert!(parse_disconnect(long.as_bytes()).is_err());
    }
}
