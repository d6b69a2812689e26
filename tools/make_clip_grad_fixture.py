#!/usr/bin/env python3
"""make_clip_grad_fixture.py: torch autograd references for the CLIP text
encoder's backward pass (src/models/clip_train.c), read by
tests/test_clip_grad.c.

    python3 tools/make_clip_grad_fixture.py   # deterministic; torch, transformers, safetensors

For the text encoders of tests/fixtures/tiny-sd1 (quick_gelu, 5 layers) and
tiny-sd2 (gelu, 4 layers), as transformers' CLIPTextModel in fp64 (the C side
runs fp32, so the reference's own rounding is negligible):

    ids  = text.ids of tests/fixtures/ref-<model>.safetensors (2 prompts: bos,
           tokens, eos, padding; no attention mask, as diffusers' DreamBooth)
    out  = text_encoder(ids)[0]           (checked against text.hidden there)
    dout = torch.randn(2, 77, D, generator=Generator().manual_seed(DOUT_SEED))
    loss = (out * dout).sum();  loss.backward()

and the same with LoRA (peft's LoraLayer forward, written out below since
peft is not a dependency): on q/k/v/out_proj of every layer
    y = W x + b + lora_B(lora_A(x)) * (alpha / rank),  base frozen,
    lora_A: (rank, in) ~ normal(0, 1/rank) drawn from
            Generator().manual_seed(LORA_SEED), one draw per (layer, q, k, v, out)
            in that order: exactly sdc's clip_train_reserve init;
    lora_B: (out, rank) = randn from Generator().manual_seed(LORA_B_SEED)
            / 8, same order (nonzero so lora_A gets a gradient; the C test
            draws the same values with sdc's torch-compatible RNG).

Why nothing but references is stored: the file must stay under 500 KB and the
fp32 gradients of every parameter of both models already take ~415 KB. The
inputs (ids, out) live in ref-<model>.safetensors; dout, lora_A and lora_B
come from torch's generator, which sdc reproduces (src/sampling/rng.h,
proven by test_sampling) to float rounding; the seeds are stored.

Writes tests/fixtures/ref-grad-clip.safetensors (F32, ids I32):
  <m>.grad.<diffusers name>     gradient of every parameter except the token
                                embedding, e.g. sd1.grad.text_model.encoder.layers.0.mlp.fc1.weight
  <m>.tok_rows                  I32 (n,) the distinct ids of the prompts, sorted
  <m>.grad_rows.text_model.embeddings.token_embedding.weight
                                (n, D) those rows of the token-embedding
                                gradient; every other row is exactly zero
  <m>.lora<alpha>.grad.down     (layers*4, rank, D) d loss / d lora_A, order (layer, q, k, v, out)
  <m>.lora<alpha>.grad.up       (layers*4, D, rank) d loss / d lora_B
  dout_seed, lora_seed, lora_b_seed   I64 (1,) the generator seeds above
with <m> in sd1, sd2; LoRA cases, rank 4 (the shape says it): sd1 alpha 4
(scale 1) and alpha 8 (scale 2, so a wrong alpha/rank shows), sd2 alpha 8.

Note: k_proj.bias gets no gradient in exact arithmetic (adding q.b_k to every
score of a query row does not change its softmax); its reference is ~1e-17
and the C test compares it on the scale of k_proj.weight's gradient.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from safetensors.torch import save_file, load_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "ref-grad-clip.safetensors")

DOUT_SEED = 1234
LORA_SEED = 77
LORA_B_SEED = 78
RANK = 4
MODELS = {"sd1": ("tiny-sd1", (4.0, 8.0)), "sd2": ("tiny-sd2", (8.0,))}  # prefix: (fixture, LoRA alphas)
PROJS = ("q_proj", "k_proj", "v_proj", "out_proj")


def load_text_encoder(fixture):
    from transformers import CLIPTextModel
    # sdpa: the eager path computes its softmax in fp32 even for an fp64 model
    te = CLIPTextModel.from_pretrained(os.path.join(FIX, fixture, "text_encoder"),
                                       attn_implementation="sdpa")
    return te.to(torch.float64).eval()


def named_params(te):
    """(diffusers name, parameter): transformers 5 drops the text_model. prefix in its own names."""
    return [(k if k.startswith("text_model.") else "text_model." + k, p) for k, p in te.named_parameters()]


def layers_of(te):
    tm = te.text_model if hasattr(te, "text_model") else te
    return tm.encoder.layers


class LoraLinear(nn.Module):
    """peft's lora.Linear forward: base(x) + lora_B(lora_A(x)) * scaling (dropout 0)."""

    def __init__(self, base, a, b, scaling):
        super().__init__()
        self.base, self.scaling = base, scaling
        self.lora_A = nn.Parameter(a.clone())  # (rank, in)
        self.lora_B = nn.Parameter(b.clone())  # (out, rank)

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t()) @ self.lora_B.t() * self.scaling


