#!/usr/bin/env python3
"""check_dreambooth_xl.py --sdc BUILD/sdc [--out DIR]: the LoRA that
`sdc train dreambooth` writes for SDXL loads in diffusers and draws sdc's image.

On the tiny SDXL folder (tests/fixtures/tiny-sdxl): a 4-step DreamBooth LoRA
(rank 4, lr 1e-2 so that it shows, 64 px, two photos of their own sizes),
written in the diffusers format and in kohya's; then for each file the image
of `sdc generate --lora FILE` (Euler, 4 steps, cfg 5, seed 7, no negative
prompt) against StableDiffusionXLPipeline.from_pretrained(folder) +
load_lora_weights(FILE) with the same settings (negative_prompt=None,
generator seed 7): max pixel difference in /255, tolerance 1/255. The image
with the LoRA must differ from the one without (both sides). Exit 0 when
every case holds; 77 (CTest's skip) without torch / diffusers; 1 otherwise.
Used by the CTest test dreambooth_xl_diffusers.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image
except ImportError as e:  # the C build and its tests never need Python's ML stack
    print(f"SKIPPED: {e} (tools/setup.sh --python installs torch and diffusers)")
    sys.exit(77)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sdxl")
IMAGES = os.path.join(ROOT, "tests", "fixtures", "images")
PROMPT = "a photo of sks dog"
STEPS, CFG, SEED, SIZE = 4, 5.0, 7, 64
failed = 0


def check(ok, msg):
    global failed
    print(("  OK      " if ok else "  NOT OK  ") + msg, flush=True)
    failed += not ok
    return ok


def sdc_image(sdc, out, lora=None):
    subprocess.run([sdc, "generate", "-q", "-m", MODEL, "-p", PROMPT, "--sampler", "euler", "--steps", str(STEPS),
                    "--cfg-scale", str(CFG), "-s", str(SEED), "-W", str(SIZE), "-H", str(SIZE), "-t", "2", "-o", out]
                   + (["--lora", lora] if lora else []), check=True)
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int16)


def diffusers_image(lora=None):
    pipe = StableDiffusionXLPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(lora)
    img = pipe(prompt=PROMPT, negative_prompt=None, num_inference_steps=STEPS, guidance_scale=CFG, width=SIZE,
               height=SIZE, generator=torch.Generator().manual_seed(SEED), output_type="np").images[0]
    return np.round(img * 255).astype(np.int16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdc", required=True)
    ap.add_argument("--out")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="sdc-dbxl-")
    shutil.rmtree(out, ignore_errors=True)
    photos = os.path.join(out, "photos")
    os.makedirs(photos)
    for f in ("src97x61.png", "tall61x90.png"):
        shutil.copy(os.path.join(IMAGES, f), photos)
    base_sdc = sdc_image(a.sdc, os.path.join(out, "base.png"))
    base_ref = diffusers_image()
    d = int(np.abs(base_sdc - base_ref).max())
    check(d <= 1, f"no LoRA: sdc generate vs StableDiffusionXLPipeline: max diff {d}/255")
    for fmt in ("diffusers", "kohya"):
        run = os.path.join(out, fmt)
        r = subprocess.run([a.sdc, "train", "dreambooth", "--pretrained-model", MODEL, "--instance-data", photos,
                            "--instance-prompt", PROMPT, "--resolution", str(SIZE), "--lora-rank", "4",
                            "--learning-rate", "1e-2", "--max-train-steps", "4", "--train-batch-size", "2",
                            "--lora-format", fmt, "--seed", "5", "-t", "2", "-q", "--output-dir", run],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lora = os.path.join(run, "pytorch_lora_weights.safetensors")
        if not check(r.returncode == 0 and os.path.exists(lora), f"{fmt}: sdc train dreambooth: exit {r.returncode}"):
            print(r.stdout[-2000:])
            continue
        got = sdc_image(a.sdc, os.path.join(out, f"{fmt}.png"), lora)
        try:
            ref = diffusers_image(lora)
        except Exception as e:  # noqa: BLE001 (a file diffusers refuses is a failed check)
            check(False, f"{fmt}: load_lora_weights refused the file: {e}")
            continue
        d = int(np.abs(got - ref).max())
        moved_sdc, moved_ref = int(np.abs(got - base_sdc).max()), int(np.abs(ref - base_ref).max())
        check(d <= 1, f"{fmt}: sdc generate --lora vs diffusers load_lora_weights: max diff {d}/255")
        check(moved_sdc >= 8 and moved_ref >= 8, f"{fmt}: the LoRA changes the image (by {moved_sdc}/255 in sdc, "
              f"{moved_ref}/255 in diffusers)")
    print(f"{'FAILED' if failed else 'OK'}: {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
