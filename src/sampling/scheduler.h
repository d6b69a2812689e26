// scheduler.h: the noise schedule and samplers, with diffusers' semantics.
//
// The SD schedule: betas scaled_linear from 0.00085 to 0.012 over 1000
// training steps; sigma_t = sqrt((1 - alphabar_t) / alphabar_t). A Sampler
// holds the chosen inference timesteps and sigmas for one run and advances a
// latent given the model output. Samplers here are k-diffusion style
// (sigma-space), as diffusers' Euler* schedulers are.
#ifndef SDC_SCHEDULER_H
#define SDC_SCHEDULER_H

#include <stddef.h>

#include "core/error.h"
#include "models/config.h"

#define SCHED_TRAIN_STEPS 1000
#define SCHED_MAX_STEPS 1000

typedef enum { SPACING_LEADING = 0, SPACING_TRAILING, SPACING_LINSPACE } TimestepSpacing;
typedef enum { SAMPLER_EULER = 0 } SamplerKind;

typedef struct Sampler {
    SamplerKind kind;
    PredictionType prediction;
    int steps;
    float timesteps[SCHED_MAX_STEPS];     // model timestep of step i (descending)
    float sigmas[SCHED_MAX_STEPS + 1];    // sigma of step i; sigmas[steps] = 0
    float init_noise_sigma;               // scale of the initial noise
    double alphas_cumprod[SCHED_TRAIN_STEPS];
} Sampler;

// Looks a sampler name up ("euler"); SDC_ERR_ARG with the list of known names.
int sampler_parse(const char *name, SamplerKind *out, SdcError *err);
const char *sampler_name(SamplerKind k);
// A1111's display name ("Euler"), for the PNG parameters chunk.
const char *sampler_display_name(SamplerKind k);

int sampler_init(Sampler *s, SamplerKind kind, int steps, TimestepSpacing spacing, int steps_offset,
                 PredictionType prediction, SdcError *err);
// The model input scaling c_in for step i: x / sqrt(sigma^2 + 1).
float sampler_input_scale(const Sampler *s, int i);
// Advances x (n floats) in place from step i to i + 1 given the model output.
void sampler_step(const Sampler *s, int i, float *x, const float *model_out, size_t n);

#endif
