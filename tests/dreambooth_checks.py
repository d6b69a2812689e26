#!/usr/bin/python3
"""dreambooth_checks.py: end-to-end checks of `sdc train dreambooth`
(jobs/train_runner.c, src/train/dreambooth.c), run by CTest (tests/tests.cmake)
on the shipped demo model at 64 px, a few steps, one thread per process.

  dreambooth_checks.py resume SDC MODEL SRC WORK   killed and resumed == uninterrupted,
                                                   bit for bit (full and LoRA)
  dreambooth_checks.py mpi    SDC MODEL SRC WORK   1, 2 and 4 MPI ranks agree
  dreambooth_checks.py bad    SDC MODEL SRC WORK   bad input: clear errors; a diverging
                                                   run stops, its checkpoints stay usable
  dreambooth_checks.py stop   SDC MODEL SRC WORK   SIGUSR1 mid-run (one rank of two too):
                                                   exit 75 with a checkpoint of that step;
                                                   resumed == uninterrupted; a generation
                                                   sweep stopped and re-run == uninterrupted
  dreambooth_checks.py layouts SDC MODEL SRC WORK  pipeline stages x replicas (GPipe, 1F1B,
                                                   checkpointing, ZeRO-1, LoRA, every cut of 2
                                                   stages) == one process; stopped on 2 stages,
                                                   resumed on 1 and 3; bad layouts refused; a
                                                   killed rank, or one whose step fails alone,
                                                   ends the job
  dreambooth_checks.py xl     SDC MODEL SRC WORK   SDXL LoRA (MODEL the tiny SDXL folder): the
                                                   import's sizes and crops; killed and resumed,
                                                   SIGUSR1 and resumed == uninterrupted; 2 ranks
                                                   agree with 1; 2 pipeline stages == one process
  dreambooth_checks.py xlte   SDC MODEL SRC WORK   SDXL --train-text-encoder (MODEL the tiny SDXL
                                                   folder): LoRA on the UNet and both encoders, and
                                                   full fine-tuning of all three, killed and resumed
                                                   == uninterrupted bit for bit (LoRA file with
                                                   text_encoder_2's tensors; model.h5 with
                                                   /text_encoder_2); 2 pipeline stages == one
                                                   process; ZeRO-1 over 2 ranks == 2 ranks
  dreambooth_checks.py captions SDC MODEL SRC WORK --use-captions: captions equal to the prompts
                                                   == the prompts' run bit for bit (text encoder
                                                   frozen and trained, prior preservation);
                                                   other instance or class captions train other
                                                   weights; missing captions: --instance-prompt,
                                                   or a refusal naming the photos

SDC is the sdc binary, MODEL the demo model, SRC the source root (the photos
are SRC/../shared/data/dreambooth/dog, or a few fixture images when that is
absent), WORK an empty scratch folder (removed first). numpy + h5py only
(/usr/bin/python3: Debian's python3-h5py). Prints one line per check with its
figures and "N passed, N failed"; exits 1 on a failure. This is a test, not a
tool: it knows the output folder layout jobs/train_runner.c documents."""
import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

from checklib import MPIEXEC, check, finish, refused, show

try:
    import h5py
    import numpy as np
except ImportError as e:  # the test must fail, not skip: setup.sh installs h5py
    print(f"FAILED: {e}\n---> run tools/setup.sh (Debian: apt-get install python3-h5py)")
    sys.exit(1)

# ---------------------------------------------------------------------------
# running sdc
# ---------------------------------------------------------------------------

class Ctx:
    def __init__(self, sdc, model, src, work):
        self.sdc, self.model, self.src, self.work = sdc, model, src, work
        self.xl = False
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        dog = os.path.join(src, "..", "shared", "data", "dreambooth", "dog")
        if os.path.isdir(dog):
            self.photos = os.path.normpath(dog)
        else:  # CI without the shared photos: five fixture images of various sizes
            self.photos = os.path.join(work, "photos")
            os.makedirs(self.photos)
            for f in ("src97x61.png", "tall61x90.png", "rgb.png", "interlaced.png", "progressive.jpg"):
                shutil.copy(os.path.join(src, "tests", "fixtures", "images", f), self.photos)
        print(f"  instance photos: {self.photos}", flush=True)

    def train_args(self, out, *extra):
        return [self.sdc, "train", "dreambooth", "--pretrained-model", self.model, "--instance-data", self.photos,
                "--instance-prompt", "a photo of sks dog", "--resolution", "64", "--output-dir", out, "-t", "1",
                *extra]

    def run(self, args, ranks=0, timeout=300, env=None):
        """Runs args (under mpiexec -n ranks when ranks > 0); returns (rc, stderr + stdout, seconds)."""
        cmd = (MPIEXEC + ["-n", str(ranks)] if ranks else []) + [str(a) for a in args]
        if env and ranks:  # mpiexec passes only what -x names
            cmd[len(MPIEXEC):len(MPIEXEC)] = [x for k in env for x in ("-x", f"{k}={env[k]}")]
        return run_killable(cmd, dict(os.environ, OMP_NUM_THREADS="1", **(env or {})), timeout)


# ---------------------------------------------------------------------------
# reading the outputs
# ---------------------------------------------------------------------------

def metrics(path):
    """step -> the metrics.jsonl record of that step (the last line wins: a
    resumed run appends the steps it redoes). Event lines ({"event": ...}) are
    left out."""
    m = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if "event" not in r:
                    m[int(r["step"])] = r
    return m


def metric_lines(path):
    """The step lines of metrics.jsonl (redone steps counted twice)."""
    with open(path) as f:
        return sum(1 for line in f if line.strip() and "event" not in json.loads(line))


def h5_weights(path, groups=("unet", "text_encoder", "text_encoder_2")):
    """name -> f32 array of every dataset under the groups of an sdc checkpoint."""
    w = {}
    with h5py.File(path, "r") as f:
        for g in groups:
            if g in f:
                f[g].visititems(lambda k, v, g=g: w.__setitem__(f"{g}/{k}", v[()]) if isinstance(v, h5py.Dataset)
                                else None)
    return w


