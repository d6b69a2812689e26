#!/bin/sh
# folders_cli.sh SDC OUT_DIR: the sdc command on diffusers folders and schedule
# options (tests/folders.cmake). Each check counts once; the script ends with
# "N passed, N failed" and exits non-zero when any check failed.
#   schedule: --karras / --timestep-spacing reach the samplers, the PNG and the
#             manifest; --karras with a sampler that has no Karras sigmas is
#             refused with its name.
SDC=$1
OUT=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO=$ROOT/data/models/sdc-tiny-sd1.safetensors
mkdir -p "$OUT"
pass=0
fail=0
check() { # check "what" command...: the command's exit status decides
    what=$1
    shift
    if "$@" >"$OUT/check.log" 2>&1; then
        pass=$((pass + 1))
        echo "  $what  OK"
    else
        fail=$((fail + 1))
        echo "  $what  NOT OK"
        sed 's/^/    | /' "$OUT/check.log" | tail -5
    fi
}
# refused "what" "message" command...: non-zero exit and the message on stderr
refused() {
    what=$1
    msg=$2
    shift 2
    if "$@" >"$OUT/refused.log" 2>&1; then
        fail=$((fail + 1))
        echo "  $what: exit status 0  NOT OK"
    elif grep -qF -- "$msg" "$OUT/refused.log"; then
        pass=$((pass + 1))
        echo "  $what: refused: $(head -c 160 "$OUT/refused.log" | head -1)  OK"
    else
        fail=$((fail + 1))
        echo "  $what: message lacks '$msg'  NOT OK"
        sed 's/^/    | /' "$OUT/refused.log" | tail -3
    fi
}
# pixels same|differ A.png B.png: pixel data only (the parameters text differs)
pixels() { /usr/bin/python3 "$ROOT/tests/png_pixels.py" "$@"; }
gen() { # gen OUT.png ARGS...: the demo model, 64 px, 4 steps
    o=$1
    shift
    "$SDC" generate -q -m "$DEMO" -p "a red fox" -W 64 -H 64 --steps 4 -o "$OUT/$o" "$@"
}

echo "schedule options:"
rm -f "$OUT"/s_*.png
schedule_runs() {
    gen s_ek.png --sampler euler --karras && gen s_k.png --sampler euler_karras && gen s_e.png --sampler euler &&
        gen s_tr.png --sampler euler --timestep-spacing trailing && gen s_uk.png --sampler unipc --karras &&
        gen s_u.png --sampler unipc
}
check "six generations with and without the options" schedule_runs
check "euler --karras gives euler_karras's image" pixels same "$OUT/s_ek.png" "$OUT/s_k.png"
check "... which differs from euler's" pixels differ "$OUT/s_e.png" "$OUT/s_k.png"
check "--timestep-spacing trailing changes euler's image" pixels differ "$OUT/s_e.png" "$OUT/s_tr.png"
check "unipc --karras changes unipc's image" pixels differ "$OUT/s_u.png" "$OUT/s_uk.png"
check "PNG parameters name Euler Karras" grep -a -q "Sampler: Euler Karras" "$OUT/s_ek.png"
check "PNG parameters: UniPC, Schedule type: Karras" grep -a -q "Sampler: UniPC, CFG scale: 7, Seed: 42, Size: 64x64, Model: sdc-tiny-sd1.safetensors, Schedule type: Karras" "$OUT/s_uk.png"
check "PNG parameters: Timestep spacing: trailing" grep -a -q "Timestep spacing: trailing" "$OUT/s_tr.png"
refused "--karras --sampler ddim" "karras with sampler ddim: diffusers' DDIMScheduler has no Karras sigmas" \
    gen s_x.png --sampler ddim --karras
refused "--timestep-spacing even" "--timestep-spacing even ---> use leading, trailing or linspace" \
    gen s_x.png --timestep-spacing even

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
