#!/usr/bin/env bash
# Runs the tests that exercise `unsafe` code under Miri (nightly + miri component):
# the SSE2 kernel and, with AVX2 enabled at compile time, the AVX2 kernel.
# The reactor's one `unsafe` (`set_len` after `recv` into spare capacity) needs real
# sockets, which Miri cannot run; it is exercised by every end-to-end test instead.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup +nightly component list --installed | grep -q '^miri' || rustup +nightly component add miri rust-src
cargo +nightly miri test -p protocol --lib mask
RUSTFLAGS="-C target-feature=+avx2" cargo +nightly miri test -p protocol --lib mask --target-dir target/miri-avx2
