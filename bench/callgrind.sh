#!/usr/bin/env bash
# bench/callgrind.sh — instructions (callgrind Ir) per steering decision, and where they go.
#
# Wall-clock CPU on a shared 2-core machine varies by 2× from run to run; instruction counts
# do not. This runs the release signal server under `valgrind --tool=callgrind` and loads it
# with `trunkline-bench rate` twice on the same process: N1 then N2 decisions, the counters
# zeroed before the first and dumped after each. Sign-in, probes and start-up cost the same in
# both runs, so (Ir(N2) − Ir(N1)) / (N2 − N1) is the cost of one decision (B2 route_query →
# B5 route → C11 callee_query → C12 decline → outcome to both switches → call record).
# Prints Ir per decision and the top functions (inclusive) of the second run.
#
# Knobs: N1 (500), N2 (2500), CG_RATE (500 decisions/s, which the server keeps up with under callgrind),
# PAIRS (4), WINDOW (16), TOP (15), SKIP_BUILD=1, KEEP_TMP=1, SERVER / BENCH (binaries to use
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
SECRET=bench-switch-secret-0123456789

log() { printf 'callgrind.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v valgrind >/dev/null || die "valgrind is not installed"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/trunkline-callgrind.XXXXXX")
PIDS=()
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

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
# Ir of the last dump (the "summary:" / "totals:" line of the newest part file).
last_ir() {
    local f
    f=$(ls -t "$OUT".* | head -n1)
    awk '/^(summary|totals):/ { print $2; exit }' "$f"
}

log "warm-up"
load 100
callgrind_control -z "$CG_PID" >/dev/null
log "run 1: $N1 decisions"
load "$N1"
callgrind_control -d "run1" "$CG_PID" >/dev/null
IR1=$(last_ir)
log "run 2: $N2 decisions"
load "$N2"
callgrind_control -d "run2" "$CG_PID" >/dev/null
F2=$(ls -t "$OUT".* | head -n1)
IR2=$(last_ir)
stop_pid "$CG_PID"

per=$(awk -v a="$IR1" -v b="$IR2" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.0f", (b - a) / (n2 - n1) }')
echo "ir_run1=$IR1 decisions_run1=$N1"
echo "ir_run2=$IR2 decisions_run2=$N2"
echo "ir_per_decision=$per"
echo
echo "Top $TOP functions, inclusive, run 2 (Ir per decision = Ir / $N2; thread and runtime frames left out):"
callgrind_annotate --inclusive=yes --threshold=100 "$F2" 2>/dev/null |
    awk -v n="$N2" -v top="$TOP" '
        /^-+$/ { sep++; next }
        sep >= 3 && $1 ~ /^[0-9,]+$/ {
            ir = $1; gsub(",", "", ir); line = $0
            sub(/^ *[0-9,]+ *(\( *[0-9.]+%\))? */, "", line)
            if (line !~ /\[/) next
            sub(/ *\[[^]]*\]$/, "", line)
            if (line ~ /PROGRAM TOTALS|clone\.S|pthread_create|thread_start|call_once|__rust_begin_short_backtrace|tokio::runtime::|on_upgrade|PollFn/) next
            sub(/\/root\/\.cargo\/registry\/src\/[^\/]*\//, "", line)
            printf "%10.0f  %s\n", ir / n, substr(line, 1, 150); if (++k >= top) exit
        }'
