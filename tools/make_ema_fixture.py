#!/usr/bin/env python3
"""make_ema_fixture.py: tests/fixtures/ref-ema.safetensors, diffusers'
EMAModel on two small parameters over 30 optimizer steps (the weights moved
by a seeded random walk each step), for tests/test_ema.c:
  param_K_step_S   the weights after step S (S = 1..30), K = 0, 1
  shadow_K_step_S  EMAModel's shadow after its step S
  default config, and (shadow_warm_*) use_ema_warmup=True, power 3/4,
  update_after_step 2, min_decay 0.5, decay 0.99.
Run from the repository root with the pyenv python3 (torch, diffusers)."""
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import save_file

torch.manual_seed(0)
p = [torch.nn.Parameter(torch.randn(37)), torch.nn.Parameter(torch.randn(4, 5))]
ema = EMAModel(p, foreach=False)
warm = EMAModel(p, foreach=False, use_ema_warmup=True, power=0.75, update_after_step=2, min_decay=0.5, decay=0.99)
out = {"param_0_step_0": p[0].detach().clone(), "param_1_step_0": p[1].detach().clone()}
for s in range(1, 31):
    with torch.no_grad():
        for x in p:
            x.add_(0.1 * torch.randn_like(x))
    ema.step(p)
    warm.step(p)
    for k in range(2):
        out["param_%d_step_%d" % (k, s)] = p[k].detach().clone()
        out["shadow_%d_step_%d" % (k, s)] = ema.shadow_params[k].detach().clone()
        out["shadow_warm_%d_step_%d" % (k, s)] = warm.shadow_params[k].detach().clone()
save_file({k: v.contiguous() for k, v in out.items()}, "tests/fixtures/ref-ema.safetensors")
print("wrote tests/fixtures/ref-ema.safetensors (%d tensors)" % len(out))
