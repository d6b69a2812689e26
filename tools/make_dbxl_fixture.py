#!/usr/bin/env python3
"""make_dbxl_fixture.py: diffusers' train_dreambooth_lora_sdxl.py loop, run in
torch, as the reference for sdc's trainer on SDXL (src/train/dreambooth.c).

    python3 tools/make_dbxl_fixture.py   # writes tests/fixtures/ref-dreambooth-xl.safetensors

The model is the tiny SDXL fixture (tests/fixtures/tiny-sdxl: diffusers
folder, its own 1000-id tokenizers). The loop body is the script's, written
again here with the real accelerate Accelerator, torch.optim.AdamW,
get_scheduler, peft's LoRA on the UNet's to_q/to_k/to_v/to_out.0
(init "gaussian", alpha = rank) and the frozen text encoders:
    prompt_embeds = cat(text_encoder hidden_states[-2], text_encoder_2 hidden_states[-2])
    pooled        = text_encoder_2's text_embeds
    time_ids      = original_size + crop_top_left + (resolution, resolution) per sample
    pred = unet(noisy, t, prompt_embeds, added_cond_kwargs={text_embeds, time_ids})
With prior preservation a class sample takes the time ids of the instance
example it is collated with (the script's collate_fn appends
example["original_size"], the instance's, for the class half too).
As tools/make_db_fixture.py (whose helpers this imports) the epoch's order,
every sample's noise and timestep are sdc's (dreambooth.h), and lora_A is
sdc's init (one generator seeded with the seed, randn(rank * in) / rank per
projection in block order).

Cases (3 optimizer steps, batch 1 unless said, lr 1e-4, AdamW wd 1e-4 (the
script's --adam_weight_decay default), fp32, CPU, resolution 64: latents
(4, 8, 8)):
  xa  LoRA rank 4, prior preservation, 2 instance latents with different
      sizes / crops, 1 class latent
  xb  LoRA rank 4, no prior, batch 2 (both instances in one batch), min-SNR
      gamma 5, offset noise, accumulation 2, linear schedule with warmup 1
  xc  --train_text_encoder: LoRA rank 4 on the UNet and on both text
      encoders (peft on q_proj/k_proj/v_proj/out_proj of every layer, as the
      script), prior preservation, three param groups as the script makes
      them: the UNet's (lr 1e-4, wd 1e-4), text_encoder's and
      text_encoder_2's (--text_encoder_lr 5e-5, --adam_weight_decay_text_encoder
      0.3: far from the script's 1e-3 so that a decay taken from the wrong
      group shows in the final values); the prompts encoded every step through the trained encoders
      (encode_prompt with text_input_ids_list), clip_grad_norm_ over the
      chain of the three groups. Each encoder's lora_A is sdc's init from
      its own generator (seed + 1: text_encoder, seed + 2: text_encoder_2),
      in (layer, q, k, v, out) order.
  xd  full fine-tuning of the UNet and both text encoders (sdc's SDXL full
      fine-tuning; the script has none: the same loop with every weight
      trainable), the same three groups (text encoders at lr 5e-5, wd 0.3),
      prior preservation, constant lr
In xc / xd the last layer of text_encoder (its output is hidden_states[-2])
and its final_layer_norm get no gradient: torch leaves their grad None and
AdamW skips them (no step, no decay); they are not stored, and sdc does not
train them (ClipTrainOpts.hidden_only).
Stored as tools/make_db_fixture.py stores them (X.loss, X.grad_norm, X.lr,
X.timesteps, X.p.<name>, X.d2.<name>, X.ssq), plus latents.inst (2, 4, 8, 8),
latents.class (1, 4, 8, 8), time_ids.inst (2, 6), ids.inst / ids.class /
ids2.inst / ids2.class (I32 (77)), prompt.inst, prompt.class.
"""
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

