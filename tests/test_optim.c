// test_optim.c: AdamW, clip_grad_norm_ and the lr schedules against torch /
// diffusers (tests/fixtures/ref-optim.safetensors, tools/make_optim_fixture.py;
// the constants below repeat the script's).
//
// Tolerances:
//   lr sequences 1e-12 (relative to the sequence's max): the lambdas are the
//     same double expressions as Python's; only libm cos/pow may differ by an ulp.
//   norms 1e-6: torch sums squares in fp32 kernels, sdc in double; both round
//     the result to fp32 (an ulp is 6e-8).
//   params, m, v 1e-6 (relative to the tensor's max): the update repeats
//     torch's fp32 ops in the same order; 10 steps of ulp-level differences
//     (params ~1, an ulp 1.2e-7 near 1) stay below that. The parameter change
//     (final - init, ~1e-2) is checked at 1e-4 so an update formula that is
//     off by more than rounding cannot hide behind the size of the params.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "testutil.h"
#include "train/lr_schedule.h"
#include "train/optim.h"
#include "core/backend.h"

// The CPU backend the optimizer runs its element ops on (one per test process).
static const Backend *cpu_be(void) {
    static Backend *be;
    SdcError err = {0};
    if (!be) SDC_CHECK(backend_cpu_create(&be, 1, &err) == 0);
    return be;
}

#define N_PARAMS 3
#define LR 1e-2
#define GROUP1_SCALE 0.5
#define MAX_NORM 1.0
#define STEPS 10
#define WARMUP 3
#define TOTAL 10
#define SCHED_LR 1e-3
#define SCHED_WARMUP 5
#define SCHED_TOTAL 20
#define SCHED_N 25

static const StEntry *need(const StFile *f, const char *name, const char *dtype) {
    const StEntry *e = st_find(f, name);
    if (!e || strcmp(e->dtype_str, dtype) != 0) {
        fprintf(stderr, "missing %s fixture tensor %s\n---> run python3 tools/make_optim_fixture.py\n", dtype, name);
        exit(1);
    }
    return e;
}

static const float *ref_f32(const StFile *f, const char *name, size_t *n) {
    const StEntry *e = need(f, name, "F32");
    *n = e->nbytes / sizeof(float);
    return (const float *)(f->data + e->offset);
}

// F64 tensors are not loadable as Tensors; copy the raw little-endian bytes.
static size_t ref_f64(const StFile *f, const char *name, double *out, size_t cap) {
    const StEntry *e = need(f, name, "F64");
    size_t n = e->nbytes / sizeof(double);
    if (n > cap) n = cap;
    memcpy(out, f->data + e->offset, n * sizeof(double));
    return n;
}

static int check_rel_f64(TestCtx *t, const char *name, const double *got, const double *ref, size_t n, double tol) {
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - ref[i]);
        if (!(d <= md)) md = d; // NaN propagates into md
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    double rel = md / (mr > 1e-300 ? mr : 1e-300);
    return check_true(t, rel <= tol, "%-36s rel_err=%.3e  tol=%.0e", name, rel, tol);
}

// ---- lr schedules ---------------------------------------------------------------

static void test_schedules(TestCtx *t, const StFile *f) {
    static const struct {
        const char *fixture, *name;
        int num_cycles;
        double power;
    } cases[] = {
        {"constant", "constant", 1, 1.0},
        {"constant_with_warmup", "constant_with_warmup", 1, 1.0},
        {"linear", "linear", 1, 1.0},
        {"cosine", "cosine", 1, 1.0},
        {"cosine_with_restarts", "cosine_with_restarts", 3, 1.0},
        {"polynomial", "polynomial", 1, 1.0},
        {"polynomial_p2", "polynomial", 1, 2.0},
    };
    for (int w = 0; w < 2; w++) {
        int64_t warmup = w == 0 ? SCHED_WARMUP : 0;
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            char name[96];
            snprintf(name, sizeof name, "sched.%s%s.lr", cases[c].fixture, w ? ".w0" : "");
            double ref[SCHED_N], got[SCHED_N];
            size_t n = ref_f64(f, name, ref, SCHED_N);
            SdcError err = {0};
            LrScheduleKind kind;
            LrSchedule s;
            if (lr_schedule_parse(cases[c].name, &kind, &err) ||
                lr_schedule_init(&s, kind, SCHED_LR, warmup, SCHED_TOTAL, cases[c].num_cycles, cases[c].power, &err)) {
                check_true(t, 0, "%s: %s", name, err.msg);
                continue;
            }
            for (size_t k = 0; k < n; k++) got[k] = lr_schedule_lr(&s, SCHED_LR, (int64_t)k);
            check_rel_f64(t, name, got, ref, n, 1e-12);
        }
    }
    // What diffusers rejects, and names it does not know.
    SdcError err = {0};
    LrSchedule s;
    LrScheduleKind kind;
    check_true(t, lr_schedule_init(&s, LR_POLYNOMIAL, 1e-3, 10, 10, 1, 1.0, &err) == SDC_ERR_ARG,
               "polynomial with warmup == total is refused");
    check_true(t, lr_schedule_init(&s, LR_POLYNOMIAL, 1e-8, 0, 10, 1, 1.0, &err) == SDC_ERR_ARG,
               "polynomial with lr <= lr_end is refused");
    check_true(t, lr_schedule_parse("piecewise_constant", &kind, &err) == SDC_ERR_UNSUPPORTED,
               "piecewise_constant is reported unsupported");
    check_true(t, lr_schedule_parse("cosine_annealing", &kind, &err) == SDC_ERR_ARG && strstr(err.msg, "--->"),
               "an unknown scheduler name is refused with a hint");
}

