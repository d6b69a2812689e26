// test_tokenizer.c: the C CLIP tokenizer against the reference tokenizers.
// tests/fixtures/tokenizer_cases.tsv (tools/make_tokenizer_fixture.py) holds,
// per prompt, the 77 ids of transformers' CLIPTokenizer on a bare folder
// ("hf"), on SD 1.x's and SD 2.x's tokenizer folders ("hf_sd1", "hf_sd2": pad
// "!", a special token), of open_clip.tokenize ("open_clip"), and of
// CLIPTokenizer on cut-down folders in every layout transformers reads
// ("hf_small*": vocab.json + merges.txt, transformers 5's tokenizer.json,
// added_tokens_decoder, added tokens with lstrip / rstrip / single_word,
// added_tokens.json). Each reference is checked against the shipped
// tokenizers and against the folders sdc writes for exported models; every
// prompt must match exactly. Also: truncation count, NULL / empty input, bad
// files, speed.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

// The tokenizers checked against one reference of the fixture.
typedef struct RefTok {
    const char *ref;          // the fixture's reference name
    const char *what;         // how the C tokenizer was made
    ClipTokenizer *tok;
    int pad_from_tok;         // pad with clip_tok_pad (else 0, open_clip's)
    int total, match;
} RefTok;

// A folder sdc writes from the shipped vocab (the export of sdc convert).
static int written(TestCtx *tc, const char *root, const char *name, ClipTokFolder kind, ClipTokenizer **out) {
    char dir[512];
    SdcError err = {0};
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    int rc = mkdir(dir, 0755) ? sdc_err(&err, SDC_ERR_IO, "mkdir %s", dir) : clip_tok_write_hf(dir, kind, &err);
    if (!rc) rc = clip_tok_load_dir(out, dir, &err);
    check_true(tc, rc == 0, "write a %s tokenizer folder with clip_tok_write_hf and load it%s%s", name,
               rc ? ": " : "", rc ? err.msg : "");
    return rc;
}

static void rm_folder(const char *root, const char *name) {
    static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"};
    char p[600];
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s/%s", root, name, files[i]);
        remove(p);
    }
    snprintf(p, sizeof p, "%s/%s", root, name);
    rmdir(p);
}

