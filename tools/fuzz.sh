#!/usr/bin/env bash
# fuzz.sh: builds sdc's libFuzzer targets (tests/fuzz/fuzz_*.c, the whole
# library compiled by clang with -fsanitize=fuzzer-no-link,address,undefined:
# CMake option SDC_FUZZ) and runs one of them, or each in turn, for a bounded
# time under `nice -n 19`.
#   tools/fuzz.sh [seconds=60] [jobs=1] [target=safetensors]
# Targets (docs/fuzzing.md): safetensors, image, sched, json_config,
# manifest_text, manifest_bin, tokenizer, lora, h5_dataset, h5_ckpt,
# h5_genout, and h5s_dataset, h5s_ckpt, h5s_genout (the same readers,
# structure-aware: the input is a program that builds a valid HDF5 file,
# tests/fuzz/fuzz_h5_build.h); `all` runs each for SECONDS.
# The corpus of a target starts from its seeds (tests/fuzz/seeds/<target>/,
# made by tools/make_fuzz_seeds.py and tests/fuzz/make_fuzz_seeds.c; the
# image and sched targets use tests/fixtures/images and /sched) and grows in
# $OUT/<target>/corpus across runs; the kept findings of tests/fuzz/regress/
# <target>/ are replayed first and are part of the corpus. Crashes land in
# $OUT/<target>/findings/. Prints executions, exec/s and the number of
# findings per target; exits 1 on a finding.
# Environment: FUZZ_OUT (default build-fuzz/), CC_FUZZ (default clang),
# FUZZ_MAX_LEN (default: 64 KiB, or the largest seed; 4 KiB for h5s_*),
# FUZZ_FORK=1 (go on past findings: libFuzzer's fork mode, for long
# campaigns), FUZZ_TIMEOUT
# (seconds one input may take before it counts as a hang: default 20, 1 for
# the h5 targets, where HDF5's own loops on damaged heaps cost the timeout
# each, every few hundred to thousand inputs, and a well-formed input takes
# milliseconds), FUZZ_STUCK_SECS (fork mode: a job that uses no CPU for this
# long, default 30, is killed: tools/fuzz_watchdog.sh), FUZZ_H5_SLOW_MS (the
# h5_* targets: an input that uses more CPU than this, default 100 ms, ends as
# a crash-* finding, not after libFuzzer's 1 to 2 s: tests/fuzz/fuzz_h5.h; 0:
# no limit).
set -euo pipefail
SECS=${1:-60}
JOBS=${2:-1}
TARGET=${3:-safetensors}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/build-fuzz}
CC=${CC_FUZZ:-clang}
ALL="safetensors image sched json_config manifest_text manifest_bin tokenizer lora h5_dataset h5_ckpt h5_genout h5s_dataset h5s_ckpt h5s_genout"
command -v "$CC" >/dev/null || { echo "fuzz.sh: $CC not found ---> install clang and libclang-rt-dev (tools/setup.sh)" >&2; exit 2; }

seeds_of() {
    case "$1" in
    image) echo "$ROOT/tests/fixtures/images" ;;
    sched) echo "$ROOT/tests/fixtures/sched" ;;
    *) echo "$ROOT/tests/fuzz/seeds/$1" ;;
    esac
}

if [ "$TARGET" = all ]; then TARGETS=$ALL; else TARGETS=$TARGET; fi
for t in $TARGETS; do
    case " $ALL " in *" $t "*) ;; *) echo "fuzz.sh: unknown target $t ---> one of: $ALL, all" >&2; exit 2 ;; esac
done

# ---- the instrumented build (incremental) -----------------------------------
BUILD=$OUT/build
mkdir -p "$BUILD"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    CC="$CC" nice -n 19 cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSDC_FUZZ=ON \
        -DSDC_CUDA=OFF -DSDC_NATIVE=OFF >"$OUT/cmake.log" 2>&1 || { tail -20 "$OUT/cmake.log"; exit 2; }
else # (again: a target added since the build folder was made is otherwise unknown to it)
    nice -n 19 cmake "$BUILD" >"$OUT/cmake.log" 2>&1 || { tail -20 "$OUT/cmake.log"; exit 2; }
