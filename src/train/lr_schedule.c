// lr_schedule.c: diffusers' lr lambdas (see lr_schedule.h). Every expression
// keeps Python's evaluation order in double so the lr sequence agrees with
// torch to the last bit or two (only libm's cos/pow may differ by an ulp).
#include "train/lr_schedule.h"

#include <math.h>
#include <string.h>

// No fused multiply-add: Python rounds a*b before adding c.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

static const struct {
    const char *name;
    LrScheduleKind kind;
} LR_NAMES[] = {
    {"constant", LR_CONSTANT},
    {"constant_with_warmup", LR_CONSTANT_WITH_WARMUP},
    {"linear", LR_LINEAR},
    {"cosine", LR_COSINE},
    {"cosine_with_restarts", LR_COSINE_WITH_RESTARTS},
    {"polynomial", LR_POLYNOMIAL},
};
#define N_LR_NAMES ((int)(sizeof LR_NAMES / sizeof LR_NAMES[0]))

int lr_schedule_parse(const char *name, LrScheduleKind *out, SdcError *err) {
    for (int i = 0; i < N_LR_NAMES; i++)
        if (strcmp(name, LR_NAMES[i].name) == 0) {
            *out = LR_NAMES[i].kind;
            return SDC_OK;
        }
    if (strcmp(name, "piecewise_constant") == 0)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "lr scheduler 'piecewise_constant' is not supported"
                       "\n---> use constant, constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial");
    return sdc_err(err, SDC_ERR_ARG, "unknown lr scheduler '%s'\n---> use constant, constant_with_warmup, "
                   "linear, cosine, cosine_with_restarts or polynomial", name);
}

const char *lr_schedule_name(LrScheduleKind kind) {
    for (int i = 0; i < N_LR_NAMES; i++)
        if (LR_NAMES[i].kind == kind) return LR_NAMES[i].name;
    return "?";
}

int lr_schedule_init(LrSchedule *s, LrScheduleKind kind, double base_lr, int64_t warmup_steps,
                     int64_t training_steps, int num_cycles, double power, SdcError *err) {
    memset(s, 0, sizeof *s);
    if ((int)kind < 0 || kind > LR_POLYNOMIAL) return sdc_err(err, SDC_ERR_ARG, "bad lr schedule kind %d", (int)kind);
    if (warmup_steps < 0 || training_steps < 0)
        return sdc_err(err, SDC_ERR_ARG, "lr scheduler %s: negative step count (warmup %lld, total %lld)",
                       lr_schedule_name(kind), (long long)warmup_steps, (long long)training_steps);
    s->kind = kind;
    s->warmup_steps = warmup_steps;
    s->training_steps = training_steps;
    s->num_cycles = kind == LR_COSINE ? 0.5 : (double)num_cycles;
    s->power = power;
    s->lr_end = 1e-7;
    s->lr_init = base_lr;
    if (kind == LR_POLYNOMIAL) {
        if (!(base_lr > s->lr_end))
            return sdc_err(err, SDC_ERR_ARG, "lr scheduler polynomial: lr_end (%g) must be smaller than the lr (%g)",
                           s->lr_end, base_lr);
        if (training_steps == warmup_steps)
            return sdc_err(err, SDC_ERR_ARG, "lr scheduler polynomial: no decay steps (warmup == total == %lld)"
                           "\n---> use fewer warmup steps", (long long)warmup_steps);
    }
    return SDC_OK;
}

static int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

double lr_schedule_factor(const LrSchedule *s, int64_t step) {
    const int64_t w = s->warmup_steps, t = s->training_steps;
    if (s->kind == LR_CONSTANT) return 1.0;
    // Every warmup is float(step) / float(max(1, W)).
    if (step < w) return (double)step / (double)max_i64(1, w);
    switch (s->kind) {
    case LR_CONSTANT_WITH_WARMUP: return 1.0;
    case LR_LINEAR: {
        // f_min + (f_max - f_min) * max(0, progress) with f_min 0, f_max 1 is exact
        double progress = (double)(t - step) / (double)max_i64(1, t - w);
        return progress > 0.0 ? progress : 0.0;
    }
    case LR_COSINE: {
        double progress = (double)(step - w) / (double)max_i64(1, t - w);
        double f = 0.5 * (1.0 + cos(M_PI * s->num_cycles * 2.0 * progress));
        return f > 0.0 ? f : 0.0;
    }
    case LR_COSINE_WITH_RESTARTS: {
        double progress = (double)(step - w) / (double)max_i64(1, t - w);
        if (progress >= 1.0) return 0.0;
        // Python's % on non-negative floats is fmod
        double f = 0.5 * (1.0 + cos(M_PI * fmod(s->num_cycles * progress, 1.0)));
        return f > 0.0 ? f : 0.0;
    }
    case LR_POLYNOMIAL: {
        if (step > t) return s->lr_end / s->lr_init;
        double lr_range = s->lr_init - s->lr_end;
        double pct_remaining = 1.0 - (double)(step - w) / (double)(t - w);
        double decay = lr_range * pow(pct_remaining, s->power) + s->lr_end;
        return decay / s->lr_init;
    }
    default: return 1.0;
    }
}

double lr_schedule_lr(const LrSchedule *s, double base_lr, int64_t step) {
    return base_lr * lr_schedule_factor(s, step);
}
