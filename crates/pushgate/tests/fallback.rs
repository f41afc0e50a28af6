//! The fallback transports on the client listener: `GET /sse`, `GET /poll`, `POST /send`
//! (docs/PROTOCOL.md, "Fallback transports"), against `curl`, headless Chromium's
//! `EventSource` and raw HTTP clients: delivery, resume, presence and kicks, limits and
//! the statuses and counters of bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{http, post, Client, Gateway};
use serde_json::{json, Value};

/// One event of a stream: comments are returned too (heartbeats), `retry:` blocks not.
#[derive(Debug, Default)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: bool,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// A blocking `text/event-stream` reader over a raw socket.
struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    status: u16,
    head: String,
}

impl Sse {
    fn open(addr: SocketAddr, target: &str, extra: &str) -> Sse {
        Sse::open_on(TcpStream::connect(addr).unwrap(), target, extra)
    }

    fn open_on(mut stream: TcpStream, target: &str, extra: &str) -> Sse {
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n"
        )
        .unwrap();
        let mut sse = Sse {
            stream,
            buf: Vec::new(),
            status: 0,
            head: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let end = loop {
            if let Some(p) = sse.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            assert!(sse.fill(deadline), "no response head");
        };
        sse.head = String::from_utf8_lossy(&sse.buf[..end]).into_owned();
        sse.status = sse.head.split(' ').nth(1).unwrap().parse().unwrap();
        sse.buf.drain(..end + 4);
        sse
    }

    /// Reads more; false on EOF, error or the deadline.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next event or comment within `limit`.
    fn next(&mut self, limit: Duration) -> Option<Event> {
        let deadline = Instant::now() + limit;
        loop {
            while let Some(p) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf.drain(..p + 2).collect()).unwrap();
                let mut e = Event::default();
                let mut data = Vec::new();
                let mut retry_only = true;
                for line in block.lines() {
                    if line.starts_with(':') {
                        e.comment = true;
                        retry_only = false;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_owned());
                        retry_only = false;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        e.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        e.event = Some(v.to_owned());
                    }
                }
                if retry_only {
                    continue;
                }
                e.data = data.join("\n");
                return Some(e);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// The next event that is not a heartbeat comment.
    fn next_event(&mut self, limit: Duration) -> Option<Event> {
        let deadline = Instant::now() + limit;
        loop {
            let e = self.next(deadline.saturating_duration_since(Instant::now()))?;
            if !e.comment {
                return Some(e);
            }
        }
    }

    /// Reads until the server closes; true if it did within `limit`.
    fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut chunk = [0u8; 16384];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

/// A push through `/v1/push` to one user; its seq.
fn push(gw: &Gateway, uid: &str, data: Value) -> u64 {
    let (status, body) = post(
        gw.control_addr,
        "/v1/push",
        &json!({"to": [uid], "data": data}).to_string(),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["seq"][uid].as_u64().unwrap()
}

/// One `GET` on a fresh connection; (status, head, body).
fn get(addr: SocketAddr, target: &str, extra: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"),
    )
}

fn poll(addr: SocketAddr, target: &str) -> Value {
    let (status, body) = get(addr, target, "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Writes one `POST /send` on `s` and reads its answer (Content-Length framed, so the
/// connection may stay open); (status, head, body).
fn send_on(s: &mut TcpStream, target: &str, body: &str) -> (u16, String, Value) {
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed before answer");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, serde_json::from_slice(&body).unwrap())
}

#[test]
fn curl_receives_pushes_as_events() {
    let gw = Gateway::dev(&[]);
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "20"])
        .arg(format!("http://{}/sse?uid=alice", gw.client_addr))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let (tx, rx) = mpsc::channel();
    let stdout = curl.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_data = |rx: &mpsc::Receiver<String>| -> (Option<String>, Value) {
        let mut id = None;
        loop {
            let line = rx.recv_timeout(Duration::from_secs(10)).expect("curl line");
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            }
            if let Some(v) = line.strip_prefix("data: ") {
                return (id, serde_json::from_str(v).unwrap());
            }
        }
    };
    let (id, welcome) = next_data(&rx);
    assert_eq!((id, welcome["type"].as_str()), (None, Some("welcome")));
    assert_eq!(welcome["uid"], "alice");
    for i in 1..=3 {
        let seq = push(&gw, "alice", json!({"n": i}));
        let (id, msg) = next_data(&rx);
        assert_eq!(id, Some(seq.to_string()));
        assert_eq!(msg["data"], json!({"n": i}));
        assert_eq!(msg["seq"], seq);
    }
    let _ = curl.kill();
    let _ = curl.wait();
    assert_eq!(
        gw.metric("pushgate_transport_messages_delivered_total{transport=\"sse\"}"),
        3.0
    );
}

