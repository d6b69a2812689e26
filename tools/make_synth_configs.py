#!/usr/bin/env python3
"""make_synth_configs.py: the diffusers config files of the synth model
(issue 16 part 3, docs/model.md) in data/models/sdc-synth-configs/, as
diffusers and transformers write them (save_config / save_pretrained of the
classes), and the parameter count and fp16 bytes of each part.

  text_encoder/config.json   CLIPTextModel: vocab 670 (the pruned tokenizer,
                             tools/make_synth_tokenizer.py), hidden 64, 4
                             layers, 2 heads, MLP 256, 77 positions
  unet/config.json           UNet2DConditionModel at SD 1.x's architecture,
                             channels [32, 64, 64], 1 layer per block,
                             cross-attention 64 wide, 16x16 latents
  vae/config.json            AutoencoderKL, 3 levels [16, 32, 64] (f = 4:
                             64 px images <-> 16x16x4 latents), 8 groups
  scheduler/scheduler_config.json, model_index.json: SD 1.x's

The tokenizer/ folder beside them is make_synth_tokenizer.py's. Then
`sdc init-model -c data/models/sdc-synth-configs --vae VAE -o OUT` makes a
model (the VAE trained by `sdc train vae --vae-config .../vae/config.json`).

Needs torch, diffusers, transformers. Never run at run time.
"""
import json
import os
import shutil
import tempfile

from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "models", "sdc-synth-configs")
VOCAB = 670  # tokenizer/vocab.json: 512 byte symbols + 156 merges + BOS + EOS

TEXT = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=256,
            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1,
            pad_token_id=VOCAB - 1, projection_dim=64)
UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64, 64], layers_per_block=1,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=64,
            attention_head_dim=2, norm_num_groups=16)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[16, 32, 64], layers_per_block=1, norm_num_groups=8,
           latent_channels=4, sample_size=64, scaling_factor=0.6919,  # 1/std of the trained VAE's latents (docs/model.md)
           down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3)
# SD 1.x's scheduler (what the DreamBooth objective and sdc's samplers read)
SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
             prediction_type="epsilon", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
             timestep_spacing="leading")


def count(m):
    return sum(p.numel() for p in m.parameters())


def main():
    te = CLIPTextModel(CLIPTextConfig(**TEXT))
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE)
    tmp = tempfile.mkdtemp()
    try:
        te.save_pretrained(os.path.join(tmp, "te"))
        for sub, src in (("text_encoder", os.path.join(tmp, "te", "config.json")),):
            os.makedirs(os.path.join(OUT, sub), exist_ok=True)
            shutil.copy(src, os.path.join(OUT, sub, "config.json"))
    finally:
        shutil.rmtree(tmp)
    unet.save_config(os.path.join(OUT, "unet"))
    vae.save_config(os.path.join(OUT, "vae"))
    PNDMScheduler(**SCHED).save_config(os.path.join(OUT, "scheduler"))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": json.load(
        open(os.path.join(OUT, "unet", "config.json")))["_diffusers_version"],
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(OUT, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    total = 0
    for name, m in (("text_encoder", te), ("unet", unet), ("vae", vae)):
        n = count(m)
        total += n
        print("%-12s %9d parameters  %9d bytes fp16  %9d bytes fp32" % (name, n, 2 * n, 4 * n))
    print("%-12s %9d parameters  %9d bytes fp16  %9d bytes fp32" % ("total", total, 2 * total, 4 * total))


if __name__ == "__main__":
    main()
