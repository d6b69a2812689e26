#!/usr/bin/env bash
# build.sh: set up (idempotent), configure and build sdc in ./build.
# Extra arguments go to CMake's configure step (e.g. -DSDC_CUDA=OFF).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" > build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
cmake --build build -j "$(nproc)"
