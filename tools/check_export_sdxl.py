#!/usr/bin/env python3
"""check_export_sdxl.py --sdc BUILD/sdc [--out DIR]: what `sdc convert` writes
for SDXL opens in diffusers as it is and draws sdc's images.

Exports of the tiny random SDXL fixtures (tools/make_sdxl_fixture.py):
  folder    tests/fixtures/tiny-sdxl -> OUT/folder/          (its tokenizers copied)
  h5        tests/fixtures/tiny-sdxl -> x.h5 -> OUT/from-h5/ (f32: --dtype f32 on the way)
  single    tests/fixtures/tiny-sdxl -> x.safetensors -> OUT/from-single/ (read with --config)
  infer     tests/fixtures/tiny-sdxl-infer.safetensors -> OUT/infer/ (the architecture sdc
            inferred from the original layout, written as diffusers configs)
Each folder is loaded with StableDiffusionXLPipeline.from_pretrained(folder)
(an h5 or single file has no tokenizer of its 1000-id vocab: the fixture's
are given as tokenizer= / tokenizer_2=, as the note of sdc convert says),
and for two samplers (the folder's Euler and DPM++ 2M, the scheduler built
from the folder's config) the image of a prompt with a negative prompt is
compared with `sdc generate` on the source model (infer: on the exported
folder, the source having no tokenizer of its vocab): within 1/255.

from_single_file: diffusers tells SDXL's two text encoders apart by their
width (768 vs 1280), which the tiny fixtures share (32 / 64 both), so a third
tiny SDXL with encoders 32 and 48 wide is made here with diffusers, exported
by sdc to one original-layout file, and loaded with
StableDiffusionXLPipeline.from_single_file(file, config=its folder) (offline:
the config folder gives every config): every tensor of the four components
equal to from_pretrained's, and its image within 1/255 of sdc's on the file.

Exit 0 when every check passes; 77 (CTest's skip status) when torch /
diffusers are not installed; 1 otherwise. The CTest test export_sdxl_diffusers.
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
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer
    from PIL import Image
except ImportError as e:  # the C build and its tests never need Python's ML stack
    print(f"SKIPPED: {e} (tools/setup.sh --python installs torch and diffusers)")
    sys.exit(77)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
XL, XLI = os.path.join(FIX, "tiny-sdxl"), os.path.join(FIX, "tiny-sdxl-infer.safetensors")
SAMPLERS = {"euler": (EulerDiscreteScheduler, {}),
            "dpm++2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2})}
PROMPT, NEGATIVE = "a photo of a red fox in the snow, high quality!", "blurry, low quality"
STEPS, CFG, SEED, SIZE = 4, 5.0, 7, 64


def sdc_image(sdc, model, sampler, out, config=None):
    cmd = [sdc, "generate", "-q", "-m", model, "-p", PROMPT, "-n", NEGATIVE, "--sampler", sampler, "--steps",
           str(STEPS), "--cfg-scale", str(CFG), "-s", str(SEED), "-W", str(SIZE), "-H", str(SIZE), "-t", "2", "-o", out]
    if config:
        cmd += ["--config", config]
    subprocess.run(cmd, check=True)
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int16)


def diffusers_image(pipe, sampler, base):
    cls, opts = SAMPLERS[sampler]
    pipe.scheduler = cls.from_config(base, **opts)
    res = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE,
               width=SIZE, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np")
    return (res.images[0] * 255).round().astype(np.int16)


def convert(sdc, src, out, *extra):
    if os.path.isdir(out):
        shutil.rmtree(out)
    subprocess.run([sdc, "convert", "-q", "-m", src, "-o", out, *extra], check=True)


def wide_model(folder):
    """A tiny SDXL whose encoders differ in width (32, 48), saved as a diffusers folder."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import make_sdxl_fixture as mx
    from diffusers import EulerDiscreteScheduler as Euler
    te2 = dict(mx.TE2, hidden_size=48, num_attention_heads=2, projection_dim=24)
    unet = dict(mx.UNET, cross_attention_dim=32 + 48, projection_class_embeddings_input_dim=6 * 8 + 24)
    u, t1, t2, v = mx.build(unet, mx.TE1, te2, mx.VAE)
    shutil.rmtree(folder, ignore_errors=True)
    mx.save_folder(folder, u, t1, t2, v, Euler(**mx.SCHED))
    mx.make_tokenizers(folder)


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

    toks = dict(tokenizer=CLIPTokenizer.from_pretrained(os.path.join(XL, "tokenizer")),
                tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(XL, "tokenizer_2")))
    folder, h5, fh5 = os.path.join(work, "folder"), os.path.join(work, "x.h5"), os.path.join(work, "from-h5")
    single, fsingle, infer = os.path.join(work, "x.safetensors"), os.path.join(work, "from-single"), os.path.join(work, "infer")
    convert(a.sdc, XL, folder + "/")
    convert(a.sdc, XL, h5, "--dtype", "f32")
    convert(a.sdc, h5, fh5 + "/")
    convert(a.sdc, XL, single)
    subprocess.run([a.sdc, "convert", "-q", "-m", single, "--config", XL, "-o", fsingle + "/"], check=True)
    convert(a.sdc, XLI, infer + "/")
    for sub in ("tokenizer", "tokenizer_2"):  # for sdc on the inferred model's folder
        shutil.copytree(os.path.join(XL, sub), os.path.join(infer, sub))
    cases = [("folder", folder, {}, XL), ("h5", fh5, toks, XL), ("single", fsingle, toks, XL), ("infer", infer, toks, None)]
    for label, path, kw, source in cases:
        print(f"{label}: {path} (from {source or XLI})")
        try:
            pipe = StableDiffusionXLPipeline.from_pretrained(path, **kw)
        except Exception as e:  # noqa: BLE001 -- the failure to load is the finding
            check(False, f"StableDiffusionXLPipeline.from_pretrained: {type(e).__name__}: {e}")
            continue
        pipe.set_progress_bar_config(disable=True)
        check(True, "StableDiffusionXLPipeline.from_pretrained(folder) loads it"
              + (" (tokenizers given)" if kw else " as it is"))
        check(pipe.config.force_zeros_for_empty_prompt is True and
              abs(pipe.vae.config.scaling_factor - 0.13025) < 1e-7,
              f"force_zeros_for_empty_prompt {pipe.config.force_zeros_for_empty_prompt}, "
              f"VAE scaling factor {pipe.vae.config.scaling_factor}")
        base = pipe.scheduler.config
        for name in SAMPLERS:
            ref = diffusers_image(pipe, name, base)
            mine = sdc_image(a.sdc, source or path, name, os.path.join(work, f"{label}-{name}.png"))
            d = int(np.abs(mine - ref).max())
            check(d <= 1, f"{name:8s} diffusers on the export vs sdc on {os.path.basename(source or path)}: "
                  f"max |diff| {d}/255")

    # from_single_file on an SDXL file sdc wrote (encoders of different widths)
    wide = os.path.join(work, "wide")
    wide_model(wide)
    wfile = os.path.join(work, "wide.safetensors")
    convert(a.sdc, wide, wfile)
    print(f"from_single_file: {wfile} (config {wide})")
    ref_pipe = StableDiffusionXLPipeline.from_pretrained(wide)
    try:
        sf = StableDiffusionXLPipeline.from_single_file(wfile, config=wide)
    except Exception as e:  # noqa: BLE001
        check(False, f"StableDiffusionXLPipeline.from_single_file(file, config=folder): {type(e).__name__}: {e}")
    else:
        check(True, "StableDiffusionXLPipeline.from_single_file(file, config=folder) loads it (offline)")
        for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
            x, y = getattr(ref_pipe, comp).state_dict(), getattr(sf, comp).state_dict()
            same = set(x) == set(y) and all(torch.equal(x[k].float(), y[k].float()) for k in x)
            check(same, f"{comp}: {len(y)} tensors equal to from_pretrained(folder)'s")
        sf.set_progress_bar_config(disable=True)
        ref = diffusers_image(sf, "euler", sf.scheduler.config)
        mine = sdc_image(a.sdc, wfile, "euler", os.path.join(work, "wide.png"), config=wide)
        d = int(np.abs(mine - ref).max())
        check(d <= 1, f"from_single_file's image vs sdc on the file: max |diff| {d}/255")
    if not a.out:
        shutil.rmtree(work)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
