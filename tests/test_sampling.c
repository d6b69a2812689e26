// test_sampling.c: sdc's random numbers and samplers against torch/diffusers
// (tests/fixtures/ref-sampling.safetensors, tools/make_sampling_fixture.py).
// The RNG must reproduce torch.randn for the same seed; each sampler, fed the
// same model outputs, must follow the diffusers scheduler's trajectory: its
// timesteps, sigmas, initial latent, final latent, and for some runs an
// img2img start (begin index, add_noise, final latent). Stochastic samplers
// draw from the same Rng that made the initial latent, as a diffusers
// pipeline does with its generator.
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

static const char *SPACING_NAMES[] = {"leading", "trailing", "linspace"};
static const char *PRED_NAMES[] = {"epsilon", "v_prediction"};

typedef struct {
    const char *sampler;
    TimestepSpacing spacing;
    PredictionType pred;
    int steps;
    float eta;
    int img2img;
} Run;

// Worst rel_err per sampler over its final latents, for the summary.
static double worst[SAMPLER_COUNT];

static void note(SamplerKind k, double e) {
    if (e > worst[k]) worst[k] = e;
}

static void test_run(TestCtx *t, const StFile *f, const Run *r, const float *outs, size_t n_outs,
                     const float *x0img) {
    char base[128], name[192];
    int len = snprintf(base, sizeof base, "%s.%s.%s.s%d", r->sampler, SPACING_NAMES[r->spacing],
                       PRED_NAMES[r->pred], r->steps);
    if (r->eta > 0) snprintf(base + len, sizeof base - len, ".eta%g", r->eta);
    size_t n_ts, n_init, n_fin;
    snprintf(name, sizeof name, "%s.timesteps", base);
    const float *ts = ref(f, name, &n_ts);
    snprintf(name, sizeof name, "%s.init", base);
    const float *init = ref(f, name, &n_init);
    snprintf(name, sizeof name, "%s.final", base);
    const float *fin = ref(f, name, &n_fin);

    SamplerKind kind;
    SdcError err = {0};
    Sampler s;
    if (sampler_parse(r->sampler, &kind, &err) ||
        sampler_init(&s, kind, r->steps, r->spacing, r->pred, r->eta, n_init, &err)) {
        check_true(t, 0, "%s: %s", base, err.msg);
        return;
    }
    int evals = sampler_num_evals(&s);
    check_true(t, (size_t)evals == n_ts && (size_t)evals * n_init <= n_outs, "%s: %d evaluations (diffusers: %zu)",
               base, evals, n_ts);
    if ((size_t)evals != n_ts || (size_t)evals * n_init > n_outs) {
        sampler_free(&s);
        return;
    }
    snprintf(name, sizeof name, "%s timesteps", base);
    // integers everywhere but in Euler / Heun / LMS with Karras sigmas, where
    // diffusers keeps sigma_to_t's float (computed in double both sides)
    const int float_ts = strstr(r->sampler, "_karras") && strncmp(r->sampler, "dpm", 3);
    check_rel(t, name, s.timesteps, ts, n_ts, float_ts ? 1e-6 : 0.0);
    snprintf(name, sizeof name, "%s.sigmas", base);
    const StEntry *se = st_find(f, name);
    check_true(t, (se != NULL) == (s.sigmas != NULL), "%s: sigmas defined here iff in diffusers", base);
    if (se && s.sigmas) {
        size_t n_sig;
        const float *sig = ref(f, name, &n_sig);
        check_true(t, n_sig == (size_t)s.n_sigmas, "%s: %d sigmas (diffusers: %zu)", base, s.n_sigmas, n_sig);
        snprintf(name, sizeof name, "%s sigmas", base);
        if (n_sig == (size_t)s.n_sigmas) check_rel(t, name, s.sigmas, sig, n_sig, 1e-6);
    }

    // txt2img: initial noise from seed 42, the same generator continued by the steps
    float *x = malloc(n_init * sizeof *x);
    Rng g;
    rng_seed(&g, 42);
    rng_normal(&g, x, n_init);
    for (size_t k = 0; k < n_init; k++) x[k] *= s.init_noise_sigma;
    snprintf(name, sizeof name, "%s init", base);
    check_rel(t, name, x, init, n_init, 1e-6);
    for (int i = 0; i < evals; i++) sampler_step(&s, i, x, outs + (size_t)i * n_init, &g);
    snprintf(name, sizeof name, "%s final", base);
    check_rel(t, name, x, fin, n_fin, 1e-5);
    note(kind, rel_err(x, fin, n_fin));

    if (r->img2img) {
        // diffusers' img2img at strength 0.6: noise = randn(seed 42), then add_noise at the first timestep
        size_t nb, nn;
        snprintf(name, sizeof name, "%s.img2img.begin", base);
        const float *rb = ref(f, name, &nb);
        snprintf(name, sizeof name, "%s.img2img.noised", base);
        const float *noised = ref(f, name, &nn);
        snprintf(name, sizeof name, "%s.img2img.final", base);
        const float *fin2 = ref(f, name, &nn);
        sampler_reset(&s);
        int b = sampler_begin_for_strength(&s, 0.6);
        check_true(t, b == (int)rb[0], "%s img2img begin %d (diffusers: %d)", base, b, (int)rb[0]);
        float *noise = malloc(n_init * sizeof *noise);
        rng_seed(&g, 42);
        rng_normal(&g, noise, n_init);
        sampler_add_noise(&s, b, x0img, noise, x);
        snprintf(name, sizeof name, "%s img2img add_noise", base);
        check_rel(t, name, x, noised, n_init, 1e-6);
        for (int i = b; i < evals; i++) sampler_step(&s, i, x, outs + (size_t)i * n_init, &g);
        snprintf(name, sizeof name, "%s img2img final", base);
        check_rel(t, name, x, fin2, n_init, 1e-5);
        note(kind, rel_err(x, fin2, n_init));
        free(noise);
    }
    free(x);
    sampler_free(&s);
}

