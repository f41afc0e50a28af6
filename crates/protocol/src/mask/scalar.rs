//! Portable kernels. `key` is already rotated to the phase of `buf[0]`.

/// The reference: one byte at a time.
pub(super) fn bytewise(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Eight bytes at a time; the tail (under 8 bytes) starts at a multiple of 4, so it keeps
/// the same phase.
pub(super) fn words(buf: &mut [u8], key: [u8; 4]) {
    let k = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ k).to_ne_bytes());
    }
    bytewise(chunks.into_remainder(), key);
}
