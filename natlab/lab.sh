#!/usr/bin/env bash
# Trunkline NAT test lab: network namespaces + nftables NAT routers + coturn.
#
# Everything lives in namespaces named "<ID>-..."; nothing is routed to the root
# namespace or to a real interface (no veth into the root namespace), so several
# labs with different IDs can run side by side on one machine.
# See natlab/README.md for the topology, the address plan and the KEY=VALUE output.
#
#   lab.sh deps                         install missing Debian packages
#   lab.sh up ID SITE_SPEC...           build a lab; SITE_SPEC = NAME:MODE[:HOSTS]
#   lab.sh coturn ID SECRET [REALM]     start coturn inside ID-pub (UDP/TCP 3478, TLS 443)
#   lab.sh info ID                      print the KEY=VALUE lines of a running lab again
#   lab.sh exec ID NS_SUFFIX -- CMD...  run CMD inside ID-NS_SUFFIX
#   lab.sh down ID                      kill the lab's processes, delete it (idempotent)
#   lab.sh gc [PREFIX]                  delete stale labs (state older than NATLAB_GC_AGE
#                                       seconds, default 3600), or every lab whose ID
#                                       starts with PREFIX
set -euo pipefail

NATLAB_DIR=${NATLAB_DIR:-/tmp/natlab}
NATLAB_GC_AGE=${NATLAB_GC_AGE:-3600}

# --- address plan (documentation ranges only; see README) ---------------------
PUB_NET=203.0.113          # TEST-NET-3: the lab's "public Internet", one /24 on a bridge
ISP_IP=$PUB_NET.1          # pub's own address; routers' default gateway ("the ISP")
TURN_IP=$PUB_NET.10        # reserved for coturn
SIGNAL_IP=$PUB_NET.20      # reserved for the signal server
LAN_NET=10.77              # site k's LAN is 10.77.k.0/24 (router .1, host j .(1+j))
MAX_SITES=9
MAX_HOSTS=9

