#!/usr/bin/env bash
# sdxl_full_convert.sh: the real-shape SDXL single file through `sdc convert`,
# FILE -> .h5 -> single file, and .h5 -> diffusers folder -> single file,
# each conversion timed with its peak resident memory (GNU time; the mapped
# source's pages count), every tensor compared byte for byte
# (tools/compare_convert.py): both single files against the source, and the
# checkpoint against the folder (both diffusers names). The folder route
# drops OpenCLIP's logit_scale (unused by text encoding; diffusers'
# CLIPTextModelWithProjection has no such parameter; the checkpoint keeps
# it as an extra), listed as not carried. Also shows the
# architecture sdc inferred from the file (the folder's unet/config.json and
# model_index.json, written from the model sdc built).
#
#   tools/sdxl_full_convert.sh FILE [--sdc build/sdc] [--out DIR] [--keep]
#
# FILE: python3 tools/make_sdxl_full.py FILE (6.9 GB, F16). DIR (default: the
# file's folder) receives sdxl-full.h5, sdxl-full-diffusers/ and
# sdxl-full-back-h5.safetensors, sdxl-full-back.safetensors (about 7 GB
# each; each deleted once compared, unless --keep). Needs /usr/bin/python3 with numpy + h5py.
set -euo pipefail
cd "$(dirname "$0")/.."
SDC=build/sdc
OUT=
KEEP=
SRC=
while [ $# -gt 0 ]; do
  case "$1" in
    --sdc) SDC="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) SRC="$1"; shift ;;
  esac
done
[ -f "$SRC" ] || { echo "sdxl_full_convert: no model file (python3 tools/make_sdxl_full.py FILE)" >&2; exit 2; }
OUT=${OUT:-$(dirname "$SRC")}
H5=$OUT/sdxl-full.h5
DIR=$OUT/sdxl-full-diffusers
BACK=$OUT/sdxl-full-back.safetensors
BACKH5=$OUT/sdxl-full-back-h5.safetensors
rm -rf "$H5" "$DIR" "$BACK" "$BACKH5"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# source $SRC: $(stat -c %s "$SRC") bytes"

conv() { # label, from, to
  local log=$OUT/convert-$1.log
  /usr/bin/time -f "%e %M" -o "$log.time" "$SDC" convert -m "$2" -o "$3" > "$log" 2>&1 ||
    { echo "sdxl_full_convert: $1 failed:" >&2; tail -5 "$log" >&2; exit 1; }
  read -r secs kib < "$log.time"
  local bytes
  bytes=$(du -sb "$3" | cut -f1)
  awk -v l="$1" -v s="$secs" -v k="$kib" -v b="$bytes" \
    'BEGIN { printf "convert %-16s %7.1f s  peak RSS %6.0f MiB  output %.0f bytes\n", l, s, k / 1024, b }'
}
conv single-to-h5 "$SRC" "$H5"
conv h5-to-single "$H5" "$BACKH5"
t0=$(date +%s)
/usr/bin/python3 tools/compare_convert.py single "$SRC" "$BACKH5"
echo "# compared in $(( $(date +%s) - t0 )) s"
[ -n "$KEEP" ] || rm -f "$BACKH5"
conv h5-to-folder "$H5" "$DIR"
t0=$(date +%s)
/usr/bin/python3 tools/compare_convert.py h5-folder "$H5" "$DIR"
echo "# compared in $(( $(date +%s) - t0 )) s"
[ -n "$KEEP" ] || rm -f "$H5" # disk: three 7 GB copies at most at once
conv folder-to-single "$DIR" "$BACK"

echo "# the architecture sdc inferred (written into the folder):"
/usr/bin/python3 - "$DIR" <<'EOF'
import json, sys
d = sys.argv[1]
u = json.load(open(f"{d}/unet/config.json"))
keys = ["block_out_channels", "down_block_types", "transformer_layers_per_block", "attention_head_dim",
        "num_attention_heads", "cross_attention_dim", "use_linear_projection", "addition_embed_type",
        "addition_time_embed_dim", "projection_class_embeddings_input_dim", "sample_size"]
print("  unet: " + ", ".join(f"{k}={u.get(k)}" for k in keys if k in u))
for sub, ks in (("text_encoder", ["hidden_size", "num_hidden_layers", "hidden_act"]),
                ("text_encoder_2", ["hidden_size", "num_hidden_layers", "hidden_act", "projection_dim"]),
                ("vae", ["block_out_channels", "scaling_factor", "sample_size"])):
    c = json.load(open(f"{d}/{sub}/config.json"))
    print(f"  {sub}: " + ", ".join(f"{k}={c.get(k)}" for k in ks))
print("  model_index: " + json.load(open(f"{d}/model_index.json"))["_class_name"])
EOF

t0=$(date +%s)
/usr/bin/python3 tools/compare_convert.py single "$SRC" "$BACK" --not-carried logit_scale
echo "# compared in $(( $(date +%s) - t0 )) s"
[ -n "$KEEP" ] || rm -rf "$H5" "$DIR" "$BACK"
