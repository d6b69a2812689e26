#!/usr/bin/env python3
"""make_sdxl_fixture.py: a tiny random SDXL base pipeline and its references.

The model keeps SDXL's structure with small widths: three UNet levels
(DownBlock2D first, then two cross-attention levels), transformer depth per
level (1, 2, 3; the mid block takes the last), linear projections, the
"text_time" added embedding (pooled text embedding + six size / crop ids
through their own sinusoid), two CLIP text encoders (CLIPTextModel with
quick_gelu padding with EOS; CLIPTextModelWithProjection with gelu padding
with id 0, whose pooled output is projected), the context being the two
encoders' penultimate hidden states side by side, and a VAE with SDXL's
scaling factor 0.13025.

Writes
  tests/fixtures/tiny-sdxl/            diffusers folder (StableDiffusionXLPipeline,
                                       force_zeros_for_empty_prompt, Euler "leading",
                                       tokenizer/ and tokenizer_2/ of 1000 ids)
  tests/fixtures/tiny-sdxl-infer.safetensors  a second model in the original single-file
                                       layout (conditioner.embedders.0/1, label_emb;
                                       checked against diffusers' own converters)
                                       whose architecture is inferred from the file as
                                       for SDXL base (head dim 64, 32 groups, 256-wide
                                       time ids; the refs' infer.* tensors)
  tests/fixtures/lora-tiny-sdxl-{kohya,diffusers}.safetensors  an SDXL LoRA (make_lora)
  tests/fixtures/ref-tiny-sdxl.safetensors
    te1.ids / te2.ids (2, 77) I32, te1.hidden2 / te2.hidden2 (2, 77, D):
        hidden_states[-2] of each encoder (no final norm), te2.pooled (2, P)
        the projected pooled output (text_embeds)
    unet.x (2, 4, 16, 16), unet.t (2), unet.ctx (2, 77, 64), unet.text_embeds (2, 32),
        unet.time_ids (2, 6), unet.out: UNet2DConditionModel with added_cond_kwargs
    pipe.ctx (2, 77, 64) [negative, prompt] prompt embeddings (pooled: te2.pooled)
    pipe.<case>.latents (1, 4, 8, 8), pipe.<case>.image (64, 64, 3) U8:
        StableDiffusionXLPipeline.from_pretrained(folder), Euler (the folder's),
        4 steps, guidance 5, 64x64, generator seed 7, prompt embeddings given:
        zeroneg: no negative (force_zeros_for_empty_prompt: zeros),
        neg: the negative embeddings given,
        micro: neg + original_size (96, 128), crops (8, 16), target (64, 80),
               negative_original_size (32, 48), negative_crops (4, 0),
               negative_target_size (64, 64)
    pipe.params F32 [steps, guidance, seed, width, height]
    pipe.init.image_u8 (64, 64, 3), pipe.init.mask_u8 (64, 64): the init image and mask
        (make_pipeline_fixture's); pipe.{img2img, inpaint, inpaint075}.{latents, image}:
        StableDiffusionXLImg2ImgPipeline (strength 0.6) and StableDiffusionXLInpaintPipeline
        (strength 1.0 and 0.75) from_pipe, 8 steps, the "neg" embeddings
    pipe.text.*, pipe.textneg.*: the same from the prompt "a photo of a red fox in the
        snow, high quality!" (no negative prompt: zeros; and "blurry, low quality"),
        through the folder's tokenizers (tokenizer/ pads with EOS, tokenizer_2/ with "!",
        a 1000-id CLIP BPE made from CLIP's merges); pipe.textneg.ctx / .pooled
        encode_prompt's [negative, prompt] embeddings; pipe.text.ids1 / ids2 the ids
    pipe.lora.{latents, image}: pipe.textneg with lora-tiny-sdxl-kohya.safetensors fused at 0.7
        (diffusers' load_lora_weights + fuse_lora; the diffusers-named file gives the same latents)
    infer.te1.hidden2, infer.te2.hidden2, infer.te2.pooled: tiny-sdxl-infer's encoders on
        te1.ids / te2.ids; infer.unet.{ctx (2, 77, 128), text_embeds (2, 64), out}: its UNet
        on unet.x, unet.t, unet.time_ids

Run: python3 tools/make_sdxl_fixture.py   (torch, diffusers, transformers)
"""
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import (FIX, _same, randomize_, text_sd, unet_name_to_ldm,  # noqa: E402
                           vae_name_to_ldm)

