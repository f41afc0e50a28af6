//! `POST /v1/rooms/join` and `POST /v1/rooms/leave` (docs/API.md): the backend puts
//! every current connection of a user (of one device) into a room, or takes them out, on
//! every node.
//!
//! The change goes to the other nodes over the bus without waiting for them, and to this
//! node's connections through their reactors' inboxes: the request is parked until those
//! reactors applied it, so the answer counts what this node's connections did (joined,
//! already in, refused past the per-connection room limit), while the reactor serving it
//! goes on with everything else.

use std::sync::Arc;
use std::time::Duration;

use reactor::Parking;
use router::bus::BusError;
use router::rooms::{RoomChange, RoomCounts, RoomOp, RoomTally};
use router::Router;

use super::http::{json_error, response};

/// How long a room change may be parked for this node's reactors (they answer within a
/// loop turn; this only bounds a reactor that stopped).
const ROOMS_PARK: Duration = Duration::from_secs(5);

/// Serves an authorized `POST` to a room path: `None` when parked (the completion
/// answers), else the response.
pub fn change(
    router: &Arc<Router>,
    op: RoomOp,
    body: &[u8],
    keep_alive: bool,
    parking: &mut Parking<'_>,
) -> Option<Vec<u8>> {
    let stats = Arc::clone(router.room_stats());
    let req = match parse(op, body) {
        Ok(r) => r,
        Err(e) => {
            stats.requests[1].add(1);
            return Some(json_error(400, e, keep_alive));
        }
    };
    let Some(completion) = parking.park(ROOMS_PARK, keep_alive) else {
        stats.requests[2].add(1);
        return Some(json_error(
            503,
            "cannot wait for this node's reactors here",
            keep_alive,
        ));
    };
    // The other nodes first: their answer decides the status, and they apply the change
    // in the background while this node's reactors do.
    let sent = router.bus().change_rooms(&req);
    let nodes = router.bus().live_nodes();
    let tally = RoomTally::new(Some(Box::new(move |counts| {
        let answer = match sent {
            Ok(()) => {
                stats.requests[0].add(1);
                response(
                    200,
                    "application/json",
                    &answer(op, &counts, &nodes),
                    keep_alive,
                )
            }
            Err(e) => {
                stats.requests[2].add(1);
                json_error(503, bus_error(e), keep_alive)
            }
        };
        completion.complete(answer);
    })));
    router.change_rooms_local(&req, &tally);
    None
}

fn parse(op: RoomOp, body: &[u8]) -> Result<RoomChange, &'static str> {
    #[derive(serde::Deserialize)]
    struct Body {
        uid: String,
        room: String,
        #[serde(default)]
        device: Option<String>,
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "body is not valid JSON")?;
    if !v.is_object() {
        return Err("body must be a JSON object");
    }
    let b: Body = serde_json::from_value(v)
        .map_err(|_| "expected {\"uid\":string,\"room\":string,\"device\":string?}")?;
    let req = RoomChange {
        op,
        uid: b.uid,
        room: b.room,
        device: b.device,
    };
    req.check()?;
    Ok(req)
}

/// `{"ok":true,"connections":N,"joined":..,"already":..,"refused":..,"unreached":..,
/// "nodes":[...]}` for a join; `"left"` and `"not_joined"` for a leave.
fn answer(op: RoomOp, c: &RoomCounts, nodes: &[String]) -> Vec<u8> {
    let mut v = serde_json::json!({
        "ok": true,
        "connections": c.connections,
        "unreached": c.unreached,
        "nodes": nodes,
    });
    match op {
        RoomOp::Join => {
            v["joined"] = c.changed.into();
            v["already"] = c.unchanged.into();
            v["refused"] = c.refused.into();
        }
        RoomOp::Leave => {
            v["left"] = c.changed.into();
            v["not_joined"] = c.unchanged.into();
        }
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn bus_error(e: BusError) -> &'static str {
    match e {
        BusError::QueueFull => "cluster bus queue full: changed on this node only; retry later",
        _ => "cluster bus disconnected: changed on this node only",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let r = parse(RoomOp::Join, br#"{"uid":"u","room":"r","device":"d"}"#).unwrap();
        assert_eq!(
            (r.uid.as_str(), r.room.as_str(), r.device.as_deref()),
            ("u", "r", Some("d"))
        );
        for bad in [
            &b"nope"[..],
            b"[]",
            br#"{"uid":"u"}"#,
            br#"{"room":"r"}"#,
            br#"{"uid":"","room":"r"}"#,
            br#"{"uid":"u","room":""}"#,
            br#"{"uid":"u","room":7}"#,
            br#"{"uid":"u","room":"r","device":""}"#,
        ] {
            assert!(
                parse(RoomOp::Leave, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn answers_name_what_happened() {
        let c = RoomCounts {
            connections: 3,
            changed: 1,
            unchanged: 1,
            refused: 1,
            unreached: 0,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&answer(RoomOp::Join, &c, &["n2".into()])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ok":true,"connections":3,"joined":1,"already":1,"refused":1,"unreached":0,"nodes":["n2"]})
        );
        let v: serde_json::Value = serde_json::from_slice(&answer(RoomOp::Leave, &c, &[])).unwrap();
        assert_eq!(v["left"], 1);
        assert_eq!(v["not_joined"], 1);
    }
}
