#!/usr/bin/env python3
"""Reference tensors for sdc's random numbers and samplers.

Writes tests/fixtures/ref-sampling.safetensors:
  rng.seed<S>.n<N>        torch.randn(N, generator=torch.Generator().manual_seed(S))
  rng.uniform.seed<S>     torch.rand(64, ...)
  schedule.alphas_cumprod (1000,) the SD schedule (scaled_linear 0.00085 -> 0.012)
  sampler.model_out       (MAX_EVALS, 4, 8, 8) the model output fed at evaluation i
                          (randn, seed 7); every run uses its first `evals` rows
  sampler.x0              (1, 4, 8, 8) the "encoded image" of the img2img runs (seed 11)
  sampler.default_spacing.<name>  (1,) the class's default timestep_spacing, what
                          from_config(SD 1.5's config) gives: 0 leading, 1 trailing, 2 linspace
  <run>.{timesteps,sigmas,init,final}
      a whole run of the diffusers scheduler built with from_config(SD 1.5's
      scheduler_config.json) plus the run's options, fed sampler.model_out:
      timesteps (evals,) as the pipeline passes them to the UNet, sigmas
      (scheduler.sigmas, only for schedulers that have them), init (1,4,8,8) =
      randn(generator seed 42) * init_noise_sigma, final the latent after the
      last step. Stochastic schedulers get generator= the same generator,
      continued, exactly as StableDiffusionPipeline passes it.
  <run>.img2img.{begin,noised,final}
      diffusers' img2img start at strength 0.6: begin (1,) = t_start * order,
      noised = add_noise(x0, randn(seed 42), timesteps[begin]), final after the
      remaining steps (the same generator continued for the stochastic ones).
<run> is "<sampler>.<spacing>.<prediction>.s<steps>" with ".eta<eta>" appended when eta != 0.
The scheduler math needs no model, so any fixed outputs prove the same steps.
Run: python3 tools/make_sampling_fixture.py  (torch, diffusers, safetensors)
"""
import inspect
import os

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ref-sampling.safetensors")
# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (no timestep_spacing key)
SD15 = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "trained_betas": None}
# sdc name -> (class, extra config)
SAMPLERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m_karras": (DPMSolverMultistepScheduler,
                       {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "dpm++2m_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "euler_karras": (EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    "heun_karras": (HeunDiscreteScheduler, {"use_karras_sigmas": True}),
    "lms_karras": (LMSDiscreteScheduler, {"use_karras_sigmas": True}),
    "dpm++2m_sde_karras": (DPMSolverMultistepScheduler,
                           {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {"solver_type": "bh2", "solver_order": 2, "predict_x0": True}),
}
SHAPE = (1, 4, 8, 8)
MAX_EVALS = 40
STRENGTH = 0.6


def default_spacing(name):
    # what a user gets from XScheduler.from_config(SD 1.5's config): the class's own default
    cls, extra = SAMPLERS[name]
    return cls.from_config({**SD15, **extra}).config.timestep_spacing


def make(name, spacing, pred):
    cls, extra = SAMPLERS[name]
    return cls.from_config({**SD15, **extra, "timestep_spacing": spacing, "prediction_type": pred})


def step_kwargs(sched, g, eta):
    # what StableDiffusionPipeline.prepare_extra_step_kwargs passes
    params = set(inspect.signature(sched.step).parameters)
    kw = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = g
    return kw


def run(sched, x, g, outs, eta, timesteps):
    for k, t in enumerate(timesteps):
        sched.scale_model_input(x, t)  # the pipeline's call order (it sets step_index)
        x = sched.step(outs[k:k + 1], t, x, **step_kwargs(sched, g, eta)).prev_sample
    return x


def trajectory(tensors, outs, x0, name, spacing, pred, steps, eta=0.0, img2img=False):
    key = f"{name}.{spacing}.{pred}.s{steps}" + (f".eta{eta:g}" if eta else "")
    sched = make(name, spacing, pred)
    sched.set_timesteps(steps)
    ts = sched.timesteps
    assert len(ts) <= MAX_EVALS
    g = torch.Generator("cpu").manual_seed(42)
    x = torch.randn(SHAPE, generator=g) * sched.init_noise_sigma
    tensors[f"{key}.init"] = x.clone()
    x = run(sched, x, g, outs, eta, ts)
    tensors[f"{key}.timesteps"] = ts.to(torch.float32).contiguous()
    if hasattr(sched, "sigmas") and name not in ("ddim", "pndm", "ddpm"):
        tensors[f"{key}.sigmas"] = sched.sigmas.to(torch.float32).contiguous()
    tensors[f"{key}.final"] = x.contiguous()

    if img2img:
        # StableDiffusionImg2ImgPipeline.get_timesteps + prepare_latents
        sched = make(name, spacing, pred)
        sched.set_timesteps(steps)
        init_timestep = min(int(steps * STRENGTH), steps)
        t_start = max(steps - init_timestep, 0)
        begin = t_start * sched.order
        ts = sched.timesteps[begin:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        g = torch.Generator("cpu").manual_seed(42)
        noise = torch.randn(SHAPE, generator=g)
        x = sched.add_noise(x0, noise, ts[:1])
        tensors[f"{key}.img2img.begin"] = torch.tensor([float(begin)])
        tensors[f"{key}.img2img.noised"] = x.clone()
        x = run(sched, x, g, outs[begin:], eta, ts)
        tensors[f"{key}.img2img.final"] = x.contiguous()


def main():
    t = {}
    for seed in (0, 42, 1234567):
        for n in (5, 16, 20, 256, 4 * 64 * 64):
            t[f"rng.seed{seed}.n{n}"] = torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))
        t[f"rng.uniform.seed{seed}"] = torch.rand(64, generator=torch.Generator("cpu").manual_seed(seed))
    t["schedule.alphas_cumprod"] = make("ddim", "leading", "epsilon").alphas_cumprod.to(torch.float32).contiguous()
    outs = torch.randn((MAX_EVALS,) + SHAPE[1:], generator=torch.Generator("cpu").manual_seed(7))
    x0 = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(11))
    t["sampler.model_out"] = outs
    t["sampler.x0"] = x0
    for name in SAMPLERS:
        spacing = default_spacing(name)
        print(f"{name:16s} default timestep_spacing = {spacing}")
        t[f"sampler.default_spacing.{name}"] = torch.tensor([float(("leading", "trailing", "linspace").index(spacing))])
        all_spacings = ("leading", "trailing", "linspace") if name in ("euler", "ddim", "dpm++2m") else (spacing,)
        for sp in all_spacings:
            for pred in ("epsilon", "v_prediction"):
                trajectory(t, outs, x0, name, sp, pred, 20, img2img=(sp == spacing))
        trajectory(t, outs, x0, name, spacing, "epsilon", 5)
    trajectory(t, outs, x0, "ddim", "leading", "epsilon", 20, eta=1.0, img2img=True)
    trajectory(t, outs, x0, "pndm", "linspace", "epsilon", 20)
    trajectory(t, outs, x0, "ddpm", "linspace", "v_prediction", 20)
    trajectory(t, outs, x0, "euler_a", "leading", "epsilon", 20)
    trajectory(t, outs, x0, "dpm++2m_sde", "trailing", "epsilon", 7)
    trajectory(t, outs, x0, "heun", "trailing", "v_prediction", 7)
    trajectory(t, outs, x0, "lms", "leading", "epsilon", 20)
    trajectory(t, outs, x0, "unipc", "trailing", "v_prediction", 20)
    save_file(t, OUT)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB, {len(t)} tensors)")


if __name__ == "__main__":
    main()
