#!/usr/bin/env python3
"""make_sdxl_full.py: a real-shape SDXL base single file with random weights.

    python3 tools/make_sdxl_full.py PATH      (e.g. /work/xlfull-data/sdxl-full.safetensors)

The original single-file layout of the released sd_xl_base_1.0.safetensors,
in F16 as released: model.diffusion_model.* (label_emb), first_stage_model.*,
conditioner.embedders.0.transformer.* (CLIP ViT-L) and
conditioner.embedders.1.model.* (OpenCLIP ViT-bigG: fused in_proj, the
transposed text_projection, logit_scale). The shapes come from diffusers'
UNet2DConditionModel / AutoencoderKL and transformers' CLIPTextModel /
CLIPTextModelWithProjection built on the meta device with SDXL base's
configs (below, written here: no hub access), renamed with
make_sdxl_fixture.to_single (checked against diffusers' converters on the
tiny SDXL); nothing larger than one tensor is held in memory. Values:
weights N(0, 1/fan_in), norm weights 1 + 0.1 N, biases 0.1 N, embeddings
0.02 N, deterministic per tensor (one pool of 2^25 normals read from a
per-tensor offset: 3.5 G fresh draws take too long on a 2-core machine),
rounded to F16.

Afterwards the file's names and shapes are checked against diffusers'
single-file converters (UNet, VAE, CLIP-L, OpenCLIP-bigG) on meta tensors.
The file is 6.94 GB (3.47 G parameters: UNet 2.567 G, CLIP-L 123 M,
OpenCLIP-bigG 695 M, VAE 83.7 M)."""
import math
import os
import struct
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sdxl_fixture as mx  # noqa: E402
from make_fixtures import text_sd  # noqa: E402

# diffusers' stabilityai/stable-diffusion-xl-base-1.0 configs
UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048, use_linear_projection=True, norm_num_groups=32,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, flip_sin_to_cos=True, freq_shift=0,
)
TE1 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
           num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
           layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)
TE2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
           num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
           layer_norm_eps=1e-5, projection_dim=1280, bos_token_id=0, eos_token_id=2, pad_token_id=1)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
           act_fn="silu", sample_size=1024, scaling_factor=0.13025, force_upcast=True)


def meta_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        te1 = CLIPTextModel(CLIPTextConfig(**TE1))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2))
    return unet, te1, te2, vae


POOL = None  # 2^25 N(0, 1) values, drawn once: 3.5 G fresh normals take too long on a small CPU


def normals(n, idx):
    """n N(0, 1) values: the pool from a per-tensor offset (wrapping), deterministic."""
    global POOL
    if POOL is None:
        POOL = torch.randn(1 << 25, generator=torch.Generator().manual_seed(2024))
    off = (idx * 7919 * 4099) % POOL.numel()
    reps = (off + n + POOL.numel() - 1) // POOL.numel()
    src = POOL if reps <= 1 else POOL.repeat(reps)
    return src[off:off + n]


def value(name, shape, idx):
    last = name.rsplit(".", 1)[-1]
    if name.endswith("logit_scale"):
        return torch.tensor(math.log(100.0))
    n = int(np.prod(shape))
    z = normals(n, idx).reshape(shape)
    if "embedding" in name and "time_embed" not in name:  # token / positional embeddings
        return 0.02 * z
    if len(shape) >= 2:
        return z * (1.0 / math.sqrt(int(np.prod(shape[1:]))))
    if last == "weight":
        return 1.0 + 0.1 * z
    return 0.1 * z


def write_f16_stream(path, entries):
    """entries: (name, shape); each tensor made by value() in order, written as F16."""
    header, off = {}, 0
    for name, shape in entries:
        n = 2 * int(np.prod(shape)) if len(shape) else 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    t0 = time.time()
    with open(path + ".part", "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for i, (name, shape) in enumerate(entries):
            t = value(name, shape, i).to(torch.float16).contiguous()
            assert tuple(t.shape) == tuple(shape), name
            f.write(t.numpy().tobytes())
            if i % 500 == 0:
                print(f"  {i}/{len(entries)} {name} ({time.time() - t0:.0f} s)", flush=True)
    os.replace(path + ".part", path)
    return off


def verify_names(path, unet, te1, te2, vae):
    """Names and shapes against diffusers' single-file converters, on meta tensors."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors import safe_open
    ck = {}
    with safe_open(path, "pt") as f:
        for k in f.keys():
            ck[k] = torch.empty(f.get_slice(k).get_shape(), device="meta", dtype=torch.float16)

    def same(label, ref, got, allow=()):
        bad = [k for k in ref if k not in got or tuple(got[k].shape) != tuple(ref[k].shape)]
        extra = [k for k in got if k not in ref and not any(k.startswith(a) for a in allow)]
        print(f"  verify {label} names/shapes: {'OK' if not bad and not extra else 'FAIL'} "
              f"({len(ref)} tensors){' missing/bad ' + str(bad[:3]) if bad else ''}"
              f"{' extra ' + str(extra[:3]) if extra else ''}")
        return not bad and not extra

    ok = same("unet", unet.state_dict(), sfu.convert_ldm_unet_checkpoint(ck, dict(unet.config)))
    ok &= same("vae", vae.state_dict(), sfu.convert_ldm_vae_checkpoint(ck, dict(vae.config)))
    ok &= same("te1", text_sd(te1), sfu.convert_ldm_clip_checkpoint(ck))
    try:
        t2 = sfu.convert_open_clip_checkpoint(te2, ck, prefix="conditioner.embedders.1.model.")
        ok &= same("te2", mx.te2_sd(te2), t2, allow=("logit_scale",))
    except Exception as e:  # the converter may touch values; the mapping is checked on the tiny SDXL
        print(f"  verify te2: diffusers' converter does not run on meta tensors ({type(e).__name__}: {e}); "
              f"{sum(k.startswith('conditioner.embedders.1.') for k in ck)} OpenCLIP tensors written")
    return ok


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print(__doc__)
        return 2
    path = sys.argv[1]
    unet, te1, te2, vae = meta_models()
    counts = {lbl: sum(p.numel() for p in m.parameters())
              for lbl, m in (("unet", unet), ("te1", te1), ("te2", te2), ("vae", vae))}
    print("  params: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    mx.DTYPE = torch.float16
    sd = mx.to_single(unet, te1, te2, vae)  # meta tensors (logit_scale: a real scalar)
    entries = [(k, tuple(v.shape)) for k, v in sd.items()]
    total = sum(int(np.prod(s)) for _, s in entries)
    print(f"== SDXL base shapes -> {path}: {len(entries)} tensors, {total:,} values, "
          f"{2 * total / 1e9:.2f} GB (F16)")
    t0 = time.time()
    write_f16_stream(path, entries)
    print(f"  written in {time.time() - t0:.0f} s, {os.path.getsize(path):,} bytes")
    ok = verify_names(path, unet, te1, te2, vae)
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