ROOT = db.ROOT
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sdxl")
OUT = os.path.join(ROOT, "tests", "fixtures", "ref-dreambooth-xl.safetensors")
INSTANCE_PROMPT = "a photo of sks dog"
CLASS_PROMPT = "a photo of dog"
RES = 64
TIME_IDS = [[96.0, 80.0, 8.0, 0.0, RES, RES], [80.0, 120.0, 0.0, 16.0, RES, RES]]

CASES = {
    "xa": dict(seed=1234, prior=True, snr_gamma=None, offset_noise=False, accum=1, lr_scheduler="constant",
               warmup=0, train_batch_size=1),
    "xb": dict(seed=77, prior=False, snr_gamma=5.0, offset_noise=True, accum=2, lr_scheduler="linear", warmup=1,
               train_batch_size=2),
    "xc": dict(seed=4321, prior=True, snr_gamma=None, offset_noise=False, accum=1, lr_scheduler="constant",
               warmup=0, train_batch_size=1, train_text_encoder=True, text_encoder_lr=5e-5,
               adam_weight_decay_text_encoder=0.3),
    "xd": dict(seed=2024, prior=True, snr_gamma=None, offset_noise=False, accum=1, lr_scheduler="constant",
               warmup=0, train_batch_size=1, train_text_encoder=True, text_encoder_lr=5e-5,
               adam_weight_decay_text_encoder=0.3, lora_rank=0),
}
COMMON = dict(max_train_steps=3, learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4,
              adam_epsilon=1e-8, max_grad_norm=1.0, prior_loss_weight=1.0, lr_num_cycles=1, lr_power=1.0,
              lora_rank=4)


