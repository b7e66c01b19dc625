#!/usr/bin/env bash
# Self-test of the NAT lab: proves that its sites behave like real NATs, that coturn
# and TURN REST credentials work over UDP/TCP/TLS, and that labs are isolated and
# cleaned up. Needs root. Prints one PASS/FAIL line per check and, last,
# "N passed, M failed"; exits 0 only when nothing failed. ~40 s.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LAB=$HERE/lab.sh
PROBE=(python3 "$HERE/stunprobe.py")
SECRET=selftest-$(openssl rand -hex 8)
ID1=st$(openssl rand -hex 2)
ID2=st$(openssl rand -hex 2); while [ "$ID2" = "$ID1" ]; do ID2=st$(openssl rand -hex 2); done
ID3=gc$(openssl rand -hex 2)
TMP=$(mktemp -d /tmp/natlab-selftest.XXXXXX)
PASSED=0 FAILED=0

ok() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
bad() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
# check DESCRIPTION COMMAND...  (COMMAND's failure is a FAIL, never an abort)
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
eq() { [ "$1" = "$2" ] || { echo "   got '$1', want '$2'" >&2; return 1; }; }
ne() { [ "$1" != "$2" ] || { echo "   both are '$1'" >&2; return 1; }; }

finish() {
  local rc=$?
  trap - EXIT
  for id in "$ID1" "$ID2" "$ID3"; do "$LAB" down "$id" >/dev/null 2>&1 || true; done
  rm -rf "$TMP"
  if [ "$rc" != 0 ] && [ "$FAILED" = 0 ]; then bad "selftest aborted (rc=$rc)"; fi
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ]
}
trap finish EXIT
trap "exit 130" INT TERM   # so that the EXIT trap (cleanup) also runs on Ctrl-C / kill

# Parse lab.sh's KEY=VALUE output into an associative array (name in $1).
# shellcheck disable=SC2034  # arr is a nameref
parse_kv() { local -n arr=$1; local k v; while IFS="=" read -r k v; do if [ -n "$k" ]; then arr[$k]=$v; fi; done; }

rest_user() { echo "$(($(date +%s) + $1)):$2"; }                    # $1 = seconds until expiry
rest_pass() { printf %s "$1" | openssl dgst -sha1 -hmac "$2" -binary | base64; }

x() { local id=$1 ns=$2; shift 2; "$LAB" exec "$id" "$ns" -- "$@"; }

# Poll a file for a line (no blind sleeps).
wait_for() { # FILE PATTERN SECONDS
  local end=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do [ $SECONDS -lt "$end" ] || return 1; sleep 0.05; done
}

# Unsolicited-delivery probe: listen in (ID, NS) on PORT, send from (ID, FROM_NS) to DEST.
# Prints what the listener got (empty when nothing arrived).
deliver() { # ID NS PORT FROM_NS DEST
  local f=$TMP/listen.$RANDOM
  x "$1" "$2" "${PROBE[@]}" listen "$3" 1.5 >"$f" 2>&1 &
  local lp=$!
  wait_for "$f" '^ready' 5 || { echo "listener did not start" >&2; }
  x "$1" "$4" "${PROBE[@]}" send "$5" unsolicited
  wait "$lp" || true
  grep '^got' "$f" || true
}

root_links_before=$(ip -o link | wc -l)

# --- setup ---------------------------------------------------------------------
"$LAB" deps
"$LAB" gc
check "deps: no turnserver listens on 3478 in the root namespace" \
  eval '[ -z "$(ss -Hlnu "sport = :3478")" ] && [ -z "$(ss -Hlnt "sport = :3478")" ]'
declare -A L1 L2 T1
parse_kv L1 < <("$LAB" up "$ID1" c:cone:2 s:sym n:noudp o:open)
check "up prints KEY=VALUE for every site" \
  test -n "${L1[SITE_c_WAN]:-}" -a -n "${L1[SITE_c_HOST2_NS]:-}" -a -n "${L1[SITE_s_WAN]:-}" \
  -a -n "${L1[SITE_n_HOST1]:-}" -a -n "${L1[SITE_o_HOST1]:-}" -a "${L1[PUB_NS]:-}" = "$ID1-pub"
