#!/usr/bin/env bash
# bench/callgrind-register.sh — instructions (callgrind Ir) per digest registration at the
# switch gateway, and where they go.
#
# Wall-clock CPU on a shared 2-core machine varies by 2× from run to run; instruction counts
# do not. This runs the release gateway under `valgrind --tool=callgrind` (its signal server
# runs normally) and registers users 1000..1999 with sipp's `register_auth.xml` (REGISTER →
# 401 → REGISTER with MD5 credentials → 200) at CG_RATE/s, twice on the same process: N1 then
# N2 registrations, the counters zeroed before the first and dumped after each. Start-up and
# the cloud link cost the same in both runs, so (Ir(N2) − Ir(N1)) / (N2 − N1) is the cost of
# one registration (two REGISTERs in, two answers out). Every user registers from one sipp
# port and the warm-up registers them all first, so the measured registrations are refreshes
# from where each phone already is (a site's pattern); MOVES=1 sends each sipp run from a new
# port instead, so every registration moves its phone (the disk copy is then written every
# second). Prints that and the top functions
# (inclusive) of the second run; then Kamailio's Ir per registration for the same scenario,
# users and rate (bench/kamailio/proxy.cfg, as in bench/run.sh; see callgrind-lib.sh).
#
# Knobs: N1 (400), N2 (2000), MOVES (0), CG_RATE (200 registrations/s, which the gateway keeps up with
# under callgrind), TOP (25), PEER (1; 0 skips Kamailio), KAM_RUNS (3), SKIP_BUILD=1, KEEP_TMP=1, GATEWAY /
# SERVER / BENCH (binaries to use instead of the release build's, e.g. a copy kept from before
# a change).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
N1=${N1:-400}
N2=${N2:-2000}
CG_RATE=${CG_RATE:-200}
TOP=${TOP:-25}
PEER=${PEER:-1}
SECRET=bench-switch-secret-0123456789

log() { printf 'callgrind-register.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v valgrind >/dev/null || die "valgrind is not installed"
SIPP=$(command -v sipp || true)
[[ -n $SIPP ]] || die "sipp is not installed (apt-get install sip-tester)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/trunkline-cgreg.XXXXXX")
PIDS=()
# shellcheck source=callgrind-lib.sh
source "$BENCH_DIR/callgrind-lib.sh"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p trunkline-signal-server -p trunkline-switch-gateway -p trunkline-bench >&2)
fi
TARGET=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
SERVER=${SERVER:-$TARGET/release/signal-server}
GATEWAY=${GATEWAY:-$TARGET/release/switch-gateway}
BENCH=${BENCH:-$TARGET/release/trunkline-bench}
[[ -x $SERVER && -x $GATEWAY && -x $BENCH ]] || die "release binaries missing: $SERVER $GATEWAY $BENCH"

# The signal server, provisioned with switch hq and its phones 1000-1999.
PORT=$("$BENCH" free-port)
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/admin.token"
cat >"$TMP/signal-server.toml" <<EOF
listen = "127.0.0.1:$PORT"
database_url = "sqlite://$TMP/cloud.db"
web_root = "$TMP/no-web-app"
public_url = "http://127.0.0.1:$PORT"
admin_token_file = "$TMP/admin.token"

[auth]
password_hash_memory_kib = 64
password_hash_iterations = 1
EOF
RUST_LOG=warn "$SERVER" run --config "$TMP/signal-server.toml" >"$TMP/server.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT" &&
        printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
        timeout 2 cat <&3) 2>/dev/null | grep -q '^ok'; then break; fi
    sleep 0.1
done
"$BENCH" gw-provision --addr "127.0.0.1:$PORT" --token-file "$TMP/admin.token" --switch-secret "$SECRET" \
    --hq 1000-1999 --browser-password unused-password-1 >"$TMP/provision.kv" || die "provisioning failed"
