//! Delivery with seqs, resume and recovery across nodes, history in a real
//! `nats-server -js` (docs/PROTOCOL.md "Delivery"; docs/BUS.md "History in a cluster").
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::{Duration, Instant};

use common::nats::{free_port, Js, NatsServer};
use common::{post, Client, Gateway, Read_};
use protocol::Message;
use serde_json::{json, Value};

/// A node with history on JetStream, ready (bus connected and stream made).
fn node(nats: &str, id: &str, extra: &[&str]) -> Gateway {
    let gw = common::nats::node(nats, id, extra);
    history_ready(&gw);
    gw
}

fn logged(gw: &Gateway, text: &str) -> bool {
    gw.log.lock().unwrap().iter().any(|l| l.contains(text))
}

fn history_ready(gw: &Gateway) {
    assert!(
        gw.eventually(Duration::from_secs(10), |g| logged(
            g,
            "history stream ready on JetStream"
        )),
        "no history stream"
    );
}

/// Opens `/ws?uid=..&<query>`; returns the client and its welcome.
fn ws(gw: &Gateway, uid: &str, query: &str) -> (Client, Value) {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?uid={uid}{query}"));
    let w = c.recv_json();
    assert_eq!(w["type"], "welcome", "{w}");
    (c, w)
}

/// Waits until `gw` holds `n` bus subscriptions NATS confirmed.
fn subscribed(gw: &Gateway, n: usize) {
    assert!(
        gw.eventually(Duration::from_secs(10), |g| {
            g.metric("pushgate_bus_subscriptions") == n as f64
        }),
        "expected {n} subscriptions"
    );
}

/// A push answered 200; its answer.
fn push(gw: &Gateway, body: Value) -> Value {
    let (status, resp) = post(gw.control_addr, "/v1/push", &body.to_string(), None);
    assert_eq!(status, 200, "{resp}");
    serde_json::from_str(&resp).unwrap()
}

