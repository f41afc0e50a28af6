//! Control listener endpoints, metrics, and the SIGTERM drain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::{Duration, Instant};

use common::{http, Client, Gateway};
use protocol::CloseCode;

#[test]
fn health_readiness_and_metrics() {
    let gw = Gateway::dev(&[]);
    assert_eq!(gw.control_get("/healthz").0, 200);
    assert_eq!(gw.control_get("/readyz").0, 200);
    let (status, body) = gw.control_get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "pushgate_connections{reactor=\"0\"}",
        "pushgate_connections_upgraded",
        "pushgate_handshakes_in_progress",
        "pushgate_connection_capacity",
        "pushgate_connections_accepted_total",
        "pushgate_handshakes_total{result=\"ok\"}",
        "pushgate_bytes_received_total",
        "pushgate_bytes_sent_total",
        "pushgate_messages_received_total",
        "pushgate_frames_sent_total",
        "pushgate_timeouts_total{kind=\"idle\"}",
        "pushgate_heartbeats_sent_total",
        "pushgate_slow_consumer_closes_total",
        "pushgate_protocol_errors_total{code=\"1002\"}",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    let (status, body) = gw.control_get("/nope");
    assert_eq!(
        (status, body.as_str()),
        (404, "{\"ok\":false,\"error\":\"not found\"}")
    );
    let (status, _) = http(
        gw.control_addr,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405);
}

#[test]
fn control_listener_keeps_alive_and_pipelines() {
    let gw = Gateway::dev(&[]);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.control_addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
}

#[test]
fn sigterm_drains_with_1001_spread_over_the_window_then_exits() {
    let mut gw = Gateway::dev(&["--shutdown-drain", "1.5"]);
    let mut clients: Vec<Client> = (0..12)
        .map(|i| Client::connect(gw.client_addr, &format!("/ws?uid=u{i}")))
        .collect();
    for c in &mut clients {
        c.recv_json();
    }
    let start = Instant::now();
    gw.terminate();
    let mut times = Vec::new();
    for c in &mut clients {
        assert_eq!(
            c.expect_close(Duration::from_secs(5)),
            CloseCode::GOING_AWAY
        );
        times.push(start.elapsed());
        c.send_close(1000);
    }
    // Spread: the last close comes well after the first.
    times.sort();
    let spread = times[times.len() - 1] - times[0];
    assert!(
        spread >= Duration::from_millis(800),
        "closes not spread: {times:?}"
    );
    assert!(times[times.len() - 1] < Duration::from_secs(3), "{times:?}");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn sigterm_with_no_connections_exits_promptly() {
    let mut gw = Gateway::dev(&["--shutdown-drain", "5"]);
    gw.terminate();
    let start = Instant::now();
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
