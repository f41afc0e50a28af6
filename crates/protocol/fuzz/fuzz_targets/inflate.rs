#![no_main]
//! See `protocol_fuzz::inflate` for the oracle.

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol_fuzz::inflate(data));
