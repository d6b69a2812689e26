#!/usr/bin/env python3
"""make_synth_tokenizer.py: the pruned CLIP tokenizer of the synth model
(issue 16 part 3, docs/model.md), and the reference ids tests/test_synth_tokenizer.c
checks sdc's tokenizer against.

The full CLIP vocab (data/bpe_simple_vocab_16e6.txt.gz, 49408 ids) would make
the text encoder's token embedding alone 49408 x hidden parameters (6.3 MB in
fp16 at hidden 64), more than the whole model's budget. The synth captions use
26 words, so the folder written here keeps:

  - the 512 byte symbols (256 bytes, 256 bytes + "</w>"), in CLIP's order: every
    text still tokenizes (an unknown word falls back to shorter pieces, down to
    single bytes) and never needs an unknown token;
  - the merges that CLIP's BPE applies to the caption words and to EXTRA_WORDS
    (every merge on the way to each final token, so the BPE reaches the same
    tokens), in CLIP's rank order;
  - <|startoftext|>, <|endoftext|> last.

Ids are compact: bytes 0..511, the kept merges' tokens 512.., then BOS, EOS.
Since the kept merges are a subset in the same order, and every merge that
the full BPE applies to a kept word is kept, the pruned BPE applies the same
merges to that word (at each step the lowest-ranked pair present is the same):
the tokens of every caption are CLIP's tokens, renumbered. Other words get
other (longer) splits than CLIP's; sdc and transformers agree on them because
they run the same BPE on the same files (the test checks it).

Outputs (run from the repository root):
  data/models/sdc-synth-configs/tokenizer/  vocab.json, merges.txt,
      tokenizer_config.json, special_tokens_map.json (SD 1.x's: pad
      <|endoftext|>, model_max_length 77)
  tests/fixtures/synth_tokenizer_cases.tsv  ref <TAB> prompt <TAB> n_tokens <TAB>
      77 ids, as tests/fixtures/tokenizer_cases.tsv (ref "hf_synth"), plus one
      line "#digest N HASH": FNV-1a 64 over the raw ids (no BOS / EOS) of all N
      captions synth_caption can write, in the order of test_synth_tokenizer.c
      (shape, colour, background, size, position, texture), each caption's ids
      as decimal "id," followed by ";".

Needs transformers. Never run at run time.
"""
import gzip
import json
import os
import shutil

from transformers import CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GZ = os.path.join(ROOT, "data", "bpe_simple_vocab_16e6.txt.gz")
OUT_DIR = os.path.join(ROOT, "data", "models", "sdc-synth-configs", "tokenizer")
OUT_TSV = os.path.join(ROOT, "tests", "fixtures", "synth_tokenizer_cases.tsv")
CTX = 77

# data/synth.c: the name tables and the caption template
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white", "black"]
SIZES = ["small", "large"]
POSITIONS = ["center", "left", "right", "top", "bottom"]
TEXTURES = ["plain", "striped", "dotted", "checkered"]
WHERE = ["in the center", "on the left", "on the right", "at the top", "at the bottom"]
# Words a user is likely to put around a caption ("a photo of ...", a
# DreamBooth identifier, American spelling). Digits and punctuation are single
# byte symbols already.
EXTRA_WORDS = ["photo", "picture", "image", "drawing", "of", "with", "and", "sks", "shape", "color", "colour",
               "centre", "middle", "big", "tiny"]


def caption(shape, colour, bg, size, pos, tex):
    first = "plain" if tex == 0 else COLOURS[bg]
    second = COLOURS[bg] if tex == 0 else TEXTURES[tex]
    art = "an" if first[0] == "o" else "a"
    return "a %s %s %s on %s %s %s background, %s" % (SIZES[size], COLOURS[colour], SHAPES[shape], art, first,
                                                      second, WHERE[pos])


def all_captions():
    for s in range(len(SHAPES)):
        for c in range(len(COLOURS)):
            for b in range(len(COLOURS)):
                if b == c:
                    continue
                for z in range(len(SIZES)):
                    for p in range(len(POSITIONS)):
                        for t in range(len(TEXTURES)):
                            yield caption(s, c, b, z, p, t)


