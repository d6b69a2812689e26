#!/usr/bin/env python3
"""make_t2i_fixture.py: the training loop of diffusers'
examples/text_to_image/train_text_to_image.py, run in torch, as the reference
for sdc's text-to-image training (`sdc train text-to-image`: the DreamBooth
trainer of src/train/dreambooth.c with a caption per item).

    python3 tools/make_t2i_fixture.py   # writes tests/fixtures/ref-t2i.safetensors

The model is the shipped demo model, as in tools/make_db_fixture.py (whose
loader, tokenizer, epoch order and per-sample generators this script
imports). The loop body is train_text_to_image.py's, written again here with
the real accelerate Accelerator, torch.optim.AdamW, get_scheduler and
diffusers' EMAModel; the deliberate changes are sdc's, as in the DreamBooth
fixture: the epoch's order (SdcOrder) and every random draw, which come from
one generator per sample (dreambooth.h), replayed here with torch's:

    per sample j of micro-batch `batch` of epoch `epoch`:
        g = torch.Generator().manual_seed(db_sample_seed(seed, epoch, batch, j))
        noise = torch.randn(4*h*w, generator=g)              (4, h, w)
        [noise += noise_offset * torch.randn(4, generator=g)] per channel
        t = int(torch.rand(1, generator=g) * N)
        [perturbation = torch.randn(4*h*w, generator=g)]     --input_perturbation
        [flip = torch.rand(1, generator=g) < 0.5]            --random_flip
        [latent = mean + std * torch.randn(4*h*w, generator=g)]  latent_dist.sample()
        [empty = torch.rand(1, generator=g) < proportion]    caption -> ""

The dataset is 3 items, each a caption and the latent distribution of its
image (mean and std, already times the scaling factor) and of its mirror
image (random flip); the VAE itself is not run: sdc encodes the images once
and samples every step, which is what latent_dist.sample() every step does.

Cases (3 optimizer steps, batch 2 over 3 items: epoch 0 is a batch of 2 and
a batch of 1; fp32, CPU):
  ta  captions per item, frozen text encoder, EMA (EMAModel defaults),
      constant lr
  tb  random flip, latents sampled, input perturbation 0.1, noise offset
      0.05, empty captions with probability 0.5, min-SNR 5, accumulation 2
      (a step is an epoch: its batches of 2 and 1 items), linear warmup 1, EMA
  tc  v-prediction with the script's min-SNR rule (min(snr + 1, g) / (snr +
      1)), the text encoder trained too (one AdamW group, as DreamBooth's),
      EMA of the UNet, cosine schedule

Stored per case X (names as make_db_fixture.py's): X.loss, X.grad_norm,
X.lr (steps); X.p.<name> (a sample of final values), X.d2.<name> (2),
X.ssq (F64); X.ema.<name> (the EMA of the sampled UNet tensors), X.ema_ssq
(F64, every EMA value). Common: t2i.mean, t2i.std, t2i.fmean, t2i.fstd
(3, 4, 8, 8), t2i.ids (I32 (3, 77)), t2i.empty_ids (I32 (77)), and the
captions as caption.0..2 (U8).
"""
import itertools
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_db_fixture as db  # noqa: E402
import make_fixtures as mf  # noqa: E402

OUT = os.path.join(mf.ROOT, "tests", "fixtures", "ref-t2i.safetensors")
CAPTIONS = ["a small red star on a blue striped background",
            "a large green circle on a white background, on the left",
            "a purple cross on a yellow dotted background"]
LAT = (4, 8, 8)

CASES = {
    "ta": dict(seed=2026, train_text_encoder=False, snr_gamma=None, noise_offset=0.0, input_perturbation=0.0,
               random_flip=False, sample=False, proportion_empty=0.0, accum=1, lr_scheduler="constant", warmup=0),
    "tb": dict(seed=31337, train_text_encoder=False, snr_gamma=5.0, noise_offset=0.05, input_perturbation=0.1,
               random_flip=True, sample=True, proportion_empty=0.5, accum=2, lr_scheduler="linear", warmup=1),
    "tc": dict(seed=7, train_text_encoder=True, snr_gamma=5.0, noise_offset=0.0, input_perturbation=0.0,
               random_flip=False, sample=True, proportion_empty=0.0, accum=1, lr_scheduler="cosine", warmup=0,
               prediction="v_prediction"),
}
COMMON = dict(max_train_steps=3, learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2,
              adam_epsilon=1e-8, max_grad_norm=1.0, train_batch_size=2)


