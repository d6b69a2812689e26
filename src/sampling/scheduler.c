// scheduler.c: the SD noise schedule and the Euler sampler (see scheduler.h).
#include "sampling/scheduler.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name, *display;
    SamplerKind kind;
} SAMPLERS[] = {
    {"euler", "Euler", SAMPLER_EULER},
};
#define N_SAMPLERS (int)(sizeof SAMPLERS / sizeof SAMPLERS[0])

int sampler_parse(const char *name, SamplerKind *out, SdcError *err) {
    for (int i = 0; i < N_SAMPLERS; i++)
        if (!strcmp(name, SAMPLERS[i].name)) {
            *out = SAMPLERS[i].kind;
            return 0;
        }
    char list[256] = "";
    for (int i = 0; i < N_SAMPLERS; i++) {
        strcat(list, i ? ", " : "");
        strcat(list, SAMPLERS[i].name);
    }
    return sdc_err(err, SDC_ERR_ARG, "unknown sampler '%s' ---> known samplers: %s", name, list);
}

const char *sampler_name(SamplerKind k) { return SAMPLERS[k].name; }
const char *sampler_display_name(SamplerKind k) { return SAMPLERS[k].display; }

// Linear interpolation of sigma at a fractional training timestep t.
static double sigma_at(const double *sig, double t) {
    if (t <= 0) return sig[0];
    if (t >= SCHED_TRAIN_STEPS - 1) return sig[SCHED_TRAIN_STEPS - 1];
    int lo = (int)floor(t);
    double f = t - lo;
    return sig[lo] * (1 - f) + sig[lo + 1] * f;
}

int sampler_init(Sampler *s, SamplerKind kind, int steps, TimestepSpacing spacing, int steps_offset,
                 PredictionType prediction, SdcError *err) {
    if (steps < 1 || steps > SCHED_MAX_STEPS)
        return sdc_err(err, SDC_ERR_ARG, "--steps %d out of range ---> use 1 to %d", steps, SCHED_MAX_STEPS);
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->prediction = prediction;
    s->steps = steps;

    // scaled_linear betas, reproducing torch's float32 arithmetic: linspace
    // in float (from both ends), squared; cumprod accumulates in double and
    // stores float; sigma = sqrt((1 - abar) / abar) in float.
    double sig[SCHED_TRAIN_STEPS], prod = 1.0;
    const float b0 = sqrtf(0.00085f), b1 = sqrtf(0.012f);
    const float step = (b1 - b0) / (float)(SCHED_TRAIN_STEPS - 1);
    for (int t = 0; t < SCHED_TRAIN_STEPS; t++) {
        float b = t < SCHED_TRAIN_STEPS / 2 ? b0 + step * (float)t
                                            : b1 - step * (float)(SCHED_TRAIN_STEPS - 1 - t);
        b = b * b;
        prod *= (double)(1.0f - b);
        float abar = (float)prod;
        s->alphas_cumprod[t] = abar;
        sig[t] = sqrtf((1.0f - abar) / abar);
    }

    for (int i = 0; i < steps; i++) {
        double t;
        if (spacing == SPACING_LINSPACE) {
            t = steps == 1 ? SCHED_TRAIN_STEPS - 1
                           : (double)(SCHED_TRAIN_STEPS - 1) * (steps - 1 - i) / (steps - 1);
        } else if (spacing == SPACING_LEADING) {
            int ratio = SCHED_TRAIN_STEPS / steps;
            t = (double)((steps - 1 - i) * ratio + steps_offset);
        } else { // trailing
            double ratio = (double)SCHED_TRAIN_STEPS / steps;
            t = round(SCHED_TRAIN_STEPS - i * ratio) - 1;
        }
        s->timesteps[i] = (float)t;
        s->sigmas[i] = (float)sigma_at(sig, t);
    }
    s->sigmas[steps] = 0.0f;
    double smax = s->sigmas[0];
    s->init_noise_sigma = spacing == SPACING_LEADING ? (float)sqrt(smax * smax + 1.0) : (float)smax;
    return 0;
}

float sampler_input_scale(const Sampler *s, int i) {
    double sg = s->sigmas[i];
    return (float)(1.0 / sqrt(sg * sg + 1.0));
}

void sampler_step(const Sampler *s, int i, float *x, const float *model_out, size_t n) {
    float sg = s->sigmas[i], dt = s->sigmas[i + 1] - sg;
    if (s->prediction == PRED_V) {
        float c_out = -sg / sqrtf(sg * sg + 1.0f), c_skip = 1.0f / (sg * sg + 1.0f);
        for (size_t k = 0; k < n; k++) {
            float x0 = model_out[k] * c_out + x[k] * c_skip;
            float d = (x[k] - x0) / sg;
            x[k] += d * dt;
        }
    } else {
        for (size_t k = 0; k < n; k++) x[k] += model_out[k] * dt; // derivative = eps
    }
}
