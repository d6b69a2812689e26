#!/usr/bin/env python3
"""make_lora_fixture.py: LoRA files for the tiny fixture model and the
outputs diffusers computes with them (tests/test_lora.c, tests/tests.cmake).

    python3 tools/make_lora_fixture.py             # writes the files below, deterministic
    python3 tools/make_lora_fixture.py --check F   # loads LoRA file F (e.g. written by sdc's
                                                   # lora_save) with diffusers + peft and compares
                                                   # its outputs with the reference

Writes to tests/fixtures/:
  lora-tiny-sd1-diffusers.safetensors  rank 4 on tests/fixtures/tiny-sd1: every UNet attention
      projection (attn1/attn2 to_q, to_k, to_v, to_out.0) and the text encoder's q/k/v/out_proj
      and mlp.fc1, written the way a diffusers DreamBooth-LoRA run writes it: peft adapters ->
      get_peft_model_state_dict (the text encoder's by hand, see write_diffusers) ->
      convert_state_dict_to_diffusers ->
      StableDiffusionPipeline.save_lora_weights with the adapters' LoraConfig as
      lora_adapter_metadata (alpha != rank lives there). F32.
  lora-tiny-sd1-kohya.safetensors  the same LoRA renamed by kohya sd-scripts' rule
      (lora_unet_ / lora_te_ + module path with "." -> "_", .lora_down.weight / .lora_up.weight,
      a scalar .alpha; the text encoder's alpha == rank is left out, as in old kohya files).
      F16 (the values are F16-representable, so both files hold the same numbers).
  ref-lora-tiny-sd1.safetensors  with the LoRA merged at weight 0.7
      (W + 0.7 * alpha / rank * up @ down, f32):
      lora.unet.out     (2, 4, 16, 16)  unet(x, t, ctx) on ref-tiny-sd1's unet.x / unet.t / unet.ctx
      lora.text.hidden  (2, 77, 32)     last_hidden_state on ref-tiny-sd1's text.ids
      merged.unet.<name>, merged.text_encoder.<name>  four merged weights
  lora-demo-kohya.safetensors  a kohya LoRA (F16, rank 4, alpha 4; attn1.to_q, attn2.to_k /
      to_v, text encoder q_proj / v_proj) for the demo model
      data/models/sdc-tiny-sd1.safetensors, with the UNet named in the original layout
      (lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q): the CLI test's LoRA.

Alpha: UNet 2.0 (scale 0.5), attn2.to_k / attn2.to_v 6.0 (scale 1.5); text encoder 4 = rank
(scale 1). Down ~ N(0, 1/in), up ~ N(0, 1/rank): the update is as large as the weight.
The reference is the explicit merge; the script also loads both files with diffusers' own
loaders (lora_state_dict, load_lora_into_unet, and the text encoder's key conversion and
LoraConfig, see load_into_text_encoder) at scale 0.7 and checks they give the same outputs,
so the files are what diffusers reads.
"""
import argparse
import copy
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
MODEL = os.path.join(FIX, "tiny-sd1")
DEMO = os.path.join(ROOT, "data", "models", "sdc-tiny-sd1.safetensors")
RANK, WEIGHT, SEED = 4, 0.7, 4242
UNET_ALPHA, KV2_ALPHA, TE_ALPHA = 2.0, 6.0, 4.0
UNET_LEAVES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
               "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
TE_LEAVES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1")


def save_deterministic(tensors, path, metadata):
    """safetensors' file layout with the header in a fixed order: save_file writes
    __metadata__ from a hash map, so its order (and the file's bytes) vary by run."""
    import json
    import struct
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    header, blobs, off = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        b = t.view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet")).float().eval()
    text = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder")).float().eval()
    return unet, text


def te_root(text):
    """(module holding encoder, prefix of its names in the diffusers / HF checkpoint naming)."""
    return (text.text_model, "text_model.") if hasattr(text, "text_model") else (text, "")