// ---- AdamW + clipping over a cosine schedule ------------------------------------

static void test_adamw(TestCtx *t, const StFile *f) {
    float *p[N_PARAMS], *g[N_PARAMS];
    const float *init[N_PARAMS], *grads[N_PARAMS];
    size_t n[N_PARAMS];
    OptimTensor ts[N_PARAMS];
    for (int i = 0; i < N_PARAMS; i++) {
        char name[64];
        size_t ng;
        snprintf(name, sizeof name, "adamw.p%d.init", i);
        init[i] = ref_f32(f, name, &n[i]);
        snprintf(name, sizeof name, "adamw.p%d.grads", i);
        grads[i] = ref_f32(f, name, &ng);
        if (ng != STEPS * n[i]) {
            check_true(t, 0, "%s holds %zu values, expected %d x %zu", name, ng, STEPS, n[i]);
            return;
        }
        p[i] = malloc(n[i] * sizeof(float));
        g[i] = calloc(n[i], sizeof(float));
        memcpy(p[i], init[i], n[i] * sizeof(float));
        ts[i] = (OptimTensor){p[i], g[i], n[i]};
    }
    // group 0 = p0, p1 at LR; group 1 = p2 at LR * GROUP1_SCALE
    AdamWGroupDesc groups[2] = {{.tensors = ts, .n_tensors = 2, .lr_scale = 1.0},
                                {.tensors = ts + 2, .n_tensors = 1, .lr_scale = GROUP1_SCALE}};
    AdamWConfig cfg = adamw_config_default();
    AdamW opt;
    LrSchedule sched;
    SdcError err = {0};
    if (adamw_init(&opt, cpu_be(), &cfg, groups, 2, &err) ||
        lr_schedule_init(&sched, LR_COSINE, LR, WARMUP, TOTAL, 1, 1.0, &err)) {
        check_true(t, 0, "adamw/schedule init: %s", err.msg);
        return;
    }
    double lrs[STEPS], ref_lr[STEPS];
    float norms[STEPS];
    int rc_all = 0;
    for (int k = 0; k < STEPS; k++) {
        for (int i = 0; i < N_PARAMS; i++) memcpy(g[i], grads[i] + (size_t)k * n[i], n[i] * sizeof(float));
        lrs[k] = lr_schedule_lr(&sched, LR, k);
        rc_all |= adamw_clip_grad_norm(&opt, MAX_NORM, &norms[k], &err);
        adamw_step(&opt, lrs[k]);
        adamw_zero_grad(&opt);
    }
    check_true(t, rc_all == 0, "clip over %d finite steps returned 0 (%s)", STEPS, rc_all ? err.msg : "ok");
    check_true(t, opt.step == STEPS, "step count %lld == %d", (long long)opt.step, STEPS);
    int zeroed = 1;
    for (int i = 0; i < N_PARAMS; i++)
        for (size_t j = 0; j < n[i]; j++) zeroed &= g[i][j] == 0.0f;
    check_true(t, zeroed, "adamw_zero_grad zeroes every gradient");

    ref_f64(f, "adamw.lr", ref_lr, STEPS);
    check_rel_f64(t, "adamw.lr (cosine, warmup 3)", lrs, ref_lr, STEPS, 1e-12);
    size_t nn;
    const float *ref_norm = ref_f32(f, "adamw.norm", &nn);
    check_rel(t, "adamw.norm (pre-clip)", norms, ref_norm, STEPS, 1e-6);
    int g_off[N_PARAMS] = {0, (int)n[0], 0}; // offset of each tensor's state inside its group
    AdamWGroup *owner[N_PARAMS] = {&opt.groups[0], &opt.groups[0], &opt.groups[1]};
    for (int i = 0; i < N_PARAMS; i++) {
        char name[64], label[64];
        size_t nr;
        snprintf(name, sizeof name, "adamw.p%d.final", i);
        const float *fin = ref_f32(f, name, &nr);
        check_rel(t, name, p[i], fin, n[i], 1e-6);
        float *dg = malloc(n[i] * sizeof(float)), *dr = malloc(n[i] * sizeof(float));
        for (size_t j = 0; j < n[i]; j++) {
            dg[j] = p[i][j] - init[i][j];
            dr[j] = fin[j] - init[i][j];
        }
        snprintf(label, sizeof label, "adamw.p%d.final - init", i);
        check_rel(t, label, dg, dr, n[i], 1e-4);
        free(dg);
        free(dr);
        snprintf(name, sizeof name, "adamw.p%d.m", i);
        check_rel(t, name, owner[i]->m + g_off[i], ref_f32(f, name, &nr), n[i], 1e-6);
        snprintf(name, sizeof name, "adamw.p%d.v", i);
        check_rel(t, name, owner[i]->v + g_off[i], ref_f32(f, name, &nr), n[i], 1e-6);
    }

    // The plain-list clip agrees with the optimizer's (step 1 clips: norm 2.8).
    for (int i = 0; i < N_PARAMS; i++) memcpy(g[i], grads[i] + n[i], n[i] * sizeof(float));
    float norm_list, norm_after;
    int rc = optim_clip_grad_norm(ts, N_PARAMS, MAX_NORM, &norm_list, &err);
    norm_after = optim_grad_norm(ts, N_PARAMS);
    check_true(t, rc == 0 && norm_list == norms[1], "optim_clip_grad_norm norm %.7g == adamw's %.7g", norm_list,
               norms[1]);
    check_true(t, fabsf(norm_after - 1.0f) < 1e-5f, "after clipping the norm is max_norm (%.7g)", norm_after);
    adamw_free(&opt);
    for (int i = 0; i < N_PARAMS; i++) {
        free(p[i]);
        free(g[i]);
    }
}

