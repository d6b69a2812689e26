#!/usr/bin/env python3
"""txt2img_cuda_torch.py: the PyTorch peer of bench_txt2img_cuda.c: diffusers'
StableDiffusionPipeline, end to end, on the random-weight SD 1.5 model.

    python3 bench/txt2img_cuda_torch.py --out DIR [--batches 1,8,32] [--steps 20]
                                        [--guidance 7.5] [--size 512]

1. Unless DIR/unet/diffusion_pytorch_model.safetensors exists, writes DIR (the
   SD 1.5-shape diffusers folder: unet/, vae/, text_encoder/, bf16, random
   weights, seed 0) with bench/unet_cuda_torch.py's make_model, so that
   bench_txt2img_cuda (sdc) and bench_unet_cuda load the same weights.
2. Builds StableDiffusionPipeline from those folders, bf16 on the GPU, no
   tokenizer or text encoder (the prompt embeddings are given, as sdc is
   given them: text encoding is not timed on either side), no safety checker,
   DPMSolverMultistepScheduler (DPM++ 2M: dpmsolver++, order 2, SD's
   scaled_linear betas), default attention (SDPA), output_type "np" so that
   the VAE decode and the copy of the pixels to the host are included.
3. Per batch B (B items, UNet batch 2B with guidance): one run of --steps
   steps, after one 2-step warm-up at batch 1. A step-end callback
   synchronises and takes the time: s_per_step is the median interval
   between step ends, s_total the whole call (latents drawn, denoising, VAE
   decode, to numpy). Prints one line per batch, which bench_txt2img_cuda
   parses:

       torch_txt2img batch=<B> s_per_step=<float> s_total=<float> peak_mib=<float>

   (peak_mib: torch.cuda.max_memory_allocated during that call, weights
   included.) A batch that runs out of memory prints s_per_step=0.

Never used at run time; needs torch + diffusers (see unet_cuda_torch.py for
how the wheels travel to a bare GPU machine).
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unet_cuda_torch  # noqa: E402  (make_model: the shared random SD 1.5 folder)


def build_pipeline(out, dev):
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    t0 = time.perf_counter()
    if os.path.isfile(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors")):
        unet = UNet2DConditionModel.from_pretrained(os.path.join(out, "unet"), torch_dtype=torch.bfloat16)
    else:
        unet = unet_cuda_torch.make_model(out, dev)
    vae = AutoencoderKL.from_pretrained(os.path.join(out, "vae"), torch_dtype=torch.bfloat16)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", algorithm_type="dpmsolver++",
                                        solver_order=2, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    print(f"# pipeline ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return pipe


def run(pipe, batch, steps, guidance, size, dev):
    """One call of `batch` items; returns (s_per_step, s_total, peak_mib)."""
    g = torch.Generator(device=dev).manual_seed(1)
    d = pipe.unet.config.cross_attention_dim
    pe = torch.randn(batch, 77, d, generator=g, device=dev, dtype=torch.bfloat16)  # (B, 77, 768)
    ne = torch.randn(batch, 77, d, generator=g, device=dev, dtype=torch.bfloat16)
    ends = []
    cuda = dev.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def on_step_end(p, i, t, kw):
        sync()
        ends.append(time.perf_counter())
        return kw

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.no_grad():
        img = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=steps,
                   guidance_scale=guidance, height=size, width=size, generator=g, output_type="np",
                   callback_on_step_end=on_step_end).images
    sync()
    total = time.perf_counter() - t0
    assert img.shape == (batch, size, size, 3), img.shape
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    per_step = statistics.median(gaps) if gaps else total / steps
    return per_step, total, torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    pipe = build_pipeline(a.out, a.device)
    run(pipe, 1, 2, a.guidance, a.size, a.device)  # warm-up: kernels, cuDNN plans
    for b in [int(s) for s in a.batches.split(",") if s]:
        try:
            s, total, peak = run(pipe, b, a.steps, a.guidance, a.size, a.device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"# batch {b}: out of GPU memory", file=sys.stderr)
            s, total, peak = 0.0, 0.0, 0.0
        print(f"torch_txt2img batch={b} s_per_step={s:.5f} s_total={total:.3f} peak_mib={peak:.0f}", flush=True)
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name() if a.device.startswith('cuda') else a.device}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
