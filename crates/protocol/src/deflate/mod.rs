//! permessage-deflate (RFC 7692): negotiation of the extension parameters, and the
//! inflate/deflate codecs with the `00 00 ff ff` tail handling and a decompressed-size
//! limit.
//!
//! # Memory per connection, and the defaults
//! zlib-style deflate keeps `2^(window_bits+2) + 2^(mem_level+9)` bytes of state
//! (window, hash chains, pending buffer) plus about 6 KiB, and inflate keeps a
//! `2^window_bits` window plus about 7 KiB (figures measured with a counting allocator by
//! `cargo run --release -p protocol --example deflate_memory`, recorded in
//! `bench/RESULTS.md`). With context takeover that state lives as long as the connection:
//! at the maximum window that is roughly 300 KiB per compressing connection, which is
//! 30 GiB for 100 000 connections — not an option for a gateway of mostly idle
//! connections. Without context takeover every message is compressed and inflated from an
//! empty window, so a codec holds nothing between messages and **one codec per reactor
//! thread** serves all its connections; a push is then compressed once and the same
//! compressed frame is shared by every recipient.
//!
//! The defaults therefore ask for both `server_no_context_takeover` and
//! `client_no_context_takeover` (a server may add both to its answer whatever the offer
//! said, RFC 7692 §7.1.1), so negotiated compression costs no memory per connection.
//! An operator who wants better ratios for chatty connections can turn context takeover on
//! and lower the window bits to bound the cost; see [`DeflateConfig`].

mod codec;
mod negotiate;

pub use codec::{Deflater, InflateError, Inflater};
pub use negotiate::{negotiate, DeflateConfig, DeflateParams};
