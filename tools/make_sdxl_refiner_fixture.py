#!/usr/bin/env python3
"""make_sdxl_refiner_fixture.py: a tiny random SDXL refiner and its references.

The refiner keeps SDXL-refiner's structure with small widths: four UNet
levels (no attention at the first and the last, transformer depth per level,
the mid block taking the last level's), linear projections, cross-attention
on the second text encoder's hidden states alone, and the "text_time" added
embedding over the pooled embedding and five ids (original size, crop
top-left, aesthetic score). Its only text encoder is a CLIPTextModelWithProjection
with tiny-sdxl's text_encoder_2 config (own weights) and tiny-sdxl's
tokenizer_2, so tiny-sdxl (base) and this refiner run together as diffusers'
ensemble of experts. Needs tests/fixtures/tiny-sdxl (tools/make_sdxl_fixture.py).

Writes
  tests/fixtures/tiny-sdxl-refiner/    diffusers folder (StableDiffusionXLImg2ImgPipeline,
                                       text_encoder / tokenizer null, requires_aesthetics_score,
                                       force_zeros_for_empty_prompt false, Euler "leading")
  tests/fixtures/tiny-sdxl-refiner-infer.safetensors  a second refiner in the original single-file
                                       layout (conditioner.embedders.0.model.*, label_emb; checked
                                       against diffusers' converters) whose architecture is inferred
                                       from the file (head dim 64, 32 groups, 256-wide time ids, the
                                       mid block's depth; the refs' infer.* tensors)
  tests/fixtures/images/sdxl-refiner-init.png  the init image (pipe.init.image_u8)
  tests/fixtures/ref-tiny-sdxl-refiner.safetensors
    te2.ids (2, 77) I32, te2.hidden2 (2, 77, 32), te2.pooled (2, 32): the refiner's encoder
    unet.x (2, 4, 8, 8), unet.t (2), unet.ctx (2, 77, 32), unet.text_embeds (2, 32),
        unet.time_ids (2, 5), unet.out: the refiner's UNet with added_cond_kwargs
    infer.te2.hidden2, infer.te2.pooled, infer.unet.{ctx (2, 77, 64), text_embeds (2, 64), out}:
        tiny-sdxl-refiner-infer on te2.ids, unet.x, unet.t, unet.time_ids
    pipe.params F32 [steps, guidance, seed, width, height, strength, refiner_start]
    pipe.init.image_u8 (64, 64, 3), pipe.init.mask_u8 (64, 64)
    refiner alone (StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner folder), prompt
    "a photo of a red fox in the snow, high quality!", 8 steps, guidance 5, seed 7):
      r.img2img.{latents (1, 4, 8, 8), image (64, 64, 3) U8}: strength 0.6, no negative prompt
          (force_zeros_for_empty_prompt false: "" encoded), aesthetic scores 6.0 / 2.5
      r.micro.*: strength 0.6, negative "blurry, low quality", aesthetic_score 7.5,
          negative_aesthetic_score 1.5, original_size (96, 128), crops (8, 16),
          negative_original_size (32, 48), negative_crops (4, 0)
      r.inpaint.*: StableDiffusionXLInpaintPipeline.from_pipe, strength 0.75, the mask
      r.ctx (2, 77, 32), r.pooled (2, 32): encode_prompt's [negative, prompt] for r.img2img
    b.micro.*: tiny-sdxl's StableDiffusionXLImg2ImgPipeline (base, strength 0.6, negative
        "blurry, low quality", the r.micro sizes and crops, negative_target_size (64, 64)):
        img2img's negative time ids take the positive crop (unlike txt2img)
    ensemble of experts (base StableDiffusionXLPipeline(denoising_end=0.8, output_type="latent")
    then the refiner (image=those latents, denoising_start=0.8), both from the prompt with no
    negative, 10 steps, guidance 5, each with generator manual_seed(7)):
      ens.<s>.{base_latents, latents, image} for s in euler (the folders' scheduler),
          euler_a, ddim, dpmpp2m, heun (XScheduler.from_config of each folder's config)
      ens.i2i.*: the base as StableDiffusionXLImg2ImgPipeline (the init image, strength 0.6,
          denoising_end 0.8), then the refiner (Euler)

Run: python3 tools/make_sdxl_refiner_fixture.py   (torch, diffusers, transformers)
"""
import copy
import json
import math
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FIX, _same, randomize_, vae_name_to_ldm  # noqa: E402
from make_sdxl_fixture import SCHED, TE2, VAE, VAE_I, te2_sd, unet_ldm  # noqa: E402

