#!/usr/bin/python3
"""bench_pipeline.py: pipeline-parallel DreamBooth measured on this machine
(mpi/pp_train.h), with the scaling model checked against it.

  bench/bench_pipeline.py --sdc build/sdc --bench build/bench MODEL [--latent 16] [--steps 4] [--out DIR]
                          [--memory-latent 64] [--skip-memory] [--skip-timing]

MODEL: the real-shape SD 1.5 (python3 tools/make_fixtures.py --full-sd15
/tmp/sd15.safetensors). Runs, each a few optimizer steps of full
fine-tuning on one micro-batch row per micro-batch, one OpenMP thread per
rank on a 2-core machine unless said:
  - one process on both cores (the peer: "the same cores") and on one;
  - 2 stages x 1 replica, 1F1B with M = 1, 2, 4, 8 and GPipe with M = 4, 8:
    step time, each stage's idle share against the schedule's bubble
    (P - 1) / (M + P - 1), the micro-batches each stage holds (1F1B: at most
    P - s; GPipe: M), its parameter and activation memory;
  - 1 stage x 2 replicas with the gradient all-reduce overlapped and not
    (SDC_NO_OVERLAP=1): the reduction time left after the backward (LoRA
    rank 64, 48.7 MiB of gradients: two full fine-tuning replicas, 17 GB
    each, do not fit a 24 GB machine);
  - the SD 1.5 memory per rank for full fine-tuning at 512 px on 1, 2 and 4
    stages (one step each);
then bench_blocks (the per-block profiles, 1 and 2 threads), bench_mpi_link
and bench_scale_model --check on the measured step times, and the model's
H100 table and plot. Prints markdown; writes CSVs and the SVG into --out.
A benchmark, not a test: nothing is checked; the figures go to
docs/pipeline.md with the CPU named."""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

MPIEXEC = ["mpiexec", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run(cmd, env=None, timeout=7200):
    t0 = time.time()
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env=dict(os.environ, **(env or {})), timeout=timeout)
    return p.returncode, p.stdout, time.time() - t0


def train(a, out, ranks, threads, extra, env=None):
    """One sdc train dreambooth run (or the log of an earlier run of the
    same command in out, when it ended well); returns its parsed output. The
    exported model is deleted (an SD 1.5 export is ~12 GB)."""
    log = os.path.join(out, "bench.log")
    key = repr((ranks, threads, extra, env, a.latent, a.steps, a.model))
    if os.path.exists(log):
        with open(log) as f:
            first, rest = f.readline().rstrip("\n"), f.read()
        if first == key:
            return parse(out, 0, rest, 0.0)
    shutil.rmtree(out, ignore_errors=True)
    args = [a.sdc, "train", "dreambooth", "--pretrained-model", a.model, "--instance-data", a.instances,
            "--instance-prompt", "a photo of sks thing", "--resolution", a.latent * 8, "--output-dir", out, "-t",
            threads, "--learning-rate", "1e-6", "--lr-warmup-steps", 0, "--checkpointing-steps", 100000,
            "--max-train-steps", a.steps, *extra]
    env = dict(env or {}, OMP_NUM_THREADS=str(threads))
    cmd = (MPIEXEC + ["-n", ranks] + [x for k in env for x in ("-x", f"{k}={env[k]}")] if ranks > 1 else []) + args
    rc, text, sec = run(cmd, env)
    for junk in ("diffusers", "model.h5", "model.safetensors"):
        p = os.path.join(out, junk)
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
    for f in os.listdir(out) if os.path.isdir(out) else []:
        if f.startswith("checkpoint-") or f.endswith(".tmp"):
            os.remove(os.path.join(out, f))
    if rc == 0:
        with open(log, "w") as f:
            f.write(key + "\n" + text)
    return parse(out, rc, text, sec)