die() { echo "natlab: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

check_id() {
  # Short and strict: namespace names are built from it and gc parses them back.
  [[ ${1:-} =~ ^[a-z][a-z0-9]{0,7}$ ]] ||
    die "bad lab ID '${1:-}': want [a-z][a-z0-9]{0,7} (e.g. tl\$(openssl rand -hex 2))"
}

lab_dir() { echo "$NATLAB_DIR/$1"; }

ns_exists() { [ -e "/run/netns/$1" ]; }

# All namespaces of lab $1 (names "ID-..."); the '-' keeps "tl1" from matching "tl12-*".
lab_namespaces() { ip netns list 2>/dev/null | awk -v p="$1-" 'index($1, p) == 1 { print $1 }'; }

# sysctl inside a namespace; IPv6 keys may be missing when IPv6 is disabled at boot.
nsysctl() { local ns=$1; shift; ip netns exec "$ns" sysctl -qw "$@" >/dev/null; }

# Common namespace setup: lo up, forwarding off unless asked, IPv6 off (except ::1).
# IPv6 is switched off so that every flow is the IPv4 path under test: link-local
# IPv6 between a site host and its router, or on the pub bridge, would let ICE find
# paths that bypass the NAT.
mkns() {
  local ns=$1 fwd=${2:-0}
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  nsysctl "$ns" net.ipv4.ip_forward="$fwd"
  nsysctl "$ns" net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    net.ipv6.conf.lo.disable_ipv6=0 2>/dev/null || true
}

# Silent-sink default route inside namespace $1 (see the comment in cmd_up).
mksink() {
  ip -n "$1" link add sink0 type veth peer name sink1
  ip -n "$1" link set sink0 arp off
  ip -n "$1" link set sink1 up
  ip -n "$1" link set sink0 up
  ip -n "$1" route add default dev sink0
}

# ------------------------------------------------------------------------------
cmd_deps() {
  local need=()
  command -v nft >/dev/null || need+=(nftables)
  { command -v turnserver && command -v turnutils_stunclient && command -v turnutils_uclient; } \
    >/dev/null || need+=(coturn)
  { command -v ip && command -v ss; } >/dev/null || need+=(iproute2)
  command -v openssl >/dev/null || need+=(openssl)
  command -v python3 >/dev/null || need+=(python3)   # used by selftest.sh / stunprobe.py
  command -v setsid >/dev/null || need+=(util-linux)
  if [ ${#need[@]} -gt 0 ]; then
    echo "natlab: installing ${need[*]}" >&2
    # coturn's postinst would start a system turnserver on 0.0.0.0:3478 in the root
    # namespace where init scripts are allowed. policy-rc.d exit 101 forbids that for
    # the duration of the install (Debian's documented mechanism, honoured by
    # invoke-rc.d and deb-systemd-invoke). Only create it if none exists.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      made_policy=1
    fi
    local rc=0 log; log=$(mktemp /tmp/natlab-deps.XXXXXX)
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=900 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=900 \
        --no-install-recommends "${need[@]}"; } >"$log" 2>&1 || rc=$?
    [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
    if [ "$rc" != 0 ]; then tail -n 30 "$log" >&2; rm -f "$log"; die "apt-get failed (rc=$rc) installing ${need[*]}"; fi
    rm -f "$log"
  fi
  # Never leave a system coturn running: disable the unit on systemd machines ...
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null &&
     systemctl is-enabled --quiet coturn 2>/dev/null; then
    systemctl disable --now coturn >/dev/null 2>&1 || true
  fi
  # ... and stop a turnserver that runs in the root namespace (labs' coturns run in
  # their own namespaces and are left alone).
  local me p
  me=$(readlink /proc/self/ns/net)
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = turnserver ] || continue
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$me" ] || continue
    echo "natlab: stopping system turnserver (pid ${p#/proc/}) in the root namespace" >&2
    { command -v invoke-rc.d >/dev/null && invoke-rc.d coturn stop; } >/dev/null 2>&1 ||
      kill "${p#/proc/}" 2>/dev/null || true
  done
  for t in nft turnserver turnutils_stunclient turnutils_uclient ip ss openssl python3 setsid; do
    command -v "$t" >/dev/null || die "deps: $t still missing after install"
  done
}

# ------------------------------------------------------------------------------
# Router nftables rules. MODE: cone | sym | noudp.
router_rules() {
  local mode=$1 flag="" noudp=""
  # masquerade keeps the source port when it is free and reuses the mapping for any
  # destination: endpoint-independent mapping (+ the filter below: port-restricted
  # cone). "random" picks a new port per 5-tuple: endpoint-dependent (symmetric).
  [ "$mode" = sym ] && flag=random
  # A network that lets only TCP out (DNS excepted): TURN over TCP/TLS must be used.
  [ "$mode" = noudp ] && noudp='iifname "lan0" oifname "wan0" udp dport != 53 drop'
  cat <<NFT
table ip natlab {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" masquerade $flag
  }
  # Input drop is essential: if the router accepted a peer's unsolicited packet to
  # its public port as local traffic, the resulting conntrack entry would collide
  # with the host's later outbound mapping, Linux would re-map the port and a
  # "cone" NAT would behave symmetric.
  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    # Hosts on one LAN talk directly. Needed where br_netfilter is loaded (it is on
    # this machine): frames bridged between lan0's ports then pass this hook too.
    iifname "lan0" oifname "lan0" accept
    ct state established,related accept
    $noudp
    iifname "lan0" oifname "wan0" accept
  }
}
NFT
}

# Record one KEY=VALUE line in the lab's env file; 'up' prints the file once it has
# succeeded, so a failed 'up' prints no half-finished description.
kv() { echo "$1=$2" >>"$ENV_FILE"; }

