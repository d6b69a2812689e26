#!/usr/bin/env python3
"""make_db_fixture.py: the DreamBooth training loop of diffusers, run in torch,
as the reference for sdc's trainer (src/train/dreambooth.c).

    python3 tools/make_db_fixture.py   # writes tests/fixtures/ref-dreambooth.safetensors

The model is the shipped demo model (data/models/sdc-tiny-sd1.safetensors),
loaded into diffusers' UNet2DConditionModel and transformers' CLIPTextModel
with make_fixtures.py's configuration and name map. The loop body is the one
of diffusers' examples/dreambooth/train_dreambooth.py (LoRA case:
train_dreambooth_lora.py), written again here line for line with the real
accelerate Accelerator (gradient accumulation, loss / accumulation steps,
the sync rule, clip_grad_norm_), torch.optim.AdamW and
diffusers.optimization.get_scheduler. The deliberate changes: the epoch's
order (SdcOrder: sdc's Fisher-Yates from (seed, epoch) instead of
shuffle=True), and the noise and the timesteps, which come from sdc's
per-sample generators (dreambooth.h), replayed here with torch's own
generator:

    per sample j of micro-batch `batch` of epoch `epoch` (instances first,
    then the class samples):
        g = torch.Generator().manual_seed(db_sample_seed(seed, epoch, batch, j))
        noise = torch.randn(4*h*w, generator=g)          (4, h, w)
        [noise += offset * torch.randn(4, generator=g)]   per channel
        t = int(torch.rand(1, generator=g) * N)     N: num_train_timesteps

Batch 1. Cases a-d: 1 instance latent (and 1 class latent), so the epoch's
order is [0] and every micro-batch ends an epoch; case e: 3 instance
latents, so real accumulation over the shuffled epoch.

Cases (3 optimizer steps each, fp32, CPU):
  a  full fine-tuning of UNet + text encoder, prior preservation, epsilon,
     constant lr
  b  UNet only, no prior, min-SNR gamma 5, offset noise 0.1, gradient
     accumulation 2 (each micro-batch ends the 1-batch epoch, so accelerate
     syncs every micro-batch, the loss still / 2), linear schedule, warmup 1
  c  LoRA rank 4 (alpha 4) on the UNet's attention projections (peft, the
     LoRA script's target modules), prior preservation; peft's lora_A is set
     to sdc's init (dreambooth.h / unet.h: one generator seeded with the
     seed, randn(rank * in) / rank per projection in block order), lora_B 0
  d  UNet, v_prediction (the demo model read as a v model: target
     get_velocity, min-SNR weight + 1), min-SNR gamma 5, cosine schedule
  e  UNet, 3 instance latents, accumulation 2: step 1 = epoch 0's batches
     0 + 1, step 2 = its batch 2 alone (the epoch's end syncs; loss still
     / 2), step 3 = epoch 1's batches 0 + 1
  f  UNet, prior preservation + min-SNR gamma 5: sdc's definition (each
     half weighted by its own timesteps' weights; diffusers pairs the 2b
     weights with the b instance losses); seed 15 puts t = 26 (instance)
     and t = 106 (class) in it, so both halves' weights fire
  g  UNet, the model's scheduler config a cosine schedule of 500 training
     steps (tests/fixtures/db-sched/: the demo model's configs, written
     here, with tests/fixtures/sched/cosine-500.json as its scheduler):
     the script's DDPMScheduler.from_pretrained(model, "scheduler")

Stored (F32 unless noted), per case X in a, b, c, d, e, f:
  X.loss (steps)            the logged loss of each optimizer step (mean of
                            its micro-batches' unscaled losses)
  X.grad_norm (steps)       clip_grad_norm_'s total norm (before clipping)
  X.lr (steps)              the lr the step used
  X.timesteps (micro, S)    the drawn timesteps (diagnosis)
  X.p.<name>                final values of a deterministic sample of the
                            trainable tensors (every 5th UNet tensor of at
                            most 10000 values, sorted by name; every text
                            encoder tensor but the token embedding; every
                            LoRA tensor). Names: unet.<diffusers name>,
                            text.<text_model.* name>, unet.<module>.lora.{down,up}.weight
  X.tok_rows (I32), X.p.text.text_model.embeddings.token_embedding.weight.rows
                            the token embedding rows of the prompts' tokens
  X.d2.<name> (2)           [sum of (final - initial)^2, count] over the
                            tensor's values whose Adam step was well
                            conditioned at every step (gradient RMS, AdamW's
                            bias-corrected exp_avg_sq, >= 100 eps = 1e-6,
                            or 0; see track_well), every trainable tensor
  X.ssq (1, F64)            sum of squares of every final trainable value
Common: latents.inst, latents.class (1, 4, 8, 8), latents.inst3 (3, 4, 8, 8),
ids.inst, ids.class (I32 (77)), prompt.inst, prompt.class (U8, UTF-8).
Same bytes every run (about 35 s on 2 cores).
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
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

ROOT = mf.ROOT
OUT = os.path.join(ROOT, "tests", "fixtures", "ref-dreambooth.safetensors")
INSTANCE_PROMPT = "a photo of sks dog"
CLASS_PROMPT = "a photo of dog"
LAT_H = LAT_W = 8
WELL_RMS = 1e-6  # 100 * adam_epsilon

CASES = {
    "a": dict(seed=1234, train_text_encoder=True, prior=True, snr_gamma=None, offset_noise=False,
              accum=1, lr_scheduler="constant", warmup=0, lora_rank=0),
    "b": dict(seed=77, train_text_encoder=False, prior=False, snr_gamma=5.0, offset_noise=True,
              accum=2, lr_scheduler="linear", warmup=1, lora_rank=0),
    "c": dict(seed=4321, train_text_encoder=False, prior=True, snr_gamma=None, offset_noise=False,
              accum=1, lr_scheduler="constant", warmup=0, lora_rank=4),
    "d": dict(seed=99, train_text_encoder=False, prior=False, snr_gamma=5.0, offset_noise=False,
              accum=1, lr_scheduler="cosine", warmup=0, lora_rank=0, prediction="v_prediction"),
    "e": dict(seed=2024, train_text_encoder=False, prior=False, snr_gamma=None, offset_noise=False,
              accum=2, lr_scheduler="constant", warmup=0, lora_rank=0, inst_latents="inst3"),
    # min-SNR with prior preservation: sdc's definition (each half weighted by
    # its own timesteps), where diffusers pairs 2b weights with b losses
    "f": dict(seed=15, train_text_encoder=False, prior=True, snr_gamma=5.0, offset_noise=False,
              accum=1, lr_scheduler="constant", warmup=0, lora_rank=0),
    # the model's own noise schedule (a config folder beside the single file)
    "g": dict(seed=31, train_text_encoder=False, prior=False, snr_gamma=5.0, offset_noise=False,
              accum=1, lr_scheduler="constant", warmup=0, lora_rank=0, config_dir="db-sched"),
}
SCHED_OF = {"db-sched": os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sched",
                                     "cosine-500.json")}
COMMON = dict(max_train_steps=3, learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2,
              adam_epsilon=1e-8, max_grad_norm=1.0, prior_loss_weight=1.0, train_batch_size=1, lr_num_cycles=1,
              lr_power=1.0)

# --------------------------------------------------------------------------
# sdc's per-sample generators (src/train/dreambooth.c: mix, db_sample_seed)
# --------------------------------------------------------------------------

M64 = (1 << 64) - 1


def _mix(h, v):
    h ^= (v + 0x9E3779B97F4A7C15 + ((h << 6) & M64) + (h >> 2)) & M64
    h = (h + 0x9E3779B97F4A7C15) & M64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & M64
    return h ^ (h >> 31)


def db_sample_seed(seed, epoch, batch, index):
    return _mix(_mix(_mix(_mix(0x5DC, seed), epoch), batch), index) >> 11


def sdc_noise_and_timesteps(seed, epoch, batch, n, shape, offset_noise, n_train=1000):
    """Noise (n, C, H, W) and timesteps (n,) long, sample j from its own generator."""
    c, h, w = shape
    noises, ts = [], []
    for j in range(n):
        g = torch.Generator().manual_seed(db_sample_seed(seed, epoch, batch, j))
        nz = torch.randn(c * h * w, generator=g).view(c, h, w)
        if offset_noise:  # diffusers: noise + 0.1 * randn(N, C, 1, 1)
            nz = nz + 0.1 * torch.randn(c, generator=g).view(c, 1, 1)
        u = torch.rand(1, generator=g)
        ts.append(min(int((u * n_train).item()), n_train - 1))
        noises.append(nz)
    return torch.stack(noises), torch.tensor(ts, dtype=torch.long)


class SdcOrder(torch.utils.data.Sampler):
    """The epoch's order as sdc draws it (dreambooth.c draw_order) instead of
    shuffle=True's: a Fisher-Yates shuffle, j = u32 % (i + 1), from a generator
    seeded with mix(mix(0xdde, seed), epoch) >> 11; torch.randint(0, k) on
    torch's mt19937 is exactly u32 % k. One __iter__ per epoch."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(_mix(_mix(0x0DDE, self.seed), self.epoch) >> 11)
        order = list(range(self.n))
        for i in range(self.n - 1, 0, -1):
            j = int(torch.randint(0, i + 1, (1,), generator=g))
            order[i], order[j] = order[j], order[i]
        self.epoch += 1
        return iter(order)