// ---- non-finite gradients -------------------------------------------------------

static void test_nonfinite(TestCtx *t) {
    float p0[8], g0[8], p1[5], g1[5], keep[5];
    fill_uniform(p0, 8, 1, -1, 1);
    fill_uniform(g0, 8, 2, -1, 1);
    fill_uniform(p1, 5, 3, -1, 1);
    const float bad[2] = {NAN, INFINITY};
    for (int b = 0; b < 2; b++) {
        fill_uniform(g1, 5, 4, -1, 1);
        g1[3] = bad[b];
        memcpy(keep, g1, sizeof keep);
        OptimTensor ts[2] = {{p0, g0, 8}, {p1, g1, 5}};
        AdamWGroupDesc gd = {.tensors = ts, .n_tensors = 2, .lr_scale = 1.0};
        AdamWConfig cfg = adamw_config_default();
        AdamW opt;
        SdcError err = {0};
        float norm = 0;
        if (adamw_init(&opt, cpu_be(), &cfg, &gd, 1, &err)) {
            check_true(t, 0, "adamw_init: %s", err.msg);
            return;
        }
        int rc = adamw_clip_grad_norm(&opt, MAX_NORM, &norm, &err);
        const char *what = b ? "Inf" : "NaN";
        check_true(t, rc == SDC_ERR_NONFINITE && strstr(err.msg, what) != NULL,
                   "%s gradient: status %d (want SDC_ERR_NONFINITE %d), the message names %s", what, rc,
                   SDC_ERR_NONFINITE, what);
        check_true(t, memcmp(g1, keep, sizeof keep) == 0, "%s gradient: grads left untouched", what);
        rc = optim_clip_grad_norm(ts, 2, MAX_NORM, &norm, &err);
        check_true(t, rc == SDC_ERR_NONFINITE && !isfinite(norm), "%s gradient: optim_clip_grad_norm too", what);
        adamw_free(&opt);
    }
    // Finite but huge gradients: the fp32 norm overflows to Inf.
    float big[2] = {3e38f, 3e38f}, pb[2] = {0};
    OptimTensor tb = {pb, big, 2};
    SdcError err = {0};
    check_true(t, optim_clip_grad_norm(&tb, 1, MAX_NORM, NULL, &err) == SDC_ERR_NONFINITE,
               "a norm that overflows fp32 is non-finite");
}

