#!/usr/bin/env bash
# bench/callgrind.sh — instructions (callgrind Ir) per steering decision, and where they go.
#
# Wall-clock CPU on a shared 2-core machine varies by 2× from run to run; instruction counts
# do not. This runs the release signal server under `valgrind --tool=callgrind` and loads it
# with `trunkline-bench rate` twice on the same process: N1 then N2 decisions, the counters
# zeroed before the first and dumped after each. Sign-in, probes and start-up cost the same in
# both runs, so (Ir(N2) − Ir(N1)) / (N2 − N1) is the cost of one decision (B2 route_query →
# B5 route → C11 callee_query → C12 decline → outcome to both switches → call record).
# Prints Ir per decision and the top functions (inclusive) of the second run; then Kamailio's
# Ir per 302 (bench/kamailio/redirect.cfg: INVITE → 302 with the registered Contact → ACK, as
# in bench/run.sh; see callgrind-lib.sh). Both count user-space instructions only: the
# kernel's share (TCP and WebSocket for us, UDP for Kamailio) is not in these figures.
#
# Knobs: N1 (500), N2 (2500), CG_RATE (500 decisions/s, which the server keeps up with under callgrind),
# PAIRS (4), WINDOW (16), TOP (15), PEER (1; 0 skips Kamailio), KAM_RUNS (3), SKIP_BUILD=1, KEEP_TMP=1, SERVER / BENCH (binaries to use
# instead of the release build's, e.g. a copy kept from before a change).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
N1=${N1:-500}
N2=${N2:-2500}
CG_RATE=${CG_RATE:-500}
PAIRS=${PAIRS:-4}
WINDOW=${WINDOW:-16}
TOP=${TOP:-15}
PEER=${PEER:-1}
SECRET=bench-switch-secret-0123456789

log() { printf 'callgrind.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v valgrind >/dev/null || die "valgrind is not installed"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/trunkline-callgrind.XXXXXX")
PIDS=()
# shellcheck source=callgrind-lib.sh
source "$BENCH_DIR/callgrind-lib.sh"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p trunkline-signal-server -p trunkline-bench >&2)
fi
TARGET=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
SERVER=${SERVER:-$TARGET/release/signal-server}
BENCH=${BENCH:-$TARGET/release/trunkline-bench}
[[ -x $SERVER && -x $BENCH ]] || die "release binaries missing: $SERVER $BENCH"

PORT=$("$BENCH" free-port)
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/admin.token"
cat >"$TMP/signal-server.toml" <<EOF
listen = "127.0.0.1:$PORT"
database_url = "sqlite://$TMP/trunkline.db"
web_root = "$TMP/no-web-app"
public_url = "http://127.0.0.1:$PORT"
admin_token_file = "$TMP/admin.token"

[auth]
password_hash_memory_kib = 64
password_hash_iterations = 1
EOF

# start [wrapper...]: the server (optionally under valgrind); waits for /healthz.
SPID=
start() {
    RUST_LOG=warn "$@" "$SERVER" run --config "$TMP/signal-server.toml" >>"$TMP/server.log" 2>&1 &
    SPID=$!
    PIDS+=("$SPID")
    for _ in $(seq 1200); do
        kill -0 "$SPID" 2>/dev/null || die "signal-server exited; see $TMP/server.log"
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT" &&
            printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
            timeout 5 cat <&3) 2>/dev/null | grep -q '^ok'; then
            return 0
        fi
        sleep 0.1
    done
    die "signal-server did not answer /healthz; see $TMP/server.log"
}

start
"$BENCH" provision --addr "127.0.0.1:$PORT" --token-file "$TMP/admin.token" --pairs "$PAIRS" \
    --switch-secret "$SECRET" --browsers 0 --password unused-password-1 >"$TMP/provision.kv" ||
    die "provisioning failed"
stop_pid "$SPID"

OUT=$TMP/callgrind.out
start valgrind --tool=callgrind --callgrind-out-file="$OUT" --dump-instr=no
CG_PID=$SPID

# load N: N decisions at CG_RATE/s over fresh switch connections.
load() {
    local n=$1 secs
    secs=$(awk -v n="$n" -v r="$CG_RATE" 'BEGIN { printf "%.3f", n / r }')
    "$BENCH" rate --url "ws://127.0.0.1:$PORT/ws" --server-pid "$CG_PID" --pairs "$PAIRS" \
        --switch-secret "$SECRET" --window "$WINDOW" --rate "$CG_RATE" --secs "$secs" >"$TMP/load-$n.kv" ||
        die "load of $n decisions failed"
    local got
    got=$(sed -n 's/^outcomes=//p' "$TMP/load-$n.kv")
    [[ $got -ge $n ]] || log "warning: $got outcomes of $n planned; see $TMP/load-$n.kv"
}

measure_jobs "$CG_PID" "$OUT" 100 decision
per=$PER

[[ $PEER == 1 ]] || exit 0
SIPP=$(command -v sipp || true)
[[ -n $SIPP ]] || die "sipp is not installed (apt-get install sip-tester)"
# sipp_302 PORT DIR N: N INVITEs answered 302 (with the registered Contact), each ACKed.
sipp_302() {
    mkdir -p "$2"
    (cd "$2" && timeout $(($3 / CG_RATE * 3 + 60)) "$SIPP" "127.0.0.1:$1" -sf "$BENCH_DIR/sipp/invite_302.xml" -s 3001 \
        -i 127.0.0.1 -p "$("$BENCH" free-port --udp)" -r "$CG_RATE" -m "$3" -nostdin -recv_timeout 10000 \
        -trace_stat -stf stat.csv >out.txt 2>&1) || true
    sipp_all_ok "$2" "$3"
}
# The callee's registration, retried until Kamailio (slow to start under valgrind) answers;
# then the same warm-up as ours.
kam_setup() {
    local i
    for i in $(seq 60); do
        (cd "$2" && timeout 10 "$SIPP" "127.0.0.1:$1" -sf "$BENCH_DIR/sipp/register.xml" -s 3001 -i 127.0.0.1 \
            -p "$("$BENCH" free-port --udp)" -m 1 -nostdin -timeout 3s -timeout_error >/dev/null 2>&1) && break
        sleep 0.5
    done
    sipp_302 "$1" "$2/warm-up" 100
}
kam_load() { sipp_302 "$1" "$2/load" "$3"; }
kam=$(KAM_MEM="-m 64 -M 8" kamailio_ir_per_job "$BENCH_DIR/kamailio/redirect.cfg" "$TMP/kam" "$N1" "$N2" kam_setup kam_load)
echo
echo "kamailio_ir_per_302=$kam"
awk -v a="$per" -v b="$kam" 'BEGIN { printf "ratio=%.2f (Trunkline ÷ Kamailio, instructions per decision / per 302)\n", a / b }'
