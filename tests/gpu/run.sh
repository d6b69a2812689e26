#!/usr/bin/env bash
# tests/gpu/run.sh: the one script to run on a machine with an NVIDIA GPU.
# Configures a fresh CUDA build (build-gpu), builds only the CUDA targets,
# runs every CUDA test (tests/test_*cuda*.c) with SDC_REQUIRE_GPU=1 (a test
# that skips counts as failed here), then the CUDA benchmarks
# (bench/bench_*cuda*.c), and prints a summary table last.
#
#   tests/gpu/run.sh [log file]
#     log: $1, else $OUT/gpu-log.txt when $OUT is set, else build-gpu/gpu-log.txt
#   env: SDC_CUDA_ARCH (default 90), SDC_GPU_BUILD_DIR (default build-gpu),
#        SDC_GPU_TEST_TIMEOUT / SDC_GPU_BENCH_TIMEOUT seconds (default 150 / 120),
#        SDC_GPU_SKIP_BENCH=1 to run the tests only,
#        SDC_GPU_SECOND_PASS_ENV="SDC_CUDA_ATTN=fa2 SDC_CUDA_CONV=cudnn SDC_CUDA_GN=fast"
#        to run the model tests and benchmarks a second time with that environment
# Exit status: 0 when every step passed, 1 otherwise. Never waits forever:
# every step runs under `timeout`.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${SDC_GPU_BUILD_DIR:-$ROOT/build-gpu}"
ARCH="${SDC_CUDA_ARCH:-90}"
TEST_TIMEOUT="${SDC_GPU_TEST_TIMEOUT:-150}"
BENCH_TIMEOUT="${SDC_GPU_BENCH_TIMEOUT:-120}"
JOBS="$(nproc 2>/dev/null || echo 4)"
# the toolkit's usual place, when nvcc is not on PATH
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

