//! A slow consumer is closed with 1013 without hurting anyone else; a connect storm is
//! admitted at the pace the node can take.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Client, Gateway, Read_};
use protocol::{CloseCode, Message, OpCode};

#[test]
fn slow_consumer_is_closed_1013_and_others_are_unaffected() {
    let gw = Gateway::start(&[
        "--max-outbound-bytes",
        "65536",
        "--max-outbound-messages",
        "64",
    ]);
    // A client that sends echo requests but never reads: the replies pile up.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&gw.client_addr.into()).unwrap();
    let mut slow = Client::connect_with(socket.into(), "/echo", "");
    let mut good = Client::connect(gw.client_addr, "/echo");
    let payload = vec![b'x'; 16 * 1024];
    slow.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let frame = protocol::frame::client_message(OpCode::Binary, &payload, [1, 2, 3, 4]);
        use std::io::Write;
        if slow.stream.write_all(&frame).is_err() {
            break;
        }
        if gw.metric("pushgate_slow_consumer_closes_total") >= 1.0 {
            break;
        }
    }
    assert!(gw.eventually(Duration::from_secs(5), |g| g
        .metric("pushgate_slow_consumer_closes_total")
        == 1.0));
    good.send_text("fine");
    assert_eq!(
        good.recv(),
        Message::Text(bytes::Bytes::from_static(b"fine"))
    );
    // The slow client eventually finds a 1013 close frame after whatever echoes got out.
    let code = loop {
        match slow.read(Duration::from_secs(10)) {
            Read_::Msg(Message::Close(Some(f))) => break Some(f.code),
            Read_::Msg(_) => continue,
            _ => break None,
        }
    };
    assert_eq!(code, Some(CloseCode::TRY_AGAIN_LATER));
}

#[test]
fn connect_storm_pauses_accepting_and_recovers() {
    let gw = Gateway::start(&[
        "--reactors",
        "1",
        "--max-pending-handshakes",
        "4",
        "--handshake-timeout",
        "1",
    ]);
    // Ten silent sockets: the reactor stops accepting at four pending handshakes.
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(gw.client_addr).unwrap())
        .collect();
    assert!(gw.eventually(Duration::from_secs(3), |g| g
        .metric("pushgate_accept_pauses_total")
        >= 1.0));
    assert!(gw.metric_sum("pushgate_handshakes_in_progress") <= 4.0);
    // A real client waits in the backlog and is served once timeouts free the slots.
    let start = Instant::now();
    let mut c = Client::connect(gw.client_addr, "/echo");
    c.send_text("through");
    assert_eq!(
        c.recv(),
        Message::Text(bytes::Bytes::from_static(b"through"))
    );
    assert!(start.elapsed() < Duration::from_secs(8));
    assert!(gw.metric("pushgate_timeouts_total{kind=\"handshake\"}") >= 4.0);
    drop(idle);
}

#[test]
fn accept_rate_limit_paces_a_burst() {
    let gw = Gateway::start(&["--reactors", "1", "--max-accept-rate", "20"]);
    let start = Instant::now();
    // 30 connections at 20 per second (burst 3): at least ~1.3 s.
    let clients: Vec<Client> = (0..30)
        .map(|_| Client::connect(gw.client_addr, "/echo"))
        .collect();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1200), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(clients.len(), 30);
}
