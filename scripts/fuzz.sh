#!/usr/bin/env bash
# Coverage-guided fuzzing of every protocol parser with cargo-fuzz (nightly + libFuzzer).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# New inputs go to a scratch corpus under target/fuzz-corpus; the committed seeds in
# crates/protocol/fuzz/corpus are read, never rewritten. A crash leaves its input in
# crates/protocol/fuzz/artifacts/<target>/: copy it into the committed corpus as
# regression-<what> and add a unit test named for it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(handshake frames inflate)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in "${targets[@]}"; do
  mkdir -p "target/fuzz-corpus/$t"
  echo "== fuzz $t for ${secs}s"
  cargo +nightly fuzz run "$t" --fuzz-dir crates/protocol/fuzz --features libfuzzer \
    "target/fuzz-corpus/$t" "crates/protocol/fuzz/corpus/$t" \
    -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=4096 2>&1 | grep -E '^(#[0-9]+ +DONE|Done|==|INFO: seed)|panicked|ERROR' || true
  test "${PIPESTATUS[0]}" -eq 0
done
