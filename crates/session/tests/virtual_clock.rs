//! The session's timers and limits driven on a virtual clock: no sockets, no sleeping.
//! Each test moves `now` by hand and checks what the session asks its driver to do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use protocol::frame::client_message;
use protocol::{CloseCode, Decoder, DecoderConfig, Message, OpCode, Role};
use session::{AuthMode, CloseKind, Event, JwtAuth, SessionConfig, TransmitKind};

use common::Harness;

const KEY: [u8; 4] = [1, 2, 3, 4];

fn config() -> SessionConfig {
    SessionConfig {
        handshake_timeout: Duration::from_secs(10),
        heartbeat: Duration::from_secs(25),
        idle_timeout: Duration::from_secs(60),
        close_timeout: Duration::from_secs(5),
        ..SessionConfig::default()
    }
}

impl Harness {
    /// An upgraded `/ws` connection for `alice` (dev mode), or with `query` appended.
    fn open(config: SessionConfig, query: &str) -> Self {
        let mut h = Harness::new(config);
        h.input(
            format!(
                "GET /ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        );
        assert!(h.session.is_open(), "{:?}", h.fx.events);
        h
    }

    fn send_text(&mut self, text: &str) {
        self.input(&client_message(OpCode::Text, text.as_bytes(), KEY));
    }

    /// The frames sent by the last call, decoded.
    fn sent(&self) -> Vec<(TransmitKind, Message)> {
        let mut out = Vec::new();
        for t in &self.fx.transmits {
            if t.kind == TransmitKind::Handshake {
                continue;
            }
            let mut d = Decoder::new();
            let mut buf = BytesMut::from(&t.bytes[..]);
            let cfg = DecoderConfig {
                role: Role::Client,
                ..DecoderConfig::server()
            };
            let m = d.decode(&mut buf, &cfg, None).unwrap().unwrap();
            out.push((t.kind, m));
        }
        out
    }

    fn close_code(&self) -> Option<CloseCode> {
        self.sent().into_iter().find_map(|(_, m)| match m {
            Message::Close(Some(f)) => Some(f.code),
            _ => None,
        })
    }
}

#[test]
fn handshake_timeout_closes_a_silent_socket() {
    let mut h = Harness::new(config());
    h.input(b"GET /ws?uid=a HTTP/1.1\r\n");
    assert_eq!(h.deadline_in(), Duration::from_secs(10));
    h.advance(Duration::from_millis(9_999));
    assert!(h.fx.events.is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.fx.events, [Event::HandshakeTimeout]);
    assert_eq!(h.fx.close, Some(CloseKind::Graceful));
}

#[test]
fn heartbeat_then_idle_timeout() {
    let mut h = Harness::open(config(), "uid=alice");
    assert_eq!(h.deadline_in(), Duration::from_secs(25));
    h.advance(Duration::from_secs(25));
    assert_eq!(h.fx.events, [Event::HeartbeatSent]);
    assert!(matches!(
        h.sent()[..],
        [(TransmitKind::Control, Message::Ping(_))]
    ));
    // One ping outstanding: the next deadline is the idle timeout, and no second ping.
    assert_eq!(h.deadline_in(), Duration::from_secs(35));
    h.advance(Duration::from_secs(34));
    assert!(h.fx.events.is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(h.fx.events, [Event::IdleTimeout]);
    assert_eq!(h.close_code(), Some(CloseCode::GOING_AWAY));
    // The close handshake has its own timeout; past it the socket is reset.
    assert_eq!(h.deadline_in(), Duration::from_secs(5));
    h.advance(Duration::from_secs(5));
    assert_eq!(h.fx.events, [Event::CloseTimeout]);
    assert_eq!(h.fx.close, Some(CloseKind::Reset));
}

#[test]
fn any_input_postpones_the_heartbeat() {
    let mut h = Harness::open(config(), "uid=alice");
    h.advance(Duration::from_secs(20));
    h.input(&client_message(OpCode::Pong, b"", KEY));
    assert_eq!(h.deadline_in(), Duration::from_secs(25));
}

#[test]
fn answering_the_close_handshake_in_time_is_graceful() {
    let mut h = Harness::open(config(), "uid=alice");
    h.call(|s, cx, fx| s.close(CloseCode::GOING_AWAY, "bye", cx, fx));
    h.advance(Duration::from_secs(4));
    h.input(&client_message(OpCode::Close, &1000u16.to_be_bytes(), KEY));
    assert_eq!(h.fx.close, Some(CloseKind::Graceful));
    assert!(h.session.is_closed());
}

fn token(exp: u64) -> String {
    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        exp: u64,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub: "alice", exp },
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .unwrap()
}

fn jwt_config() -> SessionConfig {
    SessionConfig {
        auth: AuthMode::Jwt(JwtAuth::hs256(b"secret").with_leeway(Duration::ZERO)),
        ..config()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn token_expiry_closes_with_1008() {
    let mut h = Harness::open(jwt_config(), &format!("token={}", token(unix_now() + 12)));
    let d = h.deadline_in();
    assert!(
        d <= Duration::from_secs(12) && d >= Duration::from_secs(10),
        "{d:?}"
    );
    h.advance(d);
    assert_eq!(h.fx.events, [Event::TokenExpired]);
    assert_eq!(h.close_code(), Some(CloseCode::POLICY));
}

/// Regression: an `exp` near `u64::MAX` overflowed `Instant` arithmetic and panicked the
/// reactor thread, stopping the node.
#[test]
fn a_token_expiring_in_the_far_future_never_panics() {
    for exp in [u64::MAX, u64::MAX - 1, i64::MAX as u64, u64::MAX / 1_000] {
        let mut h = Harness::open(jwt_config(), &format!("token={}", token(exp)));
        // The heartbeat still comes first; nothing ever expires.
        assert_eq!(h.deadline_in(), Duration::from_secs(25));
        h.advance(Duration::from_secs(25));
        assert_eq!(h.fx.events, [Event::HeartbeatSent]);
    }
}

/// Regression: every ping queued its own pong, so a peer that pings and never reads grew
/// the server's queue without bound. Pongs are now their own kind, coalesced by the
/// driver's queue (one waiting at a time).
#[test]
fn pings_are_answered_with_coalescable_pongs() {
    let mut h = Harness::open(config(), "uid=alice");
    let mut flood = Vec::new();
    for i in 0..100u8 {
        flood.extend_from_slice(&client_message(OpCode::Ping, &[i], KEY));
    }
    h.input(&flood);
    let sent = h.sent();
    assert_eq!(sent.len(), 100);
    assert!(sent
        .iter()
        .all(|(k, m)| *k == TransmitKind::Pong && matches!(m, Message::Pong(_))));
    assert!(matches!(&sent[99].1, Message::Pong(p) if p[..] == [99]));
}

#[test]
fn requests_past_the_rate_limit_are_refused_then_closed() {
    let cfg = SessionConfig {
        client_rate: 5,
        ..config()
    };
    let mut h = Harness::open(cfg, "uid=alice");
    // A burst of twice the rate passes.
    for _ in 0..10 {
        h.send_text(r#"{"type":"join","room":"r"}"#);
        assert!(
            matches!(h.fx.events[..], [Event::Request(_)]),
            "{:?}",
            h.fx.events
        );
    }
    h.send_text(r#"{"type":"join","room":"r"}"#);
    assert_eq!(h.fx.events, [Event::RateLimited]);
    let reply = h.sent();
    assert!(matches!(&reply[0].1, Message::Text(t) if t.windows(12).any(|w| w == b"rate_limited")));
    // Pings are never refused; time refills the bucket at the configured rate.
    h.send_text(r#"{"type":"ping"}"#);
    assert_eq!(h.fx.events, [Event::AppPing]);
    h.now += Duration::from_millis(250);
    h.send_text(r#"{"type":"leave","room":"r"}"#);
    assert!(
        matches!(h.fx.events[..], [Event::Request(_)]),
        "{:?}",
        h.fx.events
    );
    // Ten refusals in a row close the connection with 1008.
    for i in 1..=10 {
        h.send_text(r#"{"type":"leave","room":"r"}"#);
        if i < 10 {
            assert_eq!(h.fx.events, [Event::RateLimited]);
        }
    }
    assert_eq!(h.fx.events, [Event::RateLimited, Event::TooManyRateLimited]);
    assert_eq!(h.close_code(), Some(CloseCode::POLICY));
}

#[test]
fn a_rate_of_zero_is_unlimited() {
    let cfg = SessionConfig {
        client_rate: 0,
        ..config()
    };
    let mut h = Harness::open(cfg, "uid=alice");
    for _ in 0..1_000 {
        h.send_text(r#"{"type":"join","room":"r"}"#);
        assert!(matches!(h.fx.events[..], [Event::Request(_)]));
    }
}

#[test]
fn sends_naming_too_many_users_are_refused() {
    let cfg = SessionConfig {
        max_recipients: 3,
        ..config()
    };
    let mut h = Harness::open(cfg, "uid=alice");
    h.send_text(r#"{"type":"send","to":["a","b","c"],"data":1}"#);
    assert!(matches!(h.fx.events[..], [Event::Request(_)]));
    h.send_text(r#"{"type":"send","to":["a","b","c","d"],"data":1}"#);
    assert_eq!(h.fx.events, [Event::BadRequest]);
    let reply = h.sent();
    assert!(matches!(&reply[0].1, Message::Text(t)
        if std::str::from_utf8(t).unwrap().contains("too_many_recipients")));
}

/// Every server window a client may ask for: what the session compresses (echo, replies)
/// inflates with an independent inflater limited to that window.
#[test]
fn echo_is_compressed_within_the_negotiated_window() {
    let data = far_repeats(45_000);
    for bits in 9..=15u8 {
        let mut h = Harness::new(config());
        h.input(
            format!(
                "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits={bits}\r\n\r\n"
            )
            .as_bytes(),
        );
        assert!(h.session.is_open());
        h.input(&client_message(OpCode::Text, &data, KEY));
        let t = &h.fx.transmits[0];
        let header_len = 4 + if t.bytes[1] & 0x7f == 127 { 6 } else { 0 };
        assert_eq!(t.bytes[0] & 0x40, 0x40, "RSV1: compressed");
        let inflated =
            inflate(&t.bytes[header_len..], bits).unwrap_or_else(|e| panic!("{bits}: {e}"));
        assert_eq!(inflated, data, "window {bits}");
    }
}

/// Text whose repeats lie about 20 KB back: compressible only with a large window.
fn far_repeats(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    let block: Vec<u8> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b'a' + (x % 26) as u8
        })
        .collect();
    block.iter().copied().cycle().take(len).collect()
}

/// Raw inflate (RFC 7692 §7.2.2: the empty-block tail appended) with a window of `bits`.
fn inflate(payload: &[u8], bits: u8) -> Result<Vec<u8>, String> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = flate2::Decompress::new_with_window_bits(false, bits);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .map_err(|e| e.to_string())?;
    Ok(out)
}