# --------------------------------------------------------------------------
# The demo model in diffusers / transformers
# --------------------------------------------------------------------------

def load_demo():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    unet_cfg, clip_cfg, _ = mf.demo_configs()
    ck = load_file(mf.DEMO)
    unet = UNet2DConditionModel(**unet_cfg)
    usd = {k: ck["model.diffusion_model." + mf.unet_name_to_ldm(k, unet_cfg)].float()
           for k in unet.state_dict()}
    unet.load_state_dict(usd, strict=True)
    text = CLIPTextModel(CLIPTextConfig(**clip_cfg, attn_implementation="eager"))
    tsd = {}
    for k in text.state_dict():
        full = k if k.startswith("text_model.") else "text_model." + k
        tsd[k] = ck["cond_stage_model.transformer." + full].float()
    text.load_state_dict(tsd, strict=True)
    return unet, text


def write_config_dir(name, unet, text_encoder):
    """tests/fixtures/NAME/: the demo model's unet/, vae/, text_encoder/
    configs and SCHED_OF[NAME] as scheduler/scheduler_config.json, the
    config folder sdc opens the single file with (--config)."""
    import json
    import shutil
    from diffusers import AutoencoderKL
    d = os.path.join(ROOT, "tests", "fixtures", name)
    shutil.rmtree(d, ignore_errors=True)
    unet.save_config(os.path.join(d, "unet"))
    os.makedirs(os.path.join(d, "text_encoder"))
    text_encoder.config.to_json_file(os.path.join(d, "text_encoder", "config.json"))
    AutoencoderKL.from_config(mf.demo_configs()[2]).save_config(os.path.join(d, "vae"))
    os.makedirs(os.path.join(d, "scheduler"))
    with open(SCHED_OF[name]) as f:
        sched = json.load(f)
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(sched, f, indent=2)
    return d


