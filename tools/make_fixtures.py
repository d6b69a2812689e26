#!/usr/bin/env python3
"""make_fixtures.py: the tiny SD models and the reference tensors that prove the
C code computes what diffusers computes.

    python3 tools/make_fixtures.py                 # everything below, deterministic
    python3 tools/make_fixtures.py --only tiny-sd1 # one fixture model (+ its refs)
    python3 tools/make_fixtures.py --demo-only     # data/models/sdc-tiny-sd1.safetensors
    python3 tools/make_fixtures.py --full-sd15 PATH  # real-shape SD 1.5 single file (~4 GB, f32)

Writes, for each tiny model <name> in tiny-sd1, tiny-sd2, tiny-sd1-inpaint:
  tests/fixtures/<name>/             diffusers folder (f32 safetensors + configs, no tokenizer/)
  tests/fixtures/<name>.safetensors  the original single-file layout (f16 for SD 1.x, bf16 for SD 2.x)
  tests/fixtures/ref-<name>.safetensors  reference tensors (f32, ids i32), see tests/fixtures/README.md
and data/models/sdc-tiny-sd1.safetensors, a random demo model whose
architecture the C loader infers from shapes alone.

Every parameter is random (weights ~ N(0, 1/fan_in), norm gains 1 + 0.1 N,
biases 0.1 N) and rounded to the dtype of the single file before anything is
saved or computed, so both layouts hold the same values exactly.

The diffusers -> original name map below is this project's own; it is checked
by converting the single file back with diffusers' own converters
(diffusers.loaders.single_file_utils) and comparing state dicts exactly.

Python is only used here (and in bench/), never at run time.
"""
import argparse
import json
import math
import os
import struct
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from safetensors.torch import save_file, load_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

# --------------------------------------------------------------------------
# Model configurations
# --------------------------------------------------------------------------

SD1_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear")


def _unet(boc, lpb, heads, cross, groups, linear, in_channels=4, **kw):
    d = dict(
        sample_size=16, in_channels=in_channels, out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=list(boc), layers_per_block=lpb, attention_head_dim=heads,
        cross_attention_dim=cross, norm_num_groups=groups, use_linear_projection=linear,
        flip_sin_to_cos=True, freq_shift=0, act_fn="silu", norm_eps=1e-5,
    )
    d.update(kw)
    return d


def _vae(boc, lpb, groups, sample_size=64):
    return dict(in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * len(boc), up_block_types=["UpDecoderBlock2D"] * len(boc),
                block_out_channels=list(boc), layers_per_block=lpb, norm_num_groups=groups,
                act_fn="silu", sample_size=sample_size, scaling_factor=0.18215)


# The fixture models keep SD's structure (4 levels, same block types, skips,
# mid attention, VAE factor 8) with small channels. To fit the size budget the
# channels go below 32, so norm_num_groups is 8 (UNet) / 4 (VAE) there: group
# sizes 2 and 4, which also proves the C code reads the group count from the
# config instead of assuming 32. The demo model (data/models) uses the SD
# defaults (32 groups) because its architecture is inferred from shapes.

def tiny_sd1_configs(in_channels=4, lpb=2):
    # attention_head_dim 8 = 8 heads (the diffusers quirk): head dims 2 (C=16) and 4 (C=32)
    unet = _unet((16, 16, 16, 32), lpb, 8, 32, 8, False, in_channels)
    clip = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=32, bos_token_id=998, eos_token_id=999,
                pad_token_id=999)
    vae = _vae((8, 8, 16, 16), 2, 4)
    return unet, clip, vae


def tiny_sd2_configs():
    # SD 2.x: linear proj_in/out, one head dim for all levels (attention_head_dim is the
    # per-level head count; real SD 2.x: C/64, here C/8 to stay small), upcast_attention,
    # OpenCLIP text model (gelu, pad 0) used up to its penultimate layer.
    unet = _unet((16, 16, 16, 32), 2, [2, 2, 2, 4], 32, 8, True, upcast_attention=True)
    clip = dict(vocab_size=1000, hidden_size=32, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                layer_norm_eps=1e-5, projection_dim=32, bos_token_id=998, eos_token_id=999,
                pad_token_id=0)
    vae = _vae((8, 8, 16, 16), 2, 4)
    return unet, clip, vae


