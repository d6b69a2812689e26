#!/bin/sh
# synth_eval.sh MODEL OUT [N]: scores a text-to-image model trained on `sdc dataset synth` (issue 16 part 3,
# docs/model.md) on N (default 128) captions of the held-out split: (shape, colour, background) triples the
# train split never draws. One image per caption (64 px, 20 Euler steps, guidance 7.5, seed 1), scored by
# `sdc dataset score`; OUT/heldout.json has the totals, OUT/heldout.tsv the per-image findings. A second set
# of N train-split captions (seed 7) tells generalisation from fitting. THREADS (default 1: beside a training
# run, 2 threads stall in OpenBLAS's barriers), SDC=path/to/sdc (default build/sdc).
set -eu
MODEL=$1
OUT=$2
N=${3:-128}
SDC=${SDC:-build/sdc}
GEN="-W 64 -H 64 --steps 20 --cfg-scale 7.5 --sampler euler -s 1 -q -t ${THREADS:-1}"
mkdir -p "$OUT"
"$SDC" dataset synth --split heldout -n "$N" --seed 5 --captions-file "$OUT/heldout-prompts.txt" -q
"$SDC" dataset synth --split train -n "$N" --seed 7 --captions-file "$OUT/train-prompts.txt" -q
for set in heldout train; do
    rm -f "$OUT/$set.h5"
    "$SDC" generate -m "$MODEL" --from-file "$OUT/$set-prompts.txt" $GEN --output-h5 "$OUT/$set.h5"
    "$SDC" dataset score "$OUT/$set.h5" --json "$OUT/$set.json" --items "$OUT/$set.tsv" > "$OUT/$set.txt"
    echo "== $set captions ($N)"
    cat "$OUT/$set.txt"
done
