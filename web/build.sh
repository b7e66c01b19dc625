#!/usr/bin/env bash
# Builds the browser softphone (release) into dist/, offline, with the tools web/setup.sh
# installs (it runs `web/setup.sh --no-browser` first if one is missing). Prints the size of the
# wasm (raw and gzip).
# Usage: web/build.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$ROOT/.tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
for t in trunk wasm-bindgen wasm-opt; do
  if ! command -v "$t" >/dev/null 2>&1; then
    echo "==> $t not found: installing the web build tools (web/setup.sh --no-browser)" >&2
    "$ROOT/web/setup.sh" --no-browser
    break
  fi
done
mode=(--release)
[ "${1:-}" = "--dev" ] && mode=()
# The workspace's release profile keeps line tables (debug = 1) for the servers; the wasm does
# not need them, and is built for size.
export CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_PROFILE_RELEASE_OPT_LEVEL=z
export CARGO_PROFILE_RELEASE_LTO=true
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_PANIC=abort
cargo fetch --locked -q
CARGO_NET_OFFLINE=true trunk build "${mode[@]}" --locked --skip-version-check --config Trunk.toml
# Pre-compressed copies: the signal server serves `x.gz` to browsers that accept gzip.
find dist -type f \( -name '*.wasm' -o -name '*.js' -o -name '*.css' -o -name '*.html' -o -name '*.json' -o -name '*.svg' -o -name '*.webmanifest' \) \
  -exec gzip -9 -k -f {} \;
wasm=$(ls -1 dist/*.wasm | head -n1)
raw=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
printf 'web: %s  %d bytes raw, %d bytes gzip (%.1f kB gzip)\n' "$wasm" "$raw" "$gz" "$(awk "BEGIN{print $gz/1000}")"
