//! Unmask throughput per kernel, beside `memcpy` of the same buffer and the bytewise loop,
//! in the same run. `cargo bench -p protocol --bench unmask`

#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::mask::{unmask, Kernel};

fn unmask_sizes(c: &mut Criterion) {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    for size in [64usize, 1024, 64 * 1024, 1024 * 1024] {
        let mut group = c.benchmark_group(format!("unmask/{size}"));
        group.throughput(Throughput::Bytes(size as u64));
        let src = vec![0xA5u8; size];
        let mut buf = vec![0u8; size];
        group.bench_function("memcpy", |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&src));
                black_box(&mut buf);
            })
        });
        group.bench_function("dispatch", |b| {
            b.iter(|| {
                unmask(black_box(&mut buf), key, 1);
            })
        });
        for kernel in Kernel::available() {
            group.bench_with_input(
                BenchmarkId::from_parameter(format!("{kernel:?}")),
                &kernel,
                |b, k| b.iter(|| k.apply(black_box(&mut buf), key, 1)),
            );
        }
        group.finish();
    }
}

criterion_group!(benches, unmask_sizes);
criterion_main!(benches);