parse_kv T1 < <("$LAB" coturn "$ID1" "$SECRET")
check "coturn prints TURN_CERT/TURN_LOG and listens" test -s "${T1[TURN_CERT]:-/nonexistent}" -a -f "${T1[TURN_LOG]:-/nonexistent}"
TURN=${L1[TURN_IP]}
CA=${T1[TURN_CA]}

# A second and third "STUN server" on extra pub addresses (tests may add addresses
# in 203.0.113.0/24 to the pub bridge as they like).
ip -n "$ID1-pub" addr add 203.0.113.11/24 dev br0
ip -n "$ID1-pub" addr add 203.0.113.12/24 dev br0
x "$ID1" pub setsid "${PROBE[@]}" server 203.0.113.11:3478 203.0.113.12:3478 </dev/null >"$TMP/stunsrv.log" 2>&1 &
wait_for "$TMP/stunsrv.log" '^ready' 5

# --- 1. cone: endpoint-independent mapping, port preserved ----------------------
out=$(x "$ID1" c-1 turnutils_stunclient "$TURN" 2>&1 | grep -o 'reflexive addr: [0-9.:]*' | head -1 | cut -d' ' -f3)
check "cone: turnutils_stunclient's reflexive address is the router's WAN address" eq "${out%:*}" "${L1[SITE_c_WAN]}"
mapfile -t m < <(x "$ID1" c-1 "${PROBE[@]}" mapped --port 40000 "$TURN:3478" 203.0.113.11:3478)
check "cone: coturn and a second STUN server see the same mapping (WAN:40000, port preserved)" \
  eq "${m[0]} ${m[1]}" "${L1[SITE_c_WAN]}:40000 ${L1[SITE_c_WAN]}:40000"
mapfile -t m < <(x "$ID1" c-2 "${PROBE[@]}" mapped --port 40000 "$TURN:3478" 203.0.113.11:3478)
check "cone: a second host on the same LAN shares the WAN address (port 40000 taken: re-mapped, still one mapping)" \
  eval '[ "${m[0]%:*}" = "${L1[SITE_c_WAN]}" ] && [ "${m[0]}" = "${m[1]}" ] && [ "${m[0]}" != "${L1[SITE_c_WAN]}:40000" ]'
out=$(deliver "$ID1" c-1 40030 c-2 "${L1[SITE_c_HOST1]}:40030")
check "cone: hosts of one site reach each other directly on the LAN (no NAT in between)" \
  eval "grep -q 'got unsolicited from ${L1[SITE_c_HOST2]}:' <<<'$out'"

# --- 2. sym: endpoint-dependent mapping -----------------------------------------
mapfile -t m < <(x "$ID1" s-1 "${PROBE[@]}" mapped --port 40000 "$TURN:3478" 203.0.113.11:3478)
check "sym: both servers see the WAN address" eq "${m[0]%:*} ${m[1]%:*}" "${L1[SITE_s_WAN]} ${L1[SITE_s_WAN]}"
check "sym: the two servers see DIFFERENT mapped ports (${m[0]#*:} vs ${m[1]#*:})" ne "${m[0]}" "${m[1]}"

mapfile -t m < <(x "$ID1" o-1 "${PROBE[@]}" mapped --port 40000 "$TURN:3478" 203.0.113.11:3478)
check "open: no NAT, the mapped address is the host's own" \
  eq "${m[0]} ${m[1]}" "${L1[SITE_o_HOST1]}:40000 ${L1[SITE_o_HOST1]}:40000"

# --- 3. filtering: unsolicited inbound is dropped -------------------------------
out=$(x "$ID1" c-1 "${PROBE[@]}" poke --port 40001 203.0.113.11:3478 203.0.113.12:3478)
jq_py() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if ($1) else 1)" "$out"; }
check "cone: of SAME/OTHERPORT/OTHERIP only the established flow's reply passes (port-restricted): $out" \
  jq_py 'd["got"] == ["SAME"]'
check "cone: a peer's unsolicited packet does not change the mapping later used towards it (router input drop)" \
  jq_py "d['m1'] == d['m2'] == '${L1[SITE_c_WAN]}:40001'"
