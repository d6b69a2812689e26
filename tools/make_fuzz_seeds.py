#!/usr/bin/env python3
"""make_fuzz_seeds.py: the text seed corpora of the fuzz targets, from small
valid files (tests/fuzz/seeds/<target>/; the binary ones, written by sdc's own
writers, come from tests/fuzz/make_fuzz_seeds.c). No dependencies.

  python3 tools/make_fuzz_seeds.py [ROOT]   (ROOT: the repository, default ..)

Targets: safetensors (small files of every dtype, real headers),
manifest_text (job manifests of every task), tokenizer (a 600-token
cut of tests/fixtures/tokenizer as vocab.json + merges.txt and as
tokenizer.json, with the config files of SD 1.x / 2.x folders and added
tokens, and prompts), json_config (tests/fixtures/tiny-sd1's configs, as
fuzz_json_config.c's sections)."""
import json, os, sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "tests", "fuzz", "seeds")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def sections(**files):
    return "\n".join("@@@ %s\n%s" % (k.replace("__", "/").replace("_DOT_", "."), v) for k, v in files.items())


# ---- safetensors (and the JSON parser on its header) -------------------------
import glob, struct


def st(entries, meta=None, pad=True):
    hdr, off, data = {}, 0, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dt, shape, size in entries:
        n = size
        for d in shape:
            n *= d
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes((i * 7) & 255 for i in range(n))
        off += n
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


put("safetensors", "empty_obj", st([]))
put("safetensors", "one_f32", st([("a", "F32", [2, 3], 4)]))
put("safetensors", "mixed", st([("w", "F16", [4, 1, 1, 2], 2), ("b", "BF16", [4], 2), ("ids", "I64", [1, 3], 8),
                                ("\u00e9\\\"q", "F64", [1], 8), ("e", "U8", [0], 1)], meta={"format": "pt", "k": "v\n"}))
put("safetensors", "unpadded", st([("x", "I32", [3], 4)], pad=False))
put("safetensors", "json_misc",
    struct.pack("<Q", 60) + b'{"a":[1,-2.5e3,true,false,null,{"b":"\\ud83d\\ude00"}]}      ')
for p in sorted(glob.glob(os.path.join(FIX, "*.safetensors")))[:3]:  # real headers, data dropped
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n < 1 << 16:
            f.seek(0)
            put("safetensors", "hdr_" + os.path.basename(p), f.read(8 + n))

# ---- manifest_text -----------------------------------------------------------
MANIFESTS = {
    "generate": '''# a generation sweep
task: TASK_GENERATE
model { path: "m.safetensors" config: "cfg/" prediction_type: "v_prediction" clip_skip: 2
        lora: ["a.safetensors:0.5", "b.h5"] vae: "vae.safetensors" }
runtime { device: "cpu" threads: 2 precision: PRECISION_DEFAULT pipeline_stages: 1 }
generate {
  prompts: "a photo of a cat" prompts: "caf\\303\\251 \\"quoted\\" \\x41\\n" "adjacent"
  negative_prompt: 'blurry' steps: 20 cfg_scale: 7.5 sampler: "euler_a" seed: -1
  width: 512 height: 768 batch_count: 2 batch_size: 1 eta: 0.0 vae_tile_size: 0
  timestep_spacing: "trailing" karras: true output: "out.png" output_h5: "sweep.h5"
  sweep_cfg_scale: [1.5, 7, 1e1] sweep_sampler: ["euler", "dpm++2m"] sweep_steps: [4, 8]
  shard_index: 0 shard_count: 3 skip_existing: false lora_model_dir: "loras/"
}
''',
    "img2img": '''task: TASK_GENERATE
model { path: "m" }
generate { prompts: ["x"] init_image: "in.png" strength: 0.75 mask: "mask.png" outpaint: [8, 0, 16, 0] }
''',
    "dataset": '''task: TASK_DATASET_IMPORT
model { path: "m.safetensors" }
dataset_import { sources: ["photos/", "b.png"] output: "d.h5" resolution: 512 center_crop: true seed: 7
                 no_upscale: true prompt: "a dog" cache_latents: true latents_dtype: "f16" }
''',
    "convert": 'task: TASK_CONVERT model { path: "m.safetensors" } convert { output: "out/" dtype: "f16" }\n',
    "empty": "",
    "numbers": 'task: 2\ngenerate { seed: 0x7fffffffffffffff steps: -0 cfg_scale: -inf eta: nan width: 0x10 }\n',
}
with open(os.path.join(ROOT, "jobs", "examples", "dreambooth-dog.txtpb")) as f:
    MANIFESTS["dreambooth"] = f.read()
for k, v in MANIFESTS.items():
    put("manifest_text", k + ".txtpb", v)

# ---- tokenizer ---------------------------------------------------------------
with open(os.path.join(FIX, "tokenizer", "vocab.json"), encoding="utf-8") as f:
    vocab = json.load(f)
with open(os.path.join(FIX, "tokenizer", "merges.txt"), encoding="utf-8") as f:
    merges = f.read().split("\n")[1:]
