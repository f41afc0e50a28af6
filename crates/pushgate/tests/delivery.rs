//! Delivery on a single node (docs/PROTOCOL.md, "Delivery"): seqs and IDs, resume with
//! `since` while pushes keep coming, history overflow, acks, offline users, idempotent
//! pushes, the byte bound, and every bad input answered without harm to anyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{nothing_for, post, users_online, Client, Gateway, Read_};
use serde_json::{json, Value};

/// Connects and returns the client and its `welcome`.
fn ws(gw: &Gateway, query: &str) -> (Client, Value) {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?{query}"));
    let w = c.recv_json();
    assert_eq!(w["type"], "welcome", "{w}");
    (c, w)
}

fn push(gw: &Gateway, body: Value) -> Value {
    let (status, resp) = post(gw.control_addr, "/v1/push", &body.to_string(), None);
    assert_eq!(status, 200, "{resp}");
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["ok"], true);
    v
}

fn seq(m: &Value) -> u64 {
    m["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {m}"))
}

#[test]
fn pushes_carry_seq_and_id_rooms_their_own_seq_broadcasts_neither() {
    let gw = Gateway::dev(&[]);
    let (mut a, w) = ws(&gw, "uid=alice");
    assert_eq!(w["seq"], 0, "no message yet: {w}");
    assert_eq!(w["recovered"], true);
    a.send_text(r#"{"type":"join","room":"r"}"#);
    let (mut b, _) = ws(&gw, "uid=bob");
    users_online(&gw, 2.0);
    let r1 = push(&gw, json!({"to": ["alice"], "data": 1}));
    let r2 = push(&gw, json!({"to": ["alice", "bob"], "data": 2}));
    assert_eq!(r1["seq"], json!({"alice": 1}));
    assert_eq!(r2["seq"], json!({"alice": 2, "bob": 1}));
    assert_eq!(r2["offline"], json!([]));
    let m1 = a.recv_json();
    let m2 = a.recv_json();
    assert_eq!((seq(&m1), seq(&m2)), (1, 2));
    assert_eq!(m1["id"], r1["id"]);
    assert_eq!(m2["id"], r2["id"]);
    assert_ne!(m1["id"], m2["id"]);
    let mb = b.recv_json();
    assert_eq!(
        (seq(&mb), &mb["id"], &mb["data"]),
        (1, &r2["id"], &json!(2))
    );
    // A client `send` gets the recipient's next seq too.
    b.send_text(r#"{"type":"send","to":["alice"],"data":"hi"}"#);
    let m3 = a.recv_json();
    assert_eq!(
        (seq(&m3), &m3["from"], m3["id"].is_string()),
        (3, &json!("bob"), true)
    );
    // Room messages: the room's own seq.
    assert!(
        gw.eventually(Duration::from_secs(3), |g| g.metric("pushgate_rooms")
            == 1.0)
    );
    push(&gw, json!({"rooms": ["r"], "data": "x"}));
    push(&gw, json!({"rooms": ["r"], "data": "y"}));
    for n in [1, 2] {
        let m = a.recv_json();
        assert_eq!((&m["room"], seq(&m)), (&json!("r"), n), "{m}");
    }
    // A broadcast has neither.
    let (status, _) = post(gw.control_addr, "/v1/broadcast", r#"{"data":"all"}"#, None);
    assert_eq!(status, 200);
    let m = a.recv_json();
    assert_eq!(m["data"], "all");
    assert!(m.get("seq").is_none() && m.get("id").is_none() && m.get("room").is_none());
    // The welcome says where the user is.
    let (_, w) = ws(&gw, "uid=alice&since=3");
    assert_eq!((&w["seq"], &w["recovered"]), (&json!(3), &json!(true)));
}

/// The brief's main scenario: the API pushes 1 000 messages at a steady rate; the client
/// drops its connection mid-stream and reconnects with `since` while the pushes go on.
/// Every message arrives exactly once, in order.
#[test]
fn reconnecting_with_since_mid_stream_loses_and_repeats_nothing() {
    const N: u64 = 1000;
    let gw = Gateway::dev(&["--history-size", "5000"]);
    let (mut c, _) = ws(&gw, "uid=alice");
    users_online(&gw, 1.0);
    let control = gw.control_addr;
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let pusher = std::thread::spawn(move || {
        // Steady: one push every 2 ms, about 2 s in all.
        let start = Instant::now();
        for i in 0..N {
            let due = start + Duration::from_millis(2 * i);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let body = json!({"to": ["alice"], "data": {"i": i}}).to_string();
            let (status, resp) = post(control, "/v1/push", &body, None);
            assert_eq!(status, 200, "{resp}");
        }
        done2.store(true, Ordering::SeqCst);
    });
    let mut got: Vec<(u64, u64)> = Vec::new();
    let mut reconnects = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < N as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} arrived",
            got.len()
        );
        match c.read(Duration::from_secs(5)) {
            Read_::Msg(protocol::Message::Text(t)) => {
                let m: Value = serde_json::from_slice(&t).unwrap();
                assert_eq!(m["type"], "msg", "{m}");
                got.push((seq(&m), m["data"]["i"].as_u64().unwrap()));
            }
            other => panic!("{other:?} after {} messages", got.len()),
        }
        // Drop the connection (no close handshake) at three points mid-stream, and
        // come back a little later while pushes keep arriving.
        if [150, 400, 700].contains(&got.len()) {
            reconnects += 1;
            drop(c);
            std::thread::sleep(Duration::from_millis(30));
            let since = got.last().unwrap().0;
            let (c2, w) = ws(&gw, &format!("uid=alice&since={since}"));
            assert_eq!(w["recovered"], true, "{w}");
            assert!(seq(&w) >= since);
            c = c2;
        }
    }
    pusher.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(reconnects, 3);
    for (k, (s, i)) in got.iter().enumerate() {
        assert_eq!(
            (*s, *i),
            (k as u64 + 1, k as u64),
            "message {k} out of place"
        );
    }
    nothing_for(&mut c, 200);
}

