//! Several nodes over a real `nats-server`: pushes reach every connection of the
//! recipients wherever they are, exactly once; the bus going away and coming back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use common::nats::{free_port, node, NatsServer};
use common::{post, push_ok, received, Client, Gateway};
use serde_json::{json, Value};

fn ws(gw: &Gateway, uid: &str) -> Client {
    let q: String = url_escape(uid);
    let mut c = Client::connect(gw.client_addr, &format!("/ws?uid={q}"));
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Waits until `gw` holds `n` bus subscriptions (users + rooms + broadcast). The gauge
/// counts only subscriptions NATS has confirmed (by a round trip after them), so a
/// publish from anywhere reaches them from then on.
fn subscribed(gw: &Gateway, n: usize) {
    assert!(
        gw.eventually(Duration::from_secs(10), |g| {
            g.metric("pushgate_bus_subscriptions") == n as f64
        }),
        "expected {n} subscriptions, have {}",
        gw.metric("pushgate_bus_subscriptions")
    );
}

/// Waits until `gw` has noticed that every connection closed.
fn no_connections(gw: &Gateway) {
    assert!(
        gw.eventually(Duration::from_secs(5), |g| {
            g.metric_sum("pushgate_connections") == 0.0
        }),
        "connections never closed"
    );
}

fn api(gw: &Gateway, path: &str, body: Value) -> (u16, String) {
    post(gw.control_addr, path, &body.to_string(), None)
}

#[test]
fn pushes_reach_every_device_on_every_node_exactly_once() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = [
        node(&url, "a", &[]),
        node(&url, "b", &[]),
        node(&url, "c", &[]),
    ];
    let mut alice = ws(&nodes[0], "alice");
    let mut bob = ws(&nodes[1], "bob");
    let mut carol = ws(&nodes[2], "carol");
    // One user, a device on each of two nodes.
    let mut dave_a = ws(&nodes[0], "dave");
    let mut dave_b = ws(&nodes[1], "dave");
    subscribed(&nodes[0], 3);
    subscribed(&nodes[1], 3);
    subscribed(&nodes[2], 2);

    // The same push through each node's API: every device gets each one once, whether
    // its node accepted the push or not.
    for (i, n) in nodes.iter().enumerate() {
        push_ok(
            n,
            json!({"to": ["alice", "bob", "carol", "dave", "dave"], "data": i}),
        );
    }
    for c in [&mut alice, &mut bob, &mut carol, &mut dave_a, &mut dave_b] {
        let mut got = received(c, 400);
        got.sort_by_key(|v| v.as_i64());
        assert_eq!(got, [json!(0), json!(1), json!(2)]);
    }

    // Client `send` across nodes, from the sender's authenticated ID.
    alice.send_text(r#"{"type":"send","to":["bob","dave"],"data":"hi"}"#);
    for c in [&mut bob, &mut dave_a, &mut dave_b] {
        let v = c.recv_json();
        assert_eq!(
            (v["from"].as_str(), &v["data"]),
            (Some("alice"), &json!("hi"))
        );
    }
    for c in [&mut alice, &mut carol, &mut bob, &mut dave_a, &mut dave_b] {
        assert_eq!(received(c, 200), Vec::<Value>::new());
    }

    // A room spanning the nodes, pushed with a member named as a user too: once each.
    for c in [&mut alice, &mut bob, &mut dave_a, &mut dave_b] {
        c.send_text(r#"{"type":"join","room":"r.1 *"}"#);
    }
    subscribed(&nodes[0], 4);
    subscribed(&nodes[1], 4);
    push_ok(
        &nodes[2],
        json!({"to": ["dave", "alice"], "rooms": ["r.1 *"], "data": "room"}),
    );
    push_ok(&nodes[0], json!({"rooms": ["r.1 *"], "data": "room2"}));
    for c in [&mut alice, &mut bob, &mut dave_a, &mut dave_b] {
        // The two pushes took different paths to some of them: order is not promised.
        let mut got = received(c, 400);
        got.sort_by_key(|v| v.to_string());
        assert_eq!(got, [json!("room"), json!("room2")]);
    }
    assert_eq!(received(&mut carol, 100), Vec::<Value>::new());

    // Broadcast through one node reaches every connection of the cluster once.
    let (status, _) = api(&nodes[1], "/v1/broadcast", json!({"data": "all"}));
    assert_eq!(status, 200);
    for c in [&mut alice, &mut bob, &mut carol, &mut dave_a, &mut dave_b] {
        assert_eq!(received(c, 400), [json!("all")]);
    }

    for n in &nodes {
        assert_eq!(n.metric("pushgate_bus_connected"), 1.0);
        assert_eq!(n.metric("pushgate_bus_info{kind=\"nats\"}"), 1.0);
        assert!(n.metric("pushgate_bus_published_total") >= 1.0);
        assert!(n.metric("pushgate_bus_latency_seconds_count") >= 1.0);
        assert_eq!(n.metric("pushgate_bus_invalid_total"), 0.0);
    }
}

#[test]
fn bus_lost_and_restored_mid_run() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a", &[]);
    let b = node(&url, "b", &[]);
    let mut alice = ws(&a, "alice");
    let mut bob = ws(&b, "bob");
    subscribed(&a, 2);
    subscribed(&b, 2);
    push_ok(&a, json!({"to": ["bob"], "data": 1}));
    assert_eq!(received(&mut bob, 300), [json!(1)]);

    nats.kill();
    for n in [&a, &b] {
        assert!(
            n.eventually(Duration::from_secs(10), |g| {
                g.control_get("/readyz").0 == 503
            }),
            "readyz stayed ready without the bus"
        );
        let (_, body) = n.control_get("/readyz");
        assert!(body.contains("cluster bus"), "{body}");
        assert_eq!(n.control_get("/healthz").0, 200);
        assert_eq!(n.metric("pushgate_bus_connected"), 0.0);
    }
    // Local deliveries go on; the push is answered 503 (the rest of the cluster missed
    // it) and counted.
    let (status, body) = api(&a, "/v1/push", json!({"to": ["alice", "bob"], "data": 2}));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("this node"), "{body}");
    assert_eq!(received(&mut alice, 300), [json!(2)]);
    assert_eq!(received(&mut bob, 300), Vec::<Value>::new());
    assert!(a.metric("pushgate_bus_refused_total{reason=\"disconnected\"}") >= 1.0);
    assert!(a.metric("pushgate_push_requests_total{endpoint=\"push\",status=\"503\"}") >= 1.0);
    // A client `send` that needs the bus is told so.
    alice.send_text(r#"{"type":"send","to":["bob"],"data":3}"#);
    let v = alice.recv_json();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    // A user who arrives during the outage is subscribed once the bus is back.
    let mut erin = ws(&b, "erin");

    nats.restart();
    for n in [&a, &b] {
        assert!(
            n.eventually(Duration::from_secs(15), |g| g.control_get("/readyz").0
                == 200),
            "readyz never recovered"
        );
    }
    // The gauge went to 0 with the connection and counts again once NATS confirmed the
    // restored subscriptions.
    subscribed(&a, 2);
    subscribed(&b, 3);
    push_ok(&a, json!({"to": ["bob", "erin"], "data": 4}));
    push_ok(&b, json!({"to": ["alice"], "data": 5}));
    assert_eq!(received(&mut bob, 400), [json!(4)]);
    assert_eq!(received(&mut erin, 100), [json!(4)]);
    assert_eq!(received(&mut alice, 100), [json!(5)]);
    assert!(a.metric("pushgate_bus_connects_total") >= 2.0);
    assert!(a.metric("pushgate_bus_disconnects_total") >= 1.0);
}

#[test]
fn sigterm_exits_promptly_with_the_bus_down() {
    let mut nats = NatsServer::start();
    // The client never answers the close frame: the node waits the drain and then the
    // close timeout for it (2 s), and must not wait on the dead bus on top of that.
    let mut gw = node(
        &nats.url(),
        "n",
        &["--shutdown-drain", "1", "--close-timeout", "1"],
    );
    let _c = ws(&gw, "alice");
    subscribed(&gw, 2);
    nats.kill();
    assert!(
        gw.eventually(Duration::from_secs(10), |g| g.control_get("/readyz").0
            == 503)
    );
    gw.terminate();
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "hung on shutdown"
    );
}

