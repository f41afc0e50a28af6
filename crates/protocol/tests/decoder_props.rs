//! Property tests of the decoder over scripts of messages: whatever the fragmentation, the
//! interleaved control frames, the masks and the way the bytes are split into reads, the
//! decoder yields exactly the messages that were sent; and on arbitrary bytes, decoding in
//! pieces agrees with decoding whole.

#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol::frame::client_frame;
use protocol::{Decoder, DecoderConfig, FrameHeader, Message, OpCode, ProtocolError};

#[derive(Debug, Clone)]
enum Step {
    /// A data message split into this many fragments, each followed by a ping or not.
    Data {
        text: bool,
        payload: Vec<u8>,
        fragments: usize,
        pings: Vec<bool>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<bool>(), any::<String>(), prop::collection::vec(any::<u8>(), 0..600), 1usize..5, prop::collection::vec(any::<bool>(), 5))
            .prop_map(|(text, s, bin, fragments, pings)| Step::Data {
                payload: if text { s.into_bytes() } else { bin },
                text,
                fragments,
                pings,
            }),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Step::Ping),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Step::Pong),
    ]
}

fn masked(opcode: OpCode, fin: bool, payload: &[u8], key: [u8; 4]) -> BytesMut {
    client_frame(
        FrameHeader {
            fin,
            mask: Some(key),
            ..FrameHeader::server(opcode, 0)
        },
        payload,
    )
}

/// The wire bytes of a script and the messages a correct decoder yields for it.
fn encode(script: &[Step], key: [u8; 4]) -> (Vec<u8>, Vec<Message>) {
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for s in script {
        match s {
            Step::Ping(p) => {
                wire.extend_from_slice(&masked(OpCode::Ping, true, p, key));
                want.push(Message::Ping(Bytes::copy_from_slice(p)));
            }
            Step::Pong(p) => {
                wire.extend_from_slice(&masked(OpCode::Pong, true, p, key));
                want.push(Message::Pong(Bytes::copy_from_slice(p)));
            }
            Step::Data {
                text,
                payload,
                fragments,
                pings,
            } => {
                // Split anywhere, even inside a UTF-8 sequence.
                let size = payload.len().div_ceil(*fragments).max(1);
                let mut parts: Vec<&[u8]> = payload.chunks(size).collect();
                if parts.is_empty() {
                    parts.push(&[]);
                }
                for (i, part) in parts.iter().enumerate() {
                    let op = match (i, text) {
                        (0, true) => OpCode::Text,
                        (0, false) => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    let fin = i + 1 == parts.len();
                    wire.extend_from_slice(&masked(op, fin, part, key));
                    if !fin && pings[i % pings.len()] {
                        wire.extend_from_slice(&masked(OpCode::Ping, true, b"mid", key));
                        want.push(Message::Ping(Bytes::from_static(b"mid")));
                    }
                }
                let b = Bytes::copy_from_slice(payload);
                want.push(if *text {
                    Message::Text(b)
                } else {
                    Message::Binary(b)
                });
            }
        }
    }
    (wire, want)
}

fn decode_in_pieces(wire: &[u8], cuts: &[usize]) -> (Vec<Message>, Option<ProtocolError>) {
    let cfg = DecoderConfig::server();
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
        let mut buf = BytesMut::from(&wire[prev..c]);
        prev = c;
        loop {
            match dec.decode(&mut buf, &cfg, None) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {
                    assert!(buf.is_empty());
                    break;
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn sorted_cuts(cuts: &[prop::sample::Index], len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
    c.sort_unstable();
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn scripts_decode_exactly(
        script in prop::collection::vec(step(), 1..12),
        key in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let (wire, want) = encode(&script, key);
        let cuts = sorted_cuts(&cuts, wire.len());
        let (got, err) = decode_in_pieces(&wire, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_bytes_decode_the_same_in_any_pieces(
        wire in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let whole = decode_in_pieces(&wire, &[]);
        let pieces = decode_in_pieces(&wire, &sorted_cuts(&cuts, wire.len()));
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn corrupting_one_byte_never_panics_and_pieces_agree(
        script in prop::collection::vec(step(), 1..6),
        key in any::<[u8; 4]>(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let (mut wire, _) = encode(&script, key);
        let i = at.index(wire.len());
        wire[i] ^= xor;
        let whole = decode_in_pieces(&wire, &[]);
        let pieces = decode_in_pieces(&wire, &sorted_cuts(&cuts, wire.len()));
        prop_assert_eq!(whole, pieces);
    }
}
