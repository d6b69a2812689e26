// test_pp_cut.c: the pipeline cut of a training run (mpi/pp.h). Every stage
// must hold a block the run trains (with LoRA only the transformers carry
// adapters): on a loaded machine the measured block times are noisy, and a
// cut that left a stage nothing to train was refused on that stage alone
// while the others went on (the dreambooth_xl_layouts flake of session 16).
// The partition is checked over the real layouts of the demo model and the
// tiny SDXL fixture, for every stage count, against adversarial costs.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/weights.h"
#include "models/unet_layout.h"
#include "mpi/pp.h"
#include "testutil.h"

// cost patterns: uniform, one slow block (the time block measured under
// load: 11 ms among 1 ms blocks), the last block slow, rising, falling, random
enum { N_PATTERNS = 7 };
static const char *const PATTERN[N_PATTERNS] = {"uniform", "block 0 slow", "block 1 slow", "last slow",
                                                "rising", "falling", "random"};

static void costs(int pattern, int nb, double *c) {
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < nb; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        const double r = (double)(s >> 11) / 9007199254740992.0;
        c[i] = pattern == 4 ? i + 1 : pattern == 5 ? nb - i : pattern == 6 ? 0.05 + 10 * r * r : 1;
    }
    if (pattern == 1) c[0] = 11 * nb;
    if (pattern == 2) c[1] = 11 * nb;
    if (pattern == 3) c[nb - 1] = 11 * nb;
}

// bounds well formed and every stage with a trainable block
static int cut_ok(const int *b, int P, int nb, const unsigned char *tr, char *why, size_t n) {
    if (b[0] != 0 || b[P] != nb) return snprintf(why, n, "bounds %d..%d", b[0], b[P]), 0;
    for (int s = 0; s < P; s++) {
        if (b[s + 1] <= b[s]) return snprintf(why, n, "stage %d empty", s), 0;
        int any = 0;
        for (int i = b[s]; i < b[s + 1]; i++) any |= tr[i];
        if (!any) return snprintf(why, n, "stage %d (blocks %d-%d) trains nothing", s, b[s], b[s + 1] - 1), 0;
    }
    return 1;
}

static int bl_first(const unsigned char *tr, int nb) {
    for (int i = 0; i < nb; i++)
        if (tr[i]) return i;
    return -1;
}

static void layout_case(TestCtx *t, const char *label, const char *path) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    UnetBlockInfo *bl = malloc(UNET_MAX_BLOCKS * sizeof *bl);
    int nb = 0;
    if (!check_true(t, bl && model_files_open(&mf, path, NULL, -1, &err) == 0 &&
                           unet_layout(&model_files_info(mf)->unet, bl, &nb, &err) == 0,
                    "%s: layout of %s (%s)", label, path, err.msg)) {
        free(bl);
        if (mf) model_files_close(mf);
        return;
    }
    for (int lora = 0; lora < 2; lora++) {
        unsigned char tr[UNET_MAX_BLOCKS];
        const int k = pp_trainable_blocks(bl, nb, lora, tr);
        int n_tf = 0;
        for (int i = 0; i < nb; i++) n_tf += bl[i].kind == UNET_BLOCK_TRANSFORMER;
        check_true(t, k == (lora ? n_tf : nb), "%s %s: %d of %d blocks trained (%s)", label, lora ? "LoRA" : "full",
                   k, nb, lora ? "the transformers" : "all");
        int bad = 0, tried = 0, same_as_plain = 1;
        char first_bad[320] = "";
        double c[UNET_MAX_BLOCKS];
        int b[UNET_MAX_BLOCKS + 1], plain[UNET_MAX_BLOCKS + 1];
        for (int P = 2; P <= k && P <= 8; P++)
            for (int p = 0; p < N_PATTERNS; p++) {
                costs(p, nb, c);
                char why[128] = "";
                tried++;
                if (pp_partition_trainable(c, tr, nb, P, b, &err) || !cut_ok(b, P, nb, tr, why, sizeof why)) {
                    if (!bad++)
                        snprintf(first_bad, sizeof first_bad, "%d stages, %s: %.200s", P, PATTERN[p],
                                 why[0] ? why : err.msg);
                    continue;
                }
                // every block trained: the units are the blocks, the cut pp_partition_costs's
                if (!lora && (pp_partition_costs(c, nb, P, plain, &err) || memcmp(plain, b, (P + 1) * sizeof *b)))
                    same_as_plain = 0;
            }
        check_true(t, tried > 0 && bad == 0, "%s %s: %d cuts (2 to %d stages x %d cost patterns) each give every "
                   "stage a trained block (%d wrong%s%s)", label, lora ? "LoRA" : "full", tried, k < 8 ? k : 8,
                   N_PATTERNS, bad, bad ? "; first: " : "", first_bad);
        if (!lora) check_true(t, same_as_plain, "%s full: the same cuts as pp_partition_costs", label);
        if (lora) {
            // the case itself: block 0 measured slow puts the plain cut at 1, a stage of no adapter
            costs(1, nb, c);
            char why[128] = "";
            int rc = pp_partition_costs(c, nb, 2, plain, &err);
            check_true(t, rc == 0 && !cut_ok(plain, 2, nb, tr, why, sizeof why),
                       "%s LoRA, block 0 slow, 2 stages: the plain cut is wrong (%s)", label, why);
            rc = pp_partition_trainable(c, tr, nb, 2, b, &err);
            check_true(t, rc == 0 && cut_ok(b, 2, nb, tr, why, sizeof why) && b[1] == bl_first(tr, nb) + 1,
                       "%s LoRA, block 0 slow, 2 stages: cut after the first transformer (block %d), got %d",
                       label, bl_first(tr, nb) + 1, b[1]);
            // too many stages: refused, naming the count
            rc = pp_partition_trainable(c, tr, nb, k + 1, b, &err);
            char want[64];
            snprintf(want, sizeof want, "at most %d stages", k);
            check_true(t, rc == SDC_ERR_ARG && strstr(err.msg, want), "%s LoRA, %d stages: refused ('%s')", label,
                       k + 1, err.msg);
            // a cut given by hand: each stage must hold a transformer
            int cut[3] = {0, 1, nb};
            rc = pp_cut_check_trainable("1", cut, 2, tr, nb, &err);
            check_true(t, rc == SDC_ERR_ARG && strstr(err.msg, "stage 0 (blocks 0-0) has no block to train"),
                       "%s LoRA, --pipeline-cut 1: refused ('%.80s...')", label, err.msg);
            cut[1] = nb - 1;
            rc = pp_cut_check_trainable("last", cut, 2, tr, nb, &err);
            char st1[64];
            snprintf(st1, sizeof st1, "stage 1 (blocks %d-%d) has no block to train", nb - 1, nb - 1);
            check_true(t, rc == SDC_ERR_ARG && strstr(err.msg, st1), "%s LoRA, --pipeline-cut %d: refused",
                       label, nb - 1);
            cut[1] = bl_first(tr, nb) + 1;
            check_true(t, pp_cut_check_trainable("ok", cut, 2, tr, nb, &err) == 0,
                       "%s LoRA, --pipeline-cut %d: accepted", label, cut[1]);
        }
    }
    free(bl);
    model_files_close(mf);
}

int main(void) {
    TestCtx t = {0};
    layout_case(&t, "demo SD 1.x", "data/models/sdc-tiny-sd1.safetensors");
    layout_case(&t, "tiny SDXL", "tests/fixtures/tiny-sdxl");
    return test_summary(&t);
}
