#!/usr/bin/env bash
# bench/run.sh — Trunkline's benchmark, in one command. See bench/README.md.
#
# Prints ONE markdown table (saved to bench/results/latest.md):
#   - steering decisions/s at saturation (a switch's B2 route_query answered with B5 route),
#   - the signal server's CPU µs per decision at a fixed rate, beside Kamailio's CPU µs per
#     302 (location lookup + redirect) loaded by sipp at the same rate,
#   - the server's RSS growth per idle authenticated WebSocket over 10,000 connections.
# Traffic goes to 127.0.0.1 only. Every process started here is stopped on exit.
#
# Knobs (environment): RATE (5000/s), RATE_SECS (10), SAT_SECS (5 s per run), SAT_RUNS (3, the
# median is reported), SAT_WARMUP_SECS (2), PAIRS (16 switch pairs), WINDOW (256 queries in
# flight per caller switch), IDLE_CONNS (10000),
# IDLE_SETTLE_SECS (12), TIME_LIMIT (1200 s for the whole run), SKIP_BUILD=1, KEEP_TMP=1,
# ONLY="kamailio rate saturate idle" (a subset), OUT (default bench/results/latest.md).
set -euo pipefail

# The whole run is bounded: re-run this script under `timeout`, which on expiry signals the
# script and everything it started (they share its process group); the trap below cleans up.
TIME_LIMIT=${TIME_LIMIT:-1200}
if [[ -z ${TRUNKLINE_BENCH_BOUNDED:-} ]]; then
    export TRUNKLINE_BENCH_BOUNDED=1
    exec timeout -k 15 "$TIME_LIMIT" "$0" "$@"
fi

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
RATE=${RATE:-5000}
RATE_SECS=${RATE_SECS:-10}
SAT_SECS=${SAT_SECS:-5}
SAT_RUNS=${SAT_RUNS:-3}
SAT_WARMUP_SECS=${SAT_WARMUP_SECS:-2}
PAIRS=${PAIRS:-16}
WINDOW=${WINDOW:-256}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_SETTLE_SECS=${IDLE_SETTLE_SECS:-12}
ONLY=${ONLY:-kamailio rate saturate idle}
OUT=${OUT:-$BENCH_DIR/results/latest.md}

log() { printf 'run.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
wants() { [[ " $ONLY " == *" $1 "* ]]; }

# ------------------------------------------------------------------ cleanup, time bound
TMP=$(mktemp -d "${TMPDIR:-/tmp}/trunkline-bench.XXXXXX")
PIDS=()
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP_TMP:-0} == 1 || $rc != 0 ]]; then
        log "logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped (time limit of ${TIME_LIMIT}s?)"; exit 124' TERM

# Each connection is a file descriptor, on both sides: raise the limit (children inherit it).
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]]; then ulimit -n 65536; else ulimit -n "$hard"; fi
(( $(ulimit -n) >= IDLE_CONNS + 1000 )) || log "warning: ulimit -n is $(ulimit -n); $IDLE_CONNS connections may not fit"

