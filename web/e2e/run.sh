#!/usr/bin/env bash
# Browser end-to-end tests: builds the signal server and switch gateway (debug) and the web app
# (release, into dist/), then runs web/e2e/run.mjs in headless Debian Chromium.
# Needs web/setup.sh to have run. The last line says "N passed, N failed".
#   web/e2e/run.sh [test-name-filter]
# Env: SKIP_WEB_BUILD=1 uses dist/ as it is; KEEP=1 keeps the temp folder with every log;
# TRUNKLINE_DEBUG_BUILT=1 uses target/debug's binaries as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
[ -d web/e2e/node_modules/playwright-core ] || { echo "error: playwright-core missing: run web/setup.sh" >&2; exit 1; }
# TRUNKLINE_DEBUG_BUILT=1 (./trunkline test, after `cargo test --workspace`, which builds and
# links these binaries too): skip a `cargo build -p` whose narrower feature set would rebuild
# tokio, sqlx, str0m and the rest a second time (~4 min on 2 cores) in the same target/debug.
if [ "${TRUNKLINE_DEBUG_BUILT:-}" != 1 ]; then
  echo "==> building signal-server and switch-gateway (debug)" >&2
  cargo build -q --locked -p trunkline-signal-server -p trunkline-switch-gateway
fi
if [ "${SKIP_WEB_BUILD:-0}" != 1 ]; then
  echo "==> building the web app (release)" >&2
  web/build.sh >&2
fi
exec node web/e2e/run.mjs "$@"
