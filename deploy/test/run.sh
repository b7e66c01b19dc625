#!/usr/bin/env bash
# The container images, tested the way a site and a cloud use them (deploy/test/run.mjs):
# builds both images from this checkout (deploy/image.sh, podman), then runs the signal server
# from its image in a "cloud" network namespace and the gateway from its image in a "site"
# namespace (--network ns:...), with baresip desk phones on the site and the headless
# softphone on the cloud side. Needs root (network namespaces, rootful podman).
#   deploy/test/run.sh                 KEEP=1 keeps the temp folder, containers and namespaces
# Env: TRUNKLINE_SKIP_IMAGE_TEST=1 skips it (say so: CI runs it); TRUNKLINE_SKIP_IMAGE_BUILD=1
# uses the images already built (trunkline/signal-server:latest, trunkline/switch-gateway:latest);
# TRUNKLINE_DEBUG_BUILT=1 uses target/debug/trunkline-client as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"

if [ "${TRUNKLINE_SKIP_IMAGE_TEST:-}" = 1 ]; then
  echo "SKIPPED deploy/test: container images (TRUNKLINE_SKIP_IMAGE_TEST=1)" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the image test needs root (network namespaces, podman); TRUNKLINE_SKIP_IMAGE_TEST=1 skips it" >&2
  exit 1
fi

missing=()
for t in baresip:baresip sox:sox node:nodejs nsenter:util-linux ip:iproute2 tar:tar; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}" >&2
  apt-get update -qq -o DPkg::Lock::Timeout=900
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends "${missing[@]}" >/dev/null
fi

# The test drives podman (network namespaces by path are podman's --network ns:).
export TRUNKLINE_IMAGE_ENGINE=podman
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/containers.conf}
start=$(date +%s)
if [ "${TRUNKLINE_SKIP_IMAGE_BUILD:-}" != 1 ]; then
  echo "==> building the images (deploy/image.sh)" >&2
  deploy/image.sh
fi
command -v podman >/dev/null 2>&1 || { echo "error: podman missing" >&2; exit 1; }
if [ "${TRUNKLINE_DEBUG_BUILT:-}" != 1 ]; then  # ./trunkline test built it (web/e2e/run.sh says why)
  echo "==> building the headless softphone (debug)" >&2
  cargo build -q --locked -p trunkline-client
fi

# A short random id: namespaces, containers and volumes are named tli<id>-*, so runs side by
# side do not meet, and everything of this run is found again for cleaning up.
ID=tli$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
TMP=$(mktemp -d "/tmp/trunkline-image-test-$ID.XXXXXX")
CLOUD=$ID-cloud
SITE=$ID-site

cleanup() {
  local rc=$?
  if [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: left $TMP, containers/volumes/namespaces $ID-* (podman rm -f \$(podman ps -aq --filter name=$ID); ip netns del $CLOUD; ip netns del $SITE)" >&2
    exit "$rc"
  fi
  local c v ns
  for c in $(podman ps -aq --filter "name=^$ID-" 2>/dev/null); do podman rm -f -t 2 "$c" >/dev/null 2>&1 || true; done
  for v in $(podman volume ls -q --filter "name=^$ID-" 2>/dev/null); do podman volume rm -f "$v" >/dev/null 2>&1 || true; done
  for ns in "$CLOUD" "$SITE"; do
    if [ -e "/run/netns/$ns" ]; then
      # Phones and softphones started in there (the node script ends them; this is the net).
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The cloud and the site: two namespaces joined by one link (the "Internet"), addresses from
# the benchmarking range 198.18.0.0/15, default routes over the link.
ip netns add "$CLOUD"
ip netns add "$SITE"
for ns in "$CLOUD" "$SITE"; do ip -n "$ns" link set lo up; done
ip -n "$CLOUD" link add wan0 type veth peer name wan0 netns "$SITE"
ip -n "$CLOUD" addr add 198.18.0.1/24 dev wan0
ip -n "$SITE" addr add 198.18.0.2/24 dev wan0
ip -n "$CLOUD" link set wan0 up
ip -n "$SITE" link set wan0 up
ip -n "$CLOUD" route add default via 198.18.0.2
ip -n "$SITE" route add default via 198.18.0.1

# The script runs on the site (its phones' control ports are on the site's loopback). nsenter
# changes only the network namespace: podman needs the host's mounts (cgroups), which
# `ip netns exec` would hide.
set +e
nsenter --net="/run/netns/$SITE" node deploy/test/run.mjs \
  --id "$ID" --tmp "$TMP" --cloud-ns "$CLOUD" --site-ns "$SITE" \
  --cloud-ip 198.18.0.1 --site-ip 198.18.0.2 \
  --client "$ROOT/target/debug/trunkline-client"
rc=$?
set -e
echo "==> deploy/test took $(( $(date +%s) - start )) s (image build included)" >&2
exit "$rc"
