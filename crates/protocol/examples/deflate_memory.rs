//! Measures the heap each permessage-deflate codec holds, per window size, with a counting
//! allocator: the figures behind the defaults in `protocol::deflate`.
//! `cargo run --release -p protocol --example deflate_memory`

use std::alloc::System;

use bytes::BytesMut;
use protocol::deflate::{Deflater, Inflater};

#[global_allocator]
static ALLOC: cap::Cap<System> = cap::Cap::new(System, usize::MAX);

fn live() -> isize {
    ALLOC.allocated() as isize
}

fn main() {
    let message = br#"{"type":"msg","from":"svc","data":{"text":"hello, this is a typical push message of a hundred bytes or so"}}"#;
    // A large, varied message fills the whole window, so the figures are the steady state.
    let large: Vec<u8> = (0..64 * 1024u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) % 64 + 32) as u8)
        .collect();
    println!(
        "window_bits  deflater_bytes  inflater_bytes   (live heap with context kept, after a 100 B and a 64 KiB message)"
    );
    for bits in [9u8, 10, 12, 15] {
        let before = live();
        let mut d = Deflater::new(1, bits, false);
        let mut z = BytesMut::new();
        d.compress_into(message, &mut z);
        let mut z2 = BytesMut::new();
        d.compress_into(&large, &mut z2);
        let deflater = live() - before - z.capacity() as isize - z2.capacity() as isize;

        let before = live();
        let mut i = Inflater::new(bits, false);
        // The inflated messages are dropped at once, so what stays live is the inflater.
        let ok = i.inflate(&z, 1 << 20).is_ok()
            && i.inflate(&z2, 1 << 20).map(|b| b.len()) == Ok(large.len());
        assert!(ok, "round trip failed");
        let inflater = live() - before;
        println!("{bits:>11}  {deflater:>14}  {inflater:>14}");
        drop((d, i));
    }
}