/// The same transports over TLS (the reactors decrypt before the session and seal what
/// it queues, events and answers alike).
#[test]
fn curl_streams_and_sends_over_https() {
    let pki = common::tls::TestPki::new("sse", "pushgate-test");
    let gw = pki.gateway(&[]);
    let base = format!("https://127.0.0.1:{}", gw.client_addr.port());
    let ca = pki.ca.display().to_string();
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "20", "--cacert", &ca])
        .arg(format!("{base}/sse?uid=alice"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut lines = BufReader::new(curl.stdout.take().unwrap()).lines();
    let mut data_line = || loop {
        let line = lines.next().expect("stream ended").unwrap();
        if let Some(v) = line.strip_prefix("data: ") {
            return serde_json::from_str::<Value>(v).unwrap();
        }
    };
    assert_eq!(data_line()["type"], "welcome");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert", &ca, "--data-binary"])
        .arg(r#"{"type":"send","to":["alice"],"data":"over tls"}"#)
        .arg(format!("{base}/send?uid=bob"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"ok":true}"#);
    let m = data_line();
    assert_eq!(
        (m["from"].as_str(), m["data"].as_str()),
        (Some("bob"), Some("over tls"))
    );
    let _ = curl.kill();
    let _ = curl.wait();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert", &ca])
        .arg(format!("{base}/poll?uid=alice&since=0"))
        .output()
        .expect("curl");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["messages"][0]["data"], "over tls");
}

#[test]
fn stream_resumes_with_last_event_id_and_sends_heartbeats() {
    let gw = Gateway::dev(&["--heartbeat", "0.3"]);
    let mut sse = Sse::open(gw.client_addr, "/sse?uid=bob", "");
    assert_eq!(sse.status, 200);
    assert!(sse.head.contains("Content-Type: text/event-stream"));
    assert!(sse.head.contains("Cache-Control: no-cache"));
    assert_eq!(
        sse.next_event(Duration::from_secs(5)).unwrap().json()["type"],
        "welcome"
    );
    // Pretty-printed JSON with raw line breaks stays one event.
    let (status, _) = post(
        gw.control_addr,
        "/v1/push",
        "{\"to\":[\"bob\"],\n\"data\":{\"a\":\n[1,\r\n2]}}",
        None,
    );
    assert_eq!(status, 200);
    for i in 2..=5 {
        push(&gw, "bob", json!(i));
    }
    let mut ids = Vec::new();
    for _ in 1..=5 {
        let e = sse.next_event(Duration::from_secs(5)).unwrap();
        ids.push(e.id.clone().unwrap());
        if ids.len() == 1 {
            assert_eq!(e.json()["data"], json!({"a": [1, 2]}));
        }
    }
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    // Idle: a heartbeat comment every interval.
    let beat = sse.next(Duration::from_secs(3)).unwrap();
    assert!(beat.comment, "{beat:?}");
    drop(sse);
    // Pushed while away: resumed after Last-Event-ID exactly, then live, no duplicate.
    // The header wins over the URL's `since`.
    assert!(gw.eventually(Duration::from_secs(5), |g| g
        .metric("pushgate_transport_connections{transport=\"sse\"}")
        == 0.0));
    for i in 6..=8 {
        push(&gw, "bob", json!(i));
    }
    let mut sse = Sse::open(
        gw.client_addr,
        "/sse?uid=bob&since=1",
        "Last-Event-ID: 5\r\n",
    );
    let welcome = sse.next_event(Duration::from_secs(5)).unwrap().json();
    assert_eq!(
        (welcome["seq"].as_u64(), welcome["recovered"].as_bool()),
        (Some(8), Some(true))
    );
    push(&gw, "bob", json!(9));
    let got: Vec<(String, Value)> = (0..4)
        .map(|_| {
            let e = sse.next_event(Duration::from_secs(5)).unwrap();
            (e.id.clone().unwrap(), e.json()["data"].clone())
        })
        .collect();
    assert_eq!(
        got,
        [6, 7, 8, 9].map(|n| (n.to_string(), json!(n))).to_vec()
    );
    assert!(sse.next_event(Duration::from_millis(700)).is_none());
    // And `since` in the URL alone resumes the same way.
    let mut sse = Sse::open(gw.client_addr, "/sse?uid=bob&since=8", "");
    sse.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(
        sse.next_event(Duration::from_secs(5))
            .unwrap()
            .id
            .as_deref(),
        Some("9")
    );
    assert!(gw.metric("pushgate_heartbeats_sent_total") >= 1.0);
}

#[test]
fn a_stream_is_a_connection_of_its_user() {
    let gw = Gateway::dev(&["--max-conns-per-user", "2"]);
    let mut sse = Sse::open(gw.client_addr, "/sse?uid=carol&device=phone", "");
    sse.next_event(Duration::from_secs(5)).unwrap();
    let mut ws = Client::connect(gw.client_addr, "/ws?uid=carol&device=laptop");
    assert_eq!(ws.recv_json()["type"], "welcome");
    // Presence lists both, multi-device delivery reaches both.
    let (_, body) = gw.control_get("/v1/presence?uid=carol");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut devices: Vec<&str> = v["users"]["carol"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device"].as_str().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, ["laptop", "phone"]);
    push(&gw, "carol", json!("both"));
    assert_eq!(
        sse.next_event(Duration::from_secs(5)).unwrap().json()["data"],
        "both"
    );
    assert_eq!(ws.recv_json()["data"], "both");
    // A broadcast reaches the stream too, without an id (it has no seq).
    let (status, _) = post(gw.control_addr, "/v1/broadcast", r#"{"data":"all"}"#, None);
    assert_eq!(status, 200);
    let e = sse.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (e.id.clone(), e.json()["data"].clone()),
        (None, json!("all"))
    );
    ws.recv_json();
    // A kick closes the stream, with a last `close` event.
    let (status, body) = post(
        gw.control_addr,
        "/v1/disconnect",
        r#"{"uid":"carol","device":"phone","code":4001,"reason":"bye"}"#,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let e = sse.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(e.event.as_deref(), Some("close"));
    assert_eq!(
        (e.json()["code"].as_u64(), e.json()["reason"].as_str()),
        (Some(4001), Some("bye"))
    );
    assert!(sse.closed_within(Duration::from_secs(5)));
    // Per-user limit: two more streams make three; the oldest connection goes (4008).
    let mut s2 = Sse::open(gw.client_addr, "/sse?uid=carol", "");
    s2.next_event(Duration::from_secs(5)).unwrap();
    let mut s3 = Sse::open(gw.client_addr, "/sse?uid=carol&device=tablet", "");
    s3.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(ws.expect_close(Duration::from_secs(5)).0, 4008);
    // Counted until the socket goes (the close handshake); the client hangs up.
    drop(ws);
    assert!(gw.eventually(Duration::from_secs(5), |g| g
        .metric("pushgate_transport_connections{transport=\"sse\"}")
        == 2.0
        && g.metric("pushgate_transport_connections{transport=\"ws\"}") == 0.0));
}

#[test]
fn a_slow_stream_reader_is_closed_and_counted() {
    let gw = Gateway::dev(&[
        "--max-outbound-bytes",
        "65536",
        "--max-outbound-messages",
        "64",
    ]);
    let mut slow = Sse::open_on(common::slow_socket(gw.client_addr), "/sse?uid=slow", "");
    slow.next_event(Duration::from_secs(5)).unwrap();
    let mut good = Sse::open(gw.client_addr, "/sse?uid=good", "");
    good.next_event(Duration::from_secs(5)).unwrap();
    let big = "x".repeat(16 * 1024);
    let start = Instant::now();
    let mut pushes = 0;
    while gw.metric("pushgate_slow_consumer_closes_total") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(20), "never closed");
        push(&gw, "slow", json!(big));
        pushes += 1;
        assert!(pushes < 2000);
    }
    push(&gw, "good", json!("fine"));
    assert_eq!(
        good.next_event(Duration::from_secs(5)).unwrap().json()["data"],
        "fine"
    );
    assert!(slow.closed_within(Duration::from_secs(20)));
    assert!(gw.metric("pushgate_messages_dropped_total{reason=\"slow_consumer\"}") >= 1.0);
    assert_eq!(
        gw.metric("pushgate_transport_connections{transport=\"sse\"}"),
        1.0
    );
}

#[test]
fn a_long_poll_loop_loses_nothing_across_1000_pushes() {
    let gw = Gateway::dev(&["--poll-timeout", "2"]);
    let addr = gw.client_addr;
    let control = gw.control_addr;
    const N: u64 = 1000;
    let pusher = std::thread::spawn(move || {
        // A steady rate: 1 000 pushes over about two seconds.
        let start = Instant::now();
        for i in 1..=N {
            let due = start + Duration::from_millis(2 * i);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let (status, body) = post(
                control,
                "/v1/push",
                &json!({"to": ["dave"], "data": i}).to_string(),
                None,
            );
            assert_eq!(status, 200, "{body}");
        }
    });
    // The poll loop starts from 0 (nothing yet, or the first pushes are replayed).
    let mut since = 0;
    let mut got = Vec::new();
    let mut polls = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (got.len() as u64) < N {
        assert!(
            Instant::now() < deadline,
            "only {} after {polls} polls",
            got.len()
        );
        let v = poll(addr, &format!("/poll?uid=dave&since={since}"));
        polls += 1;
        for m in v["messages"].as_array().unwrap() {
            assert_eq!(m["type"], "msg");
            got.push(m["data"].as_u64().unwrap());
            assert_eq!(m["seq"], m["data"], "user seq equals the push index");
        }
        since = v["seq"].as_u64().unwrap();
    }
    pusher.join().unwrap();
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "in order, none lost, none twice"
    );
    assert!(gw.metric("pushgate_poll_answers_total{result=\"messages\"}") >= 1.0);
    println!("{N} messages in {polls} polls");
}

#[test]
fn a_parked_poll_is_a_connection_of_its_user_and_times_out_empty() {
    let gw = Gateway::dev(&["--poll-timeout", "0.5"]);
    // Nothing after `since`: answered empty at the timeout, with the latest seq.
    let start = Instant::now();
    let v = poll(gw.client_addr, "/poll?uid=erin&since=0");
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(v, json!({"messages": [], "seq": 0}));
    assert_eq!(
        gw.metric("pushgate_poll_answers_total{result=\"timeout\"}"),
        1.0
    );
    // Parked: routed to, listed in presence, answered at the first message.
    let addr = gw.client_addr;
    let parked = std::thread::spawn(move || {
        let (status, body) = get(
            addr,
            "/poll?uid=erin&device=web",
            "Origin: http://app.example\r\n",
        );
        (status, body)
    });
    assert!(gw.eventually(Duration::from_secs(5), |g| g
        .metric("pushgate_transport_connections{transport=\"poll\"}")
        == 1.0));
    let (_, body) = gw.control_get("/v1/presence?uid=erin");
    assert!(body.contains("\"device\":\"web\""), "{body}");
    let seq = push(&gw, "erin", json!({"hello": "poll"}));
    let (status, body) = parked.join().unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["seq"], seq);
    assert_eq!(v["messages"][0]["data"], json!({"hello": "poll"}));
    assert!(gw.eventually(Duration::from_secs(5), |g| g
        .metric("pushgate_transport_connections{transport=\"poll\"}")
        == 0.0));
}

