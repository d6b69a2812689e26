#!/usr/bin/python3
"""compare_convert.py: byte-for-byte comparison of `sdc convert` outputs of a
big model, tensor by tensor, without loading a whole model (numpy memory
maps and h5py; run it with the Debian /usr/bin/python3).

  compare_convert.py single A.safetensors B.safetensors [--not-carried SUBSTR]
      the same tensor names, dtypes, shapes and bytes (e.g. an original
      single file and the one converted back from the h5 / folder);
      --not-carried: tensors of A whose name holds SUBSTR may be missing from
      B (listed, not counted as differences: OpenCLIP's logit_scale, which a
      diffusers folder has no place for)
  compare_convert.py h5-folder MODEL.h5 FOLDER
      every parameter dataset of the checkpoint (/unet, /vae, /text_encoder,
      /text_encoder_2: diffusers names) against the folder's component
      .safetensors of the same name: dtype, shape, bytes; and no tensor left
      over on either side

Prints the tensors and bytes compared and the first differences; exits 1 on
any difference."""
import glob
import json
import os
import struct
import sys

import numpy as np

DT = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "F64": np.float64, "I32": np.int32,
      "I64": np.int64, "U8": np.uint8}


class St:
    """A .safetensors file as raw bytes per tensor (a memory map)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            self.h = json.loads(f.read(n))
        self.h.pop("__metadata__", None)
        self.mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)

    def keys(self):
        return self.h.keys()

    def meta(self, k):
        return self.h[k]["dtype"], tuple(self.h[k]["shape"])

    def raw(self, k):
        a, b = self.h[k]["data_offsets"]
        return self.mm[a:b]


def h5_dtype(ds):
    d = ds.dtype
    if d == np.float16:
        return "F16"
    if d == np.float32:
        return "F32"
    if d == np.uint16 or (d.kind == "V" and d.itemsize == 2):  # bf16 as sdc stores it
        return "BF16"
    return str(d)


def compare_single(a_path, b_path, not_carried=None):
    a, b = St(a_path), St(b_path)
    bad, nbytes = [], 0
    ka, kb = set(a.keys()), set(b.keys())
    for k in sorted(ka - kb):
        if not_carried and not_carried in k:
            print(f"  not carried (expected): {k} {a.meta(k)}")
            continue
        bad.append(f"only in {a_path}: {k}")
    for k in sorted(kb - ka):
        bad.append(f"only in {b_path}: {k}")
    for k in sorted(ka & kb):
        if a.meta(k) != b.meta(k):
            bad.append(f"{k}: {a.meta(k)} vs {b.meta(k)}")
            continue
        ra, rb = a.raw(k), b.raw(k)
        if not np.array_equal(ra, rb):
            bad.append(f"{k}: bytes differ")
        nbytes += ra.size
    return len(ka & kb), nbytes, bad


def compare_h5_folder(h5_path, folder):
    import h5py
    bad, n, nbytes = [], 0, 0
    with h5py.File(h5_path, "r") as f:
        for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if comp not in f:
                if os.path.isdir(os.path.join(folder, comp)):
                    bad.append(f"{comp}/ in the folder, not in the checkpoint")
                continue
            files = sorted(glob.glob(os.path.join(folder, comp, "*.safetensors")))
            if not files:
                bad.append(f"{comp}: no .safetensors in the folder")
                continue
            sts = [St(p) for p in files]
            where = {k: s for s in sts for k in s.keys()}
            g = f[comp]
            names = set(g.keys())
            for k in sorted(names - set(where)):
                bad.append(f"{comp}/{k}: in the checkpoint only")
            for k in sorted(set(where) - names):
                bad.append(f"{comp}/{k}: in the folder only")
            for k in sorted(names & set(where)):
                ds, s = g[k], where[k]
                dt, shape = s.meta(k)
                if (h5_dtype(ds), tuple(ds.shape)) != (dt, shape):
                    bad.append(f"{comp}/{k}: {h5_dtype(ds)} {ds.shape} vs {dt} {shape}")
                    continue
                raw = s.raw(k)
                arr = np.ascontiguousarray(ds[()]).reshape(-1).view(np.uint8)
                if not np.array_equal(arr, raw):
                    bad.append(f"{comp}/{k}: bytes differ")
                n += 1
                nbytes += raw.size
            print(f"  {comp}: {len(names & set(where))} tensors", flush=True)
    return n, nbytes, bad


def main():
    args = sys.argv[1:]
    nc = None
    if "--not-carried" in args:
        i = args.index("--not-carried")
        nc = args[i + 1]
        del args[i:i + 2]
    if len(args) != 3 or args[0] not in ("single", "h5-folder"):
        print(__doc__)
        return 2
    if args[0] == "single":
        n, nbytes, bad = compare_single(args[1], args[2], nc)
    else:
        n, nbytes, bad = compare_h5_folder(args[1], args[2])
    for b in bad[:20]:
        print("  DIFF " + b)
    print(f"{args[0]}: {n} tensors, {nbytes:,} bytes compared, {len(bad)} differences: "
          f"{'IDENTICAL' if not bad else 'DIFFERENT'}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