def demo_configs():
    # Inferable from shapes with SD 1.x defaults: 32 groups (so channels >= 32), 8 heads
    # per UNet level, CLIP heads = max(1, hidden/64) (hidden 32: 1 head), intermediate = 4*hidden,
    # quick_gelu, full CLIP vocab. layers_per_block 1 (counted from the keys) to stay small.
    # 2 levels (one cross-attention level, one plain): the loader infers the
    # level count from the keys; keeps the shipped file under 5 MB.
    unet = _unet((32, 32), 1, 8, 32, 32, False, sample_size=64,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    clip = dict(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=32, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407)
    vae = _vae((32, 32, 32, 32), 1, 32, sample_size=512)
    return unet, clip, vae


def sd15_configs():
    unet = dict(
        sample_size=64, in_channels=4, out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, attention_head_dim=8,
        cross_attention_dim=768, norm_num_groups=32, use_linear_projection=False,
    )
    clip = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=768, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=1)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
               act_fn="silu", sample_size=512, scaling_factor=0.18215)
    return unet, clip, vae


# --------------------------------------------------------------------------
# Random initialisation
# --------------------------------------------------------------------------

def randomize_(model, seed, round_dtype, emb_std=1.0, pos_std=0.5):
    """All parameters random, deterministic, and exactly representable in round_dtype."""
    g = torch.Generator().manual_seed(seed)
    done = set()
    with torch.no_grad():
        for _, mod in model.named_modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
                done.add(id(mod.weight))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
                    done.add(id(mod.bias))
            elif isinstance(mod, (nn.GroupNorm, nn.LayerNorm)):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
                done.add(id(mod.weight))
                done.add(id(mod.bias))
            elif isinstance(mod, nn.Embedding):
                std = pos_std if mod.num_embeddings <= 77 else emb_std
                mod.weight.copy_(std * torch.randn(mod.weight.shape, generator=g))
                done.add(id(mod.weight))
        missing = [n for n, p in model.named_parameters() if id(p) not in done]
        assert not missing, f"parameters not randomised: {missing}"
        for p in model.parameters():
            p.copy_(p.to(round_dtype).to(torch.float32))


