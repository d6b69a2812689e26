#!/bin/sh
# cli_checks.sh: the tests that run the sdc command itself on the shipped
# tiny model (tests/tests.cmake makes each a CTest test `cli_NAME`):
#   tests/cli_checks.sh NAME SDC SRC_ROOT WORK_DIR
# Checks through tests/check.sh: one line each, "N passed, N failed", exit 1
# on a failure. A refusal is checked by its exit status (1 or 2) and its
# message together, and, where sdc was asked to write, by the file not being
# there.

NAME=$1
SDC=$2
SRC=$3
W=$4
. "$SRC/tests/check.sh"
DEMO=$SRC/data/models/sdc-tiny-sd1.safetensors
IMGS=$SRC/tests/fixtures/images
LORA=$SRC/tests/fixtures/lora-demo-kohya.safetensors
PNGPIX="/usr/bin/python3 $SRC/tests/png_pixels.py"
rm -rf "$W" && mkdir -p "$W" || exit 1

# the size `file` reports for a PNG ("96 x 56")
png_size() { file "$1" | grep -o '[0-9]* x [0-9]*'; }
is_size() { [ "$(png_size "$1")" = "$2" ]; }
# cmp's "the files differ" (1), not "cannot read one" (2)
differ() { cmp -s "$1" "$2"; [ $? -eq 1 ]; }

# ----------------------------------------------------------------------------
# The README's main job, small: two images of a batch, PNG with parameters.
generate_demo() {
    runs "generate -b 2" "$SDC" generate -m "$DEMO" -p 'a red fox' -W 64 -H 64 --steps 3 -b 2 -o "$W/demo.png"
    check "demo.png written, 64 x 64" is_size "$W/demo.png" '64 x 64'
    check "demo_2.png written" test -s "$W/demo_2.png"
    check "demo_2.png's parameters: seed 43 (= 42 + 1)" \
        grep -a -q 'Steps: 3, Sampler: Euler, CFG scale: 7, Seed: 43' "$W/demo_2.png"
}

# The thread count: OMP_NUM_THREADS when -t is not given (as PyTorch and
# OpenBLAS read it), -t over it, every core without either. (The pixels may
# differ in the last bit between thread counts: reductions split by thread.)
threads_env() {
    cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) # (nproc itself reads OMP_NUM_THREADS)
    runs "OMP_NUM_THREADS=1" env OMP_NUM_THREADS=1 "$SDC" generate -m "$DEMO" -p 'a cat' -W 64 -H 64 --steps 2 \
        -o "$W/t1.png"
    has "OMP_NUM_THREADS=1: 1 thread" 'on cpu (1 thread)'
    runs "OMP_NUM_THREADS=1 -t 2" env OMP_NUM_THREADS=1 "$SDC" generate -m "$DEMO" -p 'a cat' -W 64 -H 64 \
        --steps 2 -t 2 -o "$W/t2.png"
    has "-t 2 over OMP_NUM_THREADS=1: 2 threads" 'on cpu (2 threads)'
    runs "OMP_NUM_THREADS=3,2 (a list: its first entry)" env OMP_NUM_THREADS=3,2 "$SDC" generate -m "$DEMO" \
        -p 'a cat' -W 64 -H 64 --steps 2 -o "$W/t3.png"
    has "OMP_NUM_THREADS=3,2: 3 threads" 'on cpu (3 threads)'
    runs "no OMP_NUM_THREADS" env -u OMP_NUM_THREADS "$SDC" generate -m "$DEMO" -p 'a cat' -W 64 -H 64 --steps 2 \
        -o "$W/t4.png"
    if [ "$cores" -eq 1 ]; then has "no OMP_NUM_THREADS: every core ($cores)" 'on cpu (1 thread)'
    else has "no OMP_NUM_THREADS: every core ($cores)" "on cpu ($cores threads)"; fi
    check "... each run wrote its image" sh -c "test -s '$W/t1.png' && test -s '$W/t2.png' && test -s '$W/t3.png'"
}

# Same seed, same image: two runs are byte-identical.
generate_deterministic() {
    runs "run 1" "$SDC" generate -q -m "$DEMO" -p 'a cat' -W 64 -H 64 --steps 2 -o "$W/a.png"
    runs "run 2" "$SDC" generate -q -m "$DEMO" -p 'a cat' -W 64 -H 64 --steps 2 -o "$W/b.png"
    check "the two PNGs are byte-identical" cmp "$W/a.png" "$W/b.png"
}

