#!/usr/bin/env python3
"""make_folder_fixture.py: diffusers folders as diffusers reads them.

A folder's scheduler/scheduler_config.json decides what every scheduler a
user builds on it does (`XScheduler.from_config(pipe.scheduler.config)`):
the fields the file gives reach every class that has them, the others take
each class's default. This writes the references that prove sdc samples a
folder the same way, for every sdc sampler.

Writes
  tests/fixtures/sched/<style>.json   scheduler configs ("original": the file
      a model shipped with, as text; "current": written by this diffusers'
      save_config; the other styles exercise single fields)
  tests/fixtures/ref-folders.safetensors
    traj.model_out (MAX_EVALS, 4, 8, 8), traj.x0 (1, 4, 8, 8): the fixed model
        outputs and the img2img "encoded image" of the trajectories (the same
        seeds as ref-sampling.safetensors)
    traj.<style>.<sampler>.{timesteps,sigmas,init_noise_sigma,final}: a 20-step
        run of the sampler's class built with from_config(<style>'s config,
        **the sampler's options), from randn(seed 42) * init_noise_sigma, fed
        traj.model_out; sigmas only for the classes that have them
    traj.<style>.<sampler>.img2img.{begin,final}: strength 0.6, from
        add_noise(traj.x0, randn(seed 42), timesteps[begin])
    img.<model>.ctx (2, 77, D): [negative, prompt] embeddings (prompt_embeds)
    img.<model>.<style>[+<override>].<sampler> (64, 64, 3) U8: the image of
        StableDiffusionPipeline.from_pretrained(folder) with the scheduler
        replaced as users do, output_type "np" -> round(255 x), where folder is
        tests/fixtures/<model> with scheduler/ = <style>.json. Overrides (A1111's
        schedule options, sdc's --timestep-spacing / --karras) are passed to
        from_config: "+trailing" timestep_spacing="trailing", "+karras"
        use_karras_sigmas=True.
    img.params F32 [steps, cfg, seed, width, height]
  and the metadata: the styles, the cases, the diffusers version.

Run: python3 tools/make_folder_fixture.py   (torch, diffusers, transformers)
"""
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import inspect  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import diffusers  # noqa: E402
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                       LMSDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, UniPCMultistepScheduler)
from safetensors.torch import save_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
SCHED_DIR = os.path.join(FIX, "sched")
OUT = os.path.join(FIX, "ref-folders.safetensors")