NAME = "tiny-sdxl"
SEED = 3000
DTYPE = torch.float16  # values exactly representable in f16; stored as f16 in the folder and the file

UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[16, 32, 32],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[2, 2, 4], transformer_layers_per_block=[1, 2, 3],
    cross_attention_dim=64, use_linear_projection=True, norm_num_groups=8,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32, flip_sin_to_cos=True, freq_shift=0,
)
TE1 = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
           num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
           layer_norm_eps=1e-5, projection_dim=32, bos_token_id=998, eos_token_id=999, pad_token_id=999)
TE2 = dict(vocab_size=1000, hidden_size=32, intermediate_size=128, num_hidden_layers=4,
           num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
           layer_norm_eps=1e-5, projection_dim=32, bos_token_id=998, eos_token_id=999, pad_token_id=0)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
           act_fn="silu", sample_size=128, scaling_factor=0.13025, force_upcast=True)
SCHED = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             steps_offset=1, timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False,
             prediction_type="epsilon")


# A second model whose architecture sdc infers from the single file alone,
# as for a real SDXL base checkpoint: head dim 64, 32 groups, 256-wide time
# ids, one CLIP head per 64 channels (tiny-sdxl's widths cannot be inferred).
UNET_I = dict(UNET, block_out_channels=[32, 32], layers_per_block=1,
              down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[1, 1],
              transformer_layers_per_block=[1, 2], cross_attention_dim=128, norm_num_groups=32,
              addition_time_embed_dim=256, projection_class_embeddings_input_dim=6 * 256 + 64, sample_size=128)
TE1_I = dict(TE1, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1)
TE2_I = dict(TE2, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=1,
             projection_dim=64, eos_token_id=2)
VAE_I = dict(VAE, block_out_channels=[32, 32, 32, 32], norm_num_groups=32, sample_size=1024)


def make_tokenizers(folder):
    """A CLIP BPE tokenizer of the text encoders' 1000 ids: the 512 byte
    symbols, the first merges of tests/fixtures/tokenizer (CLIP's own, in
    order) whose parts are known, up to id 997, then <|startoftext|> 998 and
    <|endoftext|> 999; tokenizer/ pads with EOS, tokenizer_2/ with "!" (SDXL's
    two conventions). Written with transformers' CLIPTokenizer.save_pretrained."""
    from transformers import CLIPTokenizer
    # byte-level BPE's printable stand-ins for the 256 bytes, in CLIP's order
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = [b for b in range(256) if b not in keep]
    base = [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]
    vocab = base + [b + "</w>" for b in base]
    have, merges = set(vocab), []
    with open(os.path.join(FIX, "tokenizer", "merges.txt"), encoding="utf-8") as f:
        for line in f.read().split("\n")[1:]:
            parts = line.split()
            if len(parts) != 2 or parts[0] not in have or parts[1] not in have or "".join(parts) in have:
                continue
            merges.append(line)
            vocab.append("".join(parts))
            have.add(vocab[-1])
            if len(vocab) == 998:
                break
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 1000, len(vocab)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        toks = []
        for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
            t = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), pad_token=pad,
                              model_max_length=77)
            t.save_pretrained(os.path.join(folder, sub))
            toks.append(CLIPTokenizer.from_pretrained(os.path.join(folder, sub)))
    return toks


