#!/bin/sh
# failalloc_sweep.sh: the whole sweep behind the fault_failalloc test. Where
# CTest fails 8 allocation indices per command (spread over all of them),
# this fails every one: each allocation sdc's own code makes while
# generating, writing an HDF5 sweep, converting, importing a dataset and
# training must end in a named error (or be worked around), never in an
# abort or a crash (tests/fault/failalloc.sh says what is checked after
# each failure).
#   tools/failalloc_sweep.sh [BUILD_DIR [PER_COMMAND [COMMANDS]]]
# BUILD_DIR: a build with the sdc and failalloc targets (default: build);
# PER_COMMAND: indices per command, 0 = every one (default; DreamBooth makes
# about 7000 allocations at about a second a run: pass e.g. 700 with
# COMMANDS=train for a tenth of them); COMMANDS: a subset of
# "generate sweep convert import train". Prints each command's count, its
# result and every index worked around (with the function that allocated).
SRC=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$SRC/build}
PER=${2:-0}
CMDS=${3:-generate sweep convert import train}
[ -x "$B/sdc" ] && [ -r "$B/tests/failalloc.so" ] ||
    { echo "failalloc_sweep: no $B/sdc or $B/tests/failalloc.so ---> cmake --build $B --target sdc failalloc"; exit 2; }
exec sh "$SRC/tests/fault/failalloc.sh" "$B/sdc" "$B/tests/failalloc.so" "$SRC" "$B/test-out/failalloc_sweep" "$PER" "$CMDS"
