#!/usr/bin/env python3
"""unet_torch.py: the PyTorch peer for bench_unet.c -- seconds per SD 1.5 UNet
forward pass on the CPU, same shape and thread count.

    python3 bench/unet_torch.py [--threads 2] [--repeat 3] [--latent 64] [--batch 1]
                                [--model SD15.safetensors]

The UNet is diffusers' UNet2DConditionModel with the SD 1.5 config
(320/640/1280/1280, 8 heads, cross_attention_dim 768), f32. Weights are
random unless --model names an original-layout single file (e.g. from
`python3 tools/make_fixtures.py --full-sd15 PATH`), which is then loaded with
the project's own name map. Input (batch, 4, latent, latent), t = 999, context
(batch, 77, 768); torch.no_grad(), default attention (SDPA); one warm-up pass,
then the median of --repeat passes. Prints one line a shell script can parse:

    torch_unet_s_per_pass=<float> peak_rss_mb=<float>

Never used at run time; needs torch + diffusers.
"""
import argparse
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import make_fixtures as mf  # noqa: E402  (SD 1.5 config and the diffusers<->original name map)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--model", help="original-layout SD 1.5 single file (default: random weights)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    from diffusers import UNet2DConditionModel
    unet_cfg, _, _ = mf.sd15_configs()
    unet = UNet2DConditionModel(**unet_cfg).eval()
    if a.model:
        from safetensors import safe_open
        # tensor by tensor into the parameters: peak memory = the model + one tensor
        with safe_open(a.model, "pt") as f, torch.no_grad():
            names = set(f.keys())
            for k, p in unet.state_dict(keep_vars=True).items():
                name = "model.diffusion_model." + mf.unet_name_to_ldm(k, unet_cfg)
                if name not in names:
                    sys.exit(f"unet_torch: {a.model} has no {name}")
                p.copy_(f.get_tensor(name))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, unet_cfg["in_channels"], a.latent, a.latent, generator=g)
    t = torch.full((a.batch,), 999.0)
    ctx = torch.randn(a.batch, 77, unet_cfg["cross_attention_dim"], generator=g)
    times = []
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=ctx).sample  # warm-up
        assert torch.isfinite(out).all(), "non-finite UNet output"
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            unet(x, t, encoder_hidden_states=ctx)
            times.append(time.perf_counter() - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(f"# torch {torch.__version__} threads={a.threads} batch={a.batch} latent={a.latent} "
          f"passes={[round(s, 3) for s in times]}", file=sys.stderr)
    print(f"torch_unet_s_per_pass={statistics.median(times):.4f} peak_rss_mb={rss_mb:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
