//! The undelivered hook: a message to a user that none of the user's devices acked within
//! `--undelivered-after` is POSTed once to `--webhook-url` (signed, batched, retried,
//! bounded) and published on `<prefix>.events` with connect and disconnect events;
//! exactly once in a cluster, by the node that accepted the push.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nats::{node, Js};
use common::{post, Client, Gateway};
use serde_json::{json, Value};

/// Long enough for anything on a loaded machine; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "webhook-test-secret";

/// How the test webhook answers.
#[derive(Clone, Copy)]
enum Mode {
    /// 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Reads the request and never answers.
    Silent,
}

/// A webhook target on 127.0.0.1:0 recording each request's body and signature header.
struct Hook {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    seen: Arc<AtomicUsize>,
}

impl Hook {
    fn start(mode: Mode) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let (r, n) = (Arc::clone(&requests), Arc::clone(&seen));
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let Some((sig, body)) = read_request(&stream) else {
                    continue;
                };
                let i = n.fetch_add(1, Ordering::SeqCst);
                let status = match mode {
                    Mode::FailFirst(k) if i < k => 500,
                    Mode::FailFirst(_) => 200,
                    Mode::Silent => {
                        held.push(stream);
                        continue;
                    }
                };
                if status == 200 {
                    r.lock().unwrap().push((sig, body));
                }
                let mut s = stream;
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
        });
        Hook {
            addr,
            requests,
            seen,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every undelivered event accepted so far, with each request's signature checked.
    fn events(&self) -> Vec<Value> {
        let reqs = self.requests.lock().unwrap();
        let mut out = Vec::new();
        for (sig, body) in reqs.iter() {
            out.extend(body["events"].as_array().unwrap().iter().cloned());
            assert!(sig.starts_with("sha256="), "{sig}");
        }
        out
    }
}

/// (signature header, JSON body) of one request; checks the signature against the raw
/// body.
fn read_request(stream: &TcpStream) -> Option<(String, Value)> {
    stream.set_read_timeout(Some(WAIT)).ok()?;
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    assert!(line.starts_with("POST /hook HTTP/1.1"), "{line}");
    let (mut len, mut sig) = (0usize, String::new());
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "x-pushgate-signature" => sig = v.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let expected = format!(
        "sha256={}",
        pushgate::webhook::signature(SECRET.as_bytes(), &body)
    );
    assert_eq!(
        sig, expected,
        "the signature is the HMAC of the body as sent"
    );
    Some((sig, serde_json::from_slice(&body).unwrap()))
}