NAME = "tiny-sdxl-refiner"
SEED = 3700
DTYPE = torch.float16  # values exactly representable in f16; stored as f16

UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[16, 32, 32, 16],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[2, 2, 4, 2], transformer_layers_per_block=[1, 1, 2, 3],
    cross_attention_dim=TE2["hidden_size"], use_linear_projection=True, norm_num_groups=8,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=5 * 8 + TE2["projection_dim"], flip_sin_to_cos=True, freq_shift=0,
)
# The inferable refiner: SDXL-refiner's constants (head dim 64, 32 groups,
# 256-wide time ids, one CLIP head per 64 channels); three levels (the
# widths that head dim 64 allows, small), the last without attention and
# the mid block two layers deep (the real refiner's mid block has 4 layers
# and its last level no attention: the file alone tells the mid's depth).
TE2_I = dict(TE2, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
             projection_dim=64, eos_token_id=2)
UNET_I = dict(UNET, block_out_channels=[32, 64, 32], layers_per_block=1, attention_head_dim=[1, 1, 1],
              down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              transformer_layers_per_block=[1, 1, 2], cross_attention_dim=64, norm_num_groups=32,
              addition_time_embed_dim=256, projection_class_embeddings_input_dim=5 * 256 + 64, sample_size=128)


def build(unet_cfg=UNET, te2_cfg=TE2, vae_cfg=VAE, seed=SEED):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    randomize_(unet, seed + 1, DTYPE)
    vae = AutoencoderKL(**vae_cfg).eval()
    randomize_(vae, seed + 2, DTYPE)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_cfg)).eval()
    randomize_(te2, seed + 4, DTYPE)
    return unet, te2, vae


