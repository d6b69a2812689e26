#!/bin/sh
# cpu_limit.sh FUZZ_OUT: the byte-level h5 harnesses' CPU limit per input
# (FUZZ_H5_SLOW_MS, tests/fuzz/fuzz_h5.h) ends libhdf5's own loop on a damaged
# global heap (tests/fuzz/hdf5-bugs/global-heap-loop.h5) as a crash within a
# second; without the limit the same input runs into libFuzzer's timeout.
# Needs the clang build of fuzz_short (CTest runs this after it); run from
# the source root.
. tests/check.sh
OUT=${1:?usage: tests/fuzz/cpu_limit.sh FUZZ_OUT}
command -v clang >/dev/null 2>&1 || skip "clang not found"
[ -f "$OUT/build/CMakeCache.txt" ] || skip "no fuzz build in $OUT (fuzz_short makes it)"
BIN=$OUT/build/tests/fuzz_h5_dataset
INPUT=tests/fuzz/hdf5-bugs/global-heap-loop.h5
runs "fuzz_h5_dataset builds" nice -n 19 cmake --build "$OUT/build" --target fuzz_h5_dataset
export ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=0
# run MS TIMEOUT: the input through the harness with FUZZ_H5_SLOW_MS=MS and
# libFuzzer's -timeout=TIMEOUT; its status in RC. A run that aborts leaves its
# scratch folder (tests/fuzz/fuzz_util.h) and the OpenMP runtime's file in
# /dev/shm: removed by its pid.
run() {
    FUZZ_H5_SLOW_MS=$1 "$BIN" -timeout="$2" -artifact_prefix="$CHECK_TMP/" "$INPUT" > "$OUT_FILE" 2>&1 &
    P=$!
    wait $P
    RC=$?
    rm -rf "/dev/shm/sdc-fuzz-$P" "/dev/shm/__KMP_REGISTERED_LIB_$P"_*
}

# without the limit: the input loops until libFuzzer's 2-second timeout
run 0 2
has "without a limit the input hangs (libFuzzer's timeout)" "libFuzzer: timeout"

# with 250 ms: the harness's message and an abort, long before the timeout
T0=$(date +%s)
run 250 30
EL=$(($(date +%s) - T0))
has "FUZZ_H5_SLOW_MS=250 ends it" "the input used more CPU than FUZZ_H5_SLOW_MS"
has "... as a crash libFuzzer keeps (deadly signal)" "libFuzzer: deadly signal"
check "... with a failing status (exit $RC)" test "$RC" -ne 0
check "... in under 10 s (took ${EL} s; libFuzzer's timeout was 30 s)" test "$EL" -lt 10
finish
