#!/usr/bin/env python3
"""make_sdxl_inpaint_fixture.py: a tiny random SDXL inpainting model (a UNet of
9 input channels: latents, mask, masked-image latents) and diffusers'
StableDiffusionXLInpaintPipeline images on it.

The model is tiny-sdxl's (tools/make_sdxl_fixture.py, run first) with its own
random UNet of in_channels 9, smaller than tiny-sdxl's (two levels, one
layer per block, transformer depths 1 and 2, the same context and added
embedding); its text encoders, tokenizers and VAE are tiny-sdxl's, as
symlinks (the folder holds only unet/, scheduler/ and model_index.json).

Writes
  tests/fixtures/tiny-sdxl-inpaint/    diffusers folder (StableDiffusionXLInpaintPipeline,
                                       force_zeros_for_empty_prompt, Euler "leading")
  tests/fixtures/ref-tiny-sdxl-inpaint.safetensors
    init.image_u8 (64, 64, 3), init.mask_u8 (64, 64): make_pipeline_fixture's image and mask
    params F32 [steps, guidance, seed, width, height]
    <case>.latents (1, 4, 8, 8), <case>.image (64, 64, 3) U8:
        StableDiffusionXLInpaintPipeline.from_pretrained(folder), the prompt
        "a photo of a red fox in the snow, high quality!" through both
        tokenizers, 8 steps of the folder's Euler, guidance 5, generator seed 7:
        full:   strength 1.0, negative prompt "blurry, low quality"
        s075:   strength 0.75, the same negative prompt
        zeroneg: strength 1.0, no negative prompt (force_zeros_for_empty_prompt: zeros)

Run: python3 tools/make_sdxl_inpaint_fixture.py   (torch, diffusers, transformers)
"""
import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sdxl_fixture as mx  # noqa: E402
from make_fixtures import FIX, randomize_  # noqa: E402
from make_pipeline_fixture import test_image, test_mask  # noqa: E402

NAME = "tiny-sdxl-inpaint"
SEED = 3600
UNET9 = dict(mx.UNET, in_channels=9, block_out_channels=[16, 32], layers_per_block=1,
             down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
             up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[2, 2],
             transformer_layers_per_block=[1, 2])
SHARED = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")  # symlinks to ../tiny-sdxl/


def main():
    import diffusers
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from PIL import Image
    folder = os.path.join(FIX, NAME)
    if not os.path.isdir(os.path.join(FIX, mx.NAME)):
        sys.exit(f"{os.path.join(FIX, mx.NAME)} is missing: run tools/make_sdxl_fixture.py first")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET9).eval()
    randomize_(unet, SEED + 1, mx.DTYPE)
    print(f"  unet: {sum(p.numel() for p in unet.parameters()):,} params, in_channels 9")
    unet.to(mx.DTYPE).save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    unet.float()
    EulerDiscreteScheduler(**mx.SCHED).save_config(os.path.join(folder, "scheduler"))
    for sub in SHARED:
        os.symlink(os.path.join("..", mx.NAME, sub), os.path.join(folder, sub))
    mi = {
        "_class_name": "StableDiffusionXLInpaintPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "requires_aesthetics_score": False,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
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

    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9
    steps, guidance, seed, W, H = 8, 5.0, 7, 64, 64
    img, msk = test_image(W, H, mx.SEED + 200), test_mask(W, H)
    r = {"init.image_u8": torch.from_numpy(img.copy()), "init.mask_u8": torch.from_numpy(msk.copy()),
         "params": torch.tensor([steps, guidance, seed, W, H], dtype=torch.float32)}
    prompt, negative = "a photo of a red fox in the snow, high quality!", "blurry, low quality"
    for name, strength, neg in (("full", 1.0, negative), ("s075", 0.75, negative), ("zeroneg", 1.0, None)):
        common = dict(prompt=prompt, negative_prompt=neg, image=Image.fromarray(img),
                      mask_image=Image.fromarray(msk, "L"), strength=strength, num_inference_steps=steps,
                      guidance_scale=guidance, width=W, height=H)
        lat = pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **common).images
        out = pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **common).images[0]
        r[f"{name}.latents"] = lat.float()
        r[f"{name}.image"] = torch.from_numpy(np.round(out * 255).astype(np.uint8))
        print(f"  {name}: strength {strength}, latents std {lat.std().item():.3f}, image mean {out.mean():.3f}")
    out = {k: v.contiguous() for k, v in r.items()}
    save_file(out, os.path.join(FIX, f"ref-{NAME}.safetensors"), metadata={"format": "pt"})
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