def text_sd(m):
    """CLIPTextModel state dict with the names real checkpoints use (text_model.*):
    transformers 5 dropped the text_model. prefix in its own state_dict."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in m.state_dict().items()}


def final_ln(m):
    return m.text_model.final_layer_norm if hasattr(m, "text_model") else m.final_layer_norm


def build(unet_cfg, clip_cfg, vae_cfg, seed, round_dtype, clip_extra_layers=0):
    from diffusers import UNet2DConditionModel, AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    randomize_(unet, seed + 1, round_dtype)
    vae = AutoencoderKL(**vae_cfg).eval()
    randomize_(vae, seed + 2, round_dtype)
    # The text model is built with clip_extra_layers more layers than diffusers
    # uses (SD 2.x: the OpenCLIP file holds N+1, diffusers N); the diffusers
    # model is the first N layers of it.
    full_cfg = dict(clip_cfg)
    full_cfg["num_hidden_layers"] = clip_cfg["num_hidden_layers"] + clip_extra_layers
    full = CLIPTextModel(CLIPTextConfig(**full_cfg)).eval()
    randomize_(full, seed + 3, round_dtype)
    if clip_extra_layers:
        text = CLIPTextModel(CLIPTextConfig(**clip_cfg)).eval()
        missing, unexpected = text.load_state_dict(full.state_dict(), strict=False)
        assert not missing, missing
        assert all(f".encoder.layers.{clip_cfg['num_hidden_layers']}." in "." + k for k in unexpected), unexpected
    else:
        text = full
    return unet, text, full, vae


# --------------------------------------------------------------------------
# diffusers -> original (LDM / CompVis) name map: this project's own.
# --------------------------------------------------------------------------

RESNET_UNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
               ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def unet_name_to_ldm(k, cfg):
    """diffusers UNet2DConditionModel name -> name under model.diffusion_model."""
    L = cfg["layers_per_block"]
    p = k.split(".")
    simple = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    if p[0] in simple:
        return simple[p[0]] + "." + ".".join(p[1:])
    if p[0] == "time_embedding":
        return {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[p[1]] + "." + ".".join(p[2:])

    def resnet(rest):
        head, tail = rest[0], rest[1:]
        return dict(RESNET_UNET)[head] + "." + ".".join(tail)

    if p[0] == "down_blocks":
        b = int(p[1])
        if p[2] == "downsamplers":  # down_blocks.b.downsamplers.0.conv.X
            return f"input_blocks.{(b + 1) * (L + 1)}.0.op." + ".".join(p[5:])
        l = int(p[3])
        blk = 1 + b * (L + 1) + l
        if p[2] == "resnets":
            return f"input_blocks.{blk}.0." + resnet(p[4:])
        if p[2] == "attentions":
            return f"input_blocks.{blk}.1." + ".".join(p[4:])
    if p[0] == "mid_block":
        i = int(p[2])
        if p[1] == "resnets":
            return f"middle_block.{2 * i}." + resnet(p[3:])
        if p[1] == "attentions":
            return "middle_block.1." + ".".join(p[3:])
    if p[0] == "up_blocks":
        b = int(p[1])
        has_attn = cfg["up_block_types"][b].startswith("CrossAttn")
        if p[2] == "upsamplers":  # up_blocks.b.upsamplers.0.conv.X
            return f"output_blocks.{b * (L + 1) + L}.{2 if has_attn else 1}.conv." + ".".join(p[5:])
        l = int(p[3])
        blk = b * (L + 1) + l
        if p[2] == "resnets":
            return f"output_blocks.{blk}.0." + resnet(p[4:])
        if p[2] == "attentions":
            return f"output_blocks.{blk}.1." + ".".join(p[4:])
    raise KeyError(k)


VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_name_to_ldm(k, cfg):
    """diffusers AutoencoderKL name -> (name under first_stage_model., is_attn_linear)."""
    n = len(cfg["block_out_channels"])
    p = k.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return k, False
    side = p[0]  # encoder / decoder
    rest = p[1:]
    if rest[0] in ("conv_in", "conv_out"):
        return k, False
    if rest[0] == "conv_norm_out":
        return f"{side}.norm_out." + ".".join(rest[1:]), False
    if rest[0] == "mid_block":
        i = int(rest[2])
        if rest[1] == "resnets":
            return f"{side}.mid.block_{i + 1}." + ".".join(rest[3:]), False
        sub = ".".join(rest[3:-1])  # group_norm / to_q / ... / to_out.0
        return f"{side}.mid.attn_1.{VAE_ATTN[sub]}.{rest[-1]}", rest[-1] == "weight" and sub != "group_norm"
    if rest[0] in ("down_blocks", "up_blocks"):
        i = int(rest[1])
        if side == "encoder":
            lvl, grp = i, "down"
        else:
            lvl, grp = n - 1 - i, "up"
        if rest[2] == "resnets":
            tail = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.{grp}.{lvl}.block.{rest[3]}.{tail}", False
        if rest[2] in ("downsamplers", "upsamplers"):
            kind = "downsample" if rest[2] == "downsamplers" else "upsample"
            return f"{side}.{grp}.{lvl}.{kind}.conv.{rest[-1]}", False
    raise KeyError(k)


def to_ldm(unet, text_full, vae, family, unet_cfg, vae_cfg, dtype, n_text_layers):
    """Original single-file state dict (values cast to dtype)."""
    sd = {}
    for k, v in unet.state_dict().items():
        sd["model.diffusion_model." + unet_name_to_ldm(k, unet_cfg)] = v
    for k, v in vae.state_dict().items():
        name, lin = vae_name_to_ldm(k, vae_cfg)
        sd["first_stage_model." + name] = v[:, :, None, None] if lin else v
    tsd = text_sd(text_full)
    if family == 1:
        for k, v in tsd.items():
            sd["cond_stage_model.transformer." + k] = v
        # Real SD 1.x files carry the position_ids buffer (int64).
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
            torch.arange(text_full.config.max_position_embeddings, dtype=torch.int64)[None]
    else:
        P = "cond_stage_model.model."
        sd[P + "token_embedding.weight"] = tsd["text_model.embeddings.token_embedding.weight"]
        sd[P + "positional_embedding"] = tsd["text_model.embeddings.position_embedding.weight"]
        sd[P + "ln_final.weight"] = tsd["text_model.final_layer_norm.weight"]
        sd[P + "ln_final.bias"] = tsd["text_model.final_layer_norm.bias"]
        for i in range(n_text_layers):
            s = f"text_model.encoder.layers.{i}."
            d = f"{P}transformer.resblocks.{i}."
            for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                for w in ("weight", "bias"):
                    sd[d + b + "." + w] = tsd[s + a + "." + w]
            for w in ("weight", "bias"):
                sd[d + "attn.in_proj_" + w] = torch.cat([tsd[s + f"self_attn.{q}_proj.{w}"] for q in "qkv"], 0)
        D = text_full.config.hidden_size
        g = torch.Generator().manual_seed(4242)
        sd[P + "text_projection"] = torch.randn(D, D, generator=g) / math.sqrt(D)
        sd[P + "logit_scale"] = torch.tensor(math.log(100.0))
    # A few EMA tensors (as in real training checkpoints): must be ignored by loaders.
    g = torch.Generator().manual_seed(777)
    c0 = unet_cfg["block_out_channels"][0]
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    sd["model_ema.diffusion_modelinput_blocks00weight"] = torch.randn(c0, unet_cfg["in_channels"], 3, 3, generator=g)
    sd["model_ema.diffusion_modelinput_blocks00bias"] = torch.randn(c0, generator=g)
    sd["model_ema.diffusion_modelout2bias"] = torch.randn(4, generator=g)
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


# --------------------------------------------------------------------------
# Verification against diffusers' own converters
# --------------------------------------------------------------------------

def _same(name, ref, got, allow_extra=()):
    ok = True
    rk, gk = set(ref), set(got)
    miss = rk - gk
    extra = {k for k in gk - rk if not any(k.startswith(a) or k == a for a in allow_extra)}
    if miss:
        print(f"  [{name}] MISSING after conversion: {sorted(miss)[:5]} ({len(miss)})")
        ok = False
    if extra:
        print(f"  [{name}] EXTRA after conversion: {sorted(extra)[:5]} ({len(extra)})")
        ok = False
    for k in sorted(rk & gk):
        a, b = ref[k].float(), got[k].float()
        if a.shape != b.shape or not torch.equal(a, b):
            print(f"  [{name}] DIFFERS: {k} {tuple(a.shape)} vs {tuple(b.shape)}")
            ok = False
    print(f"  verify {name}: {'OK' if ok else 'FAIL'} ({len(rk & gk)} tensors equal)")
    return ok


def verify(single_path, unet, text, vae, family):
    from diffusers.loaders import single_file_utils as sfu
    ck = load_file(single_path)
    ck = {k: (v.float() if v.is_floating_point() else v) for k, v in ck.items()}
    ok = True
    u = sfu.convert_ldm_unet_checkpoint(ck, dict(unet.config))
    ok &= _same("unet", unet.state_dict(), u)
    v = sfu.convert_ldm_vae_checkpoint(ck, dict(vae.config))
    ok &= _same("vae", vae.state_dict(), v)
    if family == 1:
        t = sfu.convert_ldm_clip_checkpoint(ck)
        ok &= _same("clip", text_sd(text), t, allow_extra=("text_model.embeddings.position_ids",))
    else:
        t = sfu.convert_open_clip_checkpoint(text, ck)
        n = text.config.num_hidden_layers
        # the extra (N+1-th) OpenCLIP layer and the projection are unused by SD 2.x
        ok &= _same("openclip", text_sd(text), t,
                    allow_extra=(f"text_model.encoder.layers.{n}.", "text_projection.weight", "logit_scale"))
    return ok


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------

def save_diffusers(folder, unet, text, vae, sched, pipe_class, dtype=torch.float32):
    """A diffusers folder; weights stored in dtype (values are exact: already rounded to it)."""
    import copy
    import diffusers
    import transformers
    os.makedirs(folder, exist_ok=True)
    for sub in ("unet", "vae", "text_encoder"):
        if os.path.islink(os.path.join(folder, sub)):
            os.remove(os.path.join(folder, sub))
    copy.deepcopy(unet).to(dtype).save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    copy.deepcopy(vae).to(dtype).save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    td = os.path.join(folder, "text_encoder")
    text.save_pretrained(td, safe_serialization=True)
    # real SD folders hold text_model.* names (what transformers 4.x wrote); write those
    save_file({k: v.to(dtype).contiguous() for k, v in text_sd(text).items()},
              os.path.join(td, "model.safetensors"), metadata={"format": "pt"})
    gen = os.path.join(folder, "text_encoder", "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    sched.save_config(os.path.join(folder, "scheduler"))
    mi = {
        "_class_name": pipe_class,
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(sched).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        # No tokenizer/ folder (the full CLIP vocab is too large for fixtures):
        # the C side uses its shipped vocab.
        "tokenizer": [None, None],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(mi, f, indent=2, sort_keys=True)
        f.write("\n")
    _ = transformers


def make_scheduler(family):
    from diffusers import PNDMScheduler, DDIMScheduler
    if family == 1:
        return PNDMScheduler(**SD1_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                             prediction_type="epsilon", timestep_spacing="leading")
    return DDIMScheduler(**SD1_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type="v_prediction", timestep_spacing="leading")


# --------------------------------------------------------------------------
# Reference tensors
# --------------------------------------------------------------------------

def text_ids(clip_cfg, seed):
    g = torch.Generator().manual_seed(seed)
    V, bos, eos, pad = clip_cfg["vocab_size"], clip_cfg["bos_token_id"], clip_cfg["eos_token_id"], clip_cfg["pad_token_id"]
    ids = torch.full((2, 77), pad, dtype=torch.int64)
    for row, n in ((0, 6), (1, 75)):  # a short prompt, and one filling all 77 positions
        toks = torch.randint(1, min(bos, eos), (n,), generator=g)
        ids[row, 0] = bos
        ids[row, 1:1 + n] = toks
        ids[row, 1 + n] = eos
    return ids


def references(unet, text, vae, clip_cfg, seed, text_full=None):
    g = torch.Generator().manual_seed(seed)
    r = {}
    with torch.no_grad():
        ids = text_ids(clip_cfg, seed + 1)
        o = text(input_ids=ids, output_hidden_states=True)
        r["text.ids"] = ids.to(torch.int32)
        r["text.hidden"] = o.last_hidden_state
        r["text.hidden_skip2"] = final_ln(text)(o.hidden_states[-2])
        if text_full is not None and text_full is not text:
            # SD 2.x: the N-layer diffusers model == the N+1-layer OpenCLIP model cut at its
            # penultimate layer (the extra layer must not matter)
            of = text_full(input_ids=ids, output_hidden_states=True)
            assert torch.equal(final_ln(text_full)(of.hidden_states[-2]), r["text.hidden"])
        cin = unet.config.in_channels
        x = torch.randn(2, cin, 16, 16, generator=g)
        t = torch.tensor([999.0, 31.0])
        ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
        r["unet.x"], r["unet.t"], r["unet.ctx"] = x, t, ctx
        r["unet.out"] = unet(x, t, encoder_hidden_states=ctx).sample
        img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        dist = vae.encode(img).latent_dist
        r["vae.image"], r["vae.mean"], r["vae.logvar"] = img, dist.mean, dist.logvar
        z = torch.randn(1, 4, 8, 8, generator=g)
        r["vae.z"] = z
        r["vae.decoded"] = vae.decode(z).sample
    out = {}
    for k, v in r.items():
        v = v.detach().contiguous()
        out[k] = v if v.dtype == torch.int32 else v.float()
    for k, v in out.items():
        if v.is_floating_point():
            print(f"    {k:20s} {str(tuple(v.shape)):18s} std {v.std().item():.3f} max|.| {v.abs().max().item():.3f}")
    return out


# --------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------

FIXTURES = {
    # name: (configs, family, seed, dtype, pipeline class, diffusers folder dtype)
    # The folders' dtypes differ on purpose: each load path (F32 in place, F16, BF16) is exercised.
    "tiny-sd1": (lambda: tiny_sd1_configs(4), 1, 1000, torch.float16, "StableDiffusionPipeline", torch.float32),
    "tiny-sd2": (tiny_sd2_configs, 2, 2000, torch.bfloat16, "StableDiffusionPipeline", torch.bfloat16),
    # same seed as tiny-sd1: the text encoder and VAE are identical to tiny-sd1's
    "tiny-sd1-inpaint": (lambda: tiny_sd1_configs(9, lpb=1), 1, 1000, torch.float16,
                         "StableDiffusionInpaintPipeline", torch.float32),
}


def make_fixture(name):
    cfgs, family, seed, dtype, pipe_class, folder_dtype = FIXTURES[name]
    unet_cfg, clip_cfg, vae_cfg = cfgs()
    print(f"== {name}")
    extra = 1 if family == 2 else 0
    unet, text, text_full, vae = build(unet_cfg, clip_cfg, vae_cfg, seed, dtype, clip_extra_layers=extra)
    if name == "tiny-sd1-inpaint":
        # a different UNet from tiny-sd1's (in_channels 9), same text encoder and VAE
        randomize_(unet, seed + 11, dtype)
    for label, m in (("unet", unet), ("text_encoder", text), ("vae", vae)):
        print(f"  {label}: {sum(p.numel() for p in m.parameters()):,} params")
    folder = os.path.join(FIX, name)
    save_diffusers(folder, unet, text, vae, make_scheduler(family), pipe_class, folder_dtype)
    single = os.path.join(FIX, name + ".safetensors")
    sd = to_ldm(unet, text_full, vae, family, unet_cfg, vae_cfg, dtype,
                clip_cfg["num_hidden_layers"] + extra)
    save_file(sd, single, metadata={"format": "pt"})
    ok = verify(single, unet, text, vae, family)
    ok &= verify_reload(folder, unet, text, vae)
    if name == "tiny-sd1-inpaint":
        share_with(folder, os.path.join(FIX, "tiny-sd1"), ("text_encoder", "vae"))
    refs = references(unet, text, vae, clip_cfg, seed + 100, text_full)
    save_file(refs, os.path.join(FIX, f"ref-{name}.safetensors"), metadata={"format": "pt"})
    return ok


def verify_reload(folder, unet, text, vae):
    """The diffusers folder loads back (diffusers / transformers from_pretrained) to the same values."""
    from diffusers import UNet2DConditionModel, AutoencoderKL
    from transformers import CLIPTextModel
    ok = True
    for label, cls, m, sdf in (("unet", UNet2DConditionModel, unet, lambda x: x.state_dict()),
                               ("vae", AutoencoderKL, vae, lambda x: x.state_dict()),
                               ("text_encoder", CLIPTextModel, text, text_sd)):
        r = cls.from_pretrained(os.path.join(folder, label))
        a, b = sdf(m), sdf(r)
        good = set(a) == set(b) and all(torch.equal(a[k].float(), b[k].float()) for k in a)
        print(f"  reload {label}: {'OK' if good else 'FAIL'}")
        ok &= good
    return ok


def share_with(folder, other, subs):
    """Replace identical sub-folders by relative symlinks to another fixture's (saves space)."""
    import filecmp
    import shutil
    for sub in subs:
        a, b = os.path.join(folder, sub), os.path.join(other, sub)
        if os.path.islink(a) or not os.path.isdir(b):
            continue
        names = sorted(os.listdir(a))
        if names == sorted(os.listdir(b)) and all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False)
                                                  for n in names):
            shutil.rmtree(a)
            os.symlink(os.path.join("..", os.path.basename(other), sub), a)
            print(f"  {sub}/ -> symlink to {os.path.basename(other)}/{sub} (identical)")
        else:
            print(f"  {sub}/ differs from {os.path.basename(other)}/{sub}: kept a copy")


