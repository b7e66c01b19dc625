#!/usr/bin/env bash
# Builds the two container images from this checkout, with no registry: each is FROM scratch
# plus one static (musl) binary, /etc/passwd + /etc/group naming its non-root user, a built-in
# config, its state folder and (signal server) the softphone. Prints their sizes and fails if
# one is over TRUNKLINE_IMAGE_MAX_MB (default 25).
#
#   deploy/image.sh            build trunkline/signal-server and trunkline/switch-gateway
#                              (tags :latest and :<workspace version>) with podman or docker
#   deploy/image.sh --binaries-only
#                              only the two stripped release binaries (what `./trunkline test`
#                              starts early in the background); no container engine needed
#
# The binaries are built in target/image/ (CARGO_TARGET_DIR overrides), a cargo target folder of
# their own: this build then never waits on, or holds up, another cargo build of the checkout.
#
# Env:
#   TRUNKLINE_IMAGE_ENGINE=podman|docker   pick the engine (default: podman if installed, else a
#                                          docker whose daemon answers, else podman installed
#                                          from Debian with runc)
#   TRUNKLINE_IMAGE_LIBC=glibc             the glibc binary with exactly the libraries `ldd`
#                                          lists plus the loader, instead of a static musl build
#                                          (used by itself when the musl target cannot be added)
#   TRUNKLINE_IMAGE_MAX_MB=25              size limit per image
#   TRUNKLINE_IMAGE_NO_WEB=1               do not build the softphone if dist/ has none (the
#                                          signal server then answers `/` with a note)
#   TRUNKLINE_IMAGE_PREFIX=trunkline       image names: PREFIX/signal-server, PREFIX/switch-gateway
# With podman, CONTAINERS_CONF defaults to deploy/containers.conf (cgroupfs, runc, no default
# ulimits: what podman needs on machines without systemd).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

UID_GID=10001           # the images' user "trunkline" (numeric, in their /etc/passwd)
MUSL=x86_64-unknown-linux-musl
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/image}
MAX_MB=${TRUNKLINE_IMAGE_MAX_MB:-25}
PREFIX=${TRUNKLINE_IMAGE_PREFIX:-trunkline}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# Reproducible layers: every file gets the last commit's time.
EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)

apt_install() {
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing Debian packages: $* (once)"
  $sudo apt-get update -qq -o DPkg::Lock::Timeout=900
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends "$@" >/dev/null
}

# The container engine: sets ENGINE (podman or docker) and exports CONTAINERS_CONF for podman.
pick_engine() {
  ENGINE=${TRUNKLINE_IMAGE_ENGINE:-}
  if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null 2>&1; then ENGINE=podman
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker
    else ENGINE=podman
    fi
  fi
  case "$ENGINE" in
    podman)
      local need=()
      command -v podman >/dev/null 2>&1 || need+=(podman)
      command -v runc >/dev/null 2>&1 || need+=(runc)
      [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
      export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/containers.conf}
      ;;
    docker) docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer (docker info)" ;;
    *) die "TRUNKLINE_IMAGE_ENGINE=$ENGINE: want podman or docker" ;;
  esac
}

# Sets LIBC (musl or glibc) and BIN_DIR (where cargo puts the two binaries), after building.
build_binaries() {
  LIBC=${TRUNKLINE_IMAGE_LIBC:-musl}
  if [ "$LIBC" = musl ]; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
      say "adding the Rust target $MUSL (static binaries)"
      rustup target add "$MUSL" >&2 || { say "cannot add $MUSL: using the glibc binaries and their libraries"; LIBC=glibc; }
    fi
  fi
  # The release profile keeps line tables (debug = 1) for the servers' backtraces; the images
  # take the binaries stripped (about 15 MB each instead of 110–145 MB).
  local env=(CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols)
  local pkgs=(-p trunkline-signal-server -p trunkline-switch-gateway)
  if [ "$LIBC" = musl ]; then
    # aws-lc and SQLite are C: musl-gcc compiles them for the static target.
    command -v musl-gcc >/dev/null 2>&1 || apt_install musl-tools
    say "building signal-server and switch-gateway (release, static $MUSL; first time: several minutes)"
    env "${env[@]}" CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked -q --target "$MUSL" "${pkgs[@]}"
    BIN_DIR=$TARGET_DIR/$MUSL/release
  else
    say "building signal-server and switch-gateway (release, glibc)"
    env "${env[@]}" CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked -q "${pkgs[@]}"
    BIN_DIR=$TARGET_DIR/release
  fi
}