def encode(prompts):
    """The script's tokenize_prompt + encode_prompt over both tokenizers and encoders."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    out = {}
    embeds, pooled = [], None
    for i, (tsub, esub, cls) in enumerate((("tokenizer", "text_encoder", CLIPTextModel),
                                           ("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection))):
        tok = CLIPTokenizer.from_pretrained(MODEL, subfolder=tsub)
        te = cls.from_pretrained(MODEL, subfolder=esub)
        te.requires_grad_(False)
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        out[f"ids{'' if i == 0 else '2'}"] = ids
        r = te(ids, output_hidden_states=True, return_dict=False)
        pooled = r[0]  # the last encoder's (text_embeds)
        embeds.append(r[-1][-2])
    return torch.concat(embeds, dim=-1), pooled, out


def load_text_encoders():
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    return (CLIPTextModel.from_pretrained(MODEL, subfolder="text_encoder"),
            CLIPTextModelWithProjection.from_pretrained(MODEL, subfolder="text_encoder_2"))


def sdc_text_name(prefix, n):
    """prefix + "." + the name in sdc's table (text_model.*, text_projection.*): transformers 5's
    CLIPTextModel names its parameters without the text_model. level."""
    return f"{prefix}.{n if n.startswith(('text_model.', 'text_projection.')) else 'text_model.' + n}"


def add_text_lora(te, rank, seed, prefix):
    """The script's text_lora_config on te (peft, every layer), lora_A set to
    sdc's init (clip_train.c make_lora: one generator, randn(rank * D) / rank
    per (layer, q, k, v, out_proj)), lora_B 0. Returns [(fixture name, param)]."""
    from peft import LoraConfig, inject_adapter_in_model
    te.requires_grad_(False)
    # what transformers' add_adapter does (it wants a newer peft than this one)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), te)
    mods = dict(te.named_modules())
    g = torch.Generator().manual_seed(seed & 0xFFFFFFFF)
    table = []
    with torch.no_grad():
        for i in range(te.config.num_hidden_layers):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                base = f"text_model.encoder.layers.{i}.self_attn.{proj}"
                m = mods[base] if base in mods else mods[base[len("text_model."):]]  # transformers 5: flat
                A, B = m.lora_A["default"].weight, m.lora_B["default"].weight
                A.copy_(torch.randn(A.numel(), generator=g).view_as(A) * (1.0 / rank))
                B.zero_()
                table.append((f"{prefix}.{base}.lora.down.weight", A))
                table.append((f"{prefix}.{base}.lora.up.weight", B))
    return table


def run_case(tag, cfg, latents, hidden, pooled, ids):
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_snr
    a = dict(COMMON, **cfg)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(MODEL, subfolder="scheduler")
    accelerator = Accelerator(gradient_accumulation_steps=a["accum"], cpu=True)
    te_train = a.get("train_text_encoder", False)
    if a["lora_rank"]:
        lora_table = db.add_lora(unet, a["lora_rank"], a["seed"])
    else:
        lora_table = [("unet." + n, p) for n, p in unet.named_parameters()]
    groups = [lora_table]
    if te_train:
        te1, te2 = load_text_encoders()
        if a["lora_rank"]:
            groups += [add_text_lora(te1, a["lora_rank"], a["seed"] + 1, "text"),
                       add_text_lora(te2, a["lora_rank"], a["seed"] + 2, "text2")]
        else:
            groups += [[(sdc_text_name("text", n), p) for n, p in te1.named_parameters()],
                       [(sdc_text_name("text2", n), p) for n, p in te2.named_parameters()]]
    named = [x for gr in groups for x in gr]
    params_to_optimize = [p for _, p in named]
    initial = {n: p.detach().clone() for n, p in named}
    # the script's param groups: the UNet's at --learning_rate, each text encoder's at --text_encoder_lr
    # with --adam_weight_decay_text_encoder; the optimizer's own weight_decay is --adam_weight_decay
    param_groups = [{"params": [p for _, p in groups[0]], "lr": a["learning_rate"]}]
    for gr in groups[1:]:
        param_groups.append({"params": [p for _, p in gr], "weight_decay": a["adam_weight_decay_text_encoder"],
                             "lr": a["text_encoder_lr"] if a["text_encoder_lr"] else a["learning_rate"]})
    optimizer = torch.optim.AdamW(param_groups, betas=(a["adam_beta1"], a["adam_beta2"]),
                                  weight_decay=a["adam_weight_decay"], eps=a["adam_epsilon"])

    # the script's embeddings, computed once (frozen encoders): instance [+ class]
    prompt_embeds, add_text = hidden[:1], pooled[:1]
    if a["prior"]:
        prompt_embeds, add_text = torch.cat([hidden[:1], hidden[1:]]), torch.cat([pooled[:1], pooled[1:]])
    inst, cls = latents["inst"], latents["class"]
    n_items = max(len(inst), len(cls)) if a["prior"] else len(inst)
    examples = [{"instance_latent": inst[i % len(inst)], "class_latent": cls[i % len(cls)],
                 "original_size": tuple(TIME_IDS[i % len(inst)][:2]),
                 "crop_top_left": tuple(TIME_IDS[i % len(inst)][2:4])} for i in range(n_items)]

    def collate_fn(ex, with_prior_preservation):
        lat = [e["instance_latent"] for e in ex]
        sizes = [e["original_size"] for e in ex]
        crops = [e["crop_top_left"] for e in ex]
        if with_prior_preservation:
            lat += [e["class_latent"] for e in ex]
            sizes += [e["original_size"] for e in ex]  # the instance's, as the script does
            crops += [e["crop_top_left"] for e in ex]
        return {"model_input": torch.stack(lat).contiguous().float(), "original_sizes": sizes, "crop_top_lefts": crops}

    train_dataloader = torch.utils.data.DataLoader(
        examples, batch_size=a["train_batch_size"], sampler=db.SdcOrder(n_items, a["seed"]),
        collate_fn=lambda ex: collate_fn(ex, a["prior"]))
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / a["accum"])
    lr_scheduler = get_scheduler(a["lr_scheduler"], optimizer=optimizer,
                                 num_warmup_steps=a["warmup"] * accelerator.num_processes,
                                 num_training_steps=a["max_train_steps"] * accelerator.num_processes,
                                 num_cycles=a["lr_num_cycles"], power=a["lr_power"])
    if te_train:
        unet, te1, te2, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, te1, te2, optimizer, train_dataloader, lr_scheduler)
        # the script's tokens: the instance prompt's [+ the class prompt's], through each tokenizer
        tokens_one, tokens_two = ids["ids"][:1], ids["ids2"][:1]
        if a["prior"]:
            tokens_one, tokens_two = ids["ids"], ids["ids2"]
    else:
        unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader,
                                                                              lr_scheduler)
    num_train_epochs = math.ceil(a["max_train_steps"] / num_update_steps_per_epoch)

    def compute_time_ids(original_size, crops_coords_top_left):
        return torch.tensor([list(original_size + crops_coords_top_left + (RES, RES))])

    well = {}
    global_step = 0
    losses, norms, lrs, tsteps, micro = [], [], [], [], []
    for epoch in range(num_train_epochs):
        unet.train()
        if te_train:
            te1.train()
            te2.train()
        for step, batch in enumerate(train_dataloader):
            with accelerator.accumulate(unet):
                model_input = batch["model_input"]
                bsz, channels, height, width = model_input.shape
                noise, timesteps = db.sdc_noise_and_timesteps(a["seed"], epoch, step, bsz, (channels, height, width),
                                                              a["offset_noise"],
                                                              noise_scheduler.config.num_train_timesteps)
                tsteps.append(timesteps.float())
                noisy_model_input = noise_scheduler.add_noise(model_input, noise, timesteps)
                add_time_ids = torch.cat([compute_time_ids(s, c)
                                          for s, c in zip(batch["original_sizes"], batch["crop_top_lefts"])])
                elems_to_repeat = bsz // 2 if a["prior"] else bsz
                if te_train:  # the script's encode_prompt(text_input_ids_list=[tokens_one, tokens_two])
                    embeds = []
                    for te, tk in ((te1, tokens_one), (te2, tokens_two)):
                        r = te(tk, output_hidden_states=True, return_dict=False)
                        step_pooled = r[0]
                        embeds.append(r[-1][-2])
                    prompt_embeds, add_text = torch.concat(embeds, dim=-1), step_pooled
                unet_added_conditions = {"time_ids": add_time_ids, "text_embeds": add_text.repeat(elems_to_repeat, 1)}
                prompt_embeds_input = prompt_embeds.repeat(elems_to_repeat, 1, 1)
                model_pred = unet(noisy_model_input, timesteps, prompt_embeds_input,
                                  added_cond_kwargs=unet_added_conditions, return_dict=False)[0]
                target = noise  # epsilon
                if a["prior"]:
                    model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
                    target, target_prior = torch.chunk(target, 2, dim=0)
                    prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
                if a["snr_gamma"] is None:
                    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                else:
                    assert not a["prior"]
                    snr = compute_snr(noise_scheduler, timesteps)
                    w = torch.stack([snr, a["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
                    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
                    loss = (loss.mean(dim=list(range(1, len(loss.shape)))) * w).mean()
                if a["prior"]:
                    loss = loss + a["prior_loss_weight"] * prior_loss
                accelerator.backward(loss)
                micro.append(loss.detach().item())
                if accelerator.sync_gradients:
                    # the script: chain(unet params, text_encoder's, text_encoder_2's)
                    norms.append(float(accelerator.clip_grad_norm_(params_to_optimize, a["max_grad_norm"])))
                    lrs.append(lr_scheduler.get_last_lr()[0])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=False)
                if accelerator.sync_gradients:
                    db.track_well(well, [(n, p) for n, p in named if p.grad is not None], optimizer,
                                  a["adam_beta2"])
            if accelerator.sync_gradients:
                global_step += 1
                losses.append(sum(micro) / len(micro))
                print(f"    [{tag}] step {global_step}: loss {losses[-1]:.8f} (micro {micro}) grad norm "
                      f"{norms[-1]:.6f} lr {lrs[-1]:.3g} t {[x.tolist() for x in tsteps[-len(micro):]]}")
                micro = []
            if global_step >= a["max_train_steps"]:
                break
    assert global_step == a["max_train_steps"], global_step

    out = {f"{tag}.loss": torch.tensor(losses, dtype=torch.float32),
           f"{tag}.grad_norm": torch.tensor(norms, dtype=torch.float32),
           f"{tag}.lr": torch.tensor(lrs, dtype=torch.float32)}
    # what the loss reaches: torch leaves the others' grad None and AdamW skips them
    reached = [(n, p) for n, p in named if p.grad is not None]
    skipped = sorted(n for n, p in named if p.grad is None)
    final = {n: p.detach().float().contiguous() for n, p in reached}
    ssq, maxd = 0.0, 0.0
    for n, p in sorted(reached, key=lambda x: x[0]):
        w = well[n]
        d = (final[n].double() - initial[n].double()).flatten()
        dw = d[w]
        out[f"{tag}.d2.{n}"] = torch.tensor([float((dw * dw).sum()), float(w.sum())], dtype=torch.float32)
        ssq += float((final[n].double() ** 2).sum())
        maxd = max(maxd, float(d.abs().max()))
    out[f"{tag}.ssq"] = torch.tensor([ssq], dtype=torch.float64)
    if a["lora_rank"]:
        sample = sorted(final)
    else:  # as make_db_fixture.py: every 5th small UNet tensor, every text tensor but the token embeddings
        small = [n for n in sorted(final) if n.startswith("unet.") and final[n].numel() <= 10000]
        sample = small[::5] + sorted(n for n in final if n.startswith("text") and "token_embedding" not in n)
        for pre, key in (("text", "ids"), ("text2", "ids2")):
            tok = f"{pre}.text_model.embeddings.token_embedding.weight"
            rows = torch.unique(ids[key].flatten()).to(torch.int64)
            out[f"{tag}.tok_rows{'2' if pre == 'text2' else ''}"] = rows.to(torch.int32)
            out[f"{tag}.p.{tok}.rows"] = final[tok][rows].contiguous()
    for n in sample:
        out[f"{tag}.p.{n}"] = final[n]
    print(f"  {tag}: {len(final)} trained tensors ({sum(v.numel() for v in final.values()):,} values), "
          f"{len(sample)} stored, max |change| {maxd:.3e}; no gradient (skipped by AdamW): {skipped}")
    return out


def main():
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(20261206)
    latents = {"inst": torch.randn(2, 4, RES // 8, RES // 8, generator=g),
               "class": torch.randn(1, 4, RES // 8, RES // 8, generator=g)}
    with torch.no_grad():
        hidden, pooled, ids = encode([INSTANCE_PROMPT, CLASS_PROMPT])
    out = {"latents.inst": latents["inst"], "latents.class": latents["class"],
           "time_ids.inst": torch.tensor(TIME_IDS, dtype=torch.float32),
           "ids.inst": ids["ids"][0].to(torch.int32), "ids.class": ids["ids"][1].to(torch.int32),
           "ids2.inst": ids["ids2"][0].to(torch.int32), "ids2.class": ids["ids2"][1].to(torch.int32)}
    for tag, cfg in CASES.items():
        print(f"== case {tag}: {cfg}")
        out.update(run_case(tag, cfg, latents, hidden, pooled, ids))
    out = {k: v.contiguous() for k, v in out.items()}
    for k, text in (("prompt.inst", INSTANCE_PROMPT), ("prompt.class", CLASS_PROMPT)):
        out[k] = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
    save_file(out, OUT, metadata={"format": "pt"})
    print(f"wrote {OUT}: {os.path.getsize(OUT) / 1e6:.3f} MB, {len(out)} tensors")


if __name__ == "__main__":
    main()
