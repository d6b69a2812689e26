// test_tokenizer.c: the C CLIP tokenizer against the reference tokenizers.
// tests/fixtures/tokenizer_cases.tsv (tools/make_tokenizer_fixture.py) holds,
// per prompt, the 77 ids of transformers' CLIPTokenizer ("hf"), of
// open_clip.tokenize ("open_clip") and of CLIPTokenizer on the cut-down
// diffusers folder tests/fixtures/tokenizer/ ("hf_small"); every prompt must
// match exactly. Also: truncation count, NULL / empty input, bad files, speed.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "text/tokenizer.h"

#define CASES_PATH "tests/fixtures/tokenizer_cases.tsv"
#define SMALL_DIR "tests/fixtures/tokenizer"
#define MAX_LINE (1 << 16)

// Undoes the fixture's escaping (\\ \t \n \r \xHH) in place.
static void unescape(char *s) {
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        p++;
        if (*p == 't') *o++ = '\t';
        else if (*p == 'n') *o++ = '\n';
        else if (*p == 'r') *o++ = '\r';
        else if (*p == 'x') {
            unsigned v;
            sscanf(p + 1, "%2x", &v);
            *o++ = (char)v;
            p += 2;
        } else *o++ = *p;
    }
    *o = 0;
}

static void print_ids(const char *what, const int32_t *ids, int n) {
    printf("      %s:", what);
    for (int i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

typedef struct RefStats {
    const char *name;
    int total, match;
} RefStats;

int main(void) {
    TestCtx tc = {0};
    SdcError err = {0};
    ClipTokenizer *hf = NULL, *oc = NULL, *small = NULL;
    int rc = clip_tok_load_default(&hf, &err);
    if (rc) printf("  load_default: %s\n", err.msg);
    check_true(&tc, rc == 0, "load the shipped vocab (data/bpe_simple_vocab_16e6.txt.gz)");
    rc = clip_tok_load_default(&oc, &err);
    if (!rc) clip_tok_set_mode(oc, CLIP_TOK_OPEN_CLIP);
    rc = clip_tok_load_dir(&small, SMALL_DIR, &err);
    if (rc) printf("  load_dir: %s\n", err.msg);
    check_true(&tc, rc == 0, "load a diffusers tokenizer folder (%s: vocab.json + merges.txt)", SMALL_DIR);
    if (!hf || !oc || !small) return test_summary(&tc);
    check_true(&tc, clip_tok_bos(hf) == CLIP_TOK_BOS && clip_tok_eos(hf) == CLIP_TOK_EOS &&
                        clip_tok_bos(small) == CLIP_TOK_BOS && clip_tok_eos(small) == CLIP_TOK_EOS,
               "BOS/EOS ids are 49406/49407 in both vocabs");

    // ---- the reference cases ------------------------------------------------
    FILE *f = fopen(CASES_PATH, "rb");
    check_true(&tc, f != NULL, "open %s (run from the repo root)", CASES_PATH);
    if (!f) return test_summary(&tc);
    RefStats st[3] = {{"hf", 0, 0}, {"open_clip", 0, 0}, {"hf_small", 0, 0}};
    char *line = malloc(MAX_LINE);
    int bad_rows = 0, trunc_ok = 1, n_ok = 1, truncated_seen = 0;
    while (fgets(line, MAX_LINE, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        line[strcspn(line, "\n")] = 0;
        char *field[4] = {0};
        char *p = line;
        for (int k = 0; k < 4 && p; k++) { // split on tabs; empty fields kept
            field[k] = p;
            p = strchr(p, '\t');
            if (p) *p++ = 0;
        }
        char *ref = field[0], *prompt = field[1], *ntok = field[2], *idstr = field[3];
        if (!ref || !ntok || !idstr) {
            bad_rows++;
            continue;
        }
        unescape(prompt);
        int32_t expect[CLIP_TOK_MAX_LEN], got[CLIP_TOK_MAX_LEN];
        p = idstr;
        for (int k = 0; k < CLIP_TOK_MAX_LEN; k++) expect[k] = (int32_t)strtol(p, &p, 10);
        int n_expect = atoi(ntok);
        RefStats *s = NULL;
        const ClipTokenizer *t = NULL;
        int32_t pad = CLIP_TOK_EOS;
        if (!strcmp(ref, "hf")) s = &st[0], t = hf;
        else if (!strcmp(ref, "open_clip")) s = &st[1], t = oc, pad = 0;
        else if (!strcmp(ref, "hf_small")) s = &st[2], t = small;
        if (!s) {
            bad_rows++;
            continue;
        }
        s->total++;
        int n_trunc = -1, n_raw = -1;
        int32_t raw[8];
        rc = clip_tok_encode(t, prompt, got, CLIP_TOK_MAX_LEN, pad, &n_trunc, &err);
        int rc2 = clip_tok_tokenize(t, prompt, raw, 8, &n_raw, &err);
        int same = rc == 0 && memcmp(got, expect, sizeof got) == 0;
        if (same) s->match++;
        else {
            printf("  MISMATCH [%s] \"%s\"%s%s\n", ref, prompt, rc ? ": " : "", rc ? err.msg : "");
            print_ids("expected", expect, CLIP_TOK_MAX_LEN);
            print_ids("got     ", got, CLIP_TOK_MAX_LEN);
        }
        int want_trunc = n_expect > CLIP_TOK_MAX_LEN - 2 ? n_expect - (CLIP_TOK_MAX_LEN - 2) : 0;
        if (n_trunc != want_trunc) {
            trunc_ok = 0;
            printf("  [%s] \"%.60s\": n_truncated %d, expected %d\n", ref, prompt, n_trunc, want_trunc);
        }
        truncated_seen += want_trunc > 0;
        if (rc2 || n_raw != n_expect) {
            n_ok = 0;
            printf("  [%s] \"%.60s\": clip_tok_tokenize count %d, expected %d\n", ref, prompt, n_raw, n_expect);
        }
    }
    fclose(f);
    free(line);
    check_true(&tc, bad_rows == 0, "%s: %d malformed rows", CASES_PATH, bad_rows);
    for (int i = 0; i < 3; i++) {
        printf("tokenizer: %d/%d prompts match exactly (%s)\n", st[i].match, st[i].total, st[i].name);
        check_true(&tc, st[i].total >= (i < 2 ? 60 : 10) && st[i].match == st[i].total,
                   "%s: every prompt matches the reference ids", st[i].name);
    }
    check_true(&tc, trunc_ok && truncated_seen >= 3, "n_truncated = tokens beyond 75 (%d truncated prompts)",
               truncated_seen);
    check_true(&tc, n_ok, "clip_tok_tokenize reports the full token count past its cap");

    // ---- edge cases ----------------------------------------------------------
    int32_t ids[CLIP_TOK_MAX_LEN];
    int n_trunc = -1;
    rc = clip_tok_encode(hf, "", ids, CLIP_TOK_MAX_LEN, 0, &n_trunc, &err);
    check_true(&tc, rc == 0 && ids[0] == CLIP_TOK_BOS && ids[1] == CLIP_TOK_EOS && ids[2] == 0 && ids[76] == 0 &&
                        n_trunc == 0,
               "empty prompt -> BOS EOS then the caller's pad id");
    err.msg[0] = 0;
    rc = clip_tok_encode(hf, NULL, ids, CLIP_TOK_MAX_LEN, 0, NULL, &err);
    check_true(&tc, rc == SDC_ERR_ARG && strstr(err.msg, "NULL prompt"), "NULL prompt -> SDC_ERR_ARG (%s)", err.msg);
    rc = clip_tok_encode(hf, "a cat", ids, 1, 0, NULL, &err);
    check_true(&tc, rc == SDC_ERR_ARG, "max_len 1 -> SDC_ERR_ARG (%s)", err.msg);
    int32_t tiny[4];
    rc = clip_tok_encode(hf, "a photo of a cat on a mat", tiny, 4, 0, &n_trunc, &err);
    check_true(&tc, rc == 0 && tiny[0] == CLIP_TOK_BOS && tiny[1] == 320 && tiny[2] == 1125 &&
                        tiny[3] == CLIP_TOK_EOS && n_trunc == 6,
               "max_len 4 keeps BOS, 2 tokens, EOS and reports 6 dropped");
    const char junk[] = {'a', (char)0xff, (char)0xfe, (char)0xc3, 0};
    rc = clip_tok_encode(oc, junk, ids, CLIP_TOK_MAX_LEN, 0, NULL, &err);
    check_true(&tc, rc == 0 && ids[0] == CLIP_TOK_BOS, "invalid UTF-8 is replaced by U+FFFD, not an error");

    ClipTokenizer *none = NULL;
    rc = clip_tok_load_dir(&none, "tests/fixtures/no_such_tokenizer", &err);
    check_true(&tc, rc == SDC_ERR_IO && none == NULL && strstr(err.msg, "vocab.json"),
               "missing folder -> SDC_ERR_IO naming vocab.json (%s)", err.msg);
    rc = clip_tok_load_gz(&none, CASES_PATH, &err); // not a merges file
    check_true(&tc, rc != 0 && none == NULL, "a file that is not the merges list is rejected (%s)", err.msg);

    // ---- speed: a prompt of ~75 tokens -----------------------------------------
    const char *prompt75 = // 82 tokens: the encoder tokenizes it all, then keeps 75
        "a highly detailed matte painting of a castle on a hill at sunset, dramatic lighting, volumetric "
        "clouds, trending on artstation, by greg rutkowski and alphonse mucha, 8k, ultra realistic, cinematic "
        "composition, golden hour, intricate details, sharp focus, octane render, unreal engine 5, "
        "masterpiece, best quality, caf\u00e9, \u65e5\u672c, (sharp:1.2)";
    int n75 = 0;
    clip_tok_tokenize(hf, prompt75, ids, 0, &n75, &err);
    for (int m = 0; m < 2; m++) {
        ClipTokenizer *t = m ? oc : hf;
        int reps = 300;
        double t0 = now_s();
        for (int i = 0; i < reps; i++) clip_tok_encode(t, prompt75, ids, CLIP_TOK_MAX_LEN, 0, NULL, &err);
        double us = (now_s() - t0) / reps * 1e6;
        printf("  encode %d-token prompt (%s): %.1f us\n", n75, m ? "open_clip" : "hf", us);
        check_true(&tc, us < 1000.0, "tokenizing a 77-token prompt takes under 1 ms (%.1f us)", us);
    }

    clip_tok_free(hf);
    clip_tok_free(oc);
    clip_tok_free(small);
    return test_summary(&tc);
}