def tokenize(prompts):
    """diffusers' tokenize_prompt (padding max_length 77, truncation; SD 1.x pads with <|endoftext|>)
    with transformers' CLIPTokenizer over the full CLIP BPE that sdc ships
    (data/bpe_simple_vocab_16e6.txt.gz, written as a vocab.json / merges.txt
    folder the way a diffusers tokenizer/ folder holds it)."""
    import gzip
    import json
    import shutil
    import tempfile
    from transformers import CLIPTokenizer
    lines = gzip.open(os.path.join(ROOT, "data", "bpe_simple_vocab_16e6.txt.gz")).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    # GPT-2's byte -> printable symbol table: printable bytes map to themselves,
    # the other bytes to 256, 257, ... in byte order
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    extra = [b for b in range(256) if b not in keep]
    sym = {b: chr(b) for b in keep}
    sym.update({b: chr(256 + i) for i, b in enumerate(extra)})
    base = [sym[b] for b in keep + extra]
    vocab = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    tmp = tempfile.mkdtemp()
    try:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer.from_pretrained(tmp)
    finally:
        shutil.rmtree(tmp)
    return [tok(p, truncation=True, padding="max_length", max_length=77, return_tensors="pt").input_ids
            for p in prompts]


def text_name(k):
    return "text." + (k if k.startswith("text_model.") else "text_model." + k)


