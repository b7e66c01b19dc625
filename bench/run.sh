#!/usr/bin/env bash
# bench/run.sh — Trunkline's benchmark, in one command. See bench/README.md.
#
# Prints ONE markdown table (saved to bench/results/latest.md):
#   - steering decisions/s at saturation (a switch's B2 route_query answered with B5 route),
#   - the signal server's CPU µs per decision at a fixed rate, beside Kamailio's CPU µs per
#     302 (location lookup + redirect) loaded by sipp at the same rate,
#   - the server's RSS growth per idle authenticated WebSocket over 10,000 connections,
#   - the switch gateway beside Kamailio (phase "gateway"): REGISTER/s with digest auth at
#     saturation and CPU µs per registration; F7 local calls/s at a fixed rate and at
#     saturation and CPU µs per call; call setup times of F1/F2/F3 (headless client and bench
#     desk phones); concurrent bridged WebRTC⇄RTP calls with no loss and p99 delay < 1 ms.
# Traffic goes to 127.0.0.1 only. Every process started here is stopped on exit.
#
# Knobs (environment): RATE (5000/s), RATE_SECS (10), SAT_SECS (5 s per run), SAT_RUNS (3, the
# median is reported), SAT_WARMUP_SECS (2), PAIRS (16 switch pairs), WINDOW (256 queries in
# flight per caller switch), IDLE_CONNS (10000),
# IDLE_SETTLE_SECS (12), TIME_LIMIT (1200 s for the whole run but the first-time web and NAT lab
# setup), SKIP_BUILD=1, KEEP_TMP=1, SERVER_BIN (another signal-server binary, e.g. one kept from before a change),
# ONLY="kamailio rate saturate idle cluster gateway web natlab" (a subset), OUT (default bench/results/latest.md;
# bench/results/partial-TIME.md when ONLY or GW_PARTS is set).
# Cluster phase (needs PostgreSQL and NATS; skipped with the reason otherwise): CLUSTER_PG_URL
# (postgres://postgres@127.0.0.1:5432/postgres: a URL that may CREATE DATABASE; the bench makes
# and drops a database of its own), CLUSTER_NATS_URL (nats://127.0.0.1:4222), CLUSTER_PAIRS (16),
# CLUSTER_WINDOW (64), CLUSTER_SAT_WARMUP (1), CLUSTER_SAT_SECS (3), CLUSTER_SAT_RUNS (2),
# CLUSTER_RATE (2000/s at most; half the cluster's saturation if lower), CLUSTER_RATE_SECS (5),
# F4_CALLS (300), F4_CONCURRENCY (4).
# Kamailio phase: RATE and RATE_SECS (its fixed-rate 302s, as ours), then 302s at saturation:
# KAM_SAT_SIPPS (2 sipp instances; 0 skips it), KAM_SAT_IN_FLIGHT ("50 200 400" INVITEs in flight
# per instance: one run each, the best with ≤ 1 % failed counts), KAM_SAT_SECS (5 after REG_WARMUP).
# NAT lab phase (root): NATLAB_CALLS (20 calls per scenario: F1 cone→cone, sym→sym, UDP-blocked).
# Gateway phase: GW_PARTS="register calls setup mediacpu mediawebrtc" (a subset; add "media" for the old
# p99-delay ramp), GATEWAY_BIN (another
# gateway binary, e.g. one kept from before a change), RTPENGINE_BIN (another rtpengine command, e.g.
# a wrapper that runs it under callgrind), REG_SECS (6), REG_WARMUP (2),
# REG_SIPPS (2 sipp instances), REG_IN_FLIGHT ("50 200 400" per instance: one run each, the best
# counts), REG_RATE (2000/s), REG_RATE_SECS (5), CALL_RATE (500/s), CALL_RATE_SECS (10),
# CALL_HOLD_MS (100), CALL_SECS (6), CALL_SIPPS (2), CALL_IN_FLIGHT ("100 300 500" per instance),
# SETUP_CALLS (200), SETUP_CONCURRENCY (4),
# MEDIA_STEPS (10,25,50,...,2000), MEDIA_SECS (5), MEDIA_MAX_SECS (240: no further step after).
# Part "mediacpu" (plain RTP relay, the gateway beside rtpengine; rtpengine-daemon is installed
# when missing): MEDIACPU_STEPS (50,200,500,1000,1500 calls), MEDIACPU_SECS (5 s per step),
# MEDIACPU_MAX_SECS (120 per relay: no further step after).
# Part "mediawebrtc" (WebRTC ⇄ RTP bridging, the gateway's F1 bridge beside rtpengine with
# ICE=force DTLS=passive SDES-off): MEDIAWEBRTC_STEPS (50,200,500,750,1000 calls), MEDIAWEBRTC_SECS
# (5 s per step), MEDIAWEBRTC_MAX_SECS (60 per bridge: no further step after).
set -euo pipefail

