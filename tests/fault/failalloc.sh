#!/bin/sh
# failalloc.sh: running out of memory anywhere in sdc's own code ends in an
# error with a message, never in an abort or a crash, and leaves what was
# written before usable. Each command below first runs once with the
# allocation counter of failalloc.so (tests/fault/failalloc.c) to learn how
# many allocations it makes (N), then again with allocation k failing, for a
# deterministic spread of k over 1..N (or every k), and with k+ ("k and every
# allocation after it") for a few k. A run must then
#   - exit 1 with "sdc: error: ..." naming memory on stderr (an abort is exit
#     134, a segfault 139: both fail), or
#   - exit 0 having worked around the failure, its output equal to the
#     uninterrupted run's (e.g. the chunked host staging falls back to a
#     buffer on the stack);
# and after a failure:
#   - generate: no PNG under the final name;
#   - an HDF5 sweep: every item marked done holds its image, and the same
#     command run again finishes the file equal to an uninterrupted sweep
#     (checked for every fourth failed index: each check costs a second);
#   - convert and dataset import: no file under the output name, no
#     temporary file left;
#   - DreamBooth (resumed from checkpoint-1.h5 for 2 more steps):
#     checkpoint-1.h5 byte for byte as it was, any newer checkpoint readable
#     (every tensor's CRC, tools/h5_interop.py).
# An index the run no longer reaches (the count varies by a few with the
# order of threads) is reported as not reached, neither pass nor failure.
#
#   tests/fault/failalloc.sh SDC FAILALLOC_SO SRC_ROOT WORK_DIR [PER_COMMAND [COMMANDS]]
# PER_COMMAND: indices tried per command, spread evenly over 1..N (default
# 12, CTest 8; 0 = every index: tools/failalloc_sweep.sh). COMMANDS: a subset of
# "generate sweep convert import train" (default: all).

SDC=$1
SO=$2
SRC=$3
W=$4
PER=${5:-12}
CMDS=${6:-generate sweep convert import train}
. "$SRC/tests/check.sh"
DEMO=$SRC/data/models/sdc-tiny-sd1.safetensors
H5PY="/usr/bin/python3 $SRC/tools/h5_interop.py"
[ -r "$SO" ] || { check_fail "failalloc.so at $SO"; finish; }
rm -rf "$W" && mkdir -p "$W/ref" || exit 1

# ---- the commands ------------------------------------------------------------

# sdc, with the fault of $FAULT (environment assignments) when set
sdc() { timeout 120 env $FAULT "$SDC" "$@"; } # a hang fails too (exit 124)
g() { sdc generate -q -m "$DEMO" -p 'a red fox' -W 64 -H 64 --steps 2 "$@"; }
train() {
    sdc train dreambooth -q --pretrained-model "$DEMO" --instance-data "$W/photos" \
        --instance-prompt 'a photo of sks dog' --resolution 64 -t 1 "$@" 2> "$W/train.err"
    _rc=$?
    grep -v 'is smaller than --resolution' "$W/train.err" >&2 # the photos are small: upscaled
    return $_rc
}

# Each command: prep_X (a fresh output), run_X, ok_X (after exit 0: the
# output equals the reference), after_X (after a failure: what must hold).
prep_generate() { rm -f "$W/g.png" "$W/g.png.tmp"; }
run_generate() { g -o "$W/g.png"; }
ok_generate() { cmp -s "$W/ref/g.png" "$W/g.png"; }
after_generate() { test ! -e "$W/g.png" || { echo "g.png left behind"; return 1; }; }

