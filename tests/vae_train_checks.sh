#!/bin/sh
# vae_train_checks.sh: `sdc train vae` end to end (tests/vae_train.cmake):
#   tests/vae_train_checks.sh SDC SRC_ROOT WORK_DIR
# On a 16-item synth dataset at 32 px with the tiny-sd1 VAE: a run stopped
# at step 2 and resumed from its checkpoint writes the same vae/ folder, byte
# for byte, as an uninterrupted 4-step run; that folder loads in sdc (as
# the start of another run) and, where torch is, in diffusers; a from-scratch run from
# a config.json; --train-decoder-only keeps the encoder; SIGUSR1 mid-run stops with a checkpoint, and the resumed run
# equals an uninterrupted one; bad input refused with exit status and message. Checks
# through tests/check.sh.
SDC=$1
SRC=$2
W=$3
. "$SRC/tests/check.sh"
TINY=$SRC/tests/fixtures/tiny-sd1
rm -rf "$W" && mkdir -p "$W" || exit 1
T="-q -t 2 --train-batch-size 2 --random-flip --seed 3 --learning-rate 1e-3 --kl-weight 1e-2"

runs "synth dataset: 16 items at 32 px" "$SDC" dataset synth -q -n 16 --resolution 32 -o "$W/s.h5"
runs "uninterrupted: 4 steps" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/a" --max-train-steps 4 --checkpointing-steps 2 $T
runs "interrupted: 2 steps" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/b" --max-train-steps 2 --checkpointing-steps 2 $T
check "... checkpoint-2.h5 written" test -f "$W/b/checkpoint-2.h5"
runs "resumed (latest) to 4 steps" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/b" --max-train-steps 4 --checkpointing-steps 2 --resume-from-checkpoint latest $T
check "... the same weights as uninterrupted, byte for byte" cmp "$W/a/vae/diffusion_pytorch_model.safetensors" \
    "$W/b/vae/diffusion_pytorch_model.safetensors"
check "... the same checkpoint-4.h5 tensors" /usr/bin/python3 -c "
import h5py, numpy as np, sys
a, b = h5py.File('$W/a/checkpoint-4.h5', 'r'), h5py.File('$W/b/checkpoint-4.h5', 'r')
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
bad = [n for n in names if not np.array_equal(a[n][()], b[n][()])]
print(len(names), 'datasets,', len(bad), 'differ', bad[:3]); sys.exit(1 if bad or len(names) < 100 else 0)"
runs "a progress line per step" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/c" --max-train-steps 2 -t 2 --train-batch-size 2 --eval-dataset "$W/s.h5" --eval-items 4
has "... loss, rec, kl, lr, items/s" 'step 2/2  loss [0-9.]*  rec [0-9.]*  kl [0-9.e+-]*  lr 0.0001 .* items/s'
has "... PSNR before and after" 'PSNR on 4 items .* after: [0-9.]* dB'
has "... the scaling factor its latents want" 'have std [0-9.e+-]*: a UNet trained on this VAE wants scaling_factor'
LSTD=$(sed -n 's/.*latents (posterior means) have std \([0-9.e+-]*\):.*/\1/p' "$OUT_FILE")
runs "sdc loads the vae/ folder: the start of another run" "$SDC" train vae --dataset "$W/s.h5" \
    --pretrained-model "$W/a/vae" --output-dir "$W/d" --max-train-steps 1 $T
runs "... and the output folder itself" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$W/a" \
    --output-dir "$W/d2" --max-train-steps 1 $T
check "... the same run from either" cmp "$W/d/vae/diffusion_pytorch_model.safetensors" \
    "$W/d2/vae/diffusion_pytorch_model.safetensors"
if python3 -c "import diffusers, torch" 2>/dev/null; then
    runs "diffusers AutoencoderKL.from_pretrained(OUT/vae): same reconstruction as sdc's weights" python3 -c "
import torch, sys
from diffusers import AutoencoderKL
from safetensors.torch import load_file
v = AutoencoderKL.from_pretrained('$W/a/vae')
sd = load_file('$W/a/vae/diffusion_pytorch_model.safetensors')
bad = [k for k, p in v.state_dict().items() if not torch.equal(p, sd[k])]
print(len(sd), 'tensors', bad[:3]); sys.exit(1 if bad or len(sd) != len(v.state_dict()) else 0)"
    /usr/bin/python3 -c "import h5py, numpy; numpy.save('$W/ev.npy', h5py.File('$W/s.h5', 'r')['images'][:4])"
    check "... the latent std it printed ($LSTD) = diffusers' posterior means of the 4 eval items (1e-3)" python3 -c "