if [ $# -ge 1 ] && [ -n "$1" ]; then
  LOG="$1"
elif [ -n "${OUT:-}" ]; then
  LOG="$OUT/gpu-log.txt"
else
  LOG="$BUILD/gpu-log.txt"
fi
mkdir -p "$(dirname "$LOG")" "$BUILD"
: >"$LOG"

# main runs in a pipe (a subshell), so each step's result goes to a side file
RESULTS="$BUILD/gpu-results.txt" # lines "step|PASS or FAIL|key figure"
: >"$RESULTS"
record() { echo "$1|$2|$3" >>"$RESULTS"; } # step status figure

step() { echo; echo "==== $* ($(date +%T))"; }

main() {
  step "machine"
  date
  if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi -L || echo "nvidia-smi -L failed (rc=$?)"
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  else
    echo "nvidia-smi not found"
  fi
  command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -2
  echo "root=$ROOT build=$BUILD arch=$ARCH jobs=$JOBS log=$LOG"

  step "dependencies"
  local minimal=OFF
  if dpkg -s libhdf5-openmpi-dev >/dev/null 2>&1; then
    echo "Debian packages present: full build"
  else
    # GPU machines are lent bare and offline: build the library and its
    # tests only (-DSDC_MINIMAL=ON), with OpenBLAS, libpng and libjpeg from
    # .deb files carried in .gpudeps/ (tools/gpu_deps.sh downloads them).
    minimal=ON
    if ! pkg-config --exists openblas 2>/dev/null; then
      if ls "$ROOT"/.gpudeps/*.deb >/dev/null 2>&1; then
        local deps="$BUILD/deps"
        mkdir -p "$deps"
        for d in "$ROOT"/.gpudeps/*.deb; do dpkg -x "$d" "$deps"; done
        # Debian's .pc files say prefix=/usr: point them at the unpacked tree
        find "$deps" -name '*.pc' -exec sed -i "s|=/usr|=$deps/usr|" {} +
        local multi="$deps/usr/lib/x86_64-linux-gnu"
        export PKG_CONFIG_PATH="$multi/pkgconfig:$multi/openblas-openmp/pkgconfig:$deps/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
        export CMAKE_PREFIX_PATH="$deps/usr:${CMAKE_PREFIX_PATH:-}"
        export LD_LIBRARY_PATH="$multi:$multi/openblas-openmp:${LD_LIBRARY_PATH:-}"
        export LIBRARY_PATH="$multi:$multi/openblas-openmp:${LIBRARY_PATH:-}"
        export CPATH="$deps/usr/include:$deps/usr/include/x86_64-linux-gnu:${CPATH:-}"
        echo "unpacked $(ls "$ROOT"/.gpudeps/*.deb | wc -l) carried .deb files into $deps"
      else
        echo "no OpenBLAS and no .gpudeps/: trying tools/setup.sh (needs a network)"
        timeout 600 "$ROOT/tools/setup.sh" || echo "tools/setup.sh failed (rc=$?); going on"
      fi
    fi
  fi

  step "configure"
  rm -rf "$BUILD/CMakeCache.txt" "$BUILD/CMakeFiles"
  # CMake insists on cuDNN and NCCL next to CUDA; on a bare GPU image they may
  # only be in PyTorch's pip packages (nvidia/cudnn/lib, nvidia/nccl/lib).
  local libargs=() lib name
  for name in cudnn nccl; do
    if ! ls /usr/local/cuda/lib*/lib$name.so /usr/lib/x86_64-linux-gnu/lib$name.so >/dev/null 2>&1; then
      lib="$(find /usr /opt -name "lib$name.so*" -type f 2>/dev/null | head -1)"
      if [ -n "$lib" ]; then
        local up; up="$(echo "$name" | tr a-z A-Z)"
        libargs+=("-D${up}_LIB=$lib")
        export LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}"
        echo "lib$name: using $lib"
      fi
    fi
  done
  if timeout 300 cmake -S "$ROOT" -B "$BUILD" -DSDC_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
       -DSDC_MINIMAL="$minimal" -DCMAKE_BUILD_TYPE=Release "${libargs[@]}"; then
    local targets # (not piped into grep -q: with pipefail an early grep exit fails the pipe)
    targets="$(timeout 60 cmake --build "$BUILD" --target help 2>/dev/null)"
    if grep -q sdc_kernels_cuda <<<"$targets"; then
      record configure PASS "CUDA arch $ARCH, minimal=$minimal"
    else
      record configure FAIL "configured without CUDA (nvcc not found by CMake?)"
      return
    fi
  else
    record configure FAIL "cmake configure failed (see log)"
    return
  fi

  # targets: the CUDA kernels, every CUDA test and benchmark
  local tests=() benches=() t
  for f in "$ROOT"/tests/test_*cuda*.c; do [ -e "$f" ] && tests+=("$(basename "$f" .c)"); done
  # SDC_GPU_SKIP_BENCH=1: tests only (a short re-check when device time is scarce)
  if [ "${SDC_GPU_SKIP_BENCH:-0}" != 1 ]; then
    for f in "$ROOT"/bench/bench_*cuda*.c; do [ -e "$f" ] && benches+=("$(basename "$f" .c)"); done
  fi

  step "build sdc_kernels_cuda"
  if timeout 600 cmake --build "$BUILD" -j "$JOBS" --target sdc_kernels_cuda; then
    record "build sdc_kernels_cuda" PASS ""
  else
    record "build sdc_kernels_cuda" FAIL "compile error (see log)"
    return
  fi
  local built=()
  for t in "${tests[@]}" "${benches[@]}"; do
    step "build $t"
    if timeout 600 cmake --build "$BUILD" -j "$JOBS" --target "$t"; then
      built+=("$t")
    else
      record "build $t" FAIL "compile/link error (see log)"
    fi
  done

  run_tests_and_benches "" "${tests[@]}" -- "${benches[@]}"
  # The kernels not yet the default (attention FA2, cuDNN conv, fast group
  # norm), end to end: the model tests and benchmarks once more with them on.
  if [ -n "${SDC_GPU_SECOND_PASS_ENV:-}" ]; then
    local t2=() b2=()
    for t in "${tests[@]}"; do [[ "$t" == test_unet_cuda || "$t" == test_pipeline_cuda ]] && t2+=("$t"); done
    for t in "${benches[@]}"; do [[ "$t" == bench_unet_cuda || "$t" == bench_txt2img_cuda ]] && b2+=("$t"); done
    run_tests_and_benches "$SDC_GPU_SECOND_PASS_ENV" "${t2[@]}" -- "${b2[@]}"
  fi
}