def safetensors_read(path):
    """name -> numpy array (F32 / F16 / BF16 kept as raw bits where numpy lacks the type)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    types = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I64": np.int64,
             "I32": np.int32}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=types[v["dtype"]]).reshape(v["shape"])
    return out


def png_pixels(path):
    """The decompressed IDAT stream of a PNG (filtered rows: equal for equal
    pixels from the same encoder; the text chunks are left out)."""
    import zlib
    with open(path, "rb") as f:
        d = f.read()[8:]
    idat = b""
    while d:
        n = struct.unpack(">I", d[:4])[0]
        if d[4:8] == b"IDAT":
            idat += d[8:8 + n]
        d = d[12 + n:]
    return zlib.decompress(idat)


def bits_equal(x, y):
    """Same shape and the same bytes (so -0 != 0 and NaN == the same NaN)."""
    return x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()


def compare_exact(wa, wb, what):
    """Every tensor of wa and wb bit-identical; prints the count and the worst difference."""
    names_ok = check(set(wa) == set(wb), f"{what}: the same {len(wa)} tensors in both "
                     f"({len(set(wa) ^ set(wb))} names differ)")
    diff = [k for k in sorted(set(wa) & set(wb)) if not bits_equal(wa[k], wb[k])]
    n_el = sum(v.size for v in wa.values())
    worst = max((float(np.max(np.abs(wa[k].astype(np.float64) - wb[k].astype(np.float64))))
                 for k in diff if wa[k].shape == wb[k].shape), default=0.0)
    check(names_ok and not diff, f"{what}: {len(wa)} tensors, {n_el} values bit-identical "
          f"({len(diff)} tensors differ, max |diff| {worst:.3g}{', e.g. ' + diff[0] if diff else ''})")


# ---------------------------------------------------------------------------
# 1. killed and resumed == uninterrupted
# ---------------------------------------------------------------------------

def kill_after_checkpoint(name, args, out, first_ckpt, max_steps, log):
    """Starts args in the background and SIGKILLs it as soon as
    checkpoint-<first_ckpt or later>.h5 exists. Returns (step of that
    checkpoint, steps logged at the kill) or None (finished first / no checkpoint)."""
    with open(log, "w") as lf:
        p = subprocess.Popen([str(a) for a in args], stdout=lf, stderr=subprocess.STDOUT,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    seen, t0 = None, time.time()
    while p.poll() is None and time.time() - t0 < 240:
        for f in os.listdir(out) if os.path.isdir(out) else []:
            if f.startswith("checkpoint-") and f.endswith(".h5") and int(f[11:-3]) >= first_ckpt:
                seen = int(f[11:-3])
        if seen is not None:
            break
        time.sleep(0.002)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        killed = p.returncode == -signal.SIGKILL
    else:
        killed = False
    with open(log) as f:
        text = f.read()
    if not check(killed and seen is not None,
                 f"{name}: run B SIGKILLed after checkpoint-{seen}.h5 appeared (exit {p.returncode})" if killed else
                 f"{name}: run B could not be killed mid-run: it ended (exit {p.returncode}) before "
                 f"checkpoint-{first_ckpt}.h5 was seen or the kill\n"
                 f"          ---> raise --max-train-steps (now {max_steps}) so that the kill lands mid-run"):
        show(text)
        return None
    mp = os.path.join(out, "metrics.jsonl")
    logged = max(metrics(mp)) if os.path.exists(mp) and os.path.getsize(mp) else 0
    if not check(not os.path.exists(os.path.join(out, "model.h5")) and
                 not os.path.exists(os.path.join(out, "pytorch_lora_weights.safetensors")) and seen < max_steps,
                 f"{name}: run B killed mid-run: {logged} of {max_steps} steps logged, latest checkpoint {seen}, "
                 f"no export"):
        return None
    return seen, logged


def resume_variant(ctx, name, extra, steps):
    """Run A straight through; run B killed after its first checkpoint and
    resumed from `latest`; the results compared bit for bit."""
    a, b = os.path.join(ctx.work, name + "-A"), os.path.join(ctx.work, name + "-B")
    args = lambda out: ctx.train_args(out, "--max-train-steps", steps, *extra)
    rc, out, sa = ctx.run(args(a) + ["-q"])
    if not check(rc == 0, f"{name}: run A, {steps} steps uninterrupted: exit {rc} ({sa:.1f} s)"):
        show(out)
        return
    t0 = time.time()
    k = kill_after_checkpoint(name, args(b), b, 3, steps, os.path.join(ctx.work, name + "-B1.log"))
    if k is None:
        return
    ck, logged = k
    rc, out, _ = ctx.run(args(b) + ["--resume-from-checkpoint", "latest"])
    sb = time.time() - t0
    resumed = [l for l in out.splitlines() if "resumed from" in l]
    if not check(rc == 0 and resumed and f"checkpoint-{ck}.h5 at step {ck}" in resumed[0],
                 f"{name}: run B resumed: exit {rc}, '{resumed[0].strip() if resumed else 'no resume message'}' "
                 f"(killed at step {logged}, kill + resume {sb:.1f} s)"):
        show(out)
        return
    ma, mb = metrics(os.path.join(a, "metrics.jsonl")), metrics(os.path.join(b, "metrics.jsonl"))
    nb = metric_lines(os.path.join(b, "metrics.jsonl"))
    check(sorted(ma) == list(range(1, steps + 1)) and sorted(mb) == sorted(ma),
          f"{name}: metrics.jsonl: steps 1..{steps} in A ({len(ma)}) and in B ({len(mb)} steps, {nb} lines: "
          f"{nb - steps} redone after the resume)")
    keys = ("loss", "loss_prior", "lr", "grad_norm")
    bad = [(s, key) for s in sorted(set(ma) & set(mb)) for key in keys if ma[s][key] != mb[s][key]]
    first = f", first: step {bad[0][0]} {bad[0][1]} {ma[bad[0][0]][bad[0][1]]!r} vs {mb[bad[0][0]][bad[0][1]]!r}" \
        if bad else ""
    check(not bad, f"{name}: loss, loss_prior, lr, grad_norm equal at every step "
          f"(A: loss {ma[1]['loss']:.6g} at step 1 -> {ma[max(ma)]['loss']:.6g} at step {max(ma)}; "
          f"{len(bad)} values differ{first})")
    if "--lora-rank" in extra:
        fa = os.path.join(a, "pytorch_lora_weights.safetensors")
        fb = os.path.join(b, "pytorch_lora_weights.safetensors")
        if check(os.path.exists(fa) and os.path.exists(fb), f"{name}: pytorch_lora_weights.safetensors in A and B"):
            wa, wb = safetensors_read(fa), safetensors_read(fb)
            ups = [v for k, v in wa.items() if "lora_B" in k or "lora.up" in k or "lora_up" in k]
            moved = max((float(np.max(np.abs(v.astype(np.float32)))) for v in ups), default=0.0)
            check(moved > 0, f"{name}: the LoRA was trained (max |up| {moved:.3g}; it starts at 0)")
            compare_exact(wa, wb, f"{name}: LoRA tensors")
            # the trained LoRA loads into sdc generate on the model it was trained on
            png = os.path.join(ctx.work, name + ".png")
            rc, out, _ = ctx.run([ctx.sdc, "generate", "-q", "-m", ctx.model, "-p", "a photo of sks dog", "-W", 64,
                                  "-H", 64, "--steps", 2, "-t", 1, "--lora", fa, "-o", png])
            if not check(rc == 0 and os.path.exists(png), f"{name}: sdc generate --lora takes it: exit {rc}"):
                show(out)
    else:
        wa, wb = h5_weights(os.path.join(a, "model.h5")), h5_weights(os.path.join(b, "model.h5"))
        check(any(k.startswith("text_encoder/") for k in wa), f"{name}: model.h5 holds the trained text encoder")
        if ctx.xl:
            check(any(k.startswith("text_encoder_2/") for k in wa), f"{name}: model.h5 holds text_encoder_2")
        compare_exact(wa, wb, f"{name}: model.h5 /unet, /text_encoder{', /text_encoder_2' if ctx.xl else ''}")
    # validation renders with the trained weights: those made after the
    # resume (step-NNNNNN-i.png, NNNNNN > the checkpoint's step) are the same files
    later = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(a, "validation", "step-*.png")))
             if int(os.path.basename(p)[5:11]) > ck]
    read = lambda path: open(path, "rb").read() if os.path.exists(path) else None
    same = [f for f in later if read(os.path.join(a, "validation", f)) == read(os.path.join(b, "validation", f))]
    check(later and len(same) == len(later), f"{name}: validation images after the resume byte-identical "
          f"({len(same)} of {len(later)})")


def test_resume(ctx):
    common = ["--train-batch-size", 2, "--gradient-accumulation-steps", 2, "--with-prior-preservation",
              "--class-data", os.path.join(ctx.work, "class"), "--class-prompt", "a photo of dog",
              "--num-class-images", 4, "--class-inference-steps", 2, "--train-text-encoder",
              "--lr-scheduler", "cosine", "--lr-warmup-steps", 2, "--offset-noise", "--snr-gamma", 5,
              "--checkpointing-steps", 3, "--validation-prompt", "a photo of sks dog", "--validation-steps", 6,
              "--num-validation-images", 1, "--validation-inference-steps", 2]
    resume_variant(ctx, "full", common, 12)
    # The class images are the model's own images of the class prompt
    # (diffusers' PNDM, guidance 7.5, seed + 1000003 + i): sdc generate makes
    # the same pixels.
    cls = sorted(glob.glob(os.path.join(ctx.work, "class", "*.png")))
    gen = os.path.join(ctx.work, "gen.png")
    rc, out, _ = ctx.run([ctx.sdc, "generate", "-q", "-m", ctx.model, "-p", "a photo of dog", "-W", 64, "-H", 64,
                          "--steps", 2, "--sampler", "pndm", "--cfg-scale", 7.5, "-s", 1000003, "-b", 4, "-t", 1,
                          "-o", gen])
    gens = [gen] + [os.path.join(ctx.work, f"gen_{i}.png") for i in (2, 3, 4)]
    same = sum(1 for a, b in zip(cls, gens) if rc == 0 and png_pixels(a) == png_pixels(b))
    check(len(cls) == 4 and same == 4, f"4 class images generated (then reused by every run), {same} of them "
          f"pixel-identical to sdc generate -p 'a photo of dog' --sampler pndm --steps 2 -s 1000003 -b 4")
    resume_variant(ctx, "lora", common + ["--lora-rank", 4, "--learning-rate", "1e-4"], 9)


# ---------------------------------------------------------------------------
# 2. 1, 2 and 4 ranks
# ---------------------------------------------------------------------------

def test_mpi(ctx):
    """The same job on 1, 2 and 4 ranks: a global batch of 2 instance + 2 class
    samples, 4, 2 and 1 of them per rank."""
    steps = 6
    common = ["--train-batch-size", 2, "--with-prior-preservation", "--class-data", os.path.join(ctx.work, "class"),
              "--class-prompt", "a photo of dog", "--num-class-images", 4, "--class-inference-steps", 2,
              "--train-text-encoder", "--learning-rate", "1e-4", "--lr-warmup-steps", 0, "--max-train-steps", steps,
              "--adam-epsilon", "1e-6", "-q"]
    m, w = {}, {}
    for r in (1, 2, 4):
        out = os.path.join(ctx.work, f"r{r}")
        rc, text, sec = ctx.run(ctx.train_args(out, *common), ranks=r)
        if not check(rc == 0, f"{r} rank{'s' if r > 1 else ''}: {steps} steps, exit {rc} ({sec:.1f} s)"):
            show(text)
            return
        m[r] = metrics(os.path.join(out, "metrics.jsonl"))
        w[r] = h5_weights(os.path.join(out, "model.h5"))
        check(sorted(m[r]) == list(range(1, steps + 1)) and all(x["ranks"] == r for x in m[r].values()),
              f"{r} rank{'s' if r > 1 else ''}: metrics.jsonl has steps 1..{steps}, each logged with ranks = {r}")
    rc, text, _ = ctx.run([ctx.sdc, "convert", "-q", "-m", ctx.model, "-o", os.path.join(ctx.work, "base.h5")])
    if not check(rc == 0, f"the base model as an sdc checkpoint (exit {rc})"):
        show(text)
        return
    base = h5_weights(os.path.join(ctx.work, "base.h5"))
    moved = max(float(np.max(np.abs(w[1][k] - base[k].astype(np.float32)))) for k in w[1])
    check(moved > 0, f"1 rank: the weights moved from the base (max |W - W0| {moved:.3g})")
    # Tolerances. Every rank count computes the same samples (each sample's
    # noise and timestep come from (seed, epoch, batch, index)), so only the
    # order of the sums differs: the all-reduce adds R partial fp32 gradients
    # where one rank accumulates the samples in its own order (relative error
    # ~1e-7 per entry), and the loss parts are summed in fp64. Step 1's loss
    # sees identical weights (exactly equal); later losses and gradient norms
    # see weights that differ by the rounding below: 1e-5 relative, 100x the
    # observed ~1e-7. A wrong share of the batch, a sample seen twice, noise
    # drawn per rank or a gradient scaled by R changes them by O(1e-2..1).
    # Weights: AdamW moves an entry by lr * m / (sqrt(v) + eps). The demo
    # UNet normalises every channel alone (32 groups of 32 channels), so the
    # biases in front of a GroupNorm, the time-embedding weights and the
    # attention key biases have a gradient that is zero in exact arithmetic:
    # rounding noise of ~1e-9 whose value depends on the summation order.
    # With the default eps 1e-8 AdamW turns that noise into steps of ~0.06 lr
    # that differ between rank counts (measured: 7% of the largest weight
    # change), which says nothing about the data parallelism; --adam-epsilon
    # 1e-6 keeps them below 1e-3 lr while real gradients (>= 1e-4 per entry
    # here) are unaffected. The remaining differences are ~1e-3 of the
    # largest change (noise entries) and ~1e-6 (the rest); the tolerance is
    # 1e-2 of the largest change, and the bugs above change the update
    # directions, i.e. O(1) of it.
    for r in (2, 4):
        for key, tol in (("loss", 1e-5), ("grad_norm", 1e-5)):
            rel = max(abs(m[r][s][key] - m[1][s][key]) / abs(m[1][s][key]) for s in m[1])
            rel1 = abs(m[r][1][key] - m[1][1][key]) / abs(m[1][1][key])
            check(rel <= tol, f"{r} ranks vs 1: {key} max relative difference {rel:.3g} over {steps} steps "
                  f"(step 1: {rel1:.3g}; tolerance {tol:g})")
        if set(w[r]) != set(w[1]):
            check(False, f"{r} ranks vs 1: model.h5 tensors differ in names")
            continue
        diffs = {k: float(np.max(np.abs(w[r][k] - w[1][k]))) for k in w[1]}
        worst = max(diffs, key=diffs.get)
        check(diffs[worst] <= 1e-2 * moved,
              f"{r} ranks vs 1: max |W_{r} - W_1| {diffs[worst]:.3g} = {diffs[worst] / moved:.3g} x max |W_1 - W0| "
              f"(at {worst}; tolerance 1e-2; {sum(v == 0 for v in diffs.values())} of {len(diffs)} tensors "
              f"bit-identical)")


# ---------------------------------------------------------------------------
# 3. bad input
# ---------------------------------------------------------------------------

def expect_error(ctx, what, args, *needles):
    """args must exit non-zero with every needle in its output."""
    rc, out, _ = ctx.run(args)
    missing = [n for n in needles if n not in out]
    first = next((l.strip() for l in out.splitlines() if "error" in l), out.strip()[:200])
    if not check(refused(rc) and not missing, f"{what}: exit {rc}, '{first}'" +
                 (f" -- missing {missing}" if missing else "")):
        show(out)
    return out


def checkpoint_readable(path):
    """Every tensor of a training checkpoint reads back with its CRC32; returns
    (tensors, bad CRCs, non-finite values, step)."""
    import zlib
    n = bad = nonfinite = 0
    with h5py.File(path, "r") as f:
        def visit(name, d):
            nonlocal n, bad, nonfinite
            if isinstance(d, h5py.Dataset) and "crc32" in d.attrs:
                raw = d[()]
                n += 1
                bad += (zlib.crc32(np.ascontiguousarray(raw).tobytes()) & 0xFFFFFFFF) != int(d.attrs["crc32"])
                nonfinite += int(np.size(raw) - np.isfinite(raw).sum())
        f.visititems(visit)
        step = int(f["state"].attrs["step"])
    return n, bad, nonfinite, step


def test_bad(ctx):
    w = ctx.work
    train = lambda out, *extra: ctx.train_args(os.path.join(w, out), "--max-train-steps", 1, "-q", *extra)
    with_data = lambda d, out, *extra: [a if a != ctx.photos else d for a in train(out, *extra)]

    # instance photos: missing, empty, unreadable
    expect_error(ctx, "missing instance folder", with_data(os.path.join(w, "nowhere"), "o1"),
                 "--instance-data", "nowhere: no such folder")
    os.makedirs(os.path.join(w, "empty"))
    expect_error(ctx, "empty instance folder", with_data(os.path.join(w, "empty"), "o2"),
                 "--instance-data", "empty: no images found")
    os.makedirs(os.path.join(w, "text"))
    with open(os.path.join(w, "text", "photo.jpg"), "w") as f:
        f.write("this is not a JPEG\n")
    expect_error(ctx, "only unreadable images", with_data(os.path.join(w, "text"), "o3"),
                 "photo.jpg: not a PNG or JPEG file", "--instance-data", "none of the 1 images could be read")
    check(not os.path.exists(os.path.join(w, "o3", "instance.h5")), "  ... and no instance.h5 left behind")

    # a class dataset at another resolution
    cls32 = os.path.join(w, "class32.h5")
    rc, out, _ = ctx.run([ctx.sdc, "dataset", "import", "-q", "--resolution", 32, "--cache-latents", "-m", ctx.model,
                          "-p", "a photo of dog", "-o", cls32, ctx.photos])
    if check(rc == 0, f"a class dataset made at 32 px (sdc dataset import: exit {rc})"):
        expect_error(ctx, "class .h5 at the wrong resolution",
                     train("o4", "--with-prior-preservation", "--class-data", cls32, "--class-prompt",
                           "a photo of dog"),
                     "class32.h5: images at 32 px, training at --resolution 64", "re-import it at 64")
    else:
        show(out)

    # a LoRA of another model
    lora = os.path.join(ctx.src, "tests", "fixtures", "lora-tiny-sd1-diffusers.safetensors")
    expect_error(ctx, "sdc generate --lora with a LoRA of another model",
                 [ctx.sdc, "generate", "-q", "-m", ctx.model, "-p", "x", "-W", 64, "-H", 64, "--steps", 1, "-t", 1,
                  "--lora", lora, "-o", os.path.join(w, "x.png")],
                 "lora-tiny-sd1-diffusers.safetensors", "a LoRA for another model?")

    # divergence: step 1 at lr 0 (warm-up), step 2 at 1e30 makes the weights
    # ~1e30, step 3's loss is NaN. The run stops there; checkpoints 1 and 2 stay.
    small = ["--train-batch-size", 1, "--checkpointing-steps", 1, "--lr-scheduler", "linear", "--lr-warmup-steps", 1]
    nan = os.path.join(w, "nan")
    args = ctx.train_args(nan, "--max-train-steps", 6, "--learning-rate", "1e30", *small)
    expect_error(ctx, "--learning-rate 1e30", args, "training stopped", "at step 3", "lower --learning-rate")
    ck = sorted(glob.glob(os.path.join(nan, "checkpoint-*.h5")))
    check([os.path.basename(p) for p in ck] == ["checkpoint-1.h5", "checkpoint-2.h5"] and
          not os.path.exists(os.path.join(nan, "model.h5")),
          f"  ... checkpoints written before it kept, nothing after, no export: {[os.path.basename(p) for p in ck]}")
    m = metrics(os.path.join(nan, "metrics.jsonl"))
    check(sorted(m) == [1, 2] and all(np.isfinite(r["loss"]) for r in m.values()),
          f"  ... metrics.jsonl: the 2 finite steps only (losses {[m[s]['loss'] for s in sorted(m)]})")
    for p in ck:
        n, bad, nonfinite, step = checkpoint_readable(p)
        check(n > 0 and bad == 0 and nonfinite == 0 and os.path.basename(p) == f"checkpoint-{step}.h5",
              f"  ... {os.path.basename(p)} readable: {n} tensors, {bad} CRC errors, {nonfinite} non-finite values, "
              f"/state step {step}")
    # resumable: latest (step 2, weights ~1e30) diverges again at the same
    # step; step 1 (before the bad lr) with a sane lr trains on.
    expect_error(ctx, "resume from latest diverges at the same step", args + ["--resume-from-checkpoint", "latest"],
                 "resumed from", "checkpoint-2.h5 at step 2", "at step 3")
    rc, out, _ = ctx.run(ctx.train_args(nan, "--max-train-steps", 3, "--learning-rate", "1e-4", *small,
                                        "--resume-from-checkpoint", os.path.join(nan, "checkpoint-1.h5")))
    m2 = metrics(os.path.join(nan, "metrics.jsonl")) if rc == 0 else {}
    if not check(rc == 0 and "resumed from" in out and sorted(m2) == [1, 2, 3] and m2[2]["loss"] == m[2]["loss"],
                 f"resume from checkpoint-1.h5 at --learning-rate 1e-4: exit {rc}, step 2 loss "
                 f"{m2.get(2, {}).get('loss')} (diverged run: {m[2]['loss']}), step 3 loss "
                 f"{m2.get(3, {}).get('loss')}"):
        show(out)

    # a checkpoint of another job
    expect_error(ctx, "--resume-from-checkpoint of another job (full) with --lora-rank 4",
                 train("o5", "--lora-rank", 4, "--resume-from-checkpoint", os.path.join(nan, "checkpoint-1.h5")),
                 "checkpoint-1.h5: written by another job", 'lora_rank is "0" there, "4" in this job')

    # --dump-manifest: sdc run reads it back and prints the same text
    job = os.path.join(w, "job.txtpb")
    full = ctx.train_args(os.path.join(w, "o6"), "--with-prior-preservation", "--class-data", os.path.join(w, "c"),
                          "--class-prompt", "a photo of dog", "--train-text-encoder", "--lora-rank", 4,
                          "--offset-noise", "--snr-gamma", 5, "--lr-scheduler", "cosine", "--max-train-steps", 7,
                          "--dump-manifest")
    rc1, text1, _ = ctx.run(full)
    with open(job, "w") as f:
        f.write(text1)
    rc2, text2, _ = ctx.run([ctx.sdc, "run", job, "--dump-manifest"])
    check(rc1 == 0 and rc2 == 0 and text1 == text2 and "lora_rank: 4" in text1 and "snr_gamma: 5" in text1 and
          not os.path.exists(os.path.join(w, "o6")),
          f"--dump-manifest -> sdc run FILE --dump-manifest: the same {len(text1.splitlines())} lines "
          f"(exit {rc1}, {rc2}; nothing run)")


# ---------------------------------------------------------------------------
# 4. a stop signal (Slurm's time-limit warning, scancel, Ctrl-C)
# ---------------------------------------------------------------------------

def sdc_pids(parent, sdc):
    """Pids of the sdc processes whose parent is `parent` (mpiexec's ranks)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    exe = f.read().split(b"\0")[0].decode()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and os.path.basename(exe) == os.path.basename(sdc):
                pids.append(int(d))
    return sorted(pids)


def signal_when(args, ranks, ready, log, timeout=240):
    """Starts args (under mpiexec when ranks), sends SIGUSR1 once ready()
    is true (to one rank only under MPI), waits. Returns (exit code, output,
    whether the signal was sent)."""
    cmd = (MPIEXEC + ["-n", str(ranks)] if ranks else []) + [str(a) for a in args]
    with open(log, "w") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    sent, t0 = False, time.time()
    while p.poll() is None and time.time() - t0 < timeout:
        if not sent and ready():
            targets = sdc_pids(p.pid, args[0]) if ranks else [p.pid]
            if targets:
                os.kill(targets[-1], signal.SIGUSR1)  # one rank: the others must stop with it
                sent = True
        time.sleep(0.005)
    if p.poll() is None:
        p.kill()
    p.wait()
    with open(log) as f:
        return p.returncode, f.read(), sent


def stop_train_variant(ctx, name, ranks, steps, extra=()):
    a, b = os.path.join(ctx.work, name + "-A"), os.path.join(ctx.work, name + "-B")
    common = ["--train-batch-size", 2, "--train-text-encoder", "--learning-rate", "1e-4", "--max-train-steps", steps,
              "--checkpointing-steps", 1000, "--lr-scheduler", "cosine", "--lr-warmup-steps", 3, *extra]
    rc, out, sa = ctx.run(ctx.train_args(a, *common, "-q"), ranks=ranks)
    if not check(rc == 0, f"{name}: run A, {steps} steps uninterrupted: exit {rc} ({sa:.1f} s)"):
        show(out)
        return
    mp = os.path.join(b, "metrics.jsonl")
    ready = lambda: os.path.exists(mp) and os.path.getsize(mp) > 0 and metric_lines(mp) >= 3
    rc, out, sent = signal_when(ctx.train_args(b, *common), ranks, ready, os.path.join(ctx.work, name + "-B1.log"))
    stops = [l for l in out.splitlines() if "sdc: stopped: SIGUSR1 at step" in l]
    ckpts = sorted(int(f[11:-3]) for f in os.listdir(b) if f.startswith("checkpoint-") and f.endswith(".h5"))
    at = int(stops[0].split("at step ")[1].split()[0]) if stops else -1
    same = len(set(l.split("sdc: stopped:")[1] for l in stops)) == 1
    # (mpiexec ends the other ranks as soon as one has exited with 75: all are
    # past the checkpoint by then, but not every one may have printed its line)
    if not check(sent and rc == 75 and stops and same and ckpts == [at] and 0 < at < steps and
                 not os.path.exists(os.path.join(b, "model.h5")),
                 f"{name}: SIGUSR1 to {'one of ' + str(ranks) + ' ranks' if ranks else 'the process'} mid-run: exit "
                 f"{rc} (75 expected), {len(stops)} rank(s) stopped at step {at} of {steps}, checkpoints {ckpts}, "
                 f"no export"):
        show(out)
        return
    rc, out, _ = ctx.run(ctx.train_args(b, *common, "--resume-from-checkpoint", "latest"), ranks=ranks)
    if not check(rc == 0 and f"checkpoint-{at}.h5 at step {at}" in out,
                 f"{name}: run B again with --resume-from-checkpoint latest: exit {rc}, resumed at step {at}"):
        show(out)
        return
    ma, mb = metrics(os.path.join(a, "metrics.jsonl")), metrics(mp)
    keys = ("loss", "lr", "grad_norm")
    bad = [(s, k) for s in ma for k in keys if s not in mb or ma[s][k] != mb[s][k]]
    check(sorted(mb) == sorted(ma) and not bad, f"{name}: loss, lr, grad_norm equal at all {len(ma)} steps "
          f"({len(bad)} differ)")
    compare_exact(h5_weights(os.path.join(a, "model.h5")), h5_weights(os.path.join(b, "model.h5")),
                  f"{name}: model.h5 after stop + resume vs uninterrupted")


def test_stop(ctx):
    stop_train_variant(ctx, "train", 0, 24)
    stop_train_variant(ctx, "train-2ranks", 2, 16)
    # ZeRO-1: the moments gathered into the checkpoint, each rank's slice taken back at the resume
    stop_train_variant(ctx, "train-4ranks-zero1", 4, 16, ("--zero-stage", 1))
    zero = os.path.join(ctx.work, "train-4ranks-zero1-A", "model.h5")
    plain = os.path.join(ctx.work, "train-2ranks-A", "model.h5")
    if os.path.exists(zero) and os.path.exists(plain):
        wz, wp = h5_weights(zero), h5_weights(plain)
        worst = max(float(np.max(np.abs(wz[k].astype(np.float64) - wp[k]))) for k in wp)
        moved = max(float(np.max(np.abs(wp[k].astype(np.float64)))) for k in wp)
        check(set(wz) == set(wp) and worst < 1e-4 * max(moved, 1.0),
              f"ZeRO-1 on 4 ranks vs plain data parallel on 2 ranks, 16 steps: weights within {worst:.3g} "
              f"(the fp32 summation order of the gradient mean)")
    # a generation sweep into HDF5: stopped between batches, the re-run makes the rest
    gen = lambda out: [ctx.sdc, "generate", "-m", ctx.model, "-p", "a red fox", "-p", "a cat", "-W", 128, "-H", 128,
                       "--steps", "4,8", "--cfg-scale", "1,7.5", "-b", 4, "-t", 1, "--output-h5", out]
    a, b = os.path.join(ctx.work, "gen-A.h5"), os.path.join(ctx.work, "gen-B.h5")
    rc, out, sa = ctx.run(gen(a) + ["-q"])
    if not check(rc == 0, f"sweep: 2 prompts x 2 cfg x 2 steps x 4 seeds uninterrupted: exit {rc} ({sa:.1f} s)"):
        show(out)
        return
    log = os.path.join(ctx.work, "gen-B1.log")
    ready = lambda: os.path.exists(log) and "image 4/" in open(log).read()
    rc, out, sent = signal_when(gen(b), 0, ready, log)
    with h5py.File(b, "r") as f:
        done1 = int(np.sum(f["done"][()]))
    if not check(sent and rc == 75 and "stopped: SIGUSR1 after" in out and 0 < done1 < 32,
                 f"sweep: SIGUSR1 mid-run: exit {rc} (75 expected), {done1} of 32 items done"):
        show(out)
        return
    rc, out, _ = ctx.run(gen(b))
    check(rc == 0 and f"wrote {32 - done1} items" in out and f"{done1} already done" in out,
          f"sweep: the same command again: exit {rc}, made the other {32 - done1} items")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        same = all(bits_equal(fa[k][()], fb[k][()]) for k in ("images", "seed", "cfg", "steps", "done"))
        n = fa["images"].shape[0]
    check(same, f"sweep: all {n} images, seeds, cfg and steps of the stopped + resumed file equal the "
          f"uninterrupted one")
    # the same sweep as PNGs: stopped, then --skip-existing keeps what was made and makes the rest
    pa, pb = os.path.join(ctx.work, "png-A"), os.path.join(ctx.work, "png-B")
    os.makedirs(pa), os.makedirs(pb)
    pngs = lambda out: gen(out)[:-2] + ["-o", os.path.join(out, "x.png")]
    rc, out, _ = ctx.run(pngs(pa) + ["-q"])
    log = os.path.join(ctx.work, "png-B1.log")
    ready = lambda: os.path.exists(log) and "image 4/" in open(log).read()
    rc1, out1, sent = signal_when(pngs(pb), 0, ready, log)
    made1 = len(os.listdir(pb))
    rc2, out2, _ = ctx.run(pngs(pb) + ["--skip-existing"])
    names = sorted(os.listdir(pa))
    same = [f for f in names if os.path.exists(os.path.join(pb, f)) and
            png_pixels(os.path.join(pa, f)) == png_pixels(os.path.join(pb, f))]
    if not check(rc == 0 and sent and rc1 == 75 and "with --skip-existing" in out1 and 0 < made1 < 32 and rc2 == 0 and
                 f"{made1} of 32 PNGs were there already" in out2 and len(names) == 32 and len(same) == 32,
                 f"sweep as PNGs: SIGUSR1 after {made1} of 32 (exit {rc1}), the same command with --skip-existing "
                 f"(exit {rc2}) made the rest: {len(same)} of {len(names)} PNGs pixel-identical to an uninterrupted "
                 "run"):
        show(out1 + out2)


# ---------------------------------------------------------------------------
# 5. pipeline stages x replicas (mpi/pp_train.h)
# ---------------------------------------------------------------------------

def test_layouts(ctx):
    """The same job (prior preservation, text-encoder training, 2 micro-batches)
    on one process and on pipeline stages: the stages run the one-process
    arithmetic and add the micro-batches' gradients in the same order, so P
    stages x 1 replica give the same bits whatever the schedule; replicas add
    the data-parallel all-reduce (test_mpi's tolerance)."""
    steps = 4
    w = ctx.work
    common = ["--train-batch-size", 2, "--with-prior-preservation", "--class-data", os.path.join(w, "class"),
              "--class-prompt", "a photo of dog", "--num-class-images", 4, "--class-inference-steps", 2,
              "--train-text-encoder", "--learning-rate", "1e-4", "--lr-warmup-steps", 0, "--adam-epsilon", "1e-6",
              "--micro-batches", 2, "-q"]
    ref = os.path.join(w, "one")
    rc, out, sec = ctx.run(ctx.train_args(ref, *common, "--max-train-steps", steps))
    if not check(rc == 0, f"one process, 2 micro-batches: {steps} steps, exit {rc} ({sec:.1f} s)"):
        show(out)
        return
    w1, m1 = h5_weights(os.path.join(ref, "model.h5")), metrics(os.path.join(ref, "metrics.jsonl"))
    keys = ("loss", "lr", "grad_norm")

    def outputs(out_dir):
        """out_dir's weights, whether its steps are one process's, and the (step, key) metrics that differ."""
        wx, mx = h5_weights(os.path.join(out_dir, "model.h5")), metrics(os.path.join(out_dir, "metrics.jsonl"))
        bad = [(st, k) for st in m1 for k in keys if st not in mx or mx[st][k] != m1[st][k]]
        return wx, sorted(mx) == sorted(m1), bad

    def same_run(out_dir, what):
        wx, same_steps, bad = outputs(out_dir)
        check(same_steps and not bad, f"{what}: loss, lr, grad_norm equal to one process at all "
              f"{len(m1)} steps ({len(bad)} differ)")
        compare_exact(w1, wx, f"{what}: model.h5 vs one process")

    for name, ranks, extra in (("p2-1f1b", 2, ["--pipeline-stages", 2]),
                               ("p2-gpipe", 2, ["--pipeline-stages", 2, "--pipeline-schedule", "gpipe"]),
                               ("p3-1f1b", 3, ["--pipeline-stages", 3]),
                               # the cut given: stage 1 starts with a transformer (its recompute is the
                               # last of a backward, the first forward of the next step follows it)
                               ("p2-checkpointing", 2, ["--pipeline-stages", 2, "--gradient-checkpointing",
                                                        "--pipeline-cut", 13]),
                               ("p3-cut-checkpointing", 3, ["--pipeline-stages", 3, "--gradient-checkpointing",
                                                            "--pipeline-cut", "5,11"])):
        out_dir = os.path.join(w, name)
        args = ctx.train_args(out_dir, *common, "--max-train-steps", steps, *extra)
        rc, out, sec = ctx.run([a for a in args if a != "-q"], ranks=ranks)
        given = "--pipeline-cut" in extra
        cut = [l for l in out.splitlines() if "pipeline cut" in l and
               (f"--pipeline-cut {extra[-1]}" if given else "predicted balance") in l]
        if not check(rc == 0 and len(cut) == 1, f"{name}: exit {rc} ({sec:.1f} s), the cut printed"
                     f"{' as given' if given else ' with its predicted balance'}: {cut[0].split('):', 1)[-1].strip() if cut else '(none)'}"):
            show(out)
            continue
        same_run(out_dir, name)

    # every cut of 2 stages (the measured cut lands anywhere on a loaded
    # machine: right after the time embedding, stage 0 hands conv_in the
    # latent and gets back the time embedding's and the context's gradients
    # only), quietly; each one == one process
    nb = 17
    differ = []
    for cut in range(1, nb):
        out_dir = os.path.join(w, f"cut-{cut}")
        rc, out, sec = ctx.run(ctx.train_args(out_dir, *common, "--max-train-steps", steps, "--pipeline-stages", 2,
                                              "--pipeline-cut", cut), ranks=2, timeout=60)
        if rc != 0:
            differ.append(f"{cut} (exit {rc})")
            show(out, 6)
            if rc == 124:  # a hang: the other cuts would likely hang too, a minute each
                break
            continue
        wx, same_steps, bad = outputs(out_dir)
        if not (same_steps and not bad and set(wx) == set(w1) and all(np.array_equal(wx[k], w1[k]) for k in w1)):
            differ.append(str(cut))
        shutil.rmtree(out_dir)
    check(not differ, f"every cut of 2 stages (--pipeline-cut 1 .. {nb - 1}): loss, lr, grad_norm and model.h5 "
          f"equal to one process bit for bit ({len(differ)} differ or fail{': ' + ', '.join(differ) if differ else ''})")

    # gradient accumulation (2 batches of 1 instance + 1 class row per step) on 2 stages
    acc = ["--train-batch-size", 1, "--gradient-accumulation-steps", 2, "--max-train-steps", 3]
    ga, gb = os.path.join(w, "accum-one"), os.path.join(w, "accum-p2")
    rc1, out1, _ = ctx.run(ctx.train_args(ga, *common, *acc))
    rc2, out2, _ = ctx.run(ctx.train_args(gb, *common, *acc, "--pipeline-stages", 2), ranks=2)
    if check(rc1 == 0 and rc2 == 0, f"gradient accumulation 2 on one process and on 2 stages: exit {rc1}, {rc2}"):
        compare_exact(h5_weights(os.path.join(ga, "model.h5")), h5_weights(os.path.join(gb, "model.h5")),
                      "gradient accumulation: 2 stages vs one process")
    else:
        show(out1 + out2)

    # 2 stages x 2 replicas: the gradient all-reduce overlapped with the
    # backward (0.1 MiB buckets, so most of them go out during it) gives the
    # bits of the all-reduce after it
    runs = {}
    for name, env in (("p2xd2-overlap", {"SDC_DP_BUCKET_MB": "0.1"}), ("p2xd2-after", {"SDC_NO_OVERLAP": "1"})):
        out_dir = os.path.join(w, name)
        args = [a for a in ctx.train_args(out_dir, *common, "--max-train-steps", steps, "--pipeline-stages", 2)
                if a != "-q"]
        rc, out, sec = ctx.run(args, ranks=4, env=env)
        lines = [l for l in out.splitlines() if "gradient all-reduce over 2 replicas" in l]
        runs[name] = out_dir
        check(rc == 0 and len(lines) == 2 and all(("overlapped:" in l) == (name == "p2xd2-overlap") for l in lines),
              f"{name}: exit {rc} ({sec:.1f} s); {lines[0].split(': ', 2)[-1] if lines else '(no report)'}")
    if all(os.path.exists(os.path.join(d, "model.h5")) for d in runs.values()):
        compare_exact(h5_weights(os.path.join(runs["p2xd2-after"], "model.h5")),
                      h5_weights(os.path.join(runs["p2xd2-overlap"], "model.h5")),
                      "2 x 2: gradient all-reduce overlapped with the backward vs after it")

    # 2 stages x 2 replicas with ZeRO-1 vs one process: the replicas' all-reduce
    # adds 2 partial gradients (test_mpi's tolerances, same reasons)
    out_dir = os.path.join(w, "p2xd2-zero1")
    rc, out, sec = ctx.run(ctx.train_args(out_dir, *common, "--max-train-steps", steps, "--pipeline-stages", 2,
                                          "--zero-stage", 1), ranks=4)
    if check(rc == 0, f"2 stages x 2 replicas, ZeRO-1: exit {rc} ({sec:.1f} s)"):
        wx, mx = h5_weights(os.path.join(out_dir, "model.h5")), metrics(os.path.join(out_dir, "metrics.jsonl"))
        base = h5_weights(os.path.join(ref, "model.h5"))
        rel = max(abs(mx[st]["loss"] - m1[st]["loss"]) / abs(m1[st]["loss"]) for st in m1)
        check(rel <= 1e-5, f"2 x 2: loss within {rel:.3g} of one process at every step (tolerance 1e-5)")
        worst = max(float(np.max(np.abs(wx[k].astype(np.float64) - w1[k]))) for k in w1)
        moved = max(float(np.max(np.abs(w1[k].astype(np.float64)))) for k in w1)
        check(set(wx) == set(w1) and worst <= 1e-4 * moved, f"2 x 2: weights within {worst:.3g} of one process "
              f"(largest weight {moved:.3g}; tolerance 1e-4 of it)")
        del base

    # LoRA on 2 stages: the adapters and the exported file
    la, lb = os.path.join(w, "lora-one"), os.path.join(w, "lora-p2")
    lora = ["--lora-rank", 4, "--max-train-steps", steps, "--checkpointing-steps", steps]
    rc1, out1, _ = ctx.run(ctx.train_args(la, *common, *lora))
    rc2, out2, _ = ctx.run(ctx.train_args(lb, *common, *lora, "--pipeline-stages", 2), ranks=2)
    if check(rc1 == 0 and rc2 == 0, f"LoRA on one process and on 2 stages: exit {rc1}, {rc2}"):
        fa, fb = (os.path.join(x, "pytorch_lora_weights.safetensors") for x in (la, lb))
        check(open(fa, "rb").read() == open(fb, "rb").read(), "LoRA: the exported files are byte-identical")
        ck = lambda x: h5_weights(os.path.join(x, f"checkpoint-{steps}.h5"), ("unet_lora", "text_encoder_lora"))
        compare_exact(ck(la), ck(lb), "LoRA: checkpoint adapters, 2 stages vs one process")
    else:
        show(out1 + out2)

    # a checkpoint of 2 stages resumed on 1 and on 3
    half = os.path.join(w, "half-p2")
    rc, out, _ = ctx.run(ctx.train_args(half, *common, "--max-train-steps", 2, "--checkpointing-steps", 2,
                                        "--pipeline-stages", 2), ranks=2)
    if check(rc == 0 and os.path.exists(os.path.join(half, "checkpoint-2.h5")),
             f"2 stages, 2 steps: checkpoint-2.h5 (exit {rc})"):
        for ranks, extra in ((0, []), (3, ["--pipeline-stages", 3])):
            d = os.path.join(w, f"half-p2-to-{max(ranks, 1)}")
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(half, d)
            for f in ("model.h5", "model.safetensors", "metrics.jsonl"):
                os.remove(os.path.join(d, f))
            shutil.rmtree(os.path.join(d, "diffusers"))
            rc, out, _ = ctx.run(ctx.train_args(d, *common, "--max-train-steps", steps, "--checkpointing-steps", 2,
                                                "--resume-from-checkpoint", "latest", *extra), ranks=ranks)
            if check(rc == 0, f"resumed on {max(ranks, 1)} stage{'s' if ranks > 1 else ''}: exit {rc}"):
                compare_exact(w1, h5_weights(os.path.join(d, "model.h5")),
                              f"stopped on 2 stages, resumed on {max(ranks, 1)}: model.h5 vs uninterrupted")
            else:
                show(out)

    # SIGUSR1 to one stage of two: exit 75 with a checkpoint, the resumed run == uninterrupted
    b = os.path.join(w, "stop-p2")
    mp = os.path.join(b, "metrics.jsonl")
    stop_args = ctx.train_args(b, *[a for a in common if a != "-q"], "--max-train-steps", 12, "--pipeline-stages", 2,
                               "--checkpointing-steps", 1000)
    a12 = os.path.join(w, "stop-p2-A")
    rc0, out0, _ = ctx.run(ctx.train_args(a12, *common, "--max-train-steps", 12, "--pipeline-stages", 2,
                                          "--checkpointing-steps", 1000), ranks=2)
    ready = lambda: os.path.exists(mp) and os.path.getsize(mp) > 0 and metric_lines(mp) >= 3
    rc, out, sent = signal_when(stop_args, 2, ready, os.path.join(w, "stop-p2.log"))
    ckpts = sorted(int(f[11:-3]) for f in os.listdir(b) if f.startswith("checkpoint-") and f.endswith(".h5"))
    if check(rc0 == 0 and sent and rc == 75 and len(ckpts) == 1 and 0 < ckpts[0] < 12,
             f"SIGUSR1 to one stage of two: exit {rc} (75 expected), checkpoints {ckpts}"):
        rc, out, _ = ctx.run(stop_args + ["--resume-from-checkpoint", "latest", "-q"], ranks=2)
        if check(rc == 0, f"the stopped 2-stage run resumed: exit {rc}"):
            compare_exact(h5_weights(os.path.join(a12, "model.h5")), h5_weights(os.path.join(b, "model.h5")),
                          "2 stages stopped + resumed vs uninterrupted")
    else:
        show(out)

    # bad layouts, refused before any work, naming what is wrong
    for ranks, extra, needle, what in (
            (3, ["--pipeline-stages", 2], "--pipeline-stages 2 does not divide the 3 ranks", "2 stages on 3 ranks"),
            (0, ["--pipeline-stages", 2], "--pipeline-stages 2 does not divide the 1 rank", "2 stages on 1 process"),
            (18, ["--pipeline-stages", 18], "the UNet has only 17 blocks to cut", "18 stages of a 17-block UNet"),
            (2, ["--pipeline-stages", 2, "--pipeline-cut", 17], "block 17 is past the last block",
             "--pipeline-cut 17 of a 17-block UNet"),
            (2, ["--pipeline-stages", 2, "--pipeline-cut", 0], "block 0 leaves the first stage no block",
             "--pipeline-cut 0"),
            (3, ["--pipeline-stages", 3, "--pipeline-cut", "9,4"], "block 4 is not after the cut before it",
             "--pipeline-cut 9,4"),
            (3, ["--pipeline-stages", 3, "--pipeline-cut", "9"], "1 cut for 3 stages", "--pipeline-cut 9 for 3 stages"),
            (2, ["--pipeline-stages", 2, "--pipeline-cut", "9,13"], "more than the 1 cut of 2 stages",
             "--pipeline-cut 9,13 for 2 stages"),
            (2, ["--pipeline-stages", 2, "--pipeline-cut", "9x"], "not a list of block numbers", "--pipeline-cut 9x"),
            (2, ["--pipeline-stages", 2, "--lora-rank", 4, "--pipeline-cut", 2],
             "stage 0 (blocks 0-1) has no block to train", "LoRA, --pipeline-cut 2 (no transformer before it)"),
            (5, ["--pipeline-stages", 5, "--lora-rank", 4], "at most --pipeline-stages 4",
             "LoRA on 5 stages of a UNet with 4 transformers"),
            (0, ["--pipeline-cut", "9"], "--pipeline-cut goes with --pipeline-stages", "--pipeline-cut, one stage"),
            (2, ["--pipeline-stages", 2, "--validation-prompt", "a dog"], "validation images need the whole UNet",
             "validation images with stages")):
        d = os.path.join(w, "bad")
        shutil.rmtree(d, ignore_errors=True)
        rc, out, sec = ctx.run(ctx.train_args(d, *common, "--max-train-steps", 1, *extra), ranks=ranks)
        check(refused(rc) and needle in out and not os.path.exists(os.path.join(d, "instance.h5")),
              f"{what}: refused before any work (exit {rc}, {sec:.1f} s): '{needle}'")
    other = os.path.join(ctx.src, "tests", "fixtures", "tiny-sd1")
    d = os.path.join(w, "half-other")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(half, d)
    args = ctx.train_args(d, *common, "--max-train-steps", steps, "--resume-from-checkpoint", "latest",
                          "--pipeline-stages", 2)
    args[args.index("--pretrained-model") + 1] = other
    rc, out, _ = ctx.run(args, ranks=2)
    check(refused(rc) and "written by another job: model is" in out, f"a 2-stage checkpoint resumed with another "
          f"model: refused (exit {rc})")

    # a rank that dies mid-step: the others end, non-zero, within 60 s, and the rank is named
    d = os.path.join(w, "killed")
    mp = os.path.join(d, "metrics.jsonl")
    cmd = MPIEXEC + ["-n", "2"] + [str(a) for a in ctx.train_args(d, *common, "--max-train-steps", 200,
                                                                 "--pipeline-stages", 2, "--checkpointing-steps", 2)]
    log = os.path.join(w, "killed.log")
    with open(log, "w") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    t0, killed, t_kill = time.time(), None, 0
    while p.poll() is None and time.time() - t0 < 240:
        if killed is None and os.path.exists(mp) and metric_lines(mp) >= 3:
            pids = sdc_pids(p.pid, ctx.sdc)
            if len(pids) == 2:
                killed = pids[-1]  # rank 1 (the later pid): the last stage
                os.kill(killed, signal.SIGKILL)
                t_kill = time.time()
        time.sleep(0.01)
    ended = p.poll() is not None
    if not ended:
        p.kill()
    p.wait()
    t_end = time.time() - t_kill if killed else -1
    out = open(log).read()
    named = any(("rank 1" in l and ("signal 9" in l or "Killed" in l)) for l in out.splitlines())
    if not check(killed and ended and p.returncode != 0 and t_end < 60 and named,
                 f"rank 1 of 2 stages SIGKILLed mid-run: the job ended in {t_end:.1f} s (limit 60), exit "
                 f"{p.returncode}, the lost rank named"):
        show(out, 10)
    # the checkpoint written before the kill is whole: the run resumes from it
    ckpts = sorted(int(f[11:-3]) for f in os.listdir(d) if f.startswith("checkpoint-") and f.endswith(".h5"))
    tmp = [f for f in os.listdir(d) if f.endswith(".tmp")]
    if check(ckpts and ckpts[-1] >= 2, f"after the kill: checkpoints {ckpts} ({len(tmp)} half-written .tmp left)"):
        rc, out, _ = ctx.run(ctx.train_args(d, *common, "--max-train-steps", ckpts[-1] + 1, "--pipeline-stages", 2,
                                            "--checkpointing-steps", 2, "--resume-from-checkpoint", "latest"), ranks=2)
        check(rc == 0 and os.path.exists(os.path.join(d, "model.h5")),
              f"the killed run resumed from checkpoint-{ckpts[-1]} to step {ckpts[-1] + 1}: exit {rc}")

    # a rank whose step fails alone (out of memory, SDC_FAULT_STEP=2 on rank 1
    # only: after its forwards and backwards, before the gradients are
    # reduced): the others wait on it mid-step (in the loss sum over the
    # ranks, in the gradient all-reduce), so the job ends, within 60 s, the
    # rank, its place and the cause named with the checkpoint to go on from;
    # resumed from it, the run == an uninterrupted one
    for name, extra, where in (("stage", ["--pipeline-stages", 2], "rank 1 of 2 (pipeline stage 1 of 2)"),
                               ("replica", [], "rank 1 of 2 (data-parallel replica 1 of 2)")):
        base = [*common, "--checkpointing-steps", 1, "--max-train-steps", 2, *extra]
        d, whole = os.path.join(w, f"alone-{name}"), os.path.join(w, f"alone-{name}-whole")
        rc0, out0, _ = ctx.run(ctx.train_args(whole, *base), ranks=2)
        rc, out, sec = rank1_env(ctx, ctx.train_args(d, *base), ["SDC_FAULT_STEP=2"])
        said = [l for l in out.splitlines() if l.startswith(f"sdc: error: {where}: ")]
        ok = check(rc0 == 0 and rc not in (0, 124) and sec < 60 and said and "step 2: out of memory" in said[0] and
                   f"go on from {os.path.join(d, 'checkpoint-1.h5')} (step 1)" in out,
                   f"{name} 1 of 2 out of memory alone in step 2: the job ended in {sec:.1f} s (limit 60), exit "
                   f"{rc}, '{said[0][12:] if said else '(no error line)'}', the checkpoint to go on from named")
        if not ok:
            show(out0 + out, 12)
            continue
        rc, out, _ = ctx.run(ctx.train_args(d, *base, "--resume-from-checkpoint", "latest"), ranks=2)
        if check(rc == 0, f"{name}: resumed from checkpoint-1 after the failure: exit {rc}"):
            compare_exact(h5_weights(os.path.join(whole, "model.h5")), h5_weights(os.path.join(d, "model.h5")),
                          f"{name}: failed alone + resumed vs uninterrupted")
        else:
            show(out)


def rank1_env(ctx, args, env1, timeout=75):
    """args on 2 ranks, rank 1 with the environment assignments env1 as well:
    (rc, stderr + stdout, seconds)."""
    a = [str(x) for x in args]
    return run_killable(MPIEXEC + ["-n", "1"] + a + [":", "-n", "1", "env", *env1] + a,
                        dict(os.environ, OMP_NUM_THREADS="1"), timeout)


def run_killable(cmd, env, timeout):
    """cmd in a process group of its own: (rc, stderr + stdout, seconds); past
    timeout seconds every process of it is killed (a hung job's ranks too,
    which killing mpiexec alone would leave spinning) and rc is 124."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out, time.time() - t0
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return 124, out + f"\n(killed after {timeout} s)", time.time() - t0


# ---------------------------------------------------------------------------
# 6. SDXL LoRA: resume, stop, ranks, stages
# ---------------------------------------------------------------------------

def png_size(path):
    """(height, width) from a PNG's IHDR, or None for another format."""
    with open(path, "rb") as f:
        d = f.read(24)
    if d[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    w, h = struct.unpack(">II", d[16:24])
    return h, w


def lora_file(out_dir):
    return safetensors_read(os.path.join(out_dir, "pytorch_lora_weights.safetensors"))


def xl_photos(ctx):
    """Photos that are not square, so that sizes and crops differ from photo to photo."""
    ctx.photos = os.path.join(ctx.work, "xl-photos")
    os.makedirs(ctx.photos, exist_ok=True)
    for f in ("src97x61.png", "tall61x90.png", "rgb.png"):
        shutil.copy(os.path.join(ctx.src, "tests", "fixtures", "images", f), ctx.photos)


def test_xl(ctx):
    """ctx.model is the tiny SDXL folder: DreamBooth LoRA with prior
    preservation (class images sdc makes with SDXL), every layout and
    interruption equal to one uninterrupted process as for SD 1.x."""
    w = ctx.work
    xl_photos(ctx)
    common = ["--train-batch-size", 2, "--with-prior-preservation", "--class-data", os.path.join(w, "class"),
              "--class-prompt", "a photo of dog", "--num-class-images", 2, "--class-inference-steps", 2,
              "--lora-rank", 4, "--learning-rate", "1e-3", "--adam-epsilon", "1e-6"]
    resume_variant(ctx, "xl-lora", common + ["--checkpointing-steps", 3, "--validation-prompt", "a photo of sks dog",
                                             "--validation-steps", 6, "--num-validation-images", 1,
                                             "--validation-inference-steps", 2], 9)
    # SDXL's micro-conditioning: each photo's size and crop, recorded by the import
    h5 = os.path.join(w, "xl-lora-A", "instance.h5")
    if check(os.path.exists(h5), "the import's instance.h5 exists"):
        with h5py.File(h5, "r") as f:
            sc = f["size_crop"][()]
            srcs = [x.decode() if isinstance(x, bytes) else x for x in f["sources"][()]]
            center = int(f.attrs["center_crop"])
        bad = []
        for (oh, ow, top, left), src in zip(sc, srcs):
            rh, rw = (int(64 * oh / ow), 64) if ow <= oh else (64, int(64 * ow / oh))
            size = png_size(src)
            if size != (oh, ow) or not (0 <= top <= rh - 64 and 0 <= left <= rw - 64):
                bad.append((src, (oh, ow, top, left), size, (rh, rw)))
        check(len(sc) == len(srcs) == 3 and not bad, f"size_crop of {len(sc)} photos: original (height, width) as the "
              f"PNGs say, crops inside the resized image (random crop: {not center}): "
              f"{[(os.path.basename(x), v.tolist()) for x, v in zip(srcs, sc)]}{'; bad: ' + str(bad[:2]) if bad else ''}")
    # the class images are SDXL's own (Euler, the folder's spacing), 2 of them
    cls = sorted(glob.glob(os.path.join(w, "class", "*.png")))
    gen = os.path.join(w, "gen.png")
    rc, out, _ = ctx.run([ctx.sdc, "generate", "-q", "-m", ctx.model, "-p", "a photo of dog", "-W", 64, "-H", 64,
                          "--steps", 2, "--sampler", "euler", "--cfg-scale", 7.5, "-s", 1000003, "-b", 2, "-t", 1,
                          "-o", gen])
    same = sum(1 for a, b in zip(cls, [gen, os.path.join(w, "gen_2.png")]) if rc == 0 and png_pixels(a) == png_pixels(b))
    check(len(cls) == 2 and same == 2, f"2 class images generated with SDXL, {same} of them pixel-identical to sdc "
          f"generate -p 'a photo of dog' --sampler euler --steps 2 -s 1000003 -b 2")

    # 1 and 2 ranks; 2 pipeline stages (bit for bit)
    steps = 4
    runs = {}
    for name, ranks, extra in (("xl-one", 0, []), ("xl-r2", 2, []), ("xl-p2", 2, ["--pipeline-stages", 2]),
                               ("xl-p2-gpipe", 2, ["--pipeline-stages", 2, "--pipeline-schedule", "gpipe"])):
        out_dir = os.path.join(w, name)
        rc, out, sec = ctx.run(ctx.train_args(out_dir, *common, "--max-train-steps", steps, "--micro-batches", 2,
                                              *extra), ranks=ranks)
        if not check(rc == 0, f"{name}: {steps} steps, exit {rc} ({sec:.1f} s)"):
            show(out)
            return
        runs[name] = (metrics(os.path.join(out_dir, "metrics.jsonl")), lora_file(out_dir))
    m1, l1 = runs["xl-one"]
    # train_dreambooth_lora_sdxl.py's defaults where not given: lr 1e-4, AdamW weight decay 1e-4; --random-flip
    # mirrors instance images at import
    out_dir = os.path.join(w, "xl-defaults")
    rc, out, _ = ctx.run(ctx.train_args(out_dir, "--lora-rank", 4, "--max-train-steps", 1, "--lr-warmup-steps", 0,
                                        "--train-batch-size", 1, "--checkpointing-steps", 1, "--random-flip"))
    if check(rc == 0, f"xl-defaults: 1 step without --learning-rate / --adam-weight-decay, exit {rc}"):
        lr = metrics(os.path.join(out_dir, "metrics.jsonl"))[1]["lr"]
        with h5py.File(os.path.join(out_dir, "checkpoint-1.h5"), "r") as f:
            wd = float(f["optimizer"].attrs["weight_decay"])
        with h5py.File(os.path.join(out_dir, "instance.h5"), "r") as f:
            flip = int(f.attrs["random_flip"])
        check(abs(lr - 1e-4) < 1e-12 and abs(wd - 1e-4) < 1e-12 and flip == 1,
              f"SDXL defaults: lr {lr}, weight decay {wd} (the script's 1e-4 each); instance.h5 random_flip {flip}")
    else:
        show(out)
    moved = max(float(np.max(np.abs(v))) for k, v in l1.items() if "lora.up" in k or "lora_B" in k)
    check(moved > 0, f"one process: the LoRA was trained (max |up| {moved:.3g})")
    for name in ("xl-p2", "xl-p2-gpipe"):
        mx, lx = runs[name]
        bad = [(st, k) for st in m1 for k in ("loss", "lr", "grad_norm") if st not in mx or mx[st][k] != m1[st][k]]
        check(sorted(mx) == sorted(m1) and not bad, f"{name}: loss, lr, grad_norm equal to one process at all "
              f"{len(m1)} steps ({len(bad)} differ)")
        compare_exact(l1, lx, f"{name}: LoRA vs one process")
    # 2 replicas: only the all-reduce's summation order differs (test_mpi's tolerances)
    m2, l2 = runs["xl-r2"]
    rel = max(abs(m2[st]["loss"] - m1[st]["loss"]) / abs(m1[st]["loss"]) for st in m1)
    check(rel <= 1e-5, f"2 ranks vs 1: loss max relative difference {rel:.3g} (tolerance 1e-5)")
    change = max(float(np.max(np.abs(v))) for v in l1.values())
    diff = max(float(np.max(np.abs(l2[k].astype(np.float64) - l1[k]))) for k in l1)
    check(set(l1) == set(l2) and diff <= 1e-2 * moved, f"2 ranks vs 1: LoRA max |diff| {diff:.3g} = "
          f"{diff / moved:.3g} x max |up| (tolerance 1e-2; max |value| {change:.3g})")

    # SIGUSR1 mid-run: exit 75 with a checkpoint of that step; resumed == uninterrupted
    a, b = os.path.join(w, "xl-stop-A"), os.path.join(w, "xl-stop-B")
    stop = common + ["--max-train-steps", 8, "--checkpointing-steps", 1000]
    rc, out, _ = ctx.run(ctx.train_args(a, *stop, "-q"))
    mp = os.path.join(b, "metrics.jsonl")
    ready = lambda: os.path.exists(mp) and os.path.getsize(mp) > 0 and metric_lines(mp) >= 3
    rc2, out2, sent = signal_when(ctx.train_args(b, *stop), 0, ready, os.path.join(w, "xl-stop-B1.log"))
    stops = [l for l in out2.splitlines() if "sdc: stopped: SIGUSR1 at step" in l]
    if not check(rc == 0 and sent and rc2 == 75 and stops, f"xl-stop: run A exit {rc}; SIGUSR1 to run B: exit {rc2} "
                 f"(75 expected), {stops[0].strip() if stops else 'no stop message'}"):
        show(out + out2)
        return
    rc, out, _ = ctx.run(ctx.train_args(b, *stop, "--resume-from-checkpoint", "latest"))
    ma, mb = metrics(os.path.join(a, "metrics.jsonl")), metrics(mp)
    bad = [(st, k) for st in ma for k in ("loss", "lr", "grad_norm") if st not in mb or ma[st][k] != mb[st][k]]
    check(rc == 0 and sorted(mb) == sorted(ma) and not bad, f"xl-stop: resumed (exit {rc}): loss, lr, grad_norm "
          f"equal at all {len(ma)} steps ({len(bad)} differ)")
    if rc == 0:
        compare_exact(lora_file(a), lora_file(b), "xl-stop: LoRA after stop + resume vs uninterrupted")


def test_xlte(ctx):
    """ctx.model is the tiny SDXL folder: --train-text-encoder trains both
    encoders (three param groups), as LoRA and as full fine-tuning."""
    w = ctx.work
    ctx.xl = True
    xl_photos(ctx)
    common = ["--train-batch-size", 2, "--with-prior-preservation", "--class-data", os.path.join(w, "class"),
              "--class-prompt", "a photo of dog", "--num-class-images", 2, "--class-inference-steps", 2,
              "--train-text-encoder", "--text-encoder-lr", "5e-4", "--adam-weight-decay-text-encoder", "1e-2",
              "--learning-rate", "1e-3", "--adam-epsilon", "1e-6", "--checkpointing-steps", 3]
    valid = ["--validation-prompt", "a photo of sks dog", "--validation-steps", 6, "--num-validation-images", 1,
             "--validation-inference-steps", 2]
    resume_variant(ctx, "xlte-lora", common + ["--lora-rank", 4] + valid, 9)
    fa = os.path.join(w, "xlte-lora-A", "pytorch_lora_weights.safetensors")
    if os.path.exists(fa):
        lw = safetensors_read(fa)
        n = {p: sum(1 for k in lw if k.startswith(p + ".")) for p in ("unet", "text_encoder", "text_encoder_2")}
        up2 = max((float(np.max(np.abs(v))) for k, v in lw.items() if k.startswith("text_encoder_2.") and ".up." in k),
                  default=0.0)
        check(n["unet"] and n["text_encoder"] and n["text_encoder_2"] and up2 > 0,
              f"xlte-lora: the LoRA file holds unet ({n['unet']}), text_encoder ({n['text_encoder']}) and "
              f"text_encoder_2 ({n['text_encoder_2']}) tensors; text_encoder_2's trained (max |up| {up2:.3g})")
    resume_variant(ctx, "xlte-full", common + valid, 6)
    # 2 pipeline stages (the encoders on stage 0) == one process; ZeRO-1 over 2 replicas == 2 replicas
    steps = 3
    runs = {}
    lora = ["--lora-rank", 4, "--max-train-steps", steps, "--micro-batches", 2]
    for name, ranks, extra in (("xlte-one", 0, lora), ("xlte-p2", 2, lora + ["--pipeline-stages", 2]),
                               ("xlte-r2", 2, lora), ("xlte-r2-zero", 2, lora + ["--zero-stage", 1])):
        out_dir = os.path.join(w, name)
        rc, out, sec = ctx.run(ctx.train_args(out_dir, *common, *extra), ranks=ranks)
        if not check(rc == 0, f"{name}: {steps} steps, exit {rc} ({sec:.1f} s)"):
            show(out)
            return
        runs[name] = (metrics(os.path.join(out_dir, "metrics.jsonl")), lora_file(out_dir))
    for name, ref in (("xlte-p2", "xlte-one"), ("xlte-r2-zero", "xlte-r2")):
        (m1, l1), (mx, lx) = runs[ref], runs[name]
        bad = [(st, k) for st in m1 for k in ("loss", "lr", "grad_norm") if st not in mx or mx[st][k] != m1[st][k]]
        check(sorted(mx) == sorted(m1) and not bad, f"{name}: loss, lr, grad_norm equal to {ref} at all "
              f"{len(m1)} steps ({len(bad)} differ)")
        compare_exact(l1, lx, f"{name}: LoRA (UNet and both text encoders) vs {ref}")


# ---------------------------------------------------------------------------
# 8. --use-captions (kohya's captioned DreamBooth)
# ---------------------------------------------------------------------------

def test_captions(ctx):
    """Each photo's FILE.txt and each class image's caption in place of the
    two prompts: captions equal to the prompts give the prompts' run bit for
    bit (text encoder frozen and trained, prior preservation on), other
    captions another one; a photo without a caption takes --instance-prompt,
    and without that either the run is refused naming the photo."""
    cls = os.path.join(ctx.work, "class")
    photos = sorted(p for p in glob.glob(os.path.join(ctx.photos, "*")) if p.lower().endswith((".png", ".jpg",
                                                                                              ".jpeg")))[:3]

    def photo_dir(name, captions):  # copies of the photos, captions[i] into FILE.txt (None: no file)
        d = os.path.join(ctx.work, name)
        os.makedirs(d)
        for p, c in zip(photos, captions):
            shutil.copy(p, d)
            if c is not None:
                with open(os.path.join(d, os.path.splitext(os.path.basename(p))[0] + ".txt"), "w") as f:
                    f.write(c + "\n")
        return d

    same = photo_dir("same", ["a photo of sks dog"] * 3)
    other = photo_dir("other", ["a photo of sks dog on grass", "sks dog, close up", "a photo of sks dog"])
    partial = photo_dir("partial", ["a photo of sks dog", None, "a photo of sks dog"])
    bare = photo_dir("bare", [None, "sks dog", None])
    common = ["--with-prior-preservation", "--class-data", cls, "--class-prompt", "a photo of dog",
              "--num-class-images", 3, "--class-inference-steps", 2, "--train-batch-size", 2,
              "--max-train-steps", 3, "--learning-rate", "1e-4", "--lr-warmup-steps", 0, "--checkpointing-steps", 100]

    def train(name, photos_dir, *extra):
        out = os.path.join(ctx.work, name)
        args = [ctx.sdc, "train", "dreambooth", "--pretrained-model", ctx.model, "--instance-data", photos_dir,
                "--resolution", "64", "--output-dir", out, "-t", "1", "-q", *common, *extra]
        rc, log, sec = ctx.run(args)
        if not check(rc == 0, f"{name}: trained ({sec:.1f} s)"):
            show(log)
            return {}
        return h5_weights(os.path.join(out, "model.h5"))

    for te, tag in (((), "frozen text encoder"), (("--train-text-encoder",), "text encoder trained")):
        k = "te" if te else "fz"
        ref = train(f"prompts-{k}", same, "--instance-prompt", "a photo of sks dog", *te)
        if not te:  # the class images sdc generated carry their caption (kohya's FILE.txt)
            txt = sorted(glob.glob(os.path.join(cls, "*.txt")))
            caps = {open(t).read().strip() for t in txt}
            check(len(txt) == 3 and caps == {"a photo of dog"}, f"class images' caption files: {len(txt)} (3), "
                  f"captions {sorted(caps)}")
        capd = train(f"captions-{k}", same, "--use-captions", *te)
        if ref and capd:
            compare_exact(ref, capd, f"{tag}: --use-captions with captions = the prompts vs the prompts")
        # the photo without FILE.txt takes --instance-prompt: equal again
        part = train(f"partial-{k}", partial, "--use-captions", "--instance-prompt", "a photo of sks dog", *te)
        if ref and part:
            compare_exact(ref, part, f"{tag}: a photo without FILE.txt takes --instance-prompt")
        oth = train(f"other-{k}", other, "--use-captions", *te)
        if ref and oth:
            d = max(float(np.max(np.abs(ref[n] - oth[n]))) for n in ref if n in oth)
            check(d > 1e-6, f"{tag}: other captions train other weights (max |diff| {d:.3g})")
    # an edited FILE.txt is read again by a rerun into the same folder (not the import kept from before)
    before = h5_weights(os.path.join(ctx.work, "other-fz", "model.h5"))
    with open(os.path.join(other, os.path.splitext(os.path.basename(photos[0]))[0] + ".txt"), "w") as f:
        f.write("a photo of sks dog\n")
    after = train("other-fz", other, "--use-captions")
    if before and after and ref:
        d = max(float(np.max(np.abs(before[n] - after[n]))) for n in before if n in after)
        check(d > 1e-6, f"an edited caption file is read by the next run (max |diff| {d:.3g} against before)")
    # class captions: a class folder whose FILE.txt files say something else trains other weights
    cls2 = os.path.join(ctx.work, "class2")
    shutil.copytree(cls, cls2)
    for i, t in enumerate(sorted(glob.glob(os.path.join(cls2, "*.txt")))):
        with open(t, "w") as f:
            f.write(f"a photo of dog number {i}\n")
    common[2] = cls2
    ref = h5_weights(os.path.join(ctx.work, "captions-fz", "model.h5"))
    c2 = train("class-captions", same, "--use-captions")
    if ref and c2:
        d = max(float(np.max(np.abs(ref[n] - c2[n]))) for n in ref if n in c2)
        check(d > 1e-6, f"the class images' own captions are used (max |diff| {d:.3g} against the class prompt)")
    common[2] = cls
    expect_error(ctx, "--use-captions, photos without FILE.txt and no --instance-prompt",
                 [ctx.sdc, "train", "dreambooth", "--pretrained-model", ctx.model, "--instance-data", bare,
                  "--resolution", "64", "--output-dir", os.path.join(ctx.work, "bare-out"), "-t", "1", "-q",
                  "--use-captions", *common], "2 images", "no caption file", "--instance-prompt")
    expect_error(ctx, "--use-captions with an SDXL model: refused",
                 [ctx.sdc, "train", "dreambooth", "--pretrained-model", os.path.join(ctx.src, "tests", "fixtures",
                  "tiny-sdxl"), "--instance-data", same, "--use-captions", "--resolution", "64", "--max-train-steps",
                  1, "--output-dir", os.path.join(ctx.work, "xl-out"), "-t", "1", "-q"], "--use-captions", "SDXL")
    check(not os.path.exists(os.path.join(ctx.work, "xl-out", "instance-captions.h5")),
          "... before any photo is imported (no instance-captions.h5)")
    expect_error(ctx, "no --instance-prompt and no --use-captions",
                 [ctx.sdc, "train", "dreambooth", "--pretrained-model", ctx.model, "--instance-data", same,
                  "--resolution", "64", "--output-dir", os.path.join(ctx.work, "np-out"), "-t", "1", "-q"],
                 "--instance-prompt", "--use-captions")


def main():
    tests = {"resume": test_resume, "mpi": test_mpi, "bad": test_bad, "stop": test_stop, "layouts": test_layouts,
             "xl": test_xl, "xlte": test_xlte, "captions": test_captions}
    if len(sys.argv) != 6 or sys.argv[1] not in tests:
        print(__doc__)
        sys.exit(2)
    t0 = time.time()
    tests[sys.argv[1]](Ctx(*sys.argv[2:]))
    finish(time.time() - t0)


main()
