//! The decoder against the Autobahn case families, one frame sequence at a time: framing,
//! pings, fragmentation, UTF-8, close handling, limits, compression.

#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use bytes::{Bytes, BytesMut};
use protocol::deflate::{Deflater, Inflater};
use protocol::frame::{client_frame, client_message};
use protocol::{CloseCode, Decoder, DecoderConfig, FrameHeader, Message, OpCode, ProtocolError};

const KEY: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> BytesMut {
    client_frame(
        FrameHeader {
            fin,
            mask: Some(KEY),
            ..FrameHeader::server(opcode, 0)
        },
        payload,
    )
}

/// Decodes `wire` fed whole, then again one byte at a time; both must agree. Returns the
/// messages and the error that ended decoding, if any.
fn decode_with(
    wire: &[u8],
    cfg: &DecoderConfig,
    deflate: bool,
) -> (Vec<Message>, Option<ProtocolError>) {
    let whole = run(&[wire], cfg, deflate);
    let pieces: Vec<&[u8]> = wire.chunks(1).collect();
    let bytewise = run(&pieces, cfg, deflate);
    assert_eq!(whole, bytewise, "whole and byte-at-a-time decoding differ");
    whole
}

fn run(
    pieces: &[&[u8]],
    cfg: &DecoderConfig,
    deflate: bool,
) -> (Vec<Message>, Option<ProtocolError>) {
    let mut dec = Decoder::new();
    let mut inflater = deflate.then(|| Inflater::new(15, true));
    let mut out = Vec::new();
    for p in pieces {
        let mut buf = BytesMut::from(*p);
        loop {
            match dec.decode(&mut buf, cfg, inflater.as_mut()) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {
                    assert!(buf.is_empty(), "decoder left input unconsumed");
                    break;
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn decode(wire: &[u8]) -> (Vec<Message>, Option<ProtocolError>) {
    decode_with(wire, &DecoderConfig::server(), false)
}

fn cat(frames: &[BytesMut]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.iter().copied()).collect()
}

fn text(s: &str) -> Message {
    Message::Text(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn case_1_text_and_binary_of_every_length_class() {
    for len in [0usize, 1, 125, 126, 127, 128, 65535, 65536] {
        let payload = vec![b'*'; len];
        let (msgs, err) = decode_with(
            &client_message(OpCode::Binary, &payload, KEY),
            &DecoderConfig {
                max_frame_size: 1 << 20,
                ..DecoderConfig::server()
            },
            false,
        );
        assert_eq!(
            (msgs, err),
            (vec![Message::Binary(Bytes::from(payload.clone()))], None),
            "len {len}"
        );
    }
}

#[test]
fn case_2_pings_and_pongs() {
    let (msgs, err) = decode(&cat(&[
        frame(OpCode::Ping, true, b"hi"),
        frame(OpCode::Pong, true, &[0xff; 125]),
    ]));
    assert_eq!(err, None);
    assert_eq!(
        msgs,
        [
            Message::Ping(Bytes::from_static(b"hi")),
            Message::Pong(Bytes::from(vec![0xff; 125]))
        ]
    );
    // 2.5: ping with 126 bytes of payload.
    assert_eq!(
        decode(&frame(OpCode::Ping, true, &[0; 126])).1,
        Some(ProtocolError::ControlFrameTooLong)
    );
}

#[test]
fn case_3_reserved_bits() {
    for (rsv1, rsv2, rsv3) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
        (true, true, true),
    ] {
        let f = client_frame(
            FrameHeader {
                rsv1,
                rsv2,
                rsv3,
                mask: Some(KEY),
                ..FrameHeader::server(OpCode::Text, 0)
            },
            b"x",
        );
        assert_eq!(decode(&f).1, Some(ProtocolError::ReservedBits));
        assert_eq!(
            ProtocolError::ReservedBits.close_code(),
            CloseCode::PROTOCOL_ERROR
        );
    }
}

#[test]
fn case_4_reserved_opcodes_fail_before_the_payload_arrives() {
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut dec = Decoder::new();
        let mut two_bytes = BytesMut::from(&[0x80 | op, 0x85][..]);
        assert_eq!(
            dec.decode(&mut two_bytes, &DecoderConfig::server(), None),
            Err(ProtocolError::ReservedOpcode)
        );
    }
}

#[test]
fn case_5_fragmentation_with_interleaved_control_frames() {
    let wire = cat(&[
        frame(OpCode::Text, false, b"frag"),
        frame(OpCode::Ping, true, b"p"),
        frame(OpCode::Continuation, false, b"men"),
        frame(OpCode::Pong, true, b""),
        frame(OpCode::Continuation, true, b"ted"),
    ]);
    let (msgs, err) = decode(&wire);
    assert_eq!(err, None);
    assert_eq!(
        msgs,
        [
            Message::Ping(Bytes::from_static(b"p")),
            Message::Pong(Bytes::new()),
            text("fragmented")
        ]
    );
    // Empty fragments are fine.
    let wire = cat(&[
        frame(OpCode::Text, false, b""),
        frame(OpCode::Continuation, false, b""),
        frame(OpCode::Continuation, true, b""),
    ]);
    assert_eq!(decode(&wire), (vec![text("")], None));
}

#[test]
fn case_5_fragmentation_violations() {
    let cases = [
        (
            cat(&[frame(OpCode::Continuation, true, b"x")]),
            ProtocolError::UnexpectedContinuation,
        ),
        (
            cat(&[frame(OpCode::Continuation, false, b"x")]),
            ProtocolError::UnexpectedContinuation,
        ),
        (
            cat(&[
                frame(OpCode::Text, false, b"a"),
                frame(OpCode::Text, true, b"b"),
            ]),
            ProtocolError::ExpectedContinuation,
        ),
        (
            cat(&[
                frame(OpCode::Binary, false, b"a"),
                frame(OpCode::Text, false, b"b"),
            ]),
            ProtocolError::ExpectedContinuation,
        ),
        (
            cat(&[frame(OpCode::Ping, false, b"a")]),
            ProtocolError::FragmentedControlFrame,
        ),
        (
            cat(&[
                frame(OpCode::Text, true, b"done"),
                frame(OpCode::Continuation, true, b"x"),
            ]),
            ProtocolError::UnexpectedContinuation,
        ),
    ];
    for (wire, want) in cases {
        assert_eq!(decode(&wire).1, Some(want));
        assert_eq!(want.close_code(), CloseCode::PROTOCOL_ERROR);
    }
}

#[test]
fn case_6_utf8_fails_fast_across_fragments() {
    // 6.4.1: the first fragment is valid, the second starts an impossible sequence, and the
    // third never needs to arrive.
    let first = frame(OpCode::Text, false, "κόσμε".as_bytes());
    let second = frame(OpCode::Continuation, false, &[0xf4, 0x90, 0x80, 0x80]);
    let (msgs, err) = decode(&cat(&[first, second]));
    assert!(msgs.is_empty());
    assert_eq!(err, Some(ProtocolError::InvalidUtf8));
    assert_eq!(
        ProtocolError::InvalidUtf8.close_code(),
        CloseCode::INVALID_PAYLOAD
    );
}

#[test]
fn case_6_utf8_fails_fast_within_one_frame() {
    // 6.4.3: one frame whose payload arrives in pieces; the bad bytes arrive early.
    let mut payload = "κόσμε".as_bytes().to_vec();
    payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
    payload.extend_from_slice(b"edited");
    let wire = frame(OpCode::Text, true, &payload);
    let mut dec = Decoder::new();
    let cut = 2 + 4 + "κόσμε".len() + 2;
    let mut first = BytesMut::from(&wire[..cut]);
    assert_eq!(
        dec.decode(&mut first, &DecoderConfig::server(), None),
        Err(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn case_6_valid_utf8_split_inside_code_points() {
    let s = "Hello-µ@ßöäüàá-UTF-8!!𝄞";
    let b = s.as_bytes();
    for cut in 1..b.len() {
        let wire = cat(&[
            frame(OpCode::Text, false, &b[..cut]),
            frame(OpCode::Continuation, true, &b[cut..]),
        ]);
        assert_eq!(decode(&wire), (vec![text(s)], None), "cut {cut}");
    }
    let truncated = cat(&[
        frame(OpCode::Text, false, b"ok"),
        frame(OpCode::Continuation, true, &[0xe2, 0x82]),
    ]);
    assert_eq!(decode(&truncated).1, Some(ProtocolError::InvalidUtf8));
}

#[test]
fn case_7_close_frames() {
    assert_eq!(
        decode(&frame(OpCode::Close, true, b"")).0,
        [Message::Close(None)]
    );
    let (msgs, _) = decode(&frame(OpCode::Close, true, b"\x03\xe8bye"));
    match &msgs[..] {
        [Message::Close(Some(c))] => {
            assert_eq!((c.code, c.reason_str()), (CloseCode::NORMAL, "bye"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decode(&frame(OpCode::Close, true, b"\x03")).1,
        Some(ProtocolError::InvalidClosePayload)
    );
    for bad in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
    ] {
        let wire = frame(OpCode::Close, true, &bad.to_be_bytes());
        assert_eq!(
            decode(&wire).1,
            Some(ProtocolError::InvalidCloseCode),
            "code {bad}"
        );
    }
    let wire = frame(
        OpCode::Close,
        true,
        b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
    );
    assert_eq!(decode(&wire).1, Some(ProtocolError::InvalidUtf8));
}

#[test]
fn case_9_limits_are_checked_at_the_header() {
    let cfg = DecoderConfig {
        max_frame_size: 1000,
        max_message_size: 1500,
        ..DecoderConfig::server()
    };
    // A header announcing an oversize frame fails before any payload is sent.
    let big = frame(OpCode::Binary, true, &[0; 1001]);
    let mut dec = Decoder::new();
    let mut head = BytesMut::from(&big[..8]);
    assert_eq!(
        dec.decode(&mut head, &cfg, None),
        Err(ProtocolError::FrameTooLarge)
    );
    // Fragments that add up past the message limit.
    let wire = cat(&[
        frame(OpCode::Binary, false, &[0; 1000]),
        frame(OpCode::Continuation, true, &[0; 501]),
    ]);
    assert_eq!(
        decode_with(&wire, &cfg, false).1,
        Some(ProtocolError::MessageTooLarge)
    );
    assert_eq!(
        ProtocolError::MessageTooLarge.close_code(),
        CloseCode::TOO_BIG
    );
    // Exactly at the limits is fine.
    let wire = cat(&[
        frame(OpCode::Binary, false, &[0; 1000]),
        frame(OpCode::Continuation, true, &[0; 500]),
    ]);
    assert_eq!(decode_with(&wire, &cfg, false).0.len(), 1);
}

#[test]
fn unmasked_client_frames_are_refused() {
    let f = protocol::frame::server_frame(OpCode::Text, b"hi");
    assert_eq!(decode(&f).1, Some(ProtocolError::UnmaskedFrame));
    let (msgs, err) = decode_with(&f, &DecoderConfig::client(), false);
    assert_eq!((msgs, err), (vec![text("hi")], None));
    assert_eq!(
        decode_with(
            &frame(OpCode::Text, true, b"x"),
            &DecoderConfig::client(),
            false
        )
        .1,
        Some(ProtocolError::MaskedFrame)
    );
}

#[test]
fn a_whole_frame_is_handed_out_without_a_copy() {
    let wire = frame(OpCode::Binary, true, &[7; 300]);
    let mut buf = BytesMut::from(&wire[..]);
    let base = buf.as_ptr() as usize;
    let msg = Decoder::new()
        .decode(&mut buf, &DecoderConfig::server(), None)
        .unwrap()
        .unwrap();
    let Message::Binary(b) = msg else { panic!() };
    // 2 bytes of header, 2 of length, 4 of mask.
    assert_eq!(
        b.as_ptr() as usize,
        base + 8,
        "payload should alias the input buffer"
    );
}

#[test]
fn an_idle_decoder_holds_nothing() {
    let mut dec = Decoder::new();
    let wire = frame(OpCode::Text, true, b"hello");
    let mut part = BytesMut::from(&wire[..5]);
    assert_eq!(
        dec.decode(&mut part, &DecoderConfig::server(), None),
        Ok(None)
    );
    assert!(!dec.is_idle());
    let mut rest = BytesMut::from(&wire[5..]);
    assert_eq!(
        dec.decode(&mut rest, &DecoderConfig::server(), None),
        Ok(Some(text("hello")))
    );
    assert!(dec.is_idle());
    assert_eq!(dec.buffered(), 0);
}

fn compressed_frames(payload: &[u8], fragments: usize) -> Vec<u8> {
    let mut deflater = Deflater::new(6, 15, true);
    let mut z = BytesMut::new();
    deflater.compress_into(payload, &mut z);
    let chunk = z.len().div_ceil(fragments).max(1);
    let pieces: Vec<&[u8]> = z.chunks(chunk).collect();
    let mut wire = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == pieces.len();
        let h = FrameHeader {
            fin: last,
            rsv1: first,
            mask: Some(KEY),
            ..FrameHeader::server(
                if first {
                    OpCode::Text
                } else {
                    OpCode::Continuation
                },
                0,
            )
        };
        wire.extend_from_slice(&client_frame(h, p));
    }
    wire
}

#[test]
fn case_12_13_compressed_messages() {
    let payload = "Hello, compressed world! ".repeat(50);
    for fragments in [1, 2, 5] {
        let wire = compressed_frames(payload.as_bytes(), fragments);
        assert_eq!(
            decode_with(&wire, &DecoderConfig::server(), true),
            (vec![text(&payload)], None)
        );
    }
    // RSV1 without the extension negotiated.
    let wire = compressed_frames(b"x", 1);
    assert_eq!(decode(&wire).1, Some(ProtocolError::ReservedBits));
    // RSV1 on a continuation frame.
    let wire = cat(&[
        frame(OpCode::Text, false, b"a"),
        client_frame(
            FrameHeader {
                rsv1: true,
                mask: Some(KEY),
                ..FrameHeader::server(OpCode::Continuation, 0)
            },
            b"b",
        ),
    ]);
    assert_eq!(
        decode_with(&wire, &DecoderConfig::server(), true).1,
        Some(ProtocolError::ReservedBits)
    );
}

#[test]
fn a_zip_bomb_is_stopped_at_the_message_limit() {
    let cfg = DecoderConfig {
        max_message_size: 64 * 1024,
        ..DecoderConfig::server()
    };
    let zeros = vec![0u8; 10 * 1024 * 1024];
    let wire = compressed_frames(&zeros, 1);
    assert!(
        wire.len() < 64 * 1024,
        "the bomb fits in one frame: {}",
        wire.len()
    );
    assert_eq!(
        decode_with(&wire, &cfg, true).1,
        Some(ProtocolError::MessageTooLarge)
    );
}

#[test]
fn corrupt_compressed_data_is_1007() {
    let h = FrameHeader {
        rsv1: true,
        mask: Some(KEY),
        ..FrameHeader::server(OpCode::Binary, 0)
    };
    let wire = client_frame(h, &[0xff, 0xff, 0xff, 0xff, 0x00]);
    assert_eq!(
        decode_with(&wire, &DecoderConfig::server(), true).1,
        Some(ProtocolError::InvalidCompressedData)
    );
    assert_eq!(
        ProtocolError::InvalidCompressedData.close_code(),
        CloseCode::INVALID_PAYLOAD
    );
}

#[test]
fn compressed_text_is_validated_after_inflating() {
    let wire = compressed_frames(&[b'a', 0xff, b'b'], 1);
    assert_eq!(
        decode_with(&wire, &DecoderConfig::server(), true).1,
        Some(ProtocolError::InvalidUtf8)
    );
}
