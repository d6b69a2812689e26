// fuzz_tokenizer.c: libFuzzer target for the CLIP tokenizer (src/text/
// tokenizer.c), files and prompts:
//  - the input's sections (fuzz_util.h) vocab.json, merges.txt,
//    tokenizer.json, tokenizer_config.json, special_tokens_map.json,
//    added_tokens.json are written into a folder (the others removed) and
//    loaded by clip_tok_load_dir as a diffusers tokenizer/ folder; when it
//    loads, the prompt is tokenized by it in both text modes;
//  - the prompt (section "prompt", or the whole input when it has no
//    sections) is also tokenized by the shipped SD 1.x vocab (49408 tokens).
// Checks: ids inside the vocab, BOS first, EOS after the prompt, pad after,
// the truncation count consistent with clip_tok_tokenize's count.
// Seeds: tests/fuzz/seeds/tokenizer. Run with tools/fuzz.sh SECONDS 1 tokenizer.
#include "fuzz_util.h"

#include "text/tokenizer.h"

static const char *const FILES[] = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                                    "special_tokens_map.json", "added_tokens.json"};
#define N_FILES (int)(sizeof FILES / sizeof FILES[0])

static void encode_checked(const ClipTokenizer *t, const char *prompt, int32_t vocab_hi) {
    SdcError err = {0};
    int32_t ids[CLIP_TOK_MAX_LEN];
    int cut = -1, n = -1;
    int32_t raw[8];
    if (clip_tok_tokenize(t, prompt, raw, 8, &n, &err) || n < 0) __builtin_trap();
    for (int i = 0; i < n && i < 8; i++)
        if (raw[i] < 0 || raw[i] > vocab_hi) __builtin_trap();
    int32_t pad = clip_tok_pad(t);
    if (clip_tok_encode(t, prompt, ids, CLIP_TOK_MAX_LEN, pad, &cut, &err)) __builtin_trap();
    int kept = n < CLIP_TOK_MAX_LEN - 2 ? n : CLIP_TOK_MAX_LEN - 2;
    if (ids[0] != clip_tok_bos(t) || ids[kept + 1] != clip_tok_eos(t) || cut != n - kept) __builtin_trap();
    for (int i = 1; i <= kept; i++)
        if (ids[i] < 0 || ids[i] > vocab_hi) __builtin_trap();
    for (int i = kept + 2; i < CLIP_TOK_MAX_LEN; i++)
        if (ids[i] != pad) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ClipTokenizer *shipped;
    SdcError err = {0};
    if (!shipped && clip_tok_load_default(&shipped, &err)) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        abort();
    }
    FuzzSection s[FUZZ_MAX_SECTIONS];
    int ns = fuzz_sections(data, size, s);
    const FuzzSection *ps = fuzz_section(s, ns, "prompt");
    int sectioned = ns > 1 || (ns == 1 && s[0].name[0]);
    const uint8_t *pd = ps ? ps->data : sectioned ? (const uint8_t *)"" : data;
    size_t pn = ps ? ps->size : sectioned ? 0 : size;
    char *prompt = malloc(pn + 1);
    if (!prompt) return 0;
    memcpy(prompt, pd, pn);
    prompt[pn] = 0; // a NUL inside ends the prompt, as for a C string from argv

    for (int m = 0; m < 2; m++) {
        clip_tok_set_mode(shipped, m ? CLIP_TOK_OPEN_CLIP : CLIP_TOK_HF);
        encode_checked(shipped, prompt, CLIP_TOK_VOCAB - 1);
    }
    clip_tok_set_mode(shipped, CLIP_TOK_HF);

    if (sectioned) {
        char dir[600], p[700];
        fuzz_path(dir, sizeof dir, "tok");
        mkdir(dir, 0700);
        for (int i = 0; i < N_FILES; i++) {
            const FuzzSection *f = fuzz_section(s, ns, FILES[i]);
            snprintf(p, sizeof p, "%s/%s", dir, FILES[i]);
            if (f) fuzz_write(p, f->data, f->size);
            else unlink(p);
        }
        ClipTokenizer *t = NULL;
        int rc = clip_tok_load_dir(&t, dir, &err);
        fuzz_note("clip_tok_load_dir", rc, err.msg);
        if (rc) {
            if (t || !err.msg[0]) __builtin_trap();
        } else {
            for (int m = 0; m < 2; m++) {
                clip_tok_set_mode(t, m ? CLIP_TOK_OPEN_CLIP : CLIP_TOK_HF);
                encode_checked(t, prompt, INT32_MAX);
            }
            clip_tok_free(t);
        }
    }
    free(prompt);
    return 0;
}
