#!/usr/bin/env python3
"""st_drop.py IN OUT PREFIX...: copies the safetensors file IN to OUT without
the tensors whose names start with one of the PREFIXes (a model missing a
part, for the bad-input tests). Standard library only."""
import json
import struct
import sys


def main():
    src, dst, prefixes = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    meta = head.pop("__metadata__", None)
    out, blobs, off = {}, [], 0
    for name, e in sorted(head.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name.startswith(prefixes):
            continue
        a, b = e["data_offsets"]
        out[name] = dict(e, data_offsets=[off, off + b - a])
        blobs.append(data[a:b])
        off += b - a
    if meta is not None:
        out["__metadata__"] = meta
    h = json.dumps(out).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    print(f"{dst}: {len(out) - (meta is not None)} of {len(head)} tensors")


if __name__ == "__main__":
    main()
