#!/usr/bin/env bash
# fuzz.sh: builds the libFuzzer target for the safetensors / JSON parsers
# (tests/fuzz/fuzz_safetensors.c) with clang -fsanitize=fuzzer,address,undefined
# and runs it for a bounded time.
#   tools/fuzz.sh [seconds=60] [jobs=1] [target=safetensors|image]
# target image: the PNG/JPEG decoders (tests/fuzz/fuzz_image.c), seeded with
# tests/fixtures/images/*.png, *.jpg. target sched: scheduler_config.json
# (tests/fuzz/fuzz_sched_config.c), seeded with tests/fixtures/sched/*.json.
# The seed corpus is made here from small valid files (and the fixtures'
# safetensors headers when present); crashes land in build-fuzz/findings/.
# Prints executions, exec/s and the number of findings; exits 1 on a finding.
set -euo pipefail
SECS=${1:-60}
JOBS=${2:-1}
TARGET=${3:-safetensors}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/build-fuzz}
CC=${CC_FUZZ:-clang}
command -v "$CC" >/dev/null || { echo "fuzz.sh: $CC not found ---> install clang and libclang-rt-dev" >&2; exit 2; }
[ "$TARGET" = image ] && OUT=$OUT/image
[ "$TARGET" = sched ] && OUT=$OUT/sched
mkdir -p "$OUT/corpus" "$OUT/findings"
BIN=$OUT/fuzz_$TARGET
case "$TARGET" in
image)
    "$CC" -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -I"$ROOT/src" "$ROOT/tests/fuzz/fuzz_image.c" \
        "$ROOT/src/io/image.c" "$ROOT/src/core/error.c" -lpng -ljpeg -lz -lm -o "$OUT/fuzz_image"
    cp "$ROOT"/tests/fixtures/images/*.png "$ROOT"/tests/fixtures/images/*.jpg "$OUT/corpus/"
    ;;
safetensors)
"$CC" -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$ROOT/src" "$ROOT/tests/fuzz/fuzz_safetensors.c" "$ROOT/src/io/safetensors.c" "$ROOT/src/io/json.c" \
    "$ROOT/src/core/error.c" "$ROOT/src/core/tensor.c" -lm -o "$OUT/fuzz_safetensors"

# Seed corpus: valid small files, written with python's struct only (no deps).
python3 - "$OUT/corpus" "$ROOT/tests/fixtures" <<'PY'
import json, os, struct, sys, glob
out, fix = sys.argv[1], sys.argv[2]
def st(entries, meta=None, pad=True):
    hdr, off, data = {}, 0, b""
    if meta is not None: hdr["__metadata__"] = meta
    for name, dt, shape, size in entries:
        n = size
        for d in shape: n *= d
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes((i * 7) & 255 for i in range(n)); off += n
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad: h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data
seeds = {
    "empty_obj": st([]),
    "one_f32": st([("a", "F32", [2, 3], 4)]),
    "mixed": st([("w", "F16", [4, 1, 1, 2], 2), ("b", "BF16", [4], 2), ("ids", "I64", [1, 3], 8),
                 ("\u00e9\\\"q", "F64", [1], 8), ("e", "U8", [0], 1)], meta={"format": "pt", "k": "v\n"}),
    "unpadded": st([("x", "I32", [3], 4)], pad=False),
    "json_misc": struct.pack("<Q", 60) + b'{"a":[1,-2.5e3,true,false,null,{"b":"\\ud83d\\ude00"}]}      ',
}
for k, v in seeds.items():
    open(os.path.join(out, k), "wb").write(v)
# Headers of real fixtures (header only, data dropped: too big for a seed).
for p in glob.glob(os.path.join(fix, "*.safetensors"))[:3]:
    b = open(p, "rb").read(8)
    n = struct.unpack("<Q", b)[0]
    if n < 1 << 20:
        with open(p, "rb") as f:
            open(os.path.join(out, "hdr_" + os.path.basename(p)), "wb").write(f.read(8 + n))
PY
    ;;
sched)
    "$CC" -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -I"$ROOT/src" "$ROOT/tests/fuzz/fuzz_sched_config.c" "$ROOT/src/sampling/sched_config.c" \
        "$ROOT/src/sampling/scheduler.c" "$ROOT/src/sampling/rng.c" "$ROOT/src/io/json.c" \
        "$ROOT/src/core/error.c" -lm -o "$OUT/fuzz_sched"
    cp "$ROOT"/tests/fixtures/sched/*.json "$OUT/corpus/"
    ;;
*) echo "fuzz.sh: unknown target $TARGET ---> safetensors, image or sched" >&2; exit 2 ;;
esac

LOG="$OUT/fuzz.log"
set +e
(cd "$OUT/findings" && "$BIN" -max_total_time="$SECS" -max_len=65536 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -jobs="$JOBS" -workers="$JOBS" \
    -artifact_prefix="$OUT/findings/" "$OUT/corpus") >"$LOG" 2>&1
RC=$?
set -e
[ "$JOBS" -gt 1 ] && cat "$OUT"/findings/fuzz-*.log >>"$LOG" 2>/dev/null || true
EXECS=$(grep -h "stat::number_of_executed_units" "$LOG" | awk '{s+=$2} END {print s+0}')
RATE=$(grep -h "stat::average_exec_per_sec" "$LOG" | awk '{s+=$2} END {print s+0}')
NFIND=$(find "$OUT/findings" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
COV=$(grep -ho "cov: [0-9]*" "$LOG" | tail -1)
echo "fuzz_$TARGET: ${SECS}s, executions=$EXECS, exec/s=$RATE, $COV, corpus=$(ls "$OUT/corpus" | wc -l), findings=$NFIND (rc=$RC)"
if [ "$NFIND" -gt 0 ] || [ "$RC" -ne 0 ]; then
    grep -h -m3 -A12 "ERROR: \|runtime error" "$LOG" || tail -30 "$LOG"
    echo "findings in $OUT/findings/ (reproduce: $BIN <file>)"
    exit 1
fi
