#!/usr/bin/env python3
"""Reference tensors for sdc's random numbers and samplers.

Writes tests/fixtures/ref-sampling.safetensors:
  rng.seed<S>.n<N>        torch.randn(N, generator=torch.Generator().manual_seed(S))
  rng.uniform.seed<S>     torch.rand(64, ...)
  <sampler>.<spacing>.<pred>.{timesteps,sigmas,init,model_out,final}
      a whole trajectory of the diffusers scheduler fed fixed model outputs:
      init (1,4,8,8) is randn(seed 42) * init_noise_sigma, model_out (steps,4,8,8)
      the outputs fed at each step, final the latent after the last step.
The scheduler math needs no model, so any fixed outputs prove the same steps.
Run: python3 tools/make_sampling_fixture.py  (torch, diffusers, safetensors)
"""
import os

import torch
from diffusers import EulerDiscreteScheduler
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ref-sampling.safetensors")
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
          steps_offset=1)


def trajectory(cls, spacing, pred, steps, tensors, name):
    sched = cls(**SD, timestep_spacing=spacing, prediction_type=pred)
    sched.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(42)
    x = torch.randn((1, 4, 8, 8), generator=g) * sched.init_noise_sigma
    init = x.clone()
    outs = torch.randn((steps, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7))
    for i, t in enumerate(sched.timesteps):
        sched.scale_model_input(x, t)  # advances nothing, but keep the call order of a pipeline
        x = sched.step(outs[i:i + 1], t, x).prev_sample
    tensors[f"{name}.timesteps"] = sched.timesteps.to(torch.float32).contiguous()
    tensors[f"{name}.sigmas"] = sched.sigmas.to(torch.float32).contiguous()
    tensors[f"{name}.init"] = init.contiguous()
    tensors[f"{name}.model_out"] = outs.contiguous()
    tensors[f"{name}.final"] = x.contiguous()


def main():
    t = {}
    for seed in (0, 42, 1234567):
        for n in (5, 16, 20, 256, 4 * 64 * 64):
            t[f"rng.seed{seed}.n{n}"] = torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))
        t[f"rng.uniform.seed{seed}"] = torch.rand(64, generator=torch.Generator("cpu").manual_seed(seed))
    for spacing in ("leading", "trailing", "linspace"):
        for pred in ("epsilon", "v_prediction"):
            trajectory(EulerDiscreteScheduler, spacing, pred, 20, t, f"euler.{spacing}.{pred}")
    save_file(t, OUT)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB, {len(t)} tensors)")


if __name__ == "__main__":
    main()