mkdir -p "$TMP/sip"
"$BENCH" sip-files --dir "$TMP/sip" --users 1000-1999 --callers 2000-2001 --callees 2002-2003 >/dev/null ||
    die "cannot write the sipp files"

# The gateway under callgrind, as bench/run.sh configures it (guard off: one address registers
# thousands of users).
SPORT=$("$BENCH" free-port --both)
PHONE_PORT=$("$BENCH" free-port --udp)
printf '%s' "$SECRET" >"$TMP/hq.secret"
cat >"$TMP/hq.toml" <<EOF
id = "hq"
secret_file = "$TMP/hq.secret"
cloud_url = "ws://127.0.0.1:$PORT/ws"
sip_listen = "127.0.0.1:$SPORT"
rtp_ports = "21000-21999"
state_dir = "$TMP/hq-state"
[sip_guard]
enabled = false
EOF
OUT=$TMP/callgrind.out
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT" --dump-instr=no \
    "$GATEWAY" run --config "$TMP/hq.toml" >"$TMP/gateway.log" 2>&1 &
CG_PID=$!
PIDS+=("$CG_PID")
for _ in $(seq 1200); do
    kill -0 "$CG_PID" 2>/dev/null || die "gateway exited; see $TMP/gateway.log"
    grep -q '"number": "1999"' "$TMP/hq-state/phones.json" 2>/dev/null && break
    sleep 0.1
done
grep -q '"number": "1999"' "$TMP/hq-state/phones.json" 2>/dev/null || die "the gateway has no phone list; see $TMP/gateway.log"

# sipp_register TARGET_PORT DIR N RATE: N registrations at RATE/s into DIR; fails unless
# every one succeeded.
sipp_register() {
    local port=$1 dir=$2 n=$3 rate=$4 phone_port=$PHONE_PORT
    [[ ${MOVES:-0} == 1 ]] && phone_port=$("$BENCH" free-port --udp)
    mkdir -p "$dir"
    (cd "$dir" && timeout $((n / rate * 3 + 60)) "$SIPP" "127.0.0.1:$port" -i 127.0.0.1 -nostdin -trace_err \
        -sf "$BENCH_DIR/sipp/register_auth.xml" -inf "$TMP/sip/users.csv" -p "$phone_port" \
        -r "$rate" -m "$n" -recv_timeout 10000 -trace_stat -stf stat.csv -fd 1 >out.txt 2>&1) || true
    sipp_all_ok "$dir" "$n"
}
# load N: N registrations at the gateway under callgrind.
load() {
    sipp_register "$SPORT" "$TMP/sipp-$1-$RANDOM" "$1" "$CG_RATE" || die "registrations at the gateway failed"
}

# The warm-up registers every user once (users.csv holds 1000).
measure_jobs "$CG_PID" "$OUT" 1000 registration
per=$PER

[[ $PEER == 1 ]] || exit 0
# Kamailio: registrar with the same users (credentials.cfg), the same scenario and rate.
mkdir -p "$TMP/kam"
cp "$BENCH_DIR/kamailio/proxy.cfg" "$TMP/sip/credentials.cfg" "$TMP/kam/"
# Until Kamailio (slow to start under valgrind) answers, then the same warm-up as ours.
kam_setup() {
    local i
    for i in $(seq 60); do
        sipp_register "$1" "$2/probe-$i" 1 10 2>/dev/null && break
        sleep 0.5
    done
    sipp_register "$1" "$2/warm-up" 1000 "$CG_RATE"
}
kam_load() { sipp_register "$1" "$2/load" "$3" "$CG_RATE"; }
kam=$(KAM_MEM="-m 1024 -M 64" kamailio_ir_per_job "$TMP/kam/proxy.cfg" "$TMP/kam" "$N1" "$N2" kam_setup kam_load)
echo
echo "kamailio_ir_per_registration=$kam"
awk -v a="$per" -v b="$kam" 'BEGIN { printf "ratio=%.2f (Trunkline ÷ Kamailio, instructions per registration)\n", a / b }'