#[test]
fn history_overflow_says_recovered_false() {
    let gw = Gateway::dev(&["--history-size", "5"]);
    for i in 0..12 {
        push(&gw, json!({"to": ["alice"], "data": i}));
    }
    let (mut c, w) = ws(&gw, "uid=alice&since=3");
    assert_eq!((&w["seq"], &w["recovered"]), (&json!(12), &json!(false)));
    let seqs: Vec<u64> = (0..5).map(|_| seq(&c.recv_json())).collect();
    assert_eq!(seqs, [8, 9, 10, 11, 12], "the last five, in order");
    nothing_for(&mut c, 200);
    let (mut c, w) = ws(&gw, "uid=alice&since=7");
    assert_eq!(w["recovered"], true, "8.. are all retained");
    assert_eq!(seq(&c.recv_json()), 8);
}

#[test]
fn an_ack_is_where_the_device_resumes_without_since() {
    let gw = Gateway::dev(&[]);
    let (mut phone, _) = ws(&gw, "uid=alice&device=phone");
    users_online(&gw, 1.0);
    for i in 0..5 {
        push(&gw, json!({"to": ["alice"], "data": i}));
    }
    for n in 1..=5 {
        assert_eq!(seq(&phone.recv_json()), n);
    }
    phone.send_text(r#"{"type":"ack","seq":3}"#);
    nothing_for(&mut phone, 200);
    drop(phone);
    users_online(&gw, 0.0);
    let (mut phone, w) = ws(&gw, "uid=alice&device=phone");
    assert_eq!((&w["seq"], &w["recovered"]), (&json!(5), &json!(true)));
    assert_eq!(seq(&phone.recv_json()), 4);
    assert_eq!(seq(&phone.recv_json()), 5);
    nothing_for(&mut phone, 200);
    // The default device has its own ack; a device never seen starts from 0.
    let (mut d, _) = ws(&gw, "uid=alice");
    for n in 1..=5 {
        assert_eq!(
            seq(&d.recv_json()),
            n,
            "a new device gets all that is retained"
        );
    }
    d.send_text(r#"{"type":"ack","seq":5}"#);
    nothing_for(&mut d, 200);
    drop(d);
    let (mut d, _) = ws(&gw, "uid=alice");
    nothing_for(&mut d, 200);
    let (mut tablet, _) = ws(&gw, "uid=alice&device=tablet");
    let seqs: Vec<u64> = (0..5).map(|_| seq(&tablet.recv_json())).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[test]
fn offline_users_are_listed_and_get_the_message_when_they_come() {
    let gw = Gateway::dev(&[]);
    let (mut carol, _) = ws(&gw, "uid=carol");
    users_online(&gw, 1.0);
    let r = push(
        &gw,
        json!({"to": ["bob", "carol", "dave"], "data": "hello"}),
    );
    assert_eq!(r["offline"], json!(["bob", "dave"]));
    assert_eq!(r["seq"], json!({"bob": 1, "carol": 1, "dave": 1}));
    assert_eq!(carol.recv_json()["data"], "hello");
    let (mut bob, w) = ws(&gw, "uid=bob");
    assert_eq!((&w["seq"], &w["recovered"]), (&json!(1), &json!(true)));
    let m = bob.recv_json();
    assert_eq!(
        (&m["data"], seq(&m), &m["id"]),
        (&json!("hello"), 1, &r["id"])
    );
    // Then live, in step.
    users_online(&gw, 2.0);
    let r = push(&gw, json!({"to": ["bob"], "data": "again"}));
    assert_eq!(r["offline"], json!([]));
    assert_eq!(seq(&bob.recv_json()), 2);
}

#[test]
fn a_retried_push_with_the_same_id_is_delivered_once() {
    let gw = Gateway::dev(&[]);
    let (mut a, _) = ws(&gw, "uid=alice");
    users_online(&gw, 1.0);
    let body = json!({"to": ["alice"], "data": "once", "id": "order-42"});
    let (s1, first) = post(gw.control_addr, "/v1/push", &body.to_string(), None);
    let (s2, again) = post(gw.control_addr, "/v1/push", &body.to_string(), None);
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, again, "the retry gets the first answer");
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        (&v["id"], &v["seq"]),
        (&json!("order-42"), &json!({"alice": 1}))
    );
    let m = a.recv_json();
    assert_eq!((&m["id"], seq(&m)), (&json!("order-42"), 1));
    nothing_for(&mut a, 300);
    // Another ID is another message.
    let v = push(
        &gw,
        json!({"to": ["alice"], "data": "next", "id": "order-43"}),
    );
    assert_eq!(v["seq"], json!({"alice": 2}));
    assert_eq!(seq(&a.recv_json()), 2);
}

#[test]
fn retained_bytes_stay_under_history_max_bytes() {
    let cap = 256 * 1024;
    let gw = Gateway::dev(&["--history-max-bytes", &cap.to_string()]);
    let blob = "x".repeat(1000);
    let mut peak = 0.0f64;
    for i in 0..1500 {
        push(&gw, json!({"to": [format!("u{}", i % 300)], "data": blob}));
        if i % 100 == 99 {
            let held = gw.metric("pushgate_history_bytes");
            peak = peak.max(held);
            assert!(held <= cap as f64, "{held} > {cap}");
        }
    }
    assert!(peak > cap as f64 / 4.0, "the budget is used: {peak}");
    // 1.5 MB was pushed; what a user gets back is what the budget kept, newest first.
    let (_, w) = ws(&gw, "uid=u299&since=0");
    assert_eq!(w["recovered"], false);
}

#[test]
fn bad_resume_points_and_acks_get_clear_answers_and_hurt_nobody() {
    let gw = Gateway::dev(&[]);
    let (mut bob, _) = ws(&gw, "uid=bob");
    // `since` not a number: refused before the upgrade.
    for bad in ["abc", "-1", "1.5", ""] {
        let (c, status) = Client::try_connect(
            std::net::TcpStream::connect(gw.client_addr).unwrap(),
            &format!("/ws?uid=alice&since={bad}"),
            "",
        );
        assert_eq!(status, 400, "since={bad}: {}", c.response);
    }
    push(&gw, json!({"to": ["alice"], "data": 1}));
    // In the future: an error behind the welcome; the connection stays and gets pushes.
    let (mut a, w) = ws(&gw, "uid=alice&since=99");
    assert_eq!(w["seq"], 1);
    let e = a.recv_json();
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("bad_since")),
        "{e}"
    );
    a.send_text(r#"{"type":"ack","seq":7}"#);
    let e = a.recv_json();
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("bad_ack")),
        "{e}"
    );
    a.send_text(r#"{"type":"ack","seq":"x"}"#);
    assert_eq!(a.recv_json()["code"], "bad_ack");
    a.send_text(r#"{"type":"resume","since":0}"#);
    assert_eq!(
        a.recv_json()["code"],
        "bad_request",
        "resume is first or never"
    );
    push(&gw, json!({"to": ["alice", "bob"], "data": 2}));
    assert_eq!(seq(&a.recv_json()), 2);
    assert_eq!(bob.recv_json()["data"], 2, "bob is unaffected");
    // `resume` as the first request: the replay, then `resumed`.
    let (mut r, _) = ws(&gw, "uid=alice&device=fresh2&since=2");
    r.send_text(r#"{"type":"resume","since":0}"#);
    assert_eq!(seq(&r.recv_json()), 1);
    assert_eq!(seq(&r.recv_json()), 2);
    let done = r.recv_json();
    assert_eq!(
        (&done["type"], &done["recovered"]),
        (&json!("resumed"), &json!(true))
    );
    let (mut f, _) = ws(&gw, "uid=alice&since=2");
    f.send_text(r#"{"type":"resume","since":5}"#);
    assert_eq!(f.recv_json()["code"], "bad_since");
    // A bad caller ID is a 400.
    let (status, body) = post(
        gw.control_addr,
        "/v1/push",
        r#"{"to":["a"],"data":1,"id":5}"#,
        None,
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn with_history_off_resume_and_ack_say_so() {
    let gw = Gateway::dev(&["--history-size", "0"]);
    let (mut bob, w) = ws(&gw, "uid=bob");
    assert!(w.get("seq").is_none(), "{w}");
    let (mut a, _) = ws(&gw, "uid=alice&since=3");
    assert_eq!(a.recv_json()["code"], "history_disabled");
    a.send_text(r#"{"type":"ack","seq":1}"#);
    assert_eq!(a.recv_json()["code"], "history_disabled");
    users_online(&gw, 2.0);
    let (status, resp) = post(
        gw.control_addr,
        "/v1/push",
        &json!({"to": ["alice", "bob"], "data": 1}).to_string(),
        None,
    );
    assert_eq!((status, resp.as_str()), (200, "{\"ok\":true}"));
    let m = a.recv_json();
    assert!(m.get("seq").is_none(), "live only: {m}");
    assert_eq!(bob.recv_json()["data"], 1);
}

/// Regression guard: a replay larger than the outbound queue closed the connection as a
/// slow consumer (1013) before it read anything, and again on every reconnect. It is cut
/// to the newest messages that fit, and the welcome says the rest was not recovered.
#[test]
fn a_replay_larger_than_the_outbound_queue_keeps_the_newest_and_says_so() {
    let gw = Gateway::dev(&["--max-outbound-messages", "10"]);
    for i in 0..50 {
        push(&gw, json!({"to": ["alice"], "data": i}));
    }
    let (mut c, w) = ws(&gw, "uid=alice&since=0");
    assert_eq!((&w["seq"], &w["recovered"]), (&json!(50), &json!(false)));
    let seqs: Vec<u64> = (0..8).map(|_| seq(&c.recv_json())).collect();
    assert_eq!(seqs, (43..=50).collect::<Vec<_>>());
    nothing_for(&mut c, 200);
    users_online(&gw, 1.0);
    push(&gw, json!({"to": ["alice"], "data": "live"}));
    assert_eq!(
        seq(&c.recv_json()),
        51,
        "the connection is still there, in step"
    );
}

#[test]
fn joining_a_room_with_since_replays_what_the_room_retained() {
    let gw = Gateway::dev(&[]);
    let (mut a, _) = ws(&gw, "uid=alice");
    a.send_text(r#"{"type":"join","room":"r"}"#);
    assert!(
        gw.eventually(Duration::from_secs(3), |g| g.metric("pushgate_rooms")
            == 1.0)
    );
    for i in 0..4 {
        push(&gw, json!({"rooms": ["r"], "data": i}));
    }
    let seen: Vec<u64> = (0..4).map(|_| seq(&a.recv_json())).collect();
    assert_eq!(seen, [1, 2, 3, 4]);
    // bob comes late and asks for what he missed after room seq 1.
    let (mut b, _) = ws(&gw, "uid=bob");
    b.send_text(r#"{"type":"join","room":"r","since":1}"#);
    for n in 2..=4 {
        let m = b.recv_json();
        assert_eq!((&m["room"], seq(&m)), (&json!("r"), n), "{m}");
    }
    let j = b.recv_json();
    assert_eq!(
        j,
        json!({"type": "joined", "room": "r", "seq": 4, "recovered": true})
    );
    push(&gw, json!({"rooms": ["r"], "data": "live"}));
    assert_eq!(seq(&b.recv_json()), 5);
    // Past the room's latest seq: an error, and still a member.
    let (mut c, _) = ws(&gw, "uid=carol");
    c.send_text(r#"{"type":"join","room":"r","since":9}"#);
    assert_eq!(c.recv_json()["code"], "bad_since");
    push(&gw, json!({"rooms": ["r"], "data": "again"}));
    assert_eq!(seq(&c.recv_json()), 6);
}
