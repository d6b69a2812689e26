#!/usr/bin/env bash
# unet_vs_torch.sh: seconds per SD 1.5 UNet pass, sdc (CPU backend) against
# PyTorch on the CPU, same shape (batch 1, 64x64 latent, 77x768 context), same
# thread count, in one invocation; prints both lines and the ratio torch/sdc
# (> 1: sdc is faster).
#
#   bench/unet_vs_torch.sh [MODEL] [--threads N] [--repeat R]
#
# MODEL: an SD 1.5-shape single file (default /tmp/sd15.safetensors, made by
# `python3 tools/make_fixtures.py --full-sd15 /tmp/sd15.safetensors` when
# missing, ~4 GB, random weights). Both sides load the same weights.
# Needs build/bench/bench_unet (cmake --build build) and torch + diffusers.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=/tmp/sd15.safetensors
THREADS=2
REPEAT=3
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) MODEL="$1"; shift ;;
  esac
done

BIN=build/bench/bench_unet
[ -x "$BIN" ] || { echo "unet_vs_torch: $BIN not built (cmake --build build)" >&2; exit 1; }
if [ ! -f "$MODEL" ]; then
  echo "unet_vs_torch: writing a random SD 1.5 checkpoint to $MODEL" >&2
  python3 tools/make_fixtures.py --full-sd15 "$MODEL" >&2
fi

sdc_line=$("$BIN" "$MODEL" --threads "$THREADS" --repeat "$REPEAT" | grep '^sdc_unet_s_per_pass=' | tail -1)
torch_line=$(python3 bench/unet_torch.py --model "$MODEL" --threads "$THREADS" --repeat "$REPEAT" \
             | grep '^torch_unet_s_per_pass=' | tail -1)
[ -n "$sdc_line" ] || { echo "unet_vs_torch: no sdc_unet_s_per_pass line from $BIN" >&2; exit 1; }
[ -n "$torch_line" ] || { echo "unet_vs_torch: no torch_unet_s_per_pass line" >&2; exit 1; }

val() { echo "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }
sdc_s=$(val "$sdc_line" sdc_unet_s_per_pass)
torch_s=$(val "$torch_line" torch_unet_s_per_pass)
echo "$sdc_line"
echo "$torch_line"
awk -v t="$torch_s" -v s="$sdc_s" -v n="$THREADS" \
  'BEGIN { printf "ratio_torch_over_sdc=%.3f threads=%d\n", t / s, n }'