def lora_init(n_layers, d):
    """lora_A, lora_B for every (layer, projection), as fp32 draws (what the C side holds)."""
    ga = torch.Generator().manual_seed(LORA_SEED)
    gb = torch.Generator().manual_seed(LORA_B_SEED)
    a, b = [], []
    for _ in range(n_layers):
        for _ in PROJS:
            a.append(torch.empty(RANK, d).normal_(0.0, 1.0 / RANK, generator=ga))
            b.append(torch.randn(d, RANK, generator=gb) / 8)
    return a, b


def dout_for(shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(DOUT_SEED))


def full_case(prefix, te, ids, ref_out, dout):
    out = te(input_ids=ids)[0]
    err = (out.float() - ref_out).abs().max().item() / ref_out.abs().max().item()
    assert err < 1e-5, f"{prefix}: fp64 out differs from text.hidden by {err:.2e}"
    (out * dout.double()).sum().backward()
    r = {}
    tok = "text_model.embeddings.token_embedding.weight"
    rows = torch.unique(ids.flatten())  # sorted
    for name, p in named_params(te):
        g = p.grad.detach()
        if name == tok:
            others = torch.ones(g.shape[0], dtype=torch.bool)
            others[rows] = False
            assert torch.all(g[others] == 0)
            r[f"{prefix}.tok_rows"] = rows.to(torch.int32)
            r[f"{prefix}.grad_rows.{tok}"] = g[rows]
        else:
            r[f"{prefix}.grad.{name}"] = g
        p.grad = None
    print(f"  {prefix}: out err vs text.hidden {err:.1e}, {len(r)} tensors")
    return r


def lora_case(prefix, te, ids, dout, alpha):
    for p in te.parameters():
        p.requires_grad_(False)
    layers = layers_of(te)
    d = te.config.hidden_size
    a, b = lora_init(len(layers), d)
    wrapped = []
    for i, layer in enumerate(layers):
        for j, proj in enumerate(PROJS):
            k = i * len(PROJS) + j
            w = LoraLinear(getattr(layer.self_attn, proj), a[k].double(), b[k].double(), alpha / RANK)
            setattr(layer.self_attn, proj, w)
            wrapped.append(w)
    out = te(input_ids=ids)[0]
    (out * dout.double()).sum().backward()
    tag = f"{prefix}.lora{alpha:g}"
    r = {f"{tag}.grad.down": torch.stack([w.lora_A.grad for w in wrapped]),
         f"{tag}.grad.up": torch.stack([w.lora_B.grad for w in wrapped])}
    print(f"  {tag}: |grad down| max {r[tag + '.grad.down'].abs().max():.3e}, "
          f"|grad up| max {r[tag + '.grad.up'].abs().max():.3e}")
    return r


def main():
    transformers.utils.logging.disable_progress_bar()
    refs = {}
    for prefix, (fixture, alphas) in MODELS.items():
        ref = load_file(os.path.join(FIX, f"ref-{fixture}.safetensors"))
        ids = ref["text.ids"].to(torch.int64)
        dout = dout_for(ref["text.hidden"].shape)
        refs.update(full_case(prefix, load_text_encoder(fixture), ids, ref["text.hidden"], dout))
        for alpha in alphas:
            refs.update(lora_case(prefix, load_text_encoder(fixture), ids, dout, alpha))
    out = {k: (v if v.dtype == torch.int32 else v.float()).contiguous() for k, v in refs.items()}
    # the seeds as tensors: metadata keys come back in hash order, so the file would differ per run
    for k, v in (("dout_seed", DOUT_SEED), ("lora_seed", LORA_SEED), ("lora_b_seed", LORA_B_SEED)):
        out[k] = torch.tensor([v], dtype=torch.int64)
    save_file(out, OUT, metadata={"format": "pt"})
    print(f"wrote {OUT}: {len(out)} tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
