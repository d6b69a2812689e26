#!/usr/bin/env python3
"""make_ref_vae_tiled.py: the reference for tests/test_vae_tiled.c -- diffusers'
AutoencoderKL with enable_tiling() on the tiny-sd1 VAE, with tiles small
enough that an 80x160 image is cut into several of them.

    python3 tools/make_ref_vae_tiled.py   # writes tests/fixtures/ref-vae-tiled.safetensors (~165 KB)

Tiles: tile_sample_min_size 64 px, tile_latent_min_size 8 latent px,
tile_overlap_factor 0.25 (diffusers' default), i.e. sdc's VaeTiling
{tile = 8, overlap = 2}. Decode: z (1, 4, 10, 20) -> tiles at latent rows
0, 6 and columns 0, 6, 12, 18 (the last only 2 wide). Encode: the decoded
image (1, 3, 80, 160) -> tiles at pixel rows 0, 48 and columns 0, 48, 96, 144
(the last 16 wide); mean and logvar of the blended moments (logvar clamped
after blending, as DiagonalGaussianDistribution does). The test feeds
"decoded" back as the encoder input, so the image is stored once.
Tensors: z, decoded, mean, logvar (f32).
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(os.path.join(ROOT, "tests/fixtures/tiny-sd1/vae")).eval()
    vae.enable_tiling()
    vae.tile_sample_min_size = 64
    vae.tile_latent_min_size = 8
    vae.tile_overlap_factor = 0.25
    g = torch.Generator().manual_seed(1234)
    z = torch.randn(1, 4, 10, 20, generator=g)
    with torch.no_grad():
        dec = vae.decode(z).sample                      # tiled: 10x20 > 8
        untiled = vae.decoder(vae.post_quant_conv(z))   # for the printout only
        post = vae.encode(dec).latent_dist              # tiled: 80x160 > 64
    print(f"decoded {tuple(dec.shape)}: max |tiled - untiled| = {(dec - untiled).abs().max():.3g} "
          f"(max |x| {dec.abs().max():.3g})")
    out = {"z": z, "decoded": dec, "mean": post.mean, "logvar": post.logvar}
    path = os.path.join(ROOT, "tests/fixtures/ref-vae-tiled.safetensors")
    save_file({k: v.contiguous().float() for k, v in out.items()}, path)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
