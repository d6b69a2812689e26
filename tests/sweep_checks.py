#!/usr/bin/python3
"""sweep_checks.py SDC MODEL WORK: end-to-end checks of generation sweeps
(`sdc generate` with lists for --cfg-scale / --sampler / --steps, --from-file,
--shard; jobs/runner.c), run by CTest on the shipped demo model at 64 px.

  - the items come in the documented order with the documented seeds and
    settings (jobs/sdc.proto), in HDF5 and as PNGs (names and A1111 text);
  - every item's image is the image of a plain `sdc generate` with that
    item's settings;
  - 1 and 3 MPI ranks write the same file; three shards (--shard I/3, and
    `sdc run --shard`) together hold exactly the items of the whole sweep;
  - pipeline stages (--pipeline-stages, mpi/pp.h): 2, 2 x 2 replicas and 3
    stages with 1 to 5 runs in flight give the same file bit for bit;
  - kohya's per-line prompt-file options; <lora:NAME:WEIGHT> prompt tags
    (--lora-model-dir) give --lora's pixels; --vae from an A1111 VAE file, a
    diffusers vae/ folder or a checkpoint;
  - a file of another sweep is refused; a bad list, shard, prompt option or
    LoRA tag is refused.
numpy + h5py (/usr/bin/python3: Debian's python3-h5py). Prints one line per
check and "N passed, N failed"; exits 1 on a failure."""
import os
import shutil
import sys
import time
import json
import struct
import zlib

from checklib import check, finish, refused, run, show

try:
    import h5py
    import numpy as np
except ImportError as e:  # the test must fail, not skip: setup.sh installs h5py
    print(f"FAILED: {e}\n---> run tools/setup.sh (Debian: apt-get install python3-h5py)")
    sys.exit(1)

