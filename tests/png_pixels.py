#!/usr/bin/env python3
"""png_pixels.py same|differ A.png B.png: compares two PNGs' pixel data (the
concatenated, inflated IDAT chunks), ignoring text chunks such as the
A1111 `parameters`. Standard library only. Exit 0 when the relation holds.

png_pixels.py psnr A.png B.png MIN_DB [MAX_DB]: decodes both (8-bit RGB or
RGBA, not interlaced: what sdc writes), prints their PSNR in dB over the
8-bit values and exits 0 when it is at least MIN_DB (and below MAX_DB when
given; identical images have an infinite PSNR)."""
import math
import struct
import sys
import zlib


def chunks(path):
    """A PNG's IHDR body and its IDAT chunks' bodies, concatenated (still deflated)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            ihdr = data[pos + 8:pos + 8 + n]
        elif kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    return ihdr, idat


def pixels(path):
    ihdr, idat = chunks(path)
    return ihdr + zlib.decompress(idat)


def decode(path):
    """The 8-bit samples of an RGB / RGBA PNG, row after row (filters undone)."""
    ihdr, idat = chunks(path)
    w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    assert depth == 8 and color in (2, 6) and interlace == 0, f"{path}: not 8-bit RGB(A), non-interlaced"
    bpp = 3 if color == 2 else 4
    raw, stride, out, prev = zlib.decompress(idat), w * bpp, bytearray(), bytearray(w * bpp)
    for y in range(h):
        f, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                row[i] = (row[i] + a) & 255
            elif f == 2:
                row[i] = (row[i] + b) & 255
            elif f == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += row
        prev = row
    return w, h, bpp, bytes(out)


def psnr(a, b, lo, hi):
    wa, ha, ca, pa = decode(a)
    wb, hb, cb, pb = decode(b)
    assert (wa, ha, ca) == (wb, hb, cb), f"{a} is {wa}x{ha}x{ca}, {b} is {wb}x{hb}x{cb}"
    mse = sum((x - y) ** 2 for x, y in zip(pa, pb)) / len(pa)
    db = float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    ok = db >= lo and (hi is None or db < hi)
    print(f"{a} vs {b}: PSNR {db:.2f} dB (want >= {lo}{'' if hi is None else f' and < {hi}'}: "
          f"{'OK' if ok else 'NOT OK'})")
    sys.exit(0 if ok else 1)


def main():
    if sys.argv[1] == "psnr":
        psnr(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else None)
    how, a, b = sys.argv[1:4]
    same = pixels(a) == pixels(b)
    ok = same if how == "same" else not same
    print(f"{a} vs {b}: pixels {'identical' if same else 'differ'} ({'OK' if ok else 'NOT OK'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
