"""checklib.py: what the end-to-end check scripts share (tests/*_checks.py,
tests/slurm/sdc_checks.py): one line per check, the tally, running sdc (under
mpiexec when asked) and showing the tail of its output on a failure."""
import os
import subprocess
import sys

MPIEXEC = ["mpiexec", "--allow-run-as-root", "--oversubscribe", "-x", "OMP_NUM_THREADS=1"]
tally = {"passed": 0, "failed": 0}


def check(cond, msg):
    """Prints one check's line; counts it."""
    print(("  OK      " if cond else "  NOT OK  ") + msg, flush=True)
    tally["passed" if cond else "failed"] += 1
    return cond


def refused(rc):
    """An exit status that is sdc refusing something: non-zero, and not a crash
    (Python gives a signal as a negative status; a shell or mpiexec, 126 and
    up). A segfault after the right message is not a refusal."""
    return 0 < rc < 126


def show(out, n=6):
    """The last n lines of a command's output, indented (printed on a failure)."""
    for line in out.strip().splitlines()[-n:]:
        print("          | " + line)


def run(args, ranks=0, env=None, timeout=300):
    """Runs args (under mpiexec -n ranks when ranks > 0) with one OpenMP thread
    per process; returns (exit status, stdout + stderr)."""
    cmd = (MPIEXEC + ["-n", str(ranks)] if ranks else []) + [str(a) for a in args]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                       env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    return p.returncode, p.stdout


def finish(seconds):
    """Prints "N passed, N failed" and exits 1 on a failure or when nothing ran."""
    print(f"{tally['passed']} passed, {tally['failed']} failed ({seconds:.1f} s)")
    sys.exit(1 if tally["failed"] or not tally["passed"] else 0)
