// test_sampling.c: sdc's random numbers and samplers against torch/diffusers
// (tests/fixtures/ref-sampling.safetensors, tools/make_sampling_fixture.py).
// The RNG must reproduce torch.randn for the same seed; each sampler, fed the
// same model outputs, must follow the diffusers scheduler's trajectory.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "sampling/rng.h"
#include "sampling/scheduler.h"
#include "testutil.h"

static const float *ref(const StFile *f, const char *name, size_t *n) {
    const StEntry *e = st_find(f, name);
    if (!e || e->dtype != DT_F32) {
        fprintf(stderr, "missing fixture tensor %s\n", name);
        exit(1);
    }
    Tensor t = st_tensor(f, e);
    *n = (size_t)tensor_numel(&t);
    return t.data;
}

static void test_rng(TestCtx *t, const StFile *f) {
    const unsigned long long seeds[] = {0, 42, 1234567};
    const size_t sizes[] = {5, 16, 20, 256, 4 * 64 * 64};
    for (int s = 0; s < 3; s++) {
        for (int k = 0; k < 5; k++) {
            char name[64];
            snprintf(name, sizeof name, "rng.seed%llu.n%zu", seeds[s], sizes[k]);
            size_t n;
            const float *r = ref(f, name, &n);
            float *x = malloc(n * sizeof *x);
            Rng g;
            rng_seed(&g, seeds[s]);
            rng_normal(&g, x, n);
            // torch uses vectorised log/sin/cos for n >= 16: agreement to float rounding
            check_rel(t, name, x, r, n, 1e-6);
            free(x);
        }
        char name[64];
        snprintf(name, sizeof name, "rng.uniform.seed%llu", seeds[s]);
        size_t n;
        const float *r = ref(f, name, &n);
        float x[64];
        Rng g;
        rng_seed(&g, seeds[s]);
        rng_uniform(&g, x, n);
        check_rel(t, name, x, r, n, 0.0);
    }
}

static void test_trajectory(TestCtx *t, const StFile *f, const char *sampler, TimestepSpacing sp,
                            const char *spname, PredictionType pred, const char *predname) {
    char base[128], name[192];
    snprintf(base, sizeof base, "%s.%s.%s", sampler, spname, predname);
    size_t n_ts, n_sig, n_init, n_out, n_fin;
    snprintf(name, sizeof name, "%s.timesteps", base);
    const float *ts = ref(f, name, &n_ts);
    snprintf(name, sizeof name, "%s.sigmas", base);
    const float *sig = ref(f, name, &n_sig);
    snprintf(name, sizeof name, "%s.init", base);
    const float *init = ref(f, name, &n_init);
    snprintf(name, sizeof name, "%s.model_out", base);
    const float *outs = ref(f, name, &n_out);
    snprintf(name, sizeof name, "%s.final", base);
    const float *fin = ref(f, name, &n_fin);

    SamplerKind kind;
    SdcError err = {0};
    if (sampler_parse(sampler, &kind, &err)) {
        check_true(t, 0, "%s: %s", base, err.msg);
        return;
    }
    Sampler *s = malloc(sizeof *s);
    int steps = (int)n_ts;
    if (sampler_init(s, kind, steps, sp, 1, pred, &err)) {
        check_true(t, 0, "%s: %s", base, err.msg);
        free(s);
        return;
    }
    snprintf(name, sizeof name, "%s timesteps", base);
    check_rel(t, name, s->timesteps, ts, (size_t)steps, 0.0);
    snprintf(name, sizeof name, "%s sigmas", base);
    check_rel(t, name, s->sigmas, sig, n_sig, 1e-6);

    // initial noise from the seed, scaled as the pipeline does
    float *x = malloc(n_init * sizeof *x);
    Rng g;
    rng_seed(&g, 42);
    rng_normal(&g, x, n_init);
    for (size_t k = 0; k < n_init; k++) x[k] *= s->init_noise_sigma;
    snprintf(name, sizeof name, "%s init", base);
    check_rel(t, name, x, init, n_init, 1e-6);
    for (int i = 0; i < steps; i++) sampler_step(s, i, x, outs + (size_t)i * n_init, n_init);
    snprintf(name, sizeof name, "%s final", base);
    check_rel(t, name, x, fin, n_fin, 1e-5);
    free(x);
    free(s);
}

int main(void) {
    TestCtx t = {0};
    StFile f;
    SdcError err = {0};
    if (st_open(&f, "tests/fixtures/ref-sampling.safetensors", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("rng (torch.randn / torch.rand parity):\n");
    test_rng(&t, &f);
    printf("samplers (diffusers trajectories):\n");
    const char *spn[] = {"leading", "trailing", "linspace"};
    const TimestepSpacing sps[] = {SPACING_LEADING, SPACING_TRAILING, SPACING_LINSPACE};
    for (int k = 0; k < 3; k++) {
        test_trajectory(&t, &f, "euler", sps[k], spn[k], PRED_EPSILON, "epsilon");
        test_trajectory(&t, &f, "euler", sps[k], spn[k], PRED_V, "v_prediction");
    }
    st_close(&f);
    return test_summary(&t);
}
