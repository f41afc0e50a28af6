#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on Debian 12, as root.
# Idempotent: a second run installs nothing. Every test that needs one of these fails,
# rather than skips, when it is missing.
set -euo pipefail

need_apt=()
# (Packages are added here as the suites that use them land: nats-server for the cluster
# tests, python3-websockets/node ws/chromium for the conformance tests.)
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# clippy and rustfmt for the checks CI runs beside the tests.
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