# --precision bf16 on the CPU (oneDNN; sdc's emulation where the CPU has no
# bf16 instructions) draws the fp32 image within rounding: 44.7 dB PSNR
# measured here (8 steps, 64 x 64, the demo model); 35 dB asked (an RMS error
# of 4.5 of 255). Below 99 dB: not the fp32 image itself. fp16 stays a GPU
# format. Without oneDNN: the refusal is checked, then the test skips.
generate_bf16() {
    refused "--precision fp16 refused on the CPU" 'fp32 or bf16' \
        "$SDC" generate -q -m "$DEMO" -p x -W 64 -H 64 --steps 1 --precision fp16 -o "$W/x.png"
    "$SDC" generate -m "$DEMO" -p 'a red fox' -W 64 -H 64 --steps 8 --precision bf16 -o "$W/bf16.png" \
        > "$OUT_FILE" 2>&1
    if grep -q 'built without oneDNN' "$OUT_FILE"; then
        check "bf16 refused: built without oneDNN, with the hint" grep -q 'libdnnl-dev' "$OUT_FILE"
        check "... and no output" test ! -e "$W/bf16.png"
        [ "$CHECK_FAILED" -eq 0 ] && skip "built without oneDNN (the refusal checked)"
        finish
    fi
    check "bf16 generation wrote its PNG" test -s "$W/bf16.png"
    has "... on the bf16 backend" 'on cpu-bf16'
    has "... naming what computed the bf16 ops" 'sdc: bf16 ops: oneDNN [0-9.]*: conv2d .*linear .*attention'
    runs "the fp32 image" "$SDC" generate -q -m "$DEMO" -p 'a red fox' -W 64 -H 64 --steps 8 -o "$W/fp32.png"
    check "bf16 vs fp32: PSNR >= 35 dB, < 99 dB" $PNGPIX psnr "$W/fp32.png" "$W/bf16.png" 35 99
    # 256 px: where oneDNN computes bf16, the convolutions of 256+ output pixels take its blocked kernels
    # with their weights kept while the run holds the parameters; the same image every time, from one
    # process or two pipeline stages, and the fp32 image within rounding
    set -- generate -q -m "$DEMO" -p 'a red fox' -W 256 -H 256 --steps 3 -s 5 -t 1
    runs "bf16 at 256 px" "$SDC" "$@" --precision bf16 -o "$W/a256.png"
    runs "... again" "$SDC" "$@" --precision bf16 -o "$W/b256.png"
    check "... the same PNG twice" cmp "$W/a256.png" "$W/b256.png"
    runs "... --pipeline-stages 2 under mpiexec" mpiexec --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 \
        -n 2 "$SDC" "$@" --precision bf16 --pipeline-stages 2 -o "$W/pp256.png"
    check "... the same PNG as one process" cmp "$W/a256.png" "$W/pp256.png"
    runs "the fp32 image at 256 px" "$SDC" "$@" -o "$W/fp256.png"
    check "bf16 vs fp32 at 256 px: PSNR >= 35 dB, < 99 dB" $PNGPIX psnr "$W/fp256.png" "$W/a256.png" 35 99
}

