#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that takes network input (see fuzz/README.md).
#
#   fuzz/run.sh [SECONDS] [TARGET...]   fuzz each target (default: all) for SECONDS (default 60), one
#                                       after the other; record each run in fuzz/results.tsv
#   fuzz/run.sh --smoke                 build everything, ~10 s per target, record nothing
#                                       (what `./trunkline test` runs; fuzz/smoke.sh is the same)
#   fuzz/run.sh --update-corpus ...     afterwards, merge new coverage into fuzz/corpus/<target>
#   fuzz/run.sh --build-only            only build the targets (`./trunkline test` does this early,
#                                       in the background)
#
# Prints a table (target, runs, seconds, crashes) and, from the whole ledger fuzz/results.tsv,
# one `FIGURE fuzz_seconds_<target> ...` line per target. A crash input is copied to
# fuzz/regressions/<target>/ (replayed by `cargo test` from then on) and the script exits 1.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR"
ALL_TARGETS=(sip_message sip_digest sdp protocol stun rtp_rtcp)

smoke=0
update_corpus=0
build_only=0
secs=60
targets=()
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=1 ;;
        --update-corpus) update_corpus=1 ;;
        --build-only) build_only=1 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        '' | *[!0-9]*)
            if [[ " ${ALL_TARGETS[*]} " == *" $arg "* ]]; then targets+=("$arg"); else
                echo "run.sh: unknown target or option '$arg' (targets: ${ALL_TARGETS[*]})" >&2; exit 2
            fi ;;
        *) secs="$arg" ;;
    esac
done
[[ $smoke == 1 ]] && secs="${FUZZ_SMOKE_SECS:-10}"
[[ ${#targets[@]} == 0 ]] && targets=("${ALL_TARGETS[@]}")

# cargo-fuzz drives nightly-only rustc flags (-Zsanitizer, sancov passes); RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them, so no nightly is needed.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2
fi

# Release build with debug assertions (so integer overflow panics, as in `cargo test`), no
# sanitizer: our crates have no `unsafe` (the bugs to find are panics, which libFuzzer catches
# anyway), and ASan would double the build time of the smoke.
build_start=$SECONDS
TARGET_DIR="${CARGO_TARGET_DIR:-$FUZZ_DIR/target}"
cargo fuzz build -O --debug-assertions --sanitizer none --target-dir "$TARGET_DIR" >&2
build_secs=$((SECONDS - build_start))
BIN="$TARGET_DIR/x86_64-unknown-linux-gnu/release"
[[ $build_only == 1 ]] && { echo "run.sh: built in ${build_secs} s ($BIN)" >&2; exit 0; }

rows=()
failed=0
for t in "${targets[@]}"; do
    work="$FUZZ_DIR/target/work/$t"     # grows freely; fuzz/corpus/<t> stays the small committed seed set
    art="$FUZZ_DIR/artifacts/$t"
    log="$FUZZ_DIR/target/work/$t.log"
    mkdir -p "$work" "$art" "corpus/$t" "regressions/$t"
    before=$(find "$art" -type f | sort)
    start=$SECONDS
    set +e
    "$BIN/$t" "$work" "corpus/$t" "regressions/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$art/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$((SECONDS - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=${execs:-0}
    crashes=0
    for f in $(comm -13 <(echo "$before") <(find "$art" -type f | sort)); do
        crashes=$((crashes + 1))
        cp "$f" "regressions/$t/$(basename "$f")"
        echo "run.sh: $t: crash input saved as fuzz/regressions/$t/$(basename "$f")" >&2
    done
    if [[ $rc != 0 && $crashes == 0 ]]; then crashes=1; fi  # died without an artifact: still a failure
    if [[ $crashes != 0 ]]; then
        failed=1
        grep -A12 -E "panicked|ERROR: libFuzzer" "$log" | head -40 >&2 || true
    fi
    if [[ $update_corpus == 1 && $crashes == 0 ]]; then
        # Add a small set of inputs covering the edges the committed corpus does not reach yet
        # (edges, not hit counts, and a set cover rather than every input that added one).
        "$BIN/$t" -set_cover_merge=1 -use_counters=0 -use_value_profile=0 "corpus/$t" "$work" >>"$log" 2>&1 || true
    fi
    if [[ $smoke == 0 ]]; then
        printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$elapsed" "$execs" "$crashes" >>results.tsv
    fi
    rows+=("$(printf '%-12s %12s %8s %8s' "$t" "$execs" "$elapsed" "$crashes")")
done

echo
printf '%-12s %12s %8s %8s\n' target runs seconds crashes
printf '%s\n' "${rows[@]}"
echo "(build ${build_secs} s; $([[ $smoke == 1 ]] && echo "smoke, not recorded" || echo "recorded in fuzz/results.tsv"))"

# The figure: total fuzzing time per target over the whole ledger, and crashes in it.
if [[ -f results.tsv ]]; then
    for t in "${ALL_TARGETS[@]}"; do
        awk -F'\t' -v t="$t" '$1 == t { s += $3; c += $5; n += $4 } END {
            if (s > 0) printf "FIGURE fuzz_seconds_%s %d s | libFuzzer time on %s over fuzz/results.tsv (%.2f h, %d execs), %d crashes\n", t, s, t, s / 3600, n, c
        }' results.tsv >&2
    done
fi
exit $failed
