//! The backend API of issue 28 on a single node: `POST /v1/batch` (JSON array and NDJSON
//! streaming), `GET /v1/history` (docs/API.md). The clustered forms are tested in
//! delivery_cluster.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{post, Client, Gateway, Read_};
use protocol::Message;
use serde_json::{json, Value};

/// Limits that are not the subject of these tests, relaxed so that a reader descheduled
/// on a loaded machine is never closed as a slow consumer.
const ROOMY: [&str; 4] = [
    "--max-outbound-messages",
    "50000",
    "--max-outbound-bytes",
    "67108864",
];

fn ws(gw: &Gateway, uid: &str) -> Client {
    let mut c = Client::connect(gw.client_addr, &format!("/ws?uid={uid}"));
    assert_eq!(c.recv_json()["type"], "welcome");
    c
}

/// Joins `room`; requests are handled in order, so once the pong is back the join is in
/// place.
fn join(c: &mut Client, room: &str) {
    c.send_text(&format!(r#"{{"type":"join","room":"{room}"}}"#));
    c.send_text(r#"{"type":"ping"}"#);
    assert_eq!(c.recv_json()["type"], "pong");
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
                if v["type"] == "msg" {
                    out.push(v);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn batch(gw: &Gateway, body: &Value) -> (u16, Value) {
    let (status, resp) = post(gw.control_addr, "/v1/batch", &body.to_string(), None);
    (
        status,
        serde_json::from_str(&resp).unwrap_or_else(|_| panic!("not JSON: {resp}")),
    )
}

/// Reads one HTTP response from `s`: status, headers (lowercased names), body (dechunked).
fn read_response(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut fill = |rest: &mut Vec<u8>, want: usize| {
        while rest.len() < want {
            let n = s.read(&mut tmp).unwrap();
            assert!(n > 0, "closed mid-body");
            rest.extend_from_slice(&tmp[..n]);
        }
    };
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().unwrap();
        fill(&mut rest, len);
        rest.truncate(len);
        return (status, headers, rest);
    }
    assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"));
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = loop {
            if let Some(i) = rest[at..].windows(2).position(|w| w == b"\r\n") {
                break at + i;
            }
            let want = rest.len() + 1;
            fill(&mut rest, want);
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).unwrap(), 16).unwrap();
        at = line_end + 2;
        fill(&mut rest, at + size + 2);
        if size == 0 {
            assert_eq!(&rest[at..at + 2], b"\r\n");
            return (status, headers, body);
        }
        body.extend_from_slice(&rest[at..at + size]);
        assert_eq!(&rest[at + size..at + size + 2], b"\r\n");
        at += size + 2;
    }
}

/// POSTs NDJSON `lines` to /v1/batch as a chunked body, `per_chunk` lines a chunk.
fn ndjson_batch(addr: SocketAddr, lines: &[String], per_chunk: usize) -> (u16, Vec<Value>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    for group in lines.chunks(per_chunk) {
        let mut data = group.join("\n");
        data.push('\n');
        s.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
            .unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let (status, headers, body) = read_response(&mut s);
    if status == 200 {
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/x-ndjson"),
            "{headers:?}"
        );
    }
    let text = String::from_utf8(body).unwrap();
    let values = if status == 200 {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("line {l}")))
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap()]
    };
    (status, values)
}

