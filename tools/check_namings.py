#!/usr/bin/env python3
"""check_namings.py --sdc BUILD/sdc: sdc reads what current diffusers and
transformers save_pretrained write.

For tests/fixtures/tiny-sd1 (CLIP ViT-L-style text encoder) and tiny-sd2
(OpenCLIP-style), the components are loaded with the libraries and saved
again, by this diffusers / transformers, as:
  as_loaded        save_pretrained of the loaded models
  fresh_v5         a text encoder built from its config (transformers 5 then
                   writes names without "text_model.")
  with_projection  CLIPTextModelWithProjection (+ text_projection.weight)
  sharded          save_pretrained(max_shard_size="100KB"): shards + index
  fp16             save_pretrained(variant="fp16") in float16
  fp16_sharded     both
  old_vae          the VAE with diffusers < 0.14's attention names (as old
                   hub folders hold them; diffusers converts them on load)
Each folder must load in diffusers (StableDiffusionPipeline.from_pretrained)
and `sdc convert -m FOLDER -o x.safetensors` must give the tensors that
`sdc convert` of the fixture gives (fp16: rounded). Exit 0 when all hold; 77
(CTest's skip status) without torch / diffusers.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
except ImportError as e:
    print(f"SKIPPED: {e} (tools/setup.sh --python installs torch and diffusers)")
    sys.exit(77)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
LAYOUTS = ["as_loaded", "fresh_v5", "with_projection", "sharded", "fp16", "fp16_sharded", "old_vae"]


def save(model, folder, layout):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(FIX, model, "unet"))
    vae = AutoencoderKL.from_pretrained(os.path.join(FIX, model, "vae"))
    te_dir = os.path.join(FIX, model, "text_encoder")
    if layout == "with_projection":
        te = CLIPTextModelWithProjection.from_pretrained(te_dir)
    else:
        te = CLIPTextModel.from_pretrained(te_dir)
    if layout == "fresh_v5":
        fresh = CLIPTextModel(CLIPTextConfig.from_pretrained(te_dir))
        fresh.load_state_dict(te.state_dict())
        te = fresh
    kw = {}
    if "sharded" in layout:
        kw["max_shard_size"] = "100KB"
    if "fp16" in layout:
        kw["variant"] = "fp16"
        unet, vae, te = unet.to(torch.float16), vae.to(torch.float16), te.to(torch.float16)
    os.makedirs(folder)
    shutil.copytree(os.path.join(FIX, model, "scheduler"), os.path.join(folder, "scheduler"))
    shutil.copy(os.path.join(FIX, model, "model_index.json"), folder)
    unet.save_pretrained(os.path.join(folder, "unet"), **kw)
    vae.save_pretrained(os.path.join(folder, "vae"), **kw)
    te.save_pretrained(os.path.join(folder, "text_encoder"), **kw)
    if layout == "old_vae":
        p = os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")
        sd = load_file(p)
        old = {}
        for k, v in sd.items():
            for a, b in (("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")):
                k = k.replace("mid_block.attentions.0." + a, "mid_block.attentions.0." + b)
            old[k] = v
        save_file(old, p, metadata={"format": "pt"})
    return sorted(os.listdir(os.path.join(folder, "text_encoder")))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdc", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = tempfile.mkdtemp()
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"  {what}  {'OK' if ok else 'NOT OK'}")

    try:
        for model in ("tiny-sd1", "tiny-sd2"):
            ref_path = os.path.join(work, f"{model}-ref.safetensors")
            subprocess.run([a.sdc, "convert", "-q", "-m", os.path.join(FIX, model), "-o", ref_path], check=True)
            ref = load_file(ref_path)
            print(f"{model}:")
            for layout in LAYOUTS:
                folder = os.path.join(work, f"{model}-{layout}")
                files = save(model, folder, layout)
                pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, tokenizer=None,
                                                               feature_extractor=None, image_encoder=None,
                                                               requires_safety_checker=False,
                                                               variant="fp16" if "fp16" in layout else None)
                check(pipe is not None, f"{layout:16s} diffusers loads it (text_encoder/: {', '.join(files[:3])}"
                                        f"{', ...' if len(files) > 3 else ''})")
                out = os.path.join(work, f"{model}-{layout}.safetensors")
                r = subprocess.run([a.sdc, "convert", "-q", "-m", folder, "-o", out], capture_output=True, text=True)
                if r.returncode:
                    check(False, f"{layout:16s} sdc convert: {r.stderr.strip()[:300]}")
                    continue
                got = load_file(out)
                keys = [k for k in ref if not k.startswith("model_ema")]
                missing = [k for k in keys if k not in got]
                bad = []
                for k in keys:
                    if k in got and ref[k].is_floating_point():
                        want = ref[k].float()
                        if "fp16" in layout:
                            want = want.half().float()
                        if not torch.equal(want, got[k].float()):
                            bad.append(k)
                check(not missing and not bad, f"{layout:16s} sdc reads all {len(keys)} tensors by the same names and "
                                               f"values ({len(missing)} missing, {len(bad)} differ)"
                                               f"{': ' + (missing + bad)[0] if missing or bad else ''}")
    finally:
        shutil.rmtree(work)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
