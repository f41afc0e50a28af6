//! Replays the committed corpus (seeds and crash regressions) and a fixed number of
//! generated inputs through every fuzz oracle, on stable Rust, as part of `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Deterministic mutations of the seeds: bit flips, truncations, splices.
fn mutants(seeds: &[Vec<u8>], count: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let mut m = seeds[next() as usize % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                match next() % 4 {
                    0 if !m.is_empty() => {
                        let i = next() as usize % m.len();
                        m[i] ^= 1 << (next() % 8);
                    }
                    1 if !m.is_empty() => m.truncate(next() as usize % m.len()),
                    2 => {
                        let other = &seeds[next() as usize % seeds.len()];
                        let at = if m.is_empty() {
                            0
                        } else {
                            next() as usize % m.len()
                        };
                        m.splice(at..at, other.iter().copied());
                    }
                    _ => m.push(next() as u8),
                }
            }
            m
        })
        .collect()
}

fn replay(target: &str, oracle: fn(&[u8])) {
    let seeds = corpus(target);
    for s in &seeds {
        oracle(s);
    }
    for m in mutants(&seeds, 3000) {
        oracle(&m);
    }
}

#[test]
fn handshake_corpus() {
    replay("handshake", protocol_fuzz::handshake);
}

#[test]
fn frames_corpus() {
    replay("frames", protocol_fuzz::frames);
}

#[test]
fn inflate_corpus() {
    replay("inflate", protocol_fuzz::inflate);
}
