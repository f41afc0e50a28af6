//! `/sse`, `/poll` and `/send` sessions on a virtual clock: heartbeats without an idle
//! timeout, the poll deadline and replay cut, the `/send` keep-alive cycle, pipelining and
//! slow bodies. No sockets, no sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use bytes::Bytes;
use session::client_protocol::{msg_frame_seq, RequestError};

use common::Harness;
use session::{CloseKind, Event, SessionConfig, TransmitKind, Transport, Welcome};

impl Harness {
    /// Everything written by the last call, as text.
    fn written(&self) -> String {
        self.fx
            .transmits
            .iter()
            .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
            .collect()
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        heartbeat: Duration::from_secs(25),
        idle_timeout: Duration::from_secs(60),
        poll_timeout: Duration::from_secs(20),
        ..SessionConfig::default()
    }
}

#[test]
fn a_stream_gets_a_comment_every_heartbeat_and_never_idles_out() {
    let mut h = Harness::new(config());
    h.input(b"GET /sse?uid=a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(
        h.fx.events[..],
        [Event::Opened {
            transport: Transport::Sse,
            since: None,
            ..
        }]
    ));
    assert!(h.written().starts_with("HTTP/1.1 200 OK\r\n"));
    // Whatever the client sends after its request changes nothing.
    h.input(b"garbage");
    assert!(h.fx.events.is_empty() && h.fx.transmits.is_empty());
    // Five heartbeats span twice the idle timeout: the client never speaks on a stream.
    for _ in 0..5 {
        assert_eq!(h.deadline_in(), Duration::from_secs(25));
        h.advance(Duration::from_secs(25));
        assert_eq!(h.fx.events, [Event::HeartbeatSent]);
        assert_eq!(h.fx.transmits[0].kind, TransmitKind::Control);
        assert_eq!(&h.fx.transmits[0].bytes[..], b":\n\n");
        assert!(h.session.is_open());
    }
}

#[test]
fn last_event_id_is_the_resume_point() {
    let mut h = Harness::new(config());
    h.input(b"GET /sse?uid=a&since=2 HTTP/1.1\r\nLast-Event-ID: 7\r\n\r\n");
    assert!(matches!(
        h.fx.events[..],
        [Event::Opened { since: Some(7), .. }]
    ));
    // The welcome and the replay go out as events, the replay's with their seq as id.
    let w = Welcome {
        seq: Some(8),
        recovered: Some(true),
        replay: vec![msg_frame_seq("s", "i8", None, 8, b"\"x\"")],
        error: None,
    };
    h.call(|s, cx, fx| s.welcome("a", w, cx, fx));
    let out = h.written();
    assert!(out.starts_with("data: {"), "{out}");
    assert!(out.contains("\"type\":\"welcome\""), "{out}");
    assert!(out.ends_with("id: 8\ndata: {\"type\":\"msg\",\"from\":\"s\",\"id\":\"i8\",\"seq\":8,\"data\":\"x\"}\n\n"), "{out}");
}

#[test]
fn a_parked_poll_is_answered_empty_at_its_deadline() {
    let mut h = Harness::new(config());
    h.input(b"GET /poll?uid=a&since=3 HTTP/1.1\r\nOrigin: http://o\r\n\r\n");
    assert!(matches!(
        h.fx.events[..],
        [Event::Opened {
            transport: Transport::Poll,
            since: Some(3),
            ..
        }]
    ));
    assert!(
        h.fx.transmits.is_empty(),
        "nothing until there is an answer"
    );
    let w = Welcome {
        seq: Some(3),
        ..Welcome::default()
    };
    h.call(|s, cx, fx| s.welcome("a", w, cx, fx));
    assert!(h.fx.transmits.is_empty());
    assert!(h.session.is_open());
    assert_eq!(h.deadline_in(), Duration::from_secs(20));
    h.advance(Duration::from_secs(20));
    assert_eq!(h.fx.events, [Event::PollAnswered(false)]);
    let out = h.written();
    assert!(
        out.contains("Access-Control-Allow-Origin: http://o\r\n"),
        "{out}"
    );
    assert!(out.contains("Connection: close\r\n"), "{out}");
    assert!(
        out.ends_with("\r\n\r\n{\"messages\":[],\"seq\":3}"),
        "{out}"
    );
    assert_eq!(h.fx.close, Some(CloseKind::Graceful));
}

