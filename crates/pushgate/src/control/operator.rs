//! The operator routes (docs/API.md):
//!
//! - `GET /v1/presence?uid=u1&uid=u2`: every connection of those users in the cluster,
//!   this node's from its registry and the others' over the bus, waiting for them at most
//!   `presence_timeout`; nodes that did not answer in time are named in `"partial"`.
//! - `POST /v1/disconnect {"uid":..,"device":..,"code":..,"reason":..}`: closes those
//!   connections here and asks every other node to, without waiting for them.
//!
//! A presence query does not hold the reactor that serves it: the request is parked and
//! answered once every live node answered or `presence_timeout` (default 80 ms) passed,
//! the reactor serving everything else meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use router::bus::stats::Counter;
use router::bus::{BusError, Disconnect, PresenceEntry};
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
}

/// Counters of the operator routes.
#[derive(Debug, Default)]
pub struct OperatorStats {
    /// Presence queries by [`PRESENCE_RESULTS`].
    pub presence: [Counter; 4],
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
