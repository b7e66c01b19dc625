#!/usr/bin/env bash
# Installs what the browser softphone needs to build and to be tested; skips what is there.
#   - Rust target wasm32-unknown-unknown
#   - trunk 0.21.14 and wasm-bindgen-cli 0.2.130 (cargo install; slow the first time:
#     trunk ≈ 8 min, wasm-bindgen ≈ 5 min)
#   - binaryen 132 (wasm-opt) from npm into .tools/ (Debian's binaryen 108 breaks the wasm)
#   - chromium + chromium-driver (Debian) for the browser tests
#   - playwright-core in web/e2e (never downloads a browser: Debian's /usr/bin/chromium is used)
# Usage: web/setup.sh [--no-browser]   (--no-browser: only what the build needs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TRUNK_VERSION=0.21.14
WASM_BINDGEN_VERSION=0.2.130
BINARYEN_VERSION=132.0.0
TOOLS=$ROOT/.tools

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
export PATH="$HOME/.cargo/bin:$PATH"

browser=1
[ "${1:-}" = "--no-browser" ] && browser=0

have cargo || { echo "error: cargo not found: install Rust (rustup) first" >&2; exit 1; }

if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "wasm32-unknown-unknown target: present"
else
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

if have trunk && trunk --version 2>/dev/null | grep -q " $TRUNK_VERSION"; then
  say "trunk $TRUNK_VERSION: present"
else
  say "installing trunk $TRUNK_VERSION (cargo install, ~8 min once)"
  cargo install trunk --locked --version "$TRUNK_VERSION"
fi

if have wasm-bindgen && wasm-bindgen --version 2>/dev/null | grep -q " $WASM_BINDGEN_VERSION"; then
  say "wasm-bindgen-cli $WASM_BINDGEN_VERSION: present"
else
  # Without --locked: a version locked by the CLI's own Cargo.lock is missing from the registry.
  # The version must equal wasm-bindgen's in Cargo.lock.
  say "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (cargo install, ~5 min once)"
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

if [ -x "$TOOLS/node_modules/.bin/wasm-opt" ] && "$TOOLS/node_modules/.bin/wasm-opt" --version 2>/dev/null | grep -q "version ${BINARYEN_VERSION%%.*}"; then
  say "binaryen $BINARYEN_VERSION (wasm-opt) in .tools: present"
else
  have npm || { echo "error: npm not found (Debian: apt-get install nodejs npm)" >&2; exit 1; }
  say "installing binaryen $BINARYEN_VERSION (wasm-opt) into .tools/"
  mkdir -p "$TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"private":true}' > "$TOOLS/package.json"
  npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error "binaryen@$BINARYEN_VERSION"
fi

[ "$browser" = 1 ] || exit 0

if have chromium && have chromedriver; then
  say "chromium + chromium-driver: present"
else
  say "installing chromium + chromium-driver (Debian)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=900 chromium chromium-driver >/dev/null
fi

# The browser tests also use real desk phones and audio tools.
missing=()
for spec in baresip:baresip sox:sox; do
  have "${spec%%:*}" || missing+=("${spec##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -d "$ROOT/web/e2e/node_modules/playwright-core" ]; then
  say "playwright-core in web/e2e: present"
else
  say "installing playwright-core in web/e2e (no browser download)"
  cd "$ROOT/web/e2e"
  if [ -f package-lock.json ]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
  else
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error
  fi
fi
say "web tools ready"
