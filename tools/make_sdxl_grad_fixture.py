#!/usr/bin/env python3
"""make_sdxl_grad_fixture.py: torch autograd references for the SDXL UNet's backward.

    python3 tools/make_sdxl_grad_fixture.py   # writes tests/fixtures/ref-grad-sdxl.safetensors

The tiny SDXL UNet (tests/fixtures/tiny-sdxl/unet, diffusers
UNet2DConditionModel with addition_embed_type "text_time"), computed in fp64,
with fixed random x (N, 4, h, w), timesteps, context (N, L, cross), pooled
text embeddings text_embeds (N, 32), six time ids per row (original size,
crop top-left, target size) and a fixed dout:
    out = unet(x, t, ctx, added_cond_kwargs={text_embeds, time_ids})
    loss = sum(out * dout)
and stores out, d loss / d ctx, d loss / d text_embeds and:
  "xl":     d loss / d the parameters of the time MLP, add_embedding,
            conv_in / conv_out, the first level, the last level's first
            resnet and the 2-deep transformer of down_blocks.1 with its
            linear projections ("xl.grad.<diffusers name>"), batch 1;
  "xllora": LoRA rank 4, alpha 8 on to_q, to_k, to_v, to_out.0 of attn1 and
            attn2 (nonzero down/up given in the file), batch 2; their
            gradients ("xllora.grad.<module>.lora.down.weight" etc.).
And the two text encoders with SDXL's outputs: hidden = hidden_states[-2]
(no final norm) of each, pooled = text_embeds of text_encoder_2 (the
projection of final_layer_norm at the EOS), ids (2, 77) of two prompts,
loss = sum(hidden * dhidden) [+ sum(pooled * dpooled)]:
  "te2":     text_encoder_2, every parameter;
  "te2lora": text_encoder_2, LoRA rank 4 alpha 4 on q/k/v/out_proj of every
             layer (nonzero down/up in the file);
  "te1lora": text_encoder (no projection: the last layer gets nothing).
tests/test_sdxl_grad.c loads the inputs and compares.
"""
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
PROJ = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")

FULL_KEEP = ("time_embedding.", "add_embedding.", "conv_in.", "conv_out.", "conv_norm_out.", "down_blocks.0.",
             "down_blocks.1.attentions.0.", "up_blocks.2.resnets.0.", "mid_block.resnets.1.")


def run(tag, out, n, h, w, L, seed, lora_rank=0, lora_alpha=0.0):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(FIX, "tiny-sdxl", "unet")).double()
    c = unet.config
    text_dim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c.in_channels, h, w, generator=g)
    t = torch.tensor([17.0, 603.0][:n])
    ctx = torch.randn(n, L, c.cross_attention_dim, generator=g)
    text = torch.randn(n, text_dim, generator=g)
    ids = torch.tensor([[96.0, 80.0, 8.0, 16.0, 64.0, 64.0], [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]][:n])
    dout = torch.randn(n, c.out_channels, h, w, generator=g)
    for k, v in (("x", x), ("t", t), ("ctx", ctx), ("text", text), ("time_ids", ids), ("dout", dout)):
        out[f"{tag}.{k}"] = v
    ctx = ctx.double().requires_grad_(True)
    text = text.double().requires_grad_(True)
    loras = {}
    if lora_rank:
        for p in unet.parameters():
            p.requires_grad_(False)
        gl = torch.Generator().manual_seed(seed + 1)
        scale = lora_alpha / lora_rank
        for name, mod in unet.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.endswith(PROJ):
                down = (torch.randn(lora_rank, mod.in_features, generator=gl) / lora_rank).double().requires_grad_(True)
                up = (torch.randn(mod.out_features, lora_rank, generator=gl) * 0.05).double().requires_grad_(True)
                loras[name] = (down, up)
                mod.register_forward_hook(
                    lambda m, inp, o, d=down, u=up: o + scale * torch.nn.functional.linear(
                        torch.nn.functional.linear(inp[0], d), u))
    y = unet(x.double(), t.double(), encoder_hidden_states=ctx,
             added_cond_kwargs={"text_embeds": text, "time_ids": ids.double()}).sample
    loss = (y * dout.double()).sum()
    loss.backward()
    out[f"{tag}.out"] = y.detach().float()
    out[f"{tag}.dctx"] = ctx.grad.float()
    out[f"{tag}.dtext"] = text.grad.float()
    if lora_rank:
        for name, (down, up) in loras.items():
            out[f"{tag}.{name}.lora.down.weight"] = down.detach().float()
            out[f"{tag}.{name}.lora.up.weight"] = up.detach().float()
            out[f"{tag}.grad.{name}.lora.down.weight"] = down.grad.float()
            out[f"{tag}.grad.{name}.lora.up.weight"] = up.grad.float()
    else:
        for name, p in unet.named_parameters():
            if name.startswith(FULL_KEEP):  # a subset keeps the file small
                out[f"{tag}.grad.{name}"] = p.grad.float()
    print(f"{tag}: loss {loss.item():.6f}, {sum(1 for k in out if k.startswith(tag + '.grad.'))} grads")