DEMO = os.path.join(ROOT, "data", "models", "sdc-tiny-sd1.safetensors")


def make_demo():
    path = DEMO
    os.makedirs(os.path.dirname(path), exist_ok=True)
    unet_cfg, clip_cfg, vae_cfg = demo_configs()
    print("== demo model", path)
    unet, text, _, vae = build(unet_cfg, clip_cfg, vae_cfg, 5000, torch.float16)
    for label, m in (("unet", unet), ("text_encoder", text), ("vae", vae)):
        print(f"  {label}: {sum(p.numel() for p in m.parameters()):,} params")
    sd = to_ldm(unet, text, vae, 1, unet_cfg, vae_cfg, torch.float16, clip_cfg["num_hidden_layers"])
    sd = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    save_file(sd, path, metadata={"format": "pt"})
    return verify(path, unet, text, vae, 1)


# --- full-size SD 1.5 (streamed, memory-light) -----------------------------

def _write_safetensors_stream(path, entries):
    """entries: list of (name, shape, make_fn) with make_fn() -> f32 tensor. Written in order."""
    header, off = {}, 0
    for name, shape, _ in entries:
        n = 4 * int(np.prod(shape)) if len(shape) else 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for i, (name, shape, make) in enumerate(entries):
            t = make().to(torch.float32).contiguous()
            assert tuple(t.shape) == tuple(shape), name
            f.write(t.numpy().tobytes())
            if i % 200 == 0:
                print(f"  {i}/{len(entries)} {name}", flush=True)


