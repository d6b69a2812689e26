#!/usr/bin/python3
"""h5_interop.py: checks sdc's HDF5 files from the h5py side, against the
layouts documented in data/README.md (numpy + h5py only; run it with the
Debian /usr/bin/python3, which tools/setup.sh gives python3-h5py).

  h5_interop.py check FILE dataset|checkpoint|generation
  h5_interop.py compare A.h5 B.h5      every dataset and root attribute equal
                                       (except created_by / manifest)
Prints one line per check and "N passed, N failed"; exits 1 on a failure."""
import json
import sys
import zlib

try:
    import h5py
    import numpy as np
except ImportError as e:  # the test must fail, not skip: setup.sh installs h5py
    print(f"FAILED: {e}\n---> run tools/setup.sh (Debian: apt-get install python3-h5py)")
    sys.exit(1)

passed = failed = 0


def check(cond, msg):
    global passed, failed
    print(("  OK      " if cond else "  NOT OK  ") + msg)
    if cond:
        passed += 1
    else:
        failed += 1


def s(x):
    return x.decode() if isinstance(x, bytes) else x


def root(f, kind):
    check(s(f.attrs.get("sdc_kind")) == kind, f"sdc_kind == {kind!r}")
    check(int(f.attrs.get("sdc_layout_version", -1)) == 1, "sdc_layout_version == 1")


def check_dataset(f):
    root(f, "dataset")
    im = f["images"]
    n, r = im.shape[0], int(f.attrs["resolution"])
    check(im.dtype == np.uint8 and im.shape == (n, r, r, 3), f"images u8 {im.shape} == (N, {r}, {r}, 3)")
    check(im.chunks == (1, r, r, 3) and im.compression == "gzip", "images: one image per chunk, deflate")
    check(int(f.attrs["count"]) == n, "count attribute == N")
    caps = f["captions"].asstr()[:]
    check(len(caps) == n and all(isinstance(c, str) for c in caps), "captions: N UTF-8 strings")
    check(len(f["sources"].asstr()[:]) == n, "sources: N strings")
    check(int(f.attrs["center_crop"]) in (0, 1), "center_crop attribute 0/1")
    if "latents" in f:
        la = f["latents"]
        check(la.shape[0] == n and la.ndim == 4 and la.dtype in (np.float16, np.float32),
              f"latents {la.dtype} {la.shape}: (N, 4, h, w) f16/f32")
        check(int(la.attrs["scaling_factor_applied"]) == 1 and float(la.attrs["scaling_factor"]) > 0,
              "latents: scaling_factor attribute, applied")
        check(np.isfinite(la[:].astype(np.float32)).all(), "latents finite")
    check(im[:].std() > 0, "images are not blank")


def check_checkpoint(f):
    root(f, "checkpoint")
    check("step" in f["state"].attrs, "/state has step (written last)")
    check(f["state"].attrs["rng_state"].shape == (4,), "/state rng_state: 4 u64")
    check("optimizer" in f, "/optimizer group exists")
    bad, n = 0, 0
    for g in ("text_encoder", "unet", "vae"):
        check(g in f, f"group /{g}")
        cfg = json.loads(s(f[g].attrs["config"]))
        check(isinstance(cfg, dict) and len(cfg) > 3, f"/{g} config attribute is a JSON object")
        for name, d in f[g].items():
            n += 1
            tag = s(d.attrs["dtype"])
            raw = d[()]
            want = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "i32": np.int32, "i64": np.int64, "u8": np.uint8}[tag]
            if raw.dtype != want or (zlib.crc32(np.ascontiguousarray(raw).tobytes()) & 0xFFFFFFFF) != int(d.attrs["crc32"]):
                bad += 1
    check(n > 0 and bad == 0, f"{n} tensors: dtype tag matches the stored type and crc32 matches the bytes")
    check("unet/conv_in.weight" in f and f["unet/conv_in.weight"].ndim == 4, "h5py finds /unet/conv_in.weight")
    try:
        mi = json.loads(s(f.attrs["model_index"]))
    except (KeyError, ValueError):
        mi = None
    check(isinstance(mi, dict), "model_index attribute is a JSON object")


def check_generation(f):
    root(f, "generation")
    im = f["images"]
    n = im.shape[0]
    check(im.dtype == np.uint8 and im.ndim == 4 and im.shape[3] == 3, f"images u8 {im.shape}")
    # contiguous and not deflated since the kill campaign (writing an image
    # changes no metadata, so a kill cannot corrupt the file); older files:
    # one image per deflated chunk
    check((im.chunks is None and im.compression is None) or
          (im.chunks == (1,) + im.shape[1:] and im.compression == "gzip"),
          f"images contiguous (or, in an older file, deflated chunks of one image): chunks {im.chunks}, "
          f"compression {im.compression}")
    for k, dt in (("seed", np.int64), ("steps", np.int32), ("width", np.int32), ("height", np.int32),
                  ("cfg", np.float32), ("strength", np.float32), ("done", np.uint8)):
        check(f[k].dtype == dt and f[k].shape == (n,), f"{k} {dt.__name__} [N]")
    for k in ("prompt", "negative_prompt", "sampler", "model_hash"):
        v = f[k].asstr()[:]
        check(len(v) == n, f"{k}: N strings")
    check(all(len(h) == 10 for h in f["model_hash"].asstr()[:]), "model_hash: 10 hex digits (A1111 style)")
    done = f["done"][:]
    check(((done == 0) | (done == 1)).all(), "done is 0/1")
    check(int(f["width"][0]) == im.shape[2] and int(f["height"][0]) == im.shape[1], "width/height match images")


def compare(a, b):
    fa, fb = h5py.File(a, "r"), h5py.File(b, "r")
    keys = set()
    fa.visit(keys.add)
    keysb = set()
    fb.visit(keysb.add)
    check(keys == keysb, f"same objects ({len(keys)})")
    for k in sorted(keys & keysb):
        if isinstance(fa[k], h5py.Dataset):
            x, y = fa[k][()], fb[k][()]
            check(np.array_equal(x, y), f"{k} equal {getattr(x, 'shape', '')}")
    for k, v in fa.attrs.items():
        if k in ("created_by", "manifest"):
            continue
        check(k in fb.attrs and np.array_equal(np.asarray(v), np.asarray(fb.attrs[k])), f"root attribute {k} equal")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        with h5py.File(sys.argv[2], "r") as f:
            {"dataset": check_dataset, "checkpoint": check_checkpoint, "generation": check_generation}[sys.argv[3]](f)
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        sys.exit(2)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


main()