#[test]
fn nats_down_at_start_then_up() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let gw = Gateway::dev(&["--nats", &url, "--node-id", "lonely"]);
    // Serving, routing locally, not ready.
    assert_eq!(gw.control_get("/healthz").0, 200);
    let (status, body) = gw.control_get("/readyz");
    assert_eq!(status, 503, "{body}");
    let mut alice = ws(&gw, "alice");
    let (status, _) = api(&gw, "/v1/push", json!({"to": ["alice"], "data": 1}));
    assert_eq!(status, 503);
    assert_eq!(received(&mut alice, 300), [json!(1)]);

    let nats = NatsServer::start_on(port);
    assert!(
        gw.eventually(Duration::from_secs(15), |g| g.control_get("/readyz").0
            == 200),
        "did not connect once NATS came up"
    );
    subscribed(&gw, 2);
    let mut backend = nats.client();
    backend.publish(
        "pushgate.user.alice",
        br#"{"type":"msg","from":"backend","data":2}"#,
    );
    assert_eq!(received(&mut alice, 400), [json!(2)]);
}

#[test]
fn backends_publish_straight_onto_the_bus() {
    let nats = NatsServer::start();
    let gw = node(&nats.url(), "solo", &["--bus-prefix", "acme.push"]);
    // IDs with dots, wildcards, spaces, percent signs and unicode.
    let odd = "a.b *>c 100% é";
    let mut odd_user = ws(&gw, odd);
    let mut plain = ws(&gw, "plain");
    plain.send_text(r#"{"type":"join","room":"lobby"}"#);
    plain.send_text(r#"{"type":"join","room":"other"}"#);
    odd_user.send_text(r#"{"type":"join","room":"lobby"}"#);
    subscribed(&gw, 5);
    let mut backend = nats.client();

    let subject = "acme.push.user.a%2Eb%20%2A%3Ec%20100%25%20%C3%A9";
    backend.publish(subject, br#"{"type":"msg","from":"svc","data":"odd"}"#);
    assert_eq!(received(&mut odd_user, 400), [json!("odd")]);
    assert_eq!(received(&mut plain, 100), Vec::<Value>::new());
    // The wildcard-looking user is not a wildcard, and the old prefix is not ours.
    backend.publish("acme.push.user.plain", br#"{"type":"msg","data":1}"#);
    backend.publish(
        "pushgate.user.plain",
        br#"{"type":"msg","data":"wrong prefix"}"#,
    );
    assert_eq!(received(&mut plain, 400), [json!(1)]);
    assert_eq!(received(&mut odd_user, 100), Vec::<Value>::new());

    // Copies of one multi-target push: the first delivers to the members of both rooms
    // once, minus the listed users (their own copies reach them); the second copy is a
    // duplicate.
    let targets = "user.a%2Eb%20%2A%3Ec%20100%25%20%C3%A9 room.lobby room.other";
    let headers = [("Pushgate-Id", "backend-1"), ("Pushgate-Targets", targets)];
    let body = br#"{"type":"msg","data":"multi"}"#;
    backend.publish_with_headers("acme.push.room.lobby", &headers, body);
    backend.publish_with_headers("acme.push.room.other", &headers, body);
    backend.publish(subject, body);
    assert_eq!(received(&mut plain, 400), [json!("multi")]);
    assert_eq!(received(&mut odd_user, 100), [json!("multi")]);
    assert_eq!(gw.metric("pushgate_bus_duplicates_total"), 1.0);

    // Bad input from the bus is dropped and counted; the connections stay.
    backend.publish("acme.push.user.plain", b"\xff\xfe not utf-8");
    backend.publish_with_headers(
        "acme.push.room.lobby",
        &[("Pushgate-Id", "b-2"), ("Pushgate-Targets", "user.%zz")],
        body,
    );
    assert!(gw.eventually(Duration::from_secs(5), |g| {
        g.metric("pushgate_bus_invalid_total") == 2.0
    }));
    backend.publish("acme.push.all", br#"{"type":"msg","data":"still here"}"#);
    assert_eq!(received(&mut plain, 400), [json!("still here")]);
    assert_eq!(received(&mut odd_user, 100), [json!("still here")]);
}

#[test]
fn subscriptions_follow_presence_with_a_grace_period() {
    let nats = NatsServer::start();
    let gw = node(&nats.url(), "n", &["--bus-unsubscribe-delay", "0.5"]);
    let c = ws(&gw, "flaky");
    subscribed(&gw, 2);
    let changes = gw.metric("pushgate_bus_interest_changes_total");
    // Gone and back within the grace period: no bus traffic at all.
    drop(c);
    no_connections(&gw);
    let mut c = ws(&gw, "flaky");
    // Not synchronisation: nothing may happen during and past the grace period, and only
    // waiting past it shows that.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(gw.metric("pushgate_bus_subscriptions"), 2.0);
    assert_eq!(gw.metric("pushgate_bus_interest_changes_total"), changes);
    let mut backend = nats.client();
    backend.publish("pushgate.user.flaky", br#"{"type":"msg","data":1}"#);
    assert_eq!(received(&mut c, 400), [json!(1)]);
    // Gone for good: unsubscribed once the grace period ends.
    drop(c);
    subscribed(&gw, 1);
    assert_eq!(
        gw.metric("pushgate_bus_interest_changes_total"),
        changes + 1.0
    );
}

/// Issue 19: users who leave for good while new ones arrive (churn through new IDs) used
/// to stay subscribed for the whole delay, so subscriptions grew with the churn rate.
/// Beyond the drop from the recent peak of local users, at most `--bus-max-lingering`
/// linger.
#[test]
fn departed_users_linger_within_the_bound() {
    let nats = NatsServer::start();
    let gw = node(
        &nats.url(),
        "n",
        &["--bus-unsubscribe-delay", "60", "--bus-max-lingering", "1"],
    );
    let mut online = vec![ws(&gw, "u0")];
    subscribed(&gw, 2);
    // Each round one user leaves for good and a new one arrives: one user online, so
    // one lingering subscription (the bound) besides it, whatever the delay.
    for i in 1..6 {
        online.clear();
        // One at a time: two users online at once would raise the peak, and the bound.
        no_connections(&gw);
        online.push(ws(&gw, &format!("u{i}")));
        subscribed(&gw, 3);
    }
    // The latest departure still lingers: gone and back within the delay costs nothing.
    let changes = settled_interest_changes(&gw);
    online.clear();
    no_connections(&gw);
    online.push(ws(&gw, "u5"));
    online.push(ws(&gw, "u4"));
    subscribed(&gw, 3);
    assert_eq!(settled_interest_changes(&gw), changes);
}

/// The interest-change count once the bus thread has done every change it had: the
/// subscription gauge alone does not say so, since a departure followed by an arrival
/// leaves it where it was while the two changes are still on their way.
fn settled_interest_changes(gw: &Gateway) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut last = gw.metric("pushgate_bus_interest_changes_total");
    loop {
        // Several bus ticks (50 ms) with nothing changed.
        std::thread::sleep(Duration::from_millis(500));
        let now = gw.metric("pushgate_bus_interest_changes_total");
        if now == last {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "interest never settled"
        );
        last = now;
    }
}

/// Issue 19: with nats-server frozen by SIGSTOP the TCP connection stays up, and the node
/// used to stay ready and take pushes it could not forward.
#[test]
fn frozen_bus_makes_the_node_unready_until_it_answers() {
    let nats = NatsServer::start();
    let a = node(&nats.url(), "a", &["--bus-ping-timeout", "1.5"]);
    let mut alice = ws(&a, "alice");
    subscribed(&a, 2);
    push_ok(&a, json!({"to": ["alice"], "data": 1}));
    assert_eq!(received(&mut alice, 200), [json!(1)]);

    nats.pause();
    assert!(
        a.eventually(Duration::from_secs(6), |g| g.control_get("/readyz").0
            == 503),
        "readyz stayed ready with the bus frozen"
    );
    let (_, body) = a.control_get("/readyz");
    assert!(body.contains("cluster bus"), "{body}");
    // Counted by the bus thread on its next pass, which may come just after /readyz saw it.
    assert!(a.eventually(Duration::from_secs(2), |g| {
        g.metric("pushgate_bus_ping_timeouts_total") == 1.0
    }));
    // Handled as a bus that is down: 503 to the API, local delivery still happens.
    let (status, body) = api(&a, "/v1/push", json!({"to": ["alice"], "data": 2}));
    assert_eq!(status, 503, "{body}");
    assert_eq!(received(&mut alice, 300), [json!(2)]);

    nats.resume();
    assert!(
        a.eventually(Duration::from_secs(10), |g| g.control_get("/readyz").0
            == 200),
        "readyz never recovered after SIGCONT"
    );
    subscribed(&a, 2);
    let mut backend = nats.client();
    backend.publish("pushgate.user.alice", br#"{"type":"msg","data":3}"#);
    assert_eq!(received(&mut alice, 400), [json!(3)]);
    push_ok(&a, json!({"to": ["alice"], "data": 4}));
    assert_eq!(received(&mut alice, 300), [json!(4)]);
}

#[test]
fn bad_bus_settings_are_refused_at_start() {
    for (args, expect) in [
        (&["--bus-prefix", "a.*"][..], "bus prefix"),
        (&["--bus-unsubscribe-delay=-1"][..], "bus_unsubscribe_delay"),
        (
            &["--bus-unsubscribe-delay", "99999"][..],
            "bus_unsubscribe_delay",
        ),
        (&["--bus-ping-timeout", "0.1"][..], "bus_ping_timeout"),
        (&["--bus-ping-timeout", "inf"][..], "bus_ping_timeout"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .args([
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--control",
                "127.0.0.1:0",
            ])
            .args(["--nats", "nats://127.0.0.1:1"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
