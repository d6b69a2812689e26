#!/usr/bin/env python3
"""synth_vae_recon.py VAE_DIR DATASET.h5 OUT.png [--n 8]: the first N images
of an sdc dataset (top row) and their reconstructions by a diffusers
AutoencoderKL folder (bottom row: the decoded posterior mean), side by side
at native size; prints the mean PSNR over them ([0, 1] images) and the
posterior's statistics. For watching `sdc train vae` runs (docs/model.md).

The images are read with h5py; when this Python has none (torch and h5py
live in different interpreters on the dev VM), /usr/bin/python3 reads them.
Needs torch, diffusers, Pillow, numpy.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image


def read_images(path, n):
    try:
        import h5py
        with h5py.File(path, "r") as f:
            return f["images"][:n]
    except ImportError:
        tmp = tempfile.mktemp(suffix=".npy")
        code = "import sys, h5py, numpy as np; np.save(sys.argv[2], h5py.File(sys.argv[1], 'r')['images'][:int(sys.argv[3])])"
        subprocess.run(["/usr/bin/python3", "-c", code, path, tmp, str(n)], check=True)
        x = np.load(tmp)
        os.remove(tmp)
        return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vae")
    ap.add_argument("dataset")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(a.vae).eval()
    x = torch.tensor(read_images(a.dataset, a.n)).float().permute(0, 3, 1, 2) / 127.5 - 1  # (N, 3, R, R)
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        y = vae.decode(post.mean).sample
    orig, rec = (x + 1) / 2, ((y + 1) / 2).clamp(0, 1)
    psnr = [10 * np.log10(1 / ((orig[i] - rec[i]) ** 2).mean().item()) for i in range(len(x))]
    print(f"{a.vae}: {len(x)} images, PSNR {np.mean(psnr):.2f} dB; posterior mean |mu| {post.mean.abs().mean():.3f}, "
          f"logvar {post.logvar.mean():.3f}")
    grid = torch.cat([torch.cat(list(orig), 2), torch.cat(list(rec), 2)], 1)  # (3, 2R, N*R)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(a.out, optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
