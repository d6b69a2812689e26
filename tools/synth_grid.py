#!/usr/bin/env python3
"""synth_grid.py GEN.h5 OUT.png [--cols 8] [--n 32] [--scale 2] [--items ITEMS.tsv]: a grid of the images of
an sdc generation output (sdc generate --output-h5), each scaled up (nearest) with its prompt under it in
four short lines; with --items (sdc dataset score --items) a green / red mark says whether the scorer found
the prompt's shape and colour (both; for a "sks shape" prompt, the DreamBooth subject). For docs/model.md's sample grids. Needs Pillow and numpy; the file is read
with h5py, by /usr/bin/python3 when this Python has none.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
from PIL import Image, ImageDraw


def read(path, n):
    try:
        import h5py
        with h5py.File(path, "r") as f:
            return f["images"][:n], [p.decode() if isinstance(p, bytes) else p for p in f["prompt"][:n]]
    except ImportError:
        tmp = tempfile.mktemp(suffix=".npy")
        code = ("import h5py, numpy, json, sys; f = h5py.File(sys.argv[1], 'r'); n = int(sys.argv[3]); "
                "numpy.save(sys.argv[2], f['images'][:n]); "
                "print(json.dumps([p.decode() if isinstance(p, bytes) else p for p in f['prompt'][:n]]))")
        out = subprocess.run(["/usr/bin/python3", "-c", code, path, tmp, str(n)], check=True, capture_output=True,
                             text=True).stdout
        return np.load(tmp), json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gen")
    ap.add_argument("out")
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--items")
    a = ap.parse_args()
    imgs, prompts = read(a.gen, a.n)
    found = {}
    if a.items:
        for line in open(a.items).read().splitlines()[1:]:
            c = line.split("\t")
            # file, item, held_out, the shape, colour and background found, iou, prompt ("a small red star on ...")
            head = c[7].split(" on ")[0].split()
            if "sks" in head:  # a DreamBooth subject prompt: the subject found (its outline and both stripe colours)
                found[int(c[1])] = c[3] == "sks"
            else:
                found[int(c[1])] = len(head) >= 2 and c[3] == head[-1] and c[4] == head[-2]
    n, h, w = len(imgs), imgs.shape[1] * a.scale, imgs.shape[2] * a.scale
    cw, ch, rows = max(w, 132) + 8, h + 52, (len(imgs) + a.cols - 1) // a.cols
    grid = Image.new("RGB", (a.cols * cw, rows * ch), "white")
    d = ImageDraw.Draw(grid)
    for i in range(n):
        x, y = (i % a.cols) * cw + 4, (i // a.cols) * ch + 2
        grid.paste(Image.fromarray(imgs[i]).resize((w, h), Image.NEAREST), (x, y))
        lines = textwrap.wrap(prompts[i], 22)[:4]
        for k, t in enumerate(lines):
            d.text((x, y + h + 2 + 11 * k), t, fill="black")
        if i in found:
            d.rectangle([x + w - 10, y + 2, x + w - 3, y + 9], fill=(0, 170, 0) if found[i] else (220, 0, 0))
    grid.save(a.out, optimize=True)
    print(f"{a.out}: {n} images")


if __name__ == "__main__":
    sys.exit(main())
