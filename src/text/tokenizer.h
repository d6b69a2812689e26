// tokenizer.h: the CLIP BPE tokenizer (prompt text -> token ids for the CLIP
// text encoder), matching the reference tokenizers id for id.
//
// Two reference behaviours exist and SD checkpoints were trained with both, so
// the text cleanup is a mode (the BPE itself is identical):
//
//   CLIP_TOK_HF        transformers' CLIPTokenizer (tokenizers backend, the
//                      one a diffusers tokenizer/ folder loads): NFC, runs of
//                      whitespace -> " ", lowercase; the added tokens (BOS,
//                      EOS, SD 2.x's "!", ...) written in the prompt become
//                      their ids.
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

// Added tokens (transformers' AddedToken: the special tokens and any others
// a folder names) are matched in the prompt before the BPE, on the raw text
// or on the normalized text (their "normalized" flag), with their lstrip /
// rstrip / single_word flags; transformers 5 registers them from a folder's
// files in an order that decides those flags (see clip_tok_load_dir). So a
// prompt "hello!" gives "!" its own id 0 with SD 2.x's tokenizer (pad "!"),
// and "<|STARTOFTEXT|>" is BOS with SD's folders but text with a bare one.

// The merges shipped in data/bpe_simple_vocab_16e6.txt.gz (SDC_DATA_DIR),
// with the special tokens of SD 1.x's tokenizer/ folder (pad <|endoftext|>)
// or of SD 2.x's (pad "!", id 0): what diffusers uses for an SD 1.x / 2.x
// single file (from_single_file takes the original repository's tokenizer).
int clip_tok_load_default(ClipTokenizer **out, SdcError *err);
int clip_tok_load_default_sd2(ClipTokenizer **out, SdcError *err);
// An openai/open_clip style merges file (gzip), e.g.
// bpe_simple_vocab_16e6.txt.gz, with CLIPTokenizer's default special tokens.
int clip_tok_load_gz(ClipTokenizer **out, const char *path, SdcError *err);
// A diffusers / transformers tokenizer folder, as transformers 5's
// CLIPTokenizer.from_pretrained reads it: tokenizer.json if there is one
// (what transformers 5 saves), else vocab.json + merges.txt; the added and
// special tokens from tokenizer_config.json (its added_tokens_decoder, or else
// added_tokens.json and tokenizer.json's added_tokens, with the special tokens
// of special_tokens_map.json over tokenizer_config.json's), registered in
// transformers' order: tokens with ids, then bos, eos, unk, sep, pad, cls,
// mask, the last registration of a content setting its flags.
int clip_tok_load_dir(ClipTokenizer **out, const char *dir, SdcError *err);

// Writes a tokenizer folder of the shipped vocab into dir (which must exist):
// vocab.json + merges.txt, and for SD1 / SD2 the tokenizer_config.json and
// special_tokens_map.json of SD 1.x's / 2.x's tokenizer/ folder (pad
// "<|endoftext|>" / "!", model_max_length 77), which transformers loads to
// the tokenizer clip_tok_load_default / _sd2 is.
typedef enum { CLIP_TOK_FOLDER_BARE = 0, CLIP_TOK_FOLDER_SD1 = 1, CLIP_TOK_FOLDER_SD2 = 2 } ClipTokFolder;
int clip_tok_write_hf(const char *dir, ClipTokFolder kind, SdcError *err);
void clip_tok_free(ClipTokenizer *t);

// Mode of the text cleanup; every loader starts in CLIP_TOK_HF.
void clip_tok_set_mode(ClipTokenizer *t, ClipTokMode mode);
ClipTokMode clip_tok_mode(const ClipTokenizer *t);
int32_t clip_tok_bos(const ClipTokenizer *t);
int32_t clip_tok_eos(const ClipTokenizer *t);
// The pad token's id: the folder's pad_token (CLIP's EOS by default; 0, "!",
// for SD 2.x).
int32_t clip_tok_pad(const ClipTokenizer *t);

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