/// Messages (whole JSON) until `n` arrived or `limit` passed.
fn messages(c: &mut Client, n: usize, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        match c.read(Duration::from_millis(200)) {
            Read_::Timeout => {}
            Read_::Msg(Message::Text(t)) => {
                let v: Value = serde_json::from_slice(&t).unwrap();
                assert_eq!(v["type"], "msg", "{v}");
                out.push(v);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

fn strictly_increasing(s: &[u64]) -> bool {
    s.windows(2).all(|w| w[0] < w[1])
}

/// The issue's proof: a client on node A drops mid-stream while a backend pushes 1 000
/// messages at a steady rate through node B; it resumes on B with `since` and has every
/// message exactly once, in order.
#[test]
fn resume_on_the_other_node_mid_stream_loses_and_repeats_nothing() {
    const N: u64 = 1000;
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &["--history-size", "2000"]);
    let b = node(&js.nats.url(), "b", &["--history-size", "2000"]);
    let (mut c, w) = ws(&a, "u1", "");
    assert_eq!(w["seq"], 0);
    subscribed(&a, 2);
    let control = b.control_addr;
    let pusher = std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..N {
            // Steady: 1 every 2 ms, whatever each push took.
            let due = start + Duration::from_millis(2 * i);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let body = json!({"to": ["u1"], "data": {"i": i}}).to_string();
            let (status, resp) = post(control, "/v1/push", &body, None);
            assert_eq!(status, 200, "{resp}");
        }
    });
    let first = messages(&mut c, 300, Duration::from_secs(15));
    assert_eq!(first.len(), 300);
    let last_seq = first.last().unwrap()["seq"].as_u64().unwrap();
    drop(c);
    let (mut c, w) = ws(&b, "u1", &format!("&since={last_seq}"));
    assert_eq!(w["recovered"], true, "{w}");
    assert!(w["seq"].as_u64().unwrap() >= last_seq);
    pusher.join().unwrap();
    let rest = messages(&mut c, (N - 300) as usize, Duration::from_secs(15));
    let all: Vec<Value> = first.into_iter().chain(rest).collect();
    let data: Vec<u64> = all
        .iter()
        .map(|m| m["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        data,
        (0..N).collect::<Vec<_>>(),
        "every message once, in order"
    );
    assert!(strictly_increasing(&seqs(&all)));
    common::nothing_for(&mut c, 300);
}

/// Pushes for one user through both nodes at once: every connection of the user, on
/// either node, gets all of them in the same order, seqs increasing.
#[test]
fn concurrent_pushes_from_both_nodes_arrive_in_one_order() {
    const EACH: u64 = 200;
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    let (mut ca, _) = ws(&a, "u2", "");
    let (mut cb, _) = ws(&b, "u2", "");
    subscribed(&a, 2);
    subscribed(&b, 2);
    let threads: Vec<_> = [(a.control_addr, "a"), (b.control_addr, "b")]
        .into_iter()
        .map(|(addr, tag)| {
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for i in 0..EACH {
                    let body = json!({"to": ["u2"], "data": {"n": tag, "i": i}}).to_string();
                    let (status, resp) = post(addr, "/v1/push", &body, None);
                    assert_eq!(status, 200, "{resp}");
                    let v: Value = serde_json::from_str(&resp).unwrap();
                    seen.push(v["seq"]["u2"].as_u64().unwrap());
                }
                seen
            })
        })
        .collect();
    let answered: Vec<Vec<u64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let got_a = messages(&mut ca, 2 * EACH as usize, Duration::from_secs(15));
    let got_b = messages(&mut cb, 2 * EACH as usize, Duration::from_secs(15));
    assert_eq!(got_a.len(), 2 * EACH as usize);
    assert_eq!(seqs(&got_a), seqs(&got_b), "one order on both nodes");
    assert!(strictly_increasing(&seqs(&got_a)));
    let mut all: Vec<u64> = answered.concat();
    all.sort_unstable();
    assert_eq!(all, seqs(&got_a), "the seqs the pushes were answered with");
    // Each node's pushes in the order they were made.
    for tag in ["a", "b"] {
        let mine: Vec<u64> = got_a
            .iter()
            .filter(|m| m["data"]["n"] == tag)
            .map(|m| m["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
    }
    common::nothing_for(&mut ca, 200);
    common::nothing_for(&mut cb, 200);
    // Copies that crossed were put in order by fetching the gap, never skipped.
    for g in [&a, &b] {
        let failed = g.metric(r#"pushgate_history_cluster_events_total{event="fill_failure"}"#);
        assert_eq!(failed, 0.0);
    }
}

/// What the stream acknowledged survives a SIGKILL of the node that pushed it and of
/// the NATS server itself: a client connecting afterwards gets all of it (offline
/// delivery, in order), and the seqs go on from there.
#[test]
fn acknowledged_messages_survive_sigkill_of_node_and_server() {
    let mut js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let mut acked = Vec::new();
    for i in 0..50 {
        let v = push(&a, json!({"to": ["off"], "data": i}));
        acked.push(v["seq"]["off"].as_u64().unwrap());
        assert_eq!(v["ok"], true);
    }
    drop(a); // SIGKILL
    js.nats.restart(); // SIGKILL, then the same store directory
    let b = node(&js.nats.url(), "b", &[]);
    let (mut c, w) = ws(&b, "off", "");
    assert_eq!(w["seq"].as_u64(), acked.last().copied(), "{w}");
    assert_eq!(w["recovered"], true);
    let got = messages(&mut c, 50, Duration::from_secs(10));
    assert_eq!(seqs(&got), acked);
    let data: Vec<u64> = got.iter().map(|m| m["data"].as_u64().unwrap()).collect();
    assert_eq!(data, (0..50).collect::<Vec<_>>());
    let next = push(&b, json!({"to": ["off"], "data": 50}));
    let s = next["seq"]["off"].as_u64().unwrap();
    assert!(s > *acked.last().unwrap());
    assert_eq!(messages(&mut c, 1, Duration::from_secs(5))[0]["seq"], s);
}

/// Past `--history-size` the oldest go: a resume from before them says
/// `recovered:false` and gets what is left; one from within them, `true`.
#[test]
fn history_overflow_says_not_recovered() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &["--history-size", "5"]);
    let mut s = Vec::new();
    for i in 0..10 {
        s.push(
            push(&a, json!({"to": ["ov"], "data": i}))["seq"]["ov"]
                .as_u64()
                .unwrap(),
        );
    }
    let (mut c, w) = ws(&a, "ov", &format!("&since={}", s[1]));
    assert_eq!(w["recovered"], false, "{w}");
    assert_eq!(w["seq"].as_u64(), Some(s[9]));
    assert_eq!(seqs(&messages(&mut c, 5, Duration::from_secs(5))), s[5..]);
    common::nothing_for(&mut c, 200);
    drop(c);
    let (mut c, w) = ws(&a, "ov", &format!("&since={}", s[6]));
    assert_eq!(w["recovered"], true, "{w}");
    assert_eq!(seqs(&messages(&mut c, 3, Duration::from_secs(5))), s[7..]);
    let (mut c, w) = ws(&a, "ov", &format!("&since={}", s[9] + 1000));
    assert_eq!(w["seq"].as_u64(), Some(s[9]));
    assert_eq!(c.recv_json()["code"], "bad_since");
}