def png(path):
    """(pixels as a u8 array (H, W, 3), the `parameters` text) of an sdc PNG."""
    d = open(path, "rb").read()
    pos, idat, w, h, text = 8, b"", 0, 0, ""
    while pos < len(d):
        n, kind = struct.unpack(">I4s", d[pos:pos + 8])
        body = d[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt" and body.startswith(b"parameters\0"):
            text = body[11:].decode("latin-1")
        elif kind == b"iTXt" and body.startswith(b"parameters\0"):
            text = body.split(b"\0", 5)[-1].decode("utf-8")
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    out = np.zeros((h, 3 * w), np.int32)
    for y in range(h):  # PNG filters (sdc writes whatever libpng picks)
        f, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(3 * w, np.int32)
        if f == 0:
            cur = row
        elif f == 2:
            cur = (row + prev) & 255
        else:
            cur = np.zeros(3 * w, np.int32)
            for x in range(3 * w):
                a = cur[x - 3] if x >= 3 else 0
                b, c = prev[x], (prev[x - 3] if x >= 3 else 0)
                if f == 1:
                    p = a
                elif f == 3:
                    p = (a + b) // 2
                else:
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (row[x] + p) & 255
        out[y] = cur
    return out.reshape(h, w, 3).astype(np.uint8), text


def st_read(path):
    """A .safetensors file: (header dict, data bytes)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), f.read()


def st_write(path, header, tensors):
    """Writes name -> raw bytes with the dtypes/shapes of header (same names)."""
    hdr, off, blobs = {}, 0, []
    for name in sorted(tensors):
        b = tensors[name]
        hdr[name] = {"dtype": header[name]["dtype"], "shape": header[name]["shape"], "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def h5(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("images", "prompt", "sampler", "seed", "steps", "cfg", "done", "sweep_index")}


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(2)
    sdc, model, work = sys.argv[1:]
    src_dir = os.path.dirname(os.path.abspath(__file__))  # tests/
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t0 = time.time()
    with open(os.path.join(work, "prompts.txt"), "w") as f:
        f.write("a cat\n\n   \na house by the sea\r\n")
    # 3 prompts x 2 cfg x 2 samplers x 2 steps x 2 seeds = 48 items, batches of 2
    base = [sdc, "generate", "-m", model, "-p", "a red fox", "--from-file", os.path.join(work, "prompts.txt"),
            "-W", 64, "-H", 64, "--cfg-scale", "1,7.5", "--sampler", "euler_a,dpm++2m", "--steps", "2,3", "-b", 2,
            "--batch-size", 2, "-s", 100, "-t", 1]
    full = os.path.join(work, "full.h5")
    rc, out = run(base + ["--output-h5", full])
    if not check(rc == 0 and "sweep of 48 items (3 prompts x 2 cfg x 2 sampler x 2 steps x 2 seeds)" in out,
                 f"sweep into HDF5: exit {rc}, 48 items announced"):
        show(out)
        sys.exit(1)
    A = h5(full)
    prompts = ["a red fox", "a cat", "a house by the sea"]
    want = [(p, c, s, t, 100 + pi * 2 + b) for pi, p in enumerate(prompts) for c in (1.0, 7.5)
            for s in ("Euler a", "DPM++ 2M") for t in (2, 3) for b in (0, 1)]
    got = [(A["prompt"][i].decode(), float(A["cfg"][i]), A["sampler"][i].decode(), int(A["steps"][i]),
            int(A["seed"][i])) for i in range(len(A["seed"]))]
    check(got == want and list(A["sweep_index"]) == list(range(48)) and A["done"].all(),
          "items in the documented order: prompt, cfg, sampler, steps, seeds (seed + prompt x batch_count + k); "
          f"sweep_index 0..47; all done ({sum(a == b for a, b in zip(got, want))} of 48 match)")
    distinct = len({A["images"][i].tobytes() for i in range(48)})
    check(distinct == 48, f"48 distinct images ({distinct})")

    # each item == a plain generate with its settings (same batch of 2 seeds)
    bad = []
    for i in (0, 13, 22, 47):
        p, c, s, t, seed = want[i]
        sname = {"Euler a": "euler_a", "DPM++ 2M": "dpm++2m"}[s]
        o = os.path.join(work, f"one{i}.png")
        rc, out = run([sdc, "generate", "-q", "-m", model, "-p", p, "-W", 64, "-H", 64, "--cfg-scale", c, "--sampler",
                       sname, "--steps", t, "-s", seed - i % 2, "-b", 2, "--batch-size", 2, "-t", 1, "-o", o])
        path = o if i % 2 == 0 else o.replace(".png", "_2.png")
        if rc or not os.path.exists(path) or not np.array_equal(png(path)[0], A["images"][i]):
            bad.append(i)
    check(not bad, f"items 0, 13, 22, 47 equal a plain sdc generate with their prompt, cfg, sampler, steps and seed "
          f"(differ: {bad})")

    # ranks and shards
    r3 = os.path.join(work, "r3.h5")
    rc, out = run(base + ["--output-h5", r3, "-q"], ranks=3)
    B = h5(r3) if rc == 0 else None
    check(rc == 0 and all(np.array_equal(A[k], B[k]) for k in A),
          f"3 MPI ranks write the same file as 1 (exit {rc})")
    sh = os.path.join(work, "sh.h5")
    manifest = os.path.join(work, "sweep.txtpb")
    rc1, text = run(base + ["--output-h5", sh, "--dump-manifest"])
    open(manifest, "w").write(text)
    parts, rcs = [], []
    for k in range(3):  # shard 0 and 2 from the command line, shard 1 through sdc run
        rc, out = run(base + ["--output-h5", sh, "--shard", f"{k}/3", "-q"]) if k != 1 else \
            run([sdc, "run", manifest, "--shard", "1/3", "-q"])
        rcs.append(rc)
        path = os.path.join(work, f"sh-{k + 1:05d}-of-00003.h5")
        if rc == 0 and os.path.exists(path):
            parts.append(h5(path))
    idx = np.concatenate([p["sweep_index"] for p in parts]) if len(parts) == 3 else np.zeros(0)
    ok = len(parts) == 3 and list(idx) == list(range(48)) and \
        all(np.array_equal(np.concatenate([p[k] for p in parts]), A[k]) for k in A if k != "done")
    check(ok, f"3 shards (sh-0000K-of-00003.h5; exits {rcs}, {[len(p['seed']) for p in parts]} items) hold "
          "exactly the sweep's 48 items, images included")

    # PNG output: names by sweep item, A1111 text with the item's settings
    o = os.path.join(work, "p.png")
    rc, out = run(base + ["-o", o, "-q"])
    names = sorted(f for f in os.listdir(work) if f.startswith("p") and f.endswith(".png"))
    img, text = png(os.path.join(work, "p_14.png")) if os.path.exists(os.path.join(work, "p_14.png")) else (None, "")
    check(rc == 0 and len(names) == 48 and img is not None and np.array_equal(img, A["images"][13]) and
          text.startswith(want[13][0] + "\n") and
          f"Steps: {want[13][3]}, Sampler: {want[13][2]}, CFG scale: {want[13][1]:g}, Seed: {want[13][4]}," in text,
          f"sweep as PNGs: {len(names)} files, p_14.png = item 13 with its parameters ('{text.splitlines()[-1] if text else ''}')")

    # pipeline stages: the UNet cut over ranks, several runs (of --batch-size
    # items) in flight; a run's rows are never split, so every configuration
    # makes the single process's file bit for bit
    for name, ranks, extra in (("pp2", 2, ["--pipeline-stages", 2]),
                               ("pp2-m1", 2, ["--pipeline-stages", 2, "--micro-batches", 1]),
                               ("pp2x2", 4, ["--pipeline-stages", 2, "--micro-batches", 3]),
                               ("pp3", 3, ["--pipeline-stages", 3, "--micro-batches", 5]),
                               ("pp3-cut", 3, ["--pipeline-stages", 3, "--pipeline-cut", "1,15"])):
        path = os.path.join(work, name + ".h5")
        rc, out = run(base + ["--output-h5", path] + extra, ranks=ranks)
        cut = [l for l in out.splitlines() if "sdc: pipeline:" in l]
        given = "--pipeline-cut" not in extra or (cut and "blocks 0-0, 1-14, 15-16 (--pipeline-cut)" in cut[0])
        P = h5(path) if rc == 0 else None
        if not check(rc == 0 and given and all(np.array_equal(A[k], P[k]) for k in A),
                     f"{name}: {cut[0].split('pipeline: ')[1] if cut else ''}: the same file as 1 process, bit for "
                     f"bit (exit {rc})"):
            show(out)
    rc, out = run(base + ["--output-h5", os.path.join(work, "bad.h5"), "--pipeline-stages", 2], ranks=3)
    check(refused(rc) and "--pipeline-stages 2 does not divide the 3 ranks" in out,
          f"--pipeline-stages 2 on 3 ranks refused, naming both numbers (exit {rc})")
    rc, out = run(base + ["--output-h5", os.path.join(work, "bad.h5"), "--pipeline-stages", 2, "--pipeline-cut",
                          "17"], ranks=2)
    check(refused(rc) and "--pipeline-cut \"17\": block 17 is past the last block" in out,
          f"--pipeline-cut 17 of a 17-block UNet refused (exit {rc})")

    # kohya's per-line options in a prompt file (--n --d --s --l --ss --w --h; '#' comments)
    kp = os.path.join(work, "kohya.txt")
    with open(kp, "w") as f:
        f.write("# sample prompts\na red fox --n blurry, lowres --d 1234 --s 3 --l 5.5\n"
                "  a cat --ss dpm++2m --w 64 --h 64\n")
    ko = os.path.join(work, "k.h5")
    rc, out = run([sdc, "generate", "-q", "-m", model, "--from-file", kp, "-W", 64, "-H", 64, "--steps", 2, "-b", 2,
                   "-t", 1, "--output-h5", ko])
    K = h5(ko) if rc == 0 else None
    with h5py.File(ko, "r") as f:
        neg = [x.decode() for x in f["negative_prompt"][()]] if rc == 0 else []
    got = [(K["prompt"][i].decode(), neg[i], int(K["seed"][i]), int(K["steps"][i]), float(K["cfg"][i]),
            K["sampler"][i].decode()) for i in range(4)] if K else []
    want = [("a red fox", "blurry, lowres", 1234, 3, 5.5, "Euler"), ("a red fox", "blurry, lowres", 1235, 3, 5.5,
            "Euler"), ("a cat", "", 44, 2, 7.0, "DPM++ 2M"), ("a cat", "", 45, 2, 7.0, "DPM++ 2M")]
    o = os.path.join(work, "kref.png")
    rc2, _ = run([sdc, "generate", "-q", "-m", model, "-p", "a red fox", "-n", "blurry, lowres", "-s", 1234, "--steps",
                  3, "--cfg-scale", 5.5, "-W", 64, "-H", 64, "-b", 2, "-t", 1, "-o", o])
    same = rc2 == 0 and K is not None and np.array_equal(png(o.replace(".png", "_2.png"))[0], K["images"][1])
    check(rc == 0 and got == want and same, f"kohya prompt-file options: items {got == want and 'as the lines say' or got}"
          f"; item 1 equals sdc generate -p 'a red fox' -n 'blurry, lowres' -s 1234 --steps 3 --cfg-scale 5.5: {same}")
    for line, needle in (("x --w 128", "one size per run"), ("x --zz 1", "not understood")):
        with open(kp, "w") as f:
            f.write(line + "\n")
        rc, out = run([sdc, "generate", "-m", model, "--from-file", kp, "-W", 64, "-H", 64, "-o", o])
        check(refused(rc) and needle in out, f"prompt line '{line}' refused: exit {rc}")

    # <lora:NAME:WEIGHT> in prompts (A1111 / stable-diffusion.cpp) from --lora-model-dir: the same pixels as
    # --lora FILE:WEIGHT, the tag kept in the PNG's parameters, out of the text the encoder sees
    ld = os.path.join(work, "loras")
    os.makedirs(ld)
    src = os.path.join(src_dir, "fixtures", "lora-demo-kohya.safetensors")
    shutil.copy(src, os.path.join(ld, "demo.safetensors"))
    ta, tb, tc = (os.path.join(work, f"tag{x}.png") for x in "abc")
    one = [sdc, "generate", "-q", "-m", model, "-W", 64, "-H", 64, "--steps", 3, "-t", 1]
    rc1, _ = run(one + ["-p", "a cat, <lora:demo:0.7>", "--lora-model-dir", ld, "-o", ta])
    rc2, _ = run(one + ["-p", "a cat", "--lora", os.path.join(ld, "demo.safetensors") + ":0.7", "-o", tb])
    rc3, _ = run(one + ["-p", "a cat", "-o", tc])
    ok = rc1 == rc2 == rc3 == 0
    pa, text = png(ta) if ok else (None, "")
    check(ok and np.array_equal(pa, png(tb)[0]) and not np.array_equal(pa, png(tc)[0]) and
          text.startswith("a cat, <lora:demo:0.7>\n"),
          f"'a cat, <lora:demo:0.7>' with --lora-model-dir = 'a cat' with --lora demo.safetensors:0.7, pixel for "
          f"pixel, != no LoRA; the PNG records '{text.splitlines()[0] if text else ''}' (exits {rc1}, {rc2}, {rc3})")
    for args, needle in ((["-p", "a cat <lora:demo:0.7>", "-p", "a dog", "--lora-model-dir", ld], "other LoRAs"),
                         (["-p", "a cat <lora:demo>"], "--lora-model-dir"),
                         (["-p", "a cat <lora:nope:1>", "--lora-model-dir", ld], "nope.safetensors"),
                         (["-p", "a cat <lora:demo:x>", "--lora-model-dir", ld], "not a weight")):
        rc, out = run([sdc, "generate", "-m", model, "-W", 64, "-H", 64, "-o", tc] + args)
        check(refused(rc) and needle in out, f"{' '.join(args[1:2])} refused: exit {rc}, "
              f"'{out.strip().splitlines()[-1][:100] if out.strip() else ''}'")

    # --vae: the VAE from another file. The demo model's own VAE as an A1111 VAE file (no first_stage_model.
    # prefix), as a diffusers vae/ folder (sdc convert) and inside a whole checkpoint gives the same pixels;
    # an A1111 VAE file with one bias changed gives the pixels of a checkpoint with that change
    hdr, data = st_read(model)
    raw = {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in hdr.items() if k != "__metadata__"}
    vp = "first_stage_model."
    a1111 = os.path.join(work, "vae-a1111.safetensors")
    st_write(a1111, {k[len(vp):]: v for k, v in hdr.items() if k.startswith(vp)},
             {k[len(vp):]: v for k, v in raw.items() if k.startswith(vp)})
    bias = vp + "decoder.conv_out.bias"
    changed = dict(raw)
    bt = {"F32": np.float32, "F16": np.float16}[hdr[bias]["dtype"]]
    changed[bias] = (np.frombuffer(raw[bias], bt).astype(np.float32) + 0.25).astype(bt).tobytes()
    a1111b = os.path.join(work, "vae-a1111-b.safetensors")
    st_write(a1111b, {k[len(vp):]: v for k, v in hdr.items() if k.startswith(vp)},
             {k[len(vp):]: v for k, v in changed.items() if k.startswith(vp)})
    fullb = os.path.join(work, "model-b.safetensors")
    st_write(fullb, hdr, changed)
    conv = os.path.join(work, "demo-diffusers")
    rcc, _ = run([sdc, "convert", "-q", "-m", model, "-o", conv])
    one = [sdc, "generate", "-q", "-W", 64, "-H", 64, "--steps", 3, "-t", 1, "-p", "a red fox"]
    outs = {}
    for name, args in (("plain", ["-m", model]), ("a1111", ["-m", model, "--vae", a1111]),
                       ("folder", ["-m", model, "--vae", os.path.join(conv, "vae")]),
                       ("ckpt", ["-m", model, "--vae", model]), ("a1111-b", ["-m", model, "--vae", a1111b]),
                       ("full-b", ["-m", fullb])):
        o = os.path.join(work, f"vae-{name}.png")
        rc, out = run(one + args + ["-o", o])
        outs[name] = png(o)[0] if rc == 0 else None
    ok = rcc == 0 and all(v is not None for v in outs.values())
    same = ok and all(np.array_equal(outs["plain"], outs[k]) for k in ("a1111", "folder", "ckpt"))
    moved = ok and np.array_equal(outs["a1111-b"], outs["full-b"]) and not np.array_equal(outs["a1111-b"],
                                                                                         outs["plain"])
    check(same and moved, f"--vae: the model's VAE as an A1111 file, a diffusers vae/ folder and a checkpoint "
          f"gives its pixels ({same}); an A1111 VAE with decoder.conv_out.bias + 0.25 gives the pixels of a "
          f"checkpoint with that change, not the original's ({moved})")
    # an HDF5 sweep is one model's: resuming it with another model (model-b) is refused
    rc, out = run([sdc, "generate", "-m", fullb, "-W", 64, "-H", 64, "-p", "x", "--output-h5",
                   os.path.join(work, "one-model.h5")])
    rc2, out2 = run([sdc, "generate", "-m", model, "-W", 64, "-H", 64, "-p", "x", "--output-h5",
                     os.path.join(work, "one-model.h5")])
    check(rc == 0 and refused(rc2) and "a sweep is one model's" in out2, f"an HDF5 sweep resumed with another model "
          f"refused (exits {rc}, {rc2})")
    for args, needle in ((["--vae", os.path.join(work, "none.safetensors")], "no such file"),
                         (["--vae", os.path.join(src_dir, "fixtures", "lora-demo-kohya.safetensors")], "no VAE tensors")):
        rc, out = run([sdc, "generate", "-m", model, "-W", 64, "-H", 64, "-p", "x", "-o", os.path.join(work, "e.png")]
                      + args)
        check(refused(rc) and needle in out, f"--vae {os.path.basename(args[1])} refused: exit {rc}, "
              f"'{out.strip().splitlines()[-1][:100] if out.strip() else ''}'")

    # refused: another sweep's file, bad lists, bad shards
    rc, out = run(base[:-6] + ["--cfg-scale", "1,8", "--sampler", "euler_a,dpm++2m", "--steps", "2,3", "-t", 1,
                                "--output-h5", full])
    check(refused(rc) and "belongs to another sweep" in out, f"another sweep into the same file refused (exit {rc})")
    for args, needle in ((["--steps", "2,,3"], "expected one value or a list"),
                         (["--cfg-scale", "1,x"], "expected a number"),
                         (["--sampler", "euler,nope"], "nope"),
                         (["--shard", "3/3"], "0 <= I < N"),
                         (["--from-file", os.path.join(work, "missing.txt")], "cannot open")):
        rc, out = run([sdc, "generate", "-m", model, "-p", "x", "-W", 64, "-H", 64, "-o", os.path.join(work, "e.png")]
                      + args)
        check(refused(rc) and needle in out, f"{' '.join(args)} refused: exit {rc}, '{out.strip().splitlines()[-1][:100]}'")
    finish(time.time() - t0)


if __name__ == "__main__":
    main()