#[test]
fn http_send_reaches_a_ws_user_with_keep_alive_and_rate_limit() {
    let gw = Gateway::dev(&["--client-rate", "1"]);
    let mut bob = Client::connect(gw.client_addr, "/ws?uid=bob");
    bob.recv_json();
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    let body = r#"{"type":"send","to":["bob"],"data":{"t":"hi"}}"#;
    // The bucket holds two (burst twice the rate): two answered on one connection...
    for _ in 0..2 {
        let (status, head, v) = send_on(&mut s, "/send?uid=alice", body);
        assert_eq!((status, v), (200, json!({"ok": true})), "{head}");
        assert!(!head.contains("Connection: close"), "{head}");
        let m = bob.recv_json();
        assert_eq!(
            (m["from"].as_str(), m["data"].clone()),
            (Some("alice"), json!({"t": "hi"}))
        );
    }
    // ...the third is refused, as a /ws client's would be.
    let (status, _, v) = send_on(&mut s, "/send?uid=alice", body);
    assert_eq!((status, v["code"].as_str()), (429, Some("rate_limited")));
    assert_eq!(gw.metric("pushgate_http_send_total{status=\"200\"}"), 2.0);
    assert_eq!(gw.metric("pushgate_http_send_total{status=\"429\"}"), 1.0);
    assert_eq!(
        gw.metric("pushgate_client_requests_total{type=\"rate_limited\"}"),
        1.0
    );
    // A bad request on the same connection is answered with the client protocol's error.
    let (status, _, v) = send_on(&mut s, "/send?uid=alice", r#"{"type":"send","to":[]}"#);
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")));
    let (status, _, v) = send_on(&mut s, "/send?uid=alice", "not json");
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_json")));
    assert_eq!(gw.metric("pushgate_http_send_total{status=\"400\"}"), 2.0);
}

fn hs256(sub: &str, exp_in: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + exp_in;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"topsecret"),
    )
    .unwrap()
}

