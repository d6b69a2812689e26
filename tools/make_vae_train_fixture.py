#!/usr/bin/env python3
"""make_vae_train_fixture.py: a torch reference loop for sdc train vae's step.

    python3 tools/make_vae_train_fixture.py   # writes tests/fixtures/ref-vae-train.safetensors

The tiny fixture AutoencoderKL (tests/fixtures/tiny-sd1/vae), in fp64,
trained for STEPS steps on fixed images x[s] (N, 3, 32, 32) in [-1, 1] with
fixed noise eps[s] (N, 4, 4, 4) (stored as (STEPS * N, ...)), the loss of src/train/vae_train.h:
    post = encode(x); z = post.mean + post.std * eps; rec = decode(z)
    loss = mse_loss(rec, x) + kl_weight * post.kl().mean()      (case "mse")
    loss = l1_loss(rec, x)  + kl_weight * post.kl().mean()      (case "l1")
clip_grad_norm_(1.0), torch.optim.AdamW(lr, betas (0.9, 0.999), eps 1e-8,
weight_decay 1e-2), constant lr. Stores the inputs, each step's loss / rec /
kl and the parameters after the last step ("<case>.param.<name>").
tests/test_vae_train.c runs the same steps through vae_trainer_step.
"""
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
STEPS, N, H, LR, KLW = 6, 2, 32, 2e-3, 1e-2


def run(case, xs, eps):
    vae = AutoencoderKL.from_pretrained(os.path.join(FIX, "tiny-sd1", "vae")).double()
    opt = torch.optim.AdamW(vae.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                            foreach=False)
    loss_l, rec_l, kl_l = [], [], []
    for s in range(STEPS):
        x = xs[s].double()
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * eps[s].double()
        rec = vae.decode(z).sample
        rl = F.mse_loss(rec, x) if case == "mse" else F.l1_loss(rec, x)
        kl = post.kl().mean()
        loss = rl + KLW * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        loss_l.append(loss.item()), rec_l.append(rl.item()), kl_l.append(kl.item())
        print(f"{case} step {s + 1}: loss {loss.item():.6f} rec {rl.item():.6f} kl {kl.item():.4f}")
    out = {f"{case}.loss": torch.tensor(loss_l), f"{case}.rec": torch.tensor(rec_l), f"{case}.kl": torch.tensor(kl_l)}
    for name, p in vae.named_parameters():
        out[f"{case}.param.{name}"] = p.detach()
    return out


def main():
    g = torch.Generator().manual_seed(20261207)
    # smooth-ish images: a few random low-frequency patterns, so the loss moves
    base = torch.rand(STEPS, N, 3, 4, 4, generator=g) * 2 - 1
    xs = F.interpolate(base.view(STEPS * N, 3, 4, 4), size=(H, H), mode="bilinear", align_corners=False)
    xs = (xs + 0.1 * torch.randn(xs.shape, generator=g)).clamp(-1, 1).view(STEPS, N, 3, H, H)
    eps = torch.randn(STEPS, N, 4, H // 8, H // 8, generator=g)
    out = {"x": xs.reshape(STEPS * N, 3, H, H), "eps": eps.reshape(STEPS * N, 4, H // 8, H // 8), "config": torch.tensor([STEPS, N, H, LR, KLW], dtype=torch.float32)}
    out.update(run("mse", xs, eps))
    out.update(run("l1", xs, eps))
    out = {k: v.float().contiguous() for k, v in out.items()}
    path = os.path.join(FIX, "ref-vae-train.safetensors")
    save_file(out, path, metadata={"source": "tools/make_vae_train_fixture.py"})
    print(f"wrote {path}: {len(out)} tensors")


if __name__ == "__main__":
    main()
