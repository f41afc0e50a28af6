//! `/echo` end to end: data, fragmentation, pings, close handshake, compression, and the
//! close code for each kind of bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{Client, Gateway, Read_};
use protocol::deflate::{Deflater, Inflater};
use protocol::frame::client_frame;
use protocol::{CloseCode, FrameHeader, Message, OpCode};

#[test]
fn echoes_text_and_binary_of_every_length_class() {
    let gw = Gateway::dev(&[]);
    let mut c = Client::connect(gw.client_addr, "/echo");
    for len in [0usize, 1, 125, 126, 65535, 65536] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        c.send(OpCode::Binary, &data);
        assert_eq!(c.recv(), Message::Binary(Bytes::from(data)), "len {len}");
    }
    c.send_text("héllo");
    assert_eq!(c.recv(), Message::Text(Bytes::from("héllo")));
    assert!(gw.metric("pushgate_messages_received_total") >= 7.0);
}

#[test]
fn fragments_with_interleaved_ping() {
    let gw = Gateway::dev(&[]);
    let mut c = Client::connect(gw.client_addr, "/echo");
    c.send_fragment(OpCode::Text, false, b"frag");
    c.send(OpCode::Ping, b"mid");
    c.send_fragment(OpCode::Continuation, false, "men".as_bytes());
    c.send_fragment(OpCode::Continuation, true, b"ted");
    assert_eq!(c.recv(), Message::Pong(Bytes::from_static(b"mid")));
    assert_eq!(c.recv(), Message::Text(Bytes::from_static(b"fragmented")));
}

#[test]
fn close_handshake_answers_1000_and_ends_tcp() {
    let gw = Gateway::dev(&[]);
    let mut c = Client::connect(gw.client_addr, "/echo");
    c.send_close(4001);
    assert_eq!(c.expect_close(Duration::from_secs(5)), CloseCode::NORMAL);
    c.expect_eof(Duration::from_secs(5));
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric_sum("pushgate_connections")
        == 0.0));
}

fn expect_failure(args: &[&str], frames: &[u8], want: CloseCode) -> Gateway {
    let gw = Gateway::dev(args);
    let mut bad = Client::connect(gw.client_addr, "/echo");
    let mut good = Client::connect(gw.client_addr, "/echo");
    bad.send_raw(frames);
    assert_eq!(bad.expect_close(Duration::from_secs(5)), want);
    bad.expect_eof(Duration::from_secs(10));
    // Other connections are unaffected.
    good.send_text("still here");
    assert_eq!(
        good.recv(),
        Message::Text(Bytes::from_static(b"still here"))
    );
    gw
}

#[test]
fn unmasked_frame_is_1002() {
    let f = protocol::frame::server_frame(OpCode::Text, b"no mask");
    let gw = expect_failure(&[], &f, CloseCode::PROTOCOL_ERROR);
    assert_eq!(
        gw.metric("pushgate_protocol_errors_total{code=\"1002\"}"),
        1.0
    );
}

#[test]
fn reserved_opcode_and_bits_are_1002() {
    expect_failure(&[], &[0x83, 0x80, 1, 2, 3, 4], CloseCode::PROTOCOL_ERROR);
    let h = FrameHeader {
        rsv2: true,
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::server(OpCode::Text, 0)
    };
    expect_failure(&[], &client_frame(h, b"x"), CloseCode::PROTOCOL_ERROR);
}

#[test]
fn invalid_utf8_is_1007() {
    let f = protocol::frame::client_message(OpCode::Text, &[0xce, 0xba, 0xff], [5, 6, 7, 8]);
    let gw = expect_failure(&[], &f, CloseCode::INVALID_PAYLOAD);
    assert_eq!(
        gw.metric("pushgate_protocol_errors_total{code=\"1007\"}"),
        1.0
    );
}

#[test]
fn oversize_frame_and_message_are_1009() {
    let f = protocol::frame::client_message(OpCode::Binary, &[0; 1001], [5, 6, 7, 8]);
    expect_failure(&["--max-frame-size", "1000"], &f, CloseCode::TOO_BIG);
    let mut frames = BytesMut::new();
    for i in 0..3 {
        let op = if i == 0 {
            OpCode::Binary
        } else {
            OpCode::Continuation
        };
        let h = FrameHeader {
            fin: i == 2,
            mask: Some([1, 1, 1, 1]),
            ..FrameHeader::server(op, 0)
        };
        frames.extend_from_slice(&client_frame(h, &[7; 900]));
    }
    let gw = expect_failure(
        &["--max-frame-size", "1000", "--max-message-size", "2000"],
        &frames,
        CloseCode::TOO_BIG,
    );
    assert_eq!(
        gw.metric("pushgate_protocol_errors_total{code=\"1009\"}"),
        1.0
    );
}

#[test]
fn permessage_deflate_both_ways() {
    let gw = Gateway::dev(&[]);
    let mut c = Client::connect_with(
        std::net::TcpStream::connect(gw.client_addr).unwrap(),
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    assert!(
        c.response.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "{}",
        c.response
    );
    let text = "compress me please, ".repeat(40);
    let mut z = BytesMut::new();
    Deflater::new(6, 15, true).compress_into(text.as_bytes(), &mut z);
    let h = FrameHeader {
        rsv1: true,
        mask: Some([3, 1, 4, 1]),
        ..FrameHeader::server(OpCode::Text, 0)
    };
    c.send_raw(&client_frame(h, &z));
    // The echo comes back compressed: read the raw frame and inflate it ourselves.
    let mut raw = BytesMut::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (header, n) = loop {
        use std::io::Read;
        let mut chunk = [0u8; 4096];
        let got = c.stream.read(&mut chunk).unwrap();
        raw.extend_from_slice(&chunk[..got]);
        if let Some((h, n)) = FrameHeader::parse(&raw).unwrap() {
            if raw.len() >= n + h.payload_len as usize {
                break (h, n);
            }
        }
        assert!(std::time::Instant::now() < deadline);
    };
    assert!(header.rsv1, "echo should be compressed");
    assert!((header.payload_len as usize) < text.len() / 4);
    let body = &raw[n..n + header.payload_len as usize];
    let back = Inflater::new(15, true).inflate(body, 1 << 20).unwrap();
    assert_eq!(&back[..], text.as_bytes());
}

#[test]
fn compressed_frame_without_negotiation_is_1002() {
    let h = FrameHeader {
        rsv1: true,
        mask: Some([3, 1, 4, 1]),
        ..FrameHeader::server(OpCode::Text, 0)
    };
    expect_failure(
        &[],
        &client_frame(h, b"\xf2\x48\xcd\xc9\xc9\x07\x00"),
        CloseCode::PROTOCOL_ERROR,
    );
}

#[test]
fn abrupt_disconnect_is_cleaned_up() {
    let gw = Gateway::dev(&[]);
    let c = Client::connect(gw.client_addr, "/echo");
    let mut d = Client::connect(gw.client_addr, "/echo");
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric_sum("pushgate_connections_upgraded")
        == 2.0));
    drop(c);
    assert!(gw.eventually(Duration::from_secs(2), |g| g
        .metric_sum("pushgate_connections")
        == 1.0));
    d.send_text("ok");
    assert!(matches!(
        d.read(Duration::from_secs(5)),
        Read_::Msg(Message::Text(_))
    ));
}