def lora_modules(unet, text):
    """[(comp, diffusers module name, torch module)]: the LoRA's targets, in model order."""
    mods = [("unet", n, m) for n, m in unet.named_modules() if n.endswith(UNET_LEAVES)]
    root, _ = te_root(text)
    mods += [("text_encoder", "text_model." + n, m) for n, m in root.named_modules() if n.endswith(TE_LEAVES)]
    return mods


def alpha_of(comp, name):
    if comp == "text_encoder":
        return TE_ALPHA
    return KV2_ALPHA if name.endswith(("attn2.to_k", "attn2.to_v")) else UNET_ALPHA


def make_lora(mods):
    """{(comp, name): (down (r, in), up (out, r), alpha)}, values F16-representable, f32."""
    g = torch.Generator().manual_seed(SEED)
    out = {}
    for comp, name, m in mods:
        fin, fout = m.weight.shape[1], m.weight.shape[0]
        down = (torch.randn(RANK, fin, generator=g) / fin ** 0.5).half().float()
        up = (torch.randn(fout, RANK, generator=g) / RANK ** 0.5).half().float()
        out[(comp, name)] = (down, up, alpha_of(comp, name))
    return out


def merged_models(unet, text, lora, weight):
    """Copies of the models with W + weight * alpha / r * up @ down, in f32."""
    u, t = copy.deepcopy(unet), copy.deepcopy(text)
    named = {("unet", n): m for n, m in u.named_modules()}
    root, _ = te_root(t)
    named.update({("text_encoder", "text_model." + n): m for n, m in root.named_modules()})
    with torch.no_grad():
        for key, (down, up, alpha) in lora.items():
            named[key].weight += weight * (alpha / RANK) * (up @ down)
    return u, t


def outputs(unet, text, refs):
    with torch.no_grad():
        hidden = text(input_ids=refs["text.ids"].long()).last_hidden_state
        out = unet(refs["unet.x"], refs["unet.t"], encoder_hidden_states=refs["unet.ctx"]).sample
    return out.float().contiguous(), hidden.float().contiguous()


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# --------------------------------------------------------------------------
# the two file formats

def write_diffusers(unet, text, lora, path):
    """Through peft and diffusers' own save, as a diffusers training script does."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    u, t = copy.deepcopy(unet), copy.deepcopy(text)
    root, pre = te_root(t)
    unet_names = [n for (c, n) in lora if c == "unet"]
    te_names = [n[len("text_model."):] for (c, n) in lora if c == "text_encoder"]
    ucfg = LoraConfig(r=RANK, lora_alpha=UNET_ALPHA, init_lora_weights="gaussian", target_modules=unet_names,
                      alpha_pattern={n: KV2_ALPHA for n in unet_names if alpha_of("unet", n) != UNET_ALPHA})
    tcfg = LoraConfig(r=RANK, lora_alpha=TE_ALPHA, init_lora_weights="gaussian",
                      target_modules=[pre[:-1] + "." + n if pre else n for n in te_names])
    u.add_adapter(ucfg)
    with torch.no_grad():
        for n, m in u.named_modules():
            if ("unet", n) in lora and hasattr(m, "lora_A"):
                down, up, _ = lora[("unet", n)]
                m.lora_A["default"].weight.copy_(down)
                m.lora_B["default"].weight.copy_(up)
    usd = convert_state_dict_to_diffusers(get_peft_model_state_dict(u))
    # The text encoder's peft state dict, by hand: transformers 5 wants peft >= 0.22 for
    # add_adapter (not installable here); the keys are those get_peft_model_state_dict gives.
    tpeft = {}
    for (c, n), (down, up, _) in lora.items():
        if c == "text_encoder":
            k = pre + n[len("text_model."):]
            tpeft[k + ".lora_A.weight"], tpeft[k + ".lora_B.weight"] = down.clone(), up.clone()
    tsd = convert_state_dict_to_diffusers(tpeft)
    assert len(usd) == 2 * len(unet_names) and len(tsd) == 2 * len(te_names), (len(usd), len(tsd))
    # saved in fp16 (as a run with --mixed_precision fp16 may): the values are fp16-exact anyway
    usd = {k: v.half() for k, v in usd.items()}
    tsd = {k: v.half() for k, v in tsd.items()}
    def meta(cfg):  # target_modules is a set: sorted, so the file is the same every run
        d = cfg.to_dict()
        d["target_modules"] = sorted(d["target_modules"])
        return d
    StableDiffusionPipeline.save_lora_weights(os.path.dirname(path), unet_lora_layers=usd,
                                              text_encoder_lora_layers=tsd, weight_name=os.path.basename(path),
                                              unet_lora_adapter_metadata=meta(ucfg),
                                              text_encoder_lora_adapter_metadata=meta(tcfg))
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:  # the same tensors and metadata, in a fixed order
        sd, md = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_deterministic(sd, path, md)


def write_kohya(lora, path):
    sd = {}
    for (comp, name), (down, up, alpha) in lora.items():
        stem = ("lora_unet_" if comp == "unet" else "lora_te_") + name.replace(".", "_")
        sd[stem + ".lora_down.weight"] = down.half()
        sd[stem + ".lora_up.weight"] = up.half()
        if alpha != RANK:  # an old kohya file: no alpha means alpha = rank
            sd[stem + ".alpha"] = torch.tensor(alpha, dtype=torch.float16)
    save_deterministic(sd, path, {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK),
                                  "ss_network_alpha": "Dynamic"})


def diffusers_outputs(path, unet, text, refs, weight):
    """Outputs of fresh copies of the models with the file loaded by diffusers' loaders."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.peft_utils import scale_lora_layers
    u, t = copy.deepcopy(unet), copy.deepcopy(text)
    sd, alphas, meta = StableDiffusionPipeline.lora_state_dict(path, return_lora_metadata=True)
    StableDiffusionPipeline.load_lora_into_unet(sd, alphas, u, adapter_name="x", metadata=meta)
    load_into_text_encoder(sd, alphas, meta, t)
    scale_lora_layers(u, weight)
    scale_lora_layers(t, weight)
    return outputs(u, t, refs)


