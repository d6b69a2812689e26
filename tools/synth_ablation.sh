#!/bin/sh
# synth_ablation.sh MODEL OUT [STEPS [LR]]: the DreamBooth paper's ablation (issue 16 part 5) on a model
# trained on `sdc dataset synth` (docs/model.md), with the synth set's subject (data/synth.h: a heart in
# yellow and purple stripes, "a sks shape", never in the training data).
#
#   1. 4 instance images of the subject (sdc dataset synth --split subject, latents cached by MODEL's VAE);
#   2. the base model scored: prompts with the identifier in contexts the instance images do not show
#      ("a small sks shape on a white dotted background, at the top"), class prompts ("a shape on a plain
#      blue background") and held-out synth captions;
#   3. DreamBooth full fine-tuning with prior preservation (NUM_CLASS (50) class images of "a shape" made by the
#      base model) and without, STEPS steps (default 400) at LR (default 5e-6), each scored the same way.
#
# Scores (sdc dataset score): subject fidelity = the subject found in the images of "sks shape" prompts,
# prompt fidelity = their background as prompted, language drift = class prompts drawn as the subject;
# and the six-shape accuracy on held-out captions (what fine-tuning costs the model). OUT/table.md gets
# the table, OUT/*.json every figure. Rerunning skips the steps whose outputs exist.
set -eu
MODEL=$1
OUT=$2
STEPS=${3:-400}
LR=${4:-5e-6}
SDC=${SDC:-build/sdc}
RES=${RES:-64}
GEN="-W $RES -H $RES --steps 20 --cfg-scale 7.5 -s 1 -q -t ${THREADS:-1}"
mkdir -p "$OUT"

[ -f "$OUT/subject.h5" ] || "$SDC" dataset synth --split subject -n 4 --seed 11 --resolution "$RES" \
    --cache-latents -m "$MODEL" -o "$OUT/subject.h5" -q
# prompts: the subject in 40 new contexts, 16 class prompts, 64 held-out captions
"$SDC" dataset synth --split subject -n 40 --seed 99 --captions-file "$OUT/subject-prompts.txt" -q
: > "$OUT/class-prompts.txt"
for c in red orange yellow green blue purple white black; do
    echo "a shape on a plain $c background" >> "$OUT/class-prompts.txt"
    echo "a large shape on a $c striped background" >> "$OUT/class-prompts.txt"
done
"$SDC" dataset synth --split heldout -n 64 --seed 5 --captions-file "$OUT/heldout-prompts.txt" -q

score() { # score TAG MODEL_FILE
    for set in subject class heldout; do
        [ -f "$OUT/$1-$set.h5" ] || "$SDC" generate -m "$2" --from-file "$OUT/$set-prompts.txt" $GEN \
            --output-h5 "$OUT/$1-$set.h5"
    done
    "$SDC" dataset score "$OUT/$1-subject.h5" "$OUT/$1-class.h5" "$OUT/$1-heldout.h5" --json "$OUT/$1.json" \
        > "$OUT/$1.txt"
    cat "$OUT/$1.txt"
}

echo "== base model"
score base "$MODEL"
train() { # train TAG [prior-preservation flags...]
    tag=$1
    shift
    echo "== DreamBooth $tag ($STEPS steps, lr $LR)"
    [ -f "$OUT/db-$tag/model.safetensors" ] || "$SDC" train dreambooth --pretrained-model "$MODEL" \
        --instance-data "$OUT/subject.h5" --instance-prompt "a sks shape" "$@" --resolution "$RES" \
        --train-batch-size 1 --learning-rate "$LR" --lr-warmup-steps 0 --max-train-steps "$STEPS" \
        --checkpointing-steps "$STEPS" --output-dir "$OUT/db-$tag" -q -t "${THREADS:-1}"
    score "$tag" "$OUT/db-$tag/diffusers" # the folder: a single file of a small model needs --config
}
train prior --with-prior-preservation --class-data "$OUT/class" --class-prompt "a shape" --num-class-images "${NUM_CLASS:-50}"
train noprior

/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [("base model", "base"), ("DreamBooth, prior preservation", "prior"), ("DreamBooth, no prior", "noprior")]
lines = ["| model | subject fidelity | prompt fidelity | class prompts drawn as the subject (drift) | "
         "held-out shape | held-out colour | held-out background |", "|---|---|---|---|---|---|---|"]
for name, tag in rows:
    j = json.load(open(f"{out}/{tag}.json"))
    lines.append(f"| {name} | {100 * j['subject_fidelity']:.1f} % | {100 * j['subject_prompt_fidelity']:.1f} % | "
                 f"{100 * j['class_drawn_as_subject']:.1f} % | {100 * j['shape']:.1f} % | {100 * j['colour']:.1f} % | "
                 f"{100 * j['background']:.1f} % |")
open(f"{out}/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
