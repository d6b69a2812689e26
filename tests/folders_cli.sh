#!/bin/sh
# folders_cli.sh SDC OUT_DIR: the sdc command on diffusers folders and schedule
# options (tests/folders.cmake). Each check counts once; the script ends with
# "N passed, N failed" and exits non-zero when any check failed.
#   schedule: --karras / --timestep-spacing reach the samplers, the PNG and the
#             manifest; --karras with a sampler that has no Karras sigmas is
#             refused with its name.
#   exports:  sdc convert -o FOLDER/ (from a single file, an .h5, a folder) and
#             a DreamBooth run's diffusers/ are complete diffusers folders
#             (tokenizer/ included) that sdc samples as it samples their
#             source; tools/check_export.py loads them in diffusers.
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

echo "exports (sdc convert -o FOLDER/, DreamBooth's diffusers/): complete folders, sampled as their source:"
has_export() { # has_export FOLDER: the files diffusers' StableDiffusionPipeline.from_pretrained needs
    for f in model_index.json scheduler/scheduler_config.json unet/config.json vae/config.json \
        text_encoder/config.json tokenizer/vocab.json tokenizer/merges.txt tokenizer/tokenizer_config.json \
        tokenizer/special_tokens_map.json; do
        [ -s "$1/$f" ] || { echo "missing $1/$f"; return 1; }
    done
    grep -q '"tokenizer": \["transformers", "CLIPTokenizer"\]' "$1/model_index.json" &&
        grep -q '"model_max_length": 77' "$1/tokenizer/tokenizer_config.json"
}
same_images() { # same_images A B: sdc draws the same pixels from models A and B
    for smp in euler ddim dpm++2m; do
        "$SDC" generate -q -m "$1" -p "a red fox!" -W 64 -H 64 --steps 3 --sampler $smp -o "$OUT/si_a.png" &&
            "$SDC" generate -q -m "$2" -p "a red fox!" -W 64 -H 64 --steps 3 --sampler $smp -o "$OUT/si_b.png" &&
            pixels same "$OUT/si_a.png" "$OUT/si_b.png" || return 1
    done
}
rm -rf "$OUT/exp" "$OUT/exp.h5" "$OUT/exp2" "$OUT/exp3" "$OUT/db"
check "sdc convert -m DEMO -o exp/" "$SDC" convert -q -m "$DEMO" -o "$OUT/exp/"
check "exp/ is complete (tokenizer/ with SD 1.x's config, model_index names it)" has_export "$OUT/exp"
check "exp/'s scheduler config is SD's original one (no timestep_spacing: each sampler's default)" \
    sh -c "grep -q '\"steps_offset\": 1' '$OUT/exp/scheduler/scheduler_config.json' && ! grep -q timestep_spacing '$OUT/exp/scheduler/scheduler_config.json'"
check "sdc on exp/ draws the demo model's images (euler, ddim, dpm++2m)" same_images "$OUT/exp" "$DEMO"
check "DEMO -> exp.h5 -> exp2/ (the DreamBooth path)" sh -c "'$SDC' convert -q -m '$DEMO' -o '$OUT/exp.h5' && '$SDC' convert -q -m '$OUT/exp.h5' -o '$OUT/exp2/'"
check "exp2/ is complete" has_export "$OUT/exp2"
check "sdc on exp2/ draws the demo model's images" same_images "$OUT/exp2" "$DEMO"
check "a folder's own scheduler config is exported as it is (tiny-sd1: leading spacing)" sh -c \
    "'$SDC' convert -m '$ROOT/tests/fixtures/tiny-sd1' -o '$OUT/exp3/' 2>'$OUT/exp3.log'; cmp '$ROOT/tests/fixtures/tiny-sd1/scheduler/scheduler_config.json' '$OUT/exp3/scheduler/scheduler_config.json'"
check "a 1000-token text encoder gets no CLIP tokenizer, and a note saying why" sh -c \
    "[ ! -e '$OUT/exp3/tokenizer' ] && grep -q 'vocab has 1000 tokens, not CLIP' '$OUT/exp3.log' && grep -q '\"tokenizer\": \[null, null\]' '$OUT/exp3/model_index.json'"
with_sched() { # with_sched DST CONFIG.json: exp/ with another scheduler config
    rm -rf "$1" && cp -r "$OUT/exp" "$1" && cp "$2" "$1/scheduler/scheduler_config.json"
}
check "a folder with a DPM++ Karras config (lambda_min_clipped: -Infinity)" \
    with_sched "$OUT/exp_dpm" "$ROOT/tests/fixtures/sched/dpm-karras.json"
euler_is_karras() {
    "$SDC" generate -q -m "$OUT/exp_dpm" -p "a red fox" -W 64 -H 64 --steps 4 --sampler euler -o "$OUT/dk_a.png" &&
        "$SDC" generate -q -m "$DEMO" -p "a red fox" -W 64 -H 64 --steps 4 --sampler euler_karras -o "$OUT/dk_b.png" &&
        pixels same "$OUT/dk_a.png" "$OUT/dk_b.png"
}
check "... makes euler Karras there, as EulerDiscreteScheduler.from_config does" euler_is_karras
printf '{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "thresholding": true}\n' >"$OUT/thr.json"
check "a folder whose scheduler config asks for thresholding" with_sched "$OUT/exp_thr" "$OUT/thr.json"
refused "... refuses ddim (DDIMScheduler reads it)" "scheduler/scheduler_config.json: \"thresholding\" is true" \
    "$SDC" generate -q -m "$OUT/exp_thr" -p x -W 64 -H 64 --steps 2 --sampler ddim -o "$OUT/thr.png"
check "... and runs euler (which does not read it)" \
    "$SDC" generate -q -m "$OUT/exp_thr" -p x -W 64 -H 64 --steps 2 --sampler euler -o "$OUT/thr.png"
db_run() {
    "$SDC" train dreambooth -q --pretrained-model "$DEMO" --instance-data "$ROOT/tests/fixtures/images" \
        --instance-prompt "a photo of sks dog" --resolution 64 --train-batch-size 1 --max-train-steps 2 \
        --checkpointing-steps 100 --learning-rate 1e-3 --output-dir "$OUT/db" -t 2 2>/dev/null
}
check "a 2-step DreamBooth run" db_run
check "its diffusers/ is complete" has_export "$OUT/db/diffusers"
check "sdc on its diffusers/ draws model.safetensors's images" same_images "$OUT/db/diffusers" "$OUT/db/model.safetensors"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
