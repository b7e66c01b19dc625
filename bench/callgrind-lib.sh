# bench/callgrind-lib.sh — sourced by bench/callgrind.sh (steering) and
# bench/callgrind-register.sh (registrar): the process bookkeeping, reading callgrind's dumps,
# and Kamailio's instructions (callgrind Ir, all its processes) per SIP job, for the same job
# as the Trunkline figure beside it.
#
# The sourcing script sets TMP (its temporary folder), PIDS=() and log()/die() first.

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

# last_ir OUT: Ir of the newest dump of OUT.* (its "summary:" / "totals:" line).
last_ir() {
    local f
    f=$(ls -t "$1".* | head -n1)
    awk '/^(summary|totals):/ { print $2; exit }' "$f"
}

# top_functions FILE N TOP: the TOP functions of a dump, inclusive, as Ir per job (Ir / N),
# with thread and runtime frames left out.
top_functions() {
    callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
        awk -v n="$2" -v top="$3" '
            /^-+$/ { sep++; next }
            sep >= 3 && $1 ~ /^[0-9,]+$/ {
                ir = $1; gsub(",", "", ir); line = $0
                sub(/^ *[0-9,]+ *(\( *[0-9.]+%\))? */, "", line)
                if (line !~ /\[/) next
                sub(/ *\[[^]]*\]$/, "", line)
                if (line ~ /PROGRAM TOTALS|clone\.S|pthread_create|thread_start|call_once|__rust_begin_short_backtrace|tokio::runtime::|on_upgrade|PollFn/) next
                sub(/\/root\/\.cargo\/registry\/src\/[^\/]*\//, "", line)
                # Read to the end (no early exit: a closed pipe would fail the script).
                if (k < top) printf "%10.0f  %s\n", ir / n, substr(line, 1, 150); k++
            }'
}

# measure_jobs PID OUT WARM-UP WHAT: the process PID under callgrind (dumps OUT.*): WARM-UP jobs,
# counters zeroed, N1 jobs, a dump, N2 jobs, a dump, each through the caller's `load N`. Start
# and sign-in cost the same in both runs, so (Ir(N2) − Ir(N1)) / (N2 − N1) is one job. Prints
# it (ir_per_WHAT) and the top functions of the second run (TOP); sets PER to it.
measure_jobs() {
    local pid=$1 out=$2 warm=$3 what=$4 ir1 ir2 f2
    log "warm-up"
    load "$warm"
    callgrind_control -z "$pid" >/dev/null
    log "run 1: $N1 ${what}s"
    load "$N1"
    callgrind_control -d "run1" "$pid" >/dev/null
    ir1=$(last_ir "$out")
    log "run 2: $N2 ${what}s"
    load "$N2"
    callgrind_control -d "run2" "$pid" >/dev/null
    f2=$(ls -t "$out".* | head -n1)
    ir2=$(last_ir "$out")
    stop_pid "$pid"
    PER=$(awk -v a="$ir1" -v b="$ir2" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.0f", (b - a) / (n2 - n1) }')
    echo "ir_run1=$ir1 ${what}s_run1=$N1"
    echo "ir_run2=$ir2 ${what}s_run2=$N2"
    echo "ir_per_${what}=$PER"
    echo
    echo "Top $TOP functions, inclusive, run 2 (Ir per $what = Ir / $N2; thread and runtime frames left out):"
    top_functions "$f2" "$N2" "$TOP"
}

# ---- Kamailio under callgrind
#
# Kamailio forks its workers, so the counters cannot be zeroed on one process as ours are.
# Instead Kamailio runs twice under `valgrind --tool=callgrind --trace-children=yes`, each
# time from start to SIGTERM, once with N1 and once with N2 jobs after the same warm-up; start,
# warm-up and shutdown cost the same in both, so (Ir(N2) − Ir(N1)) / (N2 − N1) is one job. Its
# timer processes tick while idle, but that costs ~20,000 Ir a second, far below the noise here.
#
# Needs: kamailio, sipp, valgrind; $BENCH (trunkline-bench, for free ports), log(), die().

# kamailio_ir_total CFG DIR N SETUP LOAD: runs Kamailio with CFG (and the shared/private
# memory sizes of bench/run.sh for it, KAM_MEM, e.g. "-m 1024 -M 64") under callgrind in DIR,
# calls `SETUP PORT DIR` once (e.g. a registration) and `LOAD PORT DIR N`, then stops it and
# prints the Ir of all its processes. SETUP and LOAD must fail unless every job succeeded.
kamailio_ir_total() {
    local cfg=$1 dir=$2 n=$3 setup=$4 load=$5 port kpid f v total=0
    local kamailio
    kamailio=$(command -v kamailio || echo /usr/sbin/kamailio)
    [[ -x $kamailio ]] || die "kamailio is not installed (apt-get install kamailio)"
    mkdir -p "$dir"
    port=$("$BENCH" free-port --udp)
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$dir/cg.%p" --dump-instr=no \
        "$kamailio" -DD -E -f "$cfg" -l "udp:127.0.0.1:$port" -w "$dir" ${KAM_MEM:?} >"$dir/kamailio.log" 2>&1 &
    kpid=$!
    PIDS+=("$kpid")
    # (In a command substitution the caller's EXIT trap does not run: stop it before dying.)
    "$setup" "$port" "$dir" || { stop_pid "$kpid"; die "Kamailio under callgrind: set-up failed; see $dir"; }
    "$load" "$port" "$dir" "$n" || { stop_pid "$kpid"; die "Kamailio under callgrind: load of $n failed; see $dir"; }
    stop_pid "$kpid"
    for f in "$dir"/cg.*; do
        v=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# kamailio_ir_per_job CFG DIR N1 N2 SETUP LOAD: prints Ir per job (see above), the median of
# KAM_RUNS (3) pairs of runs. One pair's figure moves by −10 to +45 % from pair to pair (how the jobs
# fall on Kamailio's two UDP workers, what its shared-memory allocator does), ours by < 1 %.
kamailio_ir_per_job() {
    local cfg=$1 dir=$2 n1=$3 n2=$4 setup=$5 load=$6 a b r all=()
    for r in $(seq "${KAM_RUNS:-3}"); do
        log "Kamailio under callgrind, pair $r: $n1 jobs"
        a=$(kamailio_ir_total "$cfg" "$dir/r$r-n1" "$n1" "$setup" "$load")
        log "Kamailio under callgrind, pair $r: $n2 jobs"
        b=$(kamailio_ir_total "$cfg" "$dir/r$r-n2" "$n2" "$setup" "$load")
        all+=("$(awk -v a="$a" -v b="$b" -v n1="$n1" -v n2="$n2" 'BEGIN { printf "%.0f", (b - a) / (n2 - n1) }')")
    done
    log "Kamailio Ir per job, each pair: ${all[*]}"
    printf '%s\n' "${all[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# sipp_all_ok DIR N: true when sipp's statistics in DIR/stat.csv count N successful calls.
sipp_all_ok() {
    local ok
    ok=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "SuccessfulCall(C)") c = i } END { print $c }' "$1/stat.csv" 2>/dev/null)
    [[ ${ok:-0} -eq $2 ]] || { log "$ok of $2 calls succeeded; see $1"; return 1; }
}
