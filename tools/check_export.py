#!/usr/bin/env python3
"""check_export.py --sdc BUILD/sdc [--out DIR]: what sdc exports opens in
diffusers as it is, and draws sdc's images.

For the demo model (data/models/sdc-tiny-sd1.safetensors):
  convert   `sdc convert -m DEMO -o OUT/convert/`
  dreambooth  a 2-step `sdc train dreambooth` whose OUTPUT_DIR/diffusers/ is exported
each folder is loaded with StableDiffusionPipeline.from_pretrained(folder) and
nothing else, then for several samplers (the scheduler built as users do,
XScheduler.from_config(pipe.scheduler.config, **the sampler's options)) the
image of a prompt that goes through the tokenizer ("!" included) is compared
with `sdc generate -m folder` and with `sdc generate` on the model the folder
was exported from: max pixel difference in /255 per case. Exit 0 when every
case is within 1/255; 77 (CTest's skip status) when torch / diffusers are not
installed; 1 otherwise. Used by the CTest test export_diffusers_roundtrip.
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
    import diffusers
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler,
                           StableDiffusionPipeline, UniPCMultistepScheduler)
    from PIL import Image
except ImportError as e:  # the C build and its tests never need Python's ML stack
    print(f"SKIPPED: {e} (tools/setup.sh --python installs torch and diffusers)")
    sys.exit(77)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "data", "models", "sdc-tiny-sd1.safetensors")
INSTANCE = os.path.join(ROOT, "tests", "fixtures", "images")

SAMPLERS = {  # sdc name -> (diffusers class, the options the name means)
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "lms_karras": (LMSDiscreteScheduler, {"use_karras_sigmas": True}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "dpm++2m_karras": (DPMSolverMultistepScheduler,
                       {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {"solver_type": "bh2", "solver_order": 2, "predict_x0": True}),
}
PROMPT, NEGATIVE = "a photo of sks dog, in the snow!", "blurry"
STEPS, CFG, SEED, SIZE = 6, 7.0, 1234, 64


def sdc_image(sdc, model, sampler, out):
    subprocess.run([sdc, "generate", "-q", "-m", model, "-p", PROMPT, "-n", NEGATIVE, "--sampler", sampler,
                    "--steps", str(STEPS), "--cfg-scale", str(CFG), "-s", str(SEED), "-W", str(SIZE), "-H",
                    str(SIZE), "-t", "2", "-o", out], check=True)
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int16)


def diffusers_images(folder):
    pipe = StableDiffusionPipeline.from_pretrained(folder)  # nothing else: the folder as it is
    pipe.set_progress_bar_config(disable=True)
    base = pipe.scheduler.config
    out = {}
    for name, (cls, opts) in SAMPLERS.items():
        pipe.scheduler = cls.from_config(base, **opts)
        res = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE,
                   width=SIZE, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np")
        out[name] = (res.images[0] * 255).round().astype(np.int16)
    return out, pipe


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdc", required=True)
    ap.add_argument("--out", help="work folder (default: a temporary one, removed)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = a.out or tempfile.mkdtemp()
    os.makedirs(work, exist_ok=True)
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, work folder {work}")
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"  {what}  {'OK' if ok else 'NOT OK'}")

    # the exports: convert of the demo model, and a DreamBooth run's diffusers/
    conv = os.path.join(work, "convert")
    shutil.rmtree(conv, ignore_errors=True)
    subprocess.run([a.sdc, "convert", "-q", "-m", DEMO, "-o", conv + "/"], check=True)
    db = os.path.join(work, "db")
    shutil.rmtree(db, ignore_errors=True)
    subprocess.run([a.sdc, "train", "dreambooth", "-q", "--pretrained-model", DEMO, "--instance-data", INSTANCE,
                    "--instance-prompt", "a photo of sks dog", "--resolution", "64", "--train-batch-size", "1",
                    "--max-train-steps", "2", "--checkpointing-steps", "100", "--learning-rate", "1e-3",
                    "--output-dir", db, "-t", "2"], check=True)
    cases = [("convert", conv, DEMO), ("dreambooth", os.path.join(db, "diffusers"), os.path.join(db, "model.safetensors"))]
    for label, folder, source in cases:
        print(f"{label}: {folder} (exported from {source})")
        check(os.path.isfile(os.path.join(folder, "tokenizer", "vocab.json")), "the folder has tokenizer/")
        try:
            imgs, pipe = diffusers_images(folder)
        except Exception as e:  # noqa: BLE001 -- the failure to load is the finding
            check(False, f"StableDiffusionPipeline.from_pretrained(folder): {type(e).__name__}: {e}")
            continue
        check(True, "StableDiffusionPipeline.from_pretrained(folder) loads it as it is")
        ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True).input_ids
        check(len(ids) == 77 and ids[0] == 49406, f"its tokenizer pads to 77 ({ids[:12]}...)")
        for name, ref in imgs.items():
            mine = sdc_image(a.sdc, folder, name, os.path.join(work, f"{label}-{name}.png"))
            src = sdc_image(a.sdc, source, name, os.path.join(work, f"{label}-{name}-src.png"))
            d = int(np.abs(mine - ref).max())
            check(d <= 1, f"{name:16s} sdc on the folder vs diffusers: max |diff| {d}/255")
            check(np.array_equal(mine, src), f"{name:16s} sdc on the folder == sdc on {os.path.basename(source)}")
    if not a.out:
        shutil.rmtree(work)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