# Copy binary $1 into rootfs $2 at usr/local/bin, with (glibc) exactly the libraries it loads.
install_binary() {
  local bin=$1 rootfs=$2
  install -D -m 0755 "$bin" "$rootfs/usr/local/bin/$(basename "$bin")"
  if [ "$LIBC" = musl ]; then
    # A static(-pie) binary asks for no interpreter.
    if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then die "$bin is not static"; fi
    return
  fi
  # ldd lines: "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" and the loader
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file. (glibc ≥ 2.34 has its
  # files and DNS lookups built in: no NSS modules to add.)
  local lib loader
  loader=$(ldd "$bin" | awk '$1 ~ /^\// { print $1 }')
  [ -n "$loader" ] || die "ldd names no loader for $bin"
  # Copy the file each name resolves to, under the name the binary asks for; only the loader
  # is executable (the kernel runs it).
  install -D -m 0755 "$(readlink -f "$loader")" "$rootfs$loader"
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'); do
    install -D -m 0644 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}

# Stage one image's files in $1/rootfs and pack them into $1/rootfs.tar: everything root-owned
# and read-only to the user, except the state folder, which belongs to the user.
pack_rootfs() {
  local ctx=$1 rootfs=$1/rootfs
  printf 'root:x:0:0:root:/:/sbin/nologin\ntrunkline:x:%s:%s:Trunkline:/var/lib/trunkline:/sbin/nologin\n' \
    "$UID_GID" "$UID_GID" > "$rootfs/etc/passwd"
  printf 'root:x:0:\ntrunkline:x:%s:\n' "$UID_GID" > "$rootfs/etc/group"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
  mkdir -p "$rootfs/var/lib/trunkline" "$rootfs/tmp"
  chmod 0700 "$rootfs/var/lib/trunkline"
  chmod 1777 "$rootfs/tmp"
  local common=(--format=gnu --numeric-owner --mtime="@$EPOCH" --no-recursion -C "$rootfs")
  (cd "$rootfs" && find . -mindepth 1 ! -path './var/lib/trunkline' | LC_ALL=C sort) |
    tar --create --file "$ctx/rootfs.tar" --owner=0 --group=0 "${common[@]}" --files-from -
  tar --append --file "$ctx/rootfs.tar" --owner="$UID_GID" --group="$UID_GID" "${common[@]}" ./var/lib/trunkline
}

# Build image $1 (signal-server | switch-gateway) from deploy/$1/Containerfile.
build_image() {
  local name=$1 ctx
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/trunkline-image-$name.XXXXXX")
  CONTEXTS+=("$ctx")
  local rootfs=$ctx/rootfs
  mkdir -p "$rootfs/etc/trunkline"
  install_binary "$BIN_DIR/$name" "$rootfs"
  case "$name" in
    switch-gateway) install -m 0644 deploy/switch-gateway/gateway.toml "$rootfs/etc/trunkline/gateway.toml" ;;
    signal-server)
      install -m 0644 deploy/signal-server/signal-server.toml "$rootfs/etc/trunkline/signal-server.toml"
      mkdir -p "$rootfs/usr/share/trunkline/web"
      if [ -f dist/index.html ]; then
        cp -r dist/. "$rootfs/usr/share/trunkline/web/"
        # Only what the server serves: the built app, no source maps or editor leftovers.
        find "$rootfs/usr/share/trunkline/web" -type f -name '*.map' -delete
        find "$rootfs/usr/share/trunkline/web" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
      else
        say "no softphone in dist/: the signal-server image serves none (its / says so)"
      fi
      ;;
  esac
  pack_rootfs "$ctx"
  cp "deploy/$name/Containerfile" "$ctx/Containerfile"
  local image=$PREFIX/$name
  local args=(build --file "$ctx/Containerfile" --tag "$image:latest" --tag "$image:$VERSION"
    --label "org.opencontainers.image.version=$VERSION" --label "org.opencontainers.image.revision=$REVISION"
    --label "trunkline.libc=$LIBC")
  # OCI image configs have no HEALTHCHECK: podman keeps it only in the docker format.
  [ "$ENGINE" = podman ] && args+=(--format docker --runtime runc)
  local previous
  previous=$("$ENGINE" image inspect --format '{{.Id}}' "$image:latest" 2>/dev/null || true)
  say "building image $image:$VERSION ($ENGINE)"
  "$ENGINE" "${args[@]}" "$ctx" >&2
  # The image this one replaces, now untagged: removed unless a container still uses it.
  if [ -n "$previous" ] && [ "$previous" != "$("$ENGINE" image inspect --format '{{.Id}}' "$image:latest")" ]; then
    "$ENGINE" image rm "$previous" >/dev/null 2>&1 || true
  fi
}

image_bytes() { "$ENGINE" image inspect --format '{{.Size}}' "$1"; }

CONTEXTS=()
cleanup() { [ ${#CONTEXTS[@]} -eq 0 ] || rm -rf "${CONTEXTS[@]}"; }
trap cleanup EXIT

main() {
  if [ "${1:-}" = --binaries-only ] && [ $# -eq 1 ]; then
    build_binaries
    say "binaries in $BIN_DIR ($LIBC)"
    return 0
  fi
  [ $# -eq 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
  pick_engine
  build_binaries
  if [ ! -f dist/index.html ] && [ "${TRUNKLINE_IMAGE_NO_WEB:-0}" != 1 ] && [ -x web/build.sh ]; then
    say "building the softphone for the signal-server image (first time: installs the web toolchain, several minutes)"
    web/build.sh >&2 || say "softphone build failed: the image serves none"
  fi
  build_image signal-server
  build_image switch-gateway
  local over=0 name bytes
  printf '%-34s %10s  %s\n' IMAGE SIZE "LIMIT ${MAX_MB} MB"
  for name in signal-server switch-gateway; do
    bytes=$(image_bytes "$PREFIX/$name:$VERSION")
    local verdict=ok
    if [ "$bytes" -gt $((MAX_MB * 1000 * 1000)) ]; then verdict="OVER"; over=1; fi
    printf '%-34s %7.1f MB  %s\n' "$PREFIX/$name:$VERSION" "$(awk "BEGIN{print $bytes/1000000}")" "$verdict"
  done
  [ "$over" = 0 ] || die "an image is over ${MAX_MB} MB"
}

main "$@"
