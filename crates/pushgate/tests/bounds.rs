//! Defects an outside review found, each pinned by a test that fails without its fix:
//! compression within the window a client negotiated, messages larger than the outbound
//! bound, a token expiring in the far future, client request limits, a shutdown drain that
//! spun, a saturated node answering 503.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{post, Client, Gateway, Read_};
use protocol::{CloseCode, Message};

/// Text whose repeats lie 20 000 bytes back: a compressor with a 15-bit window uses
/// distances no smaller window can follow.
fn far_repeats(len: usize) -> String {
    let mut x: u32 = 0x2545_f491;
    let block: Vec<u8> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b'a' + (x % 26) as u8
        })
        .collect();
    String::from_utf8(block.iter().copied().cycle().take(len).collect()).unwrap()
}

/// Raw inflate with the RFC 7692 §7.2.2 tail, limited to a window of `bits`.
fn inflate(payload: &[u8], bits: u8) -> Result<Vec<u8>, String> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = flate2::Decompress::new_with_window_bits(false, bits);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Regression: every push was compressed by the reactor's one 15-bit compressor, so a
/// client that negotiated `server_max_window_bits=10` (RFC 7692 §7.1.2.1) could not
/// inflate a 45 KB push ("invalid distance too far back"). Clients with every window
/// size, on the same reactor, get the same push, each inflatable within its window.
#[test]
fn pushes_are_compressed_within_each_connections_window() {
    let gw = Gateway::dev(&["--reactors", "1"]);
    let mut clients: Vec<(u8, Client)> = (9..=15u8)
        .map(|bits| {
            let stream = std::net::TcpStream::connect(gw.client_addr).unwrap();
            let mut c = Client::connect_with(
                stream,
                "/ws?uid=shared",
                &format!(
                    "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits={bits}\r\n"
                ),
            );
            assert!(
                c.response.contains(&format!("server_max_window_bits={bits}"))
                    || bits == 15,
                "{bits}: {}",
                c.response
            );
            c.recv_json();
            (bits, c)
        })
        .collect();
    let data = far_repeats(45_000);
    let body = serde_json::json!({"to": ["shared"], "data": data}).to_string();
    let (status, reply) = post(gw.control_addr, "/v1/push", &body, None);
    assert_eq!(status, 200, "{reply}");
    for (bits, c) in &mut clients {
        let (header, payload) = c.read_raw_frame();
        assert!(header.rsv1, "window {bits}: not compressed");
        let inflated = inflate(&payload, *bits).unwrap_or_else(|e| panic!("window {bits}: {e}"));
        let msg: serde_json::Value = serde_json::from_slice(&inflated).unwrap();
        assert_eq!(msg["data"].as_str(), Some(data.as_str()), "window {bits}");
    }
}

/// Regression: a message larger than `--max-outbound-bytes` (256 KiB) but within
/// `--max-message-size` (1 MiB) closed its recipient with 1013. With the defaults, a
/// 1 MiB push and a 1 MiB echo are delivered.
#[test]
fn a_message_at_the_size_limit_is_delivered_with_the_defaults() {
    let gw = Gateway::dev(&[]);
    let mut c = Client::connect(gw.client_addr, "/ws?uid=big");
    c.recv_json();
    let data = "x".repeat(1024 * 1024);
    let body = format!(r#"{{"to":["big"],"data":"{data}"}}"#);
    let (status, reply) = post(gw.control_addr, "/v1/push", &body, None);
    assert_eq!(status, 200, "{reply}");
    let msg = c.recv_json();
    assert_eq!(msg["data"].as_str().map(str::len), Some(1024 * 1024));

    let mut e = Client::connect(gw.client_addr, "/echo");
    let payload = vec![b'y'; 1024 * 1024];
    e.send(protocol::OpCode::Binary, &payload);
    assert_eq!(e.recv(), Message::Binary(Bytes::from(payload)));
    assert_eq!(gw.metric("pushgate_slow_consumer_closes_total"), 0.0);
}

fn hs256(sub: &str, exp: u64) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub, exp },
        &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap()
}

