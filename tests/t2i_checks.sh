#!/bin/sh
# t2i_checks.sh: `sdc train text-to-image` end to end (tests/t2i_train.cmake):
#   tests/t2i_checks.sh SDC SRC_ROOT WORK_DIR
# On a 12-item synth dataset at 64 px with the demo model (the trainer's
# step itself is checked against torch by test_dreambooth, cases ta-tc):
# a run stopped at step 2 and resumed from its checkpoint exports the same
# model, byte for byte, as an uninterrupted 4-step run; with --use-ema the
# export is the EMA (the checkpoint's unet_ema group), not the last weights,
# and so is the checkpoint used as a model;
# validation images of every prompt; 2 ranks (data parallel) and 2 pipeline
# stages against one process; the manifest runs the same job; bad input
# refused with exit status and message. Checks through tests/check.sh.
SDC=$1
SRC=$2
W=$3
. "$SRC/tests/check.sh"
DEMO=$SRC/data/models/sdc-tiny-sd1.safetensors
rm -rf "$W" && mkdir -p "$W" || exit 1
T="-q -t 2 --train-batch-size 4 --seed 5 --lr-warmup-steps 0 --use-ema --random-flip --proportion-empty-prompts 0.25
   --input-perturbation 0.1 --snr-gamma 5 --checkpointing-steps 2"
H5PY=/usr/bin/python3

runs "synth dataset: 12 items at 64 px" "$SDC" dataset synth -q -n 12 --resolution 64 -o "$W/s.h5"
runs "uninterrupted: 4 steps" "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s.h5" \
    --output-dir "$W/a" --max-train-steps 4 $T
runs "interrupted: 2 steps" "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s.h5" \
    --output-dir "$W/b" --max-train-steps 2 $T
runs "resumed (latest) to 4 steps" "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s.h5" \
    --output-dir "$W/b" --max-train-steps 4 --resume-from-checkpoint latest $T
check "... the same model.safetensors as uninterrupted, byte for byte" cmp "$W/a/model.safetensors" \
    "$W/b/model.safetensors"
check "... the same diffusers UNet" cmp "$W/a/diffusers/unet/diffusion_pytorch_model.safetensors" \
    "$W/b/diffusers/unet/diffusion_pytorch_model.safetensors"