#[test]
fn tokens_origins_and_expiry_as_on_ws() {
    let gw = Gateway::dev(&[
        "--jwt-secret",
        "topsecret",
        "--jwt-leeway",
        "0",
        "--allowed-origins",
        "http://app.example",
    ]);
    let mut ws = Client::connect_with(
        TcpStream::connect(gw.client_addr).unwrap(),
        &format!("/ws?token={}", hs256("bob", 3600)),
        "",
    );
    ws.recv_json();
    // `POST /send` with the token in the Authorization header; the sender is the token's.
    let body = r#"{"type":"send","to":["bob"],"data":1}"#;
    let (status, answer) = post(gw.client_addr, "/send", body, Some(&hs256("alice", 3600)));
    assert_eq!((status, answer.as_str()), (200, r#"{"ok":true}"#));
    assert_eq!(ws.recv_json()["from"], "alice");
    // `?uid=` means nothing once a secret is set; a bad token is refused.
    assert_eq!(post(gw.client_addr, "/send?uid=alice", body, None).0, 401);
    assert_eq!(
        post(gw.client_addr, "/send", body, Some("not.a.jwt")).0,
        401
    );
    // An allowed page gets the CORS header; another origin is refused.
    let token = hs256("carol", 2);
    let mut sse = Sse::open(
        gw.client_addr,
        &format!("/sse?token={token}"),
        "Origin: http://app.example\r\n",
    );
    assert!(sse
        .head
        .contains("Access-Control-Allow-Origin: http://app.example"));
    let (status, _) = get(
        gw.client_addr,
        &format!("/poll?token={token}"),
        "Origin: http://evil.example\r\n",
    );
    assert_eq!(status, 403);
    // A browser's preflight before a cross-origin `/send` with a token header.
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    s.write_all(b"OPTIONS /send HTTP/1.1\r\nHost: x\r\nOrigin: http://app.example\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 204 "), "{head}");
    assert!(
        head.contains("Access-Control-Allow-Headers: Authorization"),
        "{head}"
    );
    assert!(
        head.contains("Access-Control-Allow-Origin: http://app.example"),
        "{head}"
    );
    // The token expires while streaming: closed as policy (1008), like `/ws`.
    sse.next_event(Duration::from_secs(5)).unwrap();
    let e = sse.next_event(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (e.event.as_deref(), e.json()["code"].as_u64()),
        (Some("close"), Some(1008))
    );
    assert!(sse.closed_within(Duration::from_secs(5)));
    assert_eq!(gw.metric("pushgate_policy_closes_total"), 1.0);
}

#[test]
fn curl_sends_with_expect_continue() {
    let gw = Gateway::dev(&[]);
    let mut bob = Client::connect(gw.client_addr, "/ws?uid=bob");
    bob.recv_json();
    // curl waits for `100 Continue` before the body (here longer than its whole budget).
    let big = "y".repeat(4000);
    let body = json!({"type": "send", "to": ["bob"], "data": big}).to_string();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--expect100-timeout", "60"])
        .args(["-H", "Expect: 100-continue", "-H"])
        .arg("Content-Type: application/json")
        .args(["--data-binary", &body])
        .arg(format!("http://{}/send?uid=alice", gw.client_addr))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"ok":true}"#);
    assert_eq!(bob.recv_json()["data"], json!(big));
}

