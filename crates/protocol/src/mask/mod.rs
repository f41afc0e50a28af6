//! XOR masking of frame payloads (RFC 6455 §5.3), with SIMD kernels chosen once at run time.
//!
//! Every kernel computes `buf[i] ^= key[(offset + i) % 4]`, so a payload can be unmasked in
//! pieces as reads arrive: `offset` is the position of `buf[0]` within the frame payload.
//! The bytewise loop in [`Kernel::Bytewise`] is the reference every other kernel is tested
//! against (`tests/mask_props.rs`).

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::atomic::{AtomicU8, Ordering};

/// One implementation of the masking loop. All produce identical output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// One byte per step: the trusted reference.
    Bytewise,
    /// Eight bytes per step in a `u64`; portable, no `unsafe`.
    Word,
    /// 16 bytes per step (x86_64 baseline, always present there).
    Sse2,
    /// 32 bytes per step (x86_64 with AVX2, detected at run time).
    Avx2,
}

impl Kernel {
    /// Every kernel this CPU can run, the reference first.
    pub fn available() -> Vec<Kernel> {
        [Kernel::Bytewise, Kernel::Word, Kernel::Sse2, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// Whether this CPU (and the interpreter, under Miri) can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Bytewise | Kernel::Word => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Sse2 => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Sse2 | Kernel::Avx2 => false,
        }
    }

    /// The fastest kernel this CPU supports. Miri interprets rather than runs SIMD, so
    /// under Miri the portable kernel is chosen (the SIMD kernels are still tested by name).
    pub fn best() -> Kernel {
        if cfg!(miri) {
            Kernel::Word
        } else if Kernel::Avx2.is_supported() {
            Kernel::Avx2
        } else if Kernel::Sse2.is_supported() {
            Kernel::Sse2
        } else {
            Kernel::Word
        }
    }

    /// XORs `buf` with `key`, starting at byte `offset` of the payload.
    ///
    /// # Panics
    /// If the kernel is not supported on this CPU (see [`Kernel::is_supported`]); the
    /// dispatcher [`unmask`] only ever picks supported kernels.
    pub fn apply(self, buf: &mut [u8], key: [u8; 4], offset: usize) {
        let key = rotate(key, offset);
        match self {
            Kernel::Bytewise => scalar::bytewise(buf, key),
            Kernel::Word => scalar::words(buf, key),
            #[cfg(target_arch = "x86_64")]
            Kernel::Sse2 => x86::sse2(buf, key),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                assert!(self.is_supported(), "AVX2 kernel on a CPU without AVX2");
                // SAFETY: AVX2 support was just checked at run time.
                unsafe { x86::avx2(buf, key) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Sse2 | Kernel::Avx2 => panic!("x86 kernel on a non-x86 CPU"),
        }
    }

    fn id(self) -> u8 {
        match self {
            Kernel::Bytewise => 1,
            Kernel::Word => 2,
            Kernel::Sse2 => 3,
            Kernel::Avx2 => 4,
        }
    }

    fn from_id(id: u8) -> Option<Kernel> {
        match id {
            1 => Some(Kernel::Bytewise),
            2 => Some(Kernel::Word),
            3 => Some(Kernel::Sse2),
            4 => Some(Kernel::Avx2),
            _ => None,
        }
    }
}

/// The kernel chosen at first use; 0 until then. Detection is cheap but not free, and a
/// relaxed atomic load is.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The kernel [`unmask`] dispatches to on this CPU.
pub fn detected_kernel() -> Kernel {
    if let Some(k) = Kernel::from_id(CHOSEN.load(Ordering::Relaxed)) {
        return k;
    }
    let k = Kernel::best();
    CHOSEN.store(k.id(), Ordering::Relaxed);
    k
}

/// Below this length the SIMD set-up costs more than it saves.
const SMALL: usize = 16;
/// Below this length the 16-byte kernel beats the 32-byte one: AVX2's body would run only
/// a few times and its tail falls through to the narrower kernels anyway (measured at
/// 64 B: SSE2 6.0 GiB/s, AVX2 4.6 GiB/s; bench/RESULTS.md).
const MEDIUM: usize = 128;

/// XORs `buf` with the masking `key`, where `buf[0]` is byte `offset` of the payload.
/// Masking and unmasking are the same operation.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() < SMALL {
        scalar::words(buf, rotate(key, offset));
    } else if buf.len() < MEDIUM && Kernel::Sse2.is_supported() && !cfg!(miri) {
        Kernel::Sse2.apply(buf, key, offset);
    } else {
        detected_kernel().apply(buf, key, offset);
    }
}

/// The key as seen from payload byte `offset`: the kernels then always start at phase 0.
#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let p = offset & 3;
    [key[p], key[(p + 1) & 3], key[(p + 2) & 3], key[(p + 3) & 3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_example_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut data = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        unmask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&data, b"Hello");
    }

    #[test]
    fn every_kernel_matches_reference_for_all_small_lengths_offsets_and_alignments() {
        // Under Miri (which checks the unsafe kernels for undefined behaviour) a smaller
        // range still covers every alignment, tail length and key phase.
        let (len, starts) = if cfg!(miri) { (80u32, 9) } else { (300, 33) };
        let key = [0x12, 0x34, 0x56, 0x78];
        let src: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        for kernel in Kernel::available() {
            for start in 0..starts {
                for len in 0..(src.len() - start) {
                    for offset in 0..4 {
                        let mut want = src[start..start + len].to_vec();
                        Kernel::Bytewise.apply(&mut want, key, offset);
                        let mut got = src.clone();
                        kernel.apply(&mut got[start..start + len], key, offset);
                        assert_eq!(
                            &got[start..start + len],
                            &want[..],
                            "{kernel:?} start {start} len {len} offset {offset}"
                        );
                        assert_eq!(
                            &got[..start],
                            &src[..start],
                            "{kernel:?} wrote before the slice"
                        );
                        assert_eq!(
                            &got[start + len..],
                            &src[start + len..],
                            "{kernel:?} wrote past the slice"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_whole() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        let mut whole = src.clone();
        unmask(&mut whole, key, 0);
        for cut in [1usize, 3, 5, 16, 17, 63, 500, 999] {
            let mut pieces = src.clone();
            let (a, b) = pieces.split_at_mut(cut);
            unmask(a, key, 0);
            unmask(b, key, cut);
            assert_eq!(pieces, whole, "cut at {cut}");
        }
    }

    #[test]
    fn dispatch_is_stable() {
        assert_eq!(detected_kernel(), detected_kernel());
        assert!(detected_kernel().is_supported());
    }
}