# ------------------------------------------------------------------ tools
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || [[ -x /usr/sbin/kamailio ]] || need+=(kamailio)
if (( ${#need[@]} )); then
    SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
    log "installing ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=900 "${need[@]}" >&2
fi
KAMAILIO=$(command -v kamailio || echo /usr/sbin/kamailio)
SIPP=$(command -v sipp)

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && timeout 1800 cargo build --release -q -p trunkline-signal-server -p trunkline-bench) >&2
fi
SERVER=$TARGET_DIR/release/signal-server
BENCH=$TARGET_DIR/release/trunkline-bench
[[ -x $SERVER && -x $BENCH ]] || die "missing $SERVER or $BENCH"

kv() { sed -n "s/^$1=//p" "$2" | tail -n1; }

# ------------------------------------------------------------------ Kamailio + sipp
# Column of a sipp CSV (';'-separated, header in line 1) by name, from its last line.
csv_col() {
    awk -F';' -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i }
                            END { if (c) print $c; else print "" }' "$1"
}

run_kamailio() {
    local dir=$TMP/kamailio port sport rc=0
    mkdir -p "$dir"
    port=$("$BENCH" free-port --udp)
    log "Kamailio: redirect server on udp:127.0.0.1:$port (log: $dir/kamailio.log)"
    "$KAMAILIO" -DD -E -f "$BENCH_DIR/kamailio/redirect.cfg" -l "udp:127.0.0.1:$port" \
        -w "$dir" -m 64 -M 8 >"$dir/kamailio.log" 2>&1 &
    local kpid=$!
    PIDS+=("$kpid")
    # Register the callee's contact (retried until Kamailio answers).
    local ok=0
    for _ in $(seq 20); do
        sport=$("$BENCH" free-port --udp)
        if (cd "$dir" && timeout 10 "$SIPP" "127.0.0.1:$port" -sf "$BENCH_DIR/sipp/register.xml" -s 3001 \
                -i 127.0.0.1 -p "$sport" -m 1 -nostdin -timeout 3s -timeout_error \
                >"$dir/sipp_register.out" 2>&1); then
            ok=1; break
        fi
        kill -0 "$kpid" 2>/dev/null || die "Kamailio exited; see $dir/kamailio.log"
        sleep 0.5
    done
    (( ok )) || die "Kamailio did not accept the REGISTER; see $dir/"
    local procs calls=$((RATE * RATE_SECS)) c0 c1 t0 t1
    procs=$(kv processes <("$BENCH" processes --pid "$kpid"))
    log "Kamailio: $procs processes; sipp sends $calls INVITEs at $RATE/s"
    sport=$("$BENCH" free-port --udp)
    c0=$(kv cpu_us <("$BENCH" cpu --pid "$kpid" --children))
    t0=$(date +%s.%N)
    (cd "$dir" && timeout $((RATE_SECS * 3 + 60)) "$SIPP" "127.0.0.1:$port" -sf "$BENCH_DIR/sipp/invite_302.xml" \
        -s 3001 -i 127.0.0.1 -p "$sport" -r "$RATE" -rp 1000 -m "$calls" -nostdin \
        -timeout $((RATE_SECS * 3 + 30))s -trace_stat -stf sipp_stat.csv -fd 1 -trace_counts \
        -trace_err -error_file sipp_errors.log >"$dir/sipp_invite.out" 2>&1) || rc=$?
    t1=$(date +%s.%N)
    c1=$(kv cpu_us <("$BENCH" cpu --pid "$kpid" --children))
    # sipp: 0 = every call succeeded, 1 = some failed; anything else is a sipp problem.
    (( rc == 0 || rc == 1 )) || die "sipp exited with $rc; see $dir/sipp_invite.out"
    local counts
    counts=$(ls "$dir"/invite_302_*_counts.csv | head -n1)
    {
        echo "rate=$RATE"
        echo "secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
        echo "cpu_us=$((c1 - c0))"
        echo "processes=$procs"
        echo "invites_sent=$(csv_col "$counts" 0_INVITE_Sent)"
        echo "replies_302=$(csv_col "$counts" 2_302_Recv)"
        echo "successful_calls=$(csv_col "$dir/sipp_stat.csv" 'SuccessfulCall(C)')"
        echo "failed_calls=$(csv_col "$dir/sipp_stat.csv" 'FailedCall(C)')"
        echo "retransmissions=$(csv_col "$dir/sipp_stat.csv" 'Retransmissions(C)')"
        echo "sipp_exit=$rc"
    } >"$TMP/kamailio.kv"
    stop_pid "$kpid"
    log "Kamailio: $(tr '\n' ' ' <"$TMP/kamailio.kv")"
}

# ------------------------------------------------------------------ signal server
SPORT=
SPID=
SECRET=bench-switch-secret-0123456789
PASSWORD=bench-password-1
write_config() {
    local dir=$TMP/server
    mkdir -p "$dir"
    SPORT=$("$BENCH" free-port)
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/admin.token"
    cat >"$dir/signal-server.toml" <<EOF
listen = "127.0.0.1:$SPORT"
database_url = "sqlite://$dir/trunkline.db"
web_root = "$dir/no-web-app"
public_url = "http://127.0.0.1:$SPORT"
admin_token_file = "$dir/admin.token"

[auth]
# Cheap hashes: 10,000 accounts are provisioned and signed in. The cost is stored in each hash.
password_hash_memory_kib = 64
password_hash_iterations = 1

[limits]
max_connections = 100000
EOF
}

# Start a fresh server process on the same database; wait for /healthz.
start_server() {
    local name=$1 dir=$TMP/server
    RUST_LOG=warn "$SERVER" run --config "$dir/signal-server.toml" >"$dir/$name.log" 2>&1 &
    SPID=$!
    PIDS+=("$SPID")
    for _ in $(seq 300); do
        kill -0 "$SPID" 2>/dev/null || die "signal-server exited; see $dir/$name.log"
        if (exec 3<>"/dev/tcp/127.0.0.1/$SPORT" &&
            printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
            timeout 2 cat <&3) 2>/dev/null | grep -q '^ok'; then
            return 0
        fi
        sleep 0.1
    done
    die "signal-server did not answer /healthz on port $SPORT; see $dir/$name.log"
}

run_server() {
    local url
    write_config
    url="ws://127.0.0.1:$SPORT/ws"
    local browsers=0
    wants idle && browsers=$IDLE_CONNS
    start_server provision
    log "provisioning $PAIRS switch pairs and $browsers browser accounts over the admin API"
    timeout 900 "$BENCH" provision --addr "127.0.0.1:$SPORT" --token-file "$TMP/server/admin.token" \
        --pairs "$PAIRS" --switch-secret "$SECRET" --browsers "$browsers" --password "$PASSWORD" \
        >"$TMP/provision.kv" || die "provisioning failed"
    log "provisioned: $(tr '\n' ' ' <"$TMP/provision.kv")"
    stop_pid "$SPID"

    if wants idle; then
        # A fresh server process: the baseline RSS has the directory loaded and nothing else.
        start_server idle
        sleep 1
        log "idle: signing in $IDLE_CONNS browsers, then ${IDLE_SETTLE_SECS}s idle"
        timeout $((IDLE_SETTLE_SECS + 600)) "$BENCH" idle --url "$url" --server-pid "$SPID" \
            --count "$IDLE_CONNS" --password "$PASSWORD" --settle-secs "$IDLE_SETTLE_SECS" \
            >"$TMP/idle.kv" || die "idle-connection measurement failed"
        log "idle: $(tr '\n' ' ' <"$TMP/idle.kv")"
        stop_pid "$SPID"
    fi

    if wants rate || wants saturate; then
        start_server steering
        if wants rate; then
            log "fixed rate: $RATE decisions/s for ${RATE_SECS}s over $PAIRS switch pairs"
            timeout $((RATE_SECS + 120)) "$BENCH" rate --url "$url" --server-pid "$SPID" --pairs "$PAIRS" \
                --switch-secret "$SECRET" --window "$WINDOW" --rate "$RATE" --secs "$RATE_SECS" \
                >"$TMP/rate.kv" || die "fixed-rate measurement failed"
            log "rate: $(tr '\n' ' ' <"$TMP/rate.kv")"
        fi
        if wants saturate; then
            log "saturation: $PAIRS switch pairs, $WINDOW in flight each, ${SAT_WARMUP_SECS}s warm-up + $SAT_RUNS x ${SAT_SECS}s"
            timeout $((SAT_WARMUP_SECS + SAT_SECS * SAT_RUNS + 120)) "$BENCH" saturate --url "$url" --server-pid "$SPID" \
                --pairs "$PAIRS" --switch-secret "$SECRET" --window "$WINDOW" \
                --warmup-secs "$SAT_WARMUP_SECS" --secs "$SAT_SECS" --runs "$SAT_RUNS" \
                >"$TMP/saturate.kv" || die "saturation measurement failed"
            log "saturate: $(tr '\n' ' ' <"$TMP/saturate.kv")"
        fi
        stop_pid "$SPID"
    fi
}

# ------------------------------------------------------------------ run, report
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
wants kamailio && run_kamailio
if wants rate || wants saturate || wants idle; then run_server; fi

args=()
for m in saturate rate idle kamailio; do
    [[ -f $TMP/$m.kv ]] && args+=("--$m" "$TMP/$m.kv")
done
mkdir -p "$(dirname "$OUT")"
{
    "$BENCH" table "${args[@]}"
    echo "- load average before the run: $LOADAVG (anything else running on the machine skews these numbers)"
    echo "- versions: Trunkline $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), $("$KAMAILIO" -v 2>/dev/null | sed -n 's/^version: kamailio \([0-9.]*\).*/Kamailio \1/p' | head -n1), $("$SIPP" -v 2>/dev/null | grep -o 'SIPp v[0-9.]*' | head -n1)"
} | tee "$OUT"
log "saved to $OUT"
