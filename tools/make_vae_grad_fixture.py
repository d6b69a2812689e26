#!/usr/bin/env python3
"""make_vae_grad_fixture.py: torch autograd references for the VAE backward pass.

    python3 tools/make_vae_grad_fixture.py   # writes tests/fixtures/ref-grad-vae.safetensors

For the tiny fixture AutoencoderKL (tests/fixtures/tiny-sd1/vae, computed in
fp64 for the reference), with fixed random image x (N, 3, H, W), noise eps,
and fixed weights w_rec, w_mean, w_lv:
    mean, logvar = encode(x)                  (logvar clamped to [-30, 20])
    z = mean + exp(logvar / 2) * eps
    rec = decode(z)
    loss = sum(rec * w_rec) + sum(mean * w_mean) + sum(logvar * w_lv)
and stores mean, logvar, rec, d loss / d x and d loss / d every parameter
("grad.<diffusers name>"). tests/test_vae_grad.c runs the same through
vae_train_encode / decode and their backwards and compares.
"""
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def main():
    vae = AutoencoderKL.from_pretrained(os.path.join(FIX, "tiny-sd1", "vae")).double()
    n, h, w, L, f = 2, 32, 24, vae.config.latent_channels, 8
    g = torch.Generator().manual_seed(20261206)
    x = (torch.rand(n, 3, h, w, generator=g) * 2 - 1).double().requires_grad_(True)
    eps = torch.randn(n, L, h // f, w // f, generator=g).double()
    w_rec = torch.randn(n, 3, h, w, generator=g).double()
    w_mean = torch.randn(n, L, h // f, w // f, generator=g).double()
    w_lv = torch.randn(n, L, h // f, w // f, generator=g).double()
    post = vae.encode(x).latent_dist  # DiagonalGaussianDistribution: logvar clamped
    mean, logvar = post.mean, post.logvar
    z = mean + torch.exp(0.5 * logvar) * eps
    rec = vae.decode(z).sample
    loss = (rec * w_rec).sum() + (mean * w_mean).sum() + (logvar * w_lv).sum()
    loss.backward()
    out = {"x": x.detach(), "eps": eps, "w_rec": w_rec, "w_mean": w_mean, "w_lv": w_lv,
           "mean": mean.detach(), "logvar": logvar.detach(), "rec": rec.detach(), "dx": x.grad}
    for name, p in vae.named_parameters():
        out["grad." + name] = p.grad
    out = {k: v.float().contiguous() for k, v in out.items()}
    path = os.path.join(FIX, "ref-grad-vae.safetensors")
    save_file(out, path, metadata={"source": "tools/make_vae_grad_fixture.py"})
    print(f"wrote {path}: {len(out)} tensors, loss {loss.item():.6g}")


if __name__ == "__main__":
    main()
