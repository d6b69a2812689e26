#!/usr/bin/python3
"""sdc_checks.py SDC MODEL SRC WORK: `sdc submit` on a real (one-node) Slurm
cluster (tests/slurm/cluster.sh; started here when it is not up, and then
stopped again):

  1. a generation sweep as a job array of 2 tasks x 2 ranks (srun
     --mpi=pmix): the two shard files hold exactly the sweep a single
     process makes, image for image;
  2. DreamBooth on 2 ranks, stopped mid-run the way Slurm warns before a time
     limit (SIGUSR1 to the batch script, `scancel --batch --signal=USR1`):
     the ranks save a checkpoint and exit 75, the script requeues the job,
     the second run resumes from that checkpoint, and the final model equals
     an uninterrupted 2-rank run (mpiexec) bit for bit;
  3. bad input to `sdc submit` is refused with a message.

numpy + h5py (/usr/bin/python3). One line per check, "N passed, N failed";
exit 1 on a failure."""
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from checklib import check, finish, refused, run, show  # noqa: E402

try:
    import h5py
    import numpy as np
except ImportError as e:
    print(f"FAILED: {e}\n---> run tools/setup.sh (Debian: apt-get install python3-h5py)")
    sys.exit(1)

def job_state(job, env):
    """The job's (or array's tasks') states from squeue; [] once it has left the queue."""
    rc, out = run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, timeout=30)
    return [l.strip() for l in out.splitlines() if l.strip()] if rc == 0 else []


def wait_gone(job, env, limit):
    t0 = time.time()
    while time.time() - t0 < limit:
        if not job_state(job, env):
            return time.time() - t0
        time.sleep(0.5)
    return None


def final_states(slurm_dir, job):
    """JobId -> the last JobState logged in jobcomp.log for job (or its array tasks)."""
    st = {}
    path = os.path.join(slurm_dir, "log", "jobcomp.log")
    if os.path.exists(path):
        for line in open(path):
            m = re.search(r"JobId=(\d+)\S* .*JobState=(\w+)", line)
            if m and (m.group(1) == job or f"ArrayJobId={job}" in line or line.startswith(f"JobId={job}")):
                st[m.group(1)] = m.group(2)
    return st


def h5(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("images", "seed", "cfg", "steps", "done", "sweep_index")}


def main():
    if len(sys.argv) != 5:
        print(__doc__)
        sys.exit(2)
    sdc, model, src, work = (os.path.abspath(a) for a in sys.argv[1:])
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t00 = time.time()
    cluster = os.path.join(src, "tests", "slurm", "cluster.sh")
    slurm_dir = os.environ.get("SDC_SLURM_DIR", "/tmp/sdc-slurm")
    rc, out = run([cluster, "status"], timeout=60)
    was_up = rc == 0 and any(w in out for w in ("idle", "mixed", "alloc"))
    rc, out = run([cluster, "start"], timeout=120)
    if not check(rc == 0, f"one-node Slurm cluster up (tests/slurm/cluster.sh start: exit {rc})"):
        show(out)
        sys.exit(1)
    env = {"SLURM_CONF": os.path.join(slurm_dir, "slurm.conf"), "SDC_SLURM_DIR": slurm_dir}
    try:
        sweep(sdc, model, work, env, slurm_dir)
        train(sdc, model, src, work, env, slurm_dir)
        bad(sdc, work, env)
    finally:
        if not was_up:
            run([cluster, "stop"], timeout=120)
    finish(time.time() - t00)


def submit(sdc, manifest, args, env, cwd):
    p = subprocess.run([sdc, "submit", manifest] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60, cwd=cwd,
                       env=dict(os.environ, **env))
    m = re.search(r"Submitted batch job (\d+)", p.stdout)
    return p.returncode, p.stdout, m.group(1) if m else None


