// tokenizer.h: the CLIP BPE tokenizer (prompt text -> token ids for the CLIP
// text encoder), matching the reference tokenizers id for id.
//
// Two reference behaviours exist and SD checkpoints were trained with both, so
// the text cleanup is a mode (the BPE itself is identical):
//
//   CLIP_TOK_HF        transformers' CLIPTokenizer (tokenizers backend, the
//                      one a diffusers tokenizer/ folder loads): NFC, runs of
//                      whitespace -> " ", lowercase; "<|startoftext|>" and
//                      "<|endoftext|>" written in the prompt become BOS / EOS.
//                      SD 1.x (diffusers and the CompVis code) uses this.
//   CLIP_TOK_OPEN_CLIP open_clip.tokenize (openai CLIP's simple tokenizer), used
//                      by the original SD 2.x code: ftfy.fix_text, html.unescape
//                      twice, whitespace collapsed, str.lower(); the special
//                      strings are "<start_of_text>" / "<end_of_text>".
//                      Not reproduced: ftfy's heuristic mojibake repair
//                      (fix_encoding), which only changes text that already
//                      looks like mis-decoded UTF-8.
//
// The two differ only on unusual text: HTML entities (&amp;), curly quotes,
// fullwidth forms, ligatures, control characters, Greek final sigma and the
// literal special tokens (see tests/fixtures/tokenizer_cases.tsv).
//
// Input is UTF-8; invalid bytes are replaced by U+FFFD exactly as Python's
// bytes.decode("utf-8", errors="replace") does, so they never fail.
// This is not a general-purpose BPE library: it knows CLIP's regex and vocab.
#ifndef SDC_TOKENIZER_H
#define SDC_TOKENIZER_H

#include <stdint.h>

#include "core/error.h"

#define CLIP_TOK_MAX_LEN 77     // CLIP's context length
#define CLIP_TOK_VOCAB 49408    // 256 bytes + 256 bytes</w> + 48894 merges + 2
#define CLIP_TOK_BOS 49406      // <|startoftext|> in the standard vocab
#define CLIP_TOK_EOS 49407      // <|endoftext|>; SD 1.x pads with it, SD 2.x with 0

typedef enum ClipTokMode {
    CLIP_TOK_HF = 0,
    CLIP_TOK_OPEN_CLIP = 1,
} ClipTokMode;

typedef struct ClipTokenizer ClipTokenizer;

// The merges shipped in data/bpe_simple_vocab_16e6.txt.gz (SDC_DATA_DIR).
int clip_tok_load_default(ClipTokenizer **out, SdcError *err);
// An openai/open_clip style merges file (gzip), e.g. bpe_simple_vocab_16e6.txt.gz.
int clip_tok_load_gz(ClipTokenizer **out, const char *path, SdcError *err);
// A diffusers / transformers tokenizer folder: dir/vocab.json + dir/merges.txt.
int clip_tok_load_dir(ClipTokenizer **out, const char *dir, SdcError *err);
void clip_tok_free(ClipTokenizer *t);

// Mode of the text cleanup; every loader starts in CLIP_TOK_HF.
void clip_tok_set_mode(ClipTokenizer *t, ClipTokMode mode);
ClipTokMode clip_tok_mode(const ClipTokenizer *t);
int32_t clip_tok_bos(const ClipTokenizer *t);
int32_t clip_tok_eos(const ClipTokenizer *t);

// The model input: ids[0] = BOS, the prompt's tokens, EOS, then pad_id up to
// max_len (>= 2). A prompt longer than max_len - 2 tokens keeps its first
// max_len - 2 tokens and still ends in EOS; *n_truncated (may be NULL) gets the
// number of dropped tokens so the caller can warn "prompt truncated to 77
// tokens". text must not be NULL ("" gives BOS EOS pad...).
int clip_tok_encode(const ClipTokenizer *t, const char *text, int32_t *ids, int max_len,
                    int32_t pad_id, int *n_truncated, SdcError *err);

// The raw BPE ids without BOS / EOS / padding: writes min(*n, cap) ids and sets
// *n to the full count (which may exceed cap; call again with a bigger buffer).
int clip_tok_tokenize(const ClipTokenizer *t, const char *text, int32_t *ids, int cap, int *n,
                      SdcError *err);

#endif
