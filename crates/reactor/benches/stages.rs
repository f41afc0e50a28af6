//! What the per-stage latency histograms cost a push: the clock reads and observations
//! one push adds (`route`, a hand-off, `write`: three stages, two extra clock reads — the
//! hand-off's queueing and taking — besides the ones the push latency already made),
//! against a push's whole server CPU (20–60 µs, bench/RESULTS.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use reactor::stats::{stage, ReactorStats};

fn stages(c: &mut Criterion) {
    let stats = ReactorStats::default();
    let received = Instant::now();
    c.bench_function("stage instrumentation per push", |b| {
        b.iter(|| {
            // Queued (by the sender), taken (by the recipient's reactor), written.
            let queued = Instant::now();
            let taken = Instant::now();
            stats.observe_stage(
                stage::HANDOFF_CROSS,
                taken.saturating_duration_since(queued),
            );
            stats.observe_stage(stage::ROUTE, queued.saturating_duration_since(received));
            let written = black_box(Instant::now());
            stats.observe_stage(stage::WRITE, written.saturating_duration_since(taken));
        })
    });
    c.bench_function("push latency observation alone (before)", |b| {
        b.iter(|| {
            let written = black_box(Instant::now());
            stats
                .push_latency
                .observe(written.saturating_duration_since(received));
        })
    });
}

criterion_group!(benches, stages);
criterion_main!(benches);