def draws(a, epoch, batch, j, n_train):
    """Sample j's draws, in sdc's order (dreambooth.h)."""
    g = torch.Generator().manual_seed(db.db_sample_seed(a["seed"], epoch, batch, j))
    n = LAT[0] * LAT[1] * LAT[2]
    noise = torch.randn(n, generator=g).view(*LAT)
    if a["noise_offset"]:
        noise = noise + a["noise_offset"] * torch.randn(LAT[0], generator=g).view(LAT[0], 1, 1)
    u = torch.rand(1, generator=g)
    t = min(int((u * n_train).item()), n_train - 1)
    pert = torch.randn(n, generator=g).view(*LAT) if a["input_perturbation"] else None
    flip = bool(torch.rand(1, generator=g) < 0.5) if a["random_flip"] else False
    eps = torch.randn(n, generator=g).view(*LAT) if a["sample"] else None
    empty = bool(torch.rand(1, generator=g) < a["proportion_empty"]) if a["proportion_empty"] > 0 else False
    return noise, t, pert, flip, eps, empty


def run_case(tag, cfg, data):
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, compute_snr
    a = dict(COMMON, **cfg)
    torch.manual_seed(0)
    unet, text_encoder = db.load_demo()
    noise_scheduler = DDPMScheduler(**mf.SD1_BETAS, prediction_type=a.get("prediction", "epsilon"))
    accelerator = Accelerator(gradient_accumulation_steps=a["accum"], cpu=True)
    if not a["train_text_encoder"]:
        text_encoder.requires_grad_(False)
    named = [("unet." + n, p) for n, p in unet.named_parameters()]
    if a["train_text_encoder"]:
        named += [(db.text_name(n), p) for n, p in text_encoder.named_parameters()]
    params = (list(itertools.chain(unet.parameters(), text_encoder.parameters())) if a["train_text_encoder"]
              else list(unet.parameters()))
    initial = {n: p.detach().clone() for n, p in named}
    ema_unet = EMAModel(unet.parameters(), model_cls=type(unet), model_config=unet.config)
    optimizer = torch.optim.AdamW(params, lr=a["learning_rate"], betas=(a["adam_beta1"], a["adam_beta2"]),
                                  weight_decay=a["adam_weight_decay"], eps=a["adam_epsilon"])
    n_items = len(CAPTIONS)
    examples = list(range(n_items))
    train_dataloader = torch.utils.data.DataLoader(examples, batch_size=a["train_batch_size"],
                                                   sampler=db.SdcOrder(n_items, a["seed"]),
                                                   collate_fn=lambda ex: list(ex))
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / a["accum"])
    lr_scheduler = get_scheduler(a["lr_scheduler"], optimizer=optimizer,
                                 num_warmup_steps=a["warmup"] * accelerator.num_processes,
                                 num_training_steps=a["max_train_steps"] * accelerator.num_processes)
    if a["train_text_encoder"]:
        unet, text_encoder, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, train_dataloader, lr_scheduler)
    else:
        unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, optimizer, train_dataloader, lr_scheduler)
    num_train_epochs = math.ceil(a["max_train_steps"] / num_update_steps_per_epoch)
    n_train = noise_scheduler.config.num_train_timesteps

    well = {}
    global_step = 0
    losses, norms, lrs, micro = [], [], [], []
    for epoch in range(num_train_epochs):
        unet.train()
        for step, items in enumerate(train_dataloader):
            with accelerator.accumulate(unet):
                lat, noise, ts, pert, ids = [], [], [], [], []
                for j, i in enumerate(items):
                    nz, t, pz, flip, eps, empty = draws(a, epoch, step, j, n_train)
                    mean = data["fmean" if flip else "mean"][i]
                    std = data["fstd" if flip else "std"][i]
                    lat.append(mean + std * eps if eps is not None else mean)
                    noise.append(nz)
                    ts.append(t)
                    pert.append(pz)
                    ids.append(data["empty_ids"] if empty else data["ids"][i])
                latents = torch.stack(lat)
                noise = torch.stack(noise)
                timesteps = torch.tensor(ts, dtype=torch.long)
                if a["input_perturbation"]:
                    new_noise = noise + a["input_perturbation"] * torch.stack(pert)
                    noisy_latents = noise_scheduler.add_noise(latents, new_noise, timesteps)
                else:
                    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(torch.stack(ids))[0]
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                else:
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
                if a["snr_gamma"] is None:
                    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                else:
                    snr = compute_snr(noise_scheduler, timesteps)
                    if noise_scheduler.config.prediction_type == "v_prediction":
                        snr = snr + 1
                    mse_loss_weights = (torch.stack([snr, a["snr_gamma"] * torch.ones_like(timesteps)], dim=1)
                                        .min(dim=1)[0] / snr)
                    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
                    loss = loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights
                    loss = loss.mean()
                accelerator.backward(loss)
                micro.append(loss.detach().item())
                if accelerator.sync_gradients:
                    norms.append(float(accelerator.clip_grad_norm_(params, a["max_grad_norm"])))
                    lrs.append(lr_scheduler.get_last_lr()[0])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=False)
                if accelerator.sync_gradients:
                    db.track_well(well, named, optimizer, a["adam_beta2"])
            if accelerator.sync_gradients:
                ema_unet.step(unet.parameters())
                global_step += 1
                losses.append(sum(micro) / len(micro))
                print(f"    [{tag}] step {global_step}: items {items} t {ts} loss {losses[-1]:.8f} grad norm "
                      f"{norms[-1]:.6f} lr {lrs[-1]:.3g}")
                micro = []
            if global_step >= a["max_train_steps"]:
                break
        if global_step >= a["max_train_steps"]:
            break
    assert global_step == a["max_train_steps"], global_step

    out = {f"{tag}.loss": torch.tensor(losses, dtype=torch.float32),
           f"{tag}.grad_norm": torch.tensor(norms, dtype=torch.float32),
           f"{tag}.lr": torch.tensor(lrs, dtype=torch.float32)}
    final = {n: p.detach().float().contiguous() for n, p in named}
    ssq = 0.0
    for n, p in sorted(named, key=lambda x: x[0]):
        w = well[n]
        d = (final[n].double() - initial[n].double()).flatten()[w]
        out[f"{tag}.d2.{n}"] = torch.tensor([float((d * d).sum()), float(w.sum())], dtype=torch.float32)
        ssq += float((final[n].double() ** 2).sum())
    out[f"{tag}.ssq"] = torch.tensor([ssq], dtype=torch.float64)
    unet_names = sorted(n for n in final if n.startswith("unet."))
    sample = [n for n in unet_names if final[n].numel() <= 10000][::5]
    sample += sorted(n for n in final if n.startswith("text.") and "token_embedding" not in n)
    for n in sample:
        out[f"{tag}.p.{n}"] = final[n]
    tok = "text.text_model.embeddings.token_embedding.weight"
    if tok in final:  # the rows of the captions' tokens
        rows = torch.unique(torch.cat([data["ids"].flatten(), data["empty_ids"]])).to(torch.int64)
        out[f"{tag}.tok_rows"] = rows.to(torch.int32)
        out[f"{tag}.p.{tok}.rows"] = final[tok][rows].contiguous()
    ema = {"unet." + n: s.detach().float().contiguous()
           for (n, _), s in zip(accelerator.unwrap_model(unet).named_parameters(), ema_unet.shadow_params)}
    out[f"{tag}.ema_ssq"] = torch.tensor([sum(float((v.double() ** 2).sum()) for v in ema.values())],
                                         dtype=torch.float64)
    for n in sample:
        if n in ema:
            out[f"{tag}.ema.{n}"] = ema[n]
    print(f"  {tag}: {len(final)} trainable tensors, {len(sample)} stored, EMA decay at step 3 "
          f"{ema_unet.get_decay(ema_unet.optimization_step):.4f}")
    return out


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(20261206)
    n = len(CAPTIONS)
    data = {"mean": torch.randn(n, *LAT, generator=g), "std": 0.05 + 0.2 * torch.rand(n, *LAT, generator=g)}
    data["fmean"] = data["mean"].flip(-1) + 0.1 * torch.randn(n, *LAT, generator=g)
    data["fstd"] = data["std"].flip(-1)
    toks = db.tokenize(CAPTIONS + [""])
    data["ids"] = torch.cat(toks[:n])
    data["empty_ids"] = toks[n][0]
    out = {f"t2i.{k}": data[k] for k in ("mean", "std", "fmean", "fstd")}
    out["t2i.ids"] = data["ids"].to(torch.int32)
    out["t2i.empty_ids"] = data["empty_ids"].to(torch.int32)
    for tag, cfg in CASES.items():
        print(f"== case {tag}: {cfg}")
        out.update(run_case(tag, cfg, data))
    out = {k: v.contiguous() for k, v in out.items()}
    for i, text in enumerate(CAPTIONS):
        out[f"caption.{i}"] = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
    save_file(out, OUT, metadata={"format": "pt"})
    print(f"wrote {OUT}: {os.path.getsize(OUT) / 1e6:.3f} MB, {len(out)} tensors")


if __name__ == "__main__":
    main()
