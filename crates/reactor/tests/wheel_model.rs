//! The wheel against a simple model (a map of due ticks), over random scripts of arm,
//! re-arm, cancel and advance.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::collections::BTreeMap;

use proptest::prelude::*;
use reactor::wheel::{TimerId, Wheel, SLOTS};

#[derive(Debug, Clone)]
enum Op {
    Arm(u64),
    Rearm(usize, u64),
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let delay = prop_oneof![0u64..20, 0u64..(3 * SLOTS as u64)];
    prop_oneof![
        3 => delay.clone().prop_map(Op::Arm),
        1 => (any::<usize>(), delay).prop_map(|(i, d)| Op::Rearm(i, d)),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => prop_oneof![0u64..5, 0u64..(2 * SLOTS as u64)].prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn wheel_matches_model(ops in prop::collection::vec(op(), 1..200)) {
        let mut wheel = Wheel::new();
        // value -> (id, due)
        let mut model: BTreeMap<u32, (TimerId, u64)> = BTreeMap::new();
        let mut ids: Vec<(u32, TimerId)> = Vec::new();
        let mut next_value = 0u32;
        for op in ops {
            match op {
                Op::Arm(d) => {
                    let due = wheel.now() + d;
                    let id = wheel.arm(due, next_value);
                    model.insert(next_value, (id, due.max(wheel.now() + 1)));
                    ids.push((next_value, id));
                    next_value += 1;
                }
                Op::Rearm(i, d) if !ids.is_empty() => {
                    let (v, id) = ids[i % ids.len()];
                    let due = wheel.now() + d;
                    let live = model.get(&v).map(|(mid, _)| *mid == id).unwrap_or(false);
                    let got = wheel.rearm(id, due);
                    prop_assert_eq!(got.is_some(), live);
                    if let Some(new) = got {
                        model.insert(v, (new, due.max(wheel.now() + 1)));
                        ids.push((v, new));
                    }
                }
                Op::Cancel(i) if !ids.is_empty() => {
                    let (v, id) = ids[i % ids.len()];
                    let live = model.get(&v).map(|(mid, _)| *mid == id).unwrap_or(false);
                    prop_assert_eq!(wheel.cancel(id), live.then_some(v));
                    if live {
                        model.remove(&v);
                    }
                }
                Op::Advance(d) => {
                    let to = wheel.now() + d;
                    if let Some(next) = wheel.next_due() {
                        let earliest = model.values().map(|(_, due)| *due).min().unwrap();
                        prop_assert!(next <= earliest, "next_due {} after earliest {}", next, earliest);
                    }
                    let mut fired = Vec::new();
                    wheel.advance(to, &mut fired);
                    fired.sort_unstable();
                    let want: Vec<u32> = model.iter().filter(|(_, (_, due))| *due <= to).map(|(v, _)| *v).collect();
                    prop_assert_eq!(&fired, &want);
                    for v in want {
                        model.remove(&v);
                    }
                }
                _ => {}
            }
            prop_assert_eq!(wheel.len(), model.len());
        }
    }
}