def bytes_to_unicode():  # CLIP's / GPT-2's byte -> symbol table
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def bpe_trace(word, ranks):
    """CLIP's BPE of one pre-token (bytes already mapped to symbols); returns
    the set of merges (pairs) it applies."""
    w = tuple(word[:-1]) + (word[-1] + "</w>",)
    used = set()
    while len(w) > 1:
        pairs = {(w[i], w[i + 1]) for i in range(len(w) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.add(best)
        out, i = [], 0
        while i < len(w):
            if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                out.append(w[i] + w[i + 1])
                i += 2
            else:
                out.append(w[i])
                i += 1
        w = tuple(out)
    return used


def write_folder(path, vocab, merges):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    added = lambda c: {"content": c, "lstrip": False, "normalized": True, "rstrip": False,  # noqa: E731
                       "single_word": False}
    tc = {"add_prefix_space": False, "bos_token": {"__type": "AddedToken", **added("<|startoftext|>")},
          "do_lower_case": True, "eos_token": {"__type": "AddedToken", **added("<|endoftext|>")},
          "errors": "replace", "model_max_length": CTX, "pad_token": "<|endoftext|>",
          "tokenizer_class": "CLIPTokenizer", "unk_token": {"__type": "AddedToken", **added("<|endoftext|>")}}
    stm = {"bos_token": added("<|startoftext|>"), "eos_token": added("<|endoftext|>"),
           "pad_token": "<|endoftext|>", "unk_token": added("<|endoftext|>")}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
        json.dump(stm, f, indent=2)


# prompts outside the kept words: byte fallback, case, punctuation, specials
UNKNOWN = [
    "a photo of a cat", "an astronaut riding a horse on mars", "A LARGE RED STAR on a Blue Striped Background",
    "a small red star on a blue striped background, on the left, 4k, highly detailed!",
    "sks circle", "a zebra", "qqq xyz 123 4.5 1/2", "red-blue, green_yellow; (circle:1.2) [square]",
    "circles squares stars triangles crosses diamonds", "reddish bluish greenery", "the centre of the middle",
    "caf\u00e9 \u65e5\u672c \U0001f431", "<|endoftext|> a red star", "it's a dog's life", "", "   ",
    "word " * 80,
]


def main():
    lines = gzip.open(GZ).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    ranks = {m: i for i, m in enumerate(merges)}
    b2u = bytes_to_unicode()
    base = list(b2u.values())
    full_vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + ["<|startoftext|>",
                                                                                    "<|endoftext|>"]
    assert len(full_vocab) == 49408

    words = set(EXTRA_WORDS)
    for c in all_captions():
        words.update(c.replace(",", " ").split())
    used = set()
    for w in sorted(words):
        used |= bpe_trace("".join(b2u[b] for b in w.encode("utf-8")), ranks)
    kept = sorted(used, key=ranks.get)
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in kept] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab)
    write_folder(OUT_DIR, vocab, kept)
    print("%s: %d words, %d merges kept, vocab %d" % (OUT_DIR, len(words), len(kept), len(vocab)))

    # the full vocab, as a folder transformers reads
    import tempfile
    tmp = tempfile.mkdtemp()
    try:
        write_folder(tmp, full_vocab, merges)
        full = CLIPTokenizer.from_pretrained(tmp)
    finally:
        shutil.rmtree(tmp)
    tok = CLIPTokenizer.from_pretrained(OUT_DIR)
    assert tok.bos_token_id == len(vocab) - 2 and tok.eos_token_id == len(vocab) - 1 == tok.pad_token_id
    remap = {full_vocab.index(v): i for i, v in enumerate(vocab)}

    # every caption: the pruned tokenizer gives CLIP's tokens, renumbered
    h = 0xcbf29ce484222325
    n = 0
    for c in all_captions():
        ids = tok(c, add_special_tokens=False)["input_ids"]
        ref = full(c, add_special_tokens=False)["input_ids"]
        assert ids == [remap[i] for i in ref], (c, ids, ref)
        for ch in ("".join("%d," % i for i in ids) + ";").encode():
            h = ((h ^ ch) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
        n += 1
    for w in sorted(words):
        ref = full(w, add_special_tokens=False)["input_ids"]
        assert tok(w, add_special_tokens=False)["input_ids"] == [remap[i] for i in ref], w
    print("%d captions: CLIP's tokens (digest %016x)" % (n, h))

    def row(text):
        k = len(tok(text)["input_ids"]) - 2
        ids = tok(text, padding="max_length", max_length=CTX, truncation=True)["input_ids"]
        esc = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        return "hf_synth\t%s\t%d\t%s\n" % (esc, k, " ".join(map(str, ids)))

    caps = list(all_captions())
    with open(OUT_TSV, "w", encoding="utf-8") as f:
        f.write("# synth_tokenizer_cases.tsv: GENERATED by tools/make_synth_tokenizer.py -- do not edit.\n")
        f.write("# transformers %s; CLIPTokenizer on data/models/sdc-synth-configs/tokenizer/ (vocab %d).\n"
                % (__import__("transformers").__version__, len(vocab)))
        f.write("# columns: ref, prompt (escaped), n_tokens, 77 ids\n")
        f.write("#digest %d %016x\n" % (n, h))
        for w in sorted(words):
            f.write(row(w))
        for c in caps[::211]:  # a spread of whole captions
            f.write(row(c))
        for u in UNKNOWN:
            f.write(row(u))
    print("wrote", OUT_TSV)


if __name__ == "__main__":
    main()
