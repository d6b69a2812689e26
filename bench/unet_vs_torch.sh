#!/usr/bin/env bash
# unet_vs_torch.sh: seconds per SD 1.5 UNet pass, sdc (CPU backend) against
# PyTorch on the CPU, same shape (batch 1, 64x64 latent, 77x768 context), same
# thread count, in one invocation; prints both lines and the ratio torch/sdc
# (> 1: sdc is faster).
#
#   bench/unet_vs_torch.sh [MODEL] [--threads N] [--repeat R] [--latent L]
#                          [--warmup-latent W] [--sdxl] [--bin PATH] [--precision fp32|bf16]
#
# MODEL: an SD 1.5-shape single file (default /tmp/sd15.safetensors, made by
# `python3 tools/make_fixtures.py --full-sd15 /tmp/sd15.safetensors` when
# missing, ~4 GB, random weights). Both sides load the same weights.
# --sdxl: MODEL is a real-shape SDXL base file (python3 tools/make_sdxl_full.py
# PATH; not made here), context (1, 77, 2048) with the pooled text embedding
# and the six time ids; --latent 128 is 1024 px. --warmup-latent W: the
# warm-up pass at latent W (a 1024 px SDXL pass takes minutes on a small CPU:
# with --repeat 1 each side times one pass). The two run one after the other,
# never at once (each holds its own f32 copy of the UNet).
# --precision bf16: sdc's CPU bf16 variant (its "bf16 ops:" line names what
# computed them: AMX, AVX512-BF16 or sdc's emulation) against PyTorch in bf16
# weights and under bf16 autocast, each printed; the ratio uses the faster.
# Needs build/bench/bench_unet (cmake --build build; --bin names another
# build's) and torch + diffusers.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=/tmp/sd15.safetensors
THREADS=2
REPEAT=3
LATENT=64
WARM=0
SDXL=
PREC=fp32
BIN=build/bench/bench_unet
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --latent) LATENT="$2"; shift 2 ;;
    --warmup-latent) WARM="$2"; shift 2 ;;
    --sdxl) SDXL=--sdxl; shift ;;
    --bin) BIN="$2"; shift 2 ;;
    --precision) PREC="$2"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) MODEL="$1"; shift ;;
  esac
done

[ -x "$BIN" ] || { echo "unet_vs_torch: $BIN not built (cmake --build build)" >&2; exit 1; }
if [ ! -f "$MODEL" ] && [ -n "$SDXL" ]; then
  echo "unet_vs_torch: $MODEL missing (python3 tools/make_sdxl_full.py $MODEL)" >&2; exit 1
fi
if [ ! -f "$MODEL" ]; then
  echo "unet_vs_torch: writing a random SD 1.5 checkpoint to $MODEL" >&2
  python3 tools/make_fixtures.py --full-sd15 "$MODEL" >&2
fi

echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); latent $LATENT, threads $THREADS, repeat $REPEAT${SDXL:+, SDXL}" >&2
case "$PREC" in fp32|bf16) ;; *) echo "unet_vs_torch: --precision fp32 or bf16" >&2; exit 2 ;; esac
sdc_out=$("$BIN" "$MODEL" --threads "$THREADS" --repeat "$REPEAT" --latent "$LATENT" --warmup-latent "$WARM" \
          --precision "$PREC")
echo "$sdc_out" | grep -E '^(cpu:|loaded|warm-up|unet batch|added|bf16 ops:)' >&2 || true
sdc_line=$(echo "$sdc_out" | grep '^sdc_unet_s_per_pass=' | tail -1)
[ -n "$sdc_line" ] || { echo "unet_vs_torch: no sdc_unet_s_per_pass line from $BIN" >&2; exit 1; }
echo "$sdc_line"
echo "# load after sdc: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
torch_run() {
  python3 bench/unet_torch.py --model "$MODEL" --threads "$THREADS" --repeat "$REPEAT" \
    --latent "$LATENT" --warmup-latent "$WARM" --precision "$1" $SDXL | grep '^torch_unet_s_per_pass=' | tail -1
}
if [ "$PREC" = bf16 ]; then # PyTorch's faster bf16: bf16 weights or autocast
  t1=$(torch_run bf16); t2=$(torch_run bf16-autocast)
  echo "# torch bf16 weights: $t1" >&2
  echo "# torch bf16 autocast: $t2" >&2
  s1=$(echo "$t1" | tr ' ' '\n' | grep '^torch_unet_s_per_pass=' | cut -d= -f2)
  s2=$(echo "$t2" | tr ' ' '\n' | grep '^torch_unet_s_per_pass=' | cut -d= -f2)
  torch_line=$(awk -v a="$s1" -v b="$s2" -v l1="$t1" -v l2="$t2" 'BEGIN { print (b != "" && (a == "" || b < a)) ? l2 : l1 }')
else
  torch_line=$(torch_run fp32)
fi
echo "# load after torch: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
[ -n "$torch_line" ] || { echo "unet_vs_torch: no torch_unet_s_per_pass line" >&2; exit 1; }

val() { echo "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }
sdc_s=$(val "$sdc_line" sdc_unet_s_per_pass)
torch_s=$(val "$torch_line" torch_unet_s_per_pass)
echo "$torch_line"
awk -v t="$torch_s" -v s="$sdc_s" -v n="$THREADS" \
  -v p="$PREC" 'BEGIN { printf "ratio_torch_over_sdc=%.3f threads=%d precision=%s\n", t / s, n, p }'