def make_full_sd15(path):
    from diffusers import UNet2DConditionModel, AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    unet_cfg, clip_cfg, vae_cfg = sd15_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**clip_cfg))
    entries = []

    def maker(name, shape, idx):
        def make():
            g = torch.Generator().manual_seed(100003 * idx + 17)
            last = name.rsplit(".", 1)[-1]
            if "token_embedding" in name or "position_embedding" in name:
                return 0.02 * torch.randn(shape, generator=g)
            if len(shape) >= 2:
                return torch.randn(shape, generator=g) / math.sqrt(int(np.prod(shape[1:])))
            if last == "weight":
                return 1.0 + 0.1 * torch.randn(shape, generator=g)
            return 0.1 * torch.randn(shape, generator=g)
        return make

    idx = 0
    for k, p in unet.state_dict().items():
        entries.append(("model.diffusion_model." + unet_name_to_ldm(k, unet_cfg), tuple(p.shape), maker(k, tuple(p.shape), idx)))
        idx += 1
    for k, p in vae.state_dict().items():
        name, lin = vae_name_to_ldm(k, vae_cfg)
        shape = tuple(p.shape) + ((1, 1) if lin else ())
        entries.append(("first_stage_model." + name, shape, maker(k, shape, idx)))
        idx += 1
    for k, p in text_sd(text).items():
        entries.append(("cond_stage_model.transformer." + k, tuple(p.shape), maker(k, tuple(p.shape), idx)))
        idx += 1
    total = sum(4 * int(np.prod(s)) for _, s, _ in entries)
    print(f"== full SD 1.5 shapes -> {path}: {len(entries)} tensors, {total / 2**30:.2f} GiB (f32)")
    _write_safetensors_stream(path, entries)
    ok = verify_full_names(path, unet, text, vae)
    print("  done")
    return ok


