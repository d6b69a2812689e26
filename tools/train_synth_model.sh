#!/bin/bash
# train_synth_model.sh WORK [LAST_STEP] [CHUNK]: trains the synth model's UNet and text encoder from scratch
# (issue 16 part 3, docs/model.md) with `sdc train text-to-image` on 24000 items of `sdc dataset synth` (64 px,
# seed 0), in WORK/unet, in chunks of CHUNK steps (default 1500) up to LAST_STEP (default 100000). The start
# is WORK/init: `sdc init-model` of data/models/sdc-synth-configs with WORK/vae/vae (tools/train_synth_vae.sh)
# as its VAE, made here when missing. After each chunk the export (the EMA weights) is scored on held-out
# captions by tools/synth_eval.sh into WORK/eval/step-N; WORK/unet/scores.log has one line per chunk. Rerun
# the same command to continue after a stop (each chunk resumes from the newest checkpoint and reads the
# encoded images from unet/latents_cache.h5). THREADS (default 2), RANKS (default 1), SDC=path/to/sdc
# (default build/sdc).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${SDC:-$ROOT/build/sdc}
W=${1:?usage: train_synth_model.sh WORK [LAST_STEP] [CHUNK]}
last=${2:-100000}
chunk=${3:-1500}
mkdir -p "$W/data" "$W/unet" "$W/eval" && cd "$W" || exit 1
[ -f data/train64_24k.h5 ] || "$B" dataset synth -q -n 24000 --resolution 64 -s 0 -o data/train64_24k.h5 || exit 1
[ -d init ] || "$B" init-model -c "$ROOT/data/models/sdc-synth-configs" --vae vae/vae -o init || exit 1
# RANKS=n: n data-parallel MPI ranks of THREADS threads each (the same global batch and the same steps as one
# process: tests/t2i_checks.sh). Measured on the 2-core dev VM: 2 ranks x 1 thread 1.6 steps/s, 1 x 1 thread
# 0.78; 1 x 2 threads stalls in its per-op thread barriers whenever another process takes a core (its VAE
# encoding fell to 4 images/s against 60 at 1 thread beside a compiler)
MPI=
[ "${RANKS:-1}" -gt 1 ] && MPI="mpiexec --allow-run-as-root --oversubscribe -n $RANKS -x OMP_NUM_THREADS=${THREADS:-2}"
s=$(ls unet/checkpoint-*.h5 2>/dev/null | sed 's/.*checkpoint-\([0-9]*\)\.h5/\1/' | sort -n | tail -1)
s=${s:-0}
while [ "$s" -lt "$last" ]; do
    s=$(( (s / chunk + 1) * chunk ))
    [ "$s" -gt "$last" ] && s=$last
    $MPI "$B" train text-to-image --pretrained-model init --train-data data/train64_24k.h5 --output-dir unet \
        --train-batch-size 32 --learning-rate "${LR:-5e-4}" --lr-scheduler constant_with_warmup --lr-warmup-steps 300 \
        --snr-gamma 5 --use-ema --proportion-empty-prompts 0.1 --train-text-encoder --seed 0 \
        --max-train-steps "$s" --checkpointing-steps 250 --checkpoints-total-limit 2 \
        --cache-latents-to-disk --resume-from-checkpoint latest -t "${THREADS:-2}" >> unet/train.log 2>&1 ||
        { echo "FAIL at step $s (exit $?)" >> unet/train.log; exit 1; }
    # scored in the background on a copy of the export, while the next chunk trains
    rm -rf "eval/model-$s" && cp -r unet/diffusers "eval/model-$s" || exit 1
    ( SDC=$B "$ROOT/tools/synth_eval.sh" "eval/model-$s" "eval/step-$s" 128 > "eval/step-$s.txt" 2>&1 &&
        echo "step $s: $(tr '\n' ' ' < "eval/step-$s.txt")" >> unet/scores.log ||
        echo "eval FAIL at step $s" >> unet/scores.log ) &
done
wait
echo DONE >> unet/train.log