#[test]
fn bad_input_gets_its_status_and_counter() {
    let gw = Gateway::dev(&["--max-message-size", "1000"]);
    let a = gw.client_addr;
    let cases: [(&str, u16); 8] = [
        ("GET /sse HTTP/1.1\r\nHost: x\r\n\r\n", 401),
        ("GET /poll?since=0 HTTP/1.1\r\nHost: x\r\n\r\n", 401),
        ("GET /poll?uid=u&since=x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (
            "GET /sse?uid=u HTTP/1.1\r\nHost: x\r\nLast-Event-ID: -1\r\n\r\n",
            400,
        ),
        (
            "POST /send?uid=u HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
            413,
        ),
        (
            "POST /send?uid=u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            411,
        ),
        ("GET /send?uid=u HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("GET /nope?uid=u HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ];
    for (raw, want) in cases {
        let (status, body) = http(a, raw);
        assert_eq!(status, want, "{raw}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ok"], false, "{body}");
    }
    for (result, n) in [
        ("401", 2.0),
        ("400", 2.0),
        ("413", 1.0),
        ("411", 1.0),
        ("405", 1.0),
        ("404", 1.0),
    ] {
        assert_eq!(
            gw.metric(&format!("pushgate_handshakes_total{{result=\"{result}\"}}")),
            n,
            "{result}"
        );
    }
    // A body sent slower than the handshake timeout allows is cut (slowloris).
    let gw = Gateway::dev(&["--handshake-timeout", "0.5"]);
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    s.write_all(b"POST /send?uid=u HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        gw.metric("pushgate_timeouts_total{kind=\"handshake\"}"),
        1.0
    );
}

