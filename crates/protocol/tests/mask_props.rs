//! Every masking kernel against the bytewise reference, for random lengths, alignments and
//! key phases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use proptest::prelude::*;
use protocol::mask::{unmask, Kernel};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn kernels_match_the_reference(
        data in prop::collection::vec(any::<u8>(), 0..=4096 + 64),
        start in 0usize..64,
        len in 0usize..=4096,
        key in any::<[u8; 4]>(),
        offset in any::<usize>(),
    ) {
        let start = start.min(data.len());
        let end = (start + len).min(data.len());
        let mut want = data.clone();
        Kernel::Bytewise.apply(&mut want[start..end], key, offset);
        for kernel in Kernel::available() {
            let mut got = data.clone();
            kernel.apply(&mut got[start..end], key, offset);
            prop_assert_eq!(&got, &want, "{:?}", kernel);
        }
        let mut got = data.clone();
        unmask(&mut got[start..end], key, offset);
        prop_assert_eq!(&got, &want);
    }

    #[test]
    fn masking_twice_is_the_identity(data in prop::collection::vec(any::<u8>(), 0..2000), key in any::<[u8; 4]>(), offset in 0usize..4) {
        let mut buf = data.clone();
        unmask(&mut buf, key, offset);
        unmask(&mut buf, key, offset);
        prop_assert_eq!(buf, data);
    }
}