prep_sweep() { rm -f "$W/s.h5"; }
run_sweep() { g -b 3 --output-h5 "$W/s.h5"; }
ok_sweep() { $H5PY compare "$W/ref/s.h5" "$W/s.h5" > /dev/null 2>&1; }
FAULT=
SWEEP_FAILS=0
after_sweep() {
    [ -e "$W/s.h5" ] || return 0 # refused before the file was made
    SWEEP_FAILS=$((SWEEP_FAILS + 1))
    [ $((SWEEP_FAILS % 4)) -eq 1 ] || return 0
    /usr/bin/python3 -c "
import h5py, numpy as np, sys
a, b = h5py.File('$W/ref/s.h5', 'r'), h5py.File('$W/s.h5', 'r')
done = b['done'][:]
bad = [i for i in range(len(done)) if done[i] and not np.array_equal(a['images'][i], b['images'][i])]
sys.exit('items marked done without their image: %s' % bad if bad else 0)" || return 1
    run_sweep > "$W/rerun.out" 2>&1 || { echo "the sweep run again failed:"; cat "$W/rerun.out"; return 1; }
    ok_sweep || { echo "the sweep run again differs from the uninterrupted one"; return 1; }
}

prep_convert() { rm -rf "$W/c.h5" "$W"/c.h5*tmp*; }
run_convert() { sdc convert -q -m "$DEMO" -o "$W/c.h5"; }
ok_convert() { $H5PY compare "$W/ref/c.h5" "$W/c.h5" > /dev/null 2>&1; }
after_convert() {
    test ! -e "$W/c.h5" || { echo "c.h5 left behind"; return 1; }
    test -z "$(ls "$W" | grep tmp)" || { echo "temporary files left: $(ls "$W" | grep tmp)"; return 1; }
}

prep_import() { rm -rf "$W/d.h5" "$W"/d.h5*tmp*; }
run_import() { sdc dataset import -q --resolution 64 -p 'a photo of sks dog' -o "$W/d.h5" "$W/photos"; }
ok_import() { $H5PY compare "$W/ref/d.h5" "$W/d.h5" > /dev/null 2>&1; }
after_import() {
    test ! -e "$W/d.h5" || { echo "d.h5 left behind"; return 1; }
    test -z "$(ls "$W" | grep tmp)" || { echo "temporary files left: $(ls "$W" | grep tmp)"; return 1; }
}

prep_train() { rm -rf "$W/t" && cp -r "$W/t0" "$W/t"; }
run_train() {
    train --max-train-steps 3 --checkpointing-steps 2 --resume-from-checkpoint latest --output-dir "$W/t"
}
# a training checkpoint h5py reads whole: complete (its step), every tensor's CRC32 right
ckpt_readable() {
    /usr/bin/python3 -c "
import h5py, numpy as np, sys, zlib
f = h5py.File(sys.argv[1], 'r')
assert f.attrs['sdc_kind'] in (b'checkpoint', 'checkpoint'), 'not a checkpoint'
assert 'step' in f['state'].attrs, 'no step: incomplete'
n = [0]
def visit(name, d):
    if isinstance(d, h5py.Dataset) and 'crc32' in d.attrs:
        raw = np.ascontiguousarray(d[()])
        assert zlib.crc32(raw.tobytes()) & 0xFFFFFFFF == int(d.attrs['crc32']), name + ': CRC32 differs'
        n[0] += 1
f.visititems(visit)
assert n[0] > 0, 'no tensors'" "$1"
}
ok_train() { cmp -s "$W/ref/t/model.safetensors" "$W/t/model.safetensors"; }
after_train() {
    cmp -s "$W/t0/checkpoint-1.h5" "$W/t/checkpoint-1.h5" || { echo "checkpoint-1.h5 changed or gone"; return 1; }
    for c in "$W"/t/checkpoint-*.h5; do
        [ "$c" = "$W/t/checkpoint-1.h5" ] && continue
        ckpt_readable "$c" > "$W/h5check.out" 2>&1 ||
            { echo "$c is not readable:"; tail -3 "$W/h5check.out"; return 1; }
    done
}

# ---- references (no fault) ---------------------------------------------------

