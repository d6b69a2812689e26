// test_vae_train.c: sdc train vae's step against a torch loop.
//
// tests/fixtures/ref-vae-train.safetensors (tools/make_vae_train_fixture.py):
// the tiny-sd1 VAE trained in fp64 for 6 steps (batch 2, 32x32) on fixed
// images and noise, MSE and L1 reconstruction + 1e-2 x KL, clip_grad_norm_
// 1.0, AdamW lr 2e-3, constant. Here the same steps run through
// vae_trainer_step with the fixture's images and noise.
//
// Tolerances: each step's loss, rec and kl to 1e-4 relative (fp32 against
// fp64 with 6 AdamW updates between; a wrong KL term or a missing factor of
// the gradient is off by >= 1e-2 after one step), the parameters after the
// last step to 1e-3 of each tensor's max |value| (AdamW moves every weight
// by ~lr per step whatever the gradient's size, so a parameter whose
// gradient is rounding noise in both, e.g. to_k's bias, differs by up to
// 6 lr = 1.2e-2 absolute: those are compared with that bound).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/vae.h"
#include "testutil.h"
#include "train/vae_train.h"

#define FIX "tests/fixtures"

static void run_case(TestCtx *t, const Backend *be, const StFile *ref, const char *tag, VaeRecLoss kind) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    Vae *m = NULL;
    VaeTrainer tr = {0};
    int have_tr = 0;
    float *x = NULL, *eps = NULL, *rl = NULL, *rr = NULL, *rk = NULL;
    char nm[256];
    printf("== %s reconstruction\n", tag);
    Tensor sx, se;
    x = fixture_f32(t, ref, "x", &sx);
    eps = fixture_f32(t, ref, "eps", &se);
    snprintf(nm, sizeof nm, "%s.loss", tag);
    rl = fixture_f32(t, ref, nm, NULL);
    snprintf(nm, sizeof nm, "%s.rec", tag);
    rr = fixture_f32(t, ref, nm, NULL);
    snprintf(nm, sizeof nm, "%s.kl", tag);
    rk = fixture_f32(t, ref, nm, NULL);
    if (!x || !eps || !rl || !rr || !rk) goto done;
    const int steps = 6, N = (int)sx.shape[0] / steps, H = (int)sx.shape[3]; // x (steps * N, 3, H, H)
    if (!check_true(t, model_files_open(&mf, FIX "/tiny-sd1", NULL, -1, &err) == 0, "open: %s", err.msg)) goto done;
    ModelLoadOpts lo = {.trainable = 1};
    if (!check_true(t, vae_load_opts(&m, mf, be, &lo, &err) == 0, "load: %s", err.msg)) goto done;
    LrSchedule s;
    lr_schedule_init(&s, LR_CONSTANT, 2e-3, 0, steps, 1, 1.0, &err);
    VaeTrainConfig c = {.batch = N, .resolution = H, .learning_rate = 2e-3, .kl_weight = 1e-2, .rec_loss = kind,
                        .max_grad_norm = 1.0, .adam = adamw_config_default()};
    c.adam.weight_decay = 1e-2;
    if (!check_true(t, vae_trainer_init(&tr, m, &c, &s, &err) == 0, "trainer: %s", err.msg)) goto done;
    have_tr = 1;
    const size_t ni = (size_t)N * 3 * H * H, nl = (size_t)tensor_numel(&se) / steps; // per step
    for (int k = 0; k < steps; k++) {
        VaeStepStats st;
        if (!check_true(t, vae_trainer_step(&tr, x + k * ni, eps + k * nl, &st, &err) == 0, "step: %s", err.msg))
            goto done;
        const double el = fabs(st.loss - rl[k]) / fabs(rl[k]), er = fabs(st.rec - rr[k]) / fabs(rr[k]),
                     ek = fabs(st.kl - rk[k]) / fabs(rk[k]);
        check_true(t, el < 1e-4 && er < 1e-4 && ek < 1e-4,
                   "step %d: loss %.6f (torch %.6f, %.1e)  rec %.6f (%.1e)  kl %.4f (%.1e)  tol 1e-4", k + 1,
                   st.loss, rl[k], el, st.rec, er, st.kl, ek);
    }
    const ParamTable *tb = vae_train_table(m);
    double worst = 0;
    const char *wn = "";
    int bad = 0, n = 0;
    for (int i = 0; i < tb->n; i++) {
        snprintf(nm, sizeof nm, "%s.param.%s", tag, tb->e[i].name);
        float *r = fixture_f32(t, ref, nm, NULL);
        if (!r) continue;
        const size_t cnt = (size_t)tensor_numel(&tb->e[i].t);
        const float *p = tb->e[i].t.data;
        if (strstr(tb->e[i].name, "to_k.bias")) { // no gradient: AdamW's sign of noise, 6 lr at most
            double d = max_abs_diff(p, r, cnt);
            if (d > 6 * 2e-3 + 1e-6) bad++, printf("  NOT OK  %s: %.3e > 6 lr\n", tb->e[i].name, d);
        } else {
            double e = rel_err(p, r, cnt);
            if (e > worst) worst = e, wn = tb->e[i].name;
            if (e > 1e-3) bad++, printf("  NOT OK  %s: %.3e\n", tb->e[i].name, e);
        }
        n++;
        free(r);
    }
    check_true(t, bad == 0 && n == tb->n, "%d parameters after %d steps within 1e-3 (worst %.2e, %s)", n, steps,
               worst, wn);
done:
    if (err.code) printf("  error: %s\n", err.msg);
    free(x), free(eps), free(rl), free(rr), free(rk);
    if (have_tr) vae_trainer_free(&tr);
    vae_free(m);
    model_files_close(mf);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    StFile ref = {0};
    if (!check_true(&t, backend_cpu_create(&be, 0, &err) == 0, "cpu backend: %s", err.msg)) return test_summary(&t);
    if (check_true(&t, st_open(&ref, FIX "/ref-vae-train.safetensors", &err) == 0, "%s", err.msg)) {
        run_case(&t, be, &ref, "mse", VAE_REC_MSE);
        run_case(&t, be, &ref, "l1", VAE_REC_L1);
        st_close(&ref);
    }
    backend_destroy(be);
    return test_summary(&t);
}