/// Regression: a signed token with `exp` near `u64::MAX` overflowed `Instant` arithmetic
/// in the session and panicked the reactor thread, which stopped the node.
#[test]
fn a_token_expiring_in_the_far_future_does_not_stop_the_node() {
    let gw = Gateway::dev(&["--jwt-secret", "s3cret", "--reactors", "1"]);
    for exp in [u64::MAX, u64::MAX - 30, i64::MAX as u64] {
        let mut c = Client::connect(gw.client_addr, &format!("/ws?token={}", hs256("far", exp)));
        assert_eq!(c.recv_json()["uid"], "far");
    }
    let mut c = Client::connect(
        gw.client_addr,
        &format!("/ws?token={}", hs256("after", 4_000_000_000)),
    );
    c.recv_json();
    let (status, _) = post(
        gw.control_addr,
        "/v1/push",
        r#"{"to":["after"],"data":1}"#,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(c.recv_json()["data"], 1);
    assert_eq!(gw.control_get("/healthz").0, 200);
}

/// One connection can no longer turn itself into a flood: requests past `--client-rate`
/// get `rate_limited`, ten in a row close with 1008, and a `send` names at most
/// `--max-recipients` users.
#[test]
fn client_requests_are_rate_limited_and_recipients_capped() {
    let gw = Gateway::dev(&["--client-rate", "20", "--max-recipients", "5"]);
    let mut c = Client::connect(gw.client_addr, "/ws?uid=chatty");
    c.recv_json();
    c.send_text(r#"{"type":"send","to":["a","b","c","d","e","f"],"data":1}"#);
    let reply = c.recv_json();
    assert_eq!(reply["code"], "too_many_recipients", "{reply}");

    // Pings are not limited; joins are: a burst of 40 (twice the rate) passes, then
    // refusals, and the tenth in a row closes.
    for _ in 0..50 {
        c.send_text(r#"{"type":"ping"}"#);
    }
    for _ in 0..60 {
        c.send_text(r#"{"type":"join","room":"r"}"#);
    }
    let (mut pongs, mut limited) = (0, 0);
    let code = loop {
        match c.read(Duration::from_secs(5)) {
            Read_::Msg(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") if v["code"] == "rate_limited" => limited += 1,
                    _ => panic!("unexpected {v}"),
                }
            }
            Read_::Msg(Message::Close(Some(f))) => break f.code,
            other => panic!("expected messages then a close, got {other:?}"),
        }
    };
    assert_eq!(code, CloseCode::POLICY);
    assert_eq!(limited, 10);
    assert_eq!(pongs, 50);
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric("pushgate_client_requests_total{type=\"rate_limited\"}")
        == 10.0));
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    // Clock ticks are 100 a second on Linux.
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// Regression: once the last close frame of a drain was queued, the drain's next deadline
/// lay in the past and the reactor polled with a zero timeout until every peer answered or
/// the close timeout ran out: a core spent on nothing during every shutdown.
#[test]
fn the_shutdown_drain_sleeps_while_peers_take_their_time() {
    let mut gw = Gateway::dev(&[
        "--reactors",
        "1",
        "--shutdown-drain",
        "0.1",
        "--close-timeout",
        "3",
    ]);
    // Connected, and never answering the close frame.
    let mut c = Client::connect(gw.client_addr, "/ws?uid=silent");
    c.recv_json();
    gw.terminate();
    assert_eq!(
        c.expect_close(Duration::from_secs(5)),
        CloseCode::GOING_AWAY
    );
    let before = cpu_time(gw.pid());
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(2_000));
    let used = cpu_time(gw.pid()).saturating_sub(before);
    assert!(
        used < Duration::from_millis(500),
        "{used:?} of CPU in {:?} of waiting",
        start.elapsed()
    );
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}