setup_generate() { runs "reference: generate" g -o "$W/ref/g.png"; }
setup_sweep() { runs "reference: a 3-item HDF5 sweep" g -b 3 --output-h5 "$W/ref/s.h5"; }
setup_convert() { runs "reference: convert to .h5" "$SDC" convert -q -m "$DEMO" -o "$W/ref/c.h5"; }
photos() { mkdir -p "$W/photos" && cp "$SRC"/tests/fixtures/images/exif_*.jpg "$W/photos/"; }
setup_import() {
    photos && runs "reference: dataset import" "$SDC" dataset import -q --resolution 64 -p 'a photo of sks dog' \
        -o "$W/ref/d.h5" "$W/photos"
}
setup_train() {
    photos &&
        runs "reference: DreamBooth 1 step, checkpoint-1.h5" train --max-train-steps 1 --checkpointing-steps 1 \
            --output-dir "$W/t0" &&
        cp -r "$W/t0" "$W/ref/t" &&
        runs "reference: resumed for 2 more steps" train --max-train-steps 3 --checkpointing-steps 2 \
            --resume-from-checkpoint latest --output-dir "$W/ref/t"
}

# ---- one faulty run ----------------------------------------------------------

# the failed allocation's offset in sdc and its function (the last run's)
site() {
    _o=$(sed -n 's/^failalloc: .* at offset \(0x[0-9a-f]*\)$/\1/p' "$OUT_FILE" | head -1)
    echo "$_o $(addr2line -f -e "$SDC" "$_o" 2> /dev/null | head -1)"
}

# try CMD K: runs CMD with allocation K failing (K+ : from K on); counts it
try() {
    prep_$1
    FAULT="LD_PRELOAD=$SO SDC_FAILALLOC=$2"
    run_$1 > "$OUT_FILE" 2>&1
    _rc=$?
    FAULT=
    _why=
    if ! grep -q '^failalloc: allocation' "$OUT_FILE"; then
        if [ $_rc -eq 0 ]; then NOT_REACHED=$((NOT_REACHED + 1)); return; fi
        _why="exit $_rc without an injected failure"
    elif [ $_rc -eq 0 ]; then
        if ok_$1; then
            TOLERATED=$((TOLERATED + 1))
            echo "          worked around: allocation $2 ($(site))"
            return
        fi
        _why="exit 0 but the output differs from the uninterrupted run's"
    elif [ $_rc -ne 1 ]; then
        _why="exit $_rc, expected 1 (134: abort, 139: segfault)"
    elif ! grep -q '^sdc: error: .*[Mm]emory' "$OUT_FILE"; then
        _why="exit 1 but no 'sdc: error: ...memory...' message"
    else
        _after=$(after_$1 2>&1) && { REFUSED=$((REFUSED + 1)); return; }
        _why="after the failure: $_after"
    fi
    BAD=$((BAD + 1))
    check_fail "$1: allocation $2 (at $(site)): $_why"
    { grep -v '^failalloc' "$OUT_FILE" | tail -n 3; } | sed 's/^/          | /'
}

# ---- the sweep ---------------------------------------------------------------

