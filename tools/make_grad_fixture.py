#!/usr/bin/env python3
"""make_grad_fixture.py: torch autograd references for the UNet backward pass.

    python3 tools/make_grad_fixture.py   # writes tests/fixtures/ref-grad-unet.safetensors

For the tiny fixture UNets (tests/fixtures/tiny-sd1, tiny-sd2; diffusers
UNet2DConditionModel, fp32 computed in fp64 for the reference), with fixed
random x (N, 4, h, w), timesteps, context (N, L, cross) and a fixed dout:
    out = unet(x, t, ctx);  loss = sum(out * dout)
and stores out, d loss / d ctx and d loss / d every parameter (named
"<model>.grad.<diffusers name>"). A LoRA case (tiny-sd1) adds
scale * up(down(x)) to every attention projection (to_q, to_k, to_v,
to_out.0 of attn1 and attn2), with nonzero down/up given in the file, and
stores their gradients ("sd1lora.<module>.lora.down.weight" etc.).
tests/test_unet_grad.c loads the inputs and compares.
"""
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def inputs(unet, seed, n, h, w, L):
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    x = torch.randn(n, c.in_channels, h, w, generator=g)
    t = torch.tensor([17.0, 603.0][:n])
    ctx = torch.randn(n, L, c.cross_attention_dim, generator=g)
    dout = torch.randn(n, c.out_channels, h, w, generator=g)
    return x, t, ctx, dout


def lora_modules(unet):
    for name, mod in unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and (
                name.endswith("attn1.to_q") or name.endswith("attn1.to_k") or name.endswith("attn1.to_v")
                or name.endswith("attn1.to_out.0") or name.endswith("attn2.to_q")
                or name.endswith("attn2.to_k") or name.endswith("attn2.to_v") or name.endswith("attn2.to_out.0")):
            yield name, mod


def run(tag, folder, out, n, h, w, L, seed, lora_rank=0, lora_alpha=0.0):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(FIX, folder, "unet")).double()
    x, t, ctx, dout = inputs(unet, seed, n, h, w, L)
    out[f"{tag}.x"], out[f"{tag}.t"], out[f"{tag}.ctx"], out[f"{tag}.dout"] = x, t, ctx, dout
    x, ctx, dout = x.double(), ctx.double().requires_grad_(True), dout.double()
    loras = {}
    if lora_rank:
        for p in unet.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(seed + 1)
        scale = lora_alpha / lora_rank
        for name, mod in lora_modules(unet):
            down = (torch.randn(lora_rank, mod.in_features, generator=g) / lora_rank).double().requires_grad_(True)
            up = (torch.randn(mod.out_features, lora_rank, generator=g) * 0.05).double().requires_grad_(True)
            loras[name] = (down, up)
            mod.register_forward_hook(
                lambda m, inp, o, d=down, u=up: o + scale * torch.nn.functional.linear(
                    torch.nn.functional.linear(inp[0], d), u))
    y = unet(x, t.double(), encoder_hidden_states=ctx).sample
    loss = (y * dout).sum()
    loss.backward()
    out[f"{tag}.out"] = y.detach().float()
    out[f"{tag}.dctx"] = ctx.grad.float()
    if lora_rank:
        for name, (down, up) in loras.items():
            out[f"{tag}.{name}.lora.down.weight"] = down.detach().float()
            out[f"{tag}.{name}.lora.up.weight"] = up.detach().float()
            out[f"{tag}.grad.{name}.lora.down.weight"] = down.grad.float()
            out[f"{tag}.grad.{name}.lora.up.weight"] = up.grad.float()
    else:
        for name, p in unet.named_parameters():
            out[f"{tag}.grad.{name}"] = p.grad.float()
    print(f"{tag}: loss {loss.item():.6f}, {sum(1 for k in out if k.startswith(tag + '.grad.'))} grads")


def main():
    torch.manual_seed(0)
    out = {}
    run("sd1", "tiny-sd1", out, 2, 16, 24, 7, 11)
    run("sd2", "tiny-sd2", out, 1, 16, 16, 5, 12)
    run("sd1lora", "tiny-sd1", out, 2, 16, 16, 7, 13, lora_rank=4, lora_alpha=8.0)
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, os.path.join(FIX, "ref-grad-unet.safetensors"),
              metadata={"generator": "tools/make_grad_fixture.py"})


if __name__ == "__main__":
    main()