# sdc train dreambooth --mixed-precision bf16 (the CPU's mixed variant: bf16
# compute forward and backward, fp32 master weights, AdamW state and loss):
# 30 steps on five fixture photos follow the fp32 losses within 2 % (mean over
# the run, and each of the three 10-step windows; 0.04 % measured over 200
# steps of the dog photos, docs/perf-cpu.md), and are not fp32's own.
train_mixed_bf16() {
    mkdir -p "$W/photos" && for f in src97x61.png tall61x90.png rgb.png interlaced.png progressive.jpg; do
        cp "$IMGS/$f" "$W/photos/"; done
    set -- train dreambooth --pretrained-model "$DEMO" --instance-data "$W/photos" --instance-prompt "a photo of sks dog" \
        --resolution 64 --train-batch-size 2 --learning-rate 1e-4 --lr-warmup-steps 0 --max-train-steps 30 \
        --checkpointing-steps 1000 --seed 0 -t 2
    refused "--mixed-precision fp16 refused on the CPU" 'fp32 or bf16' "$SDC" "$@" --mixed-precision fp16 \
        --output-dir "$W/f16"
    "$SDC" "$@" --mixed-precision bf16 --output-dir "$W/bf16" > "$OUT_FILE" 2>&1
    if grep -q 'built without oneDNN' "$OUT_FILE"; then
        check "bf16 refused: built without oneDNN, with the hint" grep -q 'libdnnl-dev' "$OUT_FILE"
        [ "$CHECK_FAILED" -eq 0 ] && skip "built without oneDNN (the refusal checked)"
        finish
    fi
    has "the bf16 run says what it computes in bf16" 'mixed-precision bf16: conv2d, linear and attention in bf16'
    runs "the fp32 run" "$SDC" "$@" --mixed-precision no --output-dir "$W/fp32"
    check "bf16 losses within 2 % of fp32's, not equal" /usr/bin/python3 -c '
import json, sys
loss = lambda d: [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl") if "loss" in l]
a, b = loss(sys.argv[1]), loss(sys.argv[2])
rel = lambda x, y: abs(sum(y) / sum(x) - 1)
wins = [rel(a[i:i + 10], b[i:i + 10]) for i in range(0, 30, 10)]
print("  steps %d / %d; mean loss fp32 %.4f bf16 %.4f (%.3f %%); windows %s" % (len(a), len(b), sum(a) / len(a),
      sum(b) / len(b), 100 * rel(a, b), " ".join("%.3f %%" % (100 * w) for w in wins)))
sys.exit(0 if len(a) == len(b) == 30 and rel(a, b) < 0.02 and max(wins) < 0.02 and a != b else 1)' "$W/fp32" "$W/bf16"
}

# ----------------------------------------------------------------------------
# Bad input ends in a non-zero exit and a message naming the problem.
bad_size() {
    refused "-W 100 refused" 'multiples of 8' "$SDC" generate -m "$DEMO" -p x -W 100 -H 64 -o "$W/x.png"
    check "... and no output" test ! -e "$W/x.png"
}

missing_model() {
    refused "a missing model file named" '/nonexistent.safetensors' \
        "$SDC" generate -m /nonexistent.safetensors -p x -o "$W/x.png"
    check "... and no output" test ! -e "$W/x.png"
}

unknown_sampler() {
    refused "--sampler foo refused" 'unknown sampler' "$SDC" generate -m "$DEMO" -p x --sampler foo -o "$W/x.png"
}

mask_size_mismatch() {
    refused "a mask of another size refused" 'expected the same size' \
        "$SDC" generate -m "$DEMO" -p x -i "$IMGS/img24x16.png" --mask "$IMGS/src97x61.png" -o "$W/x.png"
    check "... and no output" test ! -e "$W/x.png"
}

bad_image() {
    refused "a truncated init image named" 'bad_truncated.png' \
        "$SDC" generate -m "$DEMO" -p x -i "$IMGS/bad_truncated.png" -o "$W/x.png"
    check "... and no output" test ! -e "$W/x.png"
}

bad_strength() {
    refused "--strength 1.5 refused" 'strength' \
        "$SDC" generate -m "$DEMO" -p x -i "$IMGS/img24x16.png" --strength 1.5 -o "$W/x.png"
    check "... and no output" test ! -e "$W/x.png"
}

inpaint_model_needs_mask() {
    refused "a 9-channel inpainting model without -i/--mask refused" 'inpainting model' \
        "$SDC" generate -m "$SRC/tests/fixtures/tiny-sd1-inpaint" -p x -o "$W/x.png"
    check "... and no output" test ! -e "$W/x.png"
}

# A prompt over 77 tokens runs, with a warning.
long_prompt_warns() {
    runs "a 100-token prompt runs" "$SDC" generate -m "$DEMO" \
        -p "$(printf 'a %.0s' $(seq 100))" -W 64 -H 64 --steps 1 -o "$W/long.png"
    has "... and warns that tokens were cut" 'tokens were cut'
}

# A request that cannot fit is refused before any work, with both sizes.
refuses_what_cannot_fit() {
    refused "4096 x 4096 x 256 refused with both sizes" 'MiB of activations on cpu, but only' \
        "$SDC" generate -m "$DEMO" -p x -W 4096 -H 4096 --batch-size 256 -b 256 --steps 2 -o "$W/big.png"
    check "... and no output" test ! -e "$W/big.png"
}

# ----------------------------------------------------------------------------
# img2img, inpainting and outpainting: the output size follows the init image
# (rounded down to 8) or the outpaint canvas.
img2img() {
    runs "img2img from a 97 x 61 image" \
        "$SDC" generate -q -m "$DEMO" -p x -i "$IMGS/src97x61.png" --strength 0.5 --steps 4 -o "$W/i2i.png"
    check "... 96 x 56 (rounded down to 8)" is_size "$W/i2i.png" '96 x 56'
    check "... its parameters record the strength" grep -a -q 'Denoising strength: 0.5' "$W/i2i.png"
}

inpaint() {
    runs "inpainting 24 x 16 with a mask" "$SDC" generate -q -m "$DEMO" -p x -i "$IMGS/img24x16.png" \
        --mask "$IMGS/mask24x16.png" --steps 3 -o "$W/inp.png"
    check "... 24 x 16" is_size "$W/inp.png" '24 x 16'
}

outpaint() {
    runs "outpainting 24 x 16 by 8,8,8,0" "$SDC" generate -q -m "$DEMO" -p x -i "$IMGS/img24x16.png" \
        --outpaint 8,8,8,0 --steps 3 -o "$W/outp.png"
    check "... 40 x 24" is_size "$W/outp.png" '40 x 24'
}

# ----------------------------------------------------------------------------
# --lora FILE:W (tests/fixtures/lora-demo-kohya.safetensors, kohya names in the
# original layout, from tools/make_lora_fixture.py): at 0.7 the image changes,
# at 0 it is byte-identical to the image without a LoRA; the manifest keeps
# it; a LoRA for another model is refused with the module it names.
generate_lora() {
    g() { runs "$1" "$SDC" generate -q -m "$DEMO" -p 'a cat' -W 64 -H 64 --steps 2 -o "$W/$2.png" $3; }
    g "no LoRA" lora_none
    g "--lora :0.7" lora_07 "--lora $LORA:0.7"
    g "--lora :0" lora_0 "--lora $LORA:0"
    check "at 0.7 the image changes" differ "$W/lora_none.png" "$W/lora_07.png"
    check "at 0 it is byte-identical to no LoRA" cmp "$W/lora_none.png" "$W/lora_0.png"
    "$SDC" generate -m "$DEMO" -p x --lora "$LORA:0.7" --lora b.safetensors --dump-manifest > "$W/l.txtpb"
    check "--dump-manifest with two LoRAs: exit $?" [ $? -eq 0 ]
    has "... the manifest keeps the second" 'lora: "b.safetensors"' "$W/l.txtpb"
}

lora_other_model() {
    refused "a LoRA for another model refused" 'a LoRA for another model' \
        "$SDC" generate -m "$DEMO" -p x --lora "$SRC/tests/fixtures/lora-tiny-sd1-kohya.safetensors" -o "$W/x.png"
    check "... and no output" test ! -e "$W/x.png"
}

# A manifest file runs the same job as the command line that printed it.
manifest_roundtrip() {
    "$SDC" generate -m "$DEMO" -p 'a cat' -W 64 -H 64 --steps 2 -o "$W/m1.png" --dump-manifest > "$W/job.txtpb"
    check "--dump-manifest: exit $?" [ $? -eq 0 ]
    runs "sdc run job.txtpb" "$SDC" run -q "$W/job.txtpb"
    runs "the command line itself" "$SDC" generate -q -m "$DEMO" -p 'a cat' -W 64 -H 64 --steps 2 -o "$W/m2.png"
    check "the two PNGs are byte-identical" cmp "$W/m1.png" "$W/m2.png"
}

# The example training manifest parses and prints back unchanged (comments aside).
example_manifest() {
    "$SDC" run "$SRC/jobs/examples/dreambooth-dog.txtpb" --dump-manifest > "$W/got.txtpb"
    check "sdc run jobs/examples/dreambooth-dog.txtpb --dump-manifest: exit $?" [ $? -eq 0 ]
    grep -v '^#' "$SRC/jobs/examples/dreambooth-dog.txtpb" > "$W/want.txtpb"
    check "... prints it back unchanged (comments aside)" cmp "$W/want.txtpb" "$W/got.txtpb"
}

# ----------------------------------------------------------------------------
# A LoRA training checkpoint is a LoRA: `--lora checkpoint-3.h5` gives the
# pixels of `--lora pytorch_lora_weights.safetensors` from the same (last)
# step; a full fine-tuning checkpoint is refused as a LoRA.
lora_from_checkpoint() {
    runs "3 LoRA training steps, a checkpoint at 3" "$SDC" train dreambooth -q --pretrained-model "$DEMO" \
        --instance-data "$IMGS" --instance-prompt 'a photo of sks dog' --resolution 64 --max-train-steps 3 \
        --checkpointing-steps 3 --output-dir "$W/lt" --lora-rank 4 --lora-alpha 8 --train-text-encoder \
        --learning-rate 1e-3 -t 1
    g() { runs "$1" "$SDC" generate -q -m "$DEMO" -p 'sks dog' -W 64 -H 64 --steps 3 -o "$W/$2.png" $3; }
    g "--lora checkpoint-3.h5:0.8" a "--lora $W/lt/checkpoint-3.h5:0.8"
    g "--lora pytorch_lora_weights.safetensors:0.8" b "--lora $W/lt/pytorch_lora_weights.safetensors:0.8"
    g "no LoRA" c
    check "checkpoint-3.h5 == pytorch_lora_weights.safetensors, pixel for pixel" $PNGPIX same "$W/a.png" "$W/b.png"
    check "... and != no LoRA" $PNGPIX differ "$W/a.png" "$W/c.png"
    runs "1 full fine-tuning step" "$SDC" train dreambooth -q --pretrained-model "$DEMO" --instance-data "$IMGS" \
        --instance-prompt 'x' --resolution 64 --max-train-steps 1 --checkpointing-steps 1 --output-dir "$W/full" -t 1
    has "... at train_dreambooth.py's default lr, 5e-6" '"step": 1, .*"lr": 5e-06,' "$W/full/metrics.jsonl"
    refused "a full fine-tuning checkpoint refused as a LoRA" 'no LoRA tensors' "$SDC" generate -q -m "$DEMO" \
        --lora "$W/full/checkpoint-1.h5" -p x -W 64 -H 64 --steps 2 -o "$W/d.png"
    check "... and no output" test ! -e "$W/d.png"
}

# An sdc HDF5 checkpoint works as the model of a job: converted once into
# X.h5.sdc-cache/ (a diffusers folder), then the same pixels as the file it
# came from; the second run reuses the cache.
generate_from_h5() {
    runs "convert the demo model to m.h5" "$SDC" convert -q -m "$DEMO" -o "$W/m.h5"
    g() { runs "$1" "$SDC" generate -m "$2" -p 'a fox' -W 64 -H 64 --steps 3 -o "$W/$3.png"; }
    g "generate -m m.h5" "$W/m.h5" a
    has "... converts it once" 'converting it once'
    g "generate -m m.h5 again" "$W/m.h5" b
    lacks "... does not convert again" 'converting'
    g "generate -m the .safetensors" "$DEMO" c
    check "first run from m.h5 == from the .safetensors, pixel for pixel" $PNGPIX same "$W/a.png" "$W/c.png"
    check "second run from m.h5 == from the .safetensors" $PNGPIX same "$W/b.png" "$W/c.png"
}

# A full fine-tuning run's checkpoint-N.h5 (the trained weights only) works
# as a model: its base model (the path its job was given, relative to where
# the run ran) with the trained UNet and text encoder, the pixels of the
# run's export of the same step; `sdc convert` makes the same model; from
# another folder the base is not found and the message says so; a LoRA
# training checkpoint as the model is refused, naming --lora.
generate_from_train_checkpoint() {
    cp "$DEMO" "$W/base.safetensors" || return
    runs "2 full fine-tuning steps (text encoder too) from a relative model path, checkpoints at 1 and 2" \
        sh -c "cd '$W' && '$SDC' train dreambooth -q --pretrained-model base.safetensors --instance-data '$IMGS' \
        --instance-prompt 'a photo of sks dog' --resolution 64 --max-train-steps 2 --checkpointing-steps 1 \
        --train-text-encoder --learning-rate 1e-3 --output-dir ft -t 1"
    g() { runs "$1" sh -c "cd '$W' && '$SDC' generate -m '$2' -p 'a photo of sks dog' -W 64 -H 64 --steps 3 \
        -t 1 -o '$3.png'"; }
    g "generate -m ft/checkpoint-2.h5" ft/checkpoint-2.h5 c2
    has "... its base named" "trained weights of a run on base.safetensors"
    # (checkpoint-1.h5 not yet converted: a converted one is a complete model wherever sdc runs)
    refused "from another folder: the base is not found, and the message says where to run" \
        "base model base.safetensors, not found here.*" sh -c "cd / && '$SDC' generate -m '$W/ft/checkpoint-1.h5' \
        -p x -W 64 -H 64 --steps 2 -o '$W/no.png'"
    has "... naming the run's folder" "run sdc from the folder the training ran in"
    check "... and no output" test ! -e "$W/no.png"
    g "generate -m ft/checkpoint-1.h5" ft/checkpoint-1.h5 c1
    g "generate -m ft/diffusers (the export of step 2)" ft/diffusers ex
    g "generate -m base.safetensors" base.safetensors base
    check "checkpoint-2.h5 == the exported model, pixel for pixel" $PNGPIX same "$W/c2.png" "$W/ex.png"
    check "... != checkpoint-1.h5" $PNGPIX differ "$W/c1.png" "$W/c2.png"
    check "... != the base model" $PNGPIX differ "$W/base.png" "$W/c2.png"
    runs "sdc convert ft/checkpoint-2.h5 -o c2.safetensors" sh -c \
        "cd '$W' && '$SDC' convert -q -m ft/checkpoint-2.h5 -o c2.safetensors"
    g "generate -m c2.safetensors" c2.safetensors cv
    check "... the same pixels" $PNGPIX same "$W/cv.png" "$W/c2.png"
    runs "1 LoRA training step, a checkpoint" "$SDC" train dreambooth -q --pretrained-model "$DEMO" \
        --instance-data "$IMGS" --instance-prompt 'x' --resolution 64 --max-train-steps 1 --checkpointing-steps 1 \
        --output-dir "$W/lt" --lora-rank 4 -t 1
    has "... at train_dreambooth_lora.py's default lr, 5e-4" '"step": 1, .*"lr": 0.0005,' "$W/lt/metrics.jsonl"
    refused "a LoRA training checkpoint as the model: refused" "a LoRA training checkpoint, not a model" \
        "$SDC" generate -m "$W/lt/checkpoint-1.h5" -p x -W 64 -H 64 --steps 2 -o "$W/no.png"
    has "... naming --lora and its base" "generate -m $DEMO --lora $W/lt/checkpoint-1.h5"
    check "... and no output" test ! -e "$W/no.png"
}

# metrics.jsonl that cannot be written (a full disk: here /dev/full, whose
# writes fail with ENOSPC): one warning naming the file and the error, and
# the run goes on to its model.
train_metrics_full() {
    mkdir -p "$W/mf" && ln -s /dev/full "$W/mf/metrics.jsonl" || return
    runs "3 steps, metrics.jsonl on a full disk" "$SDC" train dreambooth -q --pretrained-model "$DEMO" \
        --instance-data "$IMGS" --instance-prompt 'x' --resolution 64 --max-train-steps 3 --output-dir "$W/mf" -t 1
    has "... one warning, naming the file and the error" \
        "warning: $W/mf/metrics.jsonl: write failed (No space left on device): no metrics logged after step 0"
    check "... once" test "$(grep -c 'metrics.jsonl: write failed' "$OUT_FILE")" -eq 1
    check "... the run's model written" test -s "$W/mf/model.safetensors"
}

# A model with its own tokenizer (the shipped sdc-synth: 670 tokens, not
# CLIP's 49408) keeps it through sdc's .h5: generate from the .h5 draws the
# folder's pixels, the .h5 converted back to a folder has the same
# tokenizer/ files, and a DreamBooth run on the model exports a model.h5
# that generates and a diffusers/ with them.
h5_keeps_tokenizer() {
    SYN=$SRC/data/models/sdc-synth
    P="a large blue star on a plain yellow background"
    runs "sdc convert sdc-synth -o m.h5" "$SDC" convert -q -m "$SYN" -o "$W/m.h5"
    runs "generate -m m.h5" "$SDC" generate -q -m "$W/m.h5" -p "$P" -t 1 -o "$W/h5.png"
    runs "generate -m sdc-synth" "$SDC" generate -q -m "$SYN" -p "$P" -t 1 -o "$W/dir.png"
    check "... the same pixels" $PNGPIX same "$W/h5.png" "$W/dir.png"
    runs "sdc convert m.h5 -o back/" "$SDC" convert -q -m "$W/m.h5" -o "$W/back"
    check "... its tokenizer/ = sdc-synth's, file for file" diff -r "$SYN/tokenizer" "$W/back/tokenizer"
    runs "its single file, then .h5 with --config sdc-synth" sh -c "'$SDC' convert -q -m '$SYN' -o '$W/s.safetensors' \
        && '$SDC' convert -q -m '$W/s.safetensors' --config '$SYN' -o '$W/s.h5'"
    runs "generate -m s.h5 (the config folder's tokenizer kept)" "$SDC" generate -q -m "$W/s.h5" -p "$P" -t 1 \
        -o "$W/s.png"
    check "... the same pixels" $PNGPIX same "$W/s.png" "$W/dir.png"
    runs "1 DreamBooth step on sdc-synth" "$SDC" train dreambooth -q --pretrained-model "$SYN" --instance-data "$IMGS" \
        --instance-prompt 'a sks shape' --resolution 64 --max-train-steps 1 --output-dir "$W/db" -t 1
    runs "generate -m its model.h5" "$SDC" generate -q -m "$W/db/model.h5" -p "$P" -t 1 -o "$W/db.png"
    check "... its diffusers/tokenizer = sdc-synth's" diff -r "$SYN/tokenizer" "$W/db/diffusers/tokenizer"
}

# SDXL: its micro-conditioning flags are checked and refused for SD 1.x; the
# text encoders' training flags are checked before any work.
sdxl_refusals() {
    XL=$SRC/tests/fixtures/tiny-sdxl
    refused "--original-size with an SD 1.x model" "SDXL's micro-conditioning" "$SDC" generate -q -m "$DEMO" \
        -p x -W 64 -H 64 --steps 2 --original-size 64,64 -o "$W/a.png"
    check "... and no output" test ! -e "$W/a.png"
    refused "--original-size 64 (one number)" "HEIGHT,WIDTH" "$SDC" generate -q -m "$XL" -p x --original-size 64 \
        -o "$W/b.png"
    refused "--crops-coords-top-left -1,0" "TOP,LEFT" "$SDC" generate -q -m "$XL" -p x \
        --crops-coords-top-left -1,0 -o "$W/b.png"
    refused "--negative-original-size without --negative-target-size" "go together" "$SDC" generate -q -m "$XL" \
        -p x --negative-original-size 64,64 -o "$W/b.png"
    # the text encoders' param groups (--train-text-encoder): bad values refused before any work
    refused "--text-encoder-lr -1" "--text-encoder-lr -1 must be >= 0 ---> 0 means --learning-rate" \
        "$SDC" train dreambooth -q --pretrained-model "$XL" --instance-data "$IMGS" \
        --instance-prompt 'a photo of sks dog' --resolution 64 --max-train-steps 1 --output-dir "$W/t" -t 1 \
        --lora-rank 4 --train-text-encoder --text-encoder-lr -1
    check "... before any work (no output folder content)" test ! -e "$W/t/instance.h5"
    refused "--adam-weight-decay-text-encoder -0.5" "--adam-weight-decay-text-encoder -0.5 must be >= 0" \
        "$SDC" train dreambooth -q --pretrained-model "$XL" --instance-data "$IMGS" \
        --instance-prompt 'a photo of sks dog' --resolution 64 --max-train-steps 1 --output-dir "$W/t" -t 1 \
        --lora-rank 4 --train-text-encoder --adam-weight-decay-text-encoder -0.5
    refused "--text-encoder-lr nan" "--text-encoder-lr" \
        "$SDC" train dreambooth -q --pretrained-model "$XL" --instance-data "$IMGS" \
        --instance-prompt 'a photo of sks dog' --resolution 64 --max-train-steps 1 --output-dir "$W/t" -t 1 \
        --lora-rank 4 --train-text-encoder --text-encoder-lr nan
    refused "--text-encoder-lr without --train-text-encoder" "without --train-text-encoder set nothing" \
        "$SDC" train dreambooth -q --pretrained-model "$XL" --instance-data "$IMGS" \
        --instance-prompt 'a photo of sks dog' --resolution 64 --max-train-steps 1 --output-dir "$W/t2" -t 1 \
        --lora-rank 4 --text-encoder-lr 1e-5
    check "... before any work" test ! -e "$W/t2/instance.h5"
    # the flag is a field of the job manifest (jobs/sdc.proto Dreambooth.text_encoder_lr, 44)
    runs "SDXL --train-text-encoder --dump-manifest" "$SDC" train dreambooth --pretrained-model "$XL" \
        --instance-data "$IMGS" --instance-prompt 'a photo of sks dog' --lora-rank 4 --train-text-encoder \
        --text-encoder-lr 2e-5 --dump-manifest
    has "... --text-encoder-lr in the manifest" 'text_encoder_lr: 2[.0-9]*e-05'
    # a LoRA of one family on a model of the other, in both namings: refused, naming the tensor
    for f in diffusers kohya; do
        refused "an SDXL LoRA ($f names) on an SD 1.x model" "is for a second text encoder: an SDXL LoRA" \
            "$SDC" generate -q -m "$DEMO" -p x -W 64 -H 64 --steps 1 \
            --lora "$SRC/tests/fixtures/lora-tiny-sdxl-$f.safetensors" -o "$W/l1.png"
        check "... and no output" test ! -e "$W/l1.png"
        refused "an SD 1.x LoRA ($f names) on an SDXL model" "updates a module this model does not have" \
            "$SDC" generate -q -m "$XL" -p x -W 64 -H 64 --steps 1 \
            --lora "$SRC/tests/fixtures/lora-tiny-sd1-$f.safetensors" -o "$W/l2.png"
        check "... and no output" test ! -e "$W/l2.png"
    done
}

# SDXL from the command line: the tiny SDXL folder (its own two tokenizers)
# draws diffusers' StableDiffusionXLPipeline image for the prompt (within
# 1/255: tests/fixtures/ref-tiny-sdxl.safetensors pipe.text.image), and
# --pipeline-stages 2 under mpiexec gives the same bytes as one process.
sdxl_generate() {
    XL=$SRC/tests/fixtures/tiny-sdxl
    P='a photo of a red fox in the snow, high quality!'
    runs "generate with the tiny SDXL folder" "$SDC" generate -m "$XL" -p "$P" -W 64 -H 64 --steps 4 \
        --cfg-scale 5 -s 7 -t 1 -o "$W/one.png"
    has "... loaded as SDXL" '(SDXL, diffusers layout'
    check "... the image of diffusers' StableDiffusionXLPipeline (within 1/255)" /usr/bin/python3 \
        "$SRC/tests/png_vs_ref.py" "$W/one.png" "$SRC/tests/fixtures/ref-tiny-sdxl.safetensors" pipe.text.image 1
    runs "--pipeline-stages 2 under mpiexec" mpiexec --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 \
        -n 2 "$SDC" generate -q -m "$XL" -p "$P" -W 64 -H 64 --steps 4 --cfg-scale 5 -s 7 -t 1 \
        --pipeline-stages 2 -o "$W/pp.png"
    check "... the same PNG as one process" cmp "$W/one.png" "$W/pp.png"
}

# SDXL bad input: a single file missing one of its two text encoders is
# refused naming the encoder and the missing tensors (by generate and by
# convert, which writes nothing); a folder without text_encoder_2/ names it;
# sizes that are not multiples of 8 are refused before the model is loaded.
sdxl_bad_input() {
    XLI=$SRC/tests/fixtures/tiny-sdxl-infer.safetensors
    XL=$SRC/tests/fixtures/tiny-sdxl
    /usr/bin/python3 "$SRC/tests/st_drop.py" "$XLI" "$W/no-te2.safetensors" conditioner.embedders.1. > /dev/null
    /usr/bin/python3 "$SRC/tests/st_drop.py" "$XLI" "$W/no-te1.safetensors" conditioner.embedders.0. > /dev/null
    refused "a single file without its OpenCLIP encoder" \
        "without its second text encoder (OpenCLIP ViT-bigG, conditioner.embedders.1.model" \
        "$SDC" generate -q -m "$W/no-te2.safetensors" -p x -W 64 -H 64 --steps 1 -o "$W/a.png"
    check "... and no output" test ! -e "$W/a.png"
    refused "a single file without its CLIP ViT-L encoder" \
        "without its first text encoder (CLIP ViT-L, conditioner.embedders.0.transformer" \
        "$SDC" generate -q -m "$W/no-te1.safetensors" -p x -W 64 -H 64 --steps 1 -o "$W/a.png"
    refused "... sdc convert of it too" "without its first text encoder" \
        "$SDC" convert -q -m "$W/no-te1.safetensors" -o "$W/no-te1.h5"
    check "... and no output" test ! -e "$W/no-te1.h5"
    mkdir -p "$W/no-te2"
    for e in unet vae text_encoder tokenizer tokenizer_2 scheduler model_index.json; do ln -s "$XL/$e" "$W/no-te2/$e"; done
    refused "a folder without text_encoder_2/" "text_encoder_2" \
        "$SDC" generate -q -m "$W/no-te2" -p x -W 64 -H 64 --steps 1 -o "$W/b.png"
    check "... and no output" test ! -e "$W/b.png"
    refused "SDXL -W 100 refused" 'size 100x64; width and height must be multiples of 8' \
        "$SDC" generate -q -m "$XL" -p x -W 100 -H 64 -o "$W/c.png"
    refused "SDXL -H 1020 refused" 'size 64x1020; width and height must be multiples of 8' \
        "$SDC" generate -q -m "$XL" -p x -W 64 -H 1020 -o "$W/c.png"
    check "... and no output" test ! -e "$W/c.png"
}

# sdc submit with an SDXL generate manifest (micro-conditioning fields 20-25,
# from --dump-manifest): it validates, the Slurm script and the frozen
# manifest copy are written (--dry-run: no sbatch), the copy keeps every
# SDXL field and runs (`sdc run`, as the script's srun would) to the PNG of
# the same `sdc generate`; bad SDXL fields are refused, naming the field,
# with no script written.
sdxl_submit() {
    XL=$SRC/tests/fixtures/tiny-sdxl
    cd "$W" || return
    set -- -m "$XL" -p 'a photo of a red fox' -W 64 -H 64 --steps 2 --cfg-scale 5 -s 7 -t 1 \
        --original-size 96,128 --crops-coords-top-left 8,16 --target-size 64,80 --negative-original-size 32,48 \
        --negative-crops-coords-top-left 4,0 --negative-target-size 64,64
    runs "--dump-manifest of an SDXL generate" sh -c '"$0" generate "$@" -o run.png --dump-manifest > job.txtpb' \
        "$SDC" "$@"
    runs "sdc submit job.txtpb --dry-run" "$SDC" submit job.txtpb --dry-run -N 1 --ntasks-per-node 2 -t 00:30:00
    has "... names the script" 'wrote job.sbatch'
    check "... job.sbatch written" test -s job.sbatch
    has "... the script runs srun --mpi=pmix sdc run on the copy" 'srun --mpi=pmix .*run "\$JOB"' job.sbatch
    has "... 2 ranks" '#SBATCH --ntasks-per-node=2' job.sbatch
    has "... its time limit" '#SBATCH --time=00:30:00' job.sbatch
    has "... the copy names the SDXL model" "tiny-sdxl" job.job.txtpb
    for f in original_size crops_coords_top_left target_size negative_original_size negative_crops_coords_top_left \
        negative_target_size; do
        check "... the copy keeps $f (2 values)" test "$(grep -c "^  $f: " job.job.txtpb)" -eq 2
    done
    has "... the copy keeps its PNGs on requeue (skip_existing)" 'skip_existing: true' job.job.txtpb
    runs "the copy runs (sdc run, as srun would)" "$SDC" run job.job.txtpb
    runs "sdc generate with the same flags" "$SDC" generate -q "$@" -o direct.png
    check "... the same PNG" $PNGPIX same run.png direct.png
    for bad in "s/original_size: 128/original_size: 128\n  original_size: 7/|original_size has 3 values" \
        "/negative_target_size/d|negative_original_size and negative_target_size go together" \
        "s/crops_coords_top_left: 8/crops_coords_top_left: -8/|crops_coords_top_left\[0\] is -8" \
        "s/width: 64/width: 100/|width and height must be multiples of 8"; do
        rm -f bad.sbatch
        sed "${bad%%|*}" job.txtpb > bad.txtpb
        refused "submit refuses: ${bad#*|}" "${bad#*|}" "$SDC" submit bad.txtpb --dry-run
        check "... and writes no script" test ! -e bad.sbatch
    done
    cd - > /dev/null || return
}

# The SDXL refiner: bad uses refused with messages naming the problem, and
# nothing written.
sdxl_refiner_refusals() {
    XL=$SRC/tests/fixtures/tiny-sdxl
    RF=$SRC/tests/fixtures/tiny-sdxl-refiner
    refused "the refiner from noise (no --init-img)" "is an SDXL refiner: it refines an image" "$SDC" generate -q \
        -m "$RF" -p x -W 64 -H 64 --steps 4 -o "$W/a.png"
    check "... and no output" test ! -e "$W/a.png"
    refused "--refiner on an SD 1.x model" "is an SD 1.x model, but a refiner finishes what an SDXL base" "$SDC" \
        generate -q -m "$DEMO" -p x -W 64 -H 64 --steps 4 --refiner "$RF" -o "$W/b.png"
    check "... and no output" test ! -e "$W/b.png"
    refused "a base model passed as --refiner" "is not an SDXL refiner but an SDXL base model" "$SDC" generate -q \
        -m "$XL" -p x -W 64 -H 64 --steps 4 --refiner "$XL" -o "$W/c.png"
    check "... and no output" test ! -e "$W/c.png"
    refused "the refiner as --refiner of itself" "is itself an SDXL refiner" "$SDC" generate -q -m "$RF" -p x \
        -W 64 -H 64 --steps 4 --refiner "$RF" -o "$W/d.png"
    for v in 0 1 1.5 -0.2; do
        refused "--refiner-start $v" "expected a fraction between 0 and 1" "$SDC" generate -q -m "$XL" -p x \
            -W 64 -H 64 --steps 4 --refiner "$RF" --refiner-start $v -o "$W/e.png"
    done
    check "... and no output" test ! -e "$W/e.png"
    refused "--refiner-start without --refiner" "goes with --refiner" "$SDC" generate -q -m "$XL" -p x \
        --refiner-start 0.7 -o "$W/f.png"
    refused "--refiner-start 0.9999 with 4 steps (nothing left for the refiner)" \
        "leaves the refiner no denoising step" "$SDC" generate -q -m "$XL" -p x -W 64 -H 64 --steps 4 \
        --refiner "$RF" --refiner-start 0.9999 -o "$W/g.png"
    check "... and no output" test ! -e "$W/g.png"
    refused "--aesthetic-score without a refiner" "is not an SDXL refiner: --aesthetic-score" "$SDC" generate -q \
        -m "$XL" -p x -W 64 -H 64 --steps 4 --aesthetic-score 7 -o "$W/h.png"
    refused "--aesthetic-score 0" "expected scores above 0" "$SDC" generate -q -m "$RF" -p x --aesthetic-score 0 \
        --init-img "$IMGS/sdxl-refiner-init.png" -o "$W/i.png"
    refused "--refiner with --pipeline-stages" "generate.refiner with runtime.pipeline_stages 2 is not supported" \
        "$SDC" generate -q -m "$XL" -p x --refiner "$RF" --pipeline-stages 2 -o "$W/j.png"
    mkdir -p "$W/notrefiner" && cp -r "$XL/unet" "$XL/vae" "$XL/text_encoder_2" "$XL/tokenizer_2" "$XL/scheduler" \
        "$W/notrefiner/"
    refused "a base folder without text_encoder/ (read as a refiner)" "but the refiner's one text encoder" "$SDC" \
        generate -q -m "$W/notrefiner" -p x -o "$W/k.png"
}

# The SDXL refiner from the command line: alone on an image (diffusers'
# StableDiffusionXLImg2ImgPipeline with the refiner), and after the base
# (the ensemble of experts), each the image of diffusers within 1/255
# (tests/fixtures/ref-tiny-sdxl-refiner.safetensors r.img2img.image,
# ens.euler.image); the PNG names the refiner as A1111 does.
sdxl_refiner_generate() {
    XL=$SRC/tests/fixtures/tiny-sdxl
    RF=$SRC/tests/fixtures/tiny-sdxl-refiner
    REF=$SRC/tests/fixtures/ref-tiny-sdxl-refiner.safetensors
    P='a photo of a red fox in the snow, high quality!'
    runs "the refiner alone: img2img" "$SDC" generate -m "$RF" -p "$P" --init-img "$IMGS/sdxl-refiner-init.png" \
        --strength 0.6 --steps 8 --cfg-scale 5 -s 7 -t 1 -o "$W/refined.png"
    check "... the image of diffusers' StableDiffusionXLImg2ImgPipeline (within 1/255)" /usr/bin/python3 \
        "$SRC/tests/png_vs_ref.py" "$W/refined.png" "$REF" r.img2img.image 1
    runs "base then refiner (--refiner, --refiner-start 0.8)" "$SDC" generate -m "$XL" -p "$P" -W 64 -H 64 \
        --steps 10 --cfg-scale 5 -s 7 -t 1 --refiner "$RF" --refiner-start 0.8 -o "$W/ens.png"
    has "... the refiner loaded" 'refiner .*tiny-sdxl-refiner (SDXL refiner, diffusers layout) from 80%'
    check "... the image of diffusers' base(denoising_end) -> refiner(denoising_start) (within 1/255)" \
        /usr/bin/python3 "$SRC/tests/png_vs_ref.py" "$W/ens.png" "$REF" ens.euler.image 1
    runs "inpainting: base to 0.8, the refiner inpaints on (--mask, --refiner)" "$SDC" generate -m "$XL" -p "$P" \
        --init-img "$IMGS/sdxl-refiner-init.png" --mask "$IMGS/sdxl-refiner-mask.png" --strength 0.75 -W 64 -H 64 \
        --steps 10 --cfg-scale 5 -s 7 -t 1 --refiner "$RF" --refiner-start 0.8 -o "$W/ens-inpaint.png"
    check "... the image of diffusers' StableDiffusionXLInpaintPipeline base -> refiner (within 1/255)" \
        /usr/bin/python3 "$SRC/tests/png_vs_ref.py" "$W/ens-inpaint.png" "$REF" ens.inpaint.euler.image 1
    check "... its parameters name the refiner and the switch" grep -a -q \
        'Refiner: tiny-sdxl-refiner, Refiner switch at: 0.8' "$W/ens.png"
    runs "the same from a manifest (--dump-manifest, sdc run)" sh -c "\"$SDC\" generate -m \"$XL\" -p '$P' -W 64 \
        -H 64 --steps 10 --cfg-scale 5 -s 7 -t 1 --refiner \"$RF\" -o \"$W/ens2.png\" --dump-manifest > \"$W/job.txtpb\" \
        && \"$SDC\" run -q \"$W/job.txtpb\""
    check "... the manifest has the refiner" grep -q 'refiner: ' "$W/job.txtpb"
    check "... the same PNG" cmp "$W/ens.png" "$W/ens2.png"
}

case "$NAME" in
    generate_demo | generate_deterministic | bad_size | missing_model | unknown_sampler | mask_size_mismatch | \
        bad_image | bad_strength | inpaint_model_needs_mask | long_prompt_warns | refuses_what_cannot_fit | \
        img2img | inpaint | outpaint | generate_lora | lora_other_model | manifest_roundtrip | example_manifest | \
        lora_from_checkpoint | generate_from_h5 | sdxl_refusals | sdxl_generate | sdxl_bad_input | sdxl_submit | \
        sdxl_refiner_refusals | sdxl_refiner_generate | generate_bf16 | train_mixed_bf16 | threads_env | \
    generate_from_train_checkpoint | train_metrics_full | h5_keeps_tokenizer)
        $NAME ;;
    *) echo "cli_checks.sh: unknown test '$NAME'"; exit 2 ;;
esac
finish