/// A push retried with its `id` is stored and delivered once, and answered with the
/// same seqs.
#[test]
fn a_retried_push_id_is_delivered_once() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    let (mut c, _) = ws(&a, "idem", "");
    subscribed(&a, 2);
    let body = json!({"to": ["idem"], "data": 1, "id": "order-17\r\nx"});
    let first = push(&b, body.clone());
    let again = push(&a, body);
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(first["id"], "order-17\r\nx");
    let got = messages(&mut c, 2, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], "order-17\r\nx");
}

/// A server without JetStream: the node says so once and delivers live, without seqs.
/// History is configured but out of reach, so a `since` is told `unavailable` (keep the
/// resume point, resume later), never `history_disabled` (which a client takes as "this
/// node keeps no history": losses in the chaos run when a restarted node was reached
/// before its stream was found).
#[test]
fn without_jetstream_delivery_is_live_only() {
    let nats = NatsServer::start();
    let gw = Gateway::dev(&["--nats", &nats.url(), "--node-id", "a"]);
    assert!(gw.eventually(Duration::from_secs(10), |g| logged(
        g,
        "no history stream; live delivery only"
    )));
    assert_eq!(gw.control_get("/readyz").0, 200);
    let (mut c, w) = ws(&gw, "u", "");
    assert!(w.get("seq").is_none(), "{w}");
    assert!(
        w.get("recovered").is_none(),
        "no since, nothing to recover: {w}"
    );
    subscribed(&gw, 2);
    let (status, resp) = post(
        gw.control_addr,
        "/v1/push",
        &json!({"to": ["u"], "data": 1}).to_string(),
        None,
    );
    assert_eq!((status, resp.as_str()), (200, "{\"ok\":true}"));
    let got = messages(&mut c, 1, Duration::from_secs(5));
    assert!(got[0].get("seq").is_none());
    // Issue 28: the history API says the store is unavailable, not that there is none.
    let (status, h) = history(&gw, "uid=u");
    assert_eq!(status, 503, "{h}");
    let (mut c2, w2) = ws(&gw, "u", "&since=3");
    assert_eq!(w2["recovered"], false, "{w2}");
    assert_eq!(c2.recv_json()["code"], "unavailable");
    c2.send_text(r#"{"type":"ack","seq":1}"#);
    assert_eq!(c2.recv_json()["code"], "unavailable");
    let count = gw
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("no history stream"))
        .count();
    assert_eq!(count, 1);
}

