//! Three nodes over a real `nats-server`: `/v1/presence` answers for the whole cluster
//! and names a node that does not answer in time (one frozen with SIGSTOP), and so does
//! `/v1/rooms/presence` (over two nodes);
//! `/v1/disconnect` closes connections on every node with the code given.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::nats::{node, NatsServer};
use common::{post, Client, Gateway, Read_};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Starts three nodes and waits until each has heard the other two.
fn cluster(nats: &NatsServer) -> [Gateway; 3] {
    let nodes = ["n1", "n2", "n3"].map(|id| node(&nats.url(), id, &[]));
    for gw in &nodes {
        assert!(
            gw.eventually(WAIT, |g| g.metric("pushgate_cluster_peers") == 2.0),
            "the nodes never heard each other"
        );
    }
    nodes
}

fn ws(gw: &Gateway, query: &str) -> Client {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?{query}"));
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

fn presence(gw: &Gateway, query: &str) -> Value {
    let (status, body) = gw.control_get(&format!("/v1/presence?{query}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// (node, device) of each connection listed for `uid`, sorted.
fn where_is(v: &Value, uid: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["users"][uid]
        .as_array()
        .unwrap_or_else(|| panic!("no {uid} in {v}"))
        .iter()
        .map(|e| {
            (
                e["node"].as_str().unwrap().to_owned(),
                e["device"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pair(node: &str, device: &str) -> (String, String) {
    (node.to_owned(), device.to_owned())
}

/// SIGSTOP / SIGCONT to a gateway.
fn signal(gw: &Gateway, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Waits until every thread of `gw` is stopped: `kill` returns once the signal is sent,
/// and a thread busy at that moment may still answer a query that was already queued.
fn stopped(gw: &Gateway) {
    let tasks = format!("/proc/{}/task", gw.pid());
    let all_stopped = || {
        std::fs::read_dir(&tasks).unwrap().all(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            // The state follows the command name in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    };
    let deadline = Instant::now() + WAIT;
    while !all_stopped() {
        assert!(Instant::now() < deadline, "the gateway never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Resumes a stopped gateway when the test ends, passed or failed.
struct Resume<'a>(&'a Gateway);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

#[test]
fn presence_spans_the_cluster_and_names_a_frozen_node() {
    let nats = NatsServer::start();
    let [n1, n2, n3] = cluster(&nats);
    let _a1 = ws(&n1, "uid=alice&device=phone");
    let _a2 = ws(&n2, "uid=alice&device=web");
    let _a3 = ws(&n3, "uid=alice");
    let _b3 = ws(&n3, "uid=bob");

    let want_alice = vec![
        pair("n1", "phone"),
        pair("n2", "web"),
        pair("n3", "default"),
    ];
    // Every node gives the same answer.
    for gw in [&n1, &n2, &n3] {
        let v = presence(gw, "uid=alice&uid=bob&uid=carol");
        assert!(v.get("partial").is_none(), "{v}");
        assert_eq!(where_is(&v, "alice"), want_alice);
        assert_eq!(where_is(&v, "bob"), [pair("n3", "default")]);
        assert_eq!(where_is(&v, "carol"), []);
    }
    // With every node up the answer comes as soon as the last node answered, far
    // within the wait bound (the time is printed for the record, not asserted).
    let start = Instant::now();
    let v = presence(&n1, "uid=alice");
    println!("presence, 3 nodes up: {:?}", start.elapsed());
    assert!(v.get("partial").is_none(), "{v}");

    // n3 frozen: it still counts as alive (it announced lately) and does not answer.
    signal(&n3, "-STOP");
    let resume = Resume(&n3);
    stopped(&n3);
    let start = Instant::now();
    let v = presence(&n1, "uid=alice&uid=bob");
    let took = start.elapsed();
    println!("presence, n3 frozen: {took:?}");
    assert_eq!(v["partial"], serde_json::json!(["n3"]), "{v}");
    assert_eq!(
        where_is(&v, "alice"),
        [pair("n1", "phone"), pair("n2", "web")]
    );
    assert_eq!(where_is(&v, "bob"), []);
    // Bounded by --presence-timeout (80 ms), with slack for a loaded machine.
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A node that missed a deadline is not waited for again until it is heard from.
    let start = Instant::now();
    let v = presence(&n1, "uid=alice");
    println!("presence, n3 frozen, second query: {:?}", start.elapsed());
    assert_eq!(v["partial"], serde_json::json!(["n3"]), "{v}");
    assert_eq!(
        n1.metric("pushgate_presence_queries_total{result=\"partial\"}"),
        2.0
    );
    drop(resume);

    // Back: n3 answers again.
    assert!(
        n1.eventually(WAIT, |g| presence(g, "uid=bob").get("partial").is_none()),
        "n3 never answered again"
    );
    assert_eq!(
        where_is(&presence(&n1, "uid=bob"), "bob"),
        [pair("n3", "default")]
    );
}

#[test]
fn disconnect_closes_a_user_on_every_node() {
    let nats = NatsServer::start();
    let [n1, n2, n3] = cluster(&nats);
    // Connections without ?device= are all on the default device (a named device lives
    // on one node at most: see the next test).
    let mut a1 = ws(&n1, "uid=alice");
    let mut a2 = ws(&n2, "uid=alice&device=web");
    let mut a3 = ws(&n3, "uid=alice");
    let mut bob = ws(&n2, "uid=bob");

    // The default device only, asked on n2 (which holds none of its connections).
    let body = r#"{"uid":"alice","device":"default","code":4403,"reason":"banned"}"#;
    let (status, answer) = post(n2.control_addr, "/v1/disconnect", body, None);
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["closed"], 0);
    assert_eq!(v["nodes"], serde_json::json!(["n1", "n3"]));
    for c in [&mut a1, &mut a3] {
        assert_eq!(c.close_frame(WAIT), (4403, "banned".to_owned()));
        // The client answers the close; the connection is gone once it has.
        c.send_close(4403);
        c.expect_eof(WAIT);
    }
    for c in [&mut a2, &mut bob] {
        assert!(matches!(c.read(Duration::from_millis(200)), Read_::Timeout));
    }
    // Every device, asked on n1: the web one on n2 goes too.
    let body = r#"{"uid":"alice","code":1008}"#;
    let (status, _) = post(n1.control_addr, "/v1/disconnect", body, None);
    assert_eq!(status, 200);
    assert_eq!(a2.close_frame(WAIT).0, 1008);
    assert!(matches!(
        bob.read(Duration::from_millis(200)),
        Read_::Timeout
    ));
    // Two requests, and n2's replacement of alice's "web" device when it connected.
    assert_eq!(
        n3.metric("pushgate_bus_control_received_total{kind=\"disconnect\"}"),
        3.0
    );
    assert_eq!(
        n3.metric("pushgate_router_closes_total{reason=\"disconnect\"}"),
        1.0
    );
}

#[test]
fn a_device_reconnecting_to_another_node_replaces_its_old_connection() {
    let nats = NatsServer::start();
    let [n1, n2, n3] = cluster(&nats);
    let mut phone = ws(&n1, "uid=alice&device=phone");
    let mut web = ws(&n3, "uid=alice&device=web");
    let mut plain = ws(&n3, "uid=alice");
    // The phone comes back through n2: its connection on n1 goes with 4008.
    let mut phone2 = ws(&n2, "uid=alice&device=phone");
    let (code, reason) = phone.close_frame(WAIT);
    assert_eq!(code, 4008);
    assert!(reason.contains("same device"), "{reason}");
    phone.send_close(4008);
    phone.expect_eof(WAIT);
    for c in [&mut web, &mut plain, &mut phone2] {
        assert!(matches!(c.read(Duration::from_millis(200)), Read_::Timeout));
    }
    let v = presence(&n1, "uid=alice");
    assert_eq!(
        where_is(&v, "alice"),
        [
            pair("n2", "phone"),
            pair("n3", "default"),
            pair("n3", "web")
        ]
    );
    assert_eq!(
        n1.metric("pushgate_router_closes_total{reason=\"replaced\"}"),
        1.0
    );
}

/// Issue 31: a presence query whose reply subject was `pushgate.all` made the node
/// broadcast its presence answer to every client. Requests are answered only on control
/// inboxes; the others are counted and not answered.
#[test]
fn a_presence_query_is_never_answered_on_a_delivery_subject() {
    let nats = NatsServer::start();
    // Two nodes: each answers, and the other's answer would come back as a broadcast.
    let gw = node(&nats.url(), "n1", &[]);
    let other = node(&nats.url(), "n2", &[]);
    for g in [&gw, &other] {
        assert!(g.eventually(WAIT, |g| g.metric("pushgate_cluster_peers") == 1.0));
    }
    let mut alice = ws(&gw, "uid=alice");
    assert!(gw.eventually(WAIT, |g| g.metric("pushgate_bus_subscriptions") >= 2.0));
    let mut backend = nats.client();
    let query = br#"{"node":"attacker","uids":["alice"]}"#;
    for reply in [
        "pushgate.all",
        "pushgate.user.alice",
        "pushgate.ctl.reply.>",
    ] {
        backend.request("pushgate.ctl.presence", reply, query);
    }
    match alice.read(Duration::from_millis(700)) {
        Read_::Timeout => {}
        other => panic!("the client got {other:?}"),
    }
    assert!(gw.eventually(WAIT, |g| g
        .metric("pushgate_bus_control_received_total{kind=\"bad_reply\"}")
        == 3.0));
    assert_eq!(
        gw.metric("pushgate_bus_control_received_total{kind=\"presence\"}"),
        0.0
    );
}

fn room_presence(gw: &Gateway, query: &str) -> Value {
    let (status, body) = gw.control_get(&format!("/v1/rooms/presence?{query}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// (uid, device, node) of each member listed, in the answer's order.
fn members(v: &Value) -> Vec<(String, String, String)> {
    v["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {v}"))
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_owned();
            (s("uid"), s("device"), s("node"))
        })
        .collect()
}

fn m(uid: &str, device: &str, node: &str) -> (String, String, String) {
    (uid.to_owned(), device.to_owned(), node.to_owned())
}

/// Joins `room` and waits for the answer (requests are handled in order).
fn join(c: &mut Client, room: &str) {
    c.send_text(&format!(r#"{{"type":"join","room":"{room}"}}"#));
    c.send_text(r#"{"type":"ping"}"#);
    assert_eq!(c.recv_json()["type"], "pong");
}

/// Room presence over two nodes: members and counts from both, the limit over the
/// whole cluster, the count form, and a frozen node named in `partial`.
#[test]
fn room_presence_spans_two_nodes_and_names_a_frozen_one() {
    let nats = NatsServer::start();
    // The wait for the other node is not the subject until it is frozen: a generous
    // one, so that a descheduled live node is never named.
    let args = ["--presence-timeout", "3"];
    let n1 = node(&nats.url(), "n1", &args);
    let n2 = node(&nats.url(), "n2", &args);
    for gw in [&n1, &n2] {
        assert!(
            gw.eventually(WAIT, |g| g.metric("pushgate_cluster_peers") == 1.0),
            "the nodes never heard each other"
        );
    }
    let mut a1 = ws(&n1, "uid=alice&device=phone");
    let mut a2 = ws(&n2, "uid=alice&device=web");
    let mut b2 = ws(&n2, "uid=bob");
    let mut c1 = ws(&n1, "uid=carol");
    for c in [&mut a1, &mut a2, &mut b2] {
        join(c, "team");
    }
    join(&mut c1, "other");

    let everyone = vec![
        m("alice", "phone", "n1"),
        m("alice", "web", "n2"),
        m("bob", "default", "n2"),
    ];
    for gw in [&n1, &n2] {
        let v = room_presence(gw, "room=team");
        assert!(v.get("partial").is_none(), "{v}");
        assert_eq!(members(&v), everyone, "{v}");
        assert_eq!(
            (
                v["connections"].as_u64(),
                v["users"].as_u64(),
                v["more"].as_bool()
            ),
            (Some(3), Some(2), Some(false)),
            "{v}"
        );
        let v = room_presence(gw, "room=team&count_only=1");
        assert_eq!(
            v,
            serde_json::json!({"ok": true, "room": "team", "connections": 3})
        );
        // The limit holds for the whole cluster: the first two in the answer's order.
        let v = room_presence(gw, "room=team&limit=2");
        assert_eq!(members(&v), everyone[..2], "{v}");
        assert_eq!(
            (v["connections"].as_u64(), v["more"].as_bool()),
            (Some(3), Some(true))
        );
    }
    assert_eq!(
        n2.metric("pushgate_room_presence_queries_total{result=\"complete\"}"),
        3.0
    );

    // n2 frozen: named in `partial`, its members and count missing.
    signal(&n2, "-STOP");
    let resume = Resume(&n2);
    stopped(&n2);
    let start = Instant::now();
    let v = room_presence(&n1, "room=team");
    println!("room presence, n2 frozen: {:?}", start.elapsed());
    assert_eq!(v["partial"], serde_json::json!(["n2"]), "{v}");
    assert_eq!(members(&v), [m("alice", "phone", "n1")], "{v}");
    assert_eq!(v["connections"], 1);
    let v = room_presence(&n1, "room=team&count_only=1");
    assert_eq!(v["partial"], serde_json::json!(["n2"]), "{v}");
    assert_eq!(v["connections"], 1);
    assert_eq!(
        n1.metric("pushgate_room_presence_queries_total{result=\"partial\"}"),
        2.0
    );
    drop(resume);

    // Back: n2 answers again.
    assert!(
        n1.eventually(WAIT, |g| room_presence(g, "room=team")
            .get("partial")
            .is_none()),
        "n2 never answered again"
    );
    assert_eq!(members(&room_presence(&n1, "room=team")), everyone);
}
