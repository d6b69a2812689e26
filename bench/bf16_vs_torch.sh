#!/usr/bin/env bash
# bf16_vs_torch.sh: issue 17's benchmark table in one run -- sdc's CPU bf16
# path against PyTorch on the same CPU, the same file, the same thread count:
#   UNet pass     SD 1.5 shape, batch 1, 64x64 latent (512 px), 77x768 context
#   txt2img       512x512, 20 steps DPM++ 2M, cfg 7.5 (UNet batch 2 per step): s/step and total
#   VAE decode    the same generation's decode (64x64 latent -> 512x512)
#   train step    DreamBooth step of the whole UNet: forward + MSE + backward + clip + AdamW
# sdc: --precision bf16 (generation) and --mixed-precision bf16's variant
# (training: fp32 master weights and AdamW state). PyTorch: bf16 weights,
# bf16 autocast (fp32 weights) and fp32, each printed; the ratio is against
# the faster of the two bf16 ones (> 1: sdc faster). Also the machine's bf16
# GEMM rate (oneDNN 2048^3 matmul, in bench_unet's run) and the UNet pass's
# share of it, and the CPU model. Everything runs one after the other, never
# two at once.
#
#   bench/bf16_vs_torch.sh [MODEL] [--threads 2] [--bin DIR] [--steps 20] [--skip-train]
#
# MODEL: an SD 1.5-shape single file (default /tmp/sd15.safetensors, made by
# tools/make_fixtures.py --full-sd15 when missing). --bin: the build folder
# holding sdc and bench/ (default build). Logs in $OUT (default
# /tmp/bf16_vs_torch). About 12 minutes on 2 Zen 5 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODEL=/tmp/sd15.safetensors THREADS=2 BIN=build STEPS=20 TRAIN=1
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --skip-train) TRAIN=; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) MODEL="$1"; shift ;;
  esac
done
OUT=${OUT:-/tmp/bf16_vs_torch}
mkdir -p "$OUT"
for b in "$BIN/sdc" "$BIN/bench/bench_unet" "$BIN/bench/bench_train"; do
  [ -x "$b" ] || { echo "bf16_vs_torch: no $b ---> build it (tools/build.sh) or pass --bin DIR" >&2; exit 1; }
done
[ -f "$MODEL" ] || python3 tools/make_fixtures.py --full-sd15 "$MODEL" >&2
export OMP_NUM_THREADS=$THREADS
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512_bf16|amx_bf16|avx512f)$' | tr '\n' ' ')
echo "# $(date -u +%FT%TZ) $cpu (family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')," \
     "model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')), $(nproc) cores, flags: $flags"
echo "# threads $THREADS, model $MODEL, load $(cut -d' ' -f1-3 /proc/loadavg)"
val() { echo "$1" | tr ' ' '\n' | grep "^$2=" | head -1 | cut -d= -f2; }

# ---- UNet pass ----
u=$("$BIN/bench/bench_unet" "$MODEL" --threads "$THREADS" --repeat 3 --precision bf16 | tee "$OUT/unet_sdc.log")
sdc_unet=$(val "$(grep '^sdc_unet_s_per_pass=' <<<"$u")" sdc_unet_s_per_pass)
gemm=$(val "$(grep '^bf16_gemm_gflops=' <<<"$u" || true)" bf16_gemm_gflops)
share=$(grep -o 'unet_share_of_gemm=[0-9.]*' <<<"$u" | cut -d= -f2 || true)
grep -E '^(unet batch|bf16 ops|held)' <<<"$u" | sed 's/^/# sdc: /'
declare -A tu
for p in bf16 bf16-autocast fp32; do
  l=$(python3 bench/unet_torch.py --model "$MODEL" --threads "$THREADS" --repeat 3 --precision "$p" 2>"$OUT/unet_torch_$p.log" |
      grep '^torch_unet_s_per_pass=' | tail -1)
  tu[$p]=$(val "$l" torch_unet_s_per_pass)
done

# ---- txt2img and VAE decode ----
OUT=$OUT/txt2img bench/bench_txt2img.sh "$MODEL" --sdc "$BIN/sdc" --threads "$THREADS" --steps "$STEPS" \
  --precision bf16 >"$OUT/txt2img.log" 2>&1 || { cat "$OUT/txt2img.log" >&2; exit 1; }
s_line=$(grep '^sdc_txt2img' "$OUT/txt2img.log" | tail -1)
declare -A tt
for p in bf16 bf16-autocast fp32; do tt[$p]=$(grep '^torch_txt2img' "$OUT/txt2img.log" | grep "precision=$p\$" | tail -1); done

# ---- training step ----
declare -A tr
if [ -n "$TRAIN" ]; then
  t=$("$BIN/bench/bench_train" "$MODEL" --threads "$THREADS" --repeat 2 --precision bf16 | tee "$OUT/train_sdc.log")
  sdc_train=$(val "$(grep '^sdc_train_s_per_step=' <<<"$t")" sdc_train_s_per_step)
  for p in bf16-autocast bf16 fp32; do
    l=$(python3 bench/train_torch.py "$MODEL" --threads "$THREADS" --repeat 2 --precision "$p" 2>&1 |
        tee "$OUT/train_torch_$p.log" | grep '^torch_train_s_per_step=' | tail -1)
    tr[$p]=$(val "$l" torch_train_s_per_step)
  done
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- table: seconds, and torch's faster bf16 / sdc ----
row() { # NAME SDC T_BF16 T_AUTOCAST T_FP32
  awk -v n="$1" -v s="$2" -v b="$3" -v a="$4" -v f="$5" 'BEGIN {
    best = (a != "" && (b == "" || a < b)) ? a : b
    printf "%-22s %10.3f %12s %15s %11s %9.2fx\n", n, s, b, a, f, (s > 0 && best != "") ? best / s : 0 }'
}
printf '%-22s %10s %12s %15s %11s %10s\n' "seconds" "sdc bf16" "torch bf16" "torch autocast" "torch fp32" "ahead by"
row "UNet pass" "$sdc_unet" "${tu[bf16]}" "${tu[bf16-autocast]}" "${tu[fp32]}"
for k in s_per_step total_s decode_s; do
  name=$([ $k = s_per_step ] && echo "txt2img s/step" || ([ $k = total_s ] && echo "txt2img $STEPS steps" || echo "VAE decode"))
  row "$name" "$(val "$s_line" $k)" "$(val "${tt[bf16]}" $k)" "$(val "${tt[bf16-autocast]}" $k)" "$(val "${tt[fp32]}" $k)"
done
[ -z "$TRAIN" ] || row "train step" "$sdc_train" "${tr[bf16]}" "${tr[bf16-autocast]}" "${tr[fp32]}"
[ -z "$gemm" ] || echo "bf16 GEMM rate ${gemm} GFLOP/s; UNet pass at $(awk -v s="$share" 'BEGIN { printf "%.1f", 100 * s }') % of it"