# sdc sampler -> (diffusers class, the options its name means)
SAMPLERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "ddpm": (DDPMScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m_karras": (DPMSolverMultistepScheduler,
                       {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "dpm++2m_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpm++2m_sde_karras": (DPMSolverMultistepScheduler,
                           {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {"solver_type": "bh2", "solver_order": 2, "predict_x0": True}),
    "euler_karras": (EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    "heun_karras": (HeunDiscreteScheduler, {"use_karras_sigmas": True}),
    "lms_karras": (LMSDiscreteScheduler, {"use_karras_sigmas": True}),
}
KARRAS_CLASSES = (EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler, DPMSolverMultistepScheduler,
                  UniPCMultistepScheduler)

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

# The files SD 1.5 and SD 2.1 shipped with (diffusers 0.6 / 0.8 wrote them):
# no timestep_spacing; runwayml's PNDM file carries DDIM's clip_sample.
SD15_ORIGINAL = """{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
}
"""
SD21_ORIGINAL = """{
  "_class_name": "DDIMScheduler",
  "_diffusers_version": "0.8.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "num_train_timesteps": 1000,
  "prediction_type": "v_prediction",
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}
"""


def saved(sched):
    d = tempfile.mkdtemp()
    try:
        sched.save_config(d)
        with open(os.path.join(d, "scheduler_config.json")) as f:
            return f.read()
    finally:
        shutil.rmtree(d)


def trained_betas(n):
    # an increasing schedule that no formula gives (float32-exact values)
    t = np.linspace(0, 1, n)
    b = 0.0005 + 0.02 * t ** 1.7 + 0.0003 * np.sin(7 * t)
    return [float(np.float32(x)) for x in b]


def styles():
    """name -> (config text, prediction of the model it goes with)."""
    s = {
        "sd15-original": SD15_ORIGINAL,
        # as current diffusers writes SD 1.5's PNDM config (tests/fixtures/tiny-sd1's)
        "sd15-current": saved(PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                                            prediction_type="epsilon", timestep_spacing="leading")),
        "sd21-original": SD21_ORIGINAL,
        "sd21-current": saved(DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                            prediction_type="v_prediction", timestep_spacing="leading")),
        # zero terminal SNR with trailing timesteps (Lin et al. 2023), v-prediction
        "zsnr-trailing": saved(DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                             prediction_type="v_prediction", timestep_spacing="trailing",
                                             rescale_betas_zero_snr=True)),
        # a DPM-Solver++ Karras config as fine-tunes ship it (lambda_min_clipped: -Infinity)
        "dpm-karras": saved(DPMSolverMultistepScheduler(**SD_BETAS, steps_offset=1, use_karras_sigmas=True,
                                                        prediction_type="epsilon")),
        # single fields: DDIM's own defaults (clip_sample, set_alpha_to_one true, offset 0)
        "ddim-defaults": json.dumps({"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                                     "beta_schedule": "scaled_linear"}, indent=2) + "\n",
        # linear betas with each class's default beta range (Heun's differs)
        "linear-defaults": json.dumps({"_class_name": "PNDMScheduler", "beta_schedule": "linear"}, indent=2) + "\n",
        "cosine-500": json.dumps({"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2",
                                  "num_train_timesteps": 500, "clip_sample": False,
                                  "timestep_spacing": "trailing"}, indent=2) + "\n",
        "trained-300": json.dumps({"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 300,
                                   "trained_betas": trained_betas(300), "timestep_spacing": "leading",
                                   "steps_offset": 2}) + "\n",
        "heun-clip": saved(HeunDiscreteScheduler(**SD_BETAS, clip_sample=True, clip_sample_range=0.6,
                                                 steps_offset=1)),
    }
    return s


# Runs diffusers itself cannot make: DPM-Solver's Karras timesteps on the
# cosine schedule repeat the first timestep (498 x 9 at 20 steps), and its
# step index then starts at the second one and runs past the end (IndexError).
SKIP = {("cosine-500", "dpm++2m_karras"), ("cosine-500", "dpm++2m_sde_karras")}

# model -> the styles whose images are checked on it, and the overrides
IMAGE_STYLES = {
    "tiny-sd1": ["sd15-original", "sd15-current", "dpm-karras"],
    "tiny-sd2": ["sd21-original", "sd21-current", "zsnr-trailing"],
}
OVERRIDES = {  # on "sd15-original" / tiny-sd1
    "trailing": (["euler", "euler_a", "ddim", "dpm++2m", "unipc"], {"timestep_spacing": "trailing"}),
    "karras": (["euler", "heun", "lms", "dpm++2m", "dpm++2m_sde", "unipc"], {"use_karras_sigmas": True}),
}
STEPS, CFG, SEED, W, H = 8, 5.0, 31, 64, 64
TRAJ_STEPS, MAX_EVALS, STRENGTH = 20, 40, 0.6
SHAPE = (1, 4, 8, 8)


def base_scheduler(text):
    """What from_pretrained on a folder with this scheduler_config.json loads."""
    cfg = json.loads(text)
    cls = getattr(diffusers, cfg["_class_name"])
    return cls.from_config(cfg)


def make(base, sampler, extra=None):
    cls, opts = SAMPLERS[sampler]
    return cls.from_config(base.config, **opts, **(extra or {}))


def step_kwargs(sched, g):
    params = set(inspect.signature(sched.step).parameters)
    kw = {}
    if "eta" in params:
        kw["eta"] = 0.0
    if "generator" in params:
        kw["generator"] = g
    return kw


def run(sched, x, g, outs, timesteps):
    for k, t in enumerate(timesteps):
        sched.scale_model_input(x, t)
        x = sched.step(outs[k:k + 1], t, x, **step_kwargs(sched, g)).prev_sample
    return x


def trajectory(out, key, base, sampler, outs, x0):
    sched = make(base, sampler)
    sched.set_timesteps(TRAJ_STEPS)
    ts = sched.timesteps
    assert len(ts) <= MAX_EVALS
    g = torch.Generator("cpu").manual_seed(42)
    x = torch.randn(SHAPE, generator=g) * sched.init_noise_sigma
    out[f"{key}.init_noise_sigma"] = torch.tensor([float(sched.init_noise_sigma)])
    x = run(sched, x, g, outs, ts)
    out[f"{key}.timesteps"] = ts.to(torch.float32).contiguous()
    if sampler not in ("ddim", "pndm", "ddpm"):
        out[f"{key}.sigmas"] = sched.sigmas.to(torch.float32).contiguous()
    out[f"{key}.final"] = x.contiguous()
    # img2img (StableDiffusionImg2ImgPipeline.get_timesteps + prepare_latents)
    sched = make(base, sampler)
    sched.set_timesteps(TRAJ_STEPS)
    init_timestep = min(int(TRAJ_STEPS * STRENGTH), TRAJ_STEPS)
    begin = max(TRAJ_STEPS - init_timestep, 0) * sched.order
    ts = sched.timesteps[begin:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin)
    g = torch.Generator("cpu").manual_seed(42)
    noise = torch.randn(SHAPE, generator=g)
    x = sched.add_noise(x0, noise, ts[:1])
    out[f"{key}.img2img.begin"] = torch.tensor([float(begin)])
    out[f"{key}.img2img.final"] = run(sched, x, g, outs[begin:], ts).contiguous()


def folder_with(model, text):
    """A folder that is tests/fixtures/<model> with another scheduler config."""
    d = tempfile.mkdtemp()
    src = os.path.join(FIX, model)
    for sub in ("unet", "vae", "text_encoder"):
        os.symlink(os.path.realpath(os.path.join(src, sub)), os.path.join(d, sub))
    shutil.copy(os.path.join(src, "model_index.json"), d)
    os.makedirs(os.path.join(d, "scheduler"))
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
        f.write(text)
    return d


def images(out, model, style_texts):
    cases = []
    g = torch.Generator().manual_seed(SEED + 500)
    ctx = None
    for style in IMAGE_STYLES[model]:
        d = folder_with(model, style_texts[style])
        try:
            pipe = StableDiffusionPipeline.from_pretrained(d, safety_checker=None, feature_extractor=None,
                                                           image_encoder=None, tokenizer=None,
                                                           requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            base = pipe.scheduler
            if ctx is None:
                text = pipe.text_encoder
                ids = torch.randint(1, text.config.vocab_size - 2, (2, 77), generator=g)
                ids[:, 0] = text.config.bos_token_id
                ids[0, 4:] = text.config.eos_token_id
                ids[1, 14:] = text.config.eos_token_id
                with torch.no_grad():
                    ctx = text(input_ids=ids).last_hidden_state.contiguous()
                out[f"img.{model}.ctx"] = ctx
            jobs = [(s, "", {}) for s in SAMPLERS]
            if model == "tiny-sd1" and style == "sd15-original":
                for name, (samplers, extra) in OVERRIDES.items():
                    jobs += [(s, "+" + name, extra) for s in samplers]
            for sampler, tag, extra in jobs:
                pipe.scheduler = make(base, sampler, extra)
                res = pipe(prompt_embeds=ctx[1:2], negative_prompt_embeds=ctx[0:1], num_inference_steps=STEPS,
                           guidance_scale=CFG, height=H, width=W, output_type="np",
                           generator=torch.Generator("cpu").manual_seed(SEED))
                img = (res.images[0] * 255).round().astype(np.uint8)
                key = f"img.{model}.{style}{tag}.{sampler}"
                out[key] = torch.from_numpy(img.copy())
                cases.append(key)
                print(f"  {key}: mean {img.mean():.1f}")
        finally:
            shutil.rmtree(d)
    return cases


def main():
    torch.set_num_threads(2)
    texts = styles()
    if os.path.isdir(SCHED_DIR):
        shutil.rmtree(SCHED_DIR)
    os.makedirs(SCHED_DIR)
    for name, text in texts.items():
        with open(os.path.join(SCHED_DIR, name + ".json"), "w") as f:
            f.write(text)
    out = {}
    outs = torch.randn((MAX_EVALS,) + SHAPE[1:], generator=torch.Generator("cpu").manual_seed(7))
    x0 = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(11))
    out["traj.model_out"], out["traj.x0"] = outs, x0
    for style, text in texts.items():
        base = base_scheduler(text)
        for sampler in SAMPLERS:
            if (style, sampler) not in SKIP:
                trajectory(out, f"traj.{style}.{sampler}", base, sampler, outs, x0)
        print(f"traj {style}: {len(SAMPLERS)} samplers")
    cases = []
    for model in IMAGE_STYLES:
        cases += images(out, model, texts)
    out["img.params"] = torch.tensor([STEPS, CFG, SEED, W, H], dtype=torch.float32)
    meta = {"styles": ",".join(texts), "samplers": ",".join(SAMPLERS), "images": ",".join(cases),
            "diffusers": diffusers.__version__, "torch": torch.__version__}
    save_file(out, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB, {len(out)} tensors) and {len(texts)} configs "
          f"in {SCHED_DIR}")


if __name__ == "__main__":
    sys.exit(main())
