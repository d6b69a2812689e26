#!/usr/bin/env python3
"""unet_cuda_torch.py: the PyTorch peer of bench_unet_cuda.c, and the maker of
the random-weight SD 1.5 model both sides run.

    python3 bench/unet_cuda_torch.py --out DIR [--batches 1,2,8] [--repeat 10] [--latent 64]
                                     [--no-bench] [--device cuda]

1. Unless DIR/unet/diffusion_pytorch_model.safetensors exists, writes DIR as
   a diffusers folder with the SD 1.5 shapes (configs from
   tools/make_fixtures.py): unet/, vae/, text_encoder/, each config.json plus
   safetensors, bf16, diffusers' own random initialisation (seed 0). sdc
   needs all three folders to open a diffusers model; bench_unet_cuda loads
   only the UNet. ~2 GB, a few seconds on a GPU machine.
2. Times diffusers' UNet2DConditionModel on those weights in bf16: default
   attention (SDPA), torch.no_grad(), input (B, 4, latent, latent),
   t = 999, context (B, 77, 768); per batch 3 warm-up passes, then the median
   of --repeat passes each timed with torch.cuda.synchronize(). Prints per
   batch one line bench_unet_cuda parses:

       torch_unet batch=<B> s_per_pass=<float> peak_mib=<float>

   (peak_mib: torch.cuda.max_memory_allocated during that batch's passes,
   weights included).

Never used at run time; needs torch + diffusers. GPU machines lent bare have
torch but not diffusers: carry the wheels (diffusers 0.42.1 and
importlib_metadata 8.7.0, `pip download --no-deps` into an ignored .whl/) and
`pip install --no-index --no-deps --target /tmp/site .whl/*.whl` there first,
with PYTHONPATH=/tmp/site.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import make_fixtures as mf  # noqa: E402  (the SD 1.5 configs)


def make_model(out, device):
    """Random SD 1.5-shape diffusers folder at out; returns the UNet (bf16, on device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel
    unet_cfg, clip_cfg, vae_cfg = mf.sd15_configs()
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg).to(torch.bfloat16).eval()
        vae = AutoencoderKL(**vae_cfg).to(torch.bfloat16)
        text = CLIPTextModel(CLIPTextConfig(**clip_cfg)).to(torch.bfloat16)
    t0 = time.perf_counter()
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    te = os.path.join(out, "text_encoder")
    os.makedirs(te, exist_ok=True)
    text.config.to_json_file(os.path.join(te, "config.json"))
    save_file({k: v.contiguous() for k, v in mf.text_sd(text).items()}, os.path.join(te, "model.safetensors"))
    print(f"# wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    del vae, text
    return unet


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,2,8")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = a.device
    from diffusers import UNet2DConditionModel
    if os.path.isfile(os.path.join(a.out, "unet", "diffusion_pytorch_model.safetensors")):
        unet = UNet2DConditionModel.from_pretrained(os.path.join(a.out, "unet"), torch_dtype=torch.bfloat16)
        unet = unet.to(dev).eval()
    else:
        unet = make_model(a.out, dev)
    if a.no_bench:
        return 0
    cfg = unet.config
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    for b in [int(s) for s in a.batches.split(",") if s]:
        g = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn(b, cfg.in_channels, a.latent, a.latent, generator=g, device=dev, dtype=torch.bfloat16)
        t = torch.full((b,), 999.0, device=dev)
        ctx = torch.randn(b, 77, cfg.cross_attention_dim, generator=g, device=dev, dtype=torch.bfloat16)
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.no_grad():
            for _ in range(3):
                out = unet(x, t, encoder_hidden_states=ctx).sample
            assert torch.isfinite(out).all(), "non-finite UNet output"
            for _ in range(a.repeat):
                sync()
                t0 = time.perf_counter()
                unet(x, t, encoder_hidden_states=ctx)
                sync()
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**20 if dev.startswith("cuda") else 0.0
        print(f"torch_unet batch={b} s_per_pass={statistics.median(times):.5f} peak_mib={peak:.0f}", flush=True)
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name() if dev.startswith('cuda') else dev}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