out=$(deliver "$ID1" c-1 40020 pub "${L1[SITE_c_WAN]}:40020")
check "cone: unsolicited UDP from pub to WAN:port (no mapping) does not reach the host" eq "$out" ""
out=$(deliver "$ID1" o-1 40021 pub "${L1[SITE_o_HOST1]}:40021")
check "open: control - unsolicited UDP reaches a public host" eval "grep -q 'got unsolicited' <<<'$out'"
out=$(x "$ID1" pub "${PROBE[@]}" sinksend "${L1[SITE_c_HOST1]}:5000" 192.0.2.1:9 || true)
check "sink: pub sends to a private host candidate / off-lab address: sendto ok, no ICMP back" \
  eq "$(grep -c ' OK$' <<<"$out")" 2
out=$(x "$ID1" c-1 "${PROBE[@]}" sinksend 192.0.2.1:9 "${L1[SITE_s_HOST1]}:5000" || true)
check "sink: a site host's off-lab / other-LAN traffic vanishes silently (no ICMP from its router)" \
  eq "$(grep -c ' OK$' <<<"$out")" 2

# --- 4. noudp: only TCP leaves the site ------------------------------------------
mapfile -t m < <(x "$ID1" n-1 "${PROBE[@]}" mapped "$TURN:3478")
check "noudp: UDP STUN to coturn :3478 gets no answer" eq "${m[0]}" timeout
out=$(x "$ID1" n-1 "${PROBE[@]}" tcp "$TURN:3478" || true)
check "noudp: TCP connect to coturn :3478 works" eq "$out" OK
out=$(x "$ID1" n-1 "${PROBE[@]}" tls --ca "$CA" "$TURN:443" || true)
check "noudp: TLS to coturn :443 works, cert chain + IP SAN verified ($out)" eval "[[ '$out' == OK* ]]"

# --- 5. TURN REST credentials ------------------------------------------------------
U=$(rest_user 3600 alice); P=$(rest_pass "$U" "$SECRET")
for t in udp tcp; do
  out=$(x "$ID1" c-1 "${PROBE[@]}" allocate --transport $t --user "$U" --password "$P" "$TURN:3478" || true)
  check "REST: Allocate over $t from the cone site succeeds ($out)" \
    eval "[[ '$out' == 'OK relay=$TURN:'*' mapped=${L1[SITE_c_WAN]}:'* ]]"
done
out=$(x "$ID1" c-1 "${PROBE[@]}" allocate --transport tls --ca "$CA" --user "$U" --password "$P" "$TURN:443" || true)
check "REST: Allocate over TLS :443 succeeds ($out)" eval "[[ '$out' == 'OK relay='* ]]"
out=$(x "$ID1" n-1 "${PROBE[@]}" allocate --transport tls --ca "$CA" --user "$U" --password "$P" "$TURN:443" || true)
check "REST: Allocate over TLS :443 from the noudp site succeeds ($out)" eval "[[ '$out' == 'OK relay='* ]]"
out=$(x "$ID1" n-1 "${PROBE[@]}" allocate --transport udp --user "$U" --password "$P" "$TURN:3478" || true)
check "REST: Allocate over UDP from the noudp site times out" eq "$out" TIMEOUT
out=$(x "$ID1" c-1 "${PROBE[@]}" allocate --transport udp --user "$U" --password "wrong$P" "$TURN:3478" || true)
check "REST: wrong password -> 401" eq "$out" "ERROR 401 Unauthorized"
UX=$(rest_user -60 alice); PX=$(rest_pass "$UX" "$SECRET")
out=$(x "$ID1" c-1 "${PROBE[@]}" allocate --transport udp --user "$UX" --password "$PX" "$TURN:3478" || true)
check "REST: expired timestamp (correct HMAC) -> 401" eq "$out" "ERROR 401 Unauthorized"
out=$(x "$ID1" c-1 "${PROBE[@]}" allocate --transport tcp --user "$UX" --password "$PX" "$TURN:3478" || true)
check "REST: expired timestamp over TCP -> 401" eq "$out" "ERROR 401 Unauthorized"