def make_lora(unet, te1, te2):
    """lora-tiny-sdxl-{kohya,diffusers}.safetensors: rank 4 on tiny-sdxl's UNet attention projections
    and proj_in of the first cross-attention level, and both text encoders' attention and MLP, random
    (down ~ N(0, 1/in), up ~ N(0, 1/rank)), alpha 2 (scale 0.5). kohya: lora_unet_ + the original
    layout's name (input_blocks_4_1_..., as kohya's SDXL LoRAs), lora_te1_ / lora_te2_, .alpha;
    diffusers: unet. / text_encoder. / text_encoder_2. + module (as the model names it) +
    .lora_A/B.weight (peft), each component's LoraConfig in lora_adapter_metadata. Same values (F32)."""
    g = torch.Generator().manual_seed(SEED + 500)
    rank, alpha = 4, 2.0
    mods = []
    for name, m in unet.named_modules():
        if name.startswith(("down_blocks.1.attentions.0", "up_blocks.0.attentions.1", "mid_block.attentions.0")) and \
                name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                               "attn2.to_v", "attn2.to_out.0", ".proj_in")):
            mods.append(("unet", name, m))
    for comp, te in (("text_encoder", te1), ("text_encoder_2", te2)):
        for name, m in te.named_modules():  # transformers 5: CLIPTextModel has no text_model. level
            if name.replace("text_model.", "", 1).startswith("encoder.layers.1.") and \
                    name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")):
                mods.append((comp, name, m))
    kohya, diff = {}, {}
    for comp, name, m in mods:
        w = m.weight
        down = (torch.randn(rank, w.shape[1], generator=g) / math.sqrt(w.shape[1])).to(DTYPE).float()
        up = (torch.randn(w.shape[0], rank, generator=g) / math.sqrt(rank)).to(DTYPE).float()
        if comp == "unet":
            stem = "lora_unet_" + unet_ldm(name + ".weight", dict(unet.config))[:-len(".weight")].replace(".", "_")
        else:
            full = name if name.startswith("text_model.") else "text_model." + name
            stem = ("lora_te1_" if comp == "text_encoder" else "lora_te2_") + full.replace(".", "_")
        kohya[stem + ".lora_down.weight"], kohya[stem + ".lora_up.weight"] = down, up
        kohya[stem + ".alpha"] = torch.tensor(alpha)
        # peft's names, each module as its model names it (diffusers' save_lora_weights of a peft run)
        diff[f"{comp}.{name}.lora_A.weight"], diff[f"{comp}.{name}.lora_B.weight"] = down, up
    files = [os.path.join(FIX, "lora-tiny-sdxl-kohya.safetensors"), os.path.join(FIX, "lora-tiny-sdxl-diffusers.safetensors")]
    save_file(kohya, files[0], metadata={"format": "pt"})
    meta = {}
    for c in ("unet", "text_encoder", "text_encoder_2"):  # each component's peft LoraConfig
        meta.update({f"{c}.r": rank, f"{c}.lora_alpha": alpha,
                     f"{c}.target_modules": sorted(n for cc, n, _ in mods if cc == c)})
    save_file(diff, files[1], metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    print(f"  LoRA: {len(mods)} modules ({sum(c == 'unet' for c, _, _ in mods)} UNet)")
    return files


def build(unet_cfg=UNET, te1_cfg=TE1, te2_cfg=TE2, vae_cfg=VAE):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    randomize_(unet, SEED + 1, DTYPE)
    vae = AutoencoderKL(**vae_cfg).eval()
    randomize_(vae, SEED + 2, DTYPE)
    te1 = CLIPTextModel(CLIPTextConfig(**te1_cfg)).eval()
    randomize_(te1, SEED + 3, DTYPE)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_cfg)).eval()
    randomize_(te2, SEED + 4, DTYPE)
    return unet, te1, te2, vae


def te2_sd(m):
    """CLIPTextModelWithProjection names as real SDXL folders hold them (text_model.*, text_projection.weight)."""
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
            for k, v in m.state_dict().items()}