TOTAL_TRIED=0
for c in $CMDS; do
    echo "$c"
    setup_$c || continue
    prep_$c
    rm -f "$W/count"
    FAULT="LD_PRELOAD=$SO SDC_FAILALLOC_COUNT=$W/count"
    run_$c > "$OUT_FILE" 2>&1
    _rc=$?
    FAULT=
    N=$(cat "$W/count" 2> /dev/null || echo 0)
    check "$c: counted $N allocations in sdc's own code (the counting run: exit $_rc)" test $_rc -eq 0 -a "$N" -gt 10
    [ "$N" -gt 10 ] || continue
    if [ "$PER" -eq 0 ] || [ "$PER" -ge "$N" ]; then
        KS=$(seq 1 "$N")
    else # PER indices evenly spread over 1..N, the first and the last included
        KS=$(awk -v n="$N" -v p="$PER" 'BEGIN { for (j = 0; j < p; j++) print 1 + int(j * (n - 1) / (p - 1)) }' | uniq)
    fi
    KS="$KS 1+ $((N / 4))+ $((N / 2))+ $((3 * N / 4))+ $((N - 2))+"
    TOLERATED=0 REFUSED=0 NOT_REACHED=0 BAD=0 TRIED=0
    for k in $KS; do
        try "$c" "$k"
        TRIED=$((TRIED + 1))
    done
    TOTAL_TRIED=$((TOTAL_TRIED + TRIED))
    _s="$c: $TRIED of $N allocation indices failed on purpose (5 of them 'k and all after'): $REFUSED refused with a"
    _s="$_s message, $TOLERATED worked around (output as without the fault), $NOT_REACHED not reached, $BAD crashed or wrong"
    if [ $BAD -eq 0 ]; then check_pass "$_s"; else check_fail "$_s"; fi
done
echo "failalloc: $TOTAL_TRIED runs with a failed allocation"

# ---- a failure inside a training step ---------------------------------------
# sdc allocates nothing during a step, so failalloc cannot reach one: the CPU
# backend's test hook SDC_FAULT_SCRATCH=N fails its Nth scratch request (as
# out of memory) instead, here in the middle of step 3 of a run resumed at 1.
# The run must stop with the error, save checkpoint-2.h5 (the last complete
# step), and the same job resumed from it must end bit-identical to the
# uninterrupted run.
case " $CMDS " in *" train "*)
    echo "train: a backend op out of memory inside step 3"
    step_run() { # DIR MAX_STEPS [VAR=VALUE...]
        _sd=$1 _sn=$2
        shift 2
        env "$@" "$SDC" train dreambooth -q --pretrained-model "$DEMO" --instance-data "$W/photos" \
            --instance-prompt 'a photo of sks dog' --resolution 64 -t 1 --max-train-steps "$_sn" \
            --checkpointing-steps 10 --resume-from-checkpoint latest --output-dir "$_sd" 2> "$W/step.err"
        _rc=$?
        grep -v 'is smaller than --resolution' "$W/step.err" >&2
        return $_rc
    }
    rm -rf "$W/s2" "$W/s4" "$W/sf" && cp -r "$W/t0" "$W/s2" && cp -r "$W/t0" "$W/s4" && cp -r "$W/t0" "$W/sf"
    step_run "$W/s2" 2 SDC_FAULT_SCRATCH_COUNT="$W/c2"
    step_run "$W/s4" 4 SDC_FAULT_SCRATCH_COUNT="$W/c4" # the uninterrupted reference
    C2=$(cat "$W/c2" 2> /dev/null || echo 0) C4=$(cat "$W/c4" 2> /dev/null || echo 0)
    K=$(((C4 - C2) / 2)) # scratch requests per step
    check "scratch requests counted: $C2 to step 2, $C4 to step 4 ($K per step)" test "$K" -gt 0 -a -s "$W/s4/model.safetensors"
    refused "request $((C2 + K / 2)) (inside step 3) fails: exit 1, checkpoint-2.h5 saved" \
        'checkpoint-2.h5 (the last complete step) saved' step_run "$W/sf" 4 SDC_FAULT_SCRATCH=$((C2 + K / 2))
    has "... the message says out of memory" '^sdc: error: .*out of memory'
    check "... checkpoint-1.h5 as it was" cmp "$W/t0/checkpoint-1.h5" "$W/sf/checkpoint-1.h5"
    check "... checkpoint-2.h5 readable (complete, every CRC right)" ckpt_readable "$W/sf/checkpoint-2.h5"
    runs "... the same job resumed" step_run "$W/sf" 4
    check "... its model.safetensors is bit-identical to the uninterrupted run's" \
        cmp "$W/s4/model.safetensors" "$W/sf/model.safetensors"
    ;;
esac
finish