cmd_up() {
  [ $# -ge 1 ] || usage
  local id=$1; shift
  check_id "$id"
  [ $# -ge 1 ] || die "up: at least one SITE_SPEC (NAME:MODE[:HOSTS]) is needed"
  [ $# -le $MAX_SITES ] || die "up: at most $MAX_SITES sites"
  command -v nft >/dev/null || die "nft missing: run '$0 deps' first"

  # Parse and validate every spec before touching anything.
  local names=() modes=() counts=() spec name mode hosts rest
  for spec in "$@"; do
    IFS=: read -r name mode hosts rest <<<"$spec"
    hosts=${hosts:-1}
    [[ $name =~ ^[A-Za-z0-9]{1,5}$ ]] || die "site '$spec': NAME must be 1-5 alphanumerics"
    [[ $mode =~ ^(cone|sym|noudp|open)$ ]] || die "site '$spec': MODE must be cone|sym|noudp|open"
    [[ $hosts =~ ^[1-9]$ ]] || die "site '$spec': HOSTS must be 1..$MAX_HOSTS"
    [ -z "$rest" ] || die "site '$spec': too many fields"
    [ "$name" != pub ] || die "site name 'pub' is reserved"
    local n; for n in "${names[@]}"; do [ "$n" != "$name" ] || die "duplicate site '$name'"; done
    names+=("$name"); modes+=("$mode"); counts+=("$hosts")
  done

  local dir; dir=$(lab_dir "$id")
  mkdir -p "$NATLAB_DIR"
  # Serialise concurrent 'up's: the very first 'ip netns add' on a machine mounts
  # /run/netns, and two racing first mounts can stack on each other.
  exec 9>"$NATLAB_DIR/.lock"
  flock -w 60 9 || die "up: timed out waiting for $NATLAB_DIR/.lock"
  [ -z "$(lab_namespaces "$id")" ] || die "lab '$id' already has namespaces (run: $0 down $id)"
  # The state dir is made first (and atomically): gc treats namespaces without one
  # as leftovers, and a second 'up' with the same ID fails here.
  mkdir "$dir" 2>/dev/null || die "lab '$id' already exists ($dir; run: $0 down $id)"
  date +%s >"$dir/created"
  ENV_FILE=$dir/env; : >"$ENV_FILE"
  # Roll back on any failure so a failed 'up' leaves nothing behind.
  UP_ID=$id
  trap 'rc=$?; [ $rc = 0 ] || { echo "natlab: up $UP_ID failed, rolling back" >&2; cmd_down "$UP_ID" >/dev/null 2>&1; }' EXIT

  # --- pub: the "Internet" ---------------------------------------------------
  local pub=$id-pub
  mkns "$pub"
  ip -n "$pub" link add br0 type bridge
  ip -n "$pub" link set br0 up
  local a; for a in $ISP_IP $TURN_IP $SIGNAL_IP; do ip -n "$pub" addr add "$a/24" dev br0; done
  # Silent sink: the default route points into one end of a veth pair whose other
  # end has no address. sendto() towards an address outside the lab (e.g. a peer's
  # private host candidate) then succeeds and the packet vanishes, as on the real
  # Internet. Without it coturn gets ENETUNREACH and closes the TURN allocation.
  # - "arp off": no neighbour resolution, so no "host unreachable" after ARP
  #   timeouts; frames carry a MAC the peer end does not own and are dropped there.
  # - not a "blackhole" route: sendto() would fail with EINVAL ("unreachable" and
  #   "prohibit" routes give errors too); not a dummy device: this kernel lacks it.
  mksink "$pub"

  kv LAB_ID "$id"
  kv LAB_DIR "$dir"
  kv PUB_NS "$pub"
  kv PUB_NET "$PUB_NET.0/24"
  kv PUB_GW "$ISP_IP"
  kv TURN_IP "$TURN_IP"
  kv SIGNAL_IP "$SIGNAL_IP"
  kv SITES "${names[*]}"

  local k i j
  for i in "${!names[@]}"; do
    k=$((i + 1)); name=${names[$i]}; mode=${modes[$i]}; hosts=${counts[$i]}
    kv "SITE_${name}_MODE" "$mode"
    kv "SITE_${name}_HOSTS" "$hosts"
    if [ "$mode" = open ]; then
      # No NAT, no firewall: each host is a veth port on the pub bridge.
      kv "SITE_${name}_ROUTER_NS" ""
      kv "SITE_${name}_WAN" "$PUB_NET.$((100 + 10 * k + 1))"
      kv "SITE_${name}_LAN" "$PUB_NET.0/24"
      kv "SITE_${name}_GW" "$ISP_IP"
      for ((j = 1; j <= hosts; j++)); do
        local hns=$id-$name-$j hip=$PUB_NET.$((100 + 10 * k + j))
        mkns "$hns"
        ip link add eth0 netns "$hns" type veth peer name "o-$name-$j" netns "$pub"
        ip -n "$pub" link set "o-$name-$j" master br0 up
        ip -n "$hns" addr add "$hip/24" dev eth0
        ip -n "$hns" link set eth0 up
        # Via the pub namespace, which does not forward: off-lab traffic dies silently.
        ip -n "$hns" route add default via "$ISP_IP"
        kv "SITE_${name}_HOST$j" "$hip"
        kv "SITE_${name}_HOST${j}_NS" "$hns"
      done
      continue
    fi

    # --- NAT router ---------------------------------------------------------
    local r=$id-$name-r wan=$PUB_NET.$((100 + k)) gw=$LAN_NET.$k.1
    mkns "$r" 1
    ip link add wan0 netns "$r" type veth peer name "w-$name" netns "$pub"
    ip -n "$pub" link set "w-$name" master br0 up
    ip -n "$r" addr add "$wan/24" dev wan0
    ip -n "$r" link set wan0 up
    # Default route to "the ISP" (pub, which has forwarding off): traffic to
    # addresses outside the lab is NATed like on a real uplink and then silently
    # dropped, instead of the router answering with ICMP "network unreachable".
    ip -n "$r" route add default via "$ISP_IP" dev wan0
    ip -n "$r" link add lan0 type bridge
    ip -n "$r" addr add "$gw/24" dev lan0
    ip -n "$r" link set lan0 up
    router_rules "$mode" | ip netns exec "$r" nft -f -
    kv "SITE_${name}_ROUTER_NS" "$r"
    kv "SITE_${name}_WAN" "$wan"
    kv "SITE_${name}_LAN" "$LAN_NET.$k.0/24"
    kv "SITE_${name}_GW" "$gw"
    for ((j = 1; j <= hosts; j++)); do
      local hns=$id-$name-$j hip=$LAN_NET.$k.$((1 + j))
      mkns "$hns"
      ip link add eth0 netns "$hns" type veth peer name "h$j" netns "$r"
      ip -n "$r" link set "h$j" master lan0 up
      ip -n "$hns" addr add "$hip/24" dev eth0
      ip -n "$hns" link set eth0 up
      ip -n "$hns" route add default via "$gw"
      kv "SITE_${name}_HOST$j" "$hip"
      kv "SITE_${name}_HOST${j}_NS" "$hns"
    done
  done
  trap - EXIT
  cat "$ENV_FILE"
}

# ------------------------------------------------------------------------------
cmd_info() {
  [ $# -eq 1 ] || usage
  check_id "$1"
  local f; f=$(lab_dir "$1")/env
  [ -f "$f" ] || die "lab '$1' is not up"
  cat "$f"
  [ ! -f "$(lab_dir "$1")/coturn.env" ] || cat "$(lab_dir "$1")/coturn.env"
}

# ------------------------------------------------------------------------------
# Does coturn (pid $2) listen on UDP+TCP 3478 and TCP 443? The owner is checked, so
# a test's own listener on one of those ports is not mistaken for coturn.
coturn_listening() {
  local pub=$1 pid=$2 out
  out=$(ip netns exec "$pub" ss -Hlnutp 2>/dev/null | grep -F "pid=$pid,") || return 1
  grep -Eq "^udp .* $TURN_IP:3478 " <<<"$out" &&
    grep -Eq "^tcp .* $TURN_IP:3478 " <<<"$out" &&
    grep -Eq "^tcp .* $TURN_IP:443 " <<<"$out"
}

cmd_coturn() {
  [ $# -ge 2 ] && [ $# -le 3 ] || usage
  local id=$1 secret=$2 realm=${3:-trunkline.test}
  check_id "$id"
  local dir pub=$id-pub; dir=$(lab_dir "$id")
  [ -d "$dir" ] && ns_exists "$pub" || die "lab '$id' is not up"
  command -v turnserver >/dev/null || die "turnserver missing: run '$0 deps' first"
  # Config-file injection guard (the secret is written into turnserver.conf).
  [[ -n $secret && $secret != *[[:space:]#]* ]] || die "coturn: SECRET must be non-empty, without spaces or '#'"
  [[ $realm =~ ^[A-Za-z0-9.-]+$ ]] || die "coturn: bad REALM '$realm'"
  if [ -f "$dir/turnserver.pid" ] && kill -0 "$(cat "$dir/turnserver.pid")" 2>/dev/null; then
    die "coturn already running in lab '$id' (pid $(cat "$dir/turnserver.pid"))"
  fi

  # A tiny CA and a leaf certificate (ECDSA P-256). Browsers need
  # --ignore-certificate-errors anyway; Rust clients (rustls/webpki) should trust
  # TURN_CA: webpki rejects a self-signed CA:TRUE cert presented as the server cert.
  local ca=$dir/turn-ca.pem cak=$dir/turn-ca.key crt=$dir/turn.pem key=$dir/turn.key
  if [ ! -f "$crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
      -keyout "$cak" -out "$ca" -subj "/CN=natlab test CA $id" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      2>/dev/null || die "openssl: CA generation failed"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$key" -out "$dir/turn.csr" -subj "/CN=turn.trunkline.test" 2>/dev/null ||
      die "openssl: CSR generation failed"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=DNS:turn.trunkline.test,IP:$TURN_IP" \
      >"$dir/turn.ext"
    openssl x509 -req -in "$dir/turn.csr" -CA "$ca" -CAkey "$cak" -CAcreateserial -days 7 \
      -extfile "$dir/turn.ext" -out "$crt" 2>/dev/null || die "openssl: signing failed"
    # coturn sends the chain in cert=; append the CA so "verify the chain" works too.
    cat "$ca" >>"$crt"
  fi

  local conf=$dir/turnserver.conf log=$dir/turn.log
  cat >"$conf" <<CONF
# natlab coturn for lab $id (generated by natlab/lab.sh)
listening-ip=$TURN_IP
relay-ip=$TURN_IP
listening-port=3478
tls-listening-port=443
# Port RFC 5780 would use as alternate; keep it off so the only listeners are ours.
alt-listening-port=0
alt-tls-listening-port=0
min-port=49152
max-port=59999
use-auth-secret
static-auth-secret=$secret
realm=$realm
fingerprint
cert=$crt
pkey=$key
no-cli
no-multicast-peers
# No denied-peer-ip for 10.0.0.0/8 etc. by default (coturn's own default, too):
# hosts sit behind NAT, so a relay never needs to reach a LAN address; sends
# towards private host candidates go to pub's silent sink, like on the Internet.
# Set NATLAB_TURN_DENY_PRIVATE=1 for a production-like config (403 on
# CreatePermission to RFC 1918 peers).
$(if [ "${NATLAB_TURN_DENY_PRIVATE:-0}" = 1 ]; then
    printf '%s\n' denied-peer-ip=10.0.0.0-10.255.255.255 denied-peer-ip=172.16.0.0-172.31.255.255 \
      denied-peer-ip=192.168.0.0-192.168.255.255
  fi)
# Per-lab files: several labs' coturns must not share the default pid file / db.
pidfile=$dir/turnserver.pid
userdb=$dir/turndb
log-file=$log
simple-log
no-stdout-log
verbose
CONF
  : >"$log"
  # setsid + all std fds redirected: the caller (e.g. Rust Command::output()) must
  # not keep waiting on a pipe that the daemon inherited.
  setsid ip netns exec "$pub" turnserver -c "$conf" </dev/null >>"$dir/turn.stdout" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/turnserver.pid"

  local deadline=$((SECONDS + ${NATLAB_COTURN_TIMEOUT:-20}))
  until coturn_listening "$pub" "$pid"; do
    if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      kill "$pid" 2>/dev/null || true
      echo "natlab: coturn did not come up in lab '$id'; last log lines:" >&2
      tail -n 30 "$log" "$dir/turn.stdout" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done
  {
    echo "TURN_PID=$pid"
    echo "TURN_URL_UDP=turn:$TURN_IP:3478?transport=udp"
    echo "TURN_URL_TCP=turn:$TURN_IP:3478?transport=tcp"
    echo "TURN_URL_TLS=turns:$TURN_IP:443?transport=tcp"
    echo "TURN_REALM=$realm"
    echo "TURN_CERT=$crt"
    echo "TURN_KEY=$key"
    echo "TURN_CA=$ca"
    echo "TURN_LOG=$log"
  } | tee "$dir/coturn.env"
}

# ------------------------------------------------------------------------------
cmd_exec() {
  [ $# -ge 3 ] && [ "$3" = -- ] || die "usage: $0 exec ID NS_SUFFIX -- CMD..."
  local id=$1 sfx=$2; shift 3
  check_id "$id"
  [ $# -ge 1 ] || die "exec: no command"
  ns_exists "$id-$sfx" || die "no namespace '$id-$sfx'"
  exec ip netns exec "$id-$sfx" "$@"
}

# ------------------------------------------------------------------------------
lab_pids() { local ns; for ns in "$@"; do ip netns pids "$ns" 2>/dev/null || true; done; }

cmd_down() {
  [ $# -eq 1 ] || usage
  local id=$1
  check_id "$id"
  local nss; nss=$(lab_namespaces "$id")
  if [ -n "$nss" ]; then
    # shellcheck disable=SC2086
    local pids; pids=$(lab_pids $nss)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
      local deadline=$((SECONDS + 5))
      # shellcheck disable=SC2086
      while pids=$(lab_pids $nss) && [ -n "$pids" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
      if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        deadline=$((SECONDS + 5))
        # shellcheck disable=SC2086
        while pids=$(lab_pids $nss) && [ -n "$pids" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
      fi
    fi
    local ns
    for ns in $nss; do ip netns del "$ns" 2>/dev/null || true; done
  fi
  rm -rf "$(lab_dir "$id")"
  if [ -n "$(lab_namespaces "$id")" ]; then die "down: namespaces of lab '$id' remain"; fi
}

# ------------------------------------------------------------------------------
cmd_gc() {
  [ $# -le 1 ] || usage
  local prefix=${1:-} now; now=$(date +%s)
  [ -z "$prefix" ] || [[ $prefix =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "gc: bad prefix '$prefix'"
  # Candidate IDs: state dirs, plus IDs parsed from lab-shaped namespace names.
  local ids
  ids=$( {
    [ -d "$NATLAB_DIR" ] && find "$NATLAB_DIR" -mindepth 1 -maxdepth 1 -type d -printf '%f\n'
    ip netns list 2>/dev/null | awk '{print $1}' |
      grep -E '^[a-z][a-z0-9]{0,7}-(pub|[A-Za-z0-9]{1,5}-(r|[1-9]))$' | cut -d- -f1
  } | grep -E '^[a-z][a-z0-9]{0,7}$' | sort -u) || true
  local id dir born ns
  for id in $ids; do
    if [ -n "$prefix" ]; then
      [[ $id == "$prefix"* ]] || continue
    else
      dir=$(lab_dir "$id")
      if [ -f "$dir/created" ]; then
        born=$(cat "$dir/created")
      elif [ -d "$dir" ]; then
        born=$(stat -c %Y "$dir")
      else
        # Namespaces without a state dir: the nsfs mount's mtime is the namespace's
        # creation time. Young ones may belong to a lab under another NATLAB_DIR.
        born=$now
        for ns in $(lab_namespaces "$id"); do
          local t; t=$(stat -c %Y "/run/netns/$ns" 2>/dev/null) || continue
          [ "$t" -ge "$born" ] || born=$t
        done
      fi
      [[ $born =~ ^[0-9]+$ ]] || born=0
      [ $((now - born)) -ge "$NATLAB_GC_AGE" ] || continue
    fi
    echo "natlab: gc: removing lab '$id'" >&2
    cmd_down "$id" || true
  done
}

# ------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, nftables)"
cmd=${1:-}; [ $# -gt 0 ] && shift
case $cmd in
  deps) cmd_deps "$@" ;;
  up) cmd_up "$@" ;;
  coturn) cmd_coturn "$@" ;;
  info) cmd_info "$@" ;;
  exec) cmd_exec "$@" ;;
  down) cmd_down "$@" ;;
  gc) cmd_gc "$@" ;;
  *) usage ;;
esac
