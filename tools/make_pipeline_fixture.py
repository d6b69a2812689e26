#!/usr/bin/env python3
"""End-to-end pipeline references: diffusers pipelines on the tiny fixture models.

Writes tests/fixtures/ref-pipeline.safetensors. For each case <c>:
  <c>.ctx        (2, 77, D)   [negative, prompt] embeddings given to the pipeline
                              (prompt_embeds / negative_prompt_embeds: the text
                              encoder and tokenizer are proven separately)
  <c>.image_u8   (H, W, 3) U8 init image (img2img / inpaint), PIL RGB
  <c>.mask_u8    (H, W) U8    mask, white = repaint (inpaint)
  <c>.latents    (B, 4, h, w) final latents (output_type="latent")
  <c>.decoded    (B, 3, H, W) vae.decode(latents / scaling_factor), unclamped
  <c>.params     F32 [steps, cfg, strength, seed, batch, width, height]
and the case's model, sampler and mode in the metadata. Item i of a batch is
the pipeline run alone with generator torch.Generator().manual_seed(seed + i):
sdc's batch semantics (image i equals a single run with seed + i). diffusers'
own batched inpainting with a list of generators differs: it encodes the one
init image with generator[0] only and shares that sample across the batch.
Schedulers are built fresh with SD's betas and steps_offset=1 and no
timestep_spacing, as a user gets from XScheduler.from_config(sd15_config).
Run: python3 tools/make_pipeline_fixture.py   (torch, diffusers, numpy, PIL)
"""
import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                       StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "ref-pipeline.safetensors")
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
             steps_offset=1)
SCHED = {
    "euler": lambda p: EulerDiscreteScheduler(**BETAS, prediction_type=p),
    "euler_a": lambda p: EulerAncestralDiscreteScheduler(**BETAS, prediction_type=p),
    "ddim": lambda p: DDIMScheduler(**BETAS, prediction_type=p, clip_sample=False, set_alpha_to_one=False),
    "dpm++2m": lambda p: DPMSolverMultistepScheduler(**BETAS, prediction_type=p),
    "dpm++2m_sde": lambda p: DPMSolverMultistepScheduler(**BETAS, prediction_type=p,
                                                         algorithm_type="sde-dpmsolver++"),
}

# name, model, mode, sampler, steps, cfg, strength, seed, batch, W, H
CASES = [
    ("t2i_sd1", "tiny-sd1", "txt2img", "euler_a", 6, 7.5, 1.0, 42, 2, 64, 64),
    ("t2i_sd1_nocfg", "tiny-sd1", "txt2img", "euler", 5, 1.0, 1.0, 7, 1, 64, 48),
    ("t2i_sd2", "tiny-sd2", "txt2img", "dpm++2m", 6, 5.0, 1.0, 1234, 1, 64, 64),
    ("i2i_sd1", "tiny-sd1", "img2img", "ddim", 10, 6.0, 0.6, 5, 2, 64, 64),
    ("i2i_sd2", "tiny-sd2", "img2img", "euler_a", 8, 4.0, 0.75, 11, 1, 64, 64),
    ("inp9_sd1", "tiny-sd1-inpaint", "inpaint", "euler", 6, 7.5, 1.0, 3, 2, 64, 64),
    ("inp4_sd1", "tiny-sd1", "inpaint", "dpm++2m_sde", 6, 7.5, 1.0, 21, 1, 64, 64),
    ("inp4_sd1_s075", "tiny-sd1", "inpaint", "euler_a", 8, 7.5, 0.75, 99, 2, 64, 64),
    ("inp9_sd1_s08", "tiny-sd1-inpaint", "inpaint", "ddim", 10, 5.0, 0.8, 8, 1, 64, 64),
]


def load(name):
    d = os.path.join(FIX, name)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(os.path.join(d, "vae"), torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"), torch_dtype=torch.float32)
    with open(os.path.join(d, "scheduler", "scheduler_config.json")) as f:
        pred = json.load(f).get("prediction_type", "epsilon")
    return unet, vae, text, pred


def test_image(w, h, seed):
    """A smooth random RGB picture (so the VAE sees structure, not noise)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand((3, h // 8, w // 8), generator=g)
    big = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    arr = (big.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return arr


def test_mask(w, h):
    m = np.zeros((h, w), np.uint8)
    m[h // 4: h // 4 + h // 2, w // 8: w // 8 + (5 * w) // 8] = 255  # white = repaint
    m[0:8, 0:16] = 200  # > 127.5: repaint after binarising
    m[h - 8:h, w - 16:w] = 100  # < 127.5: keep
    return m


def main():
    torch.set_num_threads(2)
    out, meta = {}, {}
    for (name, model, mode, sampler, steps, cfg, strength, seed, batch, W, H) in CASES:
        unet, vae, text, pred = load(model)
        sched = SCHED[sampler](pred)
        # [negative, prompt] embeddings from the text encoder on fixed ids
        g = torch.Generator().manual_seed(seed + 500)
        vocab = text.config.vocab_size
        ids = torch.randint(1, vocab - 2, (2, 77), generator=g)
        ids[:, 0] = text.config.bos_token_id
        ids[0, 5:] = text.config.eos_token_id
        ids[1, 12:] = text.config.eos_token_id
        with torch.no_grad():
            ctx = text(input_ids=ids).last_hidden_state
        common = dict(vae=vae, text_encoder=text, tokenizer=None, unet=unet, scheduler=sched, safety_checker=None,
                      feature_extractor=None, requires_safety_checker=False)
        img, msk = test_image(W, H, seed + 1000), test_mask(W, H)
        lats = []
        for i in range(batch):
            kw = dict(prompt_embeds=ctx[1:2], negative_prompt_embeds=ctx[0:1], num_inference_steps=steps,
                      guidance_scale=cfg, generator=torch.Generator().manual_seed(seed + i), output_type="latent")
            if mode == "txt2img":
                res = StableDiffusionPipeline(**common)(height=H, width=W, **kw)
            elif mode == "img2img":
                res = StableDiffusionImg2ImgPipeline(**common)(image=Image.fromarray(img), strength=strength, **kw)
            else:
                res = StableDiffusionInpaintPipeline(**common)(
                    image=Image.fromarray(img), mask_image=Image.fromarray(msk, "L"), strength=strength,
                    height=H, width=W, **kw)
            lats.append(res.images)
        if mode != "txt2img":
            out[f"{name}.image_u8"] = torch.from_numpy(img.copy())
        if mode == "inpaint":
            out[f"{name}.mask_u8"] = torch.from_numpy(msk.copy())
        lat = torch.cat(lats)
        with torch.no_grad():
            dec = vae.decode(lat / vae.config.scaling_factor).sample
        out[f"{name}.ctx"] = ctx.contiguous()
        out[f"{name}.latents"] = lat.contiguous()
        out[f"{name}.decoded"] = dec.contiguous()
        out[f"{name}.params"] = torch.tensor([steps, cfg, strength, seed, batch, W, H], dtype=torch.float32)
        meta[name] = f"{model}|{mode}|{sampler}"
        print(f"{name}: {model} {mode} {sampler} steps {steps} cfg {cfg} strength {strength} -> "
              f"latent std {lat.std():.3f}")
    meta["cases"] = ",".join(c[0] for c in CASES)
    meta["diffusers"] = diffusers.__version__
    save_file(out, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
