//! Memory per retained message (issue 15): heap bytes the single-node history holds per
//! message and per stream, counted by a global allocator, for a typical small IM message.
//!
//! `cargo run --release -p router --example history_memory [USERS] [PER_USER] [PAYLOAD]`
//! (defaults 10 000 users × 100 messages × 120-byte frames: one million retained).

use std::alloc::System;
use std::time::{Duration, Instant};

use bytes::Bytes;
use router::history::History;
use router::HistoryConfig;

#[global_allocator]
static ALLOC: cap::Cap<System> = cap::Cap::new(System, usize::MAX);

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let users = arg(1, 10_000);
    let per_user = arg(2, 100);
    let payload = arg(3, 120);
    let history = History::new(HistoryConfig {
        size: per_user,
        ttl: Duration::from_secs(3600),
        max_bytes: usize::MAX / 2,
        ..HistoryConfig::default()
    });
    let names: Vec<String> = (0..users).map(|u| format!("user-{u}")).collect();
    let frame = Bytes::from(vec![b'x'; payload]);
    let now = Instant::now();
    let before = ALLOC.allocated() as isize;
    // One message per user first: what a stream costs with one message in it.
    for name in &names {
        history
            .lock(name, now)
            .append(name, |_| frame.slice(..).to_vec().into());
    }
    let one = ALLOC.allocated() as isize - before;
    for _ in 1..per_user {
        for name in &names {
            history
                .lock(name, now)
                .append(name, |_| frame.slice(..).to_vec().into());
        }
    }
    let all = ALLOC.allocated() as isize - before;
    let messages = users * per_user;
    let per_message = (all - one) as f64 / (messages - users) as f64;
    println!(
        "{users} streams × {per_user} messages of {payload} B: {:.1} MiB held",
        all as f64 / 1048576.0
    );
    println!(
        "per message: {per_message:.0} B ({:.0} B beyond the frame); per stream with one message: {:.0} B",
        per_message - payload as f64,
        one as f64 / users as f64
    );
    println!(
        "history's own estimate (pushgate_history_bytes): {:.1} MiB",
        history.bytes() as f64 / 1048576.0
    );
}
