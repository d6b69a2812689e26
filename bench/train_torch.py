#!/usr/bin/env python3
"""train_torch.py: the PyTorch peer for bench_train.c -- seconds per DreamBooth
training step of the SD UNet on the CPU (fp32, every parameter trains), same
shape, same thread count, same step.

    python3 bench/train_torch.py MODEL [--threads 2] [--repeat 3] [--latent 64] [--batch 1]
                                 [--checkpointing] [--plan] [--precision fp32|bf16-autocast|bf16]

MODEL: an original-layout single file with the SD 1.5 config (e.g. from
`python3 tools/make_fixtures.py --full-sd15 PATH`, loaded with the project's
own name map, as unet_torch.py does) or a diffusers folder (its unet/, e.g.
tests/fixtures/tiny-sd1 for a quick check). The UNet is diffusers'
UNet2DConditionModel in train mode with default attention (SDPA);
--checkpointing calls unet.enable_gradient_checkpointing(). One step, as in
diffusers' train_dreambooth.py less the VAE / text encoder / scheduler:

    pred = unet(x, t, ctx).sample; loss = F.mse_loss(pred, target, reduction="mean")
    loss.backward(); clip_grad_norm_(params, 1.0)
    AdamW(lr 5e-6, betas (0.9, 0.999), weight_decay 1e-2, eps 1e-8).step()
    zero_grad(set_to_none=True)

x (batch, Cin, latent, latent), ctx (batch, 77, cross) and the target are
bench_train.c's deterministic inputs (benchutil.h's LCG), t = 999 - 100 i, so
with the same file step 0's loss and gradient norm match sdc's printout. One
warm-up step, then the median of --repeat steps. Prints one line a shell
script can parse:

    torch_train_s_per_step=<s> forward_s=<s> backward_s=<s> adamw_s=<s> peak_rss_mb=<MB> checkpointing=<0|1>

forward_s includes the loss, adamw_s the clip, the step and zero_grad; peak
RSS from getrusage (includes the interpreter). --precision bf16-autocast:
the forward and loss under torch.autocast("cpu", torch.bfloat16) with fp32
weights, gradients and AdamW state (accelerate's --mixed_precision bf16, what
diffusers' train_dreambooth.py runs, and sdc's --mixed-precision bf16);
bf16: the UNet's weights in bf16, so gradients and AdamW state too (kohya's
--full_bf16). --plan computes nothing: it builds
the model from fake tensors (FakeTensorMode), records the bytes autograd saves
in one forward pass (saved_tensors_hooks, parameters excluded) and prints
`torch_train_plan_mb=<MB>` = 4 x parameters (weights, grads, exp_avg,
exp_avg_sq) + saved activations, a lower bound of the training peak (the
backward pass's temporaries, and with checkpointing the recomputed block's
activations, come on top).
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
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import make_fixtures as mf  # noqa: E402  (SD 1.5 config and the diffusers<->original name map)

LR = 5e-6
MAX_GRAD_NORM = 1.0
CTX_LEN = 77


def lcg_buf(n, seed):
    """benchutil.h's buf(n, seed): n floats in [-0.5, 0.5) from the same LCG."""
    s = (seed * 2654435761 + 1) & 0xFFFFFFFF
    out = [0.0] * n
    for i in range(n):
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = (s >> 8) / 16777216.0 - 0.5
    return torch.tensor(out, dtype=torch.float32)


def load_unet(path):
    """UNet2DConditionModel (fp32) from a diffusers folder or an original-layout SD 1.5 file."""
    from diffusers import UNet2DConditionModel
    if os.path.isdir(path):
        return UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float32)
    unet_cfg, _, _ = mf.sd15_configs()
    unet = UNet2DConditionModel(**unet_cfg)
    from safetensors import safe_open
    # tensor by tensor into the parameters: peak memory = the model + one tensor
    with safe_open(path, "pt") as f, torch.no_grad():
        names = set(f.keys())
        for k, p in unet.state_dict(keep_vars=True).items():
            name = "model.diffusion_model." + mf.unet_name_to_ldm(k, unet_cfg)
            if name not in names:
                sys.exit(f"train_torch: {path} has no {name}\n---> is it an SD 1.5-shape single file? "
                         "a diffusers folder works too")
            p.copy_(f.get_tensor(name))
    return unet