def sweep(sdc, model, work, env, slurm_dir):
    d = os.path.join(work, "sweep")
    os.makedirs(d)
    gen = [sdc, "generate", "-m", model, "-p", "a red fox", "-p", "a cat", "-W", 64, "-H", 64, "--steps", "2,3",
           "--cfg-scale", "1,7", "-b", 3, "-t", 1, "--output-h5"]
    rc, text = run(gen + [os.path.join(d, "sweep.h5"), "--dump-manifest"])
    open(os.path.join(d, "sweep.txtpb"), "w").write(text)
    rc, out = run(gen + [os.path.join(d, "local.h5"), "-q"])
    if not check(rc == 0, f"sweep: 2 prompts x 2 steps x 2 cfg x 3 seeds made locally (exit {rc})"):
        show(out)
        return
    rc, out, job = submit(sdc, os.path.join(d, "sweep.txtpb"), ["--array", 2, "--ntasks-per-node", 2, "-t", 10], env, d)
    script = open(os.path.join(d, "sweep.sbatch")).read() if os.path.exists(os.path.join(d, "sweep.sbatch")) else ""
    if not check(rc == 0 and job and "#SBATCH --array=0-1" in script and "--shard \"$SLURM_ARRAY_TASK_ID/2\"" in script,
                 f"sweep: sdc submit --array 2 --ntasks-per-node 2: exit {rc}, job {job}"):
        show(out)
        return
    took = wait_gone(job, env, 180)
    logs = "".join(open(os.path.join(d, f)).read() for f in sorted(os.listdir(d)) if f.endswith(".log"))
    parts = [os.path.join(d, f"sweep-0000{k}-of-00002.h5") for k in (1, 2)]
    ok = took is not None and all(os.path.exists(p) for p in parts)
    if not check(ok, f"sweep: both array tasks finished in {took if took is None else round(took, 1)} s and wrote "
                 f"{[os.path.basename(p) for p in parts if os.path.exists(p)]}"):
        show(logs, 20)
        return
    A, P = h5(os.path.join(d, "local.h5")), [h5(p) for p in parts]
    same = all(np.array_equal(np.concatenate([p[k] for p in P]), A[k]) for k in A)
    ranks = len(re.findall(r"\(\d+ already done, 2 ranks\)", logs))
    check(same and ranks == 2, f"sweep: the shards ({[len(p['seed']) for p in P]} items, each task on 2 ranks: "
          f"{ranks} of 2 logs say so) hold the local sweep's {len(A['seed'])} items, images bit for bit")


def metric_steps(path):
    if not os.path.exists(path):
        return 0
    return sum(1 for line in open(path) if line.strip() and '"event"' not in line)