# The whole run is bounded: re-run this script under `timeout`, which on expiry signals the
# script and everything it started (they share its process group); the trap below cleans up.
# First-time installs are not measuring and do not count: on a fresh machine the web toolchain
# alone (trunk, wasm-bindgen) builds for ≈ 13 minutes, so the web and NAT lab parts' setup runs
# here, before the bound starts (each part runs it again later; it skips what is there).
TIME_LIMIT=${TIME_LIMIT:-1200}
if [[ -z ${TRUNKLINE_BENCH_BOUNDED:-} ]]; then
    pre_only=" ${ONLY:-web natlab} "
    pre_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ $pre_only == *" web "* || $pre_only == *" natlab "* ]] && [[ -x $pre_root/web/setup.sh ]]; then
        printf 'run.sh: %s\n' "web toolchain (web/setup.sh; not timed)" >&2
        "$pre_root/web/setup.sh" >&2 || printf 'run.sh: %s\n' "web/setup.sh failed; the web part will say why" >&2
    fi
    if [[ $pre_only == *" natlab "* && $(id -u) == 0 && -x $pre_root/natlab/lab.sh ]]; then
        printf 'run.sh: %s\n' "NAT lab packages (natlab/lab.sh deps; not timed)" >&2
        "$pre_root/natlab/lab.sh" deps >&2 || printf 'run.sh: %s\n' "natlab/lab.sh deps failed; the NAT lab part will say why" >&2
    fi
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
ONLY_GIVEN=${ONLY:-}
ONLY=${ONLY:-kamailio rate saturate idle cluster gateway web natlab}
CLUSTER_PG_URL=${CLUSTER_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
CLUSTER_NATS_URL=${CLUSTER_NATS_URL:-nats://127.0.0.1:4222}
CLUSTER_PAIRS=${CLUSTER_PAIRS:-16}
CLUSTER_WINDOW=${CLUSTER_WINDOW:-64}
CLUSTER_SAT_WARMUP=${CLUSTER_SAT_WARMUP:-1}
CLUSTER_SAT_SECS=${CLUSTER_SAT_SECS:-3}
CLUSTER_SAT_RUNS=${CLUSTER_SAT_RUNS:-2}
CLUSTER_RATE=${CLUSTER_RATE:-2000}
CLUSTER_RATE_SECS=${CLUSTER_RATE_SECS:-5}
F4_CALLS=${F4_CALLS:-300}
F4_CONCURRENCY=${F4_CONCURRENCY:-4}
NATLAB_CALLS=${NATLAB_CALLS:-20}
GW_PARTS_GIVEN=${GW_PARTS:-}
GW_PARTS=${GW_PARTS:-register calls setup mediacpu mediawebrtc}
# Kamailio's 302s at saturation (closed loop, as the REGISTER and F7 saturation rows).
KAM_SAT_SIPPS=${KAM_SAT_SIPPS:-2}
KAM_SAT_IN_FLIGHT=${KAM_SAT_IN_FLIGHT:-50 200 400}
KAM_SAT_SECS=${KAM_SAT_SECS:-5}
REG_SECS=${REG_SECS:-6}
REG_WARMUP=${REG_WARMUP:-2}
REG_SIPPS=${REG_SIPPS:-2}
REG_IN_FLIGHT=${REG_IN_FLIGHT:-50 200 400}
REG_RATE=${REG_RATE:-2000}
REG_RATE_SECS=${REG_RATE_SECS:-5}
CALL_RATE=${CALL_RATE:-500}
CALL_RATE_SECS=${CALL_RATE_SECS:-10}
CALL_HOLD_MS=${CALL_HOLD_MS:-100}
CALL_SECS=${CALL_SECS:-6}
CALL_SIPPS=${CALL_SIPPS:-2}
CALL_IN_FLIGHT=${CALL_IN_FLIGHT:-100 300 500}
SETUP_CALLS=${SETUP_CALLS:-200}
SETUP_CONCURRENCY=${SETUP_CONCURRENCY:-4}
MEDIA_STEPS=${MEDIA_STEPS:-10,25,50,100,200,400,600,800,1000,1250,1500,1750,2000}
MEDIA_SECS=${MEDIA_SECS:-5}
MEDIA_MAX_SECS=${MEDIA_MAX_SECS:-240}
MEDIACPU_STEPS=${MEDIACPU_STEPS:-50,200,500,1000,1500}
MEDIACPU_SECS=${MEDIACPU_SECS:-5}
MEDIACPU_MAX_SECS=${MEDIACPU_MAX_SECS:-120}
MEDIAWEBRTC_STEPS=${MEDIAWEBRTC_STEPS:-50,200,500,750,1000}
MEDIAWEBRTC_SECS=${MEDIAWEBRTC_SECS:-5}
MEDIAWEBRTC_MAX_SECS=${MEDIAWEBRTC_MAX_SECS:-60}
# A partial run (ONLY or GW_PARTS set) must not replace the full run's table.
if [[ -z ${OUT:-} && ( -n ${ONLY_GIVEN:-} || -n ${GW_PARTS_GIVEN:-} ) ]]; then
    OUT=$BENCH_DIR/results/partial-$(date -u +%Y%m%d-%H%M%S).md
fi
OUT=${OUT:-$BENCH_DIR/results/latest.md}

log() { printf 'run.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
SAT_PORTS=()
wants() { [[ " $ONLY " == *" $1 "* ]]; }
gw_wants() { [[ " $GW_PARTS " == *" $1 "* ]]; }

# ------------------------------------------------------------------ cleanup, time bound
TMP=$(mktemp -d "${TMPDIR:-/tmp}/trunkline-bench.XXXXXX")
PIDS=()
# The cluster phase's PostgreSQL database (dropped on exit unless KEEP_TMP=1).
CLUSTER_DB=
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
    if [[ -n $CLUSTER_DB ]]; then
        if [[ ${KEEP_TMP:-0} == 1 ]]; then
            log "PostgreSQL database $CLUSTER_DB kept"
        else
            psql "$CLUSTER_PG_URL" -qAtc "DROP DATABASE IF EXISTS $CLUSTER_DB WITH (FORCE)" >/dev/null 2>&1 ||
                log "could not drop the PostgreSQL database $CLUSTER_DB"
        fi
    fi
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
# sipp and Kamailio only for the phases that use them.
if wants kamailio || wants gateway; then
    command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
    command -v kamailio >/dev/null 2>&1 || [[ -x /usr/sbin/kamailio ]] || need+=(kamailio)
fi
# rtpengine (userspace forwarding; the kernel module is not needed) for the media CPU parts.
if wants gateway && { gw_wants mediacpu || gw_wants mediawebrtc; }; then
    command -v rtpengine >/dev/null 2>&1 || need+=(rtpengine-daemon)
fi
if (( ${#need[@]} )); then
    SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
    log "installing ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=900 "${need[@]}" >&2
fi
KAMAILIO=$(command -v kamailio || echo /usr/sbin/kamailio)
SIPP=$(command -v sipp || echo sipp)

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && timeout 1800 cargo build --release -q -p trunkline-signal-server -p trunkline-switch-gateway \
        -p trunkline-bench) >&2
fi
SERVER=${SERVER_BIN:-$TARGET_DIR/release/signal-server}
# GATEWAY_BIN: another gateway binary (e.g. one kept from before a change), for before/after runs.
GATEWAY=${GATEWAY_BIN:-$TARGET_DIR/release/switch-gateway}
BENCH=$TARGET_DIR/release/trunkline-bench
[[ -x $SERVER && -x $BENCH ]] || die "missing $SERVER or $BENCH"
[[ -x $GATEWAY ]] || ! wants gateway || die "missing $GATEWAY"

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
    # At saturation: KAM_SAT_SIPPS sipps, each keeping L INVITEs in flight, for each L of
    # KAM_SAT_IN_FLIGHT (the best level with ≤ 1 % failed counts), as the gateway phase measures
    # the registrar's and F7's saturation (sat_run and saturate, with this phase's folder).
    if (( KAM_SAT_SIPPS > 0 )); then
        local GW=$dir GWKV=$dir/sat.kv
        mkdir -p "$dir/sipp"
        : >"$GWKV"
        printf 'SEQUENTIAL\n3001\n' >"$dir/sat.csv"
        saturate kamsat "$KAM_SAT_IN_FLIGHT" "127.0.0.1:$port" "$kpid" --children "$KAM_SAT_SIPPS" "$KAM_SAT_SECS" \
            "$BENCH_DIR/sipp/invite_302.xml" "$dir/sat" -s 3001
        sed 's/^kamsat_/sat_/' "$GWKV" >>"$TMP/kamailio.kv"
    fi
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
# Every bench browser connects from 127.0.0.1, thousands at once.
max_unauthenticated_per_address = 100000
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

# ------------------------------------------------------------------ cluster mode
# 3 replicas (cluster on) on one PostgreSQL database and NATS, beside one process (cluster off)
# on the same database: steering at saturation and at a fixed rate with every hq<i> on R1 and
# the br<i> on R2/R3 in turn (so every decision crosses replicas), and F4 dial → ringing with
# the callers on R1 and the callees on R2. Numbers go to cluster.kv as c_* (cluster) and s_*
# (single process); a step that fails leaves c_error / s_error and the phase goes on.
CL=$TMP/cluster
CLKV=$TMP/cluster.kv
clset() { echo "$1=$2" >>"$CLKV"; }
clkv() { sed "s/^/$1_/" "$2" >>"$CLKV"; }

# Why the cluster phase cannot run (empty: it can).
cluster_unavailable() {
    local hp host port
    command -v psql >/dev/null 2>&1 || { echo "psql is not installed (it creates the bench's database)"; return; }
    psql "$CLUSTER_PG_URL" -qAtc 'select 1' >/dev/null 2>&1 || { echo "PostgreSQL is not reachable at $CLUSTER_PG_URL"; return; }
    hp=${CLUSTER_NATS_URL#*://}
    hp=${hp%%,*}
    host=${hp%:*}
    port=${hp##*:}
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null || { echo "NATS is not reachable at $CLUSTER_NATS_URL"; return; }
}

# cluster_config NAME PORT NODE_ID (empty: cluster off)
cluster_config() {
    local name=$1 port=$2 node=$3
    cat >"$CL/$name.toml" <<EOT
listen = "127.0.0.1:$port"
database_url = "${CLUSTER_PG_URL%/*}/$CLUSTER_DB"
web_root = "$CL/no-web-app"
public_url = "http://127.0.0.1:$port"
admin_token_file = "$CL/admin.token"

[auth]
password_hash_memory_kib = 64
password_hash_iterations = 1

[limits]
max_connections = 100000
max_unauthenticated_per_address = 100000
# The F4 callers dial one call after another, hundreds a second.
messages_per_second = 1000000
max_calls_per_device = 100000

[push]
enabled = false
EOT
    if [[ -n $node ]]; then
        cat >>"$CL/$name.toml" <<EOT

[cluster]
enabled = true
node_id = "$node"
nats_url = "$CLUSTER_NATS_URL"
name_prefix = "$CLUSTER_PREFIX"
drain_timeout_secs = 2
EOT
    fi
}

# Start a server with $CL/NAME.toml and wait until GET PATH answers 200; sets CL_PID. On
# failure: sets CL_WHY, returns 1 (the phase is skipped, the other phases go on).
cluster_start() {
    local name=$1 port=$2 path=$3
    RUST_LOG=warn "$SERVER" run --config "$CL/$name.toml" >"$CL/$name.log" 2>&1 &
    CL_PID=$!
    PIDS+=("$CL_PID")
    for _ in $(seq 300); do
        if ! kill -0 "$CL_PID" 2>/dev/null; then
            CL_WHY="signal-server $name exited at start: $(tail -n1 "$CL/$name.log")"
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
            printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3 &&
            timeout 2 cat <&3) 2>/dev/null | head -n1 | grep -q ' 200 '; then
            return 0
        fi
        sleep 0.1
    done
    CL_WHY="signal-server $name did not answer $path with 200 within 30 s: $(tail -n1 "$CL/$name.log")"
    return 1
}

# cluster_up NAME PORT PATH: cluster_start, or record why the phase stops and return 1.
cluster_up() {
    cluster_start "$@" && return 0
    log "cluster phase stopped: $CL_WHY (logs in $CL)"
    clset skipped "$CL_WHY"
    return 1
}

# cluster_measure PREFIX HQ_URL BR_URLS PIDS F4_CALLEE_URL: saturation, then the fixed rate
# (CL_RATE, or half the saturation up to CLUSTER_RATE when unset), then F4.
cluster_measure() {
    local pre=$1 hq=$2 br=$3 pids=$4 f4callee=$5 sat
    log "cluster ($pre): saturation, $CLUSTER_PAIRS pairs × $CLUSTER_WINDOW in flight, ${CLUSTER_SAT_WARMUP}s + $CLUSTER_SAT_RUNS × ${CLUSTER_SAT_SECS}s"
    if timeout $((CLUSTER_SAT_WARMUP + CLUSTER_SAT_SECS * CLUSTER_SAT_RUNS + 120)) "$BENCH" saturate --url "$hq" --br-url "$br" \
        --server-pid "$pids" --pairs "$CLUSTER_PAIRS" --switch-secret "$SECRET" --window "$CLUSTER_WINDOW" \
        --warmup-secs "$CLUSTER_SAT_WARMUP" --secs "$CLUSTER_SAT_SECS" --runs "$CLUSTER_SAT_RUNS" >"$CL/$pre-sat.kv" 2>"$CL/$pre-sat.err"; then
        clkv "${pre}_sat" "$CL/$pre-sat.kv"
        log "cluster ($pre) saturation: $(tr '\n' ' ' <"$CL/$pre-sat.kv")"
    else
        clset "${pre}_error" "saturation failed: $(tail -n1 "$CL/$pre-sat.err")"
        log "cluster ($pre): saturation failed; see $CL/$pre-sat.err"
    fi
    if [[ -z ${CL_RATE:-} ]]; then
        sat=$(kv decisions_per_sec "$CL/$pre-sat.kv" 2>/dev/null || true)
        CL_RATE=$CLUSTER_RATE
        [[ -n $sat ]] && (( sat / 2 < CL_RATE )) && CL_RATE=$((sat / 2))
        (( CL_RATE >= 100 )) || CL_RATE=100
        clset rate "$CL_RATE"
    fi
    log "cluster ($pre): fixed rate $CL_RATE decisions/s for ${CLUSTER_RATE_SECS}s"
    if timeout $((CLUSTER_RATE_SECS + 120)) "$BENCH" rate --url "$hq" --br-url "$br" --server-pid "$pids" \
        --pairs "$CLUSTER_PAIRS" --switch-secret "$SECRET" --window "$CLUSTER_WINDOW" --rate "$CL_RATE" \
        --secs "$CLUSTER_RATE_SECS" >"$CL/$pre-rate.kv" 2>"$CL/$pre-rate.err"; then
        clkv "${pre}_rate" "$CL/$pre-rate.kv"
        log "cluster ($pre) rate: $(tr '\n' ' ' <"$CL/$pre-rate.kv")"
    else
        clset "${pre}_error" "fixed rate failed: $(tail -n1 "$CL/$pre-rate.err")"
        log "cluster ($pre): fixed rate failed; see $CL/$pre-rate.err"
    fi
    log "cluster ($pre): F4 dial → ringing, $F4_CALLS calls, $F4_CONCURRENCY at a time"
    if timeout 300 "$BENCH" f4-latency --caller-url "$hq" --callee-url "$f4callee" --first-browser 600000 \
        --password "$PASSWORD" --calls "$F4_CALLS" --concurrency "$F4_CONCURRENCY" >"$CL/$pre-f4.kv" 2>"$CL/$pre-f4.err"; then
        clkv "${pre}_f4" "$CL/$pre-f4.kv"
        log "cluster ($pre) F4: $(tr '\n' ' ' <"$CL/$pre-f4.kv")"
    else
        clset "${pre}_error" "F4 failed: $(tail -n1 "$CL/$pre-f4.err")"
        log "cluster ($pre): F4 failed; see $CL/$pre-f4.err"
    fi
}

run_cluster() {
    local why
    : >"$CLKV"
    why=$(cluster_unavailable)
    if [[ -n $why ]]; then
        log "cluster phase skipped: $why"
        clset skipped "$why"
        return 0
    fi
    mkdir -p "$CL"
    CLUSTER_DB=trunkline_bench_$$_$RANDOM
    CLUSTER_PREFIX=bench$$r$RANDOM
    if ! psql "$CLUSTER_PG_URL" -qAtc "CREATE DATABASE $CLUSTER_DB" >/dev/null; then
        clset skipped "cannot create a database with $CLUSTER_PG_URL"
        CLUSTER_DB=
        return 0
    fi
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$CL/admin.token"
    clset pairs "$CLUSTER_PAIRS"
    clset window "$CLUSTER_WINDOW"
    clset sat_warmup_secs "$CLUSTER_SAT_WARMUP"
    clset f4_concurrency "$F4_CONCURRENCY"
    local p1 p2 p3 r1 r2 r3 sp spid
    # Provisioned once, by one process with the cluster off (as for SQLite).
    sp=$("$BENCH" free-port)
    cluster_config provision "$sp" ""
    cluster_up provision "$sp" /healthz || return 0
    log "cluster: provisioning $CLUSTER_PAIRS switch pairs and $((2 * F4_CONCURRENCY)) browsers in PostgreSQL database $CLUSTER_DB"
    timeout 300 "$BENCH" provision --addr "127.0.0.1:$sp" --token-file "$CL/admin.token" --pairs "$CLUSTER_PAIRS" \
        --switch-secret "$SECRET" --browsers $((2 * F4_CONCURRENCY)) --first-browser 600000 --password "$PASSWORD" \
        >"$CL/provision.kv" || { clset skipped "provisioning the PostgreSQL database failed"; return 0; }
    stop_pid "$CL_PID"

    # Three replicas.
    p1=$("$BENCH" free-port); p2=$("$BENCH" free-port); p3=$("$BENCH" free-port)
    cluster_config r1 "$p1" r1; cluster_config r2 "$p2" r2; cluster_config r3 "$p3" r3
    cluster_up r1 "$p1" /readyz || return 0
    r1=$CL_PID
    cluster_up r2 "$p2" /readyz || return 0
    r2=$CL_PID
    cluster_up r3 "$p3" /readyz || return 0
    r3=$CL_PID
    log "cluster: replicas r1 (pid $r1, :$p1), r2 (pid $r2, :$p2), r3 (pid $r3, :$p3), NATS prefix $CLUSTER_PREFIX"
    CL_RATE=
    cluster_measure c "ws://127.0.0.1:$p1/ws" "ws://127.0.0.1:$p2/ws,ws://127.0.0.1:$p3/ws" "$r1,$r2,$r3" "ws://127.0.0.1:$p2/ws"
    # Warnings and errors the replicas logged under load.
    for n in 1 2 3; do clset "c_r${n}_log_lines" "$(grep -cE ' (WARN|ERROR) ' "$CL/r$n.log" || true)"; done
    stop_pid "$r1"; stop_pid "$r2"; stop_pid "$r3"

    # One process, cluster off, the same database, the same rate.
    cluster_config single "$sp" ""
    cluster_up single "$sp" /healthz || return 0
    spid=$CL_PID
    cluster_measure s "ws://127.0.0.1:$sp/ws" "ws://127.0.0.1:$sp/ws" "$spid" "ws://127.0.0.1:$sp/ws"
    stop_pid "$spid"
}

# ------------------------------------------------------------------ switch gateway vs Kamailio
# Numbers (desk phones' passwords are pw-NUMBER): hq 1000-1999 (REGISTER), hq 2000-5999 (F7:
# caller N calls N+2000; a number in a call is busy, so there are more pairs than calls in
# flight, and none of these has the REGISTER benchmark's contacts, which would make the
# gateway and Kamailio fork), hq 20000.. (setup times: F1 callees, F2 and F3 callers),
# br 30000.. (F2 callees), hq 40000.. (the concurrent-calls ramp), browsers 50000-50031.
GW=$TMP/gw
GW_SECRET=bench-gateway-secret-0123456789
GW_BROWSER_PW=bench-browser-pw-1
GWKV=$TMP/gateway.kv
# sipp's socket buffers (SO_SNDBUF/SO_RCVBUF): 4 MB, so that the load generator is not where
# datagrams get dropped (the kernel caps it at net.core.rmem_max).
SIPP_BUF=4194304

# Append `prefix_key=value` lines from a key=value file to gateway.kv.
gwkv() { sed "s/^/$1_/" "$2" >>"$GWKV"; }
gwset() { echo "$1=$2" >>"$GWKV"; }

# Start a gateway: start_gateway ID RTP_RANGE; sets GW_PID, GW_SIP.
start_gateway() {
    local id=$1 range=$2 sport
    for _ in $(seq 10); do
        sport=$("$BENCH" free-port --both)
        printf '%s' "$GW_SECRET" >"$GW/$id.secret"
        cat >"$GW/$id.toml" <<EOT
id = "$id"
secret_file = "$GW/$id.secret"
cloud_url = "ws://127.0.0.1:$GW_SPORT/ws"
sip_listen = "127.0.0.1:$sport"
rtp_ports = "$range"
state_dir = "$GW/$id-state"
ring_timeout_secs = 30
# Thousands of registrations a second from one address: the SIP guard's limits would stop them.
[sip_guard]
enabled = false
# Thousands of calls in progress at once in the saturation and media ramps (ended calls no
# longer count against the cap, but calls set up faster than the gateway answers do).
max_server_transactions = 1000000
EOT
        RUST_LOG=warn "$GATEWAY" run --config "$GW/$id.toml" >"$GW/$id.log" 2>&1 &
        GW_PID=$!
        PIDS+=("$GW_PID")
        sleep 0.5
        if kill -0 "$GW_PID" 2>/dev/null; then
            GW_SIP=127.0.0.1:$sport
            return 0
        fi
        log "gateway $id did not start (port race?); retrying: $(tail -n1 "$GW/$id.log")"
    done
    die "gateway $id does not start; see $GW/$id.log"
}

# Wait until gateway ID has its phone list from the cloud (the last number provisioned for it).
wait_phones() {
    local id=$1 last=$2
    for _ in $(seq 300); do
        grep -q "\"number\": \"$last\"" "$GW/$id-state/phones.json" 2>/dev/null && return 0
        sleep 0.1
    done
    die "gateway $id has no phone list with $last; see $GW/$id.log"
}

# sipp in the background with its statistics file; sets SIPP_PID (and adds it to PIDS).
# sipp_bg NAME TARGET ARGS... (runs in $GW/sipp/NAME)
sipp_bg() {
    local name=$1 target=$2
    shift 2
    mkdir -p "$GW/sipp/$name"
    (cd "$GW/sipp/$name" && exec "$SIPP" "$target" -i 127.0.0.1 -nostdin -buff_size "$SIPP_BUF" -trace_err -trace_stat -stf stat.csv -fd 1 "$@" \
        >out.txt 2>&1) &
    SIPP_PID=$!
    PIDS+=("$SIPP_PID")
}

# Wait for background sipps for at most SECS seconds, then stop the ones still running (sipp
# lets calls that wait for a message run past -timeout until -recv_timeout).
wait_sipps() {
    local secs=$1 p
    shift
    for _ in $(seq $((secs * 10))); do
        local running=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && running=1; done
        (( running )) || break
        sleep 0.1
    done
    for p in "$@"; do stop_pid "$p"; done
}

# One saturation run: SIPPS sipps with IN_FLIGHT calls each in flight (-users) of SCENARIO for
# REG_WARMUP + SECS; the rate after the warm-up goes to $GW/NAME.kv with the failures, the
# kernel's drops at the peer's socket and the peer's busy cores. Sipp i reads CSV-i.csv if it
# exists, else CSV.csv; it sends from port i of SAT_PORTS (an array) if set, else a free one.
# sat_run NAME TARGET PID CFLAG SIPPS IN_FLIGHT SECS SCENARIO CSV [more sipp args...]
sat_run() {
    local name=$1 target=$2 pid=$3 cflag=$4 n=$5 users=$6 secs=$7 sf=$8 csv=$9
    shift 9
    local pids=() files=() i f p c0 c1 t0 t1 d0 SIPP_PID
    d0=$(kv drops <("$BENCH" udp-drops --ports "${target##*:}"))
    c0=$(kv cpu_us <("$BENCH" cpu --pid "$pid" ${cflag:+"$cflag"})); t0=$(date +%s.%N)
    for i in $(seq "$n"); do
        f=$csv.csv; [[ -f $csv-$i.csv ]] && f=$csv-$i.csv
        p=${SAT_PORTS[i - 1]:-$("$BENCH" free-port --udp)}
        sipp_bg "$name-$i" "$target" -sf "$sf" -inf "$f" -p "$p" -mp "$("$BENCH" free-port --udp)" \
            -users "$users" -m 100000000 \
            -timeout $((REG_WARMUP + secs)) -recv_timeout 5000 "$@"
        pids+=("$SIPP_PID")
        files+=("$GW/sipp/$name-$i/stat.csv")
    done
    wait_sipps $((REG_WARMUP + secs + 10)) "${pids[@]}"
    c1=$(kv cpu_us <("$BENCH" cpu --pid "$pid" ${cflag:+"$cflag"})); t1=$(date +%s.%N)
    "$BENCH" sipp-rate --skip "$REG_WARMUP" --secs "$secs" "${files[@]}" >"$GW/$name.kv" || die "no sipp statistics in $GW/sipp/$name-*"
    echo "cores=$(awk -v c="$((c1 - c0))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", c / 1e6 / (b - a) }')" >>"$GW/$name.kv"
    echo "socket_drops=$(( $(kv drops <("$BENCH" udp-drops --ports "${target##*:}")) - d0 ))" >>"$GW/$name.kv"
    echo "in_flight=$users" >>"$GW/$name.kv"
}

# Saturation at each in-flight level of LEVELS (more calls in flight is not always more
# throughput: queues overflow and retransmissions stall the closed loop). The level that counts
# is the one with the most completed calls per second among those where at most 1 % of the
# calls failed (if none qualifies: the one with the most); its figures go to gateway.kv as
# PREFIX_*, every level's rate and failures as PREFIX_levels.
# saturate PREFIX LEVELS sat_run-arguments-after-IN_FLIGHT... (NAME and IN_FLIGHT are filled in)
saturate() {
    local prefix=$1 levels=$2 target=$3 pid=$4 cflag=$5 n=$6
    shift 6
    local l best= best_rate=-1 any= any_rate=-1 r ok failed summary=
    for l in $levels; do
        sat_run "$prefix-$l" "$target" "$pid" "$cflag" "$n" "$l" "$@"
        r=$(kv per_sec "$GW/$prefix-$l.kv")
        ok=$(kv successful "$GW/$prefix-$l.kv")
        failed=$(kv failed "$GW/$prefix-$l.kv")
        log "$prefix, $l in flight per sipp: $(tr '\n' ' ' <"$GW/$prefix-$l.kv")"
        summary+="${summary:+, }$l: $r/s ($failed of $((ok + failed)) failed)"
        if (( r > any_rate )); then any_rate=$r; any=$l; fi
        if (( failed * 100 <= ok && r > best_rate )); then best_rate=$r; best=$l; fi
    done
    if [[ -z $best ]]; then
        best=$any
        gwset "${prefix}_over_1pct_failed" 1
    fi
    gwkv "$prefix" "$GW/$prefix-$best.kv"
    gwset "${prefix}_levels" "$summary"
}

# REGISTER at saturation: REG_SIPPS sipps × REG_IN_FLIGHT registrations in flight for
# REG_WARMUP + REG_SECS; then REG_RATE/s for REG_RATE_SECS with CPU from /proc. Sipp i always
# registers users-i.csv from the same port, in every run of the phase, so after the first
# pass every REGISTER is a refresh from where the phone already is: a site's pattern, for both
# peers (a phone that moves costs the gateway more: its disk copy is written within a second).
# measure_register TAG TARGET PID CHILDREN(0/1)
measure_register() {
    local tag=$1 target=$2 pid=$3 children=$4 c0 c1 t0 t1 i f ok=0 failed=0 files=()
    local cflag=; [[ $children == 1 ]] && cflag=--children
    SAT_PORTS=()
    for i in $(seq "$REG_SIPPS"); do SAT_PORTS+=("$("$BENCH" free-port --udp)"); done
    saturate "reg_$tag" "$REG_IN_FLIGHT" "$target" "$pid" "$cflag" "$REG_SIPPS" "$REG_SECS" \
        "$BENCH_DIR/sipp/register_auth.xml" "$GW/sip/users"
    # Fixed rate: the same sipps, ports and users, REG_RATE/s in all.
    c0=$(kv cpu_us <("$BENCH" cpu --pid "$pid" $cflag))
    t0=$(date +%s.%N)
    local pids=() SIPP_PID
    for i in $(seq "$REG_SIPPS"); do
        f=$GW/sip/users.csv; [[ -f $GW/sip/users-$i.csv ]] && f=$GW/sip/users-$i.csv
        sipp_bg "regfix-$tag-$i" "$target" -sf "$BENCH_DIR/sipp/register_auth.xml" -inf "$f" \
            -p "${SAT_PORTS[i - 1]}" -r $((REG_RATE / REG_SIPPS)) -m $((REG_RATE / REG_SIPPS * REG_RATE_SECS)) -recv_timeout 5000
        pids+=("$SIPP_PID")
        files+=("$GW/sipp/regfix-$tag-$i/stat.csv")
    done
    wait_sipps $((REG_RATE_SECS * 3 + 30)) "${pids[@]}"
    t1=$(date +%s.%N)
    c1=$(kv cpu_us <("$BENCH" cpu --pid "$pid" $cflag))
    SAT_PORTS=()
    for i in "${files[@]}"; do
        # A sipp that wrote no statistics counts nothing (csv_col prints nothing).
        ok=$((ok + $(csv_col "$i" 'SuccessfulCall(C)' 2>/dev/null || true) + 0))
        failed=$((failed + $(csv_col "$i" 'FailedCall(C)' 2>/dev/null || true) + 0))
    done
    gwset "regfix_rate" "$REG_RATE"
    gwset "regfix_sent" $((REG_RATE / REG_SIPPS * REG_SIPPS * REG_RATE_SECS))
    gwset "regfix_${tag}_cpu_us" $((c1 - c0))
    gwset "regfix_${tag}_secs" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
    gwset "regfix_${tag}_ok" "$ok"
    gwset "regfix_${tag}_failed" "$failed"
    log "REGISTER at $REG_RATE/s ($tag): CPU $((c1 - c0)) µs, $ok ok"
}

# F7 through TARGET: register the callees from the UAS's port, run the UAS, then the callers
# at CALL_RATE/s (CPU from /proc) and at saturation (CALL_SIPPS × CALL_IN_FLIGHT).
# measure_calls TAG TARGET PID CHILDREN(0/1)
measure_calls() {
    local tag=$1 target=$2 pid=$3 children=$4 uport uas i c0 c1 rc=0 SIPP_PID
    local cflag=; [[ $children == 1 ]] && cflag=--children
    uport=$("$BENCH" free-port --udp)
    mkdir -p "$GW/sipp/uasreg-$tag"
    (cd "$GW/sipp/uasreg-$tag" && timeout 60 "$SIPP" "$target" -i 127.0.0.1 -nostdin -buff_size "$SIPP_BUF" -trace_err \
        -sf "$BENCH_DIR/sipp/register_auth.xml" -inf "$GW/sip/callees.csv" -p "$uport" -r 1000 -m 2000 >out.txt 2>&1) ||
        die "registering the F7 callees at $tag failed; see $GW/sipp/uasreg-$tag"
    sipp_bg "uas-$tag" "$target" -sf "$BENCH_DIR/sipp/uas_answer.xml" -p "$uport" -mp "$("$BENCH" free-port --udp)"
    uas=$SIPP_PID
    sleep 0.5
    # Fixed rate.
    c0=$(kv cpu_us <("$BENCH" cpu --pid "$pid" $cflag))
    mkdir -p "$GW/sipp/callfix-$tag"
    (cd "$GW/sipp/callfix-$tag" && timeout $((CALL_RATE_SECS * 3 + 30)) "$SIPP" "$target" -i 127.0.0.1 -nostdin -buff_size "$SIPP_BUF" -trace_err \
        -sf "$BENCH_DIR/sipp/uac_call.xml" -inf "$GW/sip/callers.csv" -p "$("$BENCH" free-port --udp)" \
        -mp "$("$BENCH" free-port --udp)" -r "$CALL_RATE" -m $((CALL_RATE * CALL_RATE_SECS)) -d "$CALL_HOLD_MS" \
        -recv_timeout 5000 -trace_stat -stf stat.csv -fd 1 >out.txt 2>&1) || rc=$?
    c1=$(kv cpu_us <("$BENCH" cpu --pid "$pid" $cflag))
    (( rc == 0 || rc == 1 )) || log "warning: sipp (fixed-rate F7, $tag) exited with $rc"
    "$BENCH" sipp-rate --skip 1 --secs $((CALL_RATE_SECS - 1)) "$GW/sipp/callfix-$tag/stat.csv" >"$GW/callfix-$tag.kv" || die "no sipp statistics in $GW/sipp/callfix-$tag"
    gwkv "callfix_$tag" "$GW/callfix-$tag.kv"
    gwset "callfix_${tag}_ok" "$(kv successful "$GW/callfix-$tag.kv")"
    gwset "callfix_${tag}_cpu_us" $((c1 - c0))
    log "F7 at $CALL_RATE/s ($tag): CPU $((c1 - c0)) µs; $(tr '\n' ' ' <"$GW/callfix-$tag.kv")"
    # Saturation: each UAC its own share of the caller/callee pairs (a number in a call is busy).
    for i in $(seq "$CALL_SIPPS"); do
        awk -v k="$CALL_SIPPS" -v i="$i" 'NR == 1 || (NR - 2) % k == i - 1' "$GW/sip/callers.csv" >"$GW/sip/callers-$i.csv"
    done
    saturate "callsat_$tag" "$CALL_IN_FLIGHT" "$target" "$pid" "$cflag" "$CALL_SIPPS" "$CALL_SECS" \
        "$BENCH_DIR/sipp/uac_call.xml" "$GW/sip/callers" -d "$CALL_HOLD_MS"
    stop_pid "$uas"
}

run_gateway() {
    mkdir -p "$GW/sip" "$GW/sipp"
    : >"$GWKV"
    local setup_hq_last=$((20000 + 3 * SETUP_CALLS - 1)) setup_br_last=$((30000 + SETUP_CALLS - 1))
    local media_max media_last
    media_max=$(tr ',' '\n' <<<"$MEDIA_STEPS" | sort -n | tail -n1)
    media_last=$((40000 + media_max - 1))
    # mediacpu: callers 40000.., callees 40000+max(MEDIACPU_STEPS)..
    if gw_wants mediacpu; then
        local mcpu_max
        mcpu_max=$(tr ',' '\n' <<<"$MEDIACPU_STEPS" | sort -n | tail -n1)
        (( 40000 + 2 * mcpu_max - 1 > media_last )) && media_last=$((40000 + 2 * mcpu_max - 1))
    fi
    # mediawebrtc: callees 43000.. (numbers no other part registered: a second contact on a
    # number would make the gateway fork to a dead address).
    if gw_wants mediawebrtc; then
        local mw_max
        mw_max=$(tr ',' '\n' <<<"$MEDIAWEBRTC_STEPS" | sort -n | tail -n1)
        (( 43000 + mw_max - 1 > media_last )) && media_last=$((43000 + mw_max - 1))
    fi
    # The signal server (a database of its own), provisioned over the admin API.
    GW_SPORT=$("$BENCH" free-port)
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$GW/admin.token"
    cat >"$GW/signal-server.toml" <<EOT
listen = "127.0.0.1:$GW_SPORT"
database_url = "sqlite://$GW/cloud.db"
web_root = "$GW/no-web-app"
public_url = "http://127.0.0.1:$GW_SPORT"
admin_token_file = "$GW/admin.token"

[auth]
password_hash_memory_kib = 64
password_hash_iterations = 1

[limits]
max_connections = 100000
max_unauthenticated_per_address = 100000
# The bench's browsers place thousands of calls over a few connections.
messages_per_second = 1000000
max_calls_per_device = 100000
EOT
    RUST_LOG=warn "$SERVER" run --config "$GW/signal-server.toml" >"$GW/signal-server.log" 2>&1 &
    local spid=$!
    PIDS+=("$spid")
    for _ in $(seq 300); do
        kill -0 "$spid" 2>/dev/null || die "signal-server exited; see $GW/signal-server.log"
        if (exec 3<>"/dev/tcp/127.0.0.1/$GW_SPORT" &&
            printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
            timeout 2 cat <&3) 2>/dev/null | grep -q '^ok'; then break; fi
        sleep 0.1
    done
    log "gateway phase: provisioning hq (1000-5999, 20000-$setup_hq_last, 40000-$media_last), br (30000-$setup_br_last), browsers"
    timeout 600 "$BENCH" gw-provision --addr "127.0.0.1:$GW_SPORT" --token-file "$GW/admin.token" --switch-secret "$GW_SECRET" \
        --hq "1000-5999,20000-$setup_hq_last,40000-$media_last" --br "30000-$setup_br_last" --browsers 50000-50031 \
        --browser-password "$GW_BROWSER_PW" >"$GW/provision.kv" || die "gateway provisioning failed"
    log "provisioned: $(tr '\n' ' ' <"$GW/provision.kv")"
    "$BENCH" sip-files --dir "$GW/sip" --users 1000-1999 --callers 2000-3999 --callees 4000-5999 --parts "$REG_SIPPS" >/dev/null ||
        die "cannot write the sipp/Kamailio files"
    gwset call_callers 2000-3999
    gwset call_callees 4000-5999
    gwset call_hold_ms "$CALL_HOLD_MS"
    gwset callfix_rate "$CALL_RATE"
    gwset reg_secs "$REG_SECS"
    gwset reg_warmup_secs "$REG_WARMUP"
    gwset call_secs "$CALL_SECS"

    start_gateway hq 21000-28999
    local hq_pid=$GW_PID hq_sip=$GW_SIP
    start_gateway br 29000-29999
    local br_sip=$GW_SIP
    wait_phones hq "$media_last"
    wait_phones br "$setup_br_last"
    log "gateways hq (SIP $hq_sip, pid $hq_pid) and br (SIP $br_sip) have their phones"

    # Kamailio: registrar + proxy with the same users' HA1s.
    local kdir=$GW/kamailio kport kpid
    mkdir -p "$kdir"
    cp "$BENCH_DIR/kamailio/proxy.cfg" "$GW/sip/credentials.cfg" "$kdir/"
    if gw_wants register || gw_wants calls; then
        kport=$("$BENCH" free-port --udp)
        "$KAMAILIO" -DD -E -f "$kdir/proxy.cfg" -l "udp:127.0.0.1:$kport" -w "$kdir" -m 1024 -M 64 >"$kdir/kamailio.log" 2>&1 &
        kpid=$!
        PIDS+=("$kpid")
        sleep 1.5
        kill -0 "$kpid" 2>/dev/null || die "Kamailio exited; see $kdir/kamailio.log"
        gwset kam_processes "$(kv processes <("$BENCH" processes --pid "$kpid"))"
    fi
    if gw_wants register; then
        measure_register gw "$hq_sip" "$hq_pid" 0
        measure_register kam "127.0.0.1:$kport" "$kpid" 1
    fi
    if gw_wants calls; then
        measure_calls gw "$hq_sip" "$hq_pid" 0
        measure_calls kam "127.0.0.1:$kport" "$kpid" 1
    fi
    [[ -n ${kpid:-} ]] && stop_pid "$kpid"

    if gw_wants setup; then
        log "call setup times: F1, F2, F3 × $SETUP_CALLS calls, $SETUP_CONCURRENCY at a time"
        timeout 600 "$BENCH" setup-times --server "ws://127.0.0.1:$GW_SPORT/ws" --hq-sip "$hq_sip" --br-sip "$br_sip" \
            --calls "$SETUP_CALLS" --concurrency "$SETUP_CONCURRENCY" --hq-first 20000 --br-first 30000 \
            --browser-first 50000 --browser-password "$GW_BROWSER_PW" >"$GW/setup.kv" || log "warning: setup-times failed"
        gwkv setup "$GW/setup.kv"
    fi
    if gw_wants media; then
        log "concurrent bridged calls: steps $MEDIA_STEPS, ${MEDIA_SECS}s each"
        timeout 900 "$BENCH" media-ramp --server "ws://127.0.0.1:$GW_SPORT/ws" --gateway-sip "$hq_sip" --gateway-pid "$hq_pid" \
            --browser-first 50016 --browsers 8 --browser-password "$GW_BROWSER_PW" --phone-first 40000 \
            --steps "$MEDIA_STEPS" --secs "$MEDIA_SECS" --max-secs "$MEDIA_MAX_SECS" >"$GW/media.kv" || log "warning: media-ramp failed"
        gwkv media "$GW/media.kv"
    fi
    if gw_wants mediacpu; then
        measure_mediacpu "$hq_sip" "$hq_pid"
    fi
    if gw_wants mediawebrtc; then
        measure_mediawebrtc "$hq_sip" "$hq_pid"
    fi
    for p in "$spid" "$hq_pid" "$GW_PID"; do stop_pid "$p"; done
}

# Start rtpengine for a media CPU part (userspace forwarding only: --table=-1, no kernel module);
# sets RTE_PID and RTE_ARGS (the bench's --rtpengine-* arguments; empty when it cannot run).
# start_rtpengine PART
start_rtpengine() {
    local part=$1 ng rtpengine
    RTE_PID= RTE_ARGS=()
    rtpengine=${RTPENGINE_BIN:-$(command -v rtpengine || echo /usr/bin/rtpengine)}
    if [[ -x $rtpengine ]]; then
        ng=$("$BENCH" free-port --udp)
        "$rtpengine" --foreground --log-stderr --config-file=none --table=-1 --interface=127.0.0.1 \
            --listen-ng="127.0.0.1:$ng" --port-min=10000 --port-max=19999 --log-level=4 --delete-delay=0 \
            >"$GW/rtpengine-$part.log" 2>&1 &
        RTE_PID=$!
        PIDS+=("$RTE_PID")
        sleep 1
        if kill -0 "$RTE_PID" 2>/dev/null; then
            RTE_ARGS=(--rtpengine-ng "127.0.0.1:$ng" --rtpengine-pid "$RTE_PID")
            gwset "${part}_rtpengine_version" "$("$rtpengine" --version 2>&1 | sed -n 's/^Version: //p' | head -n1)"
        else
            log "rtpengine exited at start (see $GW/rtpengine-$part.log); $part measures the gateway alone"
            RTE_PID=
        fi
    else
        log "rtpengine is not installed; $part measures the gateway alone"
    fi
}

# Plain RTP ⇄ RTP relaying, CPU per forwarded packet: the gateway's F7 relay (hq) and rtpengine
# (userspace only: --table=-1, no kernel module) carry the same streams in turn, the load
# generator pinned to core 0 and the relay under test to core 1 (bench/src/mediacpu.rs).
# measure_mediacpu GATEWAY_SIP GATEWAY_PID
measure_mediacpu() {
    local sip=$1 gpid=$2
    start_rtpengine mediacpu
    log "media CPU per packet: plain RTP relay, steps $MEDIACPU_STEPS calls, ${MEDIACPU_SECS}s each, gateway then rtpengine"
    timeout $((2 * MEDIACPU_MAX_SECS + 300)) "$BENCH" media-cpu --gateway-sip "$sip" --gateway-pid "$gpid" "${RTE_ARGS[@]}" \
        --phone-first 40000 --steps "$MEDIACPU_STEPS" --secs "$MEDIACPU_SECS" --max-secs "$MEDIACPU_MAX_SECS" \
        --generator-cpu 0 --relay-cpu 1 >"$GW/mediacpu.kv" 2>"$GW/mediacpu.err" ||
        log "warning: media-cpu failed: $(tail -n1 "$GW/mediacpu.err")"
    gwkv mediacpu "$GW/mediacpu.kv"
    [[ -n $RTE_PID ]] && stop_pid "$RTE_PID"
    log "mediacpu: $(grep -E '_(max_calls_zero_loss|cpu_us_per_pkt|pps_per_core|stop)=' "$GW/mediacpu.kv" | tr '\n' ' ')"
}

# WebRTC (ICE, DTLS-SRTP) ⇄ RTP bridging, CPU per forwarded packet: the gateway's F1 bridge (hq;
# real F1 calls through the signal server, browsers 50024..50031, desk phones 43000..) and
# rtpengine (ICE=force DTLS=passive SDES-off towards the WebRTC side), the same streams in turn,
# the generator on core 0 and the bridge under test on core 1 (bench/src/mediawebrtc.rs).
# measure_mediawebrtc GATEWAY_SIP GATEWAY_PID
measure_mediawebrtc() {
    local sip=$1 gpid=$2
    start_rtpengine mediawebrtc
    log "media CPU per packet: WebRTC ⇄ RTP bridge, steps $MEDIAWEBRTC_STEPS calls, ${MEDIAWEBRTC_SECS}s each, gateway then rtpengine"
    timeout $((2 * MEDIAWEBRTC_MAX_SECS + 300)) "$BENCH" media-webrtc --server "ws://127.0.0.1:$GW_SPORT/ws" \
        --gateway-sip "$sip" --gateway-pid "$gpid" "${RTE_ARGS[@]}" --browser-first 50024 --browsers 8 \
        --browser-password "$GW_BROWSER_PW" --phone-first 43000 --steps "$MEDIAWEBRTC_STEPS" --secs "$MEDIAWEBRTC_SECS" \
        --max-secs "$MEDIAWEBRTC_MAX_SECS" --generator-cpu 0 --relay-cpu 1 >"$GW/mediawebrtc.kv" 2>"$GW/mediawebrtc.err" ||
        log "warning: media-webrtc failed: $(tail -n1 "$GW/mediawebrtc.err")"
    gwkv mediawebrtc "$GW/mediawebrtc.kv"
    [[ -n $RTE_PID ]] && stop_pid "$RTE_PID"
    log "mediawebrtc: $(grep -E '_(max_calls_zero_loss|cpu_us_per_pkt|calls_per_core|stop)=' "$GW/mediawebrtc.kv" | tr '\n' ' ')"
}

# ------------------------------------------------------------------ run, report
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
wants kamailio && run_kamailio
if wants rate || wants saturate || wants idle; then run_server; fi
wants cluster && run_cluster
wants gateway && run_gateway
# The browser softphone: release wasm size and time to interactive (headless Chromium).
if wants web && [[ -x $ROOT/web/build.sh ]]; then
    log "browser softphone: release build and time to interactive"
    if "$ROOT/web/setup.sh" >"$TMP/web-setup.log" 2>&1 && "$ROOT/web/build.sh" >"$TMP/web-build.log" 2>&1; then
        sizes=$(grep -o '[0-9]* bytes raw, [0-9]* bytes gzip' "$TMP/web-build.log" | tail -n1)
        echo "wasm_raw=$(echo "$sizes" | awk '{print $1}')" >"$TMP/web.kv"
        echo "wasm_gzip=$(echo "$sizes" | awk '{print $4}')" >>"$TMP/web.kv"
        if SKIP_WEB_BUILD=1 "$ROOT/web/e2e/run.sh" "sign in" >"$TMP/web-tti.log" 2>&1; then
            tti=$(sed -n 's/.*"time_to_interactive_ms":{"median":\([0-9]*\).*/\1/p' "$TMP/web-tti.log" | tail -n1)
            [[ -n $tti ]] && echo "tti_ms=$tti" >>"$TMP/web.kv"
        fi
    else
        log "web build failed (see $TMP/web-build.log)"
    fi
fi

if wants natlab; then
    if [[ $(id -u) -eq 0 && -f $ROOT/dist/index.html && -d $ROOT/web/e2e/node_modules/playwright-core ]]; then
        log "calls across the NAT lab: dial → first audio, $NATLAB_CALLS calls per scenario (headless Chromium)"
        NATLAB_BENCH_KV="$TMP/natlab.kv" "$ROOT/natlab/e2e/run.sh" --bench "$NATLAB_CALLS" >"$TMP/natlab.log" 2>&1 \
            || log "NAT lab benchmark failed (see $TMP/natlab.log)"
    else
        log "NAT lab benchmark skipped: needs root, the built softphone (web phase) and web/setup.sh"
    fi
fi

args=()
for m in saturate rate idle kamailio gateway web natlab cluster; do
    [[ -f $TMP/$m.kv ]] && args+=("--$m" "$TMP/$m.kv")
done
mkdir -p "$(dirname "$OUT")"
{
    "$BENCH" table "${args[@]}"
    echo "- load average before the run: $LOADAVG (anything else running on the machine skews these numbers)"
    echo "- versions: Trunkline $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), $("$KAMAILIO" -v 2>/dev/null | sed -n 's/^version: kamailio \([0-9.]*\).*/Kamailio \1/p' | head -n1), $("$SIPP" -v 2>/dev/null | grep -o 'SIPp v[0-9.]*' | head -n1)"
} | tee "$OUT"
log "saved to $OUT"
