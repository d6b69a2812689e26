#!/usr/bin/env python3
"""check_synth_model.py --sdc BUILD/sdc --model FOLDER: a diffusers folder of
the synth model's architecture (data/models/sdc-synth-configs: a 3-level VAE,
latents 4x smaller than the image, the 670-token tokenizer) draws the same
images in sdc and in diffusers' StableDiffusionPipeline.from_pretrained(FOLDER).

Cases: the default size (no -W/-H: the UNet's sample_size x the VAE's scale
factor, 64 px for the synth configs, as diffusers' height=None), 64x48, and
image-to-image; Euler and DPM++ 2M Karras, cfg 7. Exit 0 when every image is
within 1/255; 77 (CTest's skip) without torch / diffusers; 1 otherwise. Used
by the CTest test synth_model_vs_diffusers (tests/storage_checks.sh).
"""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    from diffusers import (DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline,
                           StableDiffusionPipeline)
    from PIL import Image
except ImportError as e:
    print(f"SKIPPED: {e}")
    sys.exit(77)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "a large red star on a blue striped background, on the left"
SAMPLERS = {"euler": (EulerDiscreteScheduler, {}),
            "dpm++2m_karras": (DPMSolverMultistepScheduler,
                               {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True})}
STEPS, CFG, SEED = 5, 7.0, 7


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdc", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp()
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"  {what}  {'OK' if ok else 'NOT OK'}")

    pipe = StableDiffusionPipeline.from_pretrained(a.model)
    pipe.set_progress_bar_config(disable=True)
    check(pipe.vae_scale_factor == 4, f"diffusers' vae_scale_factor is {pipe.vae_scale_factor}")
    base = pipe.scheduler.config
    init = None
    for name, (cls, opts) in SAMPLERS.items():
        pipe.scheduler = cls.from_config(base, **opts)
        for size in (None, (48, 64)):  # (height, width)
            args = ["-W", str(size[1]), "-H", str(size[0])] if size else []
            out = os.path.join(work, f"{name}-{size}.png")
            subprocess.run([a.sdc, "generate", "-q", "-m", a.model, "-p", PROMPT, "--sampler", name, "--steps",
                            str(STEPS), "--cfg-scale", str(CFG), "-s", str(SEED), "-t", "1", "-o", out] + args,
                           check=True)
            mine = np.asarray(Image.open(out).convert("RGB")).astype(np.int16)
            h, w = size or (None, None)
            ref = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=CFG, height=h, width=w,
                       generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
            ref = (ref * 255).round().astype(np.int16)
            d = int(np.abs(mine - ref).max()) if mine.shape == ref.shape else 999
            check(d <= 1, f"{name:16s} {'default' if not size else '%dx%d' % (w, h)}: sdc {mine.shape[1]}x"
                  f"{mine.shape[0]} vs diffusers {ref.shape[1]}x{ref.shape[0]}, max |diff| {d}/255")
            if init is None:
                init = out
    # image to image from the first image
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.scheduler = EulerDiscreteScheduler.from_config(base)
    out = os.path.join(work, "i2i.png")
    subprocess.run([a.sdc, "generate", "-q", "-m", a.model, "-p", PROMPT, "-i", init, "--strength", "0.6",
                    "--steps", str(STEPS), "--cfg-scale", str(CFG), "-s", str(SEED), "-t", "1", "-o", out],
                   check=True)
    mine = np.asarray(Image.open(out).convert("RGB")).astype(np.int16)
    ref = i2i(PROMPT, image=Image.open(init).convert("RGB"), strength=0.6, num_inference_steps=STEPS,
              guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
    ref = (ref * 255).round().astype(np.int16)
    d = int(np.abs(mine - ref).max()) if mine.shape == ref.shape else 999
    check(d <= 1, f"img2img euler strength 0.6: max |diff| {d}/255")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
