#!/usr/bin/python3
"""kill_campaign.py: SIGKILLs sdc at random moments and checks what it leaves
behind and what the same command makes of it afterwards (issue 15, part 9).

  kill_campaign.py [--trials N] [--seed S] [--only a,b] [--no-strace] SDC MODEL WORK
  kill_campaign.py --every-call CALL[:FROM-TO] [--only a,b] SDC MODEL WORK

SDC is the sdc binary, MODEL the demo model (data/models/sdc-tiny-sd1.safetensors),
WORK a scratch folder (emptied first). The N trials (default 200) go round
robin to five scenarios (random.Random(S) draws everything). Half of the
kills come after a delay drawn uniformly over the uninterrupted run's
measured duration; the other half (where strace is installed) are aimed at
a system call: strace SIGKILLs sdc on entering the n-th call of a kind
(write, pwrite64, rename, unlink, fsync, ...), kind and n drawn over what the
reference run called, so narrow windows (a rename, a metadata write between
two others) are hit as often as long ones. --every-call kills at every n in
turn instead (the regression tests for what the campaign found).

  dreambooth  `sdc train dreambooth` (prior preservation with class images sdc
              generates, text encoder, checkpoints every 3 steps, total limit 2)
              killed once or twice, then run again with --resume-from-checkpoint
              latest until it ends: model.safetensors and diffusers/ byte-identical,
              model.h5's tensors bit-identical, the loss of every step equal to an
              uninterrupted run's; no .tmp left.
  checkpoint  the same training with a checkpoint every step (total limit 3),
              killed while a checkpoint is being written (once the k-th
              checkpoint's file appears, .h5.tmp or .h5, k random, plus a
              random part of a save's measured length) or at a random system
              call: every checkpoint-N.h5 left reads back whole (every
              tensor's CRC32, /state step N), `latest` resumes from the newest
              of them (never the half file) and ends == uninterrupted.
  h5_sweep    a 16-item `sdc generate --output-h5` sweep killed once or twice,
              then re-run: after each kill the file opens and every item marked
              done holds its reference image; at the end every item is done
              once (the re-run makes exactly the missing ones) and equals the
              uninterrupted sweep.
  png_sweep   the same sweep as PNGs, re-run with --skip-existing: after each
              kill every PNG at a final name decodes whole (chunk CRCs, IEND,
              inflated size) and equals its reference; at the end the folder
              holds exactly the 16 names, each byte-identical to the reference.
  convert     `sdc convert` to .safetensors, .h5 and a diffusers folder, over a
              previous output (an f32 conversion; the demo model and the new
              output are f16; a folder also holds a README.md of the user's,
              which must stay) or none: after the kill the
              final path holds the previous output intact or the complete new
              one (or nothing, when there was none), never a part; the re-run
              gives the complete new output and leaves no temporary behind.

Prints one line per failed check and, per scenario, trials / kills that landed
(the process was still running) / passed / failed; exits 1 on any failure.
numpy + h5py (/usr/bin/python3: Debian's python3-h5py). The product is C; this
is a test tool."""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

try:
    import h5py
    import numpy as np
except ImportError as e:
    print(f"FAILED: {e}\n---> run tools/setup.sh (Debian: apt-get install python3-h5py)")
    sys.exit(1)

SCENARIOS = ("dreambooth", "checkpoint", "h5_sweep", "png_sweep", "convert")
ENV = dict(os.environ, OMP_NUM_THREADS="1")

# ---------------------------------------------------------------------------
# running and killing
# ---------------------------------------------------------------------------


def run(cmd, log, timeout=600):
    """Runs cmd to its end; returns (exit status, output)."""
    with open(log, "w") as lf:
        p = subprocess.run([str(a) for a in cmd], stdout=lf, stderr=subprocess.STDOUT, env=ENV, timeout=timeout)
    with open(log) as f:
        return p.returncode, f.read()


def run_killed(cmd, delay, log):
    """Starts cmd, SIGKILLs it after delay seconds. Returns (landed, exit
    status): landed is False when it had ended before the kill."""
    with open(log, "w") as lf:
        p = subprocess.Popen([str(a) for a in cmd], stdout=lf, stderr=subprocess.STDOUT, env=ENV)
    try:
        rc = p.wait(timeout=delay)
        return False, rc
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        return True, p.returncode


def run_killed_at(cmd, call, n, log):
    """Runs cmd under strace, which SIGKILLs it on entering its n-th `call`
    (a system call name). Returns (landed, exit status) as run_killed."""
    rc, _ = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={call}", "-e",
                 f"inject={call}:signal=SIGKILL:when={n}", *cmd], log)
    return rc in (-signal.SIGKILL, 128 + signal.SIGKILL), rc


