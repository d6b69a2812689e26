// test_synth_tokenizer.c: the pruned CLIP tokenizer of the synth model
// (data/models/sdc-synth-configs/tokenizer/, tools/make_synth_tokenizer.py)
// in sdc against transformers' CLIPTokenizer on the same folder.
// tests/fixtures/synth_tokenizer_cases.tsv holds, per prompt (every caption
// word alone, a spread of whole captions, prompts with words the vocab does
// not keep: byte fallback, case, punctuation, special tokens, truncation),
// the 77 ids transformers gives; and a digest of the raw ids of all 13440
// captions synth_caption can write, which sdc must reproduce.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/synth.h"
#include "testutil.h"
#include "text/tokenizer.h"

#define CASES_PATH "tests/fixtures/synth_tokenizer_cases.tsv"
#define TOK_DIR "data/models/sdc-synth-configs/tokenizer"
#define MAX_LINE 4096

static void unescape(char *s) { // the fixture's \\ \t \n
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p != '\\') *o++ = *p;
        else if (*++p == 't') *o++ = '\t';
        else if (*p == 'n') *o++ = '\n';
        else *o++ = *p;
    }
    *o = 0;
}

static uint64_t fnv(uint64_t h, const char *s) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

int main(void) {
    TestCtx tc = {0};
    SdcError err = {0};
    ClipTokenizer *t = NULL;
    int rc = clip_tok_load_dir(&t, TOK_DIR, &err);
    check_true(&tc, rc == 0, "load %s%s%s", TOK_DIR, rc ? ": " : "", rc ? err.msg : "");
    if (rc) return test_summary(&tc);
    check_true(&tc, clip_tok_bos(t) == 668 && clip_tok_eos(t) == 669 && clip_tok_pad(t) == 669,
               "BOS / EOS / pad are the last two ids of the 670 (%d %d %d)", clip_tok_bos(t), clip_tok_eos(t),
               clip_tok_pad(t));

    FILE *f = fopen(CASES_PATH, "rb");
    check_true(&tc, f != NULL, "open %s (run from the repo root)", CASES_PATH);
    if (!f) return test_summary(&tc);
    char line[MAX_LINE];
    int total = 0, match = 0, n_digest = -1, bad = 0;
    unsigned long long want_digest = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "#digest ", 8)) {
            if (sscanf(line + 8, "%d %llx", &n_digest, &want_digest) != 2) bad++;
            continue;
        }
        if (line[0] == '#' || line[0] == '\n') continue;
        line[strcspn(line, "\n")] = 0;
        char *ref = line, *prompt = strchr(ref, '\t');
        char *ntok = prompt ? strchr(prompt + 1, '\t') : NULL;
        char *idstr = ntok ? strchr(ntok + 1, '\t') : NULL;
        if (!idstr || strncmp(ref, "hf_synth\t", 9)) {
            bad++;
            continue;
        }
        *prompt++ = 0, *ntok++ = 0, *idstr++ = 0;
        unescape(prompt);
        int32_t expect[CLIP_TOK_MAX_LEN], got[CLIP_TOK_MAX_LEN];
        char *p = idstr;
        for (int k = 0; k < CLIP_TOK_MAX_LEN; k++) expect[k] = (int32_t)strtol(p, &p, 10);
        int n_trunc = -1, n_raw = -1;
        int32_t raw[1];
        total++;
        rc = clip_tok_encode(t, prompt, got, CLIP_TOK_MAX_LEN, clip_tok_pad(t), &n_trunc, &err);
        int rc2 = clip_tok_tokenize(t, prompt, raw, 0, &n_raw, &err);
        if (!rc && !rc2 && !memcmp(got, expect, sizeof got) && n_raw == atoi(ntok)) match++;
        else {
            printf("  MISMATCH \"%s\" (n %d, expected %s)\n   expected:", prompt, n_raw, ntok);
            for (int k = 0; k < 24; k++) printf(" %d", expect[k]);
            printf("\n   got     :");
            for (int k = 0; k < 24; k++) printf(" %d", got[k]);
            printf("\n");
        }
    }
    fclose(f);
    check_true(&tc, bad == 0, "%s: %d malformed rows", CASES_PATH, bad);
    printf("synth tokenizer: %d/%d prompts match transformers exactly\n", match, total);
    check_true(&tc, total >= 100 && match == total, "every prompt of %s matches transformers' ids", CASES_PATH);

    // all captions, in tools/make_synth_tokenizer.py's order
    uint64_t h = 0xcbf29ce484222325ull;
    int n = 0, fail = 0;
    char cap[SYNTH_CAPTION_MAX], num[16];
    int32_t ids[64];
    for (int s = 0; s < SYNTH_N_SHAPES; s++)
        for (int c = 0; c < SYNTH_N_COLOURS; c++)
            for (int b = 0; b < SYNTH_N_COLOURS; b++) {
                if (b == c) continue;
                for (int z = 0; z < SYNTH_N_SIZES; z++)
                    for (int p = 0; p < SYNTH_N_POSITIONS; p++)
                        for (int x = 0; x < SYNTH_N_TEXTURES; x++) {
                            SynthLabel l = {.shape = s, .colour = c, .size = z, .position = p, .bg = b, .texture = x};
                            synth_caption(&l, cap, sizeof cap);
                            int k = 0;
                            fail |= clip_tok_tokenize(t, cap, ids, 64, &k, &err) || k > 64;
                            for (int i = 0; i < k && i < 64; i++) {
                                snprintf(num, sizeof num, "%d,", ids[i]);
                                h = fnv(h, num);
                            }
                            h = fnv(h, ";");
                            n++;
                        }
            }
    printf("synth tokenizer: %d captions, digest %016llx (transformers: %d, %016llx)\n", n, (unsigned long long)h,
           n_digest, want_digest);
    check_true(&tc, !fail && n == n_digest && h == want_digest,
               "the ids of all %d synth captions equal transformers' (digest)", n);
    clip_tok_free(t);
    return test_summary(&tc);
}
