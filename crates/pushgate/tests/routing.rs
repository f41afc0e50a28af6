//! IM routing end to end: users on many devices, client `send`, rooms, broadcast, the
//! server push API, and what malformed requests get.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use common::{nothing_for, post, users_online, Client, Gateway, Read_};
use protocol::{CloseCode, Message};
use serde_json::{json, Value};

fn ws(gw: &Gateway, uid: &str) -> Client {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?uid={uid}"));
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

fn push(gw: &Gateway, body: Value) {
    let (status, resp) = post(gw.control_addr, "/v1/push", &body.to_string(), None);
    assert_eq!(status, 200, "{resp}");
    assert!(resp.starts_with("{\"ok\":true"), "{resp}");
}

#[test]
fn a_push_reaches_every_device_of_the_user_and_nobody_else() {
    let gw = Gateway::dev(&[]);
    let mut phone = ws(&gw, "alice");
    let mut laptop = ws(&gw, "alice");
    let mut bob = ws(&gw, "bob");
    users_online(&gw, 2.0);
    push(
        &gw,
        json!({"to": ["alice"], "from": "svc", "data": {"text": "hi", "n": [1, 2]}}),
    );
    for c in [&mut phone, &mut laptop] {
        assert_eq!(
            common::without_seq(c.recv_json()),
            json!({"type": "msg", "from": "svc", "data": {"text": "hi", "n": [1, 2]}})
        );
    }
    nothing_for(&mut bob, 300);
    // A device that leaves no longer receives; the other still does.
    drop(laptop);
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric_sum("pushgate_connections_upgraded")
        == 2.0));
    push(&gw, json!({"to": ["alice"], "data": "again"}));
    assert_eq!(
        common::without_seq(phone.recv_json()),
        json!({"type": "msg", "from": "server", "data": "again"})
    );
}

#[test]
fn client_send_carries_the_authenticated_sender() {
    let gw = Gateway::dev(&[]);
    let mut alice = ws(&gw, "alice");
    let mut bob = ws(&gw, "bob");
    let mut carol = ws(&gw, "carol");
    users_online(&gw, 3.0);
    // A forged "from" in the request is ignored.
    bob.send_text(
        r#"{"type":"send","to":["alice","carol","nobody"],"from":"mallory","data":{"t":"yo"}}"#,
    );
    for c in [&mut alice, &mut carol] {
        assert_eq!(
            common::without_seq(c.recv_json()),
            json!({"type": "msg", "from": "bob", "data": {"t": "yo"}})
        );
    }
    nothing_for(&mut bob, 200);
    // Sending to an offline user is not an error: it is counted.
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric("pushgate_messages_dropped_total{reason=\"offline\"}")
        == 1.0));
    assert_eq!(
        gw.metric("pushgate_client_requests_total{type=\"send\"}"),
        1.0
    );
}