static void test_names(TestCtx *t, const StFile *f) {
    static const char *typed[][2] = {
        {"Euler a", "euler_a"},         {"euler A", "euler_a"}, {"DPM++ 2M Karras", "dpm++2m_karras"},
        {"dpm++ 2m sde", "dpm++2m_sde"}, {"DDIM", "ddim"},       {"PNDM", "pndm"},
        {"LMS", "lms"},                 {"heun", "heun"},       {"UNIPC", "unipc"},
        {"Euler", "euler"},             {"DDPM", "ddpm"},       {"DPM++ 2M", "dpm++2m"},
        {"DPM++ 2M SDE Karras", "dpm++2m_sde_karras"},          {"dpmpp_2m_sde_karras", "dpm++2m_sde_karras"},
    };
    SdcError err = {0};
    for (size_t i = 0; i < sizeof typed / sizeof typed[0]; i++) {
        SamplerKind k = SAMPLER_COUNT;
        int rc = sampler_parse(typed[i][0], &k, &err);
        check_true(t, !rc && !strcmp(sampler_name(k), typed[i][1]), "parse \"%s\" -> %s", typed[i][0],
                   rc ? "error" : sampler_name(k));
    }
    for (int k = 0; k < SAMPLER_COUNT; k++) {
        SamplerKind back = SAMPLER_COUNT;
        int rc = sampler_parse(sampler_display_name((SamplerKind)k), &back, &err);
        check_true(t, !rc && back == (SamplerKind)k, "display name \"%s\" parses back",
                   sampler_display_name((SamplerKind)k));
        char name[96];
        snprintf(name, sizeof name, "sampler.default_spacing.%s", sampler_name((SamplerKind)k));
        size_t n;
        const float *sp = ref(f, name, &n);
        check_true(t, (int)sp[0] == (int)sampler_default_spacing((SamplerKind)k),
                   "%s default spacing %s (diffusers: %s)", sampler_name((SamplerKind)k),
                   SPACING_NAMES[sampler_default_spacing((SamplerKind)k)], SPACING_NAMES[(int)sp[0]]);
    }
    SamplerKind k;
    int rc = sampler_parse("euler_b", &k, &err);
    check_true(t, rc == SDC_ERR_ARG && strstr(err.msg, "dpm++2m_karras") != NULL,
               "unknown sampler -> SDC_ERR_ARG listing the names (%s)", err.msg);
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

    printf("schedule:\n");
    {
        size_t n;
        const float *ac = ref(&f, "schedule.alphas_cumprod", &n);
        Sampler s;
        if (!sampler_init(&s, SAMPLER_DDIM, 20, SPACING_LEADING, PRED_EPSILON, 0, 16, &err)) {
            check_rel(&t, "alphas_cumprod", s.alphas_cumprod, ac, n, 0.0);
            sampler_free(&s);
        }
    }
    printf("names:\n");
    test_names(&t, &f);

    printf("samplers (diffusers trajectories, 4x8x8 latents, fixed model outputs):\n");
    size_t n_outs, n_x0;
    const float *outs = ref(&f, "sampler.model_out", &n_outs);
    const float *x0img = ref(&f, "sampler.x0", &n_x0);
    Run runs[96];
    int nr = 0;
    for (int k = 0; k < SAMPLER_COUNT; k++) {
        const char *nm = sampler_name((SamplerKind)k);
        TimestepSpacing def = sampler_default_spacing((SamplerKind)k);
        int all = !strcmp(nm, "euler") || !strcmp(nm, "ddim") || !strcmp(nm, "dpm++2m");
        for (int sp = 0; sp < 3; sp++) {
            if (!all && sp != (int)def) continue;
            for (int p = 0; p < 2; p++) runs[nr++] = (Run){nm, (TimestepSpacing)sp, (PredictionType)p, 20, 0, sp == (int)def};
        }
        runs[nr++] = (Run){nm, def, PRED_EPSILON, 5, 0, 0};
    }
    const Run extra[] = {
        {"ddim", SPACING_LEADING, PRED_EPSILON, 20, 1.0f, 1},    {"pndm", SPACING_LINSPACE, PRED_EPSILON, 20, 0, 0},
        {"ddpm", SPACING_LINSPACE, PRED_V, 20, 0, 0},            {"euler_a", SPACING_LEADING, PRED_EPSILON, 20, 0, 0},
        {"dpm++2m_sde", SPACING_TRAILING, PRED_EPSILON, 7, 0, 0}, {"heun", SPACING_TRAILING, PRED_V, 7, 0, 0},
        {"lms", SPACING_LEADING, PRED_EPSILON, 20, 0, 0},        {"unipc", SPACING_TRAILING, PRED_V, 20, 0, 0},
    };
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) runs[nr++] = extra[i];
    for (int i = 0; i < nr; i++) test_run(&t, &f, &runs[i], outs, n_outs, x0img);

    printf("worst final-latent rel_err per sampler:\n");
    for (int k = 0; k < SAMPLER_COUNT; k++) printf("  %-16s %.2e\n", sampler_name((SamplerKind)k), worst[k]);
    st_close(&f);
    return test_summary(&t);
}
