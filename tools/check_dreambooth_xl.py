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
with the LoRA must differ from the one without (both sides). The same with
--train-text-encoder (LoRA on both text encoders too, --text-encoder-lr
1e-2): the file holds text_encoder. and text_encoder_2. (diffusers) /
lora_te1_ and lora_te2_ (kohya) tensors and draws the same image in both.
Full fine-tuning with --train-text-encoder (2 steps): OUTPUT/diffusers loads
in StableDiffusionXLPipeline.from_pretrained and draws `sdc generate -m
OUTPUT/diffusers`'s image, `sdc generate -m OUTPUT/model.safetensors
--config OUTPUT/diffusers` the same one, and OUTPUT/model.h5 converts to
OUTPUT/model.safetensors bit for bit. With --train-text-encoder the file
without the encoders' adapters must draw another image (they matter).
Exit 0 when every case holds; 77 (CTest's skip) without torch / diffusers;
1 otherwise.
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
LOADED = {}  # text encoder -> LoRA parameters diffusers put into it (the last load_lora_weights)


def check(ok, msg):
    global failed
    print(("  OK      " if ok else "  NOT OK  ") + msg, flush=True)
    failed += not ok
    return ok


def sdc_image(sdc, out, lora=None, model=MODEL, extra=()):
    subprocess.run([sdc, "generate", "-q", "-m", model, *extra, "-p", PROMPT, "--sampler", "euler", "--steps", str(STEPS),
                    "--cfg-scale", str(CFG), "-s", str(SEED), "-W", str(SIZE), "-H", str(SIZE), "-t", "2", "-o", out]
                   + (["--lora", lora] if lora else []), check=True)
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int16)


def diffusers_image(lora=None, model=MODEL):
    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(lora)
        for te in ("text_encoder", "text_encoder_2"):  # the encoders' adapters, where the file has them
            LOADED[te] = sum(1 for n, _ in getattr(pipe, te).named_parameters() if "lora_" in n)
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
    te = ["--train-text-encoder", "--text-encoder-lr", "1e-2"]
    for fmt, extra in (("diffusers", []), ("kohya", []), ("diffusers-te", te), ("kohya-te", te)):
        run = os.path.join(out, fmt)
        r = subprocess.run([a.sdc, "train", "dreambooth", "--pretrained-model", MODEL, "--instance-data", photos,
                            "--instance-prompt", PROMPT, "--resolution", str(SIZE), "--lora-rank", "4",
                            "--learning-rate", "1e-2", "--max-train-steps", "4", "--train-batch-size", "2",
                            "--lora-format", fmt.split("-")[0], "--seed", "5", "-t", "2", "-q", "--output-dir", run,
                            *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lora = os.path.join(run, "pytorch_lora_weights.safetensors")
        if not check(r.returncode == 0 and os.path.exists(lora), f"{fmt}: sdc train dreambooth: exit {r.returncode}"):
            print(r.stdout[-2000:])
            continue
        if extra:
            from safetensors.numpy import load_file
            keys = list(load_file(lora))
            pre = ("text_encoder.", "text_encoder_2.") if fmt.startswith("diffusers") else ("lora_te1_", "lora_te2_")
            n1, n2 = (sum(1 for k in keys if k.startswith(p)) for p in pre)
            check(n1 > 0 and n2 > 0, f"{fmt}: {n1} {pre[0]}* and {n2} {pre[1]}* tensors")
        got = sdc_image(a.sdc, os.path.join(out, f"{fmt}.png"), lora)
        try:
            ref = diffusers_image(lora)
        except Exception as e:  # noqa: BLE001 (a file diffusers refuses is a failed check)
            check(False, f"{fmt}: load_lora_weights refused the file: {e}")
            continue
        if extra:
            check(LOADED.get("text_encoder", 0) > 0 and LOADED.get("text_encoder_2", 0) > 0,
                  f"{fmt}: diffusers put the adapters into both encoders ({LOADED.get('text_encoder', 0)} and "
                  f"{LOADED.get('text_encoder_2', 0)} LoRA parameters)")
        d = int(np.abs(got - ref).max())
        moved_sdc, moved_ref = int(np.abs(got - base_sdc).max()), int(np.abs(ref - base_ref).max())
        check(d <= 1, f"{fmt}: sdc generate --lora vs diffusers load_lora_weights: max diff {d}/255")
        check(moved_sdc >= 8 and moved_ref >= 8, f"{fmt}: the LoRA changes the image (by {moved_sdc}/255 in sdc, "
              f"{moved_ref}/255 in diffusers)")
        if extra:  # the encoders' part matters: the file without it draws another image
            from safetensors.numpy import load_file, save_file
            unet_only = os.path.join(run, "unet-only.safetensors")
            keep = ("unet.",) if fmt.startswith("diffusers") else ("lora_unet_",)
            save_file({k: v for k, v in load_file(lora).items() if k.startswith(keep)}, unet_only,
                      metadata={"format": "pt"})
            te_moved = int(np.abs(got - sdc_image(a.sdc, os.path.join(out, f"{fmt}-unet.png"), unet_only)).max())
            check(te_moved >= 8, f"{fmt}: the text encoders' adapters change the image by {te_moved}/255")
    # full fine-tuning of the UNet and both text encoders: the exports
    run = os.path.join(out, "full")
    r = subprocess.run([a.sdc, "train", "dreambooth", "--pretrained-model", MODEL, "--instance-data", photos,
                        "--instance-prompt", PROMPT, "--resolution", str(SIZE), "--learning-rate", "1e-3",
                        "--text-encoder-lr", "1e-3", "--max-train-steps", "2", "--train-batch-size", "2",
                        "--train-text-encoder", "--seed", "5", "-t", "2", "-q", "--output-dir", run],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = os.path.join(run, "diffusers")
    if check(r.returncode == 0 and os.path.isdir(folder), f"full fine-tuning: sdc train dreambooth: exit "
             f"{r.returncode}, {sorted(os.listdir(run)) if os.path.isdir(run) else 'no output'}"):
        got = sdc_image(a.sdc, os.path.join(out, "full.png"), model=folder)
        try:
            ref = diffusers_image(model=folder)
            d = int(np.abs(got - ref).max())
            check(d <= 1, f"full: sdc generate -m OUTPUT/diffusers vs StableDiffusionXLPipeline.from_pretrained: max "
                  f"diff {d}/255")
        except Exception as e:  # noqa: BLE001
            check(False, f"full: diffusers refused OUTPUT/diffusers: {e}")
        moved = int(np.abs(got - base_sdc).max())
        check(moved >= 1, f"full: the fine-tuned model draws another image than the base (by {moved}/255)")
        single = os.path.join(run, "model.safetensors")
        try:
            other = sdc_image(a.sdc, os.path.join(out, "full-single.png"), model=single, extra=["--config", folder])
            d = int(np.abs(got - other).max())
            check(d == 0, f"full: sdc generate -m OUTPUT/model.safetensors --config OUTPUT/diffusers: the same "
                  f"image (max diff {d}/255)")
        except subprocess.CalledProcessError as e:
            check(False, f"full: sdc generate -m OUTPUT/model.safetensors: exit {e.returncode}")
        # model.h5 (no tokenizer in an .h5: this tiny model's own cannot go with it) converts to the same file
        from safetensors.numpy import load_file
        again = os.path.join(out, "full-from-h5.safetensors")
        r = subprocess.run([a.sdc, "convert", "-q", "-m", os.path.join(run, "model.h5"), "-o", again])
        x, y = (load_file(again), load_file(single)) if r.returncode == 0 else ({}, {1: 0})
        bad = [k for k in y if k not in x or x[k].shape != y[k].shape or not np.array_equal(x[k], y[k])]
        check(r.returncode == 0 and set(x) == set(y) and not bad, f"full: sdc convert OUTPUT/model.h5 gives "
              f"model.safetensors' {len(y)} tensors bit for bit ({len(bad)} differ)")
    else:
        print(r.stdout[-2000:])
    print(f"{'FAILED' if failed else 'OK'}: {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