def count_calls(cmd, calls, log):
    """Runs cmd under strace to its end: {system call: times called} for calls."""
    trace = log + ".strace"
    rc, out = run(["strace", "-f", "-qq", "-o", trace, "-e", "trace=" + ",".join(calls), *cmd], log)
    if rc != 0:
        print(f"  NOT OK  a reference run under strace failed (exit {rc})\n{out[-2000:]}")
        sys.exit(1)
    n = dict.fromkeys(calls, 0)
    with open(trace) as f:
        for line in f:
            name = line.split(None, 1)[1].split("(", 1)[0] if " " in line else ""
            if name in n and "resumed>" not in line:
                n[name] += 1
    os.remove(trace)
    return n


# The system calls a kill may be aimed at, per scenario: the writes, the
# renames that commit a file, the unlinks of rotation and clean-up.
CALLS = {"dreambooth": ("rename", "unlink", "pwrite64", "write", "fsync"),
         "checkpoint": ("rename", "unlink", "pwrite64", "fsync"),
         "h5_sweep": ("rename", "pwrite64", "fsync"),
         "png_sweep": ("rename", "write", "unlink"),
         "convert": ("rename", "renameat2", "unlink", "unlinkat", "rmdir", "write", "pwrite64", "mkdir")}


def timed(cmd, log):
    t0 = time.time()
    rc, out = run(cmd, log)
    return rc, out, time.time() - t0


# ---------------------------------------------------------------------------
# reading outputs
# ---------------------------------------------------------------------------


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_sig(path):
    """A folder as {relative path: sha256 of the file} (folders as None)."""
    sig = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            sig[os.path.relpath(os.path.join(root, d), path) + "/"] = None
        for f in files:
            sig[os.path.relpath(os.path.join(root, f), path)] = sha(os.path.join(root, f))
    return sig


def h5_sig(path):
    """An HDF5 file's content: every dataset's dtype, shape and bytes, every
    attribute's value but the manifest (the command line, which names the
    output path)."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        items = []
        f.visititems(lambda k, v: items.append((k, v)))
        for k, v in sorted([("/", f)] + items, key=lambda kv: kv[0]):
            h.update(k.encode())
            if isinstance(v, h5py.Dataset):
                a = v[()]
                h.update(str((a.dtype, np.shape(a))).encode())
                h.update(np.ascontiguousarray(a).tobytes() if isinstance(a, np.ndarray) else repr(a).encode())
            for ak in sorted(a for a in v.attrs if a != "manifest"):  # the command, with the output's path
                h.update(ak.encode() + repr(v.attrs[ak]).encode())
    return h.hexdigest()


def sig(path):
    """What a conversion output is: a folder's files, an .h5's content, a file's bytes; None when absent."""
    if os.path.isdir(path):
        return ("dir", tuple(sorted(tree_sig(path).items(), key=lambda kv: kv[0])))
    if not os.path.exists(path):
        return None
    if path.endswith(".h5"):
        try:
            return ("h5", h5_sig(path))
        except Exception as e:  # unreadable: a half file
            return ("unreadable", str(e)[:200])
    return ("file", sha(path))


def weights_sig(path):
    """The trained tensors of an sdc checkpoint (every dataset, bits)."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        items = []
        f.visititems(lambda k, v: items.append((k, v)) if isinstance(v, h5py.Dataset) else None)
        for k, v in sorted(items, key=lambda kv: kv[0]):
            h.update(k.encode() + np.ascontiguousarray(v[()]).tobytes())
    return h.hexdigest()


def metrics(path):
    """step -> loss (the last line of a step wins: a resumed run logs the steps it redoes again)."""
    m = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut by the kill
                if "event" not in r:
                    m[int(r["step"])] = (r["loss"], r.get("loss_prior"), r["lr"], r["grad_norm"])
    return m


def checkpoint_whole(path):
    """'' when every tensor of a training checkpoint reads back with its CRC32
    and /state's step is the one in the name; else what is wrong."""
    try:
        n = bad = 0
        with h5py.File(path, "r") as f:
            def visit(name, d):
                nonlocal n, bad
                if isinstance(d, h5py.Dataset) and "crc32" in d.attrs:
                    n += 1
                    raw = np.ascontiguousarray(d[()]).tobytes()
                    bad += (zlib.crc32(raw) & 0xFFFFFFFF) != int(d.attrs["crc32"])
            f.visititems(visit)
            step = int(f["state"].attrs["step"])
    except Exception as e:
        return f"unreadable ({str(e)[:160]})"
    want = int(os.path.basename(path)[11:-3])
    if n == 0 or bad or step != want:
        return f"{n} tensors, {bad} CRC errors, /state step {step}"
    return ""