check "the export is the EMA: model.h5's unet = checkpoint-4.h5's unet_ema, not its unet" $H5PY -c "
import h5py, numpy as np, sys
m, c = h5py.File('$W/a/model.h5', 'r'), h5py.File('$W/a/checkpoint-4.h5', 'r')
names = [n for n in c['unet_ema']]
same = sum(np.array_equal(m['unet'][n][()], c['unet_ema'][n][()]) for n in names)
moved = sum(not np.array_equal(c['unet'][n][()], c['unet_ema'][n][()]) for n in names)
print(len(names), 'EMA tensors,', same, 'equal to the export,', moved, 'differ from the last weights')
sys.exit(0 if names and same == len(names) and moved > len(names) // 2 and len(names) == len(m['unet']) else 1)"

# a checkpoint as the model (the base with the trained weights): its EMA, the export's pixels
PNGPIX="/usr/bin/python3 $SRC/tests/png_pixels.py"
gen() { runs "$1" "$SDC" generate -q -m "$2" -p 'a red star' -W 64 -H 64 --steps 3 -t 1 -o "$W/$3.png"; }
gen "generate -m checkpoint-4.h5" "$W/a/checkpoint-4.h5" ck4
gen "generate -m model.safetensors (the EMA export)" "$W/a/model.safetensors" ex4
check "... the same pixels: a checkpoint as a model is its EMA" $PNGPIX same "$W/ck4.png" "$W/ex4.png"

# --cache-latents-to-disk: the encoded images kept in OUTPUT_DIR/latents_cache.h5 and read by the resumed run
T0=$(echo "$T" | sed 's/-q //')
runs "cached latents: 2 steps" "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s.h5" \
    --output-dir "$W/c" --max-train-steps 2 --cache-latents-to-disk $T
check "... OUTPUT_DIR/latents_cache.h5 written" test -f "$W/c/latents_cache.h5"
runs "... resumed to 4 steps" "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s.h5" \
    --output-dir "$W/c" --max-train-steps 4 --resume-from-checkpoint latest --cache-latents-to-disk $T0
has "... which read the latents from the cache" '12 latents from .*latents_cache.h5'
lacks "... and ran no VAE" 'encoding 12 images'
check "... the uninterrupted run's model, byte for byte" cmp "$W/a/model.safetensors" "$W/c/model.safetensors"
$H5PY -c "
import h5py
f = h5py.File('$W/c/latents_cache.h5', 'r+')
f['mean'][0, 0, 0, 0] += 0.5" || check_fail "tampering with the cache"
runs "a cache whose item 0 differs from its encoding now (another VAE, other images)" "$SDC" train text-to-image \
    --pretrained-model "$DEMO" --train-data "$W/s.h5" --output-dir "$W/c" --max-train-steps 5 \
    --resume-from-checkpoint latest --cache-latents-to-disk $T0
has "... is not taken" 'latents_cache.h5: items 0, 6, 11 encode .* away from it now'
has "... the images are encoded again" 'encoding 12 images'
touch "$W/s.h5"
runs "a dataset changed since (its mtime)" "$SDC" train text-to-image --pretrained-model "$DEMO" \
    --train-data "$W/s.h5" --output-dir "$W/c" --max-train-steps 6 --resume-from-checkpoint latest \
    --cache-latents-to-disk $T0
has "... the cache is not taken" 'made for another dataset_mtime_ns'
head -c 3000 "$W/c/latents_cache.h5" > "$W/c/cut.h5" && mv "$W/c/cut.h5" "$W/c/latents_cache.h5"
runs "a truncated cache" "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s.h5" \
    --output-dir "$W/c" --max-train-steps 7 --resume-from-checkpoint latest --cache-latents-to-disk $T0
has "... is called unreadable and rebuilt" 'latents_cache.h5: unreadable'
has "... rewritten" 'cached in .*latents_cache.h5'

# SIGTERM while the images are being encoded (minutes on a big dataset) stops at once, resumable, no cache
runs "synth dataset: 3000 items" "$SDC" dataset synth -q -n 3000 --resolution 64 -o "$W/big.h5"
"$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/big.h5" --output-dir "$W/sig" \
    --max-train-steps 100000 --cache-latents-to-disk -t 1 > "$W/sig.log" 2>&1 &
pid=$!
sleep 3
kill -TERM $pid
t0=$(date +%s)
wait $pid
rc=$?
t1=$(date +%s)
check "SIGTERM while encoding: exit 75 (resumable) within 10 s (exit $rc, $((t1 - t0)) s)" \
    test $rc -eq 75 -a $((t1 - t0)) -le 10
has "... saying so" 'SIGTERM while encoding the dataset' "$W/sig.log"
check "... no cache left behind" test ! -e "$W/sig/latents_cache.h5" -a ! -e "$W/sig/latents_cache.h5.tmp"

runs "validation images: 2 prompts every epoch" "$SDC" train text-to-image --pretrained-model "$DEMO" \
    --train-data "$W/s.h5" --output-dir "$W/v" --max-train-steps 3 --validation-epochs 1 \
    --validation-prompts "a red star on a blue background" "a large green circle on a white background" \
    --validation-inference-steps 4 $T
check "... step-3's two PNGs" test -f "$W/v/validation/step-000003-0.png" -a -f "$W/v/validation/step-000003-1.png"
check "... 64x64, with their prompts" $H5PY -c "
import struct, sys, zlib
d = open('$W/v/validation/step-000003-1.png', 'rb').read()
w, h = struct.unpack('>II', d[16:24])
print(w, h); sys.exit(0 if (w, h) == (64, 64) and b'a large green circle' in d else 1)"

runs "--dump-manifest" "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s.h5" \
    --output-dir "$W/m" --max-train-steps 4 $T --dump-manifest
cp "$OUT_FILE" "$W/t2i.txtpb"
has "... the task named" 'task: TASK_TRAIN_TEXT_TO_IMAGE' "$W/t2i.txtpb"
has "... the options" 'proportion_empty_prompts: 0.25' "$W/t2i.txtpb"
runs "sdc run of that manifest" "$SDC" run -q "$W/t2i.txtpb"
check "... the command's model, byte for byte" cmp "$W/a/model.safetensors" "$W/m/model.safetensors"

if command -v mpiexec > /dev/null; then
    MPIRUN="mpiexec --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1"
    D="-q -t 1 --train-batch-size 4 --seed 5 --lr-warmup-steps 0 --use-ema --random-flip --max-train-steps 3
       --proportion-empty-prompts 0.25 --micro-batches 2"
    runs "1 process: 3 steps" "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s.h5" \
        --output-dir "$W/p1" $D
    runs "2 ranks (data parallel): the same 3 steps" $MPIRUN -n 2 "$SDC" train text-to-image \
        --pretrained-model "$DEMO" --train-data "$W/s.h5" --output-dir "$W/p2" $D
    check "... the same losses (1e-5)" $H5PY -c "
import json, sys
a = [json.loads(l)['loss'] for l in open('$W/p1/metrics.jsonl')]
b = [json.loads(l)['loss'] for l in open('$W/p2/metrics.jsonl')]
d = max(abs(x - y) / abs(x) for x, y in zip(a, b)) if a else 1
print(a, b, 'worst', d); sys.exit(0 if len(a) == 3 and len(a) == len(b) and d < 1e-5 else 1)"
    check "... the same EMA export up to summation order (1e-3 of each tensor)" $H5PY -c "
import h5py, numpy as np, sys
a, b = h5py.File('$W/p1/model.h5', 'r')['unet'], h5py.File('$W/p2/model.h5', 'r')['unet']
w = max(float(np.abs(a[k][()] - b[k][()]).max() / max(np.abs(a[k][()]).max(), 1e-12)) for k in a)
print(len(a), 'tensors, worst', w); sys.exit(0 if len(a) == len(b) and w < 1e-3 else 1)"
    runs "2 pipeline stages" $MPIRUN -n 2 "$SDC" train text-to-image --pretrained-model "$DEMO" \
        --train-data "$W/s.h5" --output-dir "$W/p3" --pipeline-stages 2 $D
    check "... the same model as one process, byte for byte" cmp "$W/p1/model.safetensors" "$W/p3/model.safetensors"
    # --cache-latents-to-disk streams each batch's rows from the cache (memory flat in the dataset size); the
    # cache is encoded in chunks (here of 8 items: 5 chunks for one process, 3 of 16 for 2 ranks)
    runs "synth dataset: 40 items at 64 px" "$SDC" dataset synth -q -n 40 --resolution 64 -o "$W/s40.h5"
    runs "1 process, latents in memory: 3 steps" "$SDC" train text-to-image --pretrained-model "$DEMO" \
        --train-data "$W/s40.h5" --output-dir "$W/p4" $D
    SDC_T2I_CACHE_CHUNK_ITEMS=8 runs "1 process, latents read from the cache, encoded in 5 chunks: 3 steps" \
        "$SDC" train text-to-image --pretrained-model "$DEMO" --train-data "$W/s40.h5" --output-dir "$W/p5" \
        --cache-latents-to-disk $D
    check "... the in-memory run's model, byte for byte" cmp "$W/p4/model.safetensors" "$W/p5/model.safetensors"
    runs "2 ranks, latents read from the cache, encoded in 3 chunks: 3 steps" $MPIRUN -n 2 \
        -x SDC_T2I_CACHE_CHUNK_ITEMS=8 "$SDC" train text-to-image --pretrained-model "$DEMO" \
        --train-data "$W/s40.h5" --output-dir "$W/p6" --cache-latents-to-disk $D
    check "... the same cache as one process, bit for bit (all 40 items, mirrors too)" $H5PY -c "
import h5py, numpy as np, sys
a, b = h5py.File('$W/p5/latents_cache.h5', 'r'), h5py.File('$W/p6/latents_cache.h5', 'r')
names = ['mean', 'std', 'flip_mean', 'flip_std']
same = [np.array_equal(a[k][()], b[k][()]) for k in names]
nz = min(int((np.abs(a[k][()]).reshape(40, -1).max(1) > 0).sum()) for k in names)
print(a['mean'].shape, same, nz, 'items with data'); sys.exit(0 if all(same) and nz == 40 else 1)"
    check "... the same losses as one process (1e-5)" $H5PY -c "
import json, sys
a = [json.loads(l)['loss'] for l in open('$W/p5/metrics.jsonl')]
b = [json.loads(l)['loss'] for l in open('$W/p6/metrics.jsonl')]
d = max(abs(x - y) / abs(x) for x, y in zip(a, b)) if a else 1
print(a, b, 'worst', d); sys.exit(0 if len(a) == 3 and len(a) == len(b) and d < 1e-5 else 1)"
fi

refused "no training data" 'no training data' "$SDC" train text-to-image --pretrained-model "$DEMO" \
    --output-dir "$W/x"
refused "no model" 'model.path' "$SDC" train text-to-image --train-data "$W/s.h5" --output-dir "$W/x"
refused "a dataset that is not there" "$W/none.h5" "$SDC" train text-to-image --pretrained-model "$DEMO" \
    --train-data "$W/none.h5" --output-dir "$W/x" -q
refused "--proportion-empty-prompts 1.5" 'a probability' "$SDC" train text-to-image --pretrained-model "$DEMO" \
    --train-data "$W/s.h5" --proportion-empty-prompts 1.5 --output-dir "$W/x"
refused "--resolution other than the dataset's" 're-import the dataset' "$SDC" train text-to-image \
    --pretrained-model "$DEMO" --train-data "$W/s.h5" --resolution 128 --output-dir "$W/x" -q
refused "an SDXL model" 'text-to-image training of SDXL is not supported' "$SDC" train text-to-image \
    --pretrained-model "$SRC/tests/fixtures/tiny-sdxl" --train-data "$W/s.h5" --output-dir "$W/x" -q --lora-rank 4
refused "validation prompts with pipeline stages" 'whole UNet on one rank' "$SDC" train text-to-image \
    --pretrained-model "$DEMO" --train-data "$W/s.h5" --pipeline-stages 2 --validation-prompts "a star" \
    --output-dir "$W/x"
refused "resume without --use-ema of a run with it" 'unet_ema' "$SDC" train text-to-image \
    --pretrained-model "$DEMO" --train-data "$W/s.h5" --output-dir "$W/b" --max-train-steps 6 -q -t 2 \
    --train-batch-size 4 --seed 5 --lr-warmup-steps 0 --random-flip --proportion-empty-prompts 0.25 \
    --input-perturbation 0.1 --snr-gamma 5 --checkpointing-steps 2 --resume-from-checkpoint latest
refused "unknown option" "unknown option '--instance-prompt'" "$SDC" train text-to-image \
    --pretrained-model "$DEMO" --train-data "$W/s.h5" --instance-prompt x
finish