# --------------------------------------------------------------------------
# LoRA (train_dreambooth_lora.py: peft, init "gaussian", alpha = rank)
# --------------------------------------------------------------------------

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
LORA_ORDER = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
              "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]


def _block_key(name):
    """Forward order of the transformer blocks: down blocks, mid, up blocks."""
    p = name.split(".")
    if p[0] == "down_blocks":
        return (0, int(p[1]), int(p[3]))
    if p[0] == "mid_block":
        return (1, 0, int(p[2]))
    return (2, int(p[1]), int(p[3]))


def add_lora(unet, rank, seed):
    """peft LoRA on the attention projections, lora_A set to sdc's init. Returns
    [(sdc name, parameter)] in sdc's table order."""
    from peft import LoraConfig
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    mods = dict(unet.named_modules())
    blocks = sorted({n.rsplit(".transformer_blocks.", 1)[0] for n in mods if ".transformer_blocks." in n},
                    key=_block_key)
    g = torch.Generator().manual_seed(seed & 0xFFFFFFFF)
    table = []
    with torch.no_grad():
        for b in blocks:
            layer = 0
            while f"{b}.transformer_blocks.{layer}" in mods:
                for proj in LORA_ORDER:
                    base = f"{b}.transformer_blocks.{layer}.{proj}"
                    m = mods[base]
                    A, B = m.lora_A["default"].weight, m.lora_B["default"].weight  # (r, in), (out, r)
                    A.copy_(torch.randn(A.numel(), generator=g).view_as(A) * (1.0 / rank))
                    B.zero_()
                    table.append((f"unet.{base}.lora.down.weight", A))
                    table.append((f"unet.{base}.lora.up.weight", B))
                layer += 1
    n_lora = sum(1 for n, p in unet.named_parameters() if p.requires_grad)
    assert n_lora == len(table), (n_lora, len(table))
    return table


def track_well(well, named, optimizer, beta2):
    """After each optimizer step: the values whose Adam step has been well
    conditioned so far, i.e. gradient RMS (AdamW's bias-corrected exp_avg_sq)
    >= WELL_RMS = 100 eps, or exactly 0, at every step. Below it the step
    lr * m / (sqrt(v) + eps) turns gradient rounding noise into a visible
    change: gradients that are zero but for rounding (a per-channel bias ahead
    of a GroupNorm of one channel per group, an attention key bias) or that
    cancel to ~eps in one step."""
    state = getattr(optimizer, "optimizer", optimizer).state
    for n, p in named:
        st = state[p]
        vhat = st["exp_avg_sq"].double() / (1.0 - beta2 ** float(st["step"]))
        ok = ((vhat == 0) | (vhat.sqrt() >= WELL_RMS)).flatten()  # no gradient yet: no step, exactly
        well[n] = ok & well[n] if n in well else ok