import numpy as np, torch, sys
from diffusers import AutoencoderKL
v = AutoencoderKL.from_pretrained('$W/c/vae')
x = torch.from_numpy(np.load('$W/ev.npy')).permute(0, 3, 1, 2).float() / 127.5 - 1
with torch.no_grad(): m = v.encode(x).latent_dist.mean.double()
s = float(m.std(unbiased=False)); print('diffusers', s, 'sdc', '$LSTD')
sys.exit(0 if '$LSTD' and abs(s - float('$LSTD' or 0)) <= 1e-3 * s else 1)"
fi
cat > "$W/small.json" <<'JSON'
{"_class_name": "AutoencoderKL", "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
 "latent_channels": 4, "in_channels": 3, "out_channels": 3, "sample_size": 32,
 "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}
JSON
runs "from scratch (--vae-config)" "$SDC" train vae --dataset "$W/s.h5" --vae-config "$W/small.json" \
    --output-dir "$W/e" --max-train-steps 2 $T
check "... a vae/ folder" test -f "$W/e/vae/diffusion_pytorch_model.safetensors"
runs "... the same seed: the same weights" "$SDC" train vae --dataset "$W/s.h5" --vae-config "$W/small.json" \
    --output-dir "$W/e2" --max-train-steps 2 $T
check "... byte for byte" cmp "$W/e/vae/diffusion_pytorch_model.safetensors" \
    "$W/e2/vae/diffusion_pytorch_model.safetensors"

runs "--dump-manifest" "$SDC" train vae --dataset "$W/s.h5" --vae-config "$W/small.json" \
    --output-dir "$W/e3" --max-train-steps 2 $T --dump-manifest
cp "$OUT_FILE" "$W/vae.txtpb"
has "... the task named" 'task: TASK_TRAIN_VAE' "$W/vae.txtpb"
runs "sdc run of that manifest" "$SDC" run -q "$W/vae.txtpb"
check "... the command's weights, byte for byte" cmp "$W/e/vae/diffusion_pytorch_model.safetensors" \
    "$W/e3/vae/diffusion_pytorch_model.safetensors"

if command -v mpiexec > /dev/null; then
    MPIRUN="mpiexec --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1"
    D="--train-batch-size 2 --random-flip --seed 3 --learning-rate 1e-3 --kl-weight 1e-2 --max-train-steps 3 -t 1"
    runs "1 process: 3 steps" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" --output-dir "$W/p1" $D
    grep '^step' "$OUT_FILE" | cut -d' ' -f1-9 > "$W/p1.log"
    runs "2 ranks (data parallel): the same 3 steps" $MPIRUN -n 2 "$SDC" train vae --dataset "$W/s.h5" \
        --pretrained-model "$TINY" --output-dir "$W/p2" $D
    grep '^step' "$OUT_FILE" | cut -d' ' -f1-9 > "$W/p2.log"
    check "... the same losses (5 digits)" /usr/bin/python3 -c "
import sys
a, b = open('$W/p1.log').read().split(), open('$W/p2.log').read().split()
num = lambda t: [float(x) for x in t if x[0].isdigit() and '/' not in x]
d = max(abs(x - y) / abs(x) for x, y in zip(num(a), num(b))) if a else 1
print(len(a), 'fields, worst relative difference', d); sys.exit(0 if a and len(a) == len(b) and d < 1e-5 else 1)"
    check "... the same weights up to summation order (1e-3 of each tensor)" /usr/bin/python3 -c "
import sys, json, struct, numpy as np
def load(p):
    f = open(p, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); d = f.read()
    return {k: np.frombuffer(d[v['data_offsets'][0]:v['data_offsets'][1]], '<f4') for k, v in h.items() if k != '__metadata__'}
a, b = load('$W/p1/vae/diffusion_pytorch_model.safetensors'), load('$W/p2/vae/diffusion_pytorch_model.safetensors')
w = max(float(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max()) for k in a if 'to_k.bias' not in k)
print(len(a), 'tensors, worst', w); sys.exit(0 if len(a) == len(b) and w < 1e-3 else 1)"
    refused "a batch the ranks cannot share" 'a multiple of the rank count' $MPIRUN -n 2 "$SDC" train vae \
        --dataset "$W/s.h5" --pretrained-model "$TINY" --output-dir "$W/p3" --train-batch-size 3 -q
fi

# SIGUSR1 (Slurm's time-limit warning) mid-run: exit 75 (resumable) with a checkpoint of the step it
# stopped at; resumed two steps on, the weights of an uninterrupted run of as many steps, byte for byte
S="--train-batch-size 2 --random-flip --seed 3 --learning-rate 1e-3 --kl-weight 1e-2 -t 1 --checkpointing-steps 100000"
"$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" --output-dir "$W/sig" --max-train-steps 100000 \
    $S > "$W/sig.log" 2>&1 &
pid=$!
n=0
while [ $n -lt 100 ] && ! grep -q '^step 3/' "$W/sig.log"; do sleep 0.1; n=$((n + 1)); done
kill -USR1 $pid
wait $pid
rc=$?
check "SIGUSR1 mid-run: exit 75 (exit $rc)" test $rc -eq 75
has "... stopped at a step, checkpoint saved" 'stopped: SIGUSR1 at step [0-9]* of 100000; checkpoint-[0-9]*.h5 saved' \
    "$W/sig.log"
AT=$(sed -n 's/.*SIGUSR1 at step \([0-9]*\) of.*/\1/p' "$W/sig.log")
check "... checkpoint-$AT.h5 written" test -n "$AT" -a -f "$W/sig/checkpoint-$AT.h5"
runs "... resumed to step $((AT + 2))" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/sig" --max-train-steps $((AT + 2)) --resume-from-checkpoint latest -q $S
runs "uninterrupted: $((AT + 2)) steps" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/nosig" --max-train-steps $((AT + 2)) -q $S
check "... the same weights, byte for byte" cmp "$W/sig/vae/diffusion_pytorch_model.safetensors" \
    "$W/nosig/vae/diffusion_pytorch_model.safetensors"

# --train-decoder-only: the encoder (so the latents a UNet was trained on) unchanged, every decoder tensor
# moved; stopped at 2 and resumed to 3 == 3 uninterrupted; refused from scratch and on a full checkpoint
DO="--train-batch-size 2 --seed 3 --learning-rate 1e-3 -t 1 -q --train-decoder-only --checkpointing-steps 2"
runs "--train-decoder-only: 3 steps" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/do" --max-train-steps 3 $DO
check "... the encoder side unchanged, the decoder side trained" /usr/bin/python3 -c "
import sys, json, struct, numpy as np
def load(p):
    f = open(p, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); d = f.read()
    dt = {'F32': '<f4', 'F16': '<f2'}
    return {k: np.frombuffer(d[v['data_offsets'][0]:v['data_offsets'][1]], dt[v['dtype']]).astype(np.float32)
            for k, v in h.items() if k != '__metadata__'}
a, b = load('$W/do/vae/diffusion_pytorch_model.safetensors'), load('$TINY/vae/diffusion_pytorch_model.safetensors')
dec = [k for k in a if k.startswith('decoder.') or k.startswith('post_quant_conv.')]
enc = [k for k in a if k not in dec]
ec = sum(not np.array_equal(a[k], b[k]) for k in enc); dm = sum(not np.array_equal(a[k], b[k]) for k in dec)
print(len(enc), 'encoder-side tensors,', ec, 'changed;', len(dec), 'decoder-side,', dm, 'changed')
sys.exit(0 if enc and dec and ec == 0 and dm == len(dec) else 1)"
runs "... 2 steps" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" --output-dir "$W/do2" \
    --max-train-steps 2 $DO
runs "... resumed to 3" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" --output-dir "$W/do2" \
    --max-train-steps 3 --resume-from-checkpoint latest $DO
check "... == 3 uninterrupted, byte for byte" cmp "$W/do/vae/diffusion_pytorch_model.safetensors" \
    "$W/do2/vae/diffusion_pytorch_model.safetensors"
refused "--train-decoder-only from scratch" 'encoder would stay at its random initialisation' "$SDC" train vae \
    --dataset "$W/s.h5" --vae-config "$W/small.json" --output-dir "$W/x" $DO
refused "--train-decoder-only resuming a run of all weights" 'train_decoder_only is "0" there, "1" in this job' \
    "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" --output-dir "$W/b" --max-train-steps 6 \
    --resume-from-checkpoint latest --train-batch-size 2 --seed 3 -t 1 -q --train-decoder-only
# (before session 11: "/vae/encoder.conv_in.weight is missing", not naming the flag)
refused "a --train-decoder-only run resumed without it" 'train_decoder_only is "1" there, "0" in this job' \
    "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" --output-dir "$W/do2" --max-train-steps 4 \
    --resume-from-checkpoint latest --train-batch-size 2 --seed 3 -t 1 -q --checkpointing-steps 2

refused "no dataset" 'no dataset' "$SDC" train vae --pretrained-model "$TINY" --output-dir "$W/x"
refused "a dataset that is not there" "$W/none.h5" "$SDC" train vae --dataset "$W/none.h5" \
    --pretrained-model "$TINY" --output-dir "$W/x"
refused "no init" 'no init' "$SDC" train vae --dataset "$W/s.h5" --output-dir "$W/x"
refused "a file without images (a checkpoint)" "dataset $W/a/checkpoint-2.h5" "$SDC" train vae \
    --dataset "$W/a/checkpoint-2.h5" --pretrained-model "$TINY" --output-dir "$W/x"
runs "synth dataset: 4 items at 36 px" "$SDC" dataset synth -q -n 4 --resolution 36 -o "$W/s36.h5"
refused "36 px images, the VAE downsamples 8x" 'needs a multiple of 8' "$SDC" train vae --dataset "$W/s36.h5" \
    --pretrained-model "$TINY" --output-dir "$W/x" --train-batch-size 2
refused "fewer images than the batch" 'fewer than --train-batch-size 32' "$SDC" train vae --dataset "$W/s.h5" \
    --pretrained-model "$TINY" --output-dir "$W/x" --train-batch-size 32
refused "bad --rec-loss" "l1 or mse" "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/x" --rec-loss l3
refused "resume of another job (seed)" 'seed' "$SDC" train vae --dataset "$W/s.h5" --pretrained-model "$TINY" \
    --output-dir "$W/b" --max-train-steps 6 --resume-from-checkpoint latest -q -t 2 --train-batch-size 2 --seed 4
finish