def save_folder(folder, unet, te2, vae, sched):
    import diffusers
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    copy.deepcopy(unet).to(DTYPE).save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    copy.deepcopy(vae).to(DTYPE).save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    d = os.path.join(folder, "text_encoder_2")
    te2.save_pretrained(d, safe_serialization=True)
    save_file({k: v.to(DTYPE).contiguous() for k, v in te2_sd(te2).items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    gen = os.path.join(d, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    shutil.copytree(os.path.join(FIX, "tiny-sdxl", "tokenizer_2"), os.path.join(folder, "tokenizer_2"))
    sched.save_config(os.path.join(folder, "scheduler"))
    mi = {  # as stabilityai/stable-diffusion-xl-refiner-1.0's
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": False,
        "image_encoder": [None, None],
        "requires_aesthetics_score": True,
        "scheduler": ["diffusers", type(sched).__name__],
        "text_encoder": [None, None],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": [None, None],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(mi, f, indent=2, sort_keys=True)
        f.write("\n")


P_REF = "conditioner.embedders.0.model."  # the refiner's one embedder: OpenCLIP ViT-bigG


def to_single(unet, te2, vae):
    sd = {}
    for k, v in unet.state_dict().items():
        sd["model.diffusion_model." + unet_ldm(k, dict(unet.config))] = v
    for k, v in vae.state_dict().items():
        name, lin = vae_name_to_ldm(k, dict(vae.config))
        sd["first_stage_model." + name] = v[:, :, None, None] if lin else v
    t = te2_sd(te2)
    P = P_REF
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


def verify_single(path, unet, te2, vae):
    """diffusers' own single-file converters give back the model (the refiner's embedder prefix)."""
    from diffusers.loaders import single_file_utils as sfu
    ck = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(path).items()}
    assert sfu.is_open_clip_sdxl_refiner_model(ck)
    ok = _same("unet", unet.state_dict(), sfu.convert_ldm_unet_checkpoint(ck, dict(unet.config)))
    ok &= _same("vae", vae.state_dict(), sfu.convert_ldm_vae_checkpoint(ck, dict(vae.config)))
    t2 = sfu.convert_open_clip_checkpoint(te2, ck, prefix=P_REF)
    ok &= _same("te2", te2_sd(te2), t2, allow_extra=("logit_scale",))
    return ok


def ids_for(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    bos, eos, pad = cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]
    ids = torch.full((2, 77), pad, dtype=torch.int64)
    for row, n in ((0, 7), (1, 75)):
        ids[row, 0] = bos
        ids[row, 1:1 + n] = torch.randint(1, bos, (n,), generator=g)
        ids[row, 1 + n] = eos
    return ids


def u8(img):
    return torch.from_numpy(np.round(img * 255).astype(np.uint8))


def main():
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, HeunDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline)
    from PIL import Image
    from make_pipeline_fixture import test_image, test_mask
    torch.set_num_threads(2)
    base_dir = os.path.join(FIX, "tiny-sdxl")
    assert os.path.isdir(base_dir), "run tools/make_sdxl_fixture.py first"
    unet, te2, vae = build()
    for label, m in (("unet", unet), ("te2", te2), ("vae", vae)):
        print(f"  {label}: {sum(p.numel() for p in m.parameters()):,} params")
    folder = os.path.join(FIX, NAME)
    save_folder(folder, unet, te2, vae, EulerDiscreteScheduler(**SCHED))
    ok = True

    r = {}
    g = torch.Generator().manual_seed(SEED + 100)
    with torch.no_grad():
        ids = ids_for(TE2, SEED + 101)
        o = te2(input_ids=ids, output_hidden_states=True)
        r["te2.ids"], r["te2.hidden2"], r["te2.pooled"] = ids.to(torch.int32), o.hidden_states[-2], o.text_embeds
        x = torch.randn(2, 4, 8, 8, generator=g)
        t = torch.tensor([999.0, 31.0])
        ctx = torch.randn(2, 77, UNET["cross_attention_dim"], generator=g)
        te = torch.randn(2, TE2["projection_dim"], generator=g)
        tid = torch.tensor([[1024.0, 768.0, 0.0, 16.0, 6.0], [64.0, 64.0, 8.0, 0.0, 2.5]])
        r.update({"unet.x": x, "unet.t": t, "unet.ctx": ctx, "unet.text_embeds": te, "unet.time_ids": tid})
        r["unet.out"] = unet(x, t, encoder_hidden_states=ctx,
                             added_cond_kwargs={"text_embeds": te, "time_ids": tid}).sample

    # the inferable refiner: single file only
    ui, t2i, vi = build(UNET_I, TE2_I, VAE_I, SEED + 50)
    single_i = os.path.join(FIX, NAME + "-infer.safetensors")
    save_file(to_single(ui, t2i, vi), single_i, metadata={"format": "pt"})
    ok &= verify_single(single_i, ui, t2i, vi)
    with torch.no_grad():
        o = t2i(input_ids=ids, output_hidden_states=True)
        r["infer.te2.hidden2"], r["infer.te2.pooled"] = o.hidden_states[-2], o.text_embeds
        ctx_i = torch.randn(2, 77, 64, generator=g)
        te_i = torch.randn(2, 64, generator=g)
        tid_i = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 6.0], [512.0, 768.0, 32.0, 0.0, 2.5]])
        r["infer.unet.ctx"], r["infer.unet.text_embeds"], r["infer.unet.time_ids"] = ctx_i, te_i, tid_i
        r["infer.unet.out"] = ui(x, t, encoder_hidden_states=ctx_i,
                                 added_cond_kwargs={"text_embeds": te_i, "time_ids": tid_i}).sample

    steps, guidance, seed, W, H, strength, start = 8, 5.0, 7, 64, 64, 0.6, 0.8
    r["pipe.params"] = torch.tensor([steps, guidance, seed, W, H, strength, start], dtype=torch.float32)
    img, msk = test_image(W, H, SEED + 200), test_mask(W, H)
    os.makedirs(os.path.join(FIX, "images"), exist_ok=True)
    Image.fromarray(img).save(os.path.join(FIX, "images", "sdxl-refiner-init.png"))
    Image.fromarray(msk, "L").save(os.path.join(FIX, "images", "sdxl-refiner-mask.png"))
    r["pipe.init.image_u8"] = torch.from_numpy(img.copy())
    r["pipe.init.mask_u8"] = torch.from_numpy(msk.copy())
    prompt, negative = "a photo of a red fox in the snow, high quality!", "blurry, low quality"
    micro = dict(original_size=(96, 128), crops_coords_top_left=(8, 16), negative_original_size=(32, 48),
                 negative_crops_coords_top_left=(4, 0))

    ref = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    assert ref.text_encoder is None and ref.config.requires_aesthetics_score
    inp = StableDiffusionXLInpaintPipeline.from_pipe(ref)
    cases = (("r.img2img", ref, dict(strength=strength)),
             ("r.micro", ref, dict(strength=strength, negative_prompt=negative, aesthetic_score=7.5,
                                   negative_aesthetic_score=1.5, **micro)),
             ("r.inpaint", inp, dict(strength=0.75, mask_image=Image.fromarray(msk, "L"), width=W, height=H)))
    for name, p_, kw in cases:
        common = dict(prompt=prompt, image=Image.fromarray(img), num_inference_steps=steps, guidance_scale=guidance,
                      **kw)
        lat = p_(generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
        out = p_(generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
        r[f"{name}.latents"], r[f"{name}.image"] = lat, u8(out)
        print(f"  {name}: latents std {lat.std().item():.3f}, image mean {out.mean():.3f}")
    pe, npe, ppe, nppe = ref.encode_prompt(prompt, device="cpu")
    r["r.ctx"], r["r.pooled"] = torch.cat([npe, pe], 0), torch.cat([nppe, ppe], 0)

    base = StableDiffusionXLPipeline.from_pretrained(base_dir, torch_dtype=torch.float32)
    base.set_progress_bar_config(disable=True)
    bi2i = StableDiffusionXLImg2ImgPipeline.from_pipe(base)
    common = dict(prompt=prompt, negative_prompt=negative, image=Image.fromarray(img), num_inference_steps=steps,
                  guidance_scale=guidance, strength=strength, negative_target_size=(64, 64), **micro)
    lat = bi2i(generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
    out = bi2i(generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
    r["b.micro.latents"], r["b.micro.image"] = lat, u8(out)

    # the ensemble of experts, per scheduler
    ens_steps = 10
    scheds = {"euler": None, "euler_a": EulerAncestralDiscreteScheduler, "ddim": DDIMScheduler,
              "dpmpp2m": DPMSolverMultistepScheduler, "heun": HeunDiscreteScheduler}
    b_sched, r_sched = base.scheduler, ref.scheduler
    for sname, cls in scheds.items():
        base.scheduler = cls.from_config(b_sched.config) if cls else b_sched
        ref.scheduler = cls.from_config(r_sched.config) if cls else r_sched
        res = []
        for ot in ("latent", "np"):
            bl = base(prompt=prompt, num_inference_steps=ens_steps, guidance_scale=guidance, width=W, height=H,
                      denoising_end=start, output_type="latent",
                      generator=torch.Generator().manual_seed(seed)).images
            res.append(bl)
            res.append(ref(prompt=prompt, image=bl, num_inference_steps=ens_steps, guidance_scale=guidance,
                           denoising_start=start, output_type=ot,
                           generator=torch.Generator().manual_seed(seed)).images)
        assert torch.equal(res[0], res[2])
        r[f"ens.{sname}.base_latents"], r[f"ens.{sname}.latents"] = res[0], res[1]
        r[f"ens.{sname}.image"] = u8(res[3][0])
        print(f"  ens {sname}: base std {res[0].std().item():.3f}, latents std {res[1].std().item():.3f}")
    base.scheduler, ref.scheduler = b_sched, r_sched
    # the base as img2img (strength 0.6) with denoising_end, then the refiner
    res = []
    for ot in ("latent", "np"):
        bl = bi2i(prompt=prompt, image=Image.fromarray(img), strength=strength, num_inference_steps=ens_steps,
                  guidance_scale=guidance, denoising_end=start, output_type="latent",
                  generator=torch.Generator().manual_seed(seed)).images
        res.append(bl)
        res.append(ref(prompt=prompt, image=bl, num_inference_steps=ens_steps, guidance_scale=guidance,
                       denoising_start=start, output_type=ot, generator=torch.Generator().manual_seed(seed)).images)
    assert torch.equal(res[0], res[2])
    r["ens.i2i.base_latents"], r["ens.i2i.latents"], r["ens.i2i.image"] = res[0], res[1], u8(res[3][0])
    print(f"  ens i2i: base std {res[0].std().item():.3f}, latents std {res[1].std().item():.3f}")

    # inpainting: the base to the cut (the 4-channel blend of tiny-sdxl; the 9-channel tiny-sdxl-inpaint), then
    # the refiner inpaints on from its latents (StableDiffusionXLInpaintPipeline given them as its image: they
    # are also what it keeps outside the mask, re-noised with one draw of noise), both at strength 0.75
    mask_pil = Image.fromarray(msk, "L")
    inp_sched = inp.scheduler
    bases = {"": StableDiffusionXLInpaintPipeline.from_pipe(base)}
    base9_dir = os.path.join(FIX, "tiny-sdxl-inpaint")
    if os.path.isdir(base9_dir):
        b9 = StableDiffusionXLInpaintPipeline.from_pretrained(base9_dir, torch_dtype=torch.float32)
        b9.set_progress_bar_config(disable=True)
        bases["9"] = b9
    for tag, binp in bases.items():
        b_sched9 = binp.scheduler
        for sname, cls in (("euler", None), ("euler_a", EulerAncestralDiscreteScheduler)):
            if tag and cls:
                continue
            binp.scheduler = cls.from_config(b_sched9.config) if cls else b_sched9
            inp.scheduler = cls.from_config(inp_sched.config) if cls else inp_sched
            res = []
            for ot in ("latent", "np"):
                bl = binp(prompt=prompt, image=Image.fromarray(img), mask_image=mask_pil, strength=0.75,
                          num_inference_steps=ens_steps, guidance_scale=guidance, width=W, height=H,
                          denoising_end=start, output_type="latent",
                          generator=torch.Generator().manual_seed(seed)).images
                res.append(bl)
                res.append(inp(prompt=prompt, image=bl, mask_image=mask_pil, num_inference_steps=ens_steps,
                               guidance_scale=guidance, width=W, height=H, denoising_start=start, output_type=ot,
                               generator=torch.Generator().manual_seed(seed)).images)
            assert torch.equal(res[0], res[2])
            key = f"ens.inpaint{tag}.{sname}"
            r[f"{key}.base_latents"], r[f"{key}.latents"], r[f"{key}.image"] = res[0], res[1], u8(res[3][0])
            print(f"  {key}: base std {res[0].std().item():.3f}, latents std {res[1].std().item():.3f}")
        binp.scheduler = b_sched9
    inp.scheduler = inp_sched

    out = {k: (v.contiguous() if v.dtype in (torch.int32, torch.uint8) else v.float().contiguous())
           for k, v in r.items()}
    save_file(out, os.path.join(FIX, f"ref-{NAME}.safetensors"), metadata={"format": "pt"})
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
