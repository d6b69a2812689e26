#!/bin/sh
# bench_txt2img.sh: the issue's benchmark -- one SD 1.5-shape text-to-image
# generation, 512x512, DPM++ 2M, cfg 7.5 (UNet batch 2 per step), on the CPU
# with the same thread count: `sdc generate` and diffusers'
# StableDiffusionPipeline (bench/txt2img_torch.py) on the same random-weight
# single file, back to back, --repeat times each (alternating, so that load on
# a shared machine hits both alike). With --sdcpp PATH, stable-diffusion.cpp's
# sd-cli (its CPU build, as its users run it: `sd-cli -m FILE ...`, weights as
# the file holds them) is a third peer on the same file and settings
# (--no-torch: sdc and sd.cpp only; SDCPP_FLAGS: more sd-cli flags, e.g.
# --diffusion-fa for its flash attention). --precision bf16: sdc generate
# --precision bf16 (the CPU's bf16 path, or the GPU's with --sdc-flags) against
# diffusers in bf16 weights, under bf16 autocast and in fp32, each its own
# ratio line (TORCH_PRECISIONS="bf16 bf16-autocast fp32" by default; fp32 runs
# compare fp32 with fp32).
#
#   bench/bench_txt2img.sh [MODEL] [--sdc PATH] [--threads 2] [--steps 20] [--size 512]
#                          [--repeat 1] [--vae-tiling] [--sdcpp SD_CLI] [--no-torch] [--precision fp32|bf16]
#
# MODEL defaults to /tmp/sd15.safetensors (made by tools/make_fixtures.py
# --full-sd15 when missing). Per run it prints
#   sdc_txt2img   text_s= denoise_s= s_per_step= decode_s= total_s= max_rss_mb=
#   torch_txt2img text_s= denoise_s= s_per_step= decode_s= total_s= peak_rss_mb= loaded_rss_mb= gen_peak_rss_mb=
# and at the end the ratios torch/sdc (> 1: sdc faster / smaller). sdc's
# figures come from its "sdc: timing:" line, its peak memory from
# /usr/bin/time -v (max RSS of the whole process: the mmap'd f32 weights
# count as they are touched). Model loading is excluded from total_s on both
# sides. Logs are kept in $OUT (default /tmp/bench_txt2img).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=/tmp/sd15.safetensors
SDC=$ROOT/build/sdc
THREADS=2 STEPS=20 SIZE=512 REPEAT=1 TILING= SDCPP= TORCH=1 PRECISION=fp32
while [ $# -gt 0 ]; do
  case $1 in
    --sdc) SDC=$2; shift 2 ;;
    --sdcpp) SDCPP=$2; shift 2 ;;
    --no-torch) TORCH=; shift ;;
    --threads) THREADS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --vae-tiling) TILING=1; shift ;;
    --precision) PRECISION=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) MODEL=$1; shift ;;
  esac
done
case $PRECISION in
  fp32) TORCH_PRECISIONS=${TORCH_PRECISIONS:-fp32} ;;
  bf16) TORCH_PRECISIONS=${TORCH_PRECISIONS:-bf16 bf16-autocast fp32} ;;
  *) echo "bench_txt2img: --precision fp32 or bf16" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/bench_txt2img}
