//! permessage-deflate (RFC 7692): negotiation of the extension parameters, and the
//! inflate/deflate codecs with the `00 00 ff ff` tail handling and a decompressed-size
//! limit.
//!
//! # Memory per connection, and the defaults
//! Measured with a counting allocator (`cargo run --release -p protocol --example
//! deflate_memory`, figures in `bench/RESULTS.md`), one compression context with the
//! zlib-rs backend holds about 250 KiB (9-bit window) to 370 KiB (15-bit window), and one
//! decompression context about 46 KiB whatever the window. With context takeover that state
//! lives as long as the connection: roughly 420 KiB per connection at the maximum window,
//! which is 40 GiB for 100 000 connections — not an option for a gateway of mostly idle
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
