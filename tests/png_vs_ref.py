#!/usr/bin/env python3
"""png_vs_ref.py IMAGE.png REF.safetensors TENSOR MAXDIFF: the PNG's RGB
pixels against a (H, W, 3) U8 tensor of a safetensors file (a diffusers
reference image); exit 0 when the worst difference is at most MAXDIFF.
Standard library and numpy only (the test machine's /usr/bin/python3)."""
import json
import struct
import sys
import zlib

import numpy as np


def read_png_rgb(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, w, h, ctype = 8, b"", 0, 0, -1
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), f"{path}: 8-bit RGB(A) expected"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for x in range(stride):
            a = cur[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else b if pb <= pc else c
            cur[x] = (line[x] + p) & 255
        out[y], prev = cur, cur
    return out.reshape(h, w, bpp)[:, :, :3]


def read_tensor(path, name):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    hdr = json.loads(data[8:8 + n])
    e = hdr[name]
    assert e["dtype"] == "U8", e["dtype"]
    lo, hi = e["data_offsets"]
    return np.frombuffer(data, np.uint8, hi - lo, 8 + n + lo).reshape(e["shape"]).astype(np.int32)


def main():
    png, ref, name, maxdiff = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    a, b = read_png_rgb(png), read_tensor(ref, name)
    if a.shape != b.shape:
        print(f"{png}: {a.shape} vs {name} {b.shape}")
        sys.exit(1)
    d = int(np.abs(a - b).max())
    print(f"{png} vs {name}: worst difference {d}/255 (at most {maxdiff})")
    sys.exit(0 if d <= maxdiff else 1)


if __name__ == "__main__":
    main()