def run_te(tag, folder, cls, out, seed, lora_rank=0, lora_alpha=0.0):
    te = cls.from_pretrained(os.path.join(FIX, "tiny-sdxl", folder)).double()
    te.eval()
    c = te.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(2, 77, dtype=torch.int64)
    for b, n in enumerate((5, 9)):  # BOS, n words, EOS, then pad 0
        ids[b, 0] = c.bos_token_id
        ids[b, 1:n + 1] = torch.randint(1, 990, (n,), generator=g)
        ids[b, n + 1] = c.eos_token_id
    dh = torch.randn(2, 77, c.hidden_size, generator=g)
    out[f"{tag}.ids"] = ids.float()  # exact below 2^24
    out[f"{tag}.dhidden"] = dh
    loras = {}
    if lora_rank:
        for p in te.parameters():
            p.requires_grad_(False)
        gl = torch.Generator().manual_seed(seed + 1)
        scale = lora_alpha / lora_rank
        for name, mod in te.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
                if not name.startswith("text_model."):  # CLIPTextModel's modules lack the prefix in transformers 5
                    name = "text_model." + name
                down = (torch.randn(lora_rank, mod.in_features, generator=gl) / lora_rank).double().requires_grad_(True)
                up = (torch.randn(mod.out_features, lora_rank, generator=gl) * 0.05).double().requires_grad_(True)
                loras[name] = (down, up)
                mod.register_forward_hook(
                    lambda m, inp, o, d=down, u=up: o + scale * torch.nn.functional.linear(
                        torch.nn.functional.linear(inp[0], d), u))
    r = te(ids, output_hidden_states=True)
    hidden = r.hidden_states[-2]
    loss = (hidden * dh.double()).sum()
    out[f"{tag}.hidden"] = hidden.detach().float()
    if hasattr(r, "text_embeds"):
        dp = torch.randn(2, c.projection_dim, generator=g)
        out[f"{tag}.dpooled"] = dp
        out[f"{tag}.pooled"] = r.text_embeds.detach().float()
        loss = loss + (r.text_embeds * dp.double()).sum()
    loss.backward()
    if lora_rank:
        for name, (down, up) in loras.items():
            out[f"{tag}.{name}.lora.down.weight"] = down.detach().float()
            out[f"{tag}.{name}.lora.up.weight"] = up.detach().float()
            z = torch.zeros_like  # the last layer of an encoder without a projection: no gradient
            out[f"{tag}.grad.{name}.lora.down.weight"] = (down.grad if down.grad is not None else z(down)).float()
            out[f"{tag}.grad.{name}.lora.up.weight"] = (up.grad if up.grad is not None else z(up)).float()
    else:
        for name, p in te.named_parameters():
            out[f"{tag}.grad.{name}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).float()
    print(f"{tag}: loss {loss.item():.6f}, {sum(1 for k in out if k.startswith(tag + '.grad.'))} grads")


def main():
    out = {}
    run_te("te2", "text_encoder_2", CLIPTextModelWithProjection, out, 31)
    run_te("te2lora", "text_encoder_2", CLIPTextModelWithProjection, out, 32, lora_rank=4, lora_alpha=4.0)
    run_te("te1lora", "text_encoder", CLIPTextModel, out, 33, lora_rank=4, lora_alpha=4.0)
    run("xl", out, 1, 16, 16, 7, 21)
    run("xllora", out, 2, 16, 24, 7, 22, lora_rank=4, lora_alpha=8.0)
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, os.path.join(FIX, "ref-grad-sdxl.safetensors"),
              metadata={"generator": "tools/make_sdxl_grad_fixture.py"})


if __name__ == "__main__":
    main()
