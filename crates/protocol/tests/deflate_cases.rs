//! permessage-deflate codecs against the RFC 7692 §7.2.3 examples and each other.

#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use bytes::BytesMut;
use proptest::prelude::*;
use protocol::deflate::{Deflater, InflateError, Inflater};

#[test]
fn rfc7692_7_2_3_1_hello() {
    let mut i = Inflater::new(15, true);
    assert_eq!(
        &i.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100)
            .unwrap()[..],
        b"Hello"
    );
}

#[test]
fn rfc7692_7_2_3_2_sharing_the_window() {
    let mut i = Inflater::new(15, false);
    assert_eq!(
        &i.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100)
            .unwrap()[..],
        b"Hello"
    );
    assert_eq!(
        &i.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], 100).unwrap()[..],
        b"Hello"
    );
    // The same second message without the shared window refers to nothing.
    let mut fresh = Inflater::new(15, true);
    assert_eq!(
        fresh.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], 100),
        Err(InflateError::Corrupt)
    );
}

#[test]
fn rfc7692_7_2_3_3_stored_block() {
    let mut i = Inflater::new(15, true);
    let stored = [
        0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    ];
    assert_eq!(&i.inflate(&stored, 100).unwrap()[..], b"Hello");
}

#[test]
fn rfc7692_7_2_3_4_bfinal_block() {
    let mut i = Inflater::new(15, false);
    let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    assert_eq!(&i.inflate(&bfinal, 100).unwrap()[..], b"Hello");
    // The stream ended; the next message starts a new one.
    assert_eq!(
        &i.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100)
            .unwrap()[..],
        b"Hello"
    );
}

#[test]
fn deflater_strips_the_tail() {
    let mut d = Deflater::new(6, 15, true);
    let mut out = BytesMut::new();
    d.compress_into(b"Hello", &mut out);
    assert!(!out.ends_with(&[0, 0, 0xff, 0xff]));
    assert_eq!(&out[..], &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
}

#[test]
fn regression_empty_message_with_context_takeover() {
    // Found by `round_trip_with_context_takeover`: an empty message after another one
    // compressed to nothing, and nothing plus the tail is not a DEFLATE block.
    let mut d = Deflater::new(6, 15, false);
    let mut i = Inflater::new(15, false);
    for m in [&b"\x03\x00"[..], b"", b"\x01\x02", b"", b""] {
        let mut z = BytesMut::new();
        d.compress_into(m, &mut z);
        assert!(!z.is_empty());
        assert_eq!(&i.inflate(&z, 100).unwrap()[..], m);
    }
}

#[test]
fn the_limit_is_exact() {
    let mut d = Deflater::new(6, 15, true);
    let mut z = BytesMut::new();
    d.compress_into(&[b'x'; 1000], &mut z);
    assert_eq!(
        Inflater::new(15, true).inflate(&z, 1000).map(|b| b.len()),
        Ok(1000)
    );
    assert_eq!(
        Inflater::new(15, true).inflate(&z, 999),
        Err(InflateError::TooLarge)
    );
}

proptest! {
    #[test]
    fn round_trip_with_a_shared_stateless_codec(
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..8),
        bits in 9u8..=15,
        level in 0u32..=9,
    ) {
        // One deflater and one inflater serve every message in turn, as a reactor's do.
        let mut d = Deflater::new(level, bits, true);
        let mut i = Inflater::new(bits, true);
        for m in &messages {
            let mut z = BytesMut::new();
            d.compress_into(m, &mut z);
            prop_assert_eq!(&i.inflate(&z, 1 << 20).unwrap()[..], &m[..]);
        }
    }

    #[test]
    fn round_trip_with_context_takeover(
        messages in prop::collection::vec(prop::collection::vec(0u8..4, 0..2000), 1..8),
    ) {
        let mut d = Deflater::new(6, 15, false);
        let mut i = Inflater::new(15, false);
        for m in &messages {
            let mut z = BytesMut::new();
            d.compress_into(m, &mut z);
            prop_assert_eq!(&i.inflate(&z, 1 << 20).unwrap()[..], &m[..]);
        }
    }

    #[test]
    fn garbage_never_panics_or_exceeds_the_limit(data in prop::collection::vec(any::<u8>(), 0..512), limit in 0usize..4096) {
        let mut i = Inflater::new(15, true);
        if let Ok(out) = i.inflate(&data, limit) {
            prop_assert!(out.len() <= limit);
        }
    }
}
