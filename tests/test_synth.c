// test_synth.c: the procedural dataset of `sdc dataset synth` (data/synth.c):
// items are a function of (seed, item); the held-out triples never appear in
// the train split and every attribute pair still does; captions say what is
// drawn; the scorer reads shape, colour, background, size, position and
// texture back from the pictures, clean and degraded (noise + blur, as a
// generated image is), and finds nothing in a blank image.
// SDC_SYNTH_GRID=FILE.png also writes an 8 x 8 grid of items (docs/img).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/dataset.h"
#include "data/genout.h"
#include "data/synth_score.h"
#include "data/synth.h"
#include "io/image.h"
#include "testutil.h"

#define RES 64

static void degrade(uint8_t *rgb, int res, uint64_t seed) {
    uint8_t *tmp = malloc((size_t)res * res * 3);
    memcpy(tmp, rgb, (size_t)res * res * 3);
    for (int y = 0; y < res; y++) // 3x3 box blur
        for (int x = 0; x < res; x++)
            for (int k = 0; k < 3; k++) {
                int s = 0, c = 0;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int xx = x + dx, yy = y + dy;
                        if (xx < 0 || yy < 0 || xx >= res || yy >= res) continue;
                        s += tmp[((size_t)yy * res + xx) * 3 + k], c++;
                    }
                rgb[((size_t)y * res + x) * 3 + k] = (uint8_t)((s + c / 2) / c);
            }
    float *noise = malloc((size_t)res * res * 3 * sizeof(float));
    fill_uniform(noise, (size_t)res * res * 3, seed, -24.0f, 24.0f); // sd 13.9
    for (size_t i = 0; i < (size_t)res * res * 3; i++) {
        float v = rgb[i] + noise[i];
        rgb[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5f);
    }
    free(noise);
    free(tmp);
}

typedef struct Acc {
    int n, shape, colour, bg, size, position, textured;
} Acc;

static void score_items(uint64_t seed, int n, int degraded, Acc *a) {
    memset(a, 0, sizeof *a);
    uint8_t *rgb = malloc((size_t)RES * RES * 3);
    for (int i = 0; i < n; i++) {
        SynthLabel l;
        SynthGuess g;
        synth_label(seed, i, SYNTH_ALL, &l);
        synth_render(seed, i, &l, RES, rgb);
        if (degraded) degrade(rgb, RES, seed * 1000 + (uint64_t)i);
        if (synth_score(rgb, RES, RES, &g)) abort();
        a->n++;
        a->shape += g.shape == l.shape;
        a->colour += g.colour == l.colour;
        a->bg += g.bg == l.bg;
        a->size += g.size == l.size;
        a->position += g.position == l.position;
        a->textured += g.textured == (l.texture != 0);
    }
    free(rgb);
}

static void check_acc(TestCtx *t, const char *what, int hit, int n, double need) {
    double acc = (double)hit / n;
    check_true(t, acc >= need, "%s: %d/%d = %.1f%% (need >= %.0f%%)", what, hit, n, 100 * acc, 100 * need);
}

