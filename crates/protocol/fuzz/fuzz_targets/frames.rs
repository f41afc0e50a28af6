#![no_main]
//! See `protocol_fuzz::frames` for the oracle.

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol_fuzz::frames(data));
