#!/usr/bin/env bash
# train_vs_torch.sh: seconds per DreamBooth training step of the SD 1.5 UNet
# (fp32, every parameter trains: forward + MSE loss + backward +
# clip_grad_norm(1.0) + AdamW + zero_grad), sdc (build/bench/bench_train)
# against PyTorch + diffusers (bench/train_torch.py) on the CPU, same file,
# same shape, same thread count; without and then with gradient
# checkpointing. The four runs go one after the other, never concurrently
# (each holds ~14 GB of parameters, gradients and AdamW moments at SD 1.5
# size). Prints every run's line and a table: s per step, the ratio
# torch/sdc (> 1: sdc faster), the forward / backward / AdamW split and the
# peak RSS of each side.
#
#   bench/train_vs_torch.sh [MODEL] [--threads 2] [--repeat 3] [--latent 64] [--batch 1]
#                           [--bin PATH] [--plan]
#
# MODEL: an SD 1.5-shape single file (default /tmp/sd15.safetensors, made by
# `python3 tools/make_fixtures.py --full-sd15 /tmp/sd15.safetensors` when
# missing, 4.3 GB, random weights) or a diffusers folder. --bin: the
# bench_train binary (default build/bench/bench_train). --plan runs no step:
# it prints each side's planned training memory for the shape (sdc:
# unet_train_reserve's plan, touching ~2x the parameter bytes; torch: fake
# tensors, no memory). Logs are kept in $OUT (default /tmp/train_vs_torch).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=/tmp/sd15.safetensors
BIN=build/bench/bench_train
THREADS=2 REPEAT=3 LATENT=64 BATCH=1 PLAN=
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --latent) LATENT="$2"; shift 2 ;;
    --batch) BATCH="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --plan) PLAN=--plan; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) MODEL="$1"; shift ;;
  esac
done
OUT=${OUT:-/tmp/train_vs_torch}
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "train_vs_torch: no $BIN ---> build it (cmake --build build --target bench_train) or pass --bin PATH" >&2; exit 1; }
if [ ! -e "$MODEL" ]; then
  echo "train_vs_torch: writing a random SD 1.5 checkpoint to $MODEL" >&2
  python3 tools/make_fixtures.py --full-sd15 "$MODEL" >&2
fi
export OMP_NUM_THREADS=$THREADS
args=(--threads "$THREADS" --repeat "$REPEAT" --latent "$LATENT" --batch "$BATCH" ${PLAN:+"$PLAN"})

echo "# $(date -u +%FT%TZ) $(uname -n) threads=$THREADS latent=$LATENT batch=$BATCH repeat=$REPEAT model=$MODEL"
echo "# load: $(cat /proc/loadavg)"
val() { echo "$1" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }
# run SIDE CKPT: one side's run (log in $OUT), its result line on stdout
run() {
  local side=$1 ck=$2 log=$OUT/$1_ckpt$2.log key=${1}_train_s_per_step
  local flag=()
  [ "$ck" = 1 ] && flag=(--checkpointing)
  [ -n "$PLAN" ] && key=${1}_train_plan_mb
  if [ "$side" = sdc ]; then
    "$BIN" "$MODEL" "${args[@]}" "${flag[@]}" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  else
    python3 bench/train_torch.py "$MODEL" "${args[@]}" "${flag[@]}" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  fi
  grep "^$key=" "$log" | tail -1
}
declare -A line
for ck in 0 1; do
  for side in sdc torch; do
    line[$side$ck]=$(run "$side" "$ck")
    [ -n "${line[$side$ck]}" ] || { echo "train_vs_torch: no result line from $side (log $OUT/${side}_ckpt$ck.log)" >&2; exit 1; }
    echo "${line[$side$ck]}"
  done
done
echo "# load after: $(cat /proc/loadavg)"

if [ -n "$PLAN" ]; then
  printf '%-6s %14s %16s\n' ckpt sdc_plan_MB torch_plan_MB
  for ck in 0 1; do
    printf '%-6s %14s %16s\n' "$([ $ck = 1 ] && echo on || echo off)" \
      "$(val "${line[sdc$ck]}" sdc_train_plan_mb)" "$(val "${line[torch$ck]}" torch_train_plan_mb)"
  done
  exit 0
fi
printf '%-5s %10s %10s %11s %22s %22s %11s %11s\n' ckpt sdc_s torch_s torch/sdc \
  "sdc fwd/bwd/adamw" "torch fwd/bwd/adamw" sdc_rss_MB torch_rss_MB
for ck in 0 1; do
  s=${line[sdc$ck]} t=${line[torch$ck]}
  awk -v ck="$([ $ck = 1 ] && echo on || echo off)" \
      -v ss="$(val "$s" sdc_train_s_per_step)" -v ts="$(val "$t" torch_train_s_per_step)" \
      -v sf="$(val "$s" forward_s)" -v sb="$(val "$s" backward_s)" -v sa="$(val "$s" adamw_s)" \
      -v tf="$(val "$t" forward_s)" -v tb="$(val "$t" backward_s)" -v ta="$(val "$t" adamw_s)" \
      -v sr="$(val "$s" peak_rss_mb)" -v tr="$(val "$t" peak_rss_mb)" 'BEGIN {
    printf "%-5s %10.3f %10.3f %11.3f %22s %22s %11.0f %11.0f\n", ck, ss, ts, ts / ss,
           sprintf("%.2f/%.2f/%.2f", sf, sb, sa), sprintf("%.2f/%.2f/%.2f", tf, tb, ta), sr, tr }'
done
