#!/usr/bin/env bash
# bench/callgrind-bridge.sh — instructions (callgrind Ir) per packet the WebRTC ⇄ RTP bridge
# forwards, and where they go.
#
# CPU per packet on a shared 2-core machine moves by ±20 % from run to run (rtpengine's too);
# instruction counts do not (runs of one binary agree within 1 %). This runs
# `bench/run.sh`'s bridge phase (`ONLY=gateway GW_PARTS=mediawebrtc`) with the `hq` gateway
# under `valgrind --tool=callgrind` and CALLS bridged calls (the bench's str0m browsers and
# desk phones: 50 packets a second each way per call). Once the calls are set up and have run
# for SETTLE seconds, the counters are zeroed; WINDOW seconds later they are dumped. The
# window's Ir ÷ (CALLS × 100 × its length) is one forwarded packet. User space only: the
# kernel's part (the `sendto`/`recvfrom` of each packet, about 60 % of the gateway's CPU at
# 1,000 calls) is not in these figures.
#
# PEER=rtpengine counts rtpengine instead, doing the same job in the same phase (the bench's
# `ICE=force`, `DTLS=passive`, `SDES-off` offers; userspace forwarding): the two counts side by
# side say what each one's own code costs per packet, without the kernel both pay for.
#
# Knobs: PEER (gateway or rtpengine), CALLS (10, which the gateway keeps up with under
# callgrind), SETTLE (5 s), WINDOW (20 s), TOP (25 functions, inclusive), GATEWAY_BIN (the
# gateway binary, default the release build: e.g. a copy kept from before a change),
# RTPENGINE_BIN (default the installed one), SKIP_BUILD=1 (as for run.sh). Prints the Ir per
# packet and keeps the dump (callgrind_annotate it for more).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
CALLS=${CALLS:-10}
SETTLE=${SETTLE:-5}
WINDOW=${WINDOW:-20}
TOP=${TOP:-25}
PEER=${PEER:-gateway}
[[ $PEER == gateway || $PEER == rtpengine ]] || { echo "callgrind-bridge.sh: PEER is gateway or rtpengine" >&2; exit 2; }

log() { printf 'callgrind-bridge.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v valgrind >/dev/null || die "valgrind is not installed"
command -v callgrind_control >/dev/null || die "callgrind_control is not installed (valgrind)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/trunkline-callgrind-bridge.XXXXXX")
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building the release binaries"
    (cd "$ROOT" && cargo build --release --locked -p trunkline-signal-server -p trunkline-switch-gateway -p trunkline-bench)
fi
REAL_GW=${GATEWAY_BIN:-$ROOT/target/release/switch-gateway}
[[ -x $REAL_GW ]] || die "no gateway binary at $REAL_GW"

# run.sh starts both gateways with GATEWAY_BIN; only hq carries the bridged calls. exec keeps
# the PID, which the wrapper leaves for us. run.sh asks rtpengine for its version too (not
# counted) and starts the daemon (`--foreground`) once, for the bridge part.
if [[ $PEER == gateway ]]; then
    cat >"$TMP/gateway" <<EOT
#!/usr/bin/env bash
case "\$*" in
  *hq.toml*) echo \$\$ >"$TMP/peer.pid"
             exec valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.%p" "$REAL_GW" "\$@" ;;
  *) exec "$REAL_GW" "\$@" ;;
esac
EOT
    chmod +x "$TMP/gateway"
    export GATEWAY_BIN="$TMP/gateway"
    what="hq gateway"; prefix="mediawebrtc gw"
else
    REAL_RTE=${RTPENGINE_BIN:-$(command -v rtpengine || echo /usr/bin/rtpengine)}
    [[ -x $REAL_RTE ]] || die "rtpengine is not installed (apt-get install rtpengine-daemon)"
    cat >"$TMP/rtpengine" <<EOT
#!/usr/bin/env bash
case "\$*" in
  *--foreground*) echo \$\$ >"$TMP/peer.pid"
                  exec valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.%p" "$REAL_RTE" "\$@" ;;
  *) exec "$REAL_RTE" "\$@" ;;
esac
EOT
    chmod +x "$TMP/rtpengine"
    export RTPENGINE_BIN="$TMP/rtpengine" GATEWAY_BIN=$REAL_GW
    what="rtpengine"; prefix="mediawebrtc rte"
fi

log "bridge phase with $what under callgrind: $CALLS calls, ${WINDOW}s window after ${SETTLE}s"
SKIP_BUILD=1 ONLY=gateway GW_PARTS=mediawebrtc MEDIAWEBRTC_STEPS="$CALLS" \
    MEDIAWEBRTC_SECS=$((SETTLE + WINDOW + 15)) MEDIAWEBRTC_MAX_SECS=$((SETTLE + WINDOW + 120)) \
    OUT="$TMP/partial.md" "$BENCH_DIR/run.sh" >"$TMP/run.log" 2>&1 &
RUN=$!
trap 'kill "$RUN" 2>/dev/null || true' EXIT

# The generator says when the step's calls are up (run.sh's gateway directory is its own).
err=
for _ in $(seq 900); do
    err=$(ls -t "${TMPDIR:-/tmp}"/trunkline-bench.*/gw/mediawebrtc.err 2>/dev/null | head -n1 || true)
    [[ -n $err && -s $TMP/peer.pid ]] && grep -q "$prefix: calls .* set up in" "$err" && break
    kill -0 "$RUN" 2>/dev/null || die "run.sh ended before the calls were up; see $TMP/run.log"
    sleep 1
done
grep -q "$prefix: calls .* set up in" "$err" 2>/dev/null || die "the calls were not set up in 15 minutes; see $TMP/run.log"
pid=$(cat "$TMP/peer.pid")
log "$(grep "$prefix: calls .* set up in" "$err" | tail -n1); $what pid $pid"
sleep "$SETTLE"
callgrind_control -z "$pid" >/dev/null
t1=$(date +%s.%N)
sleep "$WINDOW"
callgrind_control -d "$pid" >/dev/null
t2=$(date +%s.%N)
for _ in $(seq 50); do
    dump=$(ls -t "$TMP"/callgrind."$pid"* 2>/dev/null | grep -v '\.pid$' | head -n1 || true)
    [[ -n $dump ]] && grep -q '^totals:\|^summary:' "$dump" && break
    sleep 0.2
done
ir=$(grep -m1 '^totals:\|^summary:' "$dump" | awk '{print $2}')
wait "$RUN" || log "run.sh exited non-zero; see $TMP/run.log"
trap - EXIT
grep -h "mediawebrtc:" "$TMP/run.log" | sed 's/^run.sh: /  bench: /' >&2 || true
awk -v ir="$ir" -v t1="$t1" -v t2="$t2" -v calls="$CALLS" 'BEGIN {
    secs = t2 - t1; pkts = calls * 100 * secs
    printf "Ir per forwarded packet: %.0f (%d Ir over %.2f s, %d calls ≈ %.0f packets)\n", ir / pkts, ir, secs, calls, pkts
}'
echo "top functions, inclusive (the dump: $dump):"
# Without the frames every sample sits under (the thread, tokio's worker and task harness).
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed 1d |
    grep -vE 'clone\.S|pthread_create|/rustc/|tokio-[0-9.]+/src/runtime/(context|blocking|task|scheduler/multi_thread/worker)' |
    head -n "$TOP" | cut -c1-200
