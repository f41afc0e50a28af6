//! The server API: API key, bad input of every kind answered with JSON and a status, the
//! listener serving on after each; metric names present after traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{Read, Write};

use common::{http, post, Client, Gateway};
use serde_json::json;

#[test]
fn api_key_is_required_when_configured() {
    let gw = Gateway::dev(&["--api-key", "s3cret"]);
    let body = r#"{"to":["u"],"data":1}"#;
    assert_eq!(post(gw.control_addr, "/v1/push", body, None).0, 401);
    assert_eq!(
        post(gw.control_addr, "/v1/push", body, Some("wrong")).0,
        401
    );
    let (status, resp) = post(gw.control_addr, "/v1/push", body, Some("s3cret"));
    assert_eq!(status, 200, "{resp}");
    assert!(resp.starts_with("{\"ok\":true"), "{resp}");
    assert_eq!(
        post(
            gw.control_addr,
            "/v1/broadcast",
            r#"{"data":1}"#,
            Some("s3cret")
        )
        .0,
        200
    );
    // Health and metrics stay open.
    assert_eq!(gw.control_get("/healthz").0, 200);
    assert_eq!(
        gw.metric("pushgate_push_requests_total{endpoint=\"push\",status=\"401\"}"),
        2.0
    );
}

#[test]
fn bad_input_gets_a_json_error_and_the_listener_keeps_serving() {
    let gw = Gateway::dev(&["--max-body-bytes", "1000"]);
    let a = gw.control_addr;
    let cases: [(&str, &str, u16); 8] = [
        ("/v1/push", "{not json", 400),
        ("/v1/push", "[1,2]", 400),
        ("/v1/push", r#"{"to":"alice","data":1}"#, 400),
        ("/v1/push", r#"{"to":[1],"data":1}"#, 400),
        ("/v1/push", r#"{"to":["a"]}"#, 400),
        ("/v1/push", r#"{"data":1}"#, 400),
        ("/v1/broadcast", r#"{"nodata":true}"#, 400),
        ("/v1/nope", "{}", 404),
    ];
    for (path, body, want) in cases {
        let (status, resp) = post(a, path, body, None);
        assert_eq!(status, want, "{path} {body}");
        let v: serde_json::Value =
            serde_json::from_str(&resp).unwrap_or_else(|_| panic!("not JSON: {resp}"));
        assert_eq!(v["ok"], false, "{resp}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let big = format!(r#"{{"to":["a"],"data":"{}"}}"#, "x".repeat(2000));
    assert_eq!(post(a, "/v1/push", &big, None).0, 413);
    assert_eq!(
        http(a, "GET /v1/push HTTP/1.1\r\nConnection: close\r\n\r\n").0,
        405
    );
    // Still serving, and a valid push goes through.
    let mut c = Client::connect(gw.client_addr, "/ws?uid=a");
    c.recv_json();
    assert!(gw.eventually(std::time::Duration::from_secs(3), |g| g
        .metric("pushgate_users_online")
        == 1.0));
    assert_eq!(
        post(a, "/v1/push", r#"{"to":["a"],"data":"ok"}"#, None).0,
        200
    );
    assert_eq!(
        common::without_seq(c.recv_json()),
        json!({"type": "msg", "from": "server", "data": "ok"})
    );
    assert_eq!(
        gw.metric("pushgate_push_requests_total{endpoint=\"push\",status=\"400\"}"),
        6.0
    );
}

#[test]
fn pushes_pipeline_on_one_keep_alive_connection() {
    let gw = Gateway::dev(&[]);
    let mut c = Client::connect(gw.client_addr, "/ws?uid=p");
    c.recv_json();
    assert!(gw.eventually(std::time::Duration::from_secs(3), |g| g
        .metric("pushgate_users_online")
        == 1.0));
    let mut s = std::net::TcpStream::connect(gw.control_addr).unwrap();
    let mut batch = String::new();
    for i in 0..20 {
        let body = format!(r#"{{"to":["p"],"data":{i}}}"#);
        batch.push_str(&format!(
            "POST /v1/push HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    batch.push_str("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
    s.write_all(batch.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 21);
    for i in 0..20 {
        assert_eq!(c.recv_json()["data"], i, "in order");
    }
}

#[test]
fn metric_names_after_traffic() {
    let gw = Gateway::dev(&[]);
    let mut c = Client::connect(gw.client_addr, "/ws?uid=m");
    c.recv_json();
    assert!(gw.eventually(std::time::Duration::from_secs(3), |g| g
        .metric("pushgate_users_online")
        == 1.0));
    assert_eq!(
        post(
            gw.control_addr,
            "/v1/push",
            r#"{"to":["m"],"data":1}"#,
            None
        )
        .0,
        200
    );
    c.recv_json();
    // Latency is recorded right after the frame is handed to the kernel, so the client
    // may see the message a moment before the histogram does.
    assert!(gw.eventually(std::time::Duration::from_secs(2), |g| g
        .metric("pushgate_push_latency_seconds_count")
        == 1.0));
    let (_, body) = gw.control_get("/metrics");
    for name in [
        "pushgate_users_online 1",
        "pushgate_rooms 0",
        "pushgate_messages_delivered_total",
        "pushgate_messages_dropped_total{reason=\"offline\"}",
        "pushgate_push_requests_total{endpoint=\"push\",status=\"200\"} 1",
        "pushgate_push_latency_seconds_bucket{le=\"+Inf\"} 1",
        "pushgate_push_latency_seconds_sum",
        "pushgate_push_latency_seconds_count 1",
        "pushgate_client_requests_total{type=\"send\"}",
        "pushgate_policy_closes_total",
        "# TYPE pushgate_push_latency_seconds histogram",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample: {line}");
        assert!(line.starts_with("pushgate_"), "unprefixed: {line}");
    }
}

#[test]
fn a_long_pipeline_is_answered_in_full() {
    // Thousands of pipelined requests written while responses are read: the listener must
    // keep reading under output backpressure (edge-triggered readiness is not repeated).
    let gw = Gateway::dev(&[]);
    let mut s = std::net::TcpStream::connect(gw.control_addr).unwrap();
    let mut writer = s.try_clone().unwrap();
    let n = 5000;
    let sender = std::thread::spawn(move || {
        let body = r#"{"to":["nobody"],"data":0}"#;
        let one = format!(
            "POST /v1/push HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let all = one.repeat(n);
        writer.write_all(all.as_bytes()).unwrap();
        writer
            .write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
    });
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    sender.join().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), n + 1);
}

/// A backend's HTTP client may stream a push with chunked transfer coding, and ask with
/// `Expect: 100-continue` before sending a body: both reach the recipient, on one
/// keep-alive connection.
#[test]
fn chunked_pushes_and_expect_continue_are_served() {
    let gw = Gateway::dev(&[]);
    let mut alice = Client::connect(gw.client_addr, "/ws?uid=alice");
    assert_eq!(alice.recv_json()["type"], "welcome");
    let mut s = std::net::TcpStream::connect(gw.control_addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let body = r#"{"to":["alice"],"data":"chunked"}"#;
    let (a, b) = body.split_at(10);
    write!(
        s,
        "POST /v1/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
    .unwrap();
    let first = read_response(&mut s);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(alice.recv_json()["data"], "chunked");
    let body = r#"{"to":["alice"],"data":"expected"}"#;
    write!(
        s,
        "POST /v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    let interim = read_response(&mut s);
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let second = read_response(&mut s);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(alice.recv_json()["data"], "expected");
    // A transfer coding the server does not implement: 501, and the connection closes.
    let (status, _) = http(
        gw.control_addr,
        "POST /v1/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    );
    assert_eq!(status, 501);
}

/// Reads one response (head, and a body by its Content-Length) from a keep-alive stream.
fn read_response(s: &mut std::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed after {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
    let mut body = vec![0; length];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}