def load_into_text_encoder(sd, alphas, meta, text):
    """diffusers' _load_lora_into_text_encoder with its last step, transformers'
    load_adapter (which wants peft >= 0.22), done by peft's inject + set."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    p = "text_encoder."
    sd = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    meta = {k[len(p):]: v for k, v in meta.items() if k.startswith(p)} if meta is not None else None
    alphas = {k[len(p):]: v for k, v in alphas.items() if k.startswith(p)} if alphas else None
    sd = convert_state_dict_to_peft(convert_state_dict_to_diffusers(sd))
    if not hasattr(text, "text_model"):
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    rank = {k: v.shape[1] for k, v in sd.items() if "lora_B" in k}
    cfg = _create_lora_config(sd, alphas, meta, rank, is_unet=False)
    inject_adapter_in_model(cfg, text, adapter_name="x")
    res = set_peft_model_state_dict(text, sd, adapter_name="x")
    assert not [k for k in res.unexpected_keys if "lora" in k], res.unexpected_keys


def check(path, unet, text, refs, ref_out, ref_hidden, tol=1e-5):
    out, hidden = diffusers_outputs(path, unet, text, refs, WEIGHT)
    eu, et = rel(out, ref_out), rel(hidden, ref_hidden)
    ok = eu < tol and et < tol
    print(f"  diffusers loads {os.path.basename(path)}: unet rel err {eu:.2e}, text {et:.2e} "
          f"(tol {tol:g}) {'OK' if ok else 'NOT OK'}")
    return ok


def fold_alphas(path):
    """A copy of kohya file `path` with every alpha folded into its lora_up (alpha := rank).
    diffusers 0.42 applies only the most common alpha of a kohya file to the UNet: the
    alpha_pattern keys it derives keep the old processor spelling and match no module (peft
    warns "alpha_pattern keys did not match"). kohya's own rule is per module, scale =
    alpha / rank (networks/lora.py, LoRAModule); folding keeps the check about the names and
    layouts, which diffusers' kohya converter does read."""
    sd = load_file(path)
    for k in [k for k in sd if k.endswith(".alpha")]:
        stem = k[:-len(".alpha")]
        r = sd[stem + ".lora_down.weight"].shape[0]
        sd[stem + ".lora_up.weight"] = sd[stem + ".lora_up.weight"].float() * (sd.pop(k).float() / r)
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), "sdc-lora-folded-" + os.path.basename(path))
    save_file(sd, out)
    return out