N_MERGES = 88  # ids 512 .. 599: the merges kept are the first ones, so each result is in the cut vocab
cut = {k: v for k, v in vocab.items() if v < 512 + N_MERGES}
cut["<|startoftext|>"] = len(cut)
cut["<|endoftext|>"] = len(cut)
merges_cut = merges[:N_MERGES]
vj = json.dumps(cut, ensure_ascii=False)
mt = "#version: 0.2\n" + "\n".join(merges_cut) + "\n"
sd1_cfg = json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                      "unk_token": "<|endoftext|>", "model_max_length": 77, "do_lower_case": True,
                      "tokenizer_class": "CLIPTokenizer"}, indent=1)
with open(os.path.join(FIX, "tokenizer-variants", "added", "tokenizer_config.json"), encoding="utf-8") as f:
    added_cfg = json.load(f)
# the added tokens' ids renumbered into the cut vocab
dec = {}
for i, (k, v) in enumerate(sorted(added_cfg["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))):
    c = v["content"]
    dec[str(cut[c] if c in cut else len(cut) + i)] = v
added_cfg["added_tokens_decoder"] = dec
tj = {"version": "1.0", "added_tokens": [
    {"id": cut["<|startoftext|>"], "content": "<|startoftext|>", "single_word": False, "lstrip": False,
     "rstrip": False, "normalized": True, "special": True},
    {"id": cut["<|endoftext|>"], "content": "<|endoftext|>", "single_word": False, "lstrip": False,
     "rstrip": False, "normalized": False, "special": True}],
      "model": {"type": "BPE", "dropout": None, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "",
                "end_of_word_suffix": "</w>", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": cut, "merges": [m.split(" ") for m in merges_cut]}}
PROMPTS = {
    "ascii": "a photo of an astronaut riding a horse on mars, 4k, trending",
    "unicode": "Caf\u00e9 \u2615 \uff21\uff22 \ufb01 \u03a3\u03c3\u03c2 \u1e9e &amp; &#x41; \u00e9\u0301 \U0001F600 <|startoftext|>x!",
    "html": "&lt;b&gt; &nbsp;&copy &#128512; &#xD800; \u201cquoted\u201d \u2018s\u2019 it's we'll",
    "long": " ".join(["word%d" % i for i in range(100)]),
}
for k, v in PROMPTS.items():
    put("tokenizer", "prompt_" + k, v)
put("tokenizer", "files_vocab_merges", sections(prompt="the interesting thing", vocab_DOT_json=vj, merges_DOT_txt=mt))
put("tokenizer", "files_sd1", sections(prompt="<|startoftext|> the one", vocab_DOT_json=vj, merges_DOT_txt=mt,
                                       tokenizer_config_DOT_json=sd1_cfg))
put("tokenizer", "files_sd2", sections(prompt="hello! the tin", vocab_DOT_json=vj, merges_DOT_txt=mt,
                                       special_tokens_map_DOT_json='{"pad_token": "!", "bos_token": "<|startoftext|>"}',
                                       tokenizer_config_DOT_json='{"pad_token": "!", "model_max_length": 77}'))
put("tokenizer", "files_added", sections(prompt="a <sks> zz toy in the", vocab_DOT_json=vj, merges_DOT_txt=mt,
                                         tokenizer_config_DOT_json=json.dumps(added_cfg)))
put("tokenizer", "files_added_json", sections(prompt="<cat-toy> and <Dog>!", vocab_DOT_json=vj, merges_DOT_txt=mt,
                                              added_tokens_DOT_json='{"<cat-toy>": 600, "<Dog>": 601, "!": 0}'))
put("tokenizer", "files_tokenizer_json", sections(prompt="the thin <|endoftext|> in",
                                                  tokenizer_DOT_json=json.dumps(tj, ensure_ascii=False),
                                                  tokenizer_config_DOT_json=sd1_cfg))

# ---- json_config -------------------------------------------------------------
names = ["unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"]
texts = {}
for n in names:
    with open(os.path.join(FIX, "tiny-sd1", n), encoding="utf-8") as f:
        texts[n] = f.read()
for n in names:
    put("json_config", n.split("/")[0] + "_even", "@@@ %s\n%s" % (n, texts[n]))
    t = "@@@ %s\n%s" % (n, texts[n])
    t += " " * ((1 - len(t.encode())) % 64)  # 64k+1 bytes: the single file with this folder as its config_dir
    put("json_config", n.split("/")[0] + "_single", t)
put("json_config", "all", "\n".join("@@@ %s\n%s" % (n, texts[n]) for n in names))
for n in ["tiny-sd2", "db-sched"]:
    parts = []
    for c in names:
        p = os.path.join(FIX, n, c)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                parts.append("@@@ %s\n%s" % (c, f.read()))
    put("json_config", n, "\n".join(parts))
for p in sorted(os.listdir(os.path.join(FIX, "sched"))):
    with open(os.path.join(FIX, "sched", p), encoding="utf-8") as f:
        put("json_config", "sched_" + p, "@@@ scheduler/scheduler_config.json\n" + f.read())
put("json_config", "no_scheduler", "@@@ -scheduler/scheduler_config.json\n")
