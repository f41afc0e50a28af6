//! Server-side room membership: `POST /v1/rooms/join` and `/v1/rooms/leave` act on every
//! connection of a user (of one device) on every node, each told with `joined` / `left`;
//! a token's `subs` claim joins rooms at connect; the per-connection room limit refuses
//! and the answer says so.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::{Duration, SystemTime};

use common::nats::{node, NatsServer};
use common::{post, received, Client, Gateway, Read_};
use protocol::Message;
use serde_json::{json, Value};

/// Long enough for anything on a loaded machine; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(15);

fn ws(gw: &Gateway, query: &str) -> Client {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?{query}"));
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

/// The next JSON message of `c`, waiting up to [`WAIT`].
fn next(c: &mut Client) -> Value {
    match c.read(WAIT) {
        Read_::Msg(Message::Text(t)) => serde_json::from_slice(&t).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn api(gw: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let (status, body) = post(gw.control_addr, path, &body.to_string(), None);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn subscribed(gw: &Gateway, n: usize) {
    assert!(
        gw.eventually(WAIT, |g| g.metric("pushgate_bus_subscriptions") == n as f64),
        "expected {n} subscriptions, have {}",
        gw.metric("pushgate_bus_subscriptions")
    );
}

#[test]
fn a_server_join_reaches_every_device_on_every_node_and_a_leave_stops_it() {
    let nats = NatsServer::start();
    let url = nats.url();
    let n1 = node(&url, "n1", &[]);
    let n2 = node(&url, "n2", &[]);
    for gw in [&n1, &n2] {
        assert!(gw.eventually(WAIT, |g| g.metric("pushgate_cluster_peers") == 1.0));
    }
    let mut phone = ws(&n1, "uid=alice&device=phone");
    let mut laptop = ws(&n2, "uid=alice&device=laptop");
    let mut tablet = ws(&n2, "uid=alice&device=tablet");
    let mut bob = ws(&n1, "uid=bob");
    // The broadcast subject's and the users': alice on both nodes, bob on n1.
    subscribed(&n1, 3);
    subscribed(&n2, 2);

    let (status, v) = api(
        &n1,
        "/v1/rooms/join",
        json!({"uid": "alice", "room": "team"}),
    );
    assert_eq!(status, 200, "{v}");
    // This node's count; the other node carries it out without being waited for.
    assert_eq!(
        v,
        json!({"ok": true, "connections": 1, "joined": 1, "already": 0, "refused": 0,
               "unreached": 0, "nodes": ["n2"]})
    );
    for c in [&mut phone, &mut laptop, &mut tablet] {
        assert_eq!(
            next(c),
            json!({"type": "joined", "room": "team", "by": "server"})
        );
    }
    // And the room's, on both nodes.
    subscribed(&n1, 4);
    subscribed(&n2, 3);
    let (status, _) = api(
        &n2,
        "/v1/push",
        json!({"rooms": ["team"], "data": "hello team"}),
    );
    assert_eq!(status, 200);
    for c in [&mut phone, &mut laptop, &mut tablet] {
        let m = next(c);
        assert_eq!(
            (&m["type"], &m["data"]),
            (&json!("msg"), &json!("hello team"))
        );
    }
    assert_eq!(received(&mut bob, 500), Vec::<Value>::new());

    // A second join changes nothing and says so; no second `joined`.
    let (_, v) = api(
        &n2,
        "/v1/rooms/join",
        json!({"uid": "alice", "room": "team"}),
    );
    assert_eq!(
        (v["connections"].as_u64(), v["already"].as_u64()),
        (Some(2), Some(2))
    );

    // Leaving on one device only, asked of the node that does not hold it.
    let (status, v) = api(
        &n1,
        "/v1/rooms/leave",
        json!({"uid": "alice", "room": "team", "device": "laptop"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"ok": true, "connections": 0, "left": 0, "not_joined": 0, "unreached": 0,
               "nodes": ["n2"]})
    );
    assert_eq!(
        next(&mut laptop),
        json!({"type": "left", "room": "team", "by": "server"})
    );
    assert!(
        n2.eventually(WAIT, |g| g
            .metric("pushgate_server_room_leaves_total{result=\"changed\"}")
            == 1.0),
        "n2 never carried out the leave"
    );
    let (status, _) = api(
        &n1,
        "/v1/push",
        json!({"rooms": ["team"], "data": "still here"}),
    );
    assert_eq!(status, 200);
    for c in [&mut phone, &mut tablet] {
        assert_eq!(received(c, 1000), [json!("still here")]);
    }
    assert_eq!(received(&mut laptop, 500), Vec::<Value>::new());

    // Everyone leaves.
    let (status, v) = api(
        &n2,
        "/v1/rooms/leave",
        json!({"uid": "alice", "room": "team"}),
    );
    assert_eq!((status, v["left"].as_u64()), (200, Some(1)), "{v}");
    for c in [&mut phone, &mut tablet] {
        assert_eq!(
            next(c),
            json!({"type": "left", "room": "team", "by": "server"})
        );
    }
    assert_eq!(
        n2.metric("pushgate_bus_control_received_total{kind=\"rooms\"}"),
        2.0
    );
    assert_eq!(
        n1.metric("pushgate_bus_control_received_total{kind=\"rooms\"}"),
        2.0
    );
    assert_eq!(
        n1.metric("pushgate_room_requests_total{result=\"ok\"}"),
        2.0
    );
}

#[test]
fn the_subs_claim_joins_rooms_at_connect() {
    const SECRET: &str = "rooms-test-secret";
    let gw = Gateway::start(&["--jwt-secret", SECRET]);
    let token = |subs: &[&str], rooms: Option<&[&str]>| {
        let subs: Vec<String> = subs.iter().map(|s| s.to_string()).collect();
        let rooms: Option<Vec<String>> = rooms.map(|r| r.iter().map(|s| s.to_string()).collect());
        pushgate::token::mint_with_subs(
            SECRET.as_bytes(),
            "carol",
            rooms.as_deref(),
            &subs,
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap()
    };
    // `rooms` grants nothing, yet `subs` joins: the server chose.
    let mut c = ws(
        &gw,
        &format!("token={}", token(&["news", "team-1"], Some(&[]))),
    );
    assert_eq!(
        next(&mut c),
        json!({"type": "joined", "room": "news", "by": "server"})
    );
    assert_eq!(
        next(&mut c),
        json!({"type": "joined", "room": "team-1", "by": "server"})
    );
    let (status, _) = post(
        gw.control_addr,
        "/v1/push",
        &json!({"rooms": ["team-1"], "data": 7}).to_string(),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(next(&mut c)["data"], 7);
    // The `rooms` claim still limits what the client joins itself.
    c.send_text(r#"{"type":"join","room":"other"}"#);
    assert_eq!(next(&mut c)["code"], "forbidden");
    assert_eq!(
        gw.metric("pushgate_server_room_joins_total{result=\"changed\"}"),
        2.0
    );

    // A `subs` claim that is not a list of room names makes the token invalid.
    let bad = pushgate::token::mint(
        SECRET.as_bytes(),
        "carol",
        None,
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    let (_, status) = Client::try_connect(
        std::net::TcpStream::connect(gw.client_addr).unwrap(),
        &format!("/ws?token={bad}"),
        "",
    );
    assert_eq!(status, 101, "a token without subs is fine");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "carol", "exp": 4_000_000_000u64, "subs": [""]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (_, status) = Client::try_connect(
        std::net::TcpStream::connect(gw.client_addr).unwrap(),
        &format!("/ws?token={forged}"),
        "",
    );
    assert_eq!(status, 401, "an empty room name in subs");
}

#[test]
fn joins_past_the_per_connection_limit_are_refused_and_bad_requests_answered() {
    let gw = Gateway::dev(&["--api-key", "k", "--client-rate", "0"]);
    let mut c = ws(&gw, "uid=dave");
    for i in 0..256 {
        c.send_text(&format!(r#"{{"type":"join","room":"r{i}"}}"#));
    }
    assert!(
        gw.eventually(WAIT, |g| g.metric("pushgate_rooms") == 256.0),
        "the client's joins never all arrived"
    );
    let auth = Some("k");
    let call = |path: &str, body: Value| {
        let (s, b) = post(gw.control_addr, path, &body.to_string(), auth);
        (s, serde_json::from_str::<Value>(&b).unwrap_or(Value::Null))
    };
    let (status, v) = call(
        "/v1/rooms/join",
        json!({"uid": "dave", "room": "one-too-many"}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        (v["refused"].as_u64(), v["joined"].as_u64()),
        (Some(1), Some(0)),
        "{v}"
    );
    let (_, v) = call("/v1/rooms/join", json!({"uid": "dave", "room": "r3"}));
    assert_eq!(v["already"], 1, "{v}");
    // Leaving makes room for the next join.
    let (_, v) = call("/v1/rooms/leave", json!({"uid": "dave", "room": "r3"}));
    assert_eq!(v["left"], 1, "{v}");
    assert_eq!(
        next(&mut c),
        json!({"type": "left", "room": "r3", "by": "server"})
    );
    let (_, v) = call(
        "/v1/rooms/join",
        json!({"uid": "dave", "room": "one-too-many"}),
    );
    assert_eq!(v["joined"], 1, "{v}");
    assert_eq!(
        next(&mut c),
        json!({"type": "joined", "room": "one-too-many", "by": "server"})
    );
    // A user with no connection: nothing to do, and that is no error.
    let (status, v) = call("/v1/rooms/join", json!({"uid": "nobody", "room": "x"}));
    assert_eq!((status, v["connections"].as_u64()), (200, Some(0)), "{v}");

    for bad in [
        json!({"uid": "dave"}),
        json!({"uid": "", "room": "x"}),
        json!({"uid": "dave", "room": "x".repeat(257)}),
        json!({"uid": "dave", "room": "x", "device": ""}),
        json!(["dave"]),
    ] {
        let (status, _) = call("/v1/rooms/join", bad.clone());
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = post(
        gw.control_addr,
        "/v1/rooms/join",
        r#"{"uid":"dave","room":"x"}"#,
        Some("wrong"),
    );
    assert_eq!(status, 401);
    let (status, _) = common::http(
        gw.control_addr,
        "GET /v1/rooms/leave HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405);
    assert_eq!(
        gw.metric("pushgate_room_requests_total{result=\"bad_request\"}"),
        5.0
    );
    assert_eq!(
        gw.metric("pushgate_room_requests_total{result=\"ok\"}"),
        5.0
    );
    assert_eq!(
        gw.metric("pushgate_server_room_joins_total{result=\"refused\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("pushgate_messages_dropped_total{reason=\"room_limit\"}"),
        1.0
    );
}
