#!/usr/bin/env python3
"""check_init.py: a model made by `sdc init-model` is initialised as the
PyTorch modules diffusers and transformers construct are (issue 16).

    python3 tools/check_init.py MODEL_DIR VAE_SOURCE_DIR

For the UNet (UNet2DConditionModel.from_config) and the text encoder
(CLIPTextModel(config)): the same tensor names and shapes; per tensor, the
constant ones (norm weights 1, zero biases) equal, the random ones with the
same distribution: |mean| and std compared with the fresh torch module's
(std within 10 % for tensors of 256+ values, max |x| within the uniform
bound). The VAE equals the source's bit for bit. Prints one line per failed
tensor and a summary; exit 1 on a failure, 77 when torch or diffusers is
missing (CTest's skip).
"""
import json
import math
import os
import sys

try:
    import torch
    from diffusers import UNet2DConditionModel, AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    from safetensors.torch import load_file
except ImportError as e:  # pragma: no cover
    print("SKIPPED: %s" % e)
    sys.exit(77)


def compare(name, ours, refs, fails):
    """refs: the state dicts of R freshly constructed torch modules (seeds 0..R-1)."""
    ref = refs[0]
    if ours.keys() != ref.keys():
        fails.append("%s: names differ: only sdc %s, only torch %s" % (
            name, sorted(set(ours) - set(ref))[:5], sorted(set(ref) - set(ours))[:5]))
        return 0
    n = 0
    for k in sorted(ref):
        a = ours[k].float()
        if a.shape != ref[k].shape:
            fails.append("%s %s: shape %s vs %s" % (name, k, tuple(a.shape), tuple(ref[k].shape)))
            continue
        n += 1
        b = ref[k].float()
        if b.numel() and torch.all(b == b.flatten()[0]):  # a constant: equal
            if not torch.equal(a, b):
                fails.append("%s %s: torch's is the constant %g, sdc's is not" % (name, k, b.flatten()[0]))
            continue
        pool = torch.cat([r[k].float().flatten() for r in refs])  # R samples of torch's distribution
        sp, mp = pool.std().item(), pool.abs().max().item()
        sa = a.std().item() if a.numel() > 1 else 0.0
        m = a.numel()
        tol = 4.0 / math.sqrt(2 * max(m - 1, 1)) + 0.01  # 4 sigma of a sample std's relative error
        if m >= 16 and abs(sa / sp - 1) > tol:
            fails.append("%s %s: std %.4g vs torch's %.4g (%d values, tolerance %.0f%%)" % (name, k, sa, sp, m,
                                                                                        100 * tol))
        if abs(a.mean().item()) > 5 * sp / math.sqrt(m) + 1e-7:
            fails.append("%s %s: mean %.3g (std %.3g, %d values)" % (name, k, a.mean().item(), sp, m))
        # uniform (max = sqrt 3 std): within the bound, estimated from R x m samples of it (their
        # largest falls short of it by about 1 / (R m + 1))
        bound = mp * (1 + 5.0 / pool.numel())
        if mp < 2.0 * sp and a.abs().max().item() > bound:
            fails.append("%s %s: max |x| %.4g over torch's bound %.4g" % (name, k, a.abs().max().item(), bound))
    return n


def main():
    model, vae_src = sys.argv[1], sys.argv[2]
    fails = []
    R = 8
    unet_cfg = json.load(open(os.path.join(model, "unet", "config.json")))
    refs = []
    for seed in range(R):
        torch.manual_seed(seed)
        refs.append(UNet2DConditionModel.from_config(unet_cfg).state_dict())
    ours = load_file(os.path.join(model, "unet", "diffusion_pytorch_model.safetensors"))
    nu = compare("unet", ours, refs, fails)
    te_cfg = CLIPTextConfig.from_pretrained(os.path.join(model, "text_encoder"))
    refs = []
    for seed in range(R):
        torch.manual_seed(seed)
        sd = CLIPTextModel(te_cfg).state_dict()
        # transformers 5 names them without "text_model." (sdc writes the prefix, which every version reads)
        refs.append({("text_model." + k if not k.startswith("text_model.") else k): v for k, v in sd.items()
                     if not k.endswith("position_ids")})
    ours = load_file(os.path.join(model, "text_encoder", "model.safetensors"))
    nt = compare("text_encoder", ours, refs, fails)
    a = load_file(os.path.join(model, "vae", "diffusion_pytorch_model.safetensors"))
    b = load_file(os.path.join(vae_src, "vae", "diffusion_pytorch_model.safetensors"))
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        fails.append("vae: not the source's tensors")
    AutoencoderKL.from_pretrained(os.path.join(model, "vae"))  # loads as diffusers reads it
    for f in fails:
        print("  NOT OK  " + f)
    print("unet %d tensors, text encoder %d tensors, vae %d tensors: %d failed" % (nu, nt, len(a), len(fails)))
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
