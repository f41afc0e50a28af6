//! The upgrade on the client listener: welcome, refusals with the right status, limits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{connect_from, http, upgrade_request, Client, Gateway};

#[test]
fn ws_upgrade_sends_welcome() {
    let gw = Gateway::dev(&["--heartbeat", "7"]);
    let mut c = Client::connect(gw.client_addr, "/ws?uid=alice%20b&device=phone");
    assert!(
        c.response
            .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{}",
        c.response
    );
    let w = c.recv_json();
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["uid"], "alice b");
    assert_eq!(w["heartbeat"], 7);
    assert!(w["conn"].as_str().is_some_and(|s| !s.is_empty()));
    let other = Client::connect(gw.client_addr, "/ws?uid=bob").recv_json();
    assert_ne!(w["conn"], other["conn"], "connection IDs are unique");
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"ok\"}"), 2.0);
}

#[test]
fn refusals_get_the_right_status_and_are_counted() {
    let gw = Gateway::dev(&[]);
    let a = gw.client_addr;
    let cases = [
        (upgrade_request("/nope", ""), 404),
        (upgrade_request("/ws", ""), 401),
        (upgrade_request("/ws?uid=", ""), 401),
        (
            upgrade_request("/echo", "").replace("Version: 13", "Version: 8"),
            426,
        ),
        (
            upgrade_request("/echo", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            400,
        ),
        (
            upgrade_request("/echo", "").replace("Upgrade: websocket\r\n", ""),
            400,
        ),
        (upgrade_request("/echo", "").replace("GET", "POST"), 400),
        ("garbage\r\n\r\n".to_owned(), 400),
    ];
    for (req, want) in &cases {
        let (status, body) = http(a, req);
        assert_eq!(status, *want, "{req}");
        assert!(body.starts_with("{\"ok\":false"), "{body}");
    }
    let (status, _) = http(
        a,
        &upgrade_request("/echo", "").replace("Version: 13", "Version: 8"),
    );
    assert_eq!(status, 426);
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric("pushgate_handshakes_total{result=\"400\"}")
        == 4.0));
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"404\"}"), 1.0);
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"401\"}"), 2.0);
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"426\"}"), 2.0);
}

#[test]
fn version_refusal_names_the_supported_version() {
    let gw = Gateway::dev(&[]);
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(
        upgrade_request("/echo", "")
            .replace("Version: 13", "Version: 8")
            .as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 426"), "{out}");
    assert!(out.contains("Sec-WebSocket-Version: 13\r\n"), "{out}");
}

#[test]
fn oversize_request_head_gets_431() {
    let gw = Gateway::dev(&["--max-header-bytes", "1024"]);
    let big = format!("X-Filler: {}\r\n", "a".repeat(2000));
    let (status, _) = http(gw.client_addr, &upgrade_request("/echo", &big));
    assert_eq!(status, 431);
    // Just under the limit is fine.
    let ok = format!("X-Filler: {}\r\n", "a".repeat(700));
    let (_, status) =
        Client::try_connect(TcpStream::connect(gw.client_addr).unwrap(), "/echo", &ok);
    assert_eq!(status, 101);
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"431\"}"), 1.0);
}

#[test]
fn past_max_connections_upgrades_get_503() {
    let gw = Gateway::dev(&["--max-connections", "2"]);
    let _a = Client::connect(gw.client_addr, "/echo");
    let _b = Client::connect(gw.client_addr, "/echo");
    let (c, status) = Client::try_connect(TcpStream::connect(gw.client_addr).unwrap(), "/echo", "");
    assert_eq!(status, 503, "{}", c.response);
    assert!(c.response.contains("Retry-After"));
    drop((_a, c));
    // A slot freed: upgrades work again.
    assert!(gw.eventually(Duration::from_secs(3), |g| {
        Client::try_connect(TcpStream::connect(g.client_addr).unwrap(), "/echo", "").1 == 101
    }));
    assert_eq!(gw.metric("pushgate_connection_capacity"), 2.0);
}

#[test]
fn per_address_limit_gets_429() {
    let gw = Gateway::dev(&["--max-connections-per-ip", "2"]);
    let a = gw.client_addr;
    let _x = Client::connect_with(connect_from([127, 0, 0, 2], a), "/echo", "");
    let _y = Client::connect_with(connect_from([127, 0, 0, 2], a), "/echo", "");
    let (_, status) = Client::try_connect(connect_from([127, 0, 0, 2], a), "/echo", "");
    assert_eq!(status, 429);
    let (_, status) = Client::try_connect(connect_from([127, 0, 0, 3], a), "/echo", "");
    assert_eq!(status, 101, "another address is not affected");
    assert_eq!(gw.metric("pushgate_handshakes_total{result=\"429\"}"), 1.0);
}

#[test]
fn frames_sent_right_behind_the_request_are_served() {
    let gw = Gateway::dev(&[]);
    let mut bytes = upgrade_request("/echo", "").into_bytes();
    bytes.extend_from_slice(&protocol::frame::client_message(
        protocol::OpCode::Text,
        b"early",
        [9, 9, 9, 9],
    ));
    let (mut c, status) =
        Client::try_connect_raw(TcpStream::connect(gw.client_addr).unwrap(), &bytes);
    assert_eq!(status, 101);
    assert_eq!(
        c.recv(),
        protocol::Message::Text(bytes::Bytes::from_static(b"early"))
    );
}