# run_tests_and_benches ENV TEST... -- BENCH...: ENV ("A=1 B=2", may be
# empty) is set for every step and named in its label.
run_tests_and_benches() {
  local env="$1" tests=() benches=() t sfx=""
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do tests+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  benches=("$@")
  [ -n "$env" ] && sfx=" [$env]"
  for t in "${tests[@]}"; do
    [[ " ${built[*]} " == *" $t "* ]] || continue
    step "test $t$sfx"
    local out rc
    out="$BUILD/$t.out"
    (cd "$ROOT" && env $env SDC_REQUIRE_GPU=1 timeout -k 10 "$TEST_TIMEOUT" "$BUILD/tests/$t") 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    local fig worst
    fig="$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -1)"
    worst="$(grep -c 'NOT OK' "$out")"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      record "test $t$sfx" FAIL "timed out after ${TEST_TIMEOUT}s"
    elif grep -q '^SKIPPED' "$out"; then
      record "test $t$sfx" FAIL "skipped on a GPU machine: $(grep -m1 '^SKIPPED' "$out" | cut -c1-80)"
    elif [ "$rc" -ne 0 ]; then
      [ -n "$fig" ] || fig="$(grep -m1 -E '^(FAILED|sdc: )' "$out" | cut -c1-100)"
      record "test $t$sfx" FAIL "rc=$rc ${fig:-no summary (crash?)}; NOT OK lines: $worst"
    else
      record "test $t$sfx" PASS "${fig:-?}"
    fi
  done

  for t in "${benches[@]}"; do
    [[ " ${built[*]} " == *" $t "* ]] || continue
    step "bench $t$sfx"
    local out rc
    out="$BUILD/$t.out"
    (cd "$ROOT" && env $env timeout -k 10 "$BENCH_TIMEOUT" "$BUILD/bench/$t") 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      record "bench $t$sfx" FAIL "timed out after ${BENCH_TIMEOUT}s"
    elif [ "$rc" -ne 0 ]; then
      record "bench $t$sfx" FAIL "rc=$rc"
    elif grep -q '^SKIPPED' "$out"; then
      record "bench $t$sfx" FAIL "skipped on a GPU machine"
    else
      record "bench $t$sfx" PASS "$(grep -m1 '^summary:' "$out" | cut -c10-200)"
    fi
  done
}

T0=$(date +%s)
main 2>&1 | tee -a "$LOG"
{
  echo
  echo "==== summary ($(( $(date +%s) - T0 )) s, log: $LOG)"
  printf '%-32s %-5s %s\n' "step" "state" "key figure"
  while IFS='|' read -r name state fig; do
    printf '%-32s %-5s %s\n' "$name" "$state" "$fig"
  done <"$RESULTS"
} 2>&1 | tee -a "$LOG"
if [ ! -s "$RESULTS" ] || grep -q '|FAIL|' "$RESULTS"; then
  echo "GPU RUN FAILED" | tee -a "$LOG"
  exit 1
fi
if ! grep -q '^test .*|PASS|' "$RESULTS"; then
  echo "GPU RUN FAILED: no CUDA test ran" | tee -a "$LOG"
  exit 1
fi
echo "GPU RUN PASSED" | tee -a "$LOG"
exit 0
