//! Issue 31, the second outside attack run: what an attacker could still do to the
//! listeners — bare LF line endings left hanging, pings answered by one pong, a `nbf`
//! ignored, TLS counters missing before TLS, pipelined `POST /send` not served, a
//! connection flood evicting honest control requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Gateway;

/// Sends `raw` on a fresh connection and reads until the server closes or `limit` passes:
/// (what was read, how long it took).
fn answer_within(addr: SocketAddr, raw: &[u8], limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[test]
fn bare_lf_line_endings_get_400_at_once_on_both_listeners() {
    // Timeouts far longer than the test waits: only a refusal can answer in time.
    let gw = Gateway::dev(&[
        "--handshake-timeout",
        "60",
        "--control-first-request-timeout",
        "60",
    ]);
    let upgrade =
        "GET /ws?uid=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let push = "POST /v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n{\"to\":[\"u\"],\"data\":\"x\"} ";
    let cases = [
        (gw.client_addr, upgrade.replace("\r\n", "\n")),
        (gw.client_addr, upgrade.replacen("\r\n", "\n", 2)),
        (gw.client_addr, upgrade.replace("\r\n\r\n", "\r\n\n")),
        (gw.control_addr, healthz.replace("\r\n", "\n")),
        (gw.control_addr, healthz.replacen("\r\n", "\n", 1)),
        (gw.control_addr, healthz.replace("\r\n\r\n", "\r\n\n")),
        (gw.control_addr, push.replace("Host: x\r\n", "Host: x\n")),
        // Bare CRs likewise (a head of them never ends with CRLF CRLF).
        (gw.client_addr, upgrade.replace("\r\n", "\r")),
        (gw.client_addr, upgrade.replacen("Host: x", "Host: x\ry", 1)),
        (gw.control_addr, healthz.replace("\r\n", "\r")),
        (gw.control_addr, push.replace("Host: x\r\n", "Host: x\r")),
    ];
    for (addr, raw) in &cases {
        let (resp, took) = answer_within(*addr, raw.as_bytes(), Duration::from_secs(3));
        assert!(resp.starts_with("HTTP/1.1 400"), "{raw:?} got {resp:?}");
        assert!(
            took < Duration::from_secs(2),
            "{raw:?} answered after {took:?}"
        );
    }
    assert_eq!(
        gw.metric("pushgate_push_requests_total{endpoint=\"push\",status=\"200\"}"),
        0.0
    );
    // The same requests with CRLF throughout are served.
    let (resp, _) = answer_within(gw.control_addr, healthz.as_bytes(), Duration::from_secs(3));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    let (c, status) = common::Client::try_connect_raw(
        TcpStream::connect(gw.client_addr).unwrap(),
        upgrade.as_bytes(),
    );
    assert_eq!(status, 101, "{}", c.response);
}

#[test]
fn ten_pings_in_a_row_get_ten_pongs_and_a_flood_stays_bounded() {
    use bytes::Bytes;
    use protocol::frame::client_message;
    use protocol::{Message, OpCode};
    let gw = Gateway::dev(&[]);
    // Autobahn 2.10: ten pings with distinct payloads in one write, each answered.
    let mut c = common::Client::connect(gw.client_addr, "/ws?uid=pinger");
    let _welcome = c.recv_json();
    let burst: Vec<u8> = (0..10u8)
        .flat_map(|i| client_message(OpCode::Ping, &[b'p', i], [1, 2, 3, 4]).to_vec())
        .collect();
    c.send_raw(&burst);
    for i in 0..10u8 {
        assert_eq!(
            c.recv(),
            Message::Pong(Bytes::from(vec![b'p', i])),
            "pong {i}"
        );
    }
    common::nothing_for(&mut c, 200);

    // Past the bound (16 waiting) the newest replaces the last waiting one: a client
    // that pings without reading costs at most that many pongs, and the latest ping is
    // still answered.
    let mut slow =
        common::Client::connect_with(common::slow_socket(gw.client_addr), "/ws?uid=flooder", "");
    let _welcome = slow.recv_json();
    let flood: Vec<u8> = (0..20_000u32)
        .flat_map(|i| client_message(OpCode::Ping, &i.to_be_bytes(), [1, 2, 3, 4]).to_vec())
        .collect();
    slow.send_raw(&flood);
    let mut pongs = Vec::new();
    loop {
        match slow.read(Duration::from_millis(500)) {
            common::Read_::Msg(Message::Pong(p)) => pongs.push(p),
            common::Read_::Timeout => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        pongs.last().map(|p| p.to_vec()),
        Some(19_999u32.to_be_bytes().to_vec()),
        "the latest ping answered"
    );
    assert!(
        pongs.len() < 20_000,
        "{} pongs for 20 000 pings",
        pongs.len()
    );
    assert!(pongs.windows(2).all(|w| w[0] < w[1]), "pongs in order");
}

#[test]
fn tls_counters_are_exported_at_zero_before_tls_is_configured() {
    let gw = Gateway::dev(&[]);
    for sample in [
        r#"pushgate_tls_handshakes_total{kind="full"}"#,
        r#"pushgate_tls_handshakes_total{kind="resumed"}"#,
        r#"pushgate_tls_failures_total{cause="not_tls"}"#,
        r#"pushgate_tls_failures_total{cause="handshake"}"#,
        r#"pushgate_tls_failures_total{cause="truncated"}"#,
        r#"pushgate_tls_failures_total{cause="record"}"#,
        r#"pushgate_tls_reloads_total{result="ok"}"#,
        r#"pushgate_tls_reloads_total{result="failed"}"#,
    ] {
        assert_eq!(gw.metric(sample), 0.0, "{sample}");
    }
    // No certificate, no expiry: 0 would read as long expired.
    let (_, body) = gw.control_get("/metrics");
    assert!(
        !body.contains("pushgate_tls_cert_not_after_seconds"),
        "{body}"
    );
}

#[test]
fn pipelined_sends_on_one_connection_are_answered_in_order() {
    let gw = Gateway::dev(&[]);
    let mut bob = common::Client::connect(gw.client_addr, "/ws?uid=bob");
    let _welcome = bob.recv_json();
    common::users_online(&gw, 1.0);
    let request = |i: u32| {
        let body = format!(r#"{{"type":"send","to":["bob"],"data":{i}}}"#);
        format!(
            "POST /send?uid=alice HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let all: String = (0..3).map(request).collect();
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    s.write_all(all.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while String::from_utf8_lossy(&got)
        .matches("{\"ok\":true}")
        .count()
        < 3
    {
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!(
                "{other:?} after {:?}",
                String::from_utf8_lossy(&got).into_owned()
            ),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert!(!text.contains("Connection: close"), "{text}");
    let data = common::received(&mut bob, 300);
    assert_eq!(data, [0, 1, 2].map(serde_json::Value::from), "in order");
}

/// A request on its way (connected, its bytes not there yet) outranks connections that
/// sent a byte and stalled: on the old ranking the newest honest connection, still
/// silent, was the first evicted by the next connection of a flood.
#[test]
fn a_connection_flood_does_not_evict_a_request_just_connected() {
    let gw = Gateway::dev(&[
        "--reactors",
        "1",
        "--control-max-clients",
        "3",
        "--control-first-request-timeout",
        "300",
    ]);
    let addr = gw.control_addr;
    let settle = || std::thread::sleep(Duration::from_millis(15));
    let flood = || {
        let mut f = TcpStream::connect(addr).unwrap();
        f.write_all(b"G").unwrap();
        settle();
        f
    };
    let _f1 = flood();
    let _f2 = flood();
    // The honest client has connected; its request is a moment behind.
    let mut honest = TcpStream::connect(addr).unwrap();
    settle();
    let _f3 = flood();
    honest
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    honest
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = Vec::new();
    let _ = honest.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "the honest request got {out:?}"
    );
}

#[test]
fn honest_requests_are_answered_through_a_flood_of_one_byte_connections() {
    pushgate::limits::raise_nofile().unwrap();
    // The default table (1 024): larger per reactor than one turn's accepts, so a burst
    // from the backlog cannot cycle through it before a request just connected is read.
    let gw = Gateway::dev(&["--control-first-request-timeout", "300"]);
    let addr = gw.control_addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let filled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = std::sync::Arc::clone(&stop);
        let filled = std::sync::Arc::clone(&filled);
        std::thread::spawn(move || {
            // Bounded: at most 3 000 connections, held (the server evicts them), from
            // addresses of their own.
            let mut held = Vec::new();
            for i in 0..3_000u32 {
                if i == 1_200 {
                    // The table is full of them: honest requests may start.
                    filled.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let mut s = common::connect_from([127, 0, 1, 2 + (i / 500) as u8], addr);
                let _ = s.write_all(b"G");
                held.push(s);
            }
            held.len()
        })
    };
    while !filled.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut answered = 0;
    for _ in 0..45 {
        let mut s = common::connect_from([127, 0, 2, 2], addr);
        // A request a moment behind its connect, as over any real network.
        std::thread::sleep(Duration::from_millis(1));
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let read = s.read_to_end(&mut out);
        if out.starts_with(b"HTTP/1.1 200") {
            answered += 1;
        } else {
            eprintln!("not answered: {read:?} {:?}", String::from_utf8_lossy(&out));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flood = flooder.join().unwrap();
    eprintln!("{answered} of 45 answered through a flood of {flood} connections");
    assert_eq!(answered, 45);
    assert!(gw.metric("pushgate_control_evicted_total{reason=\"full\"}") > 0.0);
}

#[test]
fn one_address_holds_at_most_its_control_connections() {
    let gw = Gateway::dev(&["--control-max-clients-per-ip", "2"]);
    let addr = gw.control_addr;
    let a1 = common::connect_from([127, 0, 3, 2], addr);
    let _a2 = common::connect_from([127, 0, 3, 2], addr);
    std::thread::sleep(Duration::from_millis(50));
    let mut a3 = common::connect_from([127, 0, 3, 2], addr);
    a3.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = a3.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 429"), "{out:?}");
    // Another address is not affected.
    let mut b = common::connect_from([127, 0, 3, 3], addr);
    b.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = b.read_to_end(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 200"));
    // A place given back is taken again.
    drop(a1);
    assert!(gw.eventually(Duration::from_secs(3), |g| {
        let mut s = common::connect_from([127, 0, 3, 2], g.control_addr);
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out.starts_with(b"HTTP/1.1 200")
    }));
    assert!(gw.metric("pushgate_control_evicted_total{reason=\"per_ip\"}") >= 1.0);
}