def verify_full_names(path, unet, text, vae):
    """Names and shapes of a big single file against diffusers' converters, without loading values."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors import safe_open
    ck = {}
    with safe_open(path, "pt") as f:
        for k in f.keys():
            ck[k] = torch.empty(f.get_slice(k).get_shape(), device="meta")

    def same(label, ref, got, allow=()):
        bad = [k for k in ref if k not in got or tuple(got[k].shape) != tuple(ref[k].shape)]
        extra = [k for k in got if k not in ref and not any(k.startswith(a) for a in allow)]
        print(f"  verify {label} names/shapes: {'OK' if not bad and not extra else 'FAIL'} ({len(ref)} tensors)")
        return not bad and not extra

    ok = same("unet", unet.state_dict(), sfu.convert_ldm_unet_checkpoint(ck, dict(unet.config)))
    ok &= same("vae", vae.state_dict(), sfu.convert_ldm_vae_checkpoint(ck, dict(vae.config)))
    ok &= same("clip", text_sd(text), sfu.convert_ldm_clip_checkpoint(ck))
    return ok


def sizes():
    tot = 0
    rows = []
    for base in (FIX, os.path.dirname(DEMO)):
        for dp, _, fs in os.walk(base):
            for f in fs:
                p = os.path.join(dp, f)
                s = os.path.getsize(p)
                tot += s
                rows.append((os.path.relpath(p, ROOT) if p.startswith(ROOT) else p, s))
    for p, s in sorted(rows):
        print(f"  {s / 1e6:8.3f} MB  {p}")
    print(f"  {tot / 1e6:8.3f} MB  total (tests/fixtures + data/models)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated fixture names (default: all)")
    ap.add_argument("--no-demo", action="store_true", help="skip data/models/sdc-tiny-sd1.safetensors")
    ap.add_argument("--demo-only", action="store_true")
    ap.add_argument("--full-sd15", metavar="PATH", help="write a real-shape random SD 1.5 single file and exit")
    ap.add_argument("--out", help="fixtures folder (default tests/fixtures)")
    ap.add_argument("--demo-out", help="demo model path (default data/models/sdc-tiny-sd1.safetensors)")
    a = ap.parse_args()
    global FIX, DEMO
    FIX = a.out or FIX
    DEMO = a.demo_out or DEMO
    torch.set_num_threads(2)
    if a.full_sd15:
        return 0 if make_full_sd15(a.full_sd15) else 1
    ok = True
    if not a.demo_only:
        names = a.only.split(",") if a.only else list(FIXTURES)
        for n in names:
            ok &= make_fixture(n)
    if not a.no_demo and (a.demo_only or not a.only):
        ok &= make_demo()
    sizes()
    print("verification:", "ALL OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