def save_folder(folder, unet, te1, te2, vae, sched):
    import diffusers
    os.makedirs(folder, exist_ok=True)
    import copy
    copy.deepcopy(unet).to(DTYPE).save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    copy.deepcopy(vae).to(DTYPE).save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    for sub, m, sdf in (("text_encoder", te1, text_sd), ("text_encoder_2", te2, te2_sd)):
        d = os.path.join(folder, sub)
        m.save_pretrained(d, safe_serialization=True)
        save_file({k: v.to(DTYPE).contiguous() for k, v in sdf(m).items()}, os.path.join(d, "model.safetensors"),
                  metadata={"format": "pt"})
        gen = os.path.join(d, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)
    sched.save_config(os.path.join(folder, "scheduler"))
    mi = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", type(sched).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(mi, f, indent=2, sort_keys=True)
        f.write("\n")


def unet_ldm(k, cfg):
    if k.startswith("add_embedding."):
        p = k.split(".")
        return {"linear_1": "label_emb.0.0", "linear_2": "label_emb.0.2"}[p[1]] + "." + p[2]
    return unet_name_to_ldm(k, cfg)


def to_single(unet, te1, te2, vae):
    sd = {}
    for k, v in unet.state_dict().items():
        sd["model.diffusion_model." + unet_ldm(k, dict(unet.config))] = v
    for k, v in vae.state_dict().items():
        name, lin = vae_name_to_ldm(k, dict(vae.config))
        sd["first_stage_model." + name] = v[:, :, None, None] if lin else v
    for k, v in text_sd(te1).items():
        sd["conditioner.embedders.0.transformer." + k] = v
    t = te2_sd(te2)
    P = "conditioner.embedders.1.model."
    sd[P + "token_embedding.weight"] = t["text_model.embeddings.token_embedding.weight"]
    sd[P + "positional_embedding"] = t["text_model.embeddings.position_embedding.weight"]
    sd[P + "ln_final.weight"] = t["text_model.final_layer_norm.weight"]
    sd[P + "ln_final.bias"] = t["text_model.final_layer_norm.bias"]
    sd[P + "text_projection"] = t["text_projection.weight"].t()  # OpenCLIP: x @ proj
    sd[P + "logit_scale"] = torch.tensor(math.log(100.0))
    for i in range(te2.config.num_hidden_layers):
        s, d = f"text_model.encoder.layers.{i}.", f"{P}transformer.resblocks.{i}."
        for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for w in ("weight", "bias"):
                sd[d + b + "." + w] = t[s + a + "." + w]
        for w in ("weight", "bias"):
            sd[d + "attn.in_proj_" + w] = torch.cat([t[s + f"self_attn.{q}_proj.{w}"] for q in "qkv"], 0)
    return {k: (v.detach().to(DTYPE) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def verify_single(path, unet, te1, te2, vae):
    from diffusers.loaders import single_file_utils as sfu
    ck = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(path).items()}
    ok = _same("unet", unet.state_dict(), sfu.convert_ldm_unet_checkpoint(ck, dict(unet.config)))
    ok &= _same("vae", vae.state_dict(), sfu.convert_ldm_vae_checkpoint(ck, dict(vae.config)))
    ok &= _same("te1", text_sd(te1), sfu.convert_ldm_clip_checkpoint(ck))
    t2 = sfu.convert_open_clip_checkpoint(te2, ck, prefix="conditioner.embedders.1.model.")
    ok &= _same("te2", te2_sd(te2), t2, allow_extra=("logit_scale",))
    return ok


def ids_for(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    bos, eos, pad = cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]
    ids = torch.full((2, 77), pad, dtype=torch.int64)
    for row, n in ((0, 5), (1, 75)):  # a short prompt, and one filling all 77 positions
        ids[row, 0] = bos
        ids[row, 1:1 + n] = torch.randint(1, bos, (n,), generator=g)
        ids[row, 1 + n] = eos
    return ids


def main():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    unet, te1, te2, vae = build()
    for label, m in (("unet", unet), ("te1", te1), ("te2", te2), ("vae", vae)):
        print(f"  {label}: {sum(p.numel() for p in m.parameters()):,} params")
    folder = os.path.join(FIX, NAME)
    save_folder(folder, unet, te1, te2, vae, EulerDiscreteScheduler(**SCHED))
    ok = True
    tok1, tok2 = make_tokenizers(folder)

    r = {}
    g = torch.Generator().manual_seed(SEED + 100)
    with torch.no_grad():
        ids1, ids2 = ids_for(TE1, SEED + 101), ids_for(TE2, SEED + 102)
        o1 = te1(input_ids=ids1, output_hidden_states=True)
        o2 = te2(input_ids=ids2, output_hidden_states=True)
        r["te1.ids"], r["te2.ids"] = ids1.to(torch.int32), ids2.to(torch.int32)
        r["te1.hidden2"], r["te2.hidden2"], r["te2.pooled"] = o1.hidden_states[-2], o2.hidden_states[-2], o2.text_embeds
        x = torch.randn(2, 4, 16, 16, generator=g)
        t = torch.tensor([999.0, 31.0])
        ctx = torch.randn(2, 77, UNET["cross_attention_dim"], generator=g)
        te = torch.randn(2, 32, generator=g)
        tid = torch.tensor([[1024.0, 768.0, 0.0, 16.0, 1024.0, 1024.0], [64.0, 64.0, 8.0, 0.0, 48.0, 64.0]])
        r.update({"unet.x": x, "unet.t": t, "unet.ctx": ctx, "unet.text_embeds": te, "unet.time_ids": tid})
        r["unet.out"] = unet(x, t, encoder_hidden_states=ctx,
                             added_cond_kwargs={"text_embeds": te, "time_ids": tid}).sample
        ctx2 = torch.cat([r["te1.hidden2"], r["te2.hidden2"]], -1)  # row 0: negative, row 1: prompt
        r["pipe.ctx"] = ctx2  # pooled: te2.pooled

    # the inferable model: single file only; its text encoders and UNet on the same inputs
    ui, t1i, t2i, vi = build(UNET_I, TE1_I, TE2_I, VAE_I)
    single_i = os.path.join(FIX, NAME + "-infer.safetensors")
    save_file(to_single(ui, t1i, t2i, vi), single_i, metadata={"format": "pt"})
    ok &= verify_single(single_i, ui, t1i, t2i, vi)
    with torch.no_grad():
        o1 = t1i(input_ids=ids1, output_hidden_states=True)
        o2 = t2i(input_ids=ids2, output_hidden_states=True)
        r["infer.te1.hidden2"], r["infer.te2.hidden2"] = o1.hidden_states[-2], o2.hidden_states[-2]
        r["infer.te2.pooled"] = o2.text_embeds
        ctx_i = torch.randn(2, 77, 128, generator=g)
        te_i = torch.randn(2, 64, generator=g)
        r["infer.unet.ctx"], r["infer.unet.text_embeds"] = ctx_i, te_i
        r["infer.unet.out"] = ui(x, t, encoder_hidden_states=ctx_i,
                                 added_cond_kwargs={"text_embeds": te_i, "time_ids": tid}).sample

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    steps, guidance, seed, W, H = 4, 5.0, 7, 64, 64
    r["pipe.params"] = torch.tensor([steps, guidance, seed, W, H], dtype=torch.float32)
    pos = dict(prompt_embeds=ctx2[1:2], pooled_prompt_embeds=r["te2.pooled"][1:2])
    neg = dict(negative_prompt_embeds=ctx2[0:1], negative_pooled_prompt_embeds=r["te2.pooled"][0:1])
    micro = dict(original_size=(96, 128), crops_coords_top_left=(8, 16), target_size=(64, 80),
                 negative_original_size=(32, 48), negative_crops_coords_top_left=(4, 0),
                 negative_target_size=(64, 64))
    cases = {"zeroneg": dict(pos), "neg": dict(pos, **neg), "micro": dict(pos, **neg, **micro)}
    for name, kw in cases.items():
        common = dict(num_inference_steps=steps, guidance_scale=guidance, width=W, height=H, **kw)
        lat = pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
        img = pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
        r[f"pipe.{name}.latents"] = lat
        r[f"pipe.{name}.image"] = torch.from_numpy(np.round(img * 255).astype(np.uint8))
        print(f"  pipe {name}: latents std {lat.std().item():.3f}, image mean {img.mean():.3f}")
    # img2img and inpainting (the 4-channel UNet's blend) from the same embeddings
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline
    from PIL import Image
    from make_pipeline_fixture import test_image, test_mask
    img, msk = test_image(W, H, SEED + 200), test_mask(W, H)
    r["pipe.init.image_u8"] = torch.from_numpy(img.copy())
    r["pipe.init.mask_u8"] = torch.from_numpy(msk.copy())
    i2i = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    inp = StableDiffusionXLInpaintPipeline.from_pipe(pipe)
    for name, p_, kw in (("img2img", i2i, dict(strength=0.6)),
                         ("inpaint", inp, dict(strength=1.0, mask_image=Image.fromarray(msk, "L"), width=W, height=H)),
                         ("inpaint075", inp, dict(strength=0.75, mask_image=Image.fromarray(msk, "L"), width=W,
                                                  height=H))):
        common = dict(image=Image.fromarray(img), num_inference_steps=8, guidance_scale=guidance, **pos, **neg, **kw)
        lat = p_(generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
        out_img = p_(generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
        r[f"pipe.{name}.latents"] = lat
        r[f"pipe.{name}.image"] = torch.from_numpy(np.round(out_img * 255).astype(np.uint8))
        print(f"  pipe {name}: latents std {lat.std().item():.3f}")

    # from prompts, through both tokenizers (pads EOS / "!")
    prompt, negative = "a photo of a red fox in the snow, high quality!", "blurry, low quality"
    for name, neg in (("text", None), ("textneg", negative)):
        common = dict(prompt=prompt, negative_prompt=neg, num_inference_steps=steps, guidance_scale=guidance, width=W,
                      height=H)
        lat = pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
        img = pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
        r[f"pipe.{name}.latents"] = lat
        r[f"pipe.{name}.image"] = torch.from_numpy(np.round(img * 255).astype(np.uint8))
    pe, npe, ppe, nppe = pipe.encode_prompt(prompt, negative_prompt=negative, device="cpu")
    r["pipe.textneg.ctx"] = torch.cat([npe, pe], 0)
    r["pipe.textneg.pooled"] = torch.cat([nppe, ppe], 0)
    r["pipe.text.ids1"] = tok1(prompt, padding="max_length", max_length=77, truncation=True,
                               return_tensors="pt").input_ids.to(torch.int32)
    r["pipe.text.ids2"] = tok2(prompt, padding="max_length", max_length=77, truncation=True,
                               return_tensors="pt").input_ids.to(torch.int32)
    print("  ids1", r["pipe.text.ids1"][0, :16].tolist())
    print("  ids2", r["pipe.text.ids2"][0, :16].tolist())
    # an SDXL LoRA (both text encoders and the UNet), kohya and diffusers names, at weight 0.7
    lora_files = make_lora(unet, te1, te2)
    imgs = []
    for f in lora_files:
        lp = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        lp.set_progress_bar_config(disable=True)
        lp.load_lora_weights(f)
        lp.fuse_lora(lora_scale=0.7)
        common = dict(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                      width=W, height=H)
        lat = lp(generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
        img = lp(generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
        imgs.append((lat, img))
    assert torch.equal(imgs[0][0], imgs[1][0]), "kohya and diffusers LoRA files differ in diffusers"
    r["pipe.lora.latents"] = imgs[0][0]
    r["pipe.lora.image"] = torch.from_numpy(np.round(imgs[0][1] * 255).astype(np.uint8))
    d = np.abs(imgs[0][1] - r["pipe.textneg.image"].numpy() / 255.0).max()
    print(f"  pipe lora: latents std {imgs[0][0].std().item():.3f}, image differs from no LoRA by {d:.3f}")
    out = {k: (v.contiguous() if v.dtype in (torch.int32, torch.uint8) else v.float().contiguous())
           for k, v in r.items()}
    save_file(out, os.path.join(FIX, f"ref-{NAME}.safetensors"), metadata={"format": "pt"})
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