#[test]
fn rooms_join_push_leave() {
    let gw = Gateway::dev(&[]);
    let mut alice = ws(&gw, "alice");
    let mut bob = ws(&gw, "bob");
    let mut carol = ws(&gw, "carol");
    alice.send_text(r#"{"type":"join","room":"r1"}"#);
    bob.send_text(r#"{"type":"join","room":"r1"}"#);
    bob.send_text(r#"{"type":"join","room":"r1"}"#);
    // Requests are answered in order: a pong means the joins before it are done (alice
    // and bob may sit on different reactors, so one room existing says nothing about the
    // other's join).
    for c in [&mut alice, &mut bob] {
        c.send_text(r#"{"type":"ping"}"#);
        assert_eq!(c.recv_json()["type"], "pong");
    }
    assert_eq!(gw.metric("pushgate_rooms"), 1.0);
    push(&gw, json!({"rooms": ["r1"], "data": 1}));
    assert_eq!(alice.recv_json()["data"], 1);
    assert_eq!(bob.recv_json()["data"], 1);
    nothing_for(&mut carol, 200);
    // Named as a user and as a room member: delivered once.
    push(&gw, json!({"to": ["bob"], "rooms": ["r1"], "data": 2}));
    assert_eq!(bob.recv_json()["data"], 2);
    assert_eq!(alice.recv_json()["data"], 2);
    nothing_for(&mut bob, 200);
    alice.send_text(r#"{"type":"leave","room":"r1"}"#);
    // Client send into a room is not part of the contract; rooms are for the server API.
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric("pushgate_client_requests_total{type=\"room\"}")
        == 4.0));
    push(&gw, json!({"rooms": ["r1"], "data": 3}));
    assert_eq!(bob.recv_json()["data"], 3);
    nothing_for(&mut alice, 200);
    // Closing a connection leaves its rooms.
    drop(bob);
    assert!(
        gw.eventually(Duration::from_secs(3), |g| g.metric("pushgate_rooms")
            == 0.0)
    );
}

#[test]
fn broadcast_reaches_every_ws_connection_once() {
    let gw = Gateway::dev(&[]);
    let mut clients: Vec<Client> = (0..6).map(|i| ws(&gw, &format!("u{}", i % 3))).collect();
    let mut echo = Client::connect(gw.client_addr, "/echo");
    users_online(&gw, 3.0);
    let (status, _) = post(
        gw.control_addr,
        "/v1/broadcast",
        r#"{"data":{"notice":"maintenance"}}"#,
        None,
    );
    assert_eq!(status, 200);
    for c in &mut clients {
        assert_eq!(
            c.recv_json(),
            json!({"type": "msg", "from": "server", "data": {"notice": "maintenance"}})
        );
        nothing_for(c, 50);
    }
    nothing_for(&mut echo, 200);
    assert!(gw.metric("pushgate_push_latency_seconds_count") >= 1.0);
}

#[test]
fn app_ping_and_malformed_requests() {
    let gw = Gateway::dev(&["--max-bad-requests", "2"]);
    let mut c = ws(&gw, "alice");
    c.send_text(r#"{"type":"ping"}"#);
    assert_eq!(c.recv_json(), json!({"type": "pong"}));
    c.send_text("not json");
    let e = c.recv_json();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_json"))
    );
    c.send_text(r#"{"type":"teleport"}"#);
    assert_eq!(c.recv_json()["code"], "unknown_type");
    // The third strike closes the connection with 1008.
    c.send(protocol::OpCode::Binary, b"\x00");
    assert_eq!(c.recv_json()["code"], "bad_request");
    assert_eq!(c.expect_close(Duration::from_secs(5)), CloseCode::POLICY);
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric("pushgate_client_requests_total{type=\"bad\"}")
        == 3.0));
    assert_eq!(gw.metric("pushgate_policy_closes_total"), 1.0);
}

#[test]
fn compressed_push_to_a_deflate_client() {
    let gw = Gateway::dev(&[]);
    let mut plain = ws(&gw, "alice");
    let mut z = Client::connect_with(
        std::net::TcpStream::connect(gw.client_addr).unwrap(),
        "/ws?uid=alice",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    assert!(z.response.contains("permessage-deflate"));
    users_online(&gw, 1.0);
    // The welcome is small and goes uncompressed.
    let raw = z.read_raw_frame();
    assert!(!raw.0.rsv1);
    let text = "x".repeat(2000);
    push(&gw, json!({"to": ["alice"], "data": text}));
    assert_eq!(plain.recv_json()["data"], json!(text));
    let (header, payload) = z.read_raw_frame();
    assert!(
        header.rsv1 && payload.len() < 200,
        "compressed: {} bytes",
        payload.len()
    );
    let body = protocol::deflate::Inflater::new(15, true)
        .inflate(&payload, 1 << 20)
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"], json!(text));
}

#[test]
fn messages_nobody_asked_for_are_ignored() {
    let gw = Gateway::dev(&[]);
    let mut a = ws(&gw, "a");
    // Unknown fields are fine; the request still works.
    a.send_text(r#"{"type":"ping","extra":{"nested":true}}"#);
    assert_eq!(a.recv_json(), json!({"type": "pong"}));
    // A push to nobody online is fine too.
    push(&gw, json!({"to": ["ghost"], "data": 0}));
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric("pushgate_messages_dropped_total{reason=\"offline\"}")
        == 1.0));
    nothing_for(&mut a, 100);
    assert!(matches!(a.read(Duration::from_millis(10)), Read_::Timeout));
    let _ = Message::Ping(bytes::Bytes::new());
}
