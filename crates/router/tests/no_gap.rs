//! The switch from replay to live delivery: connections of one user open and close while
//! several threads push to that user. Each connection's replay followed by what reached
//! its reactor inbox must be every seq after its resume point, once each, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reactor::{Command, ConnRef, ReactorHandle};
use router::{HistoryConfig, Router};

/// The `"seq":N` of a message frame.
fn seq_of(frame: &Bytes) -> u64 {
    let at = frame
        .windows(6)
        .position(|w| w == b"\"seq\":")
        .expect("a seq")
        + 6;
    frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0, |n, d| n * 10 + u64::from(d - b'0'))
}

fn conn(index: u32) -> ConnRef {
    ConnRef {
        reactor: 0,
        index,
        generation: 1,
    }
}

#[test]
fn replay_then_live_has_no_gap_and_no_duplicate_under_concurrent_pushes() {
    const PUSHERS: u64 = 3;
    const OPENS: u32 = 60;
    let (handle, inbox, _poll) = ReactorHandle::detached(0, 1 << 20).unwrap();
    let router = Arc::new(Router::new().with_history(HistoryConfig {
        size: 100_000,
        ttl: Duration::from_secs(300),
        max_bytes: usize::MAX,
        ..HistoryConfig::default()
    }));
    router.attach(vec![handle]);
    let pushed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let opening = Arc::new(AtomicBool::new(true));

    // What reached the inbox, per connection, in inbox order.
    let collector = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut live: HashMap<u32, Vec<u64>> = HashMap::new();
            loop {
                match inbox.recv_timeout(Duration::from_millis(50)) {
                    Ok(Command::Deliver { frame, targets, .. }) => {
                        for t in targets {
                            live.entry(t.index).or_default().push(seq_of(&frame));
                        }
                    }
                    Ok(_) => {}
                    Err(_) if stop.load(Ordering::SeqCst) => return live,
                    Err(_) => {}
                }
            }
        })
    };
    let pushers: Vec<_> = (0..PUSHERS)
        .map(|_| {
            let router = Arc::clone(&router);
            let pushed = Arc::clone(&pushed);
            let opening = Arc::clone(&opening);
            std::thread::spawn(move || {
                // Until the last connection has opened, and then some more.
                let mut tail = 200;
                while tail > 0 {
                    if !opening.load(Ordering::SeqCst) {
                        tail -= 1;
                    }
                    let d = router.send(
                        &["alice"],
                        &[] as &[&str],
                        "svc",
                        b"1",
                        None,
                        Instant::now(),
                    );
                    assert_eq!(d.outcome.refused, 0);
                    pushed.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(20));
                }
            })
        })
        .collect();

    // Connections open (resuming from half of what was pushed so far) and close while
    // the pushes go on; the last one stays until the end.
    let mut opened = Vec::new();
    for k in 0..=OPENS {
        let since = pushed.load(Ordering::SeqCst) / 2;
        let (uid, welcome, _) = router.open_user("alice", conn(k), None, Some(since));
        let welcome = welcome.expect("a single node answers at once");
        assert_eq!(welcome.error, None);
        assert_eq!(welcome.recovered, Some(true));
        let replay: Vec<u64> = welcome.replay.iter().map(seq_of).collect();
        assert_eq!(welcome.seq, Some(since + replay.len() as u64));
        opened.push((since, replay));
        if k < OPENS {
            std::thread::sleep(Duration::from_millis(1));
            router.close_user(&uid, conn(k));
        }
    }
    opening.store(false, Ordering::SeqCst);
    for p in pushers {
        p.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let live = collector.join().unwrap();

    let total = pushed.load(Ordering::SeqCst);
    assert!(total >= PUSHERS * 200);
    let mut switches_with_both = 0;
    for (k, (since, replay)) in opened.into_iter().enumerate() {
        let later = live.get(&(k as u32)).cloned().unwrap_or_default();
        if !replay.is_empty() && !later.is_empty() {
            switches_with_both += 1;
        }
        let all: Vec<u64> = replay.into_iter().chain(later).collect();
        let expected: Vec<u64> = (since + 1..=since + all.len() as u64).collect();
        assert_eq!(all, expected, "connection {k} resuming after {since}");
        if k as u32 == OPENS {
            assert_eq!(all.last().copied(), Some(total), "the last one got the end");
        }
    }
    assert!(
        switches_with_both > OPENS / 4,
        "the switch was exercised: {switches_with_both}"
    );
}