#[test]
fn streams_and_polls_follow_admission_limits_and_drain() {
    let gw = Gateway::dev(&["--max-connections-per-ip", "1", "--shutdown-drain", "0.5"]);
    let mut sse = Sse::open(gw.client_addr, "/sse?uid=f", "");
    sse.next_event(Duration::from_secs(5)).unwrap();
    let (status, _) = get(gw.client_addr, "/poll?uid=f", "");
    assert_eq!(status, 429);
    gw.terminate();
    let e = sse.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(e.event.as_deref(), Some("close"));
    assert_eq!(e.json()["code"], 1001);
    assert!(sse.closed_within(Duration::from_secs(5)));
}

/// Serves one page and collects what it POSTs to `/report`.
fn page_server(page: String) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            if first.starts_with("POST /report") {
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
            } else {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    page.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(page.as_bytes());
            }
        }
    });
    (port, rx)
}

/// A real `EventSource` on another origin (so CORS matters): it receives pushes, and
/// when the server ends the stream it reconnects on its own with `Last-Event-ID`, getting
/// what was pushed meanwhile exactly once.
#[test]
fn chromium_event_source_receives_and_resumes() {
    let gw = Gateway::dev(&[]);
    let page = format!(
        r#"<!doctype html><script>
const seen = [];
let opens = 0;
const report = (what) => fetch("/report", {{method: "POST", body: JSON.stringify(what)}});
const es = new EventSource("http://{}/sse?uid=chrome");
es.onopen = () => {{ opens++; report({{opens, seen}}); }};
es.onmessage = (e) => {{
  const m = JSON.parse(e.data);
  if (m.type === "msg") {{ seen.push([e.lastEventId, m.data]); report({{opens, seen}}); }}
}};
</script>"#,
        gw.client_addr
    );
    let (port, reports) = page_server(page);
    let profile =
        std::env::temp_dir().join(format!("pushgate-sse-chromium-{}", std::process::id()));
    let mut browser = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://127.0.0.1:{port}/page"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run chromium (run scripts/install-test-deps.sh)");
    let wait_for = |want: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = reports
                .recv_timeout(left)
                .expect("the page stopped reporting");
            let v: Value = serde_json::from_str(&r).unwrap();
            if want(&v) {
                return v;
            }
        }
    };
    wait_for(&|v| v["opens"] == 1);
    for i in 1..=3 {
        push(&gw, "chrome", json!(i));
    }
    wait_for(&|v| v["seen"].as_array().unwrap().len() == 3);
    // The server ends the stream; pushes while the browser is away are kept.
    let (status, _) = post(
        gw.control_addr,
        "/v1/disconnect",
        r#"{"uid":"chrome","code":4001}"#,
        None,
    );
    assert_eq!(status, 200);
    assert!(gw.eventually(Duration::from_secs(5), |g| g
        .metric("pushgate_transport_connections{transport=\"sse\"}")
        == 0.0));
    push(&gw, "chrome", json!(4));
    push(&gw, "chrome", json!(5));
    wait_for(&|v| v["opens"] == 2);
    push(&gw, "chrome", json!(6));
    let done = wait_for(&|v| v["seen"].as_array().unwrap().len() >= 6);
    let _ = browser.kill();
    let _ = browser.wait();
    let _ = std::fs::remove_dir_all(&profile);
    let want: Vec<Value> = (1..=6).map(|i| json!([i.to_string(), i])).collect();
    assert_eq!(done["seen"].as_array().unwrap(), &want, "{done}");
}
