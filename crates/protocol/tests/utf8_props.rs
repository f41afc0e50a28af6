//! The incremental validator against `std::str::from_utf8` on whole inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use proptest::prelude::*;
use protocol::utf8::Utf8Validator;

/// Byte strings that are mostly UTF-8 with the occasional stray byte.
fn almost_utf8() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn agrees_with_std_for_any_split(data in almost_utf8(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut v = Utf8Validator::new();
        let mut prev = 0;
        let mut failed_at = None;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            if v.feed(&data[prev..c]).is_err() {
                failed_at = Some(c);
                break;
            }
            // Fail fast: once std sees a definite error in the prefix, so must we.
            if let Err(e) = std::str::from_utf8(&data[..c]) {
                prop_assert!(e.error_len().is_none(), "prefix {} is invalid but the validator went on", c);
            }
            prev = c;
        }
        let whole_ok = std::str::from_utf8(&data).is_ok();
        match failed_at {
            Some(c) => {
                prop_assert!(!whole_ok);
                let err = std::str::from_utf8(&data[..c]).unwrap_err();
                prop_assert!(err.error_len().is_some(), "failed before the data was definitely invalid");
            }
            None => prop_assert_eq!(v.finish().is_ok(), whole_ok),
        }
    }
}
