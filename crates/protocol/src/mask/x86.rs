//! SSE2 and AVX2 kernels. `key` is already rotated to the phase of `buf[0]`; every block
//! length is a multiple of 4, so a tail handed to a narrower kernel keeps the same phase.

use std::arch::x86_64::{
    __m128i, __m256i, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
    _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128,
};

/// 16 bytes per step. SSE2 is part of the x86_64 baseline, so this needs no detection.
pub(super) fn sse2(buf: &mut [u8], key: [u8; 4]) {
    // SAFETY: SSE2 is part of the x86_64 baseline, so the CPU supports it.
    let k = unsafe { _mm_set1_epi32(i32::from_ne_bytes(key)) };
    let mut chunks = buf.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let p = chunk.as_mut_ptr().cast::<__m128i>();
        // SAFETY: SSE2 is baseline on x86_64; `chunk` is exactly 16 writable bytes and the
        // unaligned load and store touch only those bytes and need no alignment.
        unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), k)) };
    }
    super::scalar::words(chunks.into_remainder(), key);
}

/// 32 bytes per step.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn avx2(buf: &mut [u8], key: [u8; 4]) {
    let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        let p = chunk.as_mut_ptr().cast::<__m256i>();
        // SAFETY: `chunk` is exactly 32 writable bytes; the unaligned load and store
        // touch only those bytes; AVX2 support is this function's precondition.
        unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), k)) };
    }
    sse2(chunks.into_remainder(), key);
}