#[test]
fn a_poll_takes_the_oldest_of_a_long_replay_and_says_where_it_stopped() {
    let mut config = config();
    config.decoder.max_message_size = 250;
    let mut h = Harness::new(config);
    h.input(b"GET /poll?uid=a&since=0 HTTP/1.1\r\n\r\n");
    let data = format!("\"{}\"", "d".repeat(60));
    let replay: Vec<Bytes> = (1..=3)
        .map(|n| msg_frame_seq("s", &format!("i{n}"), None, n, data.as_bytes()))
        .collect();
    let w = Welcome {
        seq: Some(3),
        recovered: Some(true),
        replay,
        error: None,
    };
    h.call(|s, cx, fx| s.welcome("a", w, cx, fx));
    assert_eq!(h.fx.events, [Event::PollAnswered(true)]);
    let out = h.written();
    let body: serde_json::Value =
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    // About 110 bytes a message: two fit in 250, and `seq` is the second's, not the latest.
    assert_eq!(body["messages"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["seq"], 2);
    // A live message answers a parked poll with its own seq.
    let mut h = Harness::new(self::config());
    h.input(b"GET /poll?uid=a&since=5 HTTP/1.1\r\n\r\n");
    h.call(|s, cx, fx| {
        s.welcome(
            "a",
            Welcome {
                seq: Some(5),
                ..Welcome::default()
            },
            cx,
            fx,
        )
    });
    let frame = msg_frame_seq("s", "i6", None, 6, b"1");
    h.call(|s, _, fx| s.poll_deliver(&frame, fx));
    assert_eq!(h.fx.events, [Event::PollAnswered(true)]);
    assert!(h.written().ends_with(",\"seq\":6}"), "{}", h.written());
    assert!(!h.session.is_open());
}

#[test]
fn send_keeps_the_connection_for_the_next_request() {
    let mut h = Harness::new(config());
    let body = r#"{"type":"send","to":["b"],"data":1}"#;
    let request = format!(
        "POST /send?uid=a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    h.input(request.as_bytes());
    assert!(
        matches!(&h.fx.events[..], [Event::HttpSend { uid, to, .. }] if uid == "a" && to == &["b"])
    );
    h.now += Duration::from_secs(3);
    h.call(|s, cx, fx| s.send_answered(Ok(()), cx, fx));
    assert_eq!(h.fx.events, [Event::SendAnswered(200)]);
    let out = h.written();
    assert!(!out.contains("Connection: close"), "{out}");
    assert!(out.ends_with("{\"ok\":true}"));
    // Back to reading a request, with a fresh handshake timeout as the keep-alive limit.
    assert!(h.session.is_handshaking());
    assert_eq!(h.deadline_in(), Duration::from_secs(10));
    h.input(request.as_bytes());
    h.call(|s, cx, fx| {
        s.send_answered(
            Err(RequestError {
                code: "unavailable",
                message: "x",
            }),
            cx,
            fx,
        )
    });
    assert_eq!(h.fx.events, [Event::SendAnswered(503)]);
    // Two requests in one read: both are answered, in order, and the connection stays.
    let twice = format!("{request}{request}");
    h.input(twice.as_bytes());
    assert_eq!(h.fx.events.len(), 1);
    h.call(|s, cx, fx| s.send_answered(Ok(()), cx, fx));
    assert!(
        matches!(
            &h.fx.events[..],
            [Event::SendAnswered(200), Event::HttpSend { .. }]
        ),
        "{:?}",
        h.fx.events
    );
    assert!(
        !h.written().contains("Connection: close"),
        "{}",
        h.written()
    );
    h.call(|s, cx, fx| s.send_answered(Ok(()), cx, fx));
    assert_eq!(h.fx.events, [Event::SendAnswered(200)]);
    assert_eq!(h.fx.close, None);
    assert!(h.session.is_handshaking());
}

/// Issue 31: pipelined `POST /send` requests were not served (the connection closed after
/// the first). They are answered in order, up to a bound per read; past it the last
/// answer says `Connection: close` and the client sends the rest again.
#[test]
fn pipelined_sends_are_answered_in_order_up_to_the_bound() {
    let mut h = Harness::new(SessionConfig {
        client_rate: 0,
        ..config()
    });
    let request = |i: usize| {
        let body = format!(r#"{{"type":"send","to":["b"],"data":{i}}}"#);
        format!(
            "POST /send?uid=a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let all: String = (0..40).map(request).collect();
    h.input(all.as_bytes());
    let mut answered = 0;
    loop {
        let data = h.fx.events.iter().find_map(|e| match e {
            Event::HttpSend { data, .. } => Some(data.clone()),
            _ => None,
        });
        let Some(data) = data else { break };
        assert_eq!(
            &data[..],
            answered.to_string().as_bytes(),
            "answered in order"
        );
        h.call(|s, cx, fx| s.send_answered(Ok(()), cx, fx));
        answered += 1;
        assert!(h.written().starts_with("HTTP/1.1 200"), "{}", h.written());
    }
    assert_eq!(answered, 17, "the first and 16 pipelined behind it");
    assert!(h.written().contains("Connection: close\r\n"));
    assert_eq!(h.fx.close, Some(CloseKind::Graceful));
}

#[test]
fn a_dribbled_body_is_cut_at_the_handshake_timeout() {
    let mut h = Harness::new(config());
    h.input(b"POST /send?uid=a HTTP/1.1\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"ty");
    assert!(h.fx.events.is_empty());
    assert!(h.session.handshake_partial());
    h.advance(Duration::from_secs(5));
    h.input(b"pe\"");
    assert_eq!(
        h.deadline_in(),
        Duration::from_secs(5),
        "reading does not extend it"
    );
    h.advance(Duration::from_secs(5));
    assert_eq!(h.fx.events, [Event::HandshakeTimeout]);
    assert_eq!(h.fx.close, Some(CloseKind::Graceful));
}