def parse(out, rc, text, sec):
    r = {"rc": rc, "text": text, "seconds": sec, "stages": {}, "memory": {}}
    if rc != 0:
        print(f"  run {out} failed (exit {rc}):\n" + "\n".join(text.splitlines()[-8:]), file=sys.stderr)
        return r
    steps = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if "step_s" in j:
                steps.append(j["step_s"])
    r["step_s"] = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
    for m in re.finditer(r"sdc: stage (\d+) \(blocks (\d+)-(\d+), (\d+) micro-batch(?:es)? held\): (\d+) steps, "
                         r"([\d.]+) s forward, ([\d.]+) s backward, ([\d.]+) s waiting for neighbours \(([\d.]+)% of "
                         r"([\d.]+) s\)", text):
        s = int(m.group(1))
        r["stages"][s] = {"blocks": (int(m.group(2)), int(m.group(3))), "held": int(m.group(4)),
                          "fwd": float(m.group(6)), "bwd": float(m.group(7)), "wait": float(m.group(8)),
                          "idle": float(m.group(9)) / 100, "total": float(m.group(10))}
    for m in re.finditer(r"sdc: stage (\d+) memory: UNet parameters ([\d.]+) MiB, trained ([\d.]+) MiB .*?AdamW "
                         r"([\d.]+) MiB, activations (\d+) x ([\d.]+) MiB .*?peak resident (\d+) MiB", text):
        r["memory"][int(m.group(1))] = {"params": float(m.group(2)), "trained": float(m.group(3)),
                                        "adamw": float(m.group(4)), "held": int(m.group(5)),
                                        "act": float(m.group(6)), "peak": float(m.group(7))}
    m = re.search(r"gradient all-reduce over \d+ replicas: ([\d.]+) ms per step after the backward \(([^)]*)\)", text)
    if m:
        r["allreduce_ms"], r["allreduce_how"] = float(m.group(1)), m.group(2)
    m = re.search(r"pipeline cut .*", text)
    r["cut"] = m.group(0) if m else ""
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--sdc", default="build/sdc")
    ap.add_argument("--bench", default="build/bench")
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--memory-latent", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="/tmp/sdc-bench-pipeline")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    src = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    photos = os.path.join(src, "..", "shared", "data", "dreambooth")
    print(f"# Pipeline-parallel DreamBooth on {cpu_name()} ({os.cpu_count()} cores), "
          f"{time.strftime('%Y-%m-%d')}\n")
    # the instance set: every subject's photos in one dataset (enough rows for 8 micro-batches)
    a.instances = os.path.join(a.out, "instances.h5")
    if not os.path.exists(a.instances):
        subj = sorted(os.path.join(photos, d) for d in os.listdir(photos) if os.path.isdir(os.path.join(photos, d)))
        rc, text, _ = run([a.sdc, "dataset", "import", "-q", "--resolution", a.latent * 8, "--center-crop", "-p",
                           "a photo of sks thing", "--cache-latents", "-m", a.model, "-o", a.instances, *subj])
        if rc:
            sys.exit("dataset import failed:\n" + text)

    rows = []
    if not a.skip_timing:
        print(f"## Timing: SD 1.5 shape at {a.latent * 8} px (latent {a.latent}), full fine-tuning, one row per "
              f"micro-batch, median of steps 2..{a.steps}\n")
        runs = {}
        runs["one-2t"] = train(a, os.path.join(a.out, "one-2t"), 1, 2, ["--train-batch-size", 4, "--micro-batches", 4])
        runs["one-1t"] = train(a, os.path.join(a.out, "one-1t"), 1, 1, ["--train-batch-size", 4, "--micro-batches", 4])
        for sched, ms in (("1f1b", (1, 2, 4, 8)), ("gpipe", (4, 8))):
            for M in ms:
                runs[f"p2-{sched}-m{M}"] = train(a, os.path.join(a.out, f"p2-{sched}-m{M}"), 2, 1,
                                                 ["--train-batch-size", M, "--micro-batches", M, "--pipeline-stages", 2,
                                                  "--pipeline-schedule", sched])
        for ov in ("on", "off"):
            runs[f"d2-overlap-{ov}"] = train(a, os.path.join(a.out, f"d2-overlap-{ov}"), 2, 1,
                                             ["--train-batch-size", 4, "--micro-batches", 2, "--lora-rank", 64],
                                             env={"SDC_NO_OVERLAP": "1" if ov == "off" else "0",
                                                  "SDC_DP_BUCKET_MB": "25"})
        print("| run | P x D | schedule | micro-batches per replica | threads/rank | s/step | images/s | images/s vs "
              "one process on the same 2 cores |\n|---|---|---|---|---|---|---|---|")
        base = runs["one-2t"].get("step_s")
        for name, r in runs.items():
            if "step_s" not in r or name.startswith("d2"):  # LoRA: in the overlap section
                continue
            P = 2 if name.startswith("p2") else 1
            D = 2 if name.startswith("d2") else 1
            M = int(name.split("-m")[-1]) if "-m" in name else (4 if name.startswith("one") else 2)
            threads = 2 if name == "one-2t" else 1
            sched = "gpipe" if "gpipe" in name else "1f1b"
            ips = M * D / r["step_s"]
            ratio = f"{ips / (4 / base):.2f}x" if base else ""
            print(f"| {name} | {P} x {D} | {sched} | {M} | {threads} | {r['step_s']:.3f} | {ips:.3f} | {ratio} |")
            rows.append((P, D, M, 1, sched, threads, r["step_s"], a.latent))
        print("\nBubble: each stage's share of the step waiting for a neighbour, against the schedule's "
              "(P - 1) / (M + P - 1); the micro-batches each stage holds:\n")
        print("| run | stage | blocks | held | forward s | backward s | waiting s | idle | formula |\n"
              "|---|---|---|---|---|---|---|---|---|")
        for name, r in runs.items():
            for s, st in sorted(r["stages"].items()):
                M = int(name.split("-m")[-1])
                print(f"| {name} | {s} | {st['blocks'][0]}-{st['blocks'][1]} | {st['held']} | {st['fwd']:.2f} | "
                      f"{st['bwd']:.2f} | {st['wait']:.2f} | {100 * st['idle']:.1f}% | {100 / (M + 1):.1f}% |")
        print("\nStage memory (MiB):\n\n| run | stage | UNet params | AdamW | activations held x each | peak resident |\n"
              "|---|---|---|---|---|---|")
        for name, r in runs.items():
            for s, mm in sorted(r["memory"].items()):
                print(f"| {name} | {s} | {mm['params']:.0f} | {mm['adamw']:.0f} | {mm['held']} x {mm['act']:.1f} | "
                      f"{mm['peak']:.0f} |")
        print("\nOverlap (1 stage x 2 replicas): the gradient reduction left after the backward, per step:\n")
        for ov in ("on", "off"):
            r = runs[f"d2-overlap-{ov}"]
            if "allreduce_ms" in r:
                print(f"- overlap {ov}: {r['allreduce_ms']:.1f} ms ({r['allreduce_how']}); step {r['step_s']:.3f} s")
        with open(os.path.join(a.out, "measured.csv"), "w") as f:
            for row in rows:
                f.write(",".join(str(x) for x in row) + "\n")

        # the model's inputs and its check
        print("\n## Scaling model check\n")
        prof = {}
        for t in (1, 2):
            path = os.path.join(a.out, f"profile-{t}t.csv")
            rc, text, _ = run([os.path.join(a.bench, "bench_blocks"), a.model, "--latent", a.latent, "--rows", 1,
                               "--threads", t, "--repeat", 2])
            with open(path, "w") as f:
                f.write("\n".join(l for l in text.splitlines() if not l.startswith("bench_blocks:")) + "\n")
            prof[t] = path
            print(f"- profile, {t} thread{'s' if t > 1 else ''}: " +
                  " ".join(l for l in text.splitlines() if l.startswith("bench_blocks:")))
        rc, link, _ = run(MPIEXEC + ["-n", 2, os.path.join(a.bench, "bench_mpi_link"), "--max-mib", 64])
        link = link.strip().splitlines()[-1] if link.strip() else ""
        kv = dict(x.split("=") for x in link.split() if "=" in x)
        print(f"- MPI link (2 ranks, shared memory): {link}\n")
        rc, text, _ = run([os.path.join(a.bench, "bench_scale_model"), "--profile", f"1={prof[1]}", "--profile",
                           f"2={prof[2]}", "--check", os.path.join(a.out, "measured.csv"),
                           "--p2p-lat-us", kv.get("p2p_lat_us", 1), "--p2p-gbps", kv.get("p2p_gbps", 1),
                           "--ar-lat-us", kv.get("allreduce_lat_us", 5), "--ar-gbps", kv.get("allreduce_gbps", 1)])
        print(text)

    if not a.skip_memory:
        print(f"## SD 1.5 full fine-tuning at {a.memory_latent * 8} px: memory per rank (one step, one row per "
              "micro-batch, M = stages)\n")
        print("| stages | rank | UNet params MiB | AdamW MiB | activations held x each MiB | peak resident MiB |\n"
              "|---|---|---|---|---|---|")
        saved = a.latent
        a.latent = a.memory_latent
        inst = a.instances
        a.instances = os.path.join(a.out, "instances-mem.h5")
        if not os.path.exists(a.instances):
            run([a.sdc, "dataset", "import", "-q", "--resolution", a.latent * 8, "--center-crop", "-p", "x",
                 "--cache-latents", "-m", a.model, "-o", a.instances, os.path.join(photos, "dog")])
        steps = a.steps
        a.steps = 1
        for P in (1, 2, 4):
            extra = ["--train-batch-size", P, "--micro-batches", P] + (["--pipeline-stages", P] if P > 1 else [])
            r = train(a, os.path.join(a.out, f"mem-p{P}"), P, 1 if P > 1 else 2, extra)
            for s, mm in sorted(r["memory"].items()):
                print(f"| {P} | {s} | {mm['params']:.0f} | {mm['adamw']:.0f} | {mm['held']} x {mm['act']:.0f} | "
                      f"{mm['peak']:.0f} |")
        a.latent, a.instances, a.steps = saved, inst, steps
        print()

    # the H100 predictions from the 512 px profile
    path = os.path.join(a.out, "profile-512.csv")
    if not os.path.exists(path):
        rc, text, _ = run([os.path.join(a.bench, "bench_blocks"), a.model, "--latent", 64, "--rows", 1, "--threads",
                           2, "--repeat", 1])
        with open(path, "w") as f:
            f.write("\n".join(l for l in text.splitlines() if not l.startswith("bench_blocks:")) + "\n")
    rc, text, _ = run([os.path.join(a.bench, "bench_scale_model"), "--profile", f"0={path}", "--cluster", "h100",
                       "--svg", os.path.join(a.out, "scaling-h100.svg")])
    print("## Scaling model: SD 1.5 512 px DreamBooth on H100 clusters\n\n" + text)


main()
