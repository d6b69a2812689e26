#!/usr/bin/env python3
"""png_pixels.py same|differ A.png B.png: compares two PNGs' pixel data (the
concatenated, inflated IDAT chunks), ignoring text chunks such as the
A1111 `parameters`. Standard library only. Exit 0 when the relation holds."""
import struct
import sys
import zlib


def pixels(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    return ihdr + zlib.decompress(idat)


def main():
    how, a, b = sys.argv[1:4]
    same = pixels(a) == pixels(b)
    ok = same if how == "same" else not same
    print(f"{a} vs {b}: pixels {'identical' if same else 'differ'} ({'OK' if ok else 'NOT OK'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
