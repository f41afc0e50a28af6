//! Every timeout end to end: handshake (slowloris), heartbeat, idle, close handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Client, Gateway, Read_};
use protocol::{CloseCode, Message, OpCode};

#[test]
fn slow_handshake_is_cut_off() {
    let gw = Gateway::dev(&["--handshake-timeout", "1"]);
    let mut s = TcpStream::connect(gw.client_addr).unwrap();
    let start = Instant::now();
    // A slowloris: a byte at a time, never finishing.
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the connection");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        gw.metric("pushgate_timeouts_total{kind=\"handshake\"}"),
        1.0
    );
}

#[test]
fn silent_connection_is_pinged_then_closed_1001() {
    let gw = Gateway::dev(&["--heartbeat", "1", "--idle-timeout", "2.5"]);
    let mut c = Client::connect(gw.client_addr, "/echo");
    let start = Instant::now();
    assert_eq!(
        c.read(Duration::from_secs(3)),
        Read_::Msg(Message::Ping(bytes::Bytes::new()))
    );
    let ping_at = start.elapsed();
    assert!(
        ping_at >= Duration::from_millis(900) && ping_at < Duration::from_millis(2000),
        "{ping_at:?}"
    );
    // Not answering the ping: closed at the idle timeout.
    assert_eq!(
        c.expect_close(Duration::from_secs(4)),
        CloseCode::GOING_AWAY
    );
    let closed_at = start.elapsed();
    assert!(
        closed_at >= Duration::from_millis(2400) && closed_at < Duration::from_millis(4000),
        "{closed_at:?}"
    );
    c.send_close(1000);
    c.expect_eof(Duration::from_secs(3));
    assert_eq!(gw.metric("pushgate_heartbeats_sent_total"), 1.0);
    assert_eq!(gw.metric("pushgate_timeouts_total{kind=\"idle\"}"), 1.0);
}

#[test]
fn answering_pings_keeps_a_connection_alive() {
    let gw = Gateway::dev(&["--heartbeat", "0.5", "--idle-timeout", "1.2"]);
    let mut c = Client::connect(gw.client_addr, "/echo");
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(4) {
        match c.read(Duration::from_millis(300)) {
            Read_::Msg(Message::Ping(p)) => {
                pings += 1;
                c.send(OpCode::Pong, &p);
            }
            Read_::Timeout => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 4, "pings: {pings}");
    c.send_text("alive");
    assert_eq!(c.recv(), Message::Text(bytes::Bytes::from_static(b"alive")));
    assert_eq!(gw.metric("pushgate_timeouts_total{kind=\"idle\"}"), 0.0);
}

#[test]
fn peer_that_never_answers_our_close_is_dropped() {
    let gw = Gateway::dev(&[
        "--heartbeat",
        "0.3",
        "--idle-timeout",
        "0.6",
        "--close-timeout",
        "1",
    ]);
    let mut c = Client::connect(gw.client_addr, "/echo");
    assert_eq!(
        c.expect_close(Duration::from_secs(3)),
        CloseCode::GOING_AWAY
    );
    // We do not answer; the server gives up after the close timeout.
    let start = Instant::now();
    c.expect_eof(Duration::from_secs(4));
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "{:?}",
        start.elapsed()
    );
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric("pushgate_timeouts_total{kind=\"close\"}")
        == 1.0));
}
