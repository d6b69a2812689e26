#!/usr/bin/env python3
"""vae_train_torch.py: seconds per AutoencoderKL training step, PyTorch +
diffusers against sdc (build/bench/bench_vae_train), same config, batch,
resolution and thread count, one after the other (never concurrently).

    python3 bench/vae_train_torch.py CONFIG.json [--batch 4] [--res 64] [--threads 2]
                                     [--steps 5] [--bin build/bench/bench_vae_train]

The step is sdc train vae's: encode, z = mean + std * eps, decode,
L1 + 1e-6 KL, backward, clip_grad_norm_(1.0), AdamW (foreach=False, as
sdc's single-tensor update), zero_grad; fp32 on the CPU. Prints both
medians and the ratio torch / sdc (> 1: sdc faster).
"""
import argparse
import os
import re
import statistics
import subprocess
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def torch_steps(a):
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(a.config))
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4, weight_decay=1e-2, foreach=False)
    x = torch.rand(a.batch, 3, a.res, a.res) * 2 - 1
    times = []
    for k in range(a.steps + 1):
        t0 = time.perf_counter()
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn_like(post.mean)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        print(f"torch step {k}: {times[-1]:.4f} s  loss {loss.item():.5f}", flush=True)
    return statistics.median(times[1:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bin", default="build/bench/bench_vae_train")
    a = p.parse_args()
    out = subprocess.run([a.bin, a.config, "--batch", str(a.batch), "--res", str(a.res), "--threads",
                          str(a.threads), "--steps", str(a.steps)], check=True, capture_output=True, text=True).stdout
    print(out, end="")
    sdc = float(re.search(r"sdc median s/step: ([0-9.]+)", out).group(1))
    tt = torch_steps(a)
    print(f"median s/step: sdc {sdc:.4f}  torch {tt:.4f}  ratio torch/sdc {tt / sdc:.2f} "
          f"(batch {a.batch}, {a.res} px, {a.threads} threads)")


if __name__ == "__main__":
    main()
