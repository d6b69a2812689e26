// test_ema.c: the EMA of train/ema.h against diffusers' EMAModel
// (tests/fixtures/ref-ema.safetensors, tools/make_ema_fixture.py): 30
// optimizer steps of two parameters, the default config and one with
// warm-up, update_after_step, min_decay and another decay; the shadow after
// every step equal to EMAModel's bit for bit (fp32 element-wise arithmetic
// in the same order). And the decay schedule's values.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/safetensors.h"
#include "testutil.h"
#include "train/ema.h"

static float *get(TestCtx *t, const StFile *f, const char *fmt, int k, int s) {
    char name[64];
    snprintf(name, sizeof name, fmt, k, s);
    return fixture_f32(t, f, name, NULL);
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "tests/fixtures/ref-ema.safetensors";
    TestCtx t = {0};
    SdcError err = {0};
    StFile f;
    if (st_open(&f, path, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    Backend *be = NULL;
    if (backend_cpu_create(&be, 1, &err)) return 1;

    EmaConfig def = ema_config_default();
    check_true(&t, ema_decay(&def, 1) == 0.0 && fabs(ema_decay(&def, 2) - 2.0 / 11.0) < 1e-15 &&
                       fabs(ema_decay(&def, 100001) - 0.9999) < 1e-15,
               "decay: step 1 copies (0), step 2 2/11, step 100001 capped at 0.9999");
    EmaConfig warm = {.decay = 0.99, .min_decay = 0.5, .update_after_step = 2, .use_warmup = 1, .inv_gamma = 1.0,
                      .power = 0.75};
    const size_t n[2] = {37, 20};
    for (int cfg = 0; cfg < 2; cfg++) {
        const EmaConfig *c = cfg ? &warm : &def;
        int exact = 0, total = 0;
        double worst = 0;
        for (int k = 0; k < 2; k++) {
            float *shadow = get(&t, &f, "param_%d_step_%d", k, 0); // EMAModel starts from the weights
            for (int s = 1; s <= 30 && shadow; s++) {
                float *p = get(&t, &f, "param_%d_step_%d", k, s);
                float *ref = get(&t, &f, cfg ? "shadow_warm_%d_step_%d" : "shadow_%d_step_%d", k, s);
                if (!p || !ref || ema_update(be, c, s, shadow, p, n[k], &err)) break;
                total++;
                exact += !memcmp(shadow, ref, n[k] * sizeof(float));
                double e = max_abs_diff(shadow, ref, n[k]);
                if (e > worst) worst = e;
                free(p), free(ref);
            }
            free(shadow);
        }
        check_true(&t, total == 60 && exact == 60, "%s: %d of %d shadows bit-identical to EMAModel's (max |diff| %g)",
                   cfg ? "warm-up, update_after_step 2, min_decay 0.5, decay 0.99" : "default", exact, total, worst);
    }
    backend_destroy(be);
    st_close(&f);
    return test_summary(&t);
}
