#!/usr/bin/env python3
"""make_vae_folder_fixture.py: separate VAE folders given with `--vae`, and
diffusers' images with them (pipeline(..., vae=AutoencoderKL.from_pretrained(folder))).

Writes
  tests/fixtures/tiny-sdxl-vae-fp16fix/  an AutoencoderKL folder shaped as tiny-sdxl's
        VAE with its own random weights and the config of madebyollin's
        sdxl-vae-fp16-fix (scaling_factor 0.13025, force_upcast false)
  tests/fixtures/tiny-sd1-vae-sf/        the same for tiny-sd1's VAE with a
        scaling factor that is not the model's (0.3 instead of 0.18215): the
        folder's config decides, as in diffusers
  tests/fixtures/ref-vae-folders.safetensors
    params F32 [steps, guidance, seed, width, height, strength, img2img steps]
    init.image_u8 (64, 64, 3): make_pipeline_fixture's image
    xl.ctx (2, 77, 64) [negative, prompt], xl.pooled (2, 32): given embeddings
    xl.txt2img.{latents, image}, xl.img2img.{latents, image}:
        StableDiffusionXLPipeline.from_pretrained(tiny-sdxl, vae=the fp16-fix folder),
        Euler (the folder's), 4 steps, guidance 5, seed 7; img2img: the Img2Img
        pipeline from_pipe, strength 0.6, 8 steps
    sd1.ctx (2, 77, 32), sd1.txt2img.{latents, image}, sd1.img2img.{latents, image}:
        StableDiffusionPipeline.from_pretrained(tiny-sd1, vae=tiny-sd1-vae-sf),
        EulerDiscreteScheduler.from_config(its scheduler), the same settings

Run: python3 tools/make_vae_folder_fixture.py   (torch, diffusers)
"""
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sdxl_fixture as mx  # noqa: E402
from make_fixtures import FIX, randomize_  # noqa: E402
from make_pipeline_fixture import test_image  # noqa: E402

SEED = 3700


def make_vae(src_folder, out, seed, **cfg):
    from diffusers import AutoencoderKL
    config = dict(AutoencoderKL.load_config(os.path.join(src_folder, "vae")))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(cfg)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config).eval()
    randomize_(vae, seed + 1, torch.float16)
    shutil.rmtree(out, ignore_errors=True)
    vae.to(torch.float16).save_pretrained(out, safe_serialization=True)
    return AutoencoderKL.from_pretrained(out, torch_dtype=torch.float32)


def run(pipe, i2i, r, pre, embeds, img, steps, guidance, seed, W, H):
    from PIL import Image
    for name, p, kw in (("txt2img", pipe, dict(num_inference_steps=steps, width=W, height=H)),
                        ("img2img", i2i, dict(num_inference_steps=8, strength=0.6, image=Image.fromarray(img)))):
        common = dict(guidance_scale=guidance, **embeds, **kw)
        lat = p(generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
        out = p(generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
        r[f"{pre}.{name}.latents"] = lat.float()
        r[f"{pre}.{name}.image"] = torch.from_numpy(np.round(out * 255).astype(np.uint8))
        print(f"  {pre} {name}: image mean {out.mean():.3f}")


def main():
    from diffusers import (EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline,
                           StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline)
    steps, guidance, seed, W, H = 4, 5.0, 7, 64, 64
    img = test_image(W, H, SEED + 50)
    r = {"params": torch.tensor([steps, guidance, seed, W, H, 0.6, 8], dtype=torch.float32),
         "init.image_u8": torch.from_numpy(img.copy())}
    g = torch.Generator().manual_seed(SEED + 100)

    # SDXL with an fp16-fix-style VAE folder
    xl = os.path.join(FIX, mx.NAME)
    vae = make_vae(xl, os.path.join(FIX, "tiny-sdxl-vae-fp16fix"), SEED, scaling_factor=0.13025, force_upcast=False)
    pipe = StableDiffusionXLPipeline.from_pretrained(xl, vae=vae, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    i2i = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    ctx = (torch.randn(2, 77, 64, generator=g) * 0.5).half().float()
    pooled = (torch.randn(2, 32, generator=g) * 0.5).half().float()
    r["xl.ctx"], r["xl.pooled"] = ctx, pooled
    run(pipe, i2i, r, "xl", dict(prompt_embeds=ctx[1:2], negative_prompt_embeds=ctx[0:1],
                                 pooled_prompt_embeds=pooled[1:2], negative_pooled_prompt_embeds=pooled[0:1]),
        img, steps, guidance, seed, W, H)

    # SD 1.x with a VAE folder whose scaling factor is not the model's
    sd1 = os.path.join(FIX, "tiny-sd1")
    vae = make_vae(sd1, os.path.join(FIX, "tiny-sd1-vae-sf"), SEED + 10, scaling_factor=0.3)
    pipe = StableDiffusionPipeline.from_pretrained(sd1, vae=vae, torch_dtype=torch.float32, safety_checker=None,
                                                   tokenizer=None, feature_extractor=None, image_encoder=None,
                                                   requires_safety_checker=False)  # embeddings are given
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    ctx = (torch.randn(2, 77, 32, generator=g) * 0.5).half().float()
    r["sd1.ctx"] = ctx
    run(pipe, i2i, r, "sd1", dict(prompt_embeds=ctx[1:2], negative_prompt_embeds=ctx[0:1]), img, steps, guidance,
        seed, W, H)
    save_file({k: v.contiguous() for k, v in r.items()}, os.path.join(FIX, "ref-vae-folders.safetensors"),
              metadata={"format": "pt"})
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