#[test]
fn batch_results_per_item_mixed_good_and_bad() {
    let gw = Gateway::dev(&ROOMY);
    let mut u1 = ws(&gw, "u1");
    let mut member = ws(&gw, "m1");
    join(&mut member, "lobby");
    let body = json!([
        {"to": ["u1"], "id": "b-1", "data": {"n": 1}},
        {"to": ["u1"]},
        {"rooms": ["lobby"], "from": "svc", "data": "room"},
        {"to": ["u1"], "data": 1, "id": 7},
        "not an object",
        {"to": ["u1", "nobody"], "data": {"n": 2}},
    ]);
    let (status, a) = batch(&gw, &body);
    assert_eq!(status, 200, "{a}");
    let r = a["results"].as_array().unwrap();
    assert_eq!(r.len(), 6, "{a}");
    assert_eq!(a["failed"], 3, "{a}");
    let statuses: Vec<u64> = r.iter().map(|x| x["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 400, 200, 400, 400, 200], "{a}");
    assert_eq!(r[0]["ok"], true);
    assert_eq!(r[0]["id"], "b-1");
    assert_eq!(r[1]["ok"], false);
    assert_eq!(r[1]["error"], "missing \"data\"");
    assert_eq!(r[5]["offline"], json!(["nobody"]), "{a}");
    // The good ones were delivered, in order, with the seqs the answer gave.
    let got = messages(&mut u1, 2, Duration::from_secs(10));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["data"], json!({"n": 1}));
    assert_eq!(got[0]["id"], "b-1");
    assert_eq!(got[0]["seq"], r[0]["seq"]["u1"]);
    assert_eq!(got[1]["data"], json!({"n": 2}));
    assert_eq!(got[1]["seq"], r[5]["seq"]["u1"]);
    let room = messages(&mut member, 1, Duration::from_secs(10));
    assert_eq!(room[0]["data"], "room");
    assert_eq!(room[0]["room"], "lobby");
    // A retried batch item with the same id is not delivered again.
    let (status, again) = batch(&gw, &json!([{"to": ["u1"], "id": "b-1", "data": 9}]));
    assert_eq!(status, 200);
    assert_eq!(again["results"][0]["seq"], r[0]["seq"], "{again}");
    assert!(messages(&mut u1, 1, Duration::from_millis(500)).is_empty());
    assert_eq!(
        gw.metric(r#"pushgate_batch_items_total{status="200"}"#),
        4.0
    );
    assert_eq!(
        gw.metric(r#"pushgate_batch_items_total{status="400"}"#),
        3.0
    );
    assert_eq!(
        gw.metric(r#"pushgate_push_requests_total{endpoint="batch",status="200"}"#),
        2.0
    );
    // Not a batch at all.
    for bad in [r#"{"to":["u1"],"data":1}"#, "[", "[]"] {
        let (status, resp) = post(gw.control_addr, "/v1/batch", bad, None);
        assert_eq!(status, 400, "{bad}: {resp}");
    }
    assert_eq!(gw.control_get("/v1/batch").0, 405);
}

#[test]
fn batch_over_its_limits_is_refused_whole_and_counted() {
    let gw = Gateway::dev(&[
        "--batch-max-items",
        "3",
        "--batch-max-bytes",
        "2000",
        "--max-body-bytes",
        "300",
    ]);
    let mut u1 = ws(&gw, "u1");
    let item = |n: usize| json!({"to": ["u1"], "data": n});
    let (status, a) = batch(&gw, &json!([item(1), item(2), item(3), item(4)]));
    assert_eq!(status, 413, "{a}");
    let lines: Vec<String> = (0..4).map(|n| item(n).to_string()).collect();
    let (status, _) = ndjson_batch(gw.control_addr, &lines, 1);
    assert_eq!(status, 413);
    assert_eq!(
        gw.metric(r#"pushgate_batch_refused_total{limit="items"}"#),
        2.0
    );
    // Past the byte limit: refused from its Content-Length, before it is read.
    let big = json!([{"to": ["u1"], "data": "x".repeat(2100)}]).to_string();
    let (status, _) = post(gw.control_addr, "/v1/batch", &big, None);
    assert_eq!(status, 413);
    assert_eq!(
        gw.metric(r#"pushgate_batch_refused_total{limit="bytes"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"pushgate_push_requests_total{endpoint="batch",status="413"}"#),
        3.0
    );
    // Nothing of the refused batches was delivered.
    assert!(messages(&mut u1, 1, Duration::from_millis(500)).is_empty());
    // One push over --max-body-bytes inside a batch within its limits: that one is
    // refused, the others are delivered.
    let (status, a) = batch(
        &gw,
        &json!([item(1), {"to": ["u1"], "data": "y".repeat(400)}, item(3)]),
    );
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["results"][1]["status"], 413, "{a}");
    let got = messages(&mut u1, 2, Duration::from_secs(10));
    let data: Vec<&Value> = got.iter().map(|m| &m["data"]).collect();
    assert_eq!(data, [&json!(1), &json!(3)]);
}

#[test]
fn ndjson_streaming_batch_of_10000_pushes() {
    const N: usize = 10_000;
    let gw = Gateway::dev(&[&ROOMY[..], &["--history-size", "20000"]].concat());
    let mut u1 = ws(&gw, "u1");
    // Every 1000th line is bad; the rest are delivered.
    let lines: Vec<String> = (0..N)
        .map(|i| {
            if i % 1000 == 999 {
                format!("{{\"to\":[\"u1\"],\"data\":{i}")
            } else {
                json!({"to": ["u1"], "id": format!("n-{i}"), "data": i}).to_string()
            }
        })
        .collect();
    let reader = std::thread::spawn(move || {
        let got = messages(&mut u1, N - 10, Duration::from_secs(120));
        (u1, got)
    });
    // Two lines a chunk: 5 000 chunks, past the 4 096 a single push's body may have (a
    // streaming client may send a chunk per line; a batch may have --batch-max-items).
    let (status, results) = ndjson_batch(gw.control_addr, &lines, 2);
    assert_eq!(status, 200);
    assert_eq!(results.len(), N);
    let mut last_seq = 0;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["i"], i, "{r}");
        if i % 1000 == 999 {
            assert_eq!(r["status"], 400, "{r}");
        } else {
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["id"], format!("n-{i}"));
            let seq = r["seq"]["u1"].as_u64().unwrap();
            assert!(seq > last_seq, "{r}");
            last_seq = seq;
        }
    }
    let (_u1, got) = reader.join().unwrap();
    assert_eq!(got.len(), N - 10);
    let data: Vec<u64> = got.iter().map(|m| m["data"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (0..N as u64).filter(|i| i % 1000 != 999).collect();
    assert_eq!(data, want, "delivered in order, every good one once");
    assert_eq!(
        gw.metric(r#"pushgate_batch_items_total{status="200"}"#),
        (N - 10) as f64
    );
}

fn history(gw: &Gateway, query: &str) -> (u16, Value) {
    let (status, body) = gw.control_get(&format!("/v1/history?{query}"));
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}")),
    )
}

#[test]
fn history_single_node_has_what_the_clients_saw() {
    let gw = Gateway::dev(&["--history-read-max", "50"]);
    let mut u1 = ws(&gw, "u1");
    let mut m1 = ws(&gw, "m1");
    join(&mut m1, "r1");
    for i in 0..5 {
        let (status, _) = post(
            gw.control_addr,
            "/v1/push",
            &json!({"to": ["u1"], "data": {"i": i}}).to_string(),
            None,
        );
        assert_eq!(status, 200);
    }
    let (status, _) = post(
        gw.control_addr,
        "/v1/push",
        &json!({"rooms": ["r1"], "data": "to the room"}).to_string(),
        None,
    );
    assert_eq!(status, 200);
    let seen = messages(&mut u1, 5, Duration::from_secs(10));
    assert_eq!(seen.len(), 5);
    let (status, h) = history(&gw, "uid=u1");
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["messages"], Value::Array(seen.clone()), "{h}");
    assert_eq!(
        (h["more"].as_bool(), h["complete"].as_bool()),
        (Some(false), Some(true))
    );
    let since = seen[1]["seq"].as_u64().unwrap();
    let (status, h) = history(&gw, &format!("uid=u1&since={since}&limit=2"));
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["messages"], json!([seen[2], seen[3]]), "{h}");
    assert_eq!(h["more"], true);
    assert_eq!(h["last"], seen[3]["seq"]);
    let room_seen = messages(&mut m1, 1, Duration::from_secs(10));
    let (status, h) = history(&gw, "room=r1");
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["room"], "r1");
    assert_eq!(h["messages"], Value::Array(room_seen), "{h}");
    // A user nobody pushed to has an empty history.
    let (status, h) = history(&gw, "uid=nobody");
    assert_eq!((status, h["messages"].clone()), (200, json!([])), "{h}");
    for bad in [
        "",
        "uid=u1&room=r1",
        "uid=u1&since=x",
        "uid=u1&limit=0",
        "uid=u1&limit=51",
    ] {
        let (status, h) = history(&gw, bad);
        assert_eq!(status, 400, "{bad}: {h}");
    }
    assert_eq!(
        gw.metric(r#"pushgate_history_reads_total{result="ok"}"#),
        4.0
    );
    assert_eq!(
        gw.metric(r#"pushgate_history_reads_total{result="bad_request"}"#),
        5.0
    );
    let (status, _) = post(gw.control_addr, "/v1/history?uid=u1", "", None);
    assert_eq!(status, 405);
}

#[test]
fn history_is_404_on_a_node_that_keeps_none() {
    let gw = Gateway::dev(&["--history-size", "0"]);
    let (status, h) = history(&gw, "uid=u1");
    assert_eq!(status, 404, "{h}");
    assert_eq!(
        gw.metric(r#"pushgate_history_reads_total{result="off"}"#),
        1.0
    );
}

#[test]
fn the_new_routes_take_the_api_key() {
    let gw = Gateway::dev(&["--api-key", "k"]);
    let (status, _) = post(
        gw.control_addr,
        "/v1/batch",
        r#"[{"to":["u"],"data":1}]"#,
        None,
    );
    assert_eq!(status, 401);
    let (status, resp) = post(
        gw.control_addr,
        "/v1/batch",
        r#"[{"to":["u"],"data":1}]"#,
        Some("k"),
    );
    assert_eq!(status, 200, "{resp}");
    assert_eq!(gw.control_get("/v1/history?uid=u").0, 401);
    assert_eq!(gw.control_get("/v1/rooms/presence?room=r").0, 401);
}

fn room_presence(gw: &Gateway, query: &str) -> (u16, Value) {
    let (status, body) = gw.control_get(&format!("/v1/rooms/presence?{query}"));
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}")),
    )
}

/// (uid, device) of each member listed, in the answer's order.
fn who(v: &Value) -> Vec<(String, String)> {
    v["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {v}"))
        .iter()
        .map(|m| {
            assert!(m["node"].as_str().is_some_and(|n| !n.is_empty()), "{v}");
            (
                m["uid"].as_str().unwrap().to_owned(),
                m["device"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn member(uid: &str, device: &str) -> (String, String) {
    (uid.to_owned(), device.to_owned())
}

#[test]
fn room_presence_single_node_lists_counts_and_bounds() {
    let mut args = ROOMY.to_vec();
    args.extend(["--room-presence-max-limit", "5"]);
    let gw = Gateway::dev(&args);
    let mut phone = Client::connect(gw.client_addr, "/ws?uid=u1&device=phone");
    assert_eq!(phone.recv_json()["type"], "welcome");
    let mut web = Client::connect(gw.client_addr, "/ws?uid=u1&device=web");
    assert_eq!(web.recv_json()["type"], "welcome");
    let mut u2 = ws(&gw, "u2");
    let mut outside = ws(&gw, "u3");
    for c in [&mut phone, &mut web, &mut u2] {
        join(c, "r");
    }
    join(&mut outside, "elsewhere");

    let (status, v) = room_presence(&gw, "room=r");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["room"], "r");
    assert_eq!(
        (v["connections"].as_u64(), v["users"].as_u64()),
        (Some(3), Some(2)),
        "{v}"
    );
    assert_eq!(
        who(&v),
        [
            member("u1", "phone"),
            member("u1", "web"),
            member("u2", "default")
        ]
    );
    assert_eq!(v["more"], false);
    assert!(v.get("partial").is_none(), "{v}");

    // The limit lists fewer and says there are more; the count stays whole.
    let (status, v) = room_presence(&gw, "room=r&limit=2");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["connections"], 3);
    assert_eq!(who(&v).len(), 2, "{v}");
    assert_eq!(v["more"], true);
    assert!(v.get("users").is_none(), "not every connection listed: {v}");

    // The count alone asks no reactor and lists nobody.
    let (status, v) = room_presence(&gw, "room=r&count_only=1");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"ok": true, "room": "r", "connections": 3}));

    // A room nobody is in, and a room after a member left.
    let (status, v) = room_presence(&gw, "room=empty");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["connections"].as_u64(),
            v["users"].as_u64(),
            v["more"].as_bool()
        ),
        (Some(0), Some(0), Some(false)),
        "{v}"
    );
    u2.send_text(r#"{"type":"leave","room":"r"}"#);
    u2.send_text(r#"{"type":"ping"}"#);
    assert_eq!(u2.recv_json()["type"], "pong");
    let (_, v) = room_presence(&gw, "room=r");
    assert_eq!(who(&v), [member("u1", "phone"), member("u1", "web")], "{v}");

    for bad in [
        "",
        "room=",
        "limit=2",
        "room=a&room=b",
        "room=r&limit=6",
        "room=r&limit=x",
        "room=r&count_only=2",
    ] {
        let (status, v) = room_presence(&gw, bad);
        assert_eq!(status, 400, "{bad}: {v}");
    }
    let (status, _) = post(gw.control_addr, "/v1/rooms/presence?room=r", "", None);
    assert_eq!(status, 405);
    assert_eq!(
        gw.metric(r#"pushgate_room_presence_queries_total{result="complete"}"#),
        5.0
    );
    assert_eq!(
        gw.metric(r#"pushgate_room_presence_queries_total{result="bad_request"}"#),
        7.0
    );
}

#[test]
fn room_presence_sees_server_side_joins() {
    let gw = Gateway::dev(&ROOMY);
    let mut a = ws(&gw, "alice");
    let (status, resp) = post(
        gw.control_addr,
        "/v1/rooms/join",
        r#"{"uid":"alice","room":"ops"}"#,
        None,
    );
    assert_eq!(status, 200, "{resp}");
    // The joined notice comes once the connection is in the room.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "alice never learnt of the join");
        if let Read_::Msg(Message::Text(t)) = a.read(Duration::from_millis(200)) {
            let v: Value = serde_json::from_slice(&t).unwrap();
            if v["type"] == "joined" {
                break;
            }
        }
    }
    let (status, v) = room_presence(&gw, "room=ops");
    assert_eq!(status, 200, "{v}");
    assert_eq!(who(&v), [member("alice", "default")], "{v}");
    assert_eq!(v["users"], 1);
}