mkdir -p "$OUT"
rm -f "$OUT/sdc.txt" "$OUT"/torch*.txt "$OUT/sdcpp.txt" # this invocation's runs only
[ -x "$SDC" ] || { echo "bench_txt2img: no sdc at $SDC ---> build it (cmake --build build) or pass --sdc PATH" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench_txt2img: needs /usr/bin/time (GNU time) for the peak RSS" >&2; exit 1; }
[ -f "$MODEL" ] || python3 "$ROOT/tools/make_fixtures.py" --full-sd15 "$MODEL"

echo "# $(date -u +%FT%TZ) $(uname -n) threads=$THREADS steps=$STEPS size=$SIZE cfg=7.5 dpm++2m precision=$PRECISION model=$MODEL"
[ -z "$SDCPP" ] || echo "# sd.cpp: $SDCPP ${SDCPP_FLAGS:-}"
echo "# load: $(cat /proc/loadavg)"
lscpu | grep -E '^(Model name|CPU\(s\)|Thread|L3)' | sed 's/^/# /'
i=1
while [ "$i" -le "$REPEAT" ]; do
  log=$OUT/sdc_$i.log
  /usr/bin/time -v "$SDC" generate -m "$MODEL" -p "a photograph of an astronaut riding a horse" \
    -W "$SIZE" -H "$SIZE" --steps "$STEPS" --sampler dpm++2m --cfg-scale 7.5 -s 42 -t "$THREADS" \
    --precision "$PRECISION" ${TILING:+--vae-tiling} -o "$OUT/sdc_$i.png" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  awk -v steps="$STEPS" '
    /sdc: timing:/ { gsub(/[(),]/, " "); sub(/s$/, "", $4); sub(/s$/, "", $6); sub(/s$/, "", $10)
                     text = $4; den = $6; dec = $10 }
    /Maximum resident set size/ { rss = $NF / 1024 }
    END { printf "sdc_txt2img text_s=%.3f denoise_s=%.2f s_per_step=%.3f decode_s=%.2f total_s=%.2f max_rss_mb=%.1f\n",
                 text, den, den / steps, dec, text + den + dec, rss }' "$log" | tee -a "$OUT/sdc.txt"
  for tp in $([ -n "$TORCH" ] && echo "$TORCH_PRECISIONS"); do
    OMP_NUM_THREADS=$THREADS python3 "$ROOT/bench/txt2img_torch.py" --model "$MODEL" --precision "$tp" \
      --threads "$THREADS" --steps "$STEPS" --size "$SIZE" --cfg 7.5 ${TILING:+--vae-tiling} \
      2>"$OUT/torch_${tp}_$i.log" | sed "s/\$/ precision=$tp/" | tee -a "$OUT/torch_$tp.txt"
  done
  if [ -n "$SDCPP" ]; then # its own timings: conditioning, sampling (the steps), decoding
    log=$OUT/sdcpp_$i.log
    /usr/bin/time -v "$SDCPP" -m "$MODEL" -p "a photograph of an astronaut riding a horse" -W "$SIZE" -H "$SIZE" \
      --steps "$STEPS" --sampling-method dpm++2m --cfg-scale 7.5 -s 42 -t "$THREADS" ${TILING:+--vae-tiling} \
      ${SDCPP_FLAGS:-} -o "$OUT/sdcpp_$i.png" >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
    awk -v steps="$STEPS" '
      function secs(   m) { m = $0; sub(/.*taking /, "", m); sub(/s.*/, "", m); return m + 0 }
      /get_learned_condition completed/ { text = secs() }
      /sampling completed, taking/ { den = secs() }
      /decode_first_stage completed/ { dec = secs() }
      /Maximum resident set size/ { rss = $NF / 1024 }
      END { printf "sdcpp_txt2img text_s=%.3f denoise_s=%.2f s_per_step=%.3f decode_s=%.2f total_s=%.2f max_rss_mb=%.1f\n",
                   text, den, den / steps, dec, text + den + dec, rss }' "$log" | tee -a "$OUT/sdcpp.txt"
  fi
  i=$((i + 1))
done
echo "# load after: $(cat /proc/loadavg)"
# ratios of the medians, a peer's over sdc's: ratios TAG NAME FILE SPEC... (SPEC: a key both print, or
# SDC_KEY:PEER_KEY:LABEL when they name it differently)
ratios() {
  tag=$1 name=$2 file=$3
  shift 3
  awk -v tag="$tag" -v name="$name" -v spec="$*" '
    function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                     return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function median_of(who, k,   i, m, x) { m = n[who, k]; for (i = 1; i <= m; i++) x[i] = v[who, k, i]; return med(x, m) }
    { for (k = 2; k <= NF; k++) { split($k, kv, "="); v[$1, kv[1], ++n[$1, kv[1]]] = kv[2] } }
    END {
      ns = split(spec, specs, " ")
      for (q = 1; q <= ns; q++) {
        if (split(specs[q], f, ":") == 1) f[2] = f[3] = f[1]
        s = median_of("sdc_txt2img", f[1]); p = median_of(tag "_txt2img", f[2])
        printf "ratio_%s_over_sdc %s=%.3f (%s %.3f, sdc %.3f)\n", tag, f[3], p / s, name, p, s }
    }' "$OUT/sdc.txt" "$file"
}
[ -z "$SDCPP" ] || ratios sdcpp sd.cpp "$OUT/sdcpp.txt" s_per_step decode_s total_s max_rss_mb
for tp in $([ -n "$TORCH" ] && echo "$TORCH_PRECISIONS"); do
  echo "# sdc $PRECISION against torch $tp"
  ratios torch "torch-$tp" "$OUT/torch_$tp.txt" s_per_step decode_s total_s max_rss_mb:peak_rss_mb:peak_rss
done