def png_decode(path):
    """The pixels (IHDR + inflated IDAT) of a whole PNG file; raises on anything broken."""
    with open(path, "rb") as f:
        return png_decode_bytes(f.read())


def png_decode_bytes(d):
    """png_decode of a PNG's bytes."""
    if d[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("no PNG signature")
    pos, ihdr, idat, end = 8, b"", b"", False
    while pos < len(d):
        if pos + 12 > len(d):
            raise ValueError(f"chunk header cut at byte {pos}")
        n, kind = struct.unpack(">I4s", d[pos:pos + 8])
        body = d[pos + 8:pos + 8 + n]
        if len(body) != n or pos + 12 + n > len(d):
            raise ValueError(f"chunk {kind!r} cut")
        if struct.unpack(">I", d[pos + 8 + n:pos + 12 + n])[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise ValueError(f"chunk {kind!r}: bad CRC")
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            end = True
        pos += 12 + n
    if not end or not ihdr:
        raise ValueError("no IEND / IHDR")
    w, h, depth, color = struct.unpack(">IIBB", ihdr[:10])
    px = zlib.decompress(idat)
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    if len(px) != h * (1 + w * ch * depth // 8):
        raise ValueError(f"{len(px)} bytes of pixels for {w}x{h}")
    return ihdr + px


# ---------------------------------------------------------------------------
# the campaign
# ---------------------------------------------------------------------------


class Campaign:
    def __init__(self, a):
        self.sdc, self.model, self.work = os.path.abspath(a.sdc), os.path.abspath(a.model), os.path.abspath(a.work)
        self.rng = random.Random(a.seed)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.photos = os.path.join(self.work, "photos")
        os.makedirs(self.photos)
        for f in ("src97x61.png", "tall61x90.png", "rgb.png"):
            shutil.copy(os.path.join(src, "tests", "fixtures", "images", f), self.photos)
        self.counts = {s: {"trials": 0, "landed": 0, "passed": 0, "failed": 0} for s in SCENARIOS}
        self.extra = {s: {} for s in SCENARIOS}
        self.ref = {}
        self.calls = {}
        self.forced = None  # (system call, n): every kill aimed there (--every-call)
        self.kind = None    # the conversion's output kind, when not drawn
        self.strace = a.strace and shutil.which("strace") is not None and \
            subprocess.run(["strace", "-o", "/dev/null", "true"], capture_output=True).returncode == 0  # ptrace allowed

    def fail(self, scen, trial, what, log=None):
        print(f"  NOT OK  {scen} trial {trial}: {what}" + (f" (log {log})" if log else ""), flush=True)
        if log and os.path.exists(log):
            for line in open(log, errors="replace").read().strip().splitlines()[-4:]:
                print("          | " + line)
        return False

    def note(self, scen, key, n=1):
        self.extra[scen][key] = self.extra[scen].get(key, 0) + n

    def kill_once(self, scen, cmd, log, dur):
        """Runs cmd and SIGKILLs it at a random moment: half of the time after
        a delay drawn over the run's duration dur, half of the time (with
        strace) on entering a random one of the system calls the reference
        run made (CALLS[scen]: a random call, a random one of its times).
        Returns (landed, exit status)."""
        if self.forced:
            self.note(scen, f"aimed at {self.forced[0]} n, each n in turn")
            return run_killed_at(cmd, *self.forced, log)
        counts = self.calls.get(scen, {})
        names = sorted(k for k in counts if counts[k])
        if names and self.rng.random() < 0.5:
            call = self.rng.choice(names)
            landed, rc = run_killed_at(cmd, call, self.rng.randint(1, counts[call]), log)
            self.note(scen, f"aimed at a {call}")
            return landed, rc
        self.note(scen, "at a random time")
        return run_killed(cmd, self.rng.uniform(0, dur), log)

    def count(self, scen, cmd, log):
        if self.strace:
            self.calls[scen] = count_calls(cmd, CALLS[scen], log)
            print(f"    system calls: " + ", ".join(f"{k} {v}" for k, v in self.calls[scen].items()), flush=True)

    # -- DreamBooth ----------------------------------------------------------

    def train_cmd(self, out, steps, every, prior):
        cmd = [self.sdc, "train", "dreambooth", "--pretrained-model", self.model, "--instance-data", self.photos,
               "--instance-prompt", "a photo of sks dog", "--resolution", 64, "--train-batch-size", 1,
               "--train-text-encoder", "--learning-rate", "1e-4", "--max-train-steps", steps,
               "--checkpointing-steps", every, "--seed", 5, "--output-dir", out, "-t", 1,
               "--resume-from-checkpoint", "latest"]
        if not prior:
            cmd += ["--checkpoints-total-limit", 3]
        if prior:
            cmd += ["--with-prior-preservation", "--class-data", os.path.join(out, "class"), "--class-prompt",
                    "a photo of dog", "--num-class-images", 2, "--class-inference-steps", 2,
                    "--checkpoints-total-limit", 2]
        return cmd

    def train_result(self, out):
        return {"model.safetensors": sha(os.path.join(out, "model.safetensors")),
                "diffusers": tree_sig(os.path.join(out, "diffusers")),
                "model.h5": weights_sig(os.path.join(out, "model.h5")),
                "metrics": metrics(os.path.join(out, "metrics.jsonl"))}

    def train_ref(self, key, steps, every, prior):
        out = os.path.join(self.work, key + "-ref")
        rc, text, sec = timed(self.train_cmd(out, steps, every, prior), out + ".log")
        if rc != 0:
            print(f"  NOT OK  {key}: the uninterrupted reference run failed (exit {rc})\n{text[-2000:]}")
            sys.exit(1)
        self.ref[key] = (self.train_result(out), sec)
        print(f"  {key}: reference run {sec:.2f} s, {steps} steps", flush=True)
        self.count(key, self.train_cmd(out + "-strace", steps, every, prior), out + "-strace.log")

    def train_finish(self, scen, trial, out, cmd, ref, want_resume=None):
        """Runs cmd to its end and compares with the reference; True when equal."""
        log = out + f"-final.log"
        rc, text = run(cmd, log)
        if rc != 0:
            return self.fail(scen, trial, f"the run after the kill(s) ended with exit {rc}", log)
        if want_resume is not None:
            line = next((l for l in text.splitlines() if "resumed from" in l or "no checkpoint in" in l), "")
            expect = f"checkpoint-{want_resume}.h5 at step {want_resume}" if want_resume else "no checkpoint in"
            if expect not in line:
                return self.fail(scen, trial, f"`latest` should be {expect!r}, the run says {line.strip()!r}", log)
        got = self.train_result(out)
        bad = [k for k in ("model.safetensors", "diffusers", "model.h5") if got[k] != ref[k]]
        if bad:
            return self.fail(scen, trial, f"final weights differ from the uninterrupted run: {bad}", log)
        if got["metrics"] != ref["metrics"]:
            diff = [s for s in ref["metrics"] if got["metrics"].get(s) != ref["metrics"][s]]
            return self.fail(scen, trial, f"metrics differ from the uninterrupted run at steps {diff[:5]}", log)
        left = [f for f in os.listdir(out) if f.endswith(".tmp") or f.endswith(".sdc-tmp")]
        if left:
            return self.fail(scen, trial, f"temporary files left at the end: {left}", log)
        return True

    def trial_dreambooth(self, trial):
        steps, every = 18, 3
        if "dreambooth" not in self.ref:
            self.train_ref("dreambooth", steps, every, True)
        ref, dur = self.ref["dreambooth"]
        out = os.path.join(self.work, "dreambooth", f"t{trial}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = self.train_cmd(out, steps, every, True)
        landed = 0
        for k in range(self.rng.choice((1, 1, 2))):
            hit, rc = self.kill_once("dreambooth", cmd, out + f"-kill{k}.log", dur)
            landed += hit
            if not hit and rc != 0:
                return landed, self.fail("dreambooth", trial, f"a run ended with exit {rc} before its kill",
                                         out + f"-kill{k}.log")
        return landed, self.train_finish("dreambooth", trial, out, cmd, ref)

    # -- a checkpoint being written --------------------------------------------

    def ckpt_tmps(self, out):
        try:
            return [f for f in os.listdir(out) if f.startswith("checkpoint-") and f.endswith(".h5.tmp")]
        except OSError:
            return []

    def ckpt_steps(self, out):
        """The steps of the checkpoint files in out, whole or being written
        (a writer that is not atomic shows its final name while writing)."""
        try:
            return {f[11:].split(".")[0] for f in os.listdir(out)
                    if f.startswith("checkpoint-") and (f.endswith(".h5") or f.endswith(".h5.tmp"))}
        except OSError:
            return set()

    def trial_checkpoint(self, trial):
        steps, every = 10, 1
        if "checkpoint" not in self.ref:
            self.count("checkpoint", self.train_cmd(os.path.join(self.work, "checkpoint-strace"), steps, every, False),
                       os.path.join(self.work, "checkpoint-strace.log"))
            # the reference run, watched: how long a checkpoint's .tmp lives
            out = os.path.join(self.work, "checkpoint-ref")
            log = out + ".log"
            t0 = time.time()
            with open(log, "w") as lf:
                p = subprocess.Popen([str(a) for a in self.train_cmd(out, steps, every, False)], stdout=lf,
                                     stderr=subprocess.STDOUT, env=ENV)
            seen = {}
            while p.poll() is None:
                now = time.time()
                cur = set(self.ckpt_tmps(out))
                for f in cur:
                    seen.setdefault(f, [now, now])[1] = now
                time.sleep(0.0005)
            sec = time.time() - t0
            if p.returncode != 0:
                print(f"  NOT OK  checkpoint: the reference run failed (exit {p.returncode})")
                sys.exit(1)
            lives = sorted(b - a for a, b in seen.values())
            self.save_s = max(lives[len(lives) // 2] if lives else 0.01, 0.002)
            self.ref["checkpoint"] = (self.train_result(out), sec)
            print(f"  checkpoint: reference run {sec:.2f} s, {steps} checkpoints; a checkpoint's .tmp seen for "
                  f"{self.save_s * 1000:.1f} ms (median of {len(lives)} seen)", flush=True)
        ref, dur = self.ref["checkpoint"]
        out = os.path.join(self.work, "checkpoint", f"t{trial}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = self.train_cmd(out, steps, every, False)
        k = self.rng.randint(1, steps)
        extra = self.rng.uniform(0, 1.5 * self.save_s)
        log = out + "-kill.log"
        counts = self.calls.get("checkpoint", {})
        if self.forced:
            landed, rc = run_killed_at(cmd, *self.forced, log)
            self.note("checkpoint", f"aimed at {self.forced[0]} n, each n in turn")
            return landed, self.checkpoint_after(trial, out, cmd, ref, landed, rc, log)
        if counts and self.rng.random() < 0.5:  # aimed at a system call
            call = self.rng.choice(sorted(c for c in counts if counts[c]))
            landed, rc = run_killed_at(cmd, call, self.rng.randint(1, counts[call]), log)
            self.note("checkpoint", f"aimed at a {call}")
            return landed, self.checkpoint_after(trial, out, cmd, ref, landed, rc, log)
        self.note("checkpoint", "during a save (a random time after its file appeared)")
        with open(log, "w") as lf:
            p = subprocess.Popen([str(a) for a in cmd], stdout=lf, stderr=subprocess.STDOUT, env=ENV)
        names, t_seen = set(), None
        while p.poll() is None:
            names.update(self.ckpt_steps(out))
            if len(names) >= k and t_seen is None:
                t_seen = time.time()
            if t_seen is not None and time.time() - t_seen >= extra:
                os.kill(p.pid, signal.SIGKILL)
                break
            time.sleep(0.0002)
        p.wait()
        landed = p.returncode == -signal.SIGKILL
        return landed, self.checkpoint_after(trial, out, cmd, ref, landed, p.returncode, log)

    def checkpoint_after(self, trial, out, cmd, ref, landed, rc, log):
        if not landed and rc != 0:
            return self.fail("checkpoint", trial, f"the run ended with exit {rc} before its kill", log)
        if landed and self.ckpt_tmps(out):
            self.note("checkpoint", "killed with a checkpoint .tmp on disk")
        # what the kill left: every checkpoint-N.h5 whole
        done = sorted(int(f[11:-3]) for f in os.listdir(out) if f.startswith("checkpoint-") and f.endswith(".h5")) \
            if os.path.isdir(out) else []
        for s in done:
            why = checkpoint_whole(os.path.join(out, f"checkpoint-{s}.h5"))
            if why:
                return self.fail("checkpoint", trial, f"after the kill checkpoint-{s}.h5 is not whole: {why}", log)
        want = done[-1] if done else 0
        if not landed:
            return self.train_finish("checkpoint", trial, out, cmd, ref)
        return self.train_finish("checkpoint", trial, out, cmd, ref, want_resume=want)

    # -- generation sweeps ---------------------------------------------------

    def gen_cmd(self, *out):
        return [self.sdc, "generate", "-m", self.model, "-p", "a red fox", "-p", "a cat", "-W", 64, "-H", 64,
                "--steps", "2,3", "--cfg-scale", "1,7.5", "-b", 2, "-t", 1, *out]

    def h5_items(self, path):
        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}

    def trial_h5_sweep(self, trial):
        if "h5_sweep" not in self.ref:
            path = os.path.join(self.work, "h5_sweep-ref.h5")
            rc, text, sec = timed(self.gen_cmd("--output-h5", path, "-q"), path + ".log")
            if rc != 0:
                print(f"  NOT OK  h5_sweep: the reference run failed (exit {rc})\n{text[-2000:]}")
                sys.exit(1)
            self.ref["h5_sweep"] = (self.h5_items(path), sec)
            print(f"  h5_sweep: reference run {sec:.2f} s, {len(self.ref['h5_sweep'][0]['done'])} items", flush=True)
            self.count("h5_sweep", self.gen_cmd("--output-h5", path + "-strace.h5"), path + "-strace.log")
        ref, dur = self.ref["h5_sweep"]
        n = len(ref["done"])
        path = os.path.join(self.work, "h5_sweep", f"t{trial}.h5")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cmd = self.gen_cmd("--output-h5", path)
        landed, done = 0, 0
        for k in range(self.rng.choice((1, 1, 2))):
            log = path + f"-kill{k}.log"
            hit, rc = self.kill_once("h5_sweep", cmd, log, dur)
            landed += hit
            if not hit and rc != 0:
                return landed, self.fail("h5_sweep", trial, f"a run ended with exit {rc} before its kill", log)
            if not os.path.exists(path):
                done = 0
                continue
            try:
                got = self.h5_items(path)
            except Exception as e:
                return landed, self.fail("h5_sweep", trial, f"after kill {k + 1} the file does not open: {e}", log)
            mask = got["done"].astype(bool)
            wrong = [i for i in np.flatnonzero(mask) if not np.array_equal(got["images"][i], ref["images"][i])]
            if wrong:
                return landed, self.fail("h5_sweep", trial, f"after kill {k + 1} items {wrong[:5]} are marked done "
                                         f"without their image", log)
            meta = [key for key in ref if key not in ("images", "done") and not np.array_equal(got[key], ref[key])]
            if meta:
                return landed, self.fail("h5_sweep", trial, f"after kill {k + 1} the items' {meta} differ", log)
            done = int(mask.sum())
            self.note("h5_sweep", "items done when killed", done)
        log = path + "-final.log"
        rc, text = run(cmd, log)
        if rc != 0:
            return landed, self.fail("h5_sweep", trial, f"the re-run ended with exit {rc}", log)
        if f"wrote {n - done} items" not in text or (done and f"{done} already done" not in text):
            return landed, self.fail("h5_sweep", trial, f"the re-run should make exactly the {n - done} missing "
                                     f"items ({done} done)", log)
        got = self.h5_items(path)
        bad = [key for key in ref if not np.array_equal(got.get(key), ref[key])]
        if bad:
            return landed, self.fail("h5_sweep", trial, f"the finished file differs from the uninterrupted one: {bad}",
                                     log)
        if os.path.exists(path + ".tmp"):
            return landed, self.fail("h5_sweep", trial, f"{path}.tmp left at the end", log)
        return landed, True

    def png_names(self, d):
        return sorted(f for f in os.listdir(d))

    def trial_png_sweep(self, trial):
        if "png_sweep" not in self.ref:
            d = os.path.join(self.work, "png_sweep-ref")
            os.makedirs(d)
            rc, text, sec = timed(self.gen_cmd("-o", os.path.join(d, "x.png"), "-q"), d + ".log")
            if rc != 0:
                print(f"  NOT OK  png_sweep: the reference run failed (exit {rc})\n{text[-2000:]}")
                sys.exit(1)
            self.ref["png_sweep"] = ({f: open(os.path.join(d, f), "rb").read() for f in self.png_names(d)}, sec)
            print(f"  png_sweep: reference run {sec:.2f} s, {len(self.ref['png_sweep'][0])} PNGs", flush=True)
            os.makedirs(d + "-strace")
            self.count("png_sweep", self.gen_cmd("-o", os.path.join(d + "-strace", "x.png")), d + "-strace.log")
        ref, dur = self.ref["png_sweep"]
        d = os.path.join(self.work, "png_sweep", f"t{trial}")
        os.makedirs(d)
        cmd = self.gen_cmd("-o", os.path.join(d, "x.png"), "--skip-existing")
        landed, have = 0, 0
        for k in range(self.rng.choice((1, 1, 2))):
            log = d + f"-kill{k}.log"
            hit, rc = self.kill_once("png_sweep", cmd, log, dur)
            landed += hit
            if not hit and rc != 0:
                return landed, self.fail("png_sweep", trial, f"a run ended with exit {rc} before its kill", log)
            names = [f for f in self.png_names(d) if f.endswith(".png")]
            for f in names:
                if f not in ref:
                    return landed, self.fail("png_sweep", trial, f"after kill {k + 1}: {f} is not an item's name", log)
                try:
                    px = png_decode(os.path.join(d, f))
                except Exception as e:
                    return landed, self.fail("png_sweep", trial, f"after kill {k + 1}: {f} is not whole: {e}", log)
                if px != png_decode_bytes(ref[f]):
                    return landed, self.fail("png_sweep", trial, f"after kill {k + 1}: {f} differs from the "
                                             f"reference", log)
            have = len(names)
            self.note("png_sweep", "PNGs there when killed", have)
        log = d + "-final.log"
        rc, text = run(cmd, log)
        if rc != 0:
            return landed, self.fail("png_sweep", trial, f"the re-run ended with exit {rc}", log)
        if have and f"{have} of {len(ref)} PNGs were there already" not in text:
            return landed, self.fail("png_sweep", trial, f"the re-run should keep the {have} PNGs there", log)
        names = self.png_names(d)
        if names != sorted(ref):
            return landed, self.fail("png_sweep", trial, f"the folder holds {len(names)} names, not the "
                                     f"{len(ref)} items: extra {sorted(set(names) - set(ref))[:4]}, missing "
                                     f"{sorted(set(ref) - set(names))[:4]}", log)
        diff = [f for f in names if open(os.path.join(d, f), "rb").read() != ref[f]]
        if diff:
            return landed, self.fail("png_sweep", trial, f"{diff[:4]} differ from the uninterrupted run", log)
        return landed, True

    # -- sdc convert ---------------------------------------------------------

    def trial_convert(self, trial):
        kinds = (".safetensors", ".h5", "")
        if "convert" not in self.ref:
            self.ref["convert"] = {}
            for kind in kinds:
                new, old = (os.path.join(self.work, f"convert-ref-{w}{kind}") for w in ("new", "old"))
                rc1, t1, sec = timed([self.sdc, "convert", "-q", "-m", self.model, "-o", new], new + ".log")
                # the previous output: f32 (the demo model is f16, as the new output)
                rc2, t2, _ = timed([self.sdc, "convert", "-q", "-m", self.model, "--dtype", "f32", "-o", old],
                                   old + ".log")
                if rc1 or rc2 or sig(new) == sig(old):
                    print(f"  NOT OK  convert: the reference conversions failed (exit {rc1}, {rc2}) or gave the "
                          f"same output\n{t1}{t2}")
                    sys.exit(1)
                if kind == "":  # a file of the user's in the folder: it stays
                    with open(os.path.join(old, "README.md"), "w") as f:
                        f.write("the user's notes\n")
                self.ref["convert"][kind] = (new, sig(new), old, sig(old), sec)
                print(f"  convert{kind or ' (diffusers folder)'}: reference run {sec:.3f} s", flush=True)
                if self.strace:
                    traced = os.path.join(self.work, f"convert-strace{kind}")
                    (shutil.copytree if os.path.isdir(old) else shutil.copy2)(old, traced)
                    c = count_calls([self.sdc, "convert", "-q", "-m", self.model, "-o", traced], CALLS["convert"],
                                    traced + ".log")
                    self.calls["convert" + (kind or "/")] = c
                    print(f"    system calls: " + ", ".join(f"{k} {v}" for k, v in c.items()), flush=True)
        kind = kinds[self.counts["convert"]["trials"] % 3] if self.kind is None else self.kind
        _, new_sig, old, old_sig, dur = self.ref["convert"][kind]
        out = os.path.join(self.work, "convert", f"t{trial}", "out" + kind)
        os.makedirs(os.path.dirname(out))
        had = self.forced is not None or self.rng.random() < 0.67
        if had:
            (shutil.copytree if os.path.isdir(old) else shutil.copy2)(old, out)
        before = old_sig if had else None
        if had and kind == "":  # the user's README.md stays beside the new files
            d = dict(new_sig[1])
            d["README.md"] = sha(os.path.join(old, "README.md"))
            new_sig = ("dir", tuple(sorted(d.items(), key=lambda kv: kv[0])))
        log = out + "-kill.log"
        self.calls["convert"] = self.calls.get("convert" + (kind or "/"), {})
        hit, rc = self.kill_once("convert", [self.sdc, "convert", "-q", "-m", self.model, "-o", out], log, dur)
        if not hit and rc != 0:
            return 0, self.fail("convert", trial, f"the conversion ended with exit {rc} before its kill", log)
        now = sig(out)
        what = kind or "folder"
        if hit and now not in (before, new_sig):
            return hit, self.fail("convert", trial, f"{what}: after the kill the output is neither the previous one "
                                  f"({'there' if had else 'none'}) nor the complete new one: "
                                  f"{str(now)[:160]}", log)
        if not hit and now != new_sig:
            return hit, self.fail("convert", trial, f"{what}: finished, but the output is not the reference", log)
        self.note("convert", f"{what} trials")
        if hit and now == before:
            self.note("convert", "previous output (or none) found intact after the kill")
        log = out + "-final.log"
        rc, text = run([self.sdc, "convert", "-q", "-m", self.model, "-o", out], log)
        if rc != 0 or sig(out) != new_sig:
            return hit, self.fail("convert", trial, f"{what}: the re-run (exit {rc}) did not give the new output", log)
        left = [f for f in os.listdir(os.path.dirname(out)) if f.endswith(".tmp") or f.endswith(".sdc-tmp")]
        if left:
            return hit, self.fail("convert", trial, f"{what}: temporaries left at the end: {left}", log)
        return hit, True

    def trial(self, s, i):
        landed, ok = getattr(self, "trial_" + s)(i)
        c = self.counts[s]
        c["trials"] += 1
        c["landed"] += int(bool(landed))
        c["passed" if ok else "failed"] += 1

    def run_all(self, trials, only, every_call):
        scen = [s for s in SCENARIOS if s in only]
        t0 = time.time()
        if every_call:  # each scenario killed at each time it makes the call, one after the other
            call, _, span = every_call.partition(":")
            lo, _, hi = span.partition("-")
            i = 0
            for s in scen:
                for kind in ((".safetensors", ".h5", "") if s == "convert" else ("",)):
                    n = int(lo or 1)
                    self.kind = kind if s == "convert" else None
                    while True:
                        self.forced = (call, n)
                        self.trial(s, i)
                        i += 1
                        key = s + (kind or "/") if s == "convert" else s
                        last = int(hi) if hi else self.calls.get(key, {}).get(call, 0)
                        n += 1
                        if n > last:
                            break
            trials = i
        for i in range(trials if not every_call else 0):
            self.trial(scen[i % len(scen)], i)
            if (i + 1) % 25 == 0:
                print(f"  ... {i + 1} of {trials} trials ({time.time() - t0:.0f} s)", flush=True)
        print(f"{'scenario':<12} {'trials':>6} {'killed':>6} {'passed':>6} {'failed':>6}")
        tot = {"trials": 0, "landed": 0, "passed": 0, "failed": 0}
        for s in scen:
            c = self.counts[s]
            for k in tot:
                tot[k] += c[k]
            extra = "; ".join(f"{k}: {v}" for k, v in self.extra[s].items())
            print(f"{s:<12} {c['trials']:>6} {c['landed']:>6} {c['passed']:>6} {c['failed']:>6}"
                  + (f"   ({extra})" if extra else ""))
        print(f"{'all':<12} {tot['trials']:>6} {tot['landed']:>6} {tot['passed']:>6} {tot['failed']:>6}")
        print(f"{tot['passed']} passed, {tot['failed']} failed ({time.time() - t0:.1f} s; 'killed': trials whose "
              f"SIGKILL landed while sdc ran)")
        return tot["failed"] == 0 and tot["passed"] > 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sdc")
    ap.add_argument("model")
    ap.add_argument("work")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--no-strace", dest="strace", action="store_false",
                    help="kill at random times only (not also at random system calls)")
    ap.add_argument("--every-call", metavar="CALL[:FROM-TO]",
                    help="instead of random trials: kill each scenario at every time it makes system call CALL "
                         "(the FROM-th to the TO-th; all by default), with a previous output for convert")
    a = ap.parse_args()
    only = a.only.split(",")
    if any(s not in SCENARIOS for s in only):
        ap.error(f"--only: scenarios are {', '.join(SCENARIOS)}")
    c = Campaign(a)
    print(f"kill campaign: {a.trials} trials, seed {a.seed}, scenarios {', '.join(only)}", flush=True)
    if a.every_call and not c.strace:
        ap.error("--every-call needs strace")
    sys.exit(0 if c.run_all(a.trials, only, a.every_call) else 1)


if __name__ == "__main__":
    main()