// ---- config checks and accumulation ---------------------------------------------

static void test_misc(TestCtx *t) {
    float p[4] = {0}, g[4] = {0};
    OptimTensor ts = {p, g, 4};
    AdamWGroupDesc gd = {.tensors = &ts, .n_tensors = 1, .lr_scale = 1.0};
    AdamWConfig cfg = adamw_config_default();
    AdamW opt;
    SdcError err = {0};
    cfg.beta1 = 1.0;
    check_true(t, adamw_init(&opt, cpu_be(), &cfg, &gd, 1, &err) == SDC_ERR_ARG, "beta1 = 1 is refused");
    cfg = adamw_config_default();
    OptimTensor empty = {p, NULL, 4};
    AdamWGroupDesc ge = {.tensors = &empty, .n_tensors = 1, .lr_scale = 1.0};
    check_true(t, adamw_init(&opt, cpu_be(), &cfg, &ge, 1, &err) == SDC_ERR_ARG, "a NULL gradient buffer is refused");

    // A group's own weight decay (torch's per-group "weight_decay"; DreamBooth's text encoders): with
    // zero gradients the Adam term is exactly 0, so one step leaves p * (1 - lr * lr_scale * wd) of
    // each group's own decay: group 0 the config's 1e-2, group 1 0.3 at half the lr.
    float q0[3] = {1.0f, -2.0f, 0.5f}, q1[3] = {1.0f, -2.0f, 0.5f}, z0[3] = {0}, z1[3] = {0};
    OptimTensor t0 = {q0, z0, 3}, t1 = {q1, z1, 3};
    AdamWGroupDesc two[2] = {{.tensors = &t0, .n_tensors = 1, .lr_scale = 1.0},
                             {.tensors = &t1, .n_tensors = 1, .lr_scale = 0.5, .has_weight_decay = 1,
                              .weight_decay = 0.3}};
    if (check_true(t, adamw_init(&opt, cpu_be(), &cfg, two, 2, &err) == 0, "two groups, one with its own decay")) {
        adamw_step(&opt, 1e-2);
        const float d0 = (float)(1.0 - 1e-2 * 1e-2), d1 = (float)(1.0 - 0.5e-2 * 0.3);
        const float init[3] = {1.0f, -2.0f, 0.5f};
        int ok = 1;
        for (int i = 0; i < 3; i++) ok &= q0[i] == init[i] * d0 && q1[i] == init[i] * d1;
        check_true(t, ok, "per-group weight decay: group 0 x %.9g (wd 1e-2), group 1 x %.9g (wd 0.3, lr x 0.5); got "
                   "%.9g, %.9g", d0, d1, q0[0], q1[0]);
        adamw_free(&opt);
    }
    two[1].weight_decay = -0.1;
    check_true(t, adamw_init(&opt, cpu_be(), &cfg, two, 2, &err) == SDC_ERR_ARG && strstr(err.msg, "group 1"),
               "a negative group weight decay is refused, naming the group (%s)", err.msg);

    // accelerate, accum 3, 7 batches per epoch: steps after batches 2, 5 and 6 (short tail).
    char seq[8] = {0};
    for (int i = 0; i < 7; i++) seq[i] = optim_accum_is_sync(i, 3, i == 6) ? 'S' : '.';
    check_true(t, strcmp(seq, "..S..SS") == 0, "accum 3 over 7 batches syncs as ..S..SS (got %s)", seq);
    int all = 1;
    for (int i = 0; i < 5; i++) all &= optim_accum_is_sync(i, 1, 0);
    check_true(t, all, "accum 1 syncs every batch");
    check_true(t, optim_accum_scale(4) == 0.25f && optim_accum_scale(1) == 1.0f, "accum scale is 1/accum");
}

int main(void) {
    TestCtx t = {0};
    StFile f;
    SdcError err = {0};
    if (st_open(&f, "tests/fixtures/ref-optim.safetensors", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    test_schedules(&t, &f);
    test_adamw(&t, &f);
    test_nonfinite(&t);
    test_misc(&t);
    st_close(&f);
    return test_summary(&t);
}
