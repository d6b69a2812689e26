#!/usr/bin/env python3
"""txt2img_torch.py: the PyTorch peer for bench_txt2img.sh -- one SD 1.5
text-to-image generation with diffusers' StableDiffusionPipeline on the CPU,
timed the way `sdc generate` times itself (text encoder, denoising loop, VAE
decode), on the same single file and thread count.

    python3 bench/txt2img_torch.py --model SD15.safetensors [--threads 2] [--steps 20]
                                   [--size 512] [--cfg 7.5] [--seed 42] [--vae-tiling]
                                   [--precision fp32|bf16|bf16-autocast]

The three models are built from the SD 1.5 configs (tools/make_fixtures.py
sd15_configs) and filled tensor by tensor from the original-layout file with
the project's name map (checked against diffusers' convert_ldm_* converters
by make_fixtures.py --full-sd15), so no hub config is needed and the peak
memory is the models plus one tensor. No tokenizer: the prompt and the empty
negative prompt are fixed token ids encoded by the CLIP text model and passed
as prompt_embeds / negative_prompt_embeds. Scheduler: DPMSolverMultistep
(dpmsolver++, order 2, SD 1.5's scaled_linear betas) = sdc's --sampler dpm++2m.
The loop runs with output_type="latent" and the decode is timed separately
(vae.decode of latents / scaling_factor), so "decode" is the VAE alone.
Prints one line a shell script can parse:

    torch_txt2img text_s=<s> denoise_s=<s> s_per_step=<s> decode_s=<s> total_s=<s> peak_rss_mb=<MB>
                  loaded_rss_mb=<MB> gen_peak_rss_mb=<MB>

peak_rss_mb is the whole process (getrusage; loading through safetensors'
mmap counts the file's pages too); loaded_rss_mb the RSS once the models are
built; gen_peak_rss_mb the peak from then on (VmHWM after a clear_refs reset).

total_s = text + denoise + decode (model loading excluded, as in sdc's line).
--precision bf16: the three models' weights in bf16 (torch_dtype=bfloat16, as
diffusers' users load a pipeline in bf16); bf16-autocast: fp32 weights, the
text encoder, the loop and the decode under torch.autocast("cpu", bfloat16).
Never used at run time; needs torch + diffusers.
"""
import argparse
import gc
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import make_fixtures as mf  # noqa: E402  (SD 1.5 configs and the diffusers->original name map)


def status_mb(field):
    """VmRSS / VmHWM of this process in MB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def load_models(path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel
    unet_cfg, clip_cfg, vae_cfg = mf.sd15_configs()
    unet = UNet2DConditionModel(**unet_cfg).eval()
    vae = AutoencoderKL(**vae_cfg).eval()
    text = CLIPTextModel(CLIPTextConfig(**clip_cfg)).eval()
    with safe_open(path, "pt") as f, torch.no_grad():
        names = set(f.keys())

        def fill(p, name, reshape=None):
            if name not in names:
                sys.exit(f"txt2img_torch: {path} has no {name} ---> make it with "
                         "python3 tools/make_fixtures.py --full-sd15 PATH")
            t = f.get_tensor(name)
            p.copy_(t.reshape(p.shape) if reshape else t)

        for k, p in unet.state_dict(keep_vars=True).items():
            fill(p, "model.diffusion_model." + mf.unet_name_to_ldm(k, unet_cfg))
        for k, p in vae.state_dict(keep_vars=True).items():
            name, lin = mf.vae_name_to_ldm(k, vae_cfg)
            fill(p, "first_stage_model." + name, reshape=lin)
        tsd = text.state_dict(keep_vars=True)
        for k, p in tsd.items():
            kk = k if k.startswith("text_model.") else "text_model." + k
            if kk.endswith("position_ids"):
                continue
            fill(p, "cond_stage_model.transformer." + kk)
    return unet, vae, text, clip_cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--vae-tiling", action="store_true", help="vae.enable_tiling() (diffusers' 512 px tiles)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "bf16-autocast"], default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    t_load = time.perf_counter()
    unet, vae, text, clip_cfg = load_models(a.model)
    if a.precision == "bf16":
        unet, vae, text = unet.to(torch.bfloat16), vae.to(torch.bfloat16), text.to(torch.bfloat16)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", steps_offset=1,
                                        algorithm_type="dpmsolver++", solver_order=2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if a.vae_tiling:
        vae.enable_tiling()
    t_load = time.perf_counter() - t_load
    gc.collect()
    rss_loaded_mb = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM: the generation's own peak from here
        f.write("5")

    # "a photograph of an astronaut riding a horse" and "" as fixed ids (BOS, words, EOS, pad = EOS)
    L, bos, eos = clip_cfg["max_position_embeddings"], clip_cfg["bos_token_id"], clip_cfg["eos_token_id"]
    words = [320, 8853, 539, 550, 18376, 6765, 320, 4558]
    ids = torch.full((2, L), eos, dtype=torch.long)
    ids[:, 0] = bos
    ids[1, 1:1 + len(words)] = torch.tensor(words)
    step_t = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16-autocast")
    with torch.no_grad(), autocast:
        t0 = time.perf_counter()
        emb = text(ids)[0]  # (2, 77, 768) [negative, prompt]
        t_text = time.perf_counter() - t0

        def on_step(p, i, t, kw):
            step_t.append(time.perf_counter())
            return kw

        g = torch.Generator().manual_seed(a.seed)
        t1 = time.perf_counter()
        lat = pipe(prompt_embeds=emb[1:2], negative_prompt_embeds=emb[0:1], height=a.size, width=a.size,
                   num_inference_steps=a.steps, guidance_scale=a.cfg, generator=g, output_type="latent",
                   callback_on_step_end=on_step).images
        t_denoise = time.perf_counter() - t1
        t2 = time.perf_counter()
        img = vae.decode((lat / vae.config.scaling_factor).to(vae.dtype)).sample
        t_decode = time.perf_counter() - t2
    assert torch.isfinite(img).all(), "non-finite image"
    steps = [b - a_ for a_, b in zip([t1] + step_t[:-1], step_t)]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, whole run
    gen_mb = status_mb("VmHWM")  # peak since the reset after loading
    print(f"# torch {torch.__version__} precision={a.precision} threads={a.threads} steps={a.steps} size={a.size} cfg={a.cfg} "
          f"load={t_load:.1f}s step_s={[round(s, 2) for s in steps]}", file=sys.stderr)
    print(f"torch_txt2img text_s={t_text:.3f} denoise_s={t_denoise:.2f} s_per_step={t_denoise / a.steps:.3f} "
          f"decode_s={t_decode:.2f} total_s={t_text + t_denoise + t_decode:.2f} peak_rss_mb={rss_mb:.1f} "
          f"loaded_rss_mb={rss_loaded_mb:.1f} gen_peak_rss_mb={gen_mb:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