def train(sdc, model, src, work, env, slurm_dir):
    d = os.path.join(work, "train")
    os.makedirs(d)
    photos = os.path.join(src, "tests", "fixtures", "images")
    steps = 300
    args = lambda out: [sdc, "train", "dreambooth", "--pretrained-model", model, "--instance-data", photos,
                        "--instance-prompt", "a photo of sks dog", "--resolution", 64, "--output-dir", out, "-t", 1,
                        "--train-batch-size", 2, "--max-train-steps", steps, "--checkpointing-steps", 1000,
                        "--learning-rate", "1e-4", "--lr-scheduler", "cosine", "--lr-warmup-steps", 10]
    rc, out = run(args(os.path.join(d, "ref")) + ["-q"], ranks=2)
    if not check(rc == 0, f"train: {steps} steps on 2 ranks (mpiexec), uninterrupted: exit {rc}"):
        show(out)
        return
    rc, text = run(args(os.path.join(d, "slurm")) + ["--dump-manifest"])
    manifest = os.path.join(d, "train.txtpb")
    open(manifest, "w").write(text)
    rc, out, job = submit(sdc, manifest, ["--ntasks-per-node", 2, "-t", 30, "--signal-lead", 60], env, d)
    frozen = open(os.path.join(d, "train.job.txtpb")).read() if os.path.exists(os.path.join(d, "train.job.txtpb")) else ""
    if not check(rc == 0 and job and 'resume_from_checkpoint: "latest"' in frozen,
                 f"train: sdc submit --ntasks-per-node 2: exit {rc}, job {job}; the frozen manifest resumes from "
                 "'latest'"):
        show(out)
        return
    mp = os.path.join(d, "slurm", "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < 120 and metric_steps(mp) < 20 and job_state(job, env):
        time.sleep(0.05)
    logged = metric_steps(mp)
    rc, out = run(["scancel", "--batch", "--signal=USR1", job], env=env, timeout=30)
    if not check(rc == 0 and 0 < logged < steps, f"train: {logged} steps logged, then SIGUSR1 to the batch script "
                 f"(as --signal=B:USR1 before a time limit): scancel exit {rc}"):
        show(out)
        return
    took = wait_gone(job, env, 240)
    logs = "".join(open(os.path.join(d, f)).read() for f in sorted(os.listdir(d)) if f.endswith(".log"))
    stop = re.search(r"sdc: stopped: SIGUSR1 at step (\d+) of", logs)
    at = int(stop.group(1)) if stop else -1
    resumed = re.search(r"resumed from \S*checkpoint-(\d+)\.h5 at step (\d+)", logs)
    check(stop is not None and "requeueing" in logs and ", run 2," in logs and resumed is not None and
          int(resumed.group(1)) == at and took is not None,
          f"train: the ranks stopped at step {at}, the script requeued the job, run 2 resumed from "
          f"checkpoint-{resumed.group(1) if resumed else '?'}.h5 and the job left the queue after "
          f"{took if took is None else round(took, 1)} s")
    fa, fb = os.path.join(d, "ref", "model.h5"), os.path.join(d, "slurm", "model.h5")
    if not check(os.path.exists(fb), "train: the requeued run exported model.h5"):
        show(logs, 20)
        return
    with h5py.File(fa, "r") as a, h5py.File(fb, "r") as b:
        names = []
        a["unet"].visititems(lambda k, v: names.append(k) if isinstance(v, h5py.Dataset) else None)
        diff = [k for k in names if a["unet"][k][()].tobytes() != b["unet"][k][()].tobytes()]
    check(names and not diff, f"train: stopped + requeued + resumed on Slurm == uninterrupted on mpiexec: "
          f"{len(names)} UNet tensors bit-identical ({len(diff)} differ)")


def bad(sdc, work, env):
    d = os.path.join(work, "bad")
    os.makedirs(d)
    m = os.path.join(d, "x.txtpb")
    rc, text = run([sdc, "train", "dreambooth", "--pretrained-model", "m.safetensors", "--instance-data", "photos",
                    "--instance-prompt", "sks", "--dump-manifest"])
    open(m, "w").write(text)
    for args, needle in ((["--array", 2], "splits generation sweeps"), (["-p", "a b"], "cannot go into an #SBATCH line"),
                         (["--nodes", 0], "expected an integer"), (["--bogus"], "unexpected argument")):
        p = subprocess.run([sdc, "submit", m, "--dry-run"] + [str(a) for a in args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60, env=dict(os.environ, **env))
        check(refused(p.returncode) and needle in p.stdout, f"submit {' '.join(map(str, args))} refused: exit "
              f"{p.returncode}, '{p.stdout.strip().splitlines()[-1][:110] if p.stdout.strip() else ''}'")
    pm = os.path.join(d, "pp.txtpb")
    rc, text = run([sdc, "generate", "-m", "m.safetensors", "-p", "x", "--pipeline-stages", 2, "--dump-manifest"])
    open(pm, "w").write(text)
    p = subprocess.run([sdc, "submit", pm, "--ntasks-per-node", "3", "--dry-run"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    check(refused(p.returncode) and "a multiple of 2" in p.stdout, f"2 pipeline stages on 3 ranks per node refused: exit "
          f"{p.returncode}")
    p = subprocess.run([sdc, "submit", os.path.join(d, "missing.txtpb")], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    check(refused(p.returncode) and "missing.txtpb" in p.stdout, f"submit of a missing manifest refused: exit "
          f"{p.returncode}")


if __name__ == "__main__":
    main()
