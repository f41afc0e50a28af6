//! Fuzz oracles for the protocol crate. Each checks more than "does not panic": results
//! must not depend on how the input is split into reads, consumed bytes plus the rest must
//! equal the input, and outputs must respect the invariants the types promise.
//!
//! The cargo-fuzz targets in `fuzz_targets/` call these; `tests/corpus.rs` replays the
//! committed corpus and a fixed number of generated inputs through them on stable Rust as
//! part of `cargo test`.

use bytes::BytesMut;
use protocol::deflate::{negotiate, DeflateConfig, Deflater, Inflater};
use protocol::handshake::{validate, Request, RequestParser};
use protocol::{Decoder, DecoderConfig, Message, ProtocolError, Role};

/// Read sizes derived from the input itself, so a crash reproduces from the input alone.
fn cuts(seed: &[u8], len: usize) -> Vec<usize> {
    let mut x: u64 = seed.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut at = 0;
    let mut out = Vec::new();
    while at < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        at += 1 + (x % 64) as usize;
        out.push(at.min(len));
    }
    out
}

/// Handshake: any split gives the same request, the head and the trailing bytes add up
/// to the input, and validation and extension negotiation never panic.
pub fn handshake(data: &[u8]) {
    let limit = 1024;
    let whole = RequestParser::new(limit).feed(data);
    let mut parser = RequestParser::new(limit);
    let mut pieces: Result<Option<Request>, _> = Ok(None);
    let mut prev = 0;
    for c in cuts(data, data.len()) {
        pieces = parser.feed(&data[prev..c]);
        prev = c;
        if !matches!(pieces, Ok(None)) {
            // The rest of the input belongs after the head, as in the whole parse.
            if let Ok(Some(req)) = pieces {
                let mut trailing = req.trailing().to_vec();
                trailing.extend_from_slice(&data[c..]);
                pieces = Request::parse(req.head().clone(), trailing.into()).map(Some);
            }
            break;
        }
    }
    assert_eq!(whole, pieces, "split changed the parse");
    if let Ok(Some(req)) = whole {
        assert_eq!(
            req.head().len() + req.trailing().len(),
            data.len(),
            "consumed + rest != input"
        );
        assert!(req.head().len() <= limit);
        let head = req.head();
        assert!(
            (0..head.len()).all(|i| head[i] != b'\n' || (i > 0 && head[i - 1] == b'\r')),
            "a head with a bare LF was accepted"
        );
        if let Ok(up) = validate(&req) {
            assert_eq!(up.accept.len(), 28);
        }
        if let Some((params, response)) = negotiate(
            req.header_values("sec-websocket-extensions"),
            &DeflateConfig::default(),
        ) {
            assert!((9..=15).contains(&params.server_max_window_bits));
            assert!((8..=15).contains(&params.client_max_window_bits));
            assert!(response.starts_with("permessage-deflate"));
        }
    }
}

type Outcome = (Vec<Message>, Option<ProtocolError>);

fn decode_pieces(wire: &[u8], cuts: &[usize], cfg: &DecoderConfig, deflate: bool) -> Outcome {
    let mut dec = Decoder::new();
    let mut inflater = deflate.then(|| Inflater::new(15, true));
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
        let mut buf = BytesMut::from(&wire[prev..c]);
        prev = c;
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

/// Frames: the first byte picks role, limits and compression; decoding in pieces agrees
/// with decoding whole, and every message keeps the type's promises.
pub fn frames(data: &[u8]) {
    let Some((&knobs, wire)) = data.split_first() else {
        return;
    };
    let cfg = DecoderConfig {
        role: if knobs & 1 == 0 {
            Role::Server
        } else {
            Role::Client
        },
        max_frame_size: if knobs & 2 == 0 { 64 * 1024 } else { 100 },
        max_message_size: if knobs & 4 == 0 { 1 << 20 } else { 300 },
    };
    let deflate = knobs & 8 != 0;
    let whole = decode_pieces(wire, &[], &cfg, deflate);
    let pieces = decode_pieces(wire, &cuts(data, wire.len()), &cfg, deflate);
    assert_eq!(whole, pieces, "split changed the result");
    for m in &whole.0 {
        match m {
            Message::Text(t) => {
                assert!(std::str::from_utf8(t).is_ok(), "text message is not UTF-8");
                assert!(t.len() <= cfg.max_message_size);
            }
            Message::Binary(b) => assert!(b.len() <= cfg.max_message_size),
            Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
            Message::Close(Some(c)) => {
                assert!(c.code.is_valid_on_wire());
                assert!(c.reason.len() <= 123);
            }
            Message::Close(None) => {}
        }
    }
}

/// Inflate: garbage never panics or passes the limit; deflate then inflate is the identity.
pub fn inflate(data: &[u8]) {
    let Some((&knobs, body)) = data.split_first() else {
        return;
    };
    let limit = usize::from(knobs) * 64;
    let mut inflater = Inflater::new(9 + (knobs & 7).min(6), true);
    if let Ok(out) = inflater.inflate(body, limit) {
        assert!(out.len() <= limit, "inflated past the limit");
    }
    let mut deflater = Deflater::new(u32::from(knobs % 10), 15, true);
    let mut z = BytesMut::new();
    deflater.compress_into(body, &mut z);
    let back = Inflater::new(15, true).inflate(&z, body.len());
    assert_eq!(
        back.as_deref().ok(),
        Some(body),
        "deflate/inflate round trip"
    );
}
