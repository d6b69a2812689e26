#!/usr/bin/env python3
"""Reference tensors for sdc's optimizer, gradient clipping and lr schedules.

Writes tests/fixtures/ref-optim.safetensors (read by tests/test_optim.c; the
constants below are repeated there):

  adamw.*   a DreamBooth-style update loop, as diffusers' train_dreambooth runs
            it with accelerate on one process, gradient_accumulation_steps 1:
                norm = clip_grad_norm_(params, MAX_NORM)
                optimizer.step(); lr_scheduler.step(); optimizer.zero_grad()
            torch.optim.AdamW(betas (0.9, 0.999), weight_decay 1e-2, eps 1e-8,
            foreach=False: the single-tensor fp32 path sdc mirrors), two param
            groups: group 0 = p0, p1 at LR; group 1 = p2 at LR * GROUP1_SCALE
            (how a text-encoder lr would enter). Schedule: cosine, WARMUP
            warmup steps over TOTAL steps, STEPS optimizer steps.
    adamw.p<i>.init   (shape)          f32 parameter before step 0
    adamw.p<i>.grads  (STEPS, *shape)  f32 raw gradient fed at step k (before clipping)
    adamw.p<i>.final / .m / .v  (shape) f32 param, exp_avg, exp_avg_sq after STEPS
    adamw.lr     (STEPS,) f64  group 0's lr in use at step k (get_last_lr before step)
    adamw.norm   (STEPS,) f32  clip_grad_norm_'s return (the pre-clip total norm)
    The gradient scale varies per step so that some steps clip (norm > 1) and
    some do not.

  sched.<name>.lr  (SCHED_N,) f64  lr at optimizer step k = 0..SCHED_N-1 from
            diffusers.optimization.get_scheduler(name, AdamW(lr=SCHED_LR),
            num_warmup_steps=SCHED_WARMUP, num_training_steps=SCHED_TOTAL, ...)
            SCHED_N > SCHED_TOTAL so the tail past the end is covered.
            names: constant, constant_with_warmup, linear, cosine,
            cosine_with_restarts (num_cycles 3), polynomial (power 1),
            polynomial_p2 (power 2), and *.w0 variants with no warmup.

Run: python3 tools/make_optim_fixture.py   (torch, diffusers, safetensors)
"""
import os

import torch
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ref-optim.safetensors")

SHAPES = [(7, 5), (13,), (4, 3, 2)]
LR = 1e-2  # large for DreamBooth, so the update (not rounding) dominates the comparison
GROUP1_SCALE = 0.5
MAX_NORM = 1.0
STEPS, WARMUP, TOTAL = 10, 3, 10
# per-step gradient std: steps with std >~ 0.14 have norm > 1 (~ 52 values) and clip
GRAD_STD = [0.05, 0.3, 0.02, 0.5, 0.1, 0.25, 0.08, 1.5, 0.04, 0.2]

SCHED_LR, SCHED_WARMUP, SCHED_TOTAL, SCHED_N = 1e-3, 5, 20, 25
SCHEDS = {  # fixture name -> (diffusers name, extra kwargs)
    "constant": ("constant", {}),
    "constant_with_warmup": ("constant_with_warmup", {}),
    "linear": ("linear", {}),
    "cosine": ("cosine", {}),
    "cosine_with_restarts": ("cosine_with_restarts", {"num_cycles": 3}),
    "polynomial": ("polynomial", {"power": 1.0}),
    "polynomial_p2": ("polynomial", {"power": 2.0}),
}


def adamw_run(out):
    g = torch.Generator().manual_seed(1234)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    grads = [torch.randn((STEPS, *s), generator=g) for s in SHAPES]
    for k in range(STEPS):
        for gr in grads:
            gr[k] *= GRAD_STD[k]
    for i, p in enumerate(params):
        out[f"adamw.p{i}.init"] = p.detach().clone()
        out[f"adamw.p{i}.grads"] = grads[i].clone()
    opt = torch.optim.AdamW([{"params": params[:2], "lr": LR}, {"params": params[2:], "lr": LR * GROUP1_SCALE}],
                            lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8, foreach=False)
    sched = get_scheduler("cosine", opt, num_warmup_steps=WARMUP, num_training_steps=TOTAL)
    lrs, norms = [], []
    for k in range(STEPS):
        for i, p in enumerate(params):
            p.grad = grads[i][k].clone()
        lrs.append(sched.get_last_lr()[0])
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_NORM)))
        opt.step()
        sched.step()
        opt.zero_grad()
    for i, p in enumerate(params):
        st = opt.state[p]
        assert int(st["step"]) == STEPS
        out[f"adamw.p{i}.final"] = p.detach().clone()
        out[f"adamw.p{i}.m"] = st["exp_avg"].clone()
        out[f"adamw.p{i}.v"] = st["exp_avg_sq"].clone()
    out["adamw.lr"] = torch.tensor(lrs, dtype=torch.float64)
    out["adamw.norm"] = torch.tensor(norms, dtype=torch.float32)
    n_clipped = sum(n > MAX_NORM for n in norms)
    assert 0 < n_clipped < STEPS, norms  # both branches of the clip are exercised
    print(f"adamw: norms {['%.3f' % n for n in norms]}, {n_clipped} clipped")


def sched_runs(out):
    for warmup, suffix in ((SCHED_WARMUP, ""), (0, ".w0")):
        for name, (dname, kw) in SCHEDS.items():
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.AdamW([p], lr=SCHED_LR)
            sched = get_scheduler(dname, opt, num_warmup_steps=warmup, num_training_steps=SCHED_TOTAL, **kw)
            lrs = []
            for _ in range(SCHED_N):
                lrs.append(sched.get_last_lr()[0])
                opt.step()  # no grad: a no-op, keeps torch from warning about the call order
                sched.step()
            out[f"sched.{name}{suffix}.lr"] = torch.tensor(lrs, dtype=torch.float64)


def main():
    out = {}
    adamw_run(out)
    sched_runs(out)
    save_file({k: v.contiguous() for k, v in sorted(out.items())}, OUT)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
