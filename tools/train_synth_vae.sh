#!/bin/bash
# train_synth_vae.sh WORK [LAST_STEP] [CHUNK]: trains the synth model's VAE
# (data/models/sdc-synth-configs/vae/config.json, docs/model.md) with
# `sdc train vae` in WORK/vae, in chunks of CHUNK steps (default 100) up to
# LAST_STEP (default 20000). Each chunk resumes from WORK/vae's latest
# checkpoint and ends with the held-out reconstruction PSNR in
# WORK/vae/train.log (the curve); rerun the same command to continue after a
# stop. The data (4000 train items at 64 px, seed 0; 64 held-out items, seed
# 1) is made in WORK/data on the first run. One thread, nice 5: the machine
# is shared (THREADS=n for more). SDC=path/to/sdc (default build/sdc).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${SDC:-$ROOT/build/sdc}
W=${1:?usage: train_synth_vae.sh WORK [LAST_STEP] [CHUNK]}
last=${2:-20000}
chunk=${3:-100}
cfg=$ROOT/data/models/sdc-synth-configs/vae/config.json
mkdir -p "$W/data" "$W/vae" && cd "$W" || exit 1
[ -f data/train64.h5 ] || nice -n 5 "$B" dataset synth -q -n 4000 --resolution 64 -s 0 -o data/train64.h5 || exit 1
[ -f data/heldout64.h5 ] || nice -n 5 "$B" dataset synth -q -n 64 --resolution 64 -s 1 --split heldout \
    -o data/heldout64.h5 || exit 1
s=$(ls vae/checkpoint-*.h5 2>/dev/null | sed 's/.*checkpoint-\([0-9]*\)\.h5/\1/' | sort -n | tail -1)
s=${s:-0}
while [ "$s" -lt "$last" ]; do
    s=$(( (s / chunk + 1) * chunk ))
    [ "$s" -gt "$last" ] && s=$last
    nice -n 5 "$B" train vae --dataset data/train64.h5 --vae-config "$cfg" --output-dir vae \
        --train-batch-size 4 --learning-rate 1e-3 --rec-loss l1 --random-flip --seed 1 --max-train-steps "$s" \
        --checkpointing-steps 50 --checkpoints-total-limit 2 --eval-dataset data/heldout64.h5 --eval-items 64 \
        --log-every 10 --resume-from-checkpoint latest -t "${THREADS:-1}" >> vae/train.log 2>&1 ||
        { echo "FAIL at step $s (exit $?)" >> vae/train.log; exit 1; }
done
echo DONE >> vae/train.log