# --------------------------------------------------------------------------
# The training loop (train_dreambooth.py's, sdc's noise)
# --------------------------------------------------------------------------

def run_case(tag, cfg, latents, ids):
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_snr
    a = dict(COMMON, **cfg)
    torch.manual_seed(0)
    unet, text_encoder = load_demo()
    if "config_dir" in a:  # the script's DDPMScheduler.from_pretrained(model, subfolder="scheduler")
        noise_scheduler = DDPMScheduler.from_pretrained(write_config_dir(a["config_dir"], unet, text_encoder),
                                                        subfolder="scheduler")
    else:
        noise_scheduler = DDPMScheduler(**mf.SD1_BETAS, prediction_type=a.get("prediction", "epsilon"))
    accelerator = Accelerator(gradient_accumulation_steps=a["accum"], cpu=True)

    if a["lora_rank"]:
        text_encoder.requires_grad_(False)
        lora_table = add_lora(unet, a["lora_rank"], a["seed"])
        params_to_optimize = [p for _, p in lora_table]
        named = lora_table
    else:
        if not a["train_text_encoder"]:
            text_encoder.requires_grad_(False)
        named = [("unet." + n, p) for n, p in unet.named_parameters()]
        if a["train_text_encoder"]:
            named += [(text_name(n), p) for n, p in text_encoder.named_parameters()]
        params_to_optimize = (itertools.chain(unet.parameters(), text_encoder.parameters())
                              if a["train_text_encoder"] else unet.parameters())
    initial = {n: p.detach().clone() for n, p in named}

    optimizer = torch.optim.AdamW(params_to_optimize, lr=a["learning_rate"], betas=(a["adam_beta1"], a["adam_beta2"]),
                                  weight_decay=a["adam_weight_decay"], eps=a["adam_epsilon"])

    # DreamBoothDataset + collate_fn: item i = instance i % n_inst [+ class i % n_class], the
    # batch's instances first, then its class samples
    inst, cls = latents[a.get("inst_latents", "inst")], latents["class"]
    n_items = max(len(inst), len(cls)) if a["prior"] else len(inst)
    examples = [{"instance_latent": inst[i % len(inst)], "instance_prompt_ids": ids["inst"][0],
                 "class_latent": cls[i % len(cls)], "class_prompt_ids": ids["class"][0]} for i in range(n_items)]

    def collate_fn(ex, with_prior_preservation):
        input_ids = [e["instance_prompt_ids"] for e in ex]
        lat = [e["instance_latent"] for e in ex]
        if with_prior_preservation:
            input_ids += [e["class_prompt_ids"] for e in ex]
            lat += [e["class_latent"] for e in ex]
        return {"model_input": torch.stack(lat).contiguous().float(), "input_ids": torch.stack(input_ids)}

    train_dataloader = torch.utils.data.DataLoader(
        examples, batch_size=a["train_batch_size"], sampler=SdcOrder(n_items, a["seed"]),
        collate_fn=lambda ex: collate_fn(ex, a["prior"]))

    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / a["accum"])
    lr_scheduler = get_scheduler(a["lr_scheduler"], optimizer=optimizer,
                                 num_warmup_steps=a["warmup"] * accelerator.num_processes,
                                 num_training_steps=a["max_train_steps"] * accelerator.num_processes,
                                 num_cycles=a["lr_num_cycles"], power=a["lr_power"])
    if a["train_text_encoder"]:
        unet, text_encoder, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, train_dataloader, lr_scheduler)
    else:
        unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, optimizer, train_dataloader, lr_scheduler)
    num_train_epochs = math.ceil(a["max_train_steps"] / num_update_steps_per_epoch)

    well = {}
    global_step = 0
    losses, norms, lrs, tsteps, micro = [], [], [], [], []
    for epoch in range(num_train_epochs):
        unet.train()
        if a["train_text_encoder"]:
            text_encoder.train()
        for step, batch in enumerate(train_dataloader):
            with accelerator.accumulate(unet):
                model_input = batch["model_input"]
                bsz, channels, height, width = model_input.shape
                # sdc: each sample's noise and timestep from its own generator
                noise, timesteps = sdc_noise_and_timesteps(a["seed"], epoch, step, bsz, (channels, height, width),
                                                           a["offset_noise"],
                                                           noise_scheduler.config.num_train_timesteps)
                tsteps.append(timesteps.float())
                noisy_model_input = noise_scheduler.add_noise(model_input, noise, timesteps)
                # encode_prompt, text_encoder_use_attention_mask off
                encoder_hidden_states = text_encoder(batch["input_ids"], attention_mask=None, return_dict=False)[0]
                model_pred = unet(noisy_model_input, timesteps, encoder_hidden_states, class_labels=None).sample
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                else:
                    target = noise_scheduler.get_velocity(model_input, noise, timesteps)
                if a["prior"]:
                    model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
                    target, target_prior = torch.chunk(target, 2, dim=0)
                    prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
                if a["snr_gamma"] is not None and a["prior"]:
                    # sdc's min-SNR with prior preservation (dreambooth.h): the instance
                    # half weighted by its timesteps, the class half by its own
                    snr = compute_snr(noise_scheduler, timesteps)
                    w = torch.stack([snr, a["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
                    if noise_scheduler.config.prediction_type == "v_prediction":
                        w = w + 1
                    w_inst, w_prior = torch.chunk(w, 2, dim=0)
                    dims = list(range(1, len(model_pred.shape)))
                    loss = (F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=dims)
                            * w_inst).mean()
                    prior_loss = (F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="none")
                                  .mean(dim=dims) * w_prior).mean()
                    print(f"    [{tag}] min-SNR weights {w.tolist()} (t {timesteps.tolist()})")
                elif a["snr_gamma"] is None:
                    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                else:
                    assert not a["prior"], "diffusers pairs 2b weights with b losses; sdc does not (dreambooth.h)"
                    snr = compute_snr(noise_scheduler, timesteps)
                    base_weight = (torch.stack([snr, a["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
                                   / snr)
                    if noise_scheduler.config.prediction_type == "v_prediction":
                        mse_loss_weights = base_weight + 1
                    else:
                        mse_loss_weights = base_weight
                    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
                    loss = loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights
                    loss = loss.mean()
                    print(f"    [{tag}] min-SNR weights {mse_loss_weights.tolist()} (t {timesteps.tolist()})")
                if a["prior"]:
                    loss = loss + a["prior_loss_weight"] * prior_loss

                accelerator.backward(loss)
                micro.append(loss.detach().item())
                if accelerator.sync_gradients:
                    if a["lora_rank"]:
                        params_to_clip = params_to_optimize
                    else:
                        params_to_clip = (itertools.chain(unet.parameters(), text_encoder.parameters())
                                          if a["train_text_encoder"] else unet.parameters())
                    norms.append(float(accelerator.clip_grad_norm_(params_to_clip, a["max_grad_norm"])))
                    lrs.append(lr_scheduler.get_last_lr()[0])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=False)
                if accelerator.sync_gradients:
                    track_well(well, named, optimizer, a["adam_beta2"])
            if accelerator.sync_gradients:
                global_step += 1
                losses.append(sum(micro) / len(micro))  # sdc logs the step's mean over its micro-batches
                print(f"    [{tag}] step {global_step}: loss {losses[-1]:.8f} (micro {micro}) grad norm "
                      f"{norms[-1]:.6f} lr {lrs[-1]:.3g}")
                micro = []
            if global_step >= a["max_train_steps"]:
                break
    assert global_step == a["max_train_steps"], global_step

    out, final, maxd, n_noise = summarize(tag, named, initial, well, losses, norms, lrs)
    out[f"{tag}.timesteps"] = torch.stack(tsteps)
    unet_names = sorted(n for n in final if n.startswith("unet."))
    small = [n for n in unet_names if final[n].numel() <= 10000]
    sample = small if a["lora_rank"] else small[::5]
    sample += sorted(n for n in final if n.startswith("text.") and "token_embedding" not in n)
    for n in sample:
        out[f"{tag}.p.{n}"] = final[n]
    tok = "text.text_model.embeddings.token_embedding.weight"
    if tok in final:
        rows = torch.unique(torch.cat([ids["inst"][0], ids["class"][0]])).to(torch.int64)
        out[f"{tag}.tok_rows"] = rows.to(torch.int32)
        out[f"{tag}.p.{tok}.rows"] = final[tok][rows].contiguous()
    print(f"  {tag}: {len(final)} trainable tensors, {sum(v.numel() for v in final.values()):,} values, "
          f"{len(sample)} stored, max |change| {maxd:.3e}, {n_noise} values with gradient RMS < {WELL_RMS:g}")
    return out


def summarize(tag, named, initial, well, losses, norms, lrs):
    """What every loop fixture stores of a case: the per-step loss, gradient norm and lr, each trainable
    tensor's [sum of squared changes, count] over its well conditioned values, and the sum of squares of
    every final value. Returns (out, final values by name, max |change|, values not well conditioned)."""
    out = {f"{tag}.loss": torch.tensor(losses, dtype=torch.float32),
           f"{tag}.grad_norm": torch.tensor(norms, dtype=torch.float32),
           f"{tag}.lr": torch.tensor(lrs, dtype=torch.float32)}
    final = {n: p.detach().float().contiguous() for n, p in named}
    ssq, maxd, n_noise = 0.0, 0.0, 0
    for n, p in sorted(named, key=lambda x: x[0]):
        w = well[n]
        d = (final[n].double() - initial[n].double()).flatten()
        dw = d[w]
        out[f"{tag}.d2.{n}"] = torch.tensor([float((dw * dw).sum()), float(w.sum())], dtype=torch.float32)
        n_noise += int((~w).sum())
        ssq += float((final[n].double() ** 2).sum())
        maxd = max(maxd, float(d.abs().max()))
    out[f"{tag}.ssq"] = torch.tensor([ssq], dtype=torch.float64)
    return out, final, maxd, n_noise


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(20240601)
    latents = {"inst": torch.randn(1, 4, LAT_H, LAT_W, generator=g),
               "class": torch.randn(1, 4, LAT_H, LAT_W, generator=g),
               "inst3": torch.randn(3, 4, LAT_H, LAT_W, generator=g)}
    ti, tc = tokenize([INSTANCE_PROMPT, CLASS_PROMPT])
    ids = {"inst": ti, "class": tc}
    print(f"  ids: {ids['inst'][0, :8].tolist()} / {ids['class'][0, :8].tolist()}")
    out = {"latents.inst": latents["inst"], "latents.class": latents["class"], "latents.inst3": latents["inst3"],
           "ids.inst": ids["inst"][0].to(torch.int32), "ids.class": ids["class"][0].to(torch.int32)}
    for tag, cfg in CASES.items():
        print(f"== case {tag}: {cfg}")
        out.update(run_case(tag, cfg, latents, ids))
    out = {k: v.contiguous() for k, v in out.items()}
    # the prompts as UTF-8 bytes (U8): one metadata key only, so the header's bytes do not depend on the
    # order safetensors writes its metadata in, and the file is the same every run
    for k, text in (("prompt.inst", INSTANCE_PROMPT), ("prompt.class", CLASS_PROMPT)):
        out[k] = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
    save_file(out, OUT, metadata={"format": "pt"})
    print(f"wrote {OUT}: {os.path.getsize(OUT) / 1e6:.3f} MB, {len(out)} tensors")


if __name__ == "__main__":
    main()
