//! The timer wheel against a binary heap with lazy cancellation (the usual alternative), on
//! a reactor's workload: every live connection has one timer, activity re-arms it, the
//! clock advances a tick at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use reactor::wheel::{TimerId, Wheel};

const TIMERS: usize = 10_000;
const HEARTBEAT: u64 = 2_500; // 25 s in 10 ms ticks

/// The peer: a min-heap of (due, connection, generation); re-arming pushes a new entry and
/// bumps the connection's generation so the old one is skipped when it surfaces.
struct HeapTimers {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    generation: Vec<u32>,
    now: u64,
}

impl HeapTimers {
    fn new(n: usize) -> Self {
        HeapTimers {
            heap: BinaryHeap::with_capacity(n * 2),
            generation: vec![0; n],
            now: 0,
        }
    }
    fn arm(&mut self, conn: u32, due: u64) {
        let g = &mut self.generation[conn as usize];
        *g += 1;
        self.heap.push(Reverse((due, conn, *g)));
    }
    fn advance(&mut self, to: u64, expired: &mut Vec<u32>) {
        self.now = to;
        while let Some(Reverse((due, conn, g))) = self.heap.peek().copied() {
            if due > to {
                break;
            }
            self.heap.pop();
            if self.generation[conn as usize] == g {
                expired.push(conn);
            }
        }
    }
}

fn wheel_with(n: usize) -> (Wheel<u32>, Vec<TimerId>) {
    let mut w = Wheel::new();
    let ids = (0..n as u32)
        .map(|c| w.arm(HEARTBEAT + u64::from(c % 100), c))
        .collect();
    (w, ids)
}

fn heap_with(n: usize) -> HeapTimers {
    let mut h = HeapTimers::new(n);
    for c in 0..n as u32 {
        h.arm(c, HEARTBEAT + u64::from(c % 100));
    }
    h
}

fn rearm(c: &mut Criterion) {
    let mut g = c.benchmark_group("timers/rearm_10k");
    g.bench_function("wheel", |b| {
        b.iter_batched_ref(
            || wheel_with(TIMERS),
            |(w, ids)| {
                for (i, id) in ids.iter_mut().enumerate() {
                    *id = w.rearm(*id, HEARTBEAT + 7 + i as u64 % 50).unwrap();
                }
            },
            BatchSize::LargeInput,
        );
    });
    g.bench_function("binary_heap", |b| {
        b.iter_batched_ref(
            || heap_with(TIMERS),
            |h| {
                for c in 0..TIMERS as u32 {
                    h.arm(c, HEARTBEAT + 7 + u64::from(c % 50));
                }
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn advance(c: &mut Criterion) {
    // One heartbeat period, tick by tick, with every timer re-armed once before it: the
    // steady state of 10k connections that each send something every ~25 s.
    let mut g = c.benchmark_group("timers/advance_period_10k");
    g.sample_size(20);
    g.bench_function("wheel", |b| {
        b.iter_batched_ref(
            || wheel_with(TIMERS),
            |(w, _)| {
                let mut out = Vec::new();
                for t in 1..=HEARTBEAT + 100 {
                    w.advance(t, &mut out);
                    for c in out.drain(..) {
                        black_box(w.arm(t + HEARTBEAT, c));
                    }
                }
            },
            BatchSize::LargeInput,
        );
    });
    g.bench_function("binary_heap", |b| {
        b.iter_batched_ref(
            || heap_with(TIMERS),
            |h| {
                let mut out = Vec::new();
                for t in 1..=HEARTBEAT + 100 {
                    h.advance(t, &mut out);
                    for c in out.drain(..) {
                        h.arm(c, t + HEARTBEAT);
                    }
                }
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, rearm, advance);
criterion_main!(benches);
