#![no_main]
//! See `protocol_fuzz::handshake` for the oracle.

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol_fuzz::handshake(data));
