#!/usr/bin/env python3
"""unet_torch.py: the PyTorch peer for bench_unet.c -- seconds per SD 1.5 UNet
forward pass on the CPU, same shape and thread count.

    python3 bench/unet_torch.py [--threads 2] [--repeat 3] [--latent 64] [--batch 1]
                                [--model SD15.safetensors] [--sdxl] [--warmup-latent L]
                                [--precision fp32|bf16|bf16-autocast]

The UNet is diffusers' UNet2DConditionModel with the SD 1.5 config
(320/640/1280/1280, 8 heads, cross_attention_dim 768), f32. Weights are
random unless --model names an original-layout single file (e.g. from
`python3 tools/make_fixtures.py --full-sd15 PATH`), which is then loaded with
the project's own name map. Input (batch, 4, latent, latent), t = 999, context
(batch, 77, 768); torch.no_grad(), default attention (SDPA); one warm-up pass,
then the median of --repeat passes. Prints one line a shell script can parse:

    torch_unet_s_per_pass=<float> peak_rss_mb=<float>

--sdxl: SDXL base's UNet (tools/make_sdxl_full.py's config, context
(batch, 77, 2048), the pooled text embedding random and the six time ids
(latent*8, latent*8, 0, 0, latent*8, latent*8) as bench_unet gives them);
--model is then required (an SDXL single file, built on the meta device and
filled tensor by tensor: no random init of 2.6 B parameters).
--warmup-latent L: the warm-up pass at latent L instead of --latent.
--precision bf16: the UNet's weights and the inputs in bfloat16 (model.to);
bf16-autocast: fp32 weights under torch.autocast("cpu", torch.bfloat16), as
diffusers' training scripts run (issue 17 compares sdc's bf16 with whichever
of the two is faster on the machine).

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
    ap.add_argument("--sdxl", action="store_true", help="SDXL base UNet (needs --model)")
    ap.add_argument("--warmup-latent", type=int, default=0)
    ap.add_argument("--precision", choices=("fp32", "bf16", "bf16-autocast"), default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    from diffusers import UNet2DConditionModel
    name_to_ldm = mf.unet_name_to_ldm
    if a.sdxl:
        if not a.model:
            sys.exit("unet_torch: --sdxl needs --model")
        import make_sdxl_fixture as mx
        import make_sdxl_full as mxf
        unet_cfg, name_to_ldm = mxf.UNET, mx.unet_ldm
        with torch.device("meta"):
            unet = UNet2DConditionModel(**unet_cfg)
        unet = unet.to_empty(device="cpu").float().eval()
    else:
        unet_cfg, _, _ = mf.sd15_configs()
        unet = UNet2DConditionModel(**unet_cfg).eval()
    t_load = time.perf_counter()
    if a.model:
        from safetensors import safe_open
        # tensor by tensor into the parameters: peak memory = the model + one tensor
        with safe_open(a.model, "pt") as f, torch.no_grad():
            names = set(f.keys())
            for k, p in unet.state_dict(keep_vars=True).items():
                name = "model.diffusion_model." + name_to_ldm(k, unet_cfg)
                if name not in names:
                    sys.exit(f"unet_torch: {a.model} has no {name}")
                p.copy_(f.get_tensor(name))

    print(f"# loaded in {time.perf_counter() - t_load:.1f} s", file=sys.stderr)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, unet_cfg["in_channels"], a.latent, a.latent, generator=g)
    t = torch.full((a.batch,), 999.0)
    ctx = torch.randn(a.batch, 77, unet_cfg["cross_attention_dim"], generator=g)
    kw = {}
    if a.sdxl:
        n_text = unet_cfg["projection_class_embeddings_input_dim"] - 6 * unet_cfg["addition_time_embed_dim"]
        s = float(a.latent * 8)
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(a.batch, n_text, generator=g),
                                   "time_ids": torch.tensor([[s, s, 0.0, 0.0, s, s]] * a.batch)}
    if a.precision == "bf16":
        unet = unet.to(torch.bfloat16)
        x, ctx = x.to(torch.bfloat16), ctx.to(torch.bfloat16)
        kw = {k: {n: v.to(torch.bfloat16) for n, v in d.items()} for k, d in kw.items()}
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16-autocast")
    times = []
    with torch.no_grad(), amp:
        wl = a.warmup_latent if 0 < a.warmup_latent < a.latent else a.latent
        t0 = time.perf_counter()
        out = unet(x[:, :, :wl, :wl].contiguous(), t, encoder_hidden_states=ctx, **kw).sample  # warm-up
        print(f"# warm-up pass at latent {wl}: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
        assert torch.isfinite(out).all(), "non-finite UNet output"
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = unet(x, t, encoder_hidden_states=ctx, **kw).sample
            times.append(time.perf_counter() - t0)
        assert torch.isfinite(out).all(), "non-finite UNet output"
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(f"# torch {torch.__version__} {a.precision} threads={a.threads} batch={a.batch} latent={a.latent} "
          f"passes={[round(s, 3) for s in times]}", file=sys.stderr)
    print(f"torch_unet_s_per_pass={statistics.median(times):.4f} peak_rss_mb={rss_mb:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