fi
BINS=""
for t in $TARGETS; do BINS="$BINS fuzz_$t"; done
# shellcheck disable=SC2086
nice -n 19 cmake --build "$BUILD" -j"${FUZZ_BUILD_JOBS:-2}" --target $BINS >"$OUT/build.log" 2>&1 ||
    { grep -m20 -E "error|Error" "$OUT/build.log" || tail -20 "$OUT/build.log"; exit 2; }

# ---- one run per target ------------------------------------------------------
STATUS=0
for t in $TARGETS; do
    TO=$OUT/$t
    BIN=$BUILD/tests/fuzz_$t
    SEEDS=$(seeds_of "$t")
    REG=$ROOT/tests/fuzz/regress/$t
    mkdir -p "$TO/corpus" "$TO/findings"
    # the kept findings first: each must run clean (no crash, no sanitizer report)
    if [ -d "$REG" ] && [ -n "$(ls -A "$REG")" ]; then
        if ! (cd "$TO" && nice -n 19 "$BIN" -runs=1 "$REG"/* >"$TO/regress.log" 2>&1); then
            echo "fuzz_$t: a kept finding of $REG fails again:"
            grep -h -m3 -A12 "ERROR: \|runtime error" "$TO/regress.log" || tail -30 "$TO/regress.log"
            STATUS=1
            continue
        fi
    fi
    MAXLEN=${FUZZ_MAX_LEN:-$(find "$SEEDS" -type f -printf '%s\n' | sort -n | tail -1)}
    [ "${MAXLEN:-0}" -lt 65536 ] && MAXLEN=65536
    # the structure-aware h5 programs: 4 KiB (twice the largest seed) describe
    # a file of tens of objects; libFuzzer grows its inputs towards max_len and
    # longer programs build bigger files, at a third of the rate (h5s_dataset,
    # session 13: 1,726 exec/s with this cap, 519 once inputs reached 16 KiB)
    case "$t" in h5s_*) MAXLEN=${FUZZ_MAX_LEN:-4096} ;; esac
    DIRS="$SEEDS"
    [ -d "$REG" ] && DIRS="$DIRS $REG"
    # HDF5 (the system's, not instrumented) leaks inside itself on damaged
    # files: LeakSanitizer would stop every run on HDF5's leaks, not sdc's
    # and sizes its metadata cache entries from the file: a damaged size is
    # a malloc that returns NULL (HDF5 then fails with an error), which ASan
    # would report as a crash unless allocator_may_return_null is set
    OPTS=""
    export ASAN_OPTIONS=${ASAN_OPTIONS:-}
    TMO=${FUZZ_TIMEOUT:-20}
    # (detect_leaks=0 in ASAN_OPTIONS too: LeakSanitizer's report at exit would
    # fail a run that found nothing and leave an empty "crash-" input)
    case "$t" in h5_*) OPTS="-detect_leaks=0"; TMO=${FUZZ_TIMEOUT:-1}
        export FUZZ_H5_SLOW_MS=${FUZZ_H5_SLOW_MS:-100}
        ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" ;;
    # the structure-aware ones build only files HDF5 reads whole: no HDF5
    # hangs or leaks to step around; a reader that allocates what a declared
    # shape says is an out-of-memory finding (libFuzzer's malloc limit)
    h5s_*) TMO=${FUZZ_TIMEOUT:-5} ;; esac
    # FUZZ_FORK=1 (long campaigns): libFuzzer's fork mode, one worker per
    # job, going on past crashes, timeouts and OOMs (each saved in findings/)
    if [ "${FUZZ_FORK:-0}" = 1 ]; then
        OPTS="$OPTS -fork=$JOBS -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1"
    elif [ "$JOBS" -gt 1 ]; then # (-jobs=1 would also run one child, its output in findings/fuzz-0.log)
        OPTS="$OPTS -jobs=$JOBS -workers=$JOBS"
    fi
    rm -f "$TO"/findings/fuzz-*.log
    LOG=$TO/fuzz.log
    set +e
    # shellcheck disable=SC2086
    (cd "$TO/findings" && exec nice -n 19 "$BIN" -max_total_time="$SECS" -max_len="$MAXLEN" -timeout="$TMO" \
        -rss_limit_mb=2048 -print_final_stats=1 $OPTS \
        -artifact_prefix="$TO/findings/" "$TO/corpus" $DIRS) >"$LOG" 2>&1 &
    FPID=$!
    T0=$(date +%s)
    WPID=
    KILLED0=$(grep -c "killed$" "$TO/watchdog.log" 2>/dev/null || true) # (the log keeps earlier runs' kills)
    # fork mode: a job deadlocked in libFuzzer's timeout handler would stall the campaign (fuzz_watchdog.sh)
    if [ "${FUZZ_FORK:-0}" = 1 ]; then
        "$ROOT/tools/fuzz_watchdog.sh" "$FPID" "$BIN" "${FUZZ_STUCK_SECS:-30}" >>"$TO/watchdog.log" 2>&1 &
        WPID=$!
    fi
    wait "$FPID"
    RC=$?
    [ -n "$WPID" ] && kill "$WPID" 2>/dev/null
    set -e
    cat "$TO"/findings/fuzz-*.log >>"$LOG" 2>/dev/null || true
    if [ "${FUZZ_FORK:-0}" = 1 ]; then # the parent's last "#N: cov: ..." line counts every job's executions
        EXECS=$(grep -ho "^#[0-9]*: cov" "$LOG" | tail -1 | tr -dc 0-9)
        EXECS=${EXECS:-0}
        EL=$(($(date +%s) - T0)) # (a campaign stopped early ran less than SECS)
        RATE=$((EXECS / (EL > 0 ? EL : 1)))
    else
        EXECS=$(grep -h "stat::number_of_executed_units" "$LOG" | awk '{s+=$2} END {print s+0}')
        RATE=$(grep -h "stat::average_exec_per_sec" "$LOG" | awk '{s+=$2} END {print s+0}')
    fi
    NFIND=$(find "$TO/findings" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    COV=$(grep -ho "cov: [0-9]*" "$LOG" | tail -1)
    STUCK=$(grep -c "killed$" "$TO/watchdog.log" 2>/dev/null || true)
    STUCK=$((${STUCK:-0} - ${KILLED0:-0}))
    [ "$STUCK" -gt 0 ] && echo "fuzz_$t: $STUCK stuck fork jobs killed ($TO/watchdog.log)"
    echo "fuzz_$t: ${SECS}s, executions=$EXECS, exec/s=$RATE, $COV, corpus=$(ls "$TO/corpus" | wc -l), findings=$NFIND (rc=$RC)"
    echo "$(date -u +%FT%TZ) $t secs=$SECS execs=$EXECS rate=$RATE findings=$NFIND rc=$RC" >>"$OUT/runs.log"
    if [ "$NFIND" -gt 0 ] || [ "$RC" -ne 0 ]; then
        grep -h -m3 -A12 "ERROR: \|runtime error\|Test unit written" "$LOG" || tail -30 "$LOG"
        echo "findings in $TO/findings/ (reproduce: $BIN <file>)"
        STATUS=1
    fi
done
# A fork job that crashes never reaches its atexit: its scratch folder
# (tests/fuzz/fuzz_util.h, /dev/shm/sdc-fuzz-PID) and the OpenMP runtime's
# registration file stay in /dev/shm (memory), a few per minute of an h5
# campaign. Those of processes that are gone go; FUZZ_H5_KEEP_PREV=1 keeps
# them (a finding's input beside the one before it, docs/fuzzing.md).
if [ -z "${FUZZ_H5_KEEP_PREV:-}" ]; then
    for d in /dev/shm/sdc-fuzz-* "${TMPDIR:-/tmp}"/sdc-fuzz-* /dev/shm/__KMP_REGISTERED_LIB_*; do
        [ -e "$d" ] || continue
        p=${d#*sdc-fuzz-}; p=${p#*__KMP_REGISTERED_LIB_}; p=${p%%_*}
        case "$p" in '' | *[!0-9]*) continue ;; esac
        kill -0 "$p" 2>/dev/null || rm -rf "$d"
    done
fi
exit $STATUS