def plan(a):
    """Bytes autograd saves in one training forward pass, without memory: the
    model and inputs are fake tensors (FakeTensorMode: CPU tensors without
    data, so SDPA takes the same CPU flash-attention path as a real run; the
    bare meta device would take the math path and save the S x S scores)."""
    from diffusers import UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        if os.path.isdir(a.model):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(a.model, subfolder="unet"))
        else:
            unet = UNet2DConditionModel(**mf.sd15_configs()[0])
        unet.train()
        if a.checkpointing:
            unet.enable_gradient_checkpointing()
        c = unet.config
        params = {p.untyped_storage()._cdata for p in unet.parameters()}
        n_param = sum(p.numel() for p in unet.parameters())
        seen, saved = set(), [0]

        def pack(t):  # count each storage once (views share it), parameters not at all
            key = t.untyped_storage()._cdata
            if key not in params and key not in seen:
                seen.add(key)
                saved[0] += t.untyped_storage().nbytes()
            return t

        x = torch.zeros(a.batch, c.in_channels, a.latent, a.latent)
        ctx = torch.zeros(a.batch, CTX_LEN, c.cross_attention_dim)
        t = torch.zeros(a.batch)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(x, t, encoder_hidden_states=ctx)
    pb = 4 * n_param
    mb = lambda b: b / 1048576.0  # noqa: E731
    print(f"plan batch {a.batch} latent {a.latent}x{a.latent} checkpointing {int(a.checkpointing)}: "
          f"params {mb(pb):.1f} MiB, grads {mb(pb):.1f} MiB, saved activations {mb(saved[0]):.1f} MiB, "
          f"adamw exp_avg+exp_avg_sq {mb(2 * pb):.1f} MiB, total {mb(4 * pb + saved[0]):.1f} MiB")
    print(f"torch_train_plan_mb={mb(4 * pb + saved[0]):.1f} checkpointing={int(a.checkpointing)}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="SD 1.5-shape original-layout single file, or a diffusers folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--lora-rank", type=int, default=0,
                    help="train a peft LoRA (to_q, to_k, to_v, to_out.0; alpha = rank), base frozen")
    ap.add_argument("--plan", action="store_true", help="print the memory estimate only (fake tensors)")
    ap.add_argument("--precision", choices=["fp32", "bf16-autocast", "bf16"], default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.plan:
        return plan(a)

    t0 = time.perf_counter()
    unet = load_unet(a.model).train()
    if a.checkpointing:
        unet.enable_gradient_checkpointing()
    if a.lora_rank:  # as diffusers' train_dreambooth_lora.py sets it up
        from peft import LoraConfig
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=a.lora_rank, lora_alpha=a.lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if a.precision == "bf16":
        unet = unet.to(torch.bfloat16)
    c = unet.config
    params = [p for p in unet.parameters() if p.requires_grad]
    print(f"loaded {a.model} in {time.perf_counter() - t0:.2f} s: {sum(p.numel() for p in params)} parameters, "
          f"threads {torch.get_num_threads()}")
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    # the inputs of bench_train.c (same seeds, same layout)
    x = lcg_buf(a.batch * c.in_channels * a.latent ** 2, 1).view(a.batch, c.in_channels, a.latent, a.latent)
    ctx = lcg_buf(a.batch * CTX_LEN * c.cross_attention_dim, 2).view(a.batch, CTX_LEN, c.cross_attention_dim)
    target = lcg_buf(a.batch * c.out_channels * a.latent ** 2, 3).view(a.batch, c.out_channels, a.latent, a.latent)
    t = torch.tensor([999.0 - 100.0 * i for i in range(a.batch)])
    if a.precision == "bf16":
        x, ctx = x.bfloat16(), ctx.bfloat16()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16-autocast")

    times, fwd, bwd, adam = [], [], [], []
    for r in range(-1, a.repeat):  # r = -1: warm-up
        s0 = time.perf_counter()
        with autocast:
            pred = unet(x, t, encoder_hidden_states=ctx).sample
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        s1 = time.perf_counter()
        loss.backward()
        s2 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        s3 = time.perf_counter()
        if not torch.isfinite(loss):
            sys.exit(f"train_torch: non-finite loss at step {r + 1}")
        print(f"step {r + 1}{' (warm-up)' if r < 0 else ''}: loss {loss.item():.6f} grad_norm {norm.item():.4g} "
              f"forward {s1 - s0:.3f} s backward {s2 - s1:.3f} s adamw {s3 - s2:.3f} s", flush=True)
        if r >= 0:
            times.append(s3 - s0)
            fwd.append(s1 - s0)
            bwd.append(s2 - s1)
            adam.append(s3 - s2)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(f"# torch {torch.__version__} threads={a.threads} batch={a.batch} latent={a.latent} "
          f"checkpointing={int(a.checkpointing)} steps={[round(s, 3) for s in times]}", file=sys.stderr)
    med = statistics.median
    print(f"torch_train_s_per_step={med(times):.4f} forward_s={med(fwd):.4f} backward_s={med(bwd):.4f} "
          f"adamw_s={med(adam):.4f} peak_rss_mb={rss_mb:.1f} checkpointing={int(a.checkpointing)} "
          f"lora_rank={a.lora_rank} precision={a.precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