/// A device's ack is stored in the stream: reconnecting without `since`, on any node, it
/// resumes after it; another device of the user starts from the beginning; an ack past
/// the latest seq is refused.
#[test]
fn a_device_resumes_from_its_ack_on_the_other_node() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    let (mut c, _) = ws(&a, "ak", "&device=phone");
    subscribed(&a, 2);
    let s: Vec<u64> = (0..5)
        .map(|i| {
            push(&b, json!({"to": ["ak"], "data": i}))["seq"]["ak"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs(&messages(&mut c, 5, Duration::from_secs(5))), s);
    c.send_text(&format!(r#"{{"type":"ack","seq":{}}}"#, s[2]));
    c.send_text(&format!(r#"{{"type":"ack","seq":{}}}"#, s[1]));
    c.send_text(&format!(r#"{{"type":"ack","seq":{}}}"#, s[4] + 1000));
    assert_eq!(c.recv_json()["code"], "bad_ack");
    drop(c);
    // The ack is stored without an answer: give it a moment to land, boundedly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut c, w) = ws(&b, "ak", "&device=phone");
        let got = messages(&mut c, 2, Duration::from_secs(2));
        if seqs(&got) == s[3..] || Instant::now() > deadline {
            assert_eq!(
                seqs(&got),
                s[3..],
                "from the ack, not the older one after it"
            );
            assert_eq!(w["recovered"], true);
            common::nothing_for(&mut c, 200);
            break;
        }
    }
    let (mut t, _) = ws(&b, "ak", "&device=tablet");
    assert_eq!(seqs(&messages(&mut t, 5, Duration::from_secs(5))), s);
}

/// The stream's creation is answered once: the node must not take the end of that
/// request's window (5 s) for "no JetStream" (it did, and went live-only).
#[test]
fn history_stays_on_past_the_setup_window() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    std::thread::sleep(Duration::from_millis(5500));
    assert_eq!(a.metric("pushgate_history_cluster_ready"), 1.0);
    let v = push(&a, json!({"to": ["late"], "data": 1}));
    assert!(v["seq"]["late"].as_u64().is_some(), "{v}");
    assert!(!logged(&a, "no history stream"));
}

/// A user's first connection on a node, and a push through another node right away,
/// 30 times: each message arrives, once. The live copy may be published before the
/// node's new subscription takes effect (the node then catches up once it does); that
/// race is rare on loopback, so the catch-up itself is proven deterministically by
/// `a_copy_missed_while_away_arrives_after_the_reconnect`.
#[test]
fn a_push_racing_the_first_subscription_is_not_lost() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    for i in 0..30 {
        let uid = format!("race{i}");
        let (mut c, w) = ws(&a, &uid, "");
        assert_eq!(w["seq"], 0);
        let v = push(&b, json!({"to": [uid], "data": i}));
        let got = messages(&mut c, 1, Duration::from_secs(3));
        assert_eq!(seqs(&got), [v["seq"][&uid].as_u64().unwrap()], "user {uid}");
        common::nothing_for(&mut c, 50);
    }
}

/// A live copy this node never got (here: a message stored straight into the stream,
/// published live to nobody, as happens to copies published while a node is away from
/// NATS) reaches the user's connection once the node reconnects to NATS, without any
/// further message: the node looks at each held user's latest stored message.
#[test]
fn a_copy_missed_while_away_arrives_after_the_reconnect() {
    let mut js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let (mut c, _) = ws(&a, "rc", "");
    subscribed(&a, 2);
    let first = push(&a, json!({"to": ["rc"], "data": 1}))["seq"]["rc"]
        .as_u64()
        .unwrap();
    assert_eq!(seqs(&messages(&mut c, 1, Duration::from_secs(5))), [first]);
    // The subscription's own catch-up (on the fill thread) is done first: a copy stored
    // before it would be delivered by it, not by the reconnect this test is about.
    let catch_up = "pushgate_history_cluster_events_total{event=\"catch_up\"}";
    assert!(
        a.eventually(Duration::from_secs(10), |g| g.metric(catch_up) >= 1.0),
        "the subscription's catch-up never ran"
    );
    let mut raw = js.nats.client();
    raw.publish_with_headers(
        "pushgate.h.user.rc",
        &[("Pushgate-Prev", &first.to_string())],
        br#"{"type":"msg","from":"svc","id":"x1","data":7}"#,
    );
    common::nothing_for(&mut c, 500);
    // Stored (and written out) before the server is killed and started again.
    js.nats.restart();
    let got = messages(&mut c, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "caught up after the reconnect");
    assert_eq!(
        (got[0]["data"].as_u64(), got[0]["id"].as_str()),
        (Some(7), Some("x1"))
    );
    assert!(got[0]["seq"].as_u64().unwrap() > first);
}

/// JetStream arriving later (the NATS server restarted with it): the node makes the
/// stream on reconnect, and a connection opened before, without seqs, gets the stored
/// messages from then on.
#[test]
fn jetstream_arriving_later_turns_history_on() {
    let port = free_port();
    let mut plain = NatsServer::start_with(port, &[]);
    let gw = Gateway::dev(&["--nats", &plain.url(), "--node-id", "a"]);
    assert!(gw.eventually(Duration::from_secs(10), |g| logged(g, "no history stream")));
    let (mut c, w) = ws(&gw, "later", "");
    assert!(w.get("seq").is_none(), "{w}");
    plain.kill();
    let dir = std::env::temp_dir().join(format!("pushgate-js-later-{}", std::process::id()));
    let js = NatsServer::start_with(port, &["-js", "-sd", dir.to_str().unwrap()]);
    history_ready(&gw);
    assert!(
        gw.eventually(Duration::from_secs(10), |g| g.control_get("/readyz").0
            == 200)
    );
    subscribed(&gw, 2);
    let v = push(&gw, json!({"to": ["later"], "data": 1}));
    let got = messages(&mut c, 1, Duration::from_secs(5));
    assert_eq!(seqs(&got), [v["seq"]["later"].as_u64().unwrap()]);
    drop(js);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device that saw seq S on node A reconnects to node B with `since=S` right away,
/// while B (which holds another connection of the user) may not have delivered S yet:
/// not `bad_since`, and neither S nor anything before it again.
#[test]
fn since_just_seen_on_another_node_is_not_in_the_future() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    let (mut other, _) = ws(&b, "fast", "");
    subscribed(&b, 2);
    let mut delivered = Vec::new();
    for i in 0..40 {
        let s = push(&a, json!({"to": ["fast"], "data": i}))["seq"]["fast"]
            .as_u64()
            .unwrap();
        let (mut c, w) = ws(&b, "fast", &format!("&since={s}"));
        assert!(w["seq"].as_u64().unwrap() >= s, "{w}");
        assert_eq!(w["recovered"], true, "{w}");
        match c.read(Duration::from_millis(100)) {
            Read_::Timeout => {}
            other => panic!("after since={s}: {other:?}"),
        }
        delivered.push(s);
    }
    assert_eq!(
        seqs(&messages(&mut other, 40, Duration::from_secs(5))),
        delivered
    );
}

/// `{"type":"resume"}` as the first request on a clustered node: what lies between its
/// `since` and where the opening replay started, then `resumed`; past the latest seq,
/// `bad_since`.
#[test]
fn resume_request_on_a_clustered_node() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    let s: Vec<u64> = (0..4)
        .map(|i| {
            push(&a, json!({"to": ["rs"], "data": i}))["seq"]["rs"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let (mut c, w) = ws(&b, "rs", &format!("&since={}", s[1]));
    assert_eq!(w["seq"].as_u64(), Some(s[3]));
    assert_eq!(seqs(&messages(&mut c, 2, Duration::from_secs(5))), s[2..]);
    c.send_text(&format!(r#"{{"type":"resume","since":{}}}"#, s[0]));
    assert_eq!(seqs(&messages(&mut c, 1, Duration::from_secs(5))), [s[1]]);
    let done = c.recv_json();
    assert_eq!(
        (&done["type"], &done["recovered"]),
        (&json!("resumed"), &json!(true))
    );
    assert_eq!(done["seq"].as_u64(), Some(s[3]));
    let (mut d, _) = ws(&b, "rs", &format!("&since={}", s[3]));
    d.send_text(&format!(r#"{{"type":"resume","since":{}}}"#, s[3] + 100));
    assert_eq!(d.recv_json()["code"], "bad_since");
}

/// Joins `room` and waits until `gw` confirmed `subs` subscriptions.
fn join(c: &mut Client, room: &str, since: Option<u64>) {
    let req = match since {
        Some(s) => json!({"type": "join", "room": room, "since": s}),
        None => json!({"type": "join", "room": room}),
    };
    c.send_text(&req.to_string());
}

/// Room messages pushed through either node carry the room and one per-room seq; every
/// member, on either node, gets them all in the same order.
#[test]
fn room_messages_carry_one_per_room_seq_on_every_node() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    let (mut ca, _) = ws(&a, "m1", "");
    let (mut cb, _) = ws(&b, "m2", "");
    join(&mut ca, "r", None);
    join(&mut cb, "r", None);
    subscribed(&a, 3);
    subscribed(&b, 3);
    for i in 0..10 {
        let via = if i % 2 == 0 { &a } else { &b };
        let v = push(via, json!({"rooms": ["r"], "data": i}));
        assert_eq!(v["ok"], true);
    }
    let got_a = messages(&mut ca, 10, Duration::from_secs(5));
    let got_b = messages(&mut cb, 10, Duration::from_secs(5));
    assert_eq!(got_a.len(), 10);
    assert!(got_a
        .iter()
        .all(|m| m["room"] == "r" && m["id"].is_string()));
    assert_eq!(seqs(&got_a), seqs(&got_b));
    assert!(strictly_increasing(&seqs(&got_a)));
    let data: Vec<u64> = got_a.iter().map(|m| m["data"].as_u64().unwrap()).collect();
    assert_eq!(data, (0..10).collect::<Vec<_>>());
    common::nothing_for(&mut ca, 200);
    common::nothing_for(&mut cb, 200);
}

/// A join with `since` on another node than the pushes: the room's stored messages
/// after it, then `joined` with `recovered`, then live ones; the rest of the history
/// lost past `--history-size` says `recovered:false`.
#[test]
fn joining_a_room_with_since_replays_it_on_any_node() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &["--history-size", "4"]);
    let b = node(&js.nats.url(), "b", &["--history-size", "4"]);
    let mut s = Vec::new();
    let (mut member, _) = ws(&a, "m0", "");
    join(&mut member, "lobby", None);
    subscribed(&a, 3);
    for i in 0..6 {
        push(&a, json!({"rooms": ["lobby"], "data": i}));
    }
    for m in messages(&mut member, 6, Duration::from_secs(5)) {
        s.push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(s.len(), 6);
    let (mut c, _) = ws(&b, "j1", "");
    join(&mut c, "lobby", Some(s[2]));
    assert_eq!(seqs(&messages(&mut c, 3, Duration::from_secs(5))), s[3..]);
    let joined = c.recv_json();
    assert_eq!(
        (&joined["type"], &joined["room"], &joined["recovered"]),
        (&json!("joined"), &json!("lobby"), &json!(true)),
        "{joined}"
    );
    assert_eq!(joined["seq"].as_u64(), Some(s[5]));
    subscribed(&b, 3);
    push(&a, json!({"rooms": ["lobby"], "data": "live"}));
    let live = messages(&mut c, 1, Duration::from_secs(5));
    assert_eq!(live[0]["data"], "live");
    assert!(live[0]["seq"].as_u64().unwrap() > s[5]);
    // Only the last 4 are kept (s[3], s[4], s[5] and the live one): from s[0], s[1] and
    // s[2] are gone.
    let (mut d, _) = ws(&b, "j2", "");
    join(&mut d, "lobby", Some(s[0]));
    let got = messages(&mut d, 4, Duration::from_secs(5));
    assert_eq!(seqs(&got)[..3], s[3..]);
    let joined = d.recv_json();
    assert_eq!(
        (&joined["type"], &joined["recovered"]),
        (&json!("joined"), &json!(false))
    );
    let (mut e, _) = ws(&b, "j3", "");
    join(&mut e, "lobby", Some(u64::MAX / 2));
    assert_eq!(e.recv_json()["code"], "bad_since");
}

/// A push to a user and a room the user is in, and to two rooms: each connection gets
/// it once, on whichever node, from the user's copy or the first listed room's.
#[test]
fn users_and_rooms_in_one_push_reach_each_connection_once() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    let (mut u, _) = ws(&b, "u", "");
    let (mut v, _) = ws(&b, "v", "");
    let (mut w, _) = ws(&a, "w", "");
    join(&mut u, "r1", None);
    join(&mut v, "r1", None);
    join(&mut v, "r2", None);
    join(&mut w, "r2", None);
    subscribed(&b, 5);
    subscribed(&a, 3);
    push(&a, json!({"to": ["u"], "rooms": ["r1", "r2"], "data": 1}));
    let got_u = messages(&mut u, 2, Duration::from_secs(2));
    assert_eq!(got_u.len(), 1, "{got_u:?}");
    assert!(got_u[0].get("room").is_none(), "the user's copy: {got_u:?}");
    let got_v = messages(&mut v, 2, Duration::from_secs(2));
    assert_eq!(got_v.len(), 1, "{got_v:?}");
    assert_eq!(got_v[0]["room"], "r1");
    let got_w = messages(&mut w, 2, Duration::from_secs(2));
    assert_eq!(got_w.len(), 1, "{got_w:?}");
    assert_eq!(got_w[0]["room"], "r2");
}

/// A JetStream that stops answering (here the whole server, frozen by SIGSTOP, before the
/// bus gives up on it) costs each push its store timeout, answered 503 ("retry with the
/// same id"), and never the reactor; once JetStream answers again, pushes are stored
/// and answered as before.
#[test]
fn a_frozen_jetstream_fails_pushes_after_the_store_timeout() {
    let js = Js::start();
    let gw = node(&js.nats.url(), "stall", &["--bus-ping-timeout", "30"]);
    let body = json!({"to": ["frozen-user"], "data": "x"}).to_string();
    assert_eq!(post(gw.control_addr, "/v1/push", &body, None).0, 200);
    js.nats.pause();
    // Each push is parked until the bus gives up on JetStream's answer (503), the
    // reactor serving everything else meanwhile (tests/never_waits.rs).
    for _ in 0..2 {
        let t = Instant::now();
        let (status, resp) = post(gw.control_addr, "/v1/push", &body, None);
        let took = t.elapsed();
        assert!(matches!(status, 503 | 504), "{status} {resp}");
        assert!(resp.contains("retry with the same"), "{resp}");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
    js.nats.resume();
    assert!(
        gw.eventually(Duration::from_secs(10), |g| post(
            g.control_addr,
            "/v1/push",
            &body,
            None
        )
        .0 == 200),
        "pushes never recovered"
    );
    // Answered in time again: a push waits for its store as before.
    let t = Instant::now();
    assert_eq!(post(gw.control_addr, "/v1/push", &body, None).0, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// Issue 31: one message a backend published on a user's subject with
/// `Pushgate-Seq: 18446744073709551615` made the node drop every later push to the user
/// (as duplicates) while `/v1/push` answered 200. Now it is placed against the stream's
/// chain: the later pushes arrive, in order, and what could not be placed is counted.
#[test]
fn a_forged_seq_on_the_bus_does_not_silence_a_user() {
    let mut js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let (mut c, _) = ws(&a, "victim", "");
    subscribed(&a, 2);
    let first = push(&a, json!({"to": ["victim"], "data": 0}));
    let got = messages(&mut c, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "{got:?}");
    let last = first["seq"]["victim"].as_u64().unwrap();
    let mut backend = js.nats.client();
    let poison = u64::MAX.to_string();
    let mut forge = |seq: &str, prev: &str| {
        backend.publish_with_headers(
            "pushgate.user.victim",
            &[("Pushgate-Seq", seq), ("Pushgate-Prev", prev)],
            br#"{"type":"msg","data":"forged"}"#,
        );
    };
    // One copy straight to the end, one in a gap, one skipping the last link, and a
    // chain of two: a plausible next seq, then the end.
    for prev in [last.to_string(), (last + 1).to_string(), "0".to_owned()] {
        forge(&poison, &prev);
    }
    let near = (last + 50).to_string();
    forge(&near, &last.to_string());
    forge(&poison, &near);
    for i in 1..=3 {
        push(&a, json!({"to": ["victim"], "data": i}));
    }
    let got = messages(&mut c, 8, Duration::from_secs(3));
    // Real messages: each once, in order (the first was delivered before the forgeries).
    let real: Vec<&Value> = got.iter().filter(|m| m["data"] != "forged").collect();
    let data: Vec<&Value> = real.iter().map(|m| &m["data"]).collect();
    assert_eq!(data, [&json!(1), &json!(2), &json!(3)], "{got:?}");
    assert!(strictly_increasing(
        &real
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    ));
    assert!(
        got.len() - real.len() <= 2,
        "forged copies that continue the chain are delivered once each: {got:?}"
    );
    assert!(
        a.metric("pushgate_history_cluster_events_total{event=\"unplaceable\"}") >= 1.0,
        "counted"
    );
    drop(js.nats.client());
    js.nats.kill();
}

/// Issue 31 (3): with NATS gone a push cannot be stored, but this node's connections
/// still get it, with its `id` and without a seq, and the answer says what was not done
/// (503, `"stored":false`, the connections reached), so the caller retries with the same
/// `id` once the bus is back.
#[test]
fn a_nats_outage_delivers_locally_without_a_seq() {
    let mut js = Js::start();
    let gw = node(&js.nats.url(), "outage", &[]);
    let (mut c, _) = ws(&gw, "u", "");
    let first = push(&gw, json!({"to": ["u"], "data": 1}));
    assert_eq!(first["seq"]["u"], 1, "{first}");
    assert_eq!(messages(&mut c, 1, Duration::from_secs(5))[0]["seq"], 1);
    js.nats.kill();
    assert!(
        gw.eventually(Duration::from_secs(10), |g| g.control_get("/readyz").0
            == 503),
        "the bus never went down"
    );
    let (status, resp) = post(
        gw.control_addr,
        "/v1/push",
        &json!({"to": ["u", "away"], "data": 2, "id": "p2"}).to_string(),
        None,
    );
    assert_eq!(status, 503, "{resp}");
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["stored"], false, "{resp}");
    assert_eq!(v["id"], "p2", "{resp}");
    assert_eq!(v["connections"], 1, "{resp}");
    assert_eq!(v["offline"], json!(["away"]), "{resp}");
    let got = messages(&mut c, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "delivered here although not stored");
    assert_eq!(got[0]["id"], "p2", "{}", got[0]);
    assert_eq!(got[0]["data"], 2);
    assert!(got[0].get("seq").is_none(), "no seq: {}", got[0]);
}

fn history(gw: &Gateway, query: &str) -> (u16, Value) {
    let (status, body) = gw.control_get(&format!("/v1/history?{query}"));
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}")),
    )
}

/// Issue 28: a batch through one node, parked for JetStream and answered once every push
/// of it completed, reaches a client on the other node with the seqs its results gave; a
/// bad push among them gets its own 400 and the others are delivered.
#[test]
fn a_batch_through_one_node_reaches_the_other_with_its_seqs() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &[]);
    let b = node(&js.nats.url(), "b", &[]);
    let (mut c, _) = ws(&a, "u1", "");
    let (mut m, _) = ws(&a, "m1", "");
    join(&mut m, "br", None);
    subscribed(&a, 4);
    let body = json!([
        {"to": ["u1"], "id": "cb-1", "data": 1},
        {"to": ["u1"]},
        {"to": ["u1"], "data": 2},
        {"rooms": ["br"], "data": "room"},
    ]);
    let (status, resp) = post(b.control_addr, "/v1/batch", &body.to_string(), None);
    assert_eq!(status, 200, "{resp}");
    let v: Value = serde_json::from_str(&resp).unwrap();
    let r = v["results"].as_array().unwrap();
    let statuses: Vec<u64> = r.iter().map(|x| x["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 400, 200, 200], "{v}");
    let got = messages(&mut c, 2, Duration::from_secs(15));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["id"], "cb-1");
    assert_eq!(got[0]["seq"], r[0]["seq"]["u1"], "{v}");
    assert_eq!(got[1]["seq"], r[2]["seq"]["u1"], "{v}");
    assert_eq!(
        messages(&mut m, 1, Duration::from_secs(15))[0]["data"],
        "room"
    );
    // The streaming form, parked the same way: one line per push, in order.
    let lines = "{\"to\":[\"u1\"],\"data\":3}\n{\"to\":[\"u1\"],\"data\":4}\n";
    let (status, text) = common::http(
        b.control_addr,
        &format!(
            "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{lines}",
            lines.len()
        ),
    );
    assert_eq!(status, 200, "{text}");
    let got = messages(&mut c, 2, Duration::from_secs(15));
    let data: Vec<u64> = got.iter().map(|m| m["data"].as_u64().unwrap()).collect();
    assert_eq!(data, [3, 4]);
    for (i, m) in got.iter().enumerate() {
        let seq = format!("\"i\":{i},\"status\":200,\"ok\":true,\"id\":");
        assert!(text.contains(&seq), "{text}");
        assert!(text.contains(&format!("\"u1\":{}", m["seq"])), "{text}");
    }
}

/// Issue 28: `GET /v1/history` on either node of a cluster has exactly what the client
/// saw (same ids, same seqs), pages with `since` and `limit`, reads rooms too; with
/// JetStream frozen a read is answered 503 while the node serves on.
#[test]
fn history_reads_in_a_cluster_match_what_the_client_saw() {
    let js = Js::start();
    let a = node(&js.nats.url(), "a", &["--bus-ping-timeout", "30"]);
    let b = node(&js.nats.url(), "b", &["--bus-ping-timeout", "30"]);
    let (mut c, _) = ws(&a, "hu", "");
    let (mut m, _) = ws(&b, "hm", "");
    join(&mut m, "hr", None);
    subscribed(&a, 2);
    subscribed(&b, 3);
    for i in 0..5 {
        push(&b, json!({"to": ["hu"], "data": {"i": i}}));
    }
    push(&a, json!({"rooms": ["hr"], "data": "room"}));
    let seen = messages(&mut c, 5, Duration::from_secs(15));
    assert_eq!(seen.len(), 5);
    let room_seen = messages(&mut m, 1, Duration::from_secs(15));
    for gw in [&a, &b] {
        let (status, h) = history(gw, "uid=hu");
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["messages"], Value::Array(seen.clone()), "{h}");
        assert_eq!(
            (h["more"].as_bool(), h["complete"].as_bool()),
            (Some(false), Some(true))
        );
        let since = seen[1]["seq"].as_u64().unwrap();
        let (status, h) = history(gw, &format!("uid=hu&since={since}&limit=2"));
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["messages"], json!([seen[2], seen[3]]), "{h}");
        assert_eq!(
            (h["more"].as_bool(), &h["last"]),
            (Some(true), &seen[3]["seq"])
        );
        let (status, h) = history(gw, "room=hr");
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["messages"], Value::Array(room_seen.clone()), "{h}");
    }
    assert_eq!(history(&a, "uid=hu&limit=0").0, 400);
    js.nats.pause();
    let t = Instant::now();
    let (status, h) = history(&a, "uid=hu");
    assert_eq!(status, 503, "{h}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The node answered other requests meanwhile and still does.
    assert_eq!(a.control_get("/healthz").0, 200);
    js.nats.resume();
    assert_eq!(
        a.metric(r#"pushgate_history_reads_total{result="unavailable"}"#),
        1.0
    );
}