int main(void) {
    TestCtx tc = {0};
    SdcError err = {0};
    ClipTokenizer *hf = NULL, *oc = NULL, *small = NULL, *sd2 = NULL, *bare_gz = NULL;
    int rc = clip_tok_load_default(&hf, &err);
    if (rc) printf("  load_default: %s\n", err.msg);
    check_true(&tc, rc == 0, "load the shipped vocab (data/bpe_simple_vocab_16e6.txt.gz)");
    rc = clip_tok_load_default_sd2(&sd2, &err);
    check_true(&tc, rc == 0 && clip_tok_pad(sd2) == 0 && clip_tok_pad(hf) == CLIP_TOK_EOS,
               "the shipped vocab with SD 2.x's special tokens pads with \"!\" (id 0), SD 1.x's with EOS");
    rc = clip_tok_load_default(&oc, &err);
    if (!rc) clip_tok_set_mode(oc, CLIP_TOK_OPEN_CLIP);
    rc = clip_tok_load_gz(&bare_gz, SDC_DATA_DIR "/bpe_simple_vocab_16e6.txt.gz", &err);
    rc = clip_tok_load_dir(&small, SMALL_DIR, &err);
    if (rc) printf("  load_dir: %s\n", err.msg);
    check_true(&tc, rc == 0, "load a diffusers tokenizer folder (%s: vocab.json + merges.txt)", SMALL_DIR);
    if (!hf || !oc || !small || !sd2 || !bare_gz) return test_summary(&tc);
    check_true(&tc, clip_tok_bos(hf) == CLIP_TOK_BOS && clip_tok_eos(hf) == CLIP_TOK_EOS &&
                        clip_tok_bos(small) == CLIP_TOK_BOS && clip_tok_eos(small) == CLIP_TOK_EOS,
               "BOS/EOS ids are 49406/49407 in both vocabs");
    // the folders sdc exports (tokenizer files of the shipped vocab), as written
    char root[] = "/tmp/sdc_test_tok_XXXXXX";
    ClipTokenizer *w_bare = NULL, *w_sd1 = NULL, *w_sd2 = NULL;
    if (mkdtemp(root)) {
        written(&tc, root, "bare", CLIP_TOK_FOLDER_BARE, &w_bare);
        written(&tc, root, "sd1", CLIP_TOK_FOLDER_SD1, &w_sd1);
        written(&tc, root, "sd2", CLIP_TOK_FOLDER_SD2, &w_sd2);
        rm_folder(root, "bare"), rm_folder(root, "sd1"), rm_folder(root, "sd2");
        // a vocab.json of more entries than twice CLIP's vocab is refused (its table is sized to the
        // file, up to that cap)
        char big[600], p[700];
        snprintf(big, sizeof big, "%s/big", root);
        mkdir(big, 0755);
        snprintf(p, sizeof p, "%s/vocab.json", big);
        FILE *f = fopen(p, "w");
        if (f) {
            fputc('{', f);
            for (int i = 0; i <= 131072; i++) fprintf(f, "%s\"t%d\": %d", i ? ", " : "", i, i);
            fputs("}\n", f);
            fclose(f);
        }
        snprintf(p, sizeof p, "%s/merges.txt", big);
        if ((f = fopen(p, "w"))) fputs("#version: 0.2\n", f), fclose(f);
        ClipTokenizer *too_big = NULL;
        rc = clip_tok_load_dir(&too_big, big, &err);
        check_true(&tc, rc == SDC_ERR_FORMAT && !too_big && strstr(err.msg, "more than 131072 entries"),
                   "a vocab.json of 131073 entries is refused (%s)", rc ? err.msg : "loaded");
        rm_folder(root, "big");
        rmdir(root);
    }
    static const char *const VARIANTS[] = {"v5_sd1", "v5_sd2", "v43x_sd2", "added", "added_json"};
    ClipTokenizer *var[5] = {0};
    for (int i = 0; i < 5; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/fixtures/tokenizer-variants/%s", VARIANTS[i]);
        rc = clip_tok_load_dir(&var[i], dir, &err);
        check_true(&tc, rc == 0, "load %s%s%s", dir, rc ? ": " : "", rc ? err.msg : "");
    }
    RefTok refs[] = {
        {"hf", "clip_tok_load_gz (CLIPTokenizer's defaults)", bare_gz, 1, 0, 0},
        {"hf", "a bare folder written by sdc", w_bare, 1, 0, 0},
        {"hf_sd1", "clip_tok_load_default", hf, 1, 0, 0},
        {"hf_sd1", "an SD 1.x folder written by sdc", w_sd1, 1, 0, 0},
        {"hf_sd2", "clip_tok_load_default_sd2", sd2, 1, 0, 0},
        {"hf_sd2", "an SD 2.x folder written by sdc", w_sd2, 1, 0, 0},
        {"open_clip", "open_clip mode", oc, 0, 0, 0},
        {"hf_small", SMALL_DIR, small, 1, 0, 0},
        {"hf_small_v5_sd1", "tokenizer-variants/v5_sd1 (tokenizer.json)", var[0], 1, 0, 0},
        {"hf_small_v5_sd2", "tokenizer-variants/v5_sd2 (tokenizer.json)", var[1], 1, 0, 0},
        {"hf_small_v43x_sd2", "tokenizer-variants/v43x_sd2 (added_tokens_decoder)", var[2], 1, 0, 0},
        {"hf_small_added", "tokenizer-variants/added (lstrip, rstrip, single_word)", var[3], 1, 0, 0},
        {"hf_small_added_json", "tokenizer-variants/added_json (added_tokens.json)", var[4], 1, 0, 0},
    };
    const int n_refs = (int)(sizeof refs / sizeof refs[0]);

    // ---- the reference cases ------------------------------------------------
    FILE *f = fopen(CASES_PATH, "rb");
    check_true(&tc, f != NULL, "open %s (run from the repo root)", CASES_PATH);
    if (!f) return test_summary(&tc);
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
        int n_expect = atoi(ntok), known = 0;
        for (int r = 0; r < n_refs; r++) {
            RefTok *s = &refs[r];
            if (strcmp(ref, s->ref)) continue;
            known = 1;
            if (!s->tok) continue; // its load failed (counted above)
            s->total++;
            int n_trunc = -1, n_raw = -1;
            int32_t raw[8];
            const int32_t pad = s->pad_from_tok ? clip_tok_pad(s->tok) : 0;
            rc = clip_tok_encode(s->tok, prompt, got, CLIP_TOK_MAX_LEN, pad, &n_trunc, &err);
            int rc2 = clip_tok_tokenize(s->tok, prompt, raw, 8, &n_raw, &err);
            int same = rc == 0 && memcmp(got, expect, sizeof got) == 0;
            if (same) s->match++;
            else {
                printf("  MISMATCH [%s: %s] \"%s\"%s%s\n", ref, s->what, prompt, rc ? ": " : "", rc ? err.msg : "");
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
        bad_rows += !known;
    }
    fclose(f);
    free(line);
    check_true(&tc, bad_rows == 0, "%s: %d malformed rows", CASES_PATH, bad_rows);
    for (int r = 0; r < n_refs; r++) {
        RefTok *s = &refs[r];
        printf("tokenizer: %d/%d prompts match exactly (%s: %s)\n", s->match, s->total, s->ref, s->what);
        check_true(&tc, s->total >= (!strncmp(s->ref, "hf_small", 8) ? 10 : 100) && s->match == s->total,
                   "%s (%s): every prompt matches the reference ids", s->ref, s->what);
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
    clip_tok_free(sd2);
    clip_tok_free(bare_gz);
    clip_tok_free(w_bare);
    clip_tok_free(w_sd1);
    clip_tok_free(w_sd2);
    for (int i = 0; i < 5; i++) clip_tok_free(var[i]);
    return test_summary(&tc);
}