# turnutils_uclient: two clients allocate and exchange data through their relays (-y).
uclient() { # NS FLAGS... -- runs from (ID1, NS) against coturn
  local ns=$1; shift
  x "$ID1" "$ns" timeout 40 turnutils_uclient "$@" -c -y -n 2 -z 5 "$TURN" >"$TMP/uclient.log" 2>&1
}
uc_ok() { grep -Eq 'tot_recv_msgs=[1-9]' "$TMP/uclient.log"; }
check "turnutils_uclient: UDP relay with REST credentials" eval 'uclient c-1 -u "$U" -w "$P" && uc_ok'
check "turnutils_uclient: TCP (-t) relay with REST credentials" eval 'uclient c-1 -t -u "$U" -w "$P" && uc_ok'
check "turnutils_uclient: TLS (-S -p 443) relay from the noudp site" \
  eval 'uclient n-1 -t -S -p 443 -E "$CA" -u "$U" -w "$P" && uc_ok'
check "turnutils_uclient: wrong password fails" eval '! uclient c-1 -u "$U" -w "wrong$P"'
check "turnutils_uclient: expired timestamp fails" eval '! uclient c-1 -u "$UX" -w "$PX"'
check "coturn logged the 401s" grep -q 'error 401: Unauthorized' "${T1[TURN_LOG]}"

# --- 6. isolation, two labs at once, down, gc ------------------------------------
parse_kv L2 < <("$LAB" up "$ID2" c:cone)
"$LAB" coturn "$ID2" "$SECRET" >/dev/null
mapfile -t m < <(x "$ID2" c-1 "${PROBE[@]}" mapped --port 40000 "$TURN:3478")
check "two labs up at once, each with its own coturn on $TURN:3478" eq "${m[0]}" "${L2[SITE_c_WAN]}:40000"
mapfile -t m < <(x "$ID1" c-1 "${PROBE[@]}" mapped --port 40005 "$TURN:3478")
check "the first lab still works while the second is up" eq "${m[0]}" "${L1[SITE_c_WAN]}:40005"
check "the root namespace got no interface" eq "$(ip -o link | wc -l)" "$root_links_before"

lab_pids() { for ns in $(ip netns list | awk -v p="$1-" 'index($1,p)==1 {print $1}'); do ip netns pids "$ns"; done; }
alive() { # any of the pids still running (zombies count as gone)
  local p; for p in "$@"; do
    [ -r "/proc/$p/stat" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && return 0
  done; return 1
}
down_clean() { # ID: down, then no namespace, no process, no state dir
  local pids; pids=$(lab_pids "$1")
  [ -n "$pids" ] || { echo "   no processes ran in lab $1?" >&2; return 1; }
  "$LAB" down "$1" || return 1
  # shellcheck disable=SC2086
  ! alive $pids || { echo "   still running: $pids" >&2; return 1; }
  [ -z "$(ip netns list | awk -v p="$1-" 'index($1,p)==1')" ] && [ ! -e "${NATLAB_DIR:-/tmp/natlab}/$1" ]
}
check "down $ID2: no namespace, no process, no state dir left" down_clean "$ID2"
check "down is idempotent" "$LAB" down "$ID2"

"$LAB" up "$ID3" g:cone >/dev/null
NATLAB_GC_AGE=3600 "$LAB" gc 2>/dev/null
check "gc keeps a young lab" test -e "/run/netns/$ID3-pub"
echo $(($(date +%s) - 7200)) >"${NATLAB_DIR:-/tmp/natlab}/$ID3/created"
"$LAB" gc 2>/dev/null
check "gc removes a lab older than NATLAB_GC_AGE" eval '[ ! -e "/run/netns/$ID3-pub" ] && [ ! -e "${NATLAB_DIR:-/tmp/natlab}/$ID3" ]'
"$LAB" up "$ID3" g:cone >/dev/null
"$LAB" gc "$ID3" 2>/dev/null
check "gc PREFIX removes labs by ID prefix" test ! -e "/run/netns/$ID3-pub"
check "the first lab survived gc" test -e "/run/netns/$ID1-pub"

check "down $ID1 (with coturn and a STUN server running): nothing left" down_clean "$ID1"
check "the root namespace is as before" eq "$(ip -o link | wc -l)" "$root_links_before"