# --------------------------------------------------------------------------
# the demo model's LoRA (original-layout names)

def write_demo_lora(path):
    base = load_file(DEMO)
    g = torch.Generator().manual_seed(SEED + 1)
    sd = {}
    P_UNET, P_TE = "model.diffusion_model.", "cond_stage_model.transformer."
    for k in sorted(base):
        w = base[k]
        if k.startswith(P_UNET) and k.endswith(("attn2.to_k.weight", "attn2.to_v.weight", "attn1.to_q.weight")):
            stem = "lora_unet_" + k[len(P_UNET):-len(".weight")].replace(".", "_")
        elif k.startswith(P_TE) and k.endswith(("self_attn.q_proj.weight", "self_attn.v_proj.weight")):
            stem = "lora_te_" + k[len(P_TE):-len(".weight")].replace(".", "_")
        else:
            continue
        fout, fin = w.shape
        sd[stem + ".lora_down.weight"] = (torch.randn(RANK, fin, generator=g) / fin ** 0.5).half()
        sd[stem + ".lora_up.weight"] = (torch.randn(fout, RANK, generator=g) / RANK ** 0.5).half()
        sd[stem + ".alpha"] = torch.tensor(float(RANK), dtype=torch.float16)
    assert sd, "no attention weights in " + DEMO
    save_deterministic(sd, path, {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK),
                                  "ss_network_alpha": str(float(RANK))})
    print(f"  {os.path.basename(path)}: {len(sd) // 3} modules")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="FILE", help="compare FILE (a LoRA of the fixture's values) with diffusers")
    a = ap.parse_args()
    torch.manual_seed(0)
    unet, text = load_models()
    refs = load_file(os.path.join(FIX, "ref-tiny-sd1.safetensors"))
    lora = make_lora(lora_modules(unet, text))
    mu, mt = merged_models(unet, text, lora, WEIGHT)
    ref_out, ref_hidden = outputs(mu, mt, refs)
    if a.check:
        return 0 if check(a.check, unet, text, refs, ref_out, ref_hidden) else 1

    n_unet = sum(1 for c, _ in lora if c == "unet")
    print(f"== LoRA rank {RANK} on tiny-sd1: {n_unet} UNet modules, {len(lora) - n_unet} text-encoder modules")
    pd = os.path.join(FIX, "lora-tiny-sd1-diffusers.safetensors")
    pk = os.path.join(FIX, "lora-tiny-sd1-kohya.safetensors")
    write_diffusers(unet, text, lora, pd)
    write_kohya(lora, pk)
    ok = check(pd, unet, text, refs, ref_out, ref_hidden)
    ok &= check(fold_alphas(pk), unet, text, refs, ref_out, ref_hidden)
    base_out, base_hidden = outputs(unet, text, refs)
    print(f"  the LoRA changes the outputs: unet by {rel(ref_out, base_out):.3f}, text by "
          f"{rel(ref_hidden, base_hidden):.3f} (relative max)")

    out = {"lora.unet.out": ref_out, "lora.text.hidden": ref_hidden}
    su, st = mu.state_dict(), te_root(mt)[0].state_dict()
    for name in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                 "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight",
                 "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0.weight"):
        out["merged.unet." + name] = su[name].float().contiguous()
    for name in ("encoder.layers.0.self_attn.q_proj.weight",):
        out["merged.text_encoder.text_model." + name] = st[name].float().contiguous()
    save_file(out, os.path.join(FIX, "ref-lora-tiny-sd1.safetensors"), metadata={"format": "pt"})
    write_demo_lora(os.path.join(FIX, "lora-demo-kohya.safetensors"))
    for f in ("lora-tiny-sd1-diffusers", "lora-tiny-sd1-kohya", "ref-lora-tiny-sd1", "lora-demo-kohya"):
        print(f"  {f}.safetensors: {os.path.getsize(os.path.join(FIX, f + '.safetensors')):,} bytes")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