int main(void) {
    TestCtx t = {0};
    const size_t B = (size_t)RES * RES * 3;
    uint8_t *a = malloc(B), *b = malloc(B);
    SynthLabel l, l2;

    // ---- determinism
    synth_label(7, 5, SYNTH_TRAIN, &l);
    synth_render(7, 5, &l, RES, a);
    synth_label(7, 5, SYNTH_TRAIN, &l2);
    synth_render(7, 5, &l2, RES, b);
    check_true(&t, !memcmp(&l, &l2, sizeof l) && !memcmp(a, b, B), "item (7, 5) drawn twice is the same");
    synth_label(8, 5, SYNTH_TRAIN, &l2);
    synth_render(8, 5, &l2, RES, b);
    check_true(&t, memcmp(a, b, B) != 0, "item 5 of seed 8 differs from seed 7's");

    // ---- splits
    int held = 0, pair_sc[SYNTH_N_SHAPES][SYNTH_N_COLOURS] = {{0}}, pair_sb[SYNTH_N_SHAPES][SYNTH_N_COLOURS] = {{0}},
        pair_cb[SYNTH_N_COLOURS][SYNTH_N_COLOURS] = {{0}};
    for (int s = 0; s < SYNTH_N_SHAPES; s++)
        for (int c = 0; c < SYNTH_N_COLOURS; c++)
            for (int g = 0; g < SYNTH_N_COLOURS; g++) {
                if (g == c) continue;
                if (synth_is_heldout(s, c, g)) {
                    held++;
                    continue;
                }
                pair_sc[s][c]++, pair_sb[s][g]++, pair_cb[c][g]++;
            }
    int missing = 0;
    for (int s = 0; s < SYNTH_N_SHAPES; s++)
        for (int c = 0; c < SYNTH_N_COLOURS; c++) missing += !pair_sc[s][c] + !pair_sb[s][c];
    for (int c = 0; c < SYNTH_N_COLOURS; c++)
        for (int g = 0; g < SYNTH_N_COLOURS; g++) missing += g != c && !pair_cb[c][g];
    check_true(&t, held >= 20 && held <= 50, "%d of 336 (shape, colour, background) triples held out", held);
    check_true(&t, missing == 0, "every shape-colour, shape-background, colour-background pair is in the train "
               "split (%d missing)", missing);
    int bad_train = 0, bad_held = 0, diff_bg = 0;
    for (int i = 0; i < 4000; i++) {
        synth_label(3, i, SYNTH_TRAIN, &l);
        bad_train += synth_is_heldout(l.shape, l.colour, l.bg);
        diff_bg += l.bg == l.colour;
        synth_label(3, i, SYNTH_HELDOUT, &l);
        bad_held += !synth_is_heldout(l.shape, l.colour, l.bg);
        diff_bg += l.bg == l.colour;
    }
    check_true(&t, bad_train == 0 && bad_held == 0 && diff_bg == 0,
               "4000 items each: held-out triples in train %d, train triples in held-out %d, shape colour = "
               "background %d", bad_train, bad_held, diff_bg);
    SynthSplit sp;
    check_true(&t, !synth_split_parse("heldout", &sp) && sp == SYNTH_HELDOUT && synth_split_parse("test", &sp) == -1,
               "split names parsed, others refused");

    // ---- captions
    l = (SynthLabel){.shape = 3, .colour = 0, .size = 0, .position = 1, .bg = 4, .texture = 1};
    char cap[SYNTH_CAPTION_MAX];
    synth_caption(&l, cap, sizeof cap);
    check_true(&t, !strcmp(cap, "a small red star on a blue striped background, on the left"), "caption: %s", cap);

    // ---- the scorer
    Acc acc;
    score_items(11, 600, 0, &acc);
    check_acc(&t, "clean shape", acc.shape, acc.n, 0.98);
    check_acc(&t, "clean colour", acc.colour, acc.n, 0.995);
    check_acc(&t, "clean background", acc.bg, acc.n, 0.995);
    check_acc(&t, "clean size", acc.size, acc.n, 0.98);
    check_acc(&t, "clean position", acc.position, acc.n, 0.97);
    check_acc(&t, "clean texture (plain or not)", acc.textured, acc.n, 0.97);
    score_items(12, 600, 1, &acc);
    check_acc(&t, "blurred + noisy shape", acc.shape, acc.n, 0.90);
    check_acc(&t, "blurred + noisy colour", acc.colour, acc.n, 0.97);
    check_acc(&t, "blurred + noisy background", acc.bg, acc.n, 0.97);
    { // DreamBooth's subject: found in its own pictures (clean and degraded), never in the six shapes'
        int found = 0, found_d = 0, bg_ok = 0, parsed = 0, false_subject = 0, n_sub = 200;
        uint8_t *rgb = malloc(B);
        for (int i = 0; i < n_sub; i++) {
            SynthLabel l, want;
            SynthGuess gs;
            char cap[SYNTH_CAPTION_MAX];
            synth_label(3, i, SYNTH_SUBJECT_SPLIT, &l);
            synth_render(3, i, &l, RES, rgb);
            synth_score(rgb, RES, RES, &gs);
            found += gs.subject, bg_ok += gs.bg == l.bg;
            degrade(rgb, RES, 77 + (uint64_t)i);
            synth_score(rgb, RES, RES, &gs);
            found_d += gs.subject;
            synth_caption(&l, cap, sizeof cap);
            parsed += !synth_parse_caption(cap, &want) && want.shape == SYNTH_SUBJECT && want.bg == l.bg &&
                      strstr(cap, "sks shape") != NULL;
            if (i == 0) printf("  subject caption: %s\n", cap);
        }
        for (int i = 0; i < 600; i++) {
            SynthLabel l;
            SynthGuess gs;
            synth_label(12, i, SYNTH_ALL, &l);
            synth_render(12, i, &l, RES, rgb);
            synth_score(rgb, RES, RES, &gs);
            false_subject += gs.subject;
        }
        free(rgb);
        check_acc(&t, "the subject found in its pictures", found, n_sub, 0.98);
        check_acc(&t, "... blurred + noisy", found_d, n_sub, 0.90);
        check_acc(&t, "... its background", bg_ok, n_sub, 0.98);
        check_true(&t, parsed == n_sub, "%d/%d subject captions parsed back as the subject", parsed, n_sub);
        check_true(&t, false_subject == 0, "the six shapes taken for the subject: %d of 600", false_subject);
        SynthLabel c1, c2;
        check_true(&t, !synth_parse_caption("a shape on a plain green background", &c1) && c1.shape == SYNTH_CLASS &&
                           c1.colour == -1 && c1.bg == 3 && !synth_parse_caption("a red shape on a blue striped "
                                                                                  "background", &c2) &&
                           c2.shape == SYNTH_CLASS && c2.colour == 0 && c2.bg == 4,
                   "class prompts (\"a shape on ...\") parsed as such");
    }
    { // the varied split (a VAE's data): the train split's items, two in three shapes patterned in another colour,
      // never the subject's heart, never its yellow-purple pair; the unpatterned ones drawn as the train items
        int same_label = 0, patterned = 0, bad = 0, same_img = 0, unpatterned = 0, differ = 0;
        const int n = 600;
        uint8_t *p = malloc(B), *q = malloc(B);
        for (int i = 0; i < n && p && q; i++) {
            SynthLabel v, tr;
            synth_label(21, i, SYNTH_VARIED, &v);
            synth_label(21, i, SYNTH_TRAIN, &tr);
            same_label += v.shape == tr.shape && v.colour == tr.colour && v.bg == tr.bg && v.size == tr.size &&
                          v.position == tr.position && v.texture == tr.texture;
            patterned += v.pattern > 0;
            bad += v.shape == SYNTH_SUBJECT || v.pattern < 0 || v.pattern > 5 ||
                   (v.pattern && (v.colour2 == v.colour || (v.colour == 2 && v.colour2 == 5) ||
                                  (v.colour == 5 && v.colour2 == 2) || !(v.period > 0.3 && v.period < 1.3)));
            if (i < 60) {
                synth_render(21, i, &v, RES, p);
                synth_render(21, i, &tr, RES, q);
                const int eq = !memcmp(p, q, B);
                if (v.pattern) differ += !eq;
                else unpatterned++, same_img += eq;
            }
        }
        free(p), free(q);
        check_true(&t, same_label == n, "varied: %d/%d items with the train split's attributes", same_label, n);
        check_true(&t, patterned > n / 2 && patterned < n * 5 / 6, "varied: %d/%d shapes patterned (2/3 drawn)",
                   patterned, n);
        check_true(&t, bad == 0, "varied: no heart, no yellow-purple pattern, periods in range (%d bad)", bad);
        check_true(&t, unpatterned > 0 && same_img == unpatterned && differ == 60 - unpatterned,
                   "varied: the %d unpatterned pictures are the train items', the %d patterned ones differ",
                   unpatterned, differ);
    }
    SynthGuess g;
    memset(a, 90, B);
    synth_score(a, RES, RES, &g);
    check_true(&t, g.shape == -1 && g.colour == -1, "a blank grey image has no shape (shape %d, colour %d)", g.shape,
               g.colour);

    // ---- written as an sdc dataset: the reader gives back the items and their captions
    {
        char dir[] = "/tmp/sdc-test-synth.XXXXXX", path[64];
        check_true(&t, mkdtemp(dir) != NULL, "temporary folder");
        snprintf(path, sizeof path, "%s/s.h5", dir);
        DatasetImportOpts o = {.output = path, .resolution = 32, .center_crop = 1, .seed = 9, .quiet = 1,
                               .synth_count = 21, .synth_split = SYNTH_HELDOUT};
        const H5Par par = h5_par_serial();
        DatasetImportStats st;
        SdcError err = {0};
        int rc = dataset_import(&o, &par, &st, &err);
        check_true(&t, rc == 0 && st.written == 21, "dataset_import of 21 held-out items at 32 px: %s",
                   rc ? err.msg : "written");
        Dataset d;
        rc = rc ? rc : dataset_open(&d, path, &err);
        check_true(&t, rc == 0, "dataset_open: %s", rc ? err.msg : "ok");
        if (!rc) {
            int same_img = 0, same_cap = 0;
            for (int64_t i = 0; i < d.n; i++) {
                uint8_t got[32 * 32 * 3], want[32 * 32 * 3];
                char cap[SYNTH_CAPTION_MAX];
                synth_label(9, i, SYNTH_HELDOUT, &l);
                synth_render(9, i, &l, 32, want);
                synth_caption(&l, cap, sizeof cap);
                same_img += !dataset_read_image(&d, i, got, &err) && !memcmp(got, want, sizeof got);
                same_cap += !strcmp(d.captions[i], cap);
            }
            check_true(&t, d.n == 21 && same_img == 21 && same_cap == 21 && d.latents < 0,
                       "read back: %lld items, %d images and %d captions as drawn, no latents", (long long)d.n,
                       same_img, same_cap);
            dataset_close(&d);
        }
        o.n_sources = 1;
        const char *src[1] = {"photos/"};
        o.sources = src;
        rc = dataset_import(&o, &par, &st, &err);
        check_true(&t, rc == SDC_ERR_ARG && strstr(err.msg, "takes no sources"), "synth with sources refused: %s",
                   err.msg);
        unlink(path);
        rmdir(dir);
    }

    // ---- captions parse back; prompts with other words still parse
    {
        int back = 0;
        for (int i = 0; i < 500; i++) {
            SynthLabel p;
            synth_label(21, i, SYNTH_ALL, &l);
            synth_caption(&l, cap, sizeof cap);
            back += !synth_parse_caption(cap, &p) && !memcmp(&p, &l, sizeof p);
        }
        check_true(&t, back == 500, "500 captions parsed back to their labels: %d", back);
        SynthLabel p;
        int ok = !synth_parse_caption("a photo of a sks Green CROSS on an orange dotted background", &p) &&
                 p.shape == 4 && p.colour == 3 && p.bg == 1 && p.texture == 2 && p.size == 0 && p.position == 0;
        check_true(&t, ok && synth_parse_caption("a cat on a mat", &p) == -1 &&
                       synth_parse_caption("a star on a blue background", &p) == -1,
                   "other words ignored; no shape, or a shape without its colour: not a synth prompt");
    }

    // ---- a generation output scored: its own pictures (everything found),
    // then each prompt with the next item's picture (chance level)
    for (int shifted = 0; shifted < 2; shifted++) {
        enum { NI = 60 };
        char dir[] = "/tmp/sdc-test-score.XXXXXX", path[64];
        check_true(&t, mkdtemp(dir) != NULL, "temporary folder");
        snprintf(path, sizeof path, "%s/g.h5", dir);
        static char caps[NI][SYNTH_CAPTION_MAX];
        GenItem it[NI];
        uint8_t *imgs = malloc((size_t)NI * B);
        for (int i = 0; i < NI; i++) {
            synth_label(31, i, SYNTH_ALL, &l);
            synth_caption(&l, caps[i], sizeof caps[i]);
            synth_label(31, (i + shifted) % NI, SYNTH_ALL, &l2);
            synth_render(31, (i + shifted) % NI, &l2, RES, imgs + (size_t)i * B);
            // unshifted: items 0-9 the subject's prompts and pictures; 10-19 class prompts ("a shape on a plain
            // C background"), 10-14 drawn as the subject (drift), 15-19 as one of the six shapes
            if (!shifted && i < 15) {
                synth_label(31, i, SYNTH_SUBJECT_SPLIT, &l2);
                l2.texture = 0;
                synth_render(31, i, &l2, RES, imgs + (size_t)i * B);
            }
            if (!shifted && i < 10) synth_caption(&l2, caps[i], sizeof caps[i]);
            else if (!shifted && i < 20)
                snprintf(caps[i], sizeof caps[i], "a shape on a plain %s background",
                         synth_colour_names[i < 15 ? l2.bg : l.bg]);
            if (!shifted && i >= 15 && i < 20) synth_render(31, i, &l, RES, imgs + (size_t)i * B);
            it[i] = (GenItem){.prompt = caps[i], .negative_prompt = "", .sampler = "euler", .index = i, .seed = i,
                              .steps = 1, .cfg = 1, .strength = 1};
        }
        const H5Par par = h5_par_serial();
        SdcError err = {0};
        GenOut go;
        int64_t idx[NI - 1];
        for (int i = 0; i < NI - 1; i++) idx[i] = i; // the last item not done
        int rc = genout_open(&go, path, it, NI, RES, RES, "0123456789", NULL, &par, &err);
        if (!rc) rc = genout_write(&go, idx, NI - 1, imgs, &err);
        if (!rc) rc = genout_close(&go, &err);
        SynthScore s = {0};
        if (!rc) rc = synth_score_file(path, &s, NULL, &err);
        check_true(&t, rc == 0 && s.items == NI && s.not_done == 1 && s.scored == NI - 1 - (shifted ? 0 : 20),
                   "generation output: %lld items, %lld not done, %lld scored %s", (long long)s.items,
                   (long long)s.not_done, (long long)s.scored, err.msg);
        double sh = s.scored ? (double)s.hit[0] / s.scored : 0, co = s.scored ? (double)s.hit[1] / s.scored : 0;
        if (!shifted) {
            check_true(&t, sh >= 0.98 && co >= 0.98 && s.heldout > 0, "its own pictures: shape %.1f%%, colour %.1f%% "
                       "(%lld held out)", 100 * sh, 100 * co, (long long)s.heldout);
            check_true(&t, s.subject_items == 10 && s.subject_found == 10 && s.subject_bg == 10,
                       "subject prompts: %lld, subject found %lld, background %lld (10 each)", (long long)s.subject_items,
                       (long long)s.subject_found, (long long)s.subject_bg);
            check_true(&t, s.class_items == 10 && s.class_as_subject == 5 && s.class_shape == 5 && s.class_bg == 10,
                       "class prompts: %lld, drawn as the subject %lld (5), one of the six %lld (5), background %lld",
                       (long long)s.class_items, (long long)s.class_as_subject, (long long)s.class_shape,
                       (long long)s.class_bg);
        }
        else
            check_true(&t, sh < 0.5 && co < 0.5, "the next item's pictures: shape %.1f%%, colour %.1f%%", 100 * sh,
                       100 * co);
        unlink(path);
        rmdir(dir);
        free(imgs);
    }

    const char *grid = getenv("SDC_SYNTH_GRID");
    if (grid) {
        const int N = 8, side = N * RES;
        uint8_t *img = malloc((size_t)side * side * 3);
        for (int i = 0; i < N * N; i++) {
            synth_label(1, i, SYNTH_TRAIN, &l);
            synth_render(1, i, &l, RES, a);
            for (int y = 0; y < RES; y++)
                memcpy(img + (((size_t)(i / N) * RES + y) * side + (size_t)(i % N) * RES) * 3, a + (size_t)y * RES * 3,
                       (size_t)RES * 3);
        }
        SdcError err = {0};
        check_true(&t, !image_write_png(grid, img, side, side, "sdc dataset synth --seed 1, items 0-63", &err),
                   "grid written to %s %s", grid, err.msg);
        free(img);
    }
    free(a), free(b);
    return test_summary(&t);
}
