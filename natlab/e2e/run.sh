#!/usr/bin/env bash
# Browser calls across real NATs (natlab/e2e/run.mjs): builds the signal server and switch
# gateway (debug), expects the softphone built into dist/ (web/build.sh) and web/e2e's
# playwright-core (web/setup.sh), installs the lab's packages (natlab/lab.sh deps), then runs
# the tests as root. The last line says "N passed, N failed".
#   natlab/e2e/run.sh [test-name-filter]        KEEP=1 keeps the lab and every log
#   natlab/e2e/run.sh --bench [N]               dial → first audio (release binaries)
# Env: TRUNKLINE_DEBUG_BUILT=1 uses target/debug's binaries as they are (no build).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" -ne 0 ]; then
  # Like the Rust NAT lab tests: skipping needs saying so explicitly.
  [ "${TRUNKLINE_SKIP_NATLAB:-}" = 1 ] && { echo "SKIPPED natlab/e2e: needs root (TRUNKLINE_SKIP_NATLAB=1)" >&2; exit 0; }
  echo "error: the NAT lab needs root (network namespaces, nftables); TRUNKLINE_SKIP_NATLAB=1 skips it" >&2
  exit 1
fi
[ -d web/e2e/node_modules/playwright-core ] || { echo "error: playwright-core missing: run web/setup.sh" >&2; exit 1; }
[ -f dist/index.html ] || { echo "error: dist/ is missing: run web/build.sh" >&2; exit 1; }
natlab/lab.sh deps >&2
# baresip's control port lives inside a site namespace; socat bridges it to a unix socket.
for t in socat:socat curl:curl baresip:baresip; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing="${missing:-} ${t##*:}"
done
if [ -n "${missing:-}" ]; then
  echo "==> installing${missing}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends ${missing} >/dev/null
fi
if [ "${1:-}" = "--bench" ]; then
  # Timings and CPU per call are those of what is deployed: release binaries.
  echo "==> building signal-server and switch-gateway (release)" >&2
  cargo build -q --release --locked -p trunkline-signal-server -p trunkline-switch-gateway
  export TRUNKLINE_BIN_DIR="${TRUNKLINE_BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/release}"
elif [ "${TRUNKLINE_DEBUG_BUILT:-}" != 1 ]; then
  # (TRUNKLINE_DEBUG_BUILT=1: ./trunkline test already built them, see web/e2e/run.sh.)
  echo "==> building signal-server and switch-gateway (debug)" >&2
  cargo build -q --locked -p trunkline-signal-server -p trunkline-switch-gateway
fi
exec node natlab/e2e/run.mjs "$@"