fn ws(gw: &Gateway, query: &str) -> Client {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?{query}"));
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

fn push(gw: &Gateway, body: Value) -> Value {
    let (status, b) = post(gw.control_addr, "/v1/push", &body.to_string(), None);
    assert_eq!(status, 200, "{b}");
    serde_json::from_str(&b).unwrap()
}

/// The node's flags for `hook`, with deadlines of `after` seconds: long enough, where a
/// client acks, for the ack to arrive on a loaded machine.
fn hook_args(hook: &Hook, after: &str) -> Vec<String> {
    [
        "--undelivered-after",
        after,
        "--webhook-url",
        &hook.url(),
        "--webhook-secret",
        SECRET,
        "--client-rate",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn metric(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        "pushgate_undelivered_total{{result=\"{result}\"}}"
    ))
}

#[test]
fn an_unacked_message_is_reported_once_and_an_acked_one_never() {
    let hook = Hook::start(Mode::FailFirst(0));
    let args = hook_args(&hook, "3");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::dev(&args);
    let mut alice = ws(&gw, "uid=alice&device=phone");
    let a = push(&gw, json!({"to": ["alice"], "id": "m1", "data": 1}));
    let b = push(&gw, json!({"to": ["alice", "bob"], "id": "m2", "data": 2}));
    assert_eq!(a["seq"]["alice"], 1, "{a}");
    assert_eq!(b["seq"]["alice"], 2, "{b}");
    // alice's phone acks the first only: an ack covers every seq up to it.
    assert_eq!(alice.recv_json()["seq"], 1);
    alice.send_text(r#"{"type":"ack","seq":1}"#);
    assert!(
        gw.eventually(WAIT, |g| metric(g, "tracked") == 3.0
            && metric(g, "acked") + metric(g, "notified") == 3.0
            && g.metric("pushgate_webhook_events_total{result=\"sent\"}") == 2.0),
        "not every deadline ended"
    );
    assert_eq!((metric(&gw, "acked"), metric(&gw, "notified")), (1.0, 2.0));
    let mut events = hook.events();
    events.sort_by_key(|e| e["uid"].as_str().unwrap().to_owned());
    assert_eq!(events.len(), 2, "{events:?}");
    for (e, uid) in events.iter().zip(["alice", "bob"]) {
        assert_eq!(e["type"], "undelivered");
        assert_eq!(e["uid"], uid);
        assert_eq!(
            e["messages"],
            json!([{"id": "m2", "seq": if uid == "alice" { 2 } else { 1 }}])
        );
    }
    // Nothing is pending: no second notice can come.
    assert_eq!(gw.metric("pushgate_undelivered_pending"), 0.0);
}

#[test]
fn a_webhook_answering_500_is_retried() {
    let hook = Hook::start(Mode::FailFirst(2));
    let args = hook_args(&hook, "1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::dev(&args);
    push(&gw, json!({"to": ["dana"], "id": "x1", "data": 1}));
    assert!(
        gw.eventually(WAIT, |g| g
            .metric("pushgate_webhook_events_total{result=\"sent\"}")
            == 1.0),
        "never delivered"
    );
    assert_eq!(gw.metric("pushgate_webhook_retries_total"), 2.0);
    assert_eq!(hook.seen.load(Ordering::SeqCst), 3);
    let events = hook.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["messages"], json!([{"id": "x1", "seq": 1}]));
}

#[test]
fn a_webhook_that_never_answers_is_bounded() {
    let hook = Hook::start(Mode::Silent);
    let mut args = hook_args(&hook, "1");
    args.extend(
        [
            "--webhook-timeout",
            "2",
            "--webhook-retries",
            "0",
            "--webhook-queue",
            "2",
            "--webhook-batch",
            "1",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::dev(&args);
    // Ten users' deadlines at once: one is in flight, two queue, the rest are dropped.
    let users: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    push(&gw, json!({"to": users, "data": 0}));
    let ended = |g: &Gateway| {
        ["sent", "failed", "dropped"]
            .iter()
            .map(|r| g.metric(&format!("pushgate_webhook_events_total{{result=\"{r}\"}}")))
            .sum::<f64>()
    };
    assert!(gw.eventually(Duration::from_secs(60), |g| ended(g) == 10.0));
    let dropped = gw.metric("pushgate_webhook_events_total{result=\"dropped\"}");
    let failed = gw.metric("pushgate_webhook_events_total{result=\"failed\"}");
    assert!(
        dropped >= 1.0 && failed >= 1.0,
        "dropped {dropped}, failed {failed}"
    );
    assert_eq!(
        gw.metric("pushgate_webhook_events_total{result=\"sent\"}"),
        0.0
    );
    assert_eq!(gw.control_get("/healthz").0, 200);
}

/// A NATS subscriber collecting the JSON payloads on `subject`.
fn subscribe(url: &str, subject: &str) -> Arc<Mutex<Vec<Value>>> {
    let addr = url.trim_start_matches("nats://");
    let stream = TcpStream::connect(addr).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    w.write_all(format!("CONNECT {{\"verbose\":false}}\r\nSUB {subject} 1\r\nPING\r\n").as_bytes())
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "PONG", "subscribed");
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    std::thread::spawn(move || loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line.starts_with("PING") {
            let _ = w.write_all(b"PONG\r\n");
        } else if line.starts_with("MSG ") {
            let len: usize = line.split_whitespace().last().unwrap().parse().unwrap();
            let mut body = vec![0; len + 2];
            r.read_exact(&mut body).unwrap();
            body.truncate(len);
            g.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
        }
    });
    got
}

#[test]
fn exactly_one_notice_per_message_across_two_nodes_and_events_on_the_bus() {
    let js = Js::start();
    let url = js.nats.url();
    let events = subscribe(&url, "pushgate.events");
    let hook = Hook::start(Mode::FailFirst(0));
    let mut args = hook_args(&hook, "3");
    args.extend(["--bus-events", "true"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n1 = node(&url, "n1", &args);
    let n2 = node(&url, "n2", &args);
    for gw in [&n1, &n2] {
        assert!(gw.eventually(WAIT, |g| g.metric("pushgate_cluster_peers") == 1.0));
    }
    let mut alice = ws(&n2, "uid=alice&device=phone");
    // Accepted by n1, delivered on n2, acked there: n1 owns the deadlines and learns of
    // the ack from the stream's subject.
    let a = push(&n1, json!({"to": ["alice"], "id": "c1", "data": 1}));
    let b = push(&n1, json!({"to": ["alice"], "id": "c2", "data": 2}));
    let (s1, s2) = (
        a["seq"]["alice"].as_u64().unwrap(),
        b["seq"]["alice"].as_u64().unwrap(),
    );
    assert_eq!(alice.recv_json()["seq"], s1);
    alice.send_text(&format!(r#"{{"type":"ack","seq":{s1}}}"#));
    // And one to an offline user through n2.
    push(&n2, json!({"to": ["carol"], "id": "c3", "data": 3}));
    let done = |g: &Gateway, n: f64| metric(g, "acked") + metric(g, "notified") == n;
    assert!(n1.eventually(WAIT, |g| done(g, 2.0)), "n1's deadlines");
    assert!(n2.eventually(WAIT, |g| done(g, 1.0)), "n2's deadline");
    assert_eq!((metric(&n1, "acked"), metric(&n1, "notified")), (1.0, 1.0));
    assert_eq!((metric(&n2, "acked"), metric(&n2, "notified")), (0.0, 1.0));
    let sent = |g: &Gateway| g.metric("pushgate_webhook_events_total{result=\"sent\"}");
    assert!(n1.eventually(WAIT, |g| sent(g) == 1.0));
    assert!(n2.eventually(WAIT, |g| sent(g) == 1.0));
    let mut got = hook.events();
    got.sort_by_key(|e| e["uid"].as_str().unwrap().to_owned());
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (&got[0]["uid"], &got[0]["node"], &got[0]["messages"]),
        (
            &json!("alice"),
            &json!("n1"),
            &json!([{"id": "c2", "seq": s2}])
        )
    );
    assert_eq!(
        (&got[1]["uid"], &got[1]["node"]),
        (&json!("carol"), &json!("n2"))
    );

    // The bus got the same notices, and alice's connect and disconnect.
    drop(alice);
    let has = |t: &str, uid: &str| {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == t && e["uid"] == uid)
            .count()
    };
    let until = std::time::Instant::now() + WAIT;
    while has("disconnect", "alice") == 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(has("connect", "alice"), 1);
    assert_eq!(has("disconnect", "alice"), 1);
    assert_eq!(has("undelivered", "alice"), 1);
    assert_eq!(has("undelivered", "carol"), 1);
    let ev = events.lock().unwrap();
    let c = ev.iter().find(|e| e["type"] == "connect").unwrap();
    assert_eq!((&c["device"], &c["node"]), (&json!("phone"), &json!("n2")));
}
