// scheduler.h: the SD noise schedule and every sampler users know, each with
// the semantics of the diffusers scheduler class of the same math.
//
// The schedule comes from the model's scheduler_config.json as diffusers
// reads it (sampling/sched_config.h): betas (linear, scaled_linear,
// squaredcos_cap_v2 or trained), zero-terminal-SNR rescaling, timestep
// spacing and offset, x0 clipping, set_alpha_to_one, Karras sigmas; fields
// the file leaves out take the default of the sampler's diffusers class.
// sampler_init keeps SD 1.5's original file (scaled_linear 0.00085 .. 0.012
// over 1000 steps, steps_offset 1) with the given spacing.
// sigma_t = sqrt((1 - alphabar_t) / alphabar_t).
//
//   sdc name        A1111 name        diffusers class (options)
//   euler           Euler             EulerDiscreteScheduler
//   euler_a         Euler a           EulerAncestralDiscreteScheduler
//   heun            Heun              HeunDiscreteScheduler (2 evaluations per step)
//   lms             LMS               LMSDiscreteScheduler (order 4)
//   ddim            DDIM              DDIMScheduler (eta, set_alpha_to_one False)
//   pndm            PNDM              PNDMScheduler (skip_prk_steps: PLMS)
//   ddpm            DDPM              DDPMScheduler (fixed_small variance)
//   dpm++2m         DPM++ 2M          DPMSolverMultistepScheduler (dpmsolver++, order 2)
//   dpm++2m_karras  DPM++ 2M Karras   ... use_karras_sigmas
//   dpm++2m_sde_karras DPM++ 2M SDE Karras ... sde-dpmsolver++, use_karras_sigmas
//   euler_karras, heun_karras, lms_karras: Euler/Heun/LMSDiscreteScheduler, use_karras_sigmas
//   dpm++2m_sde     DPM++ 2M SDE      ... algorithm_type sde-dpmsolver++
//   unipc           UniPC             UniPCMultistepScheduler (bh2, order 2, predict_x0)
//
// A Sampler is one run: its evaluation timesteps, sigmas, and the state its
// multistep method carries between steps, in buffers allocated once by
// sampler_init for latents of n floats. The loop a pipeline runs:
//
//   x = noise * s.init_noise_sigma                  (txt2img), or
//   b = sampler_begin_for_strength(&s, strength);
//   sampler_add_noise(&s, b, x0, noise, x)          (img2img)
//   for i in [b, sampler_num_evals(&s)):
//       out = unet(x * sampler_input_scale(&s, i), sampler_timestep(&s, i))
//       sampler_step(&s, i, x, out, rng)
//
// Stochastic samplers (euler_a, ddpm, dpm++2m_sde, ddim with eta > 0) draw
// their noise from rng inside sampler_step, one randn of n values per step
// when diffusers draws one, so a Rng seeded and used for the initial latent
// then passed here reproduces a diffusers pipeline run with
// generator=torch.Generator().manual_seed(seed).
#ifndef SDC_SCHEDULER_H
#define SDC_SCHEDULER_H

#include <stddef.h>

#include "core/error.h"
#include "models/config.h"
#include "sampling/rng.h"
#include "sampling/sched_config.h"

#define SCHED_TRAIN_STEPS 1000 // SD's num_train_timesteps
#define SCHED_MAX_STEPS 1000
typedef enum {
    SAMPLER_EULER = 0,
    SAMPLER_EULER_A,
    SAMPLER_HEUN,
    SAMPLER_LMS,
    SAMPLER_DDIM,
    SAMPLER_PNDM,
    SAMPLER_DDPM,
    SAMPLER_DPMPP_2M,
    SAMPLER_DPMPP_2M_KARRAS,
    SAMPLER_DPMPP_2M_SDE,
    SAMPLER_UNIPC,
    SAMPLER_DPMPP_2M_SDE_KARRAS,
    SAMPLER_EULER_KARRAS, // euler / heun / lms with use_karras_sigmas
    SAMPLER_HEUN_KARRAS,
    SAMPLER_LMS_KARRAS,
    SAMPLER_COUNT
} SamplerKind;

typedef struct Sampler {
    SamplerKind kind;       // the base method: *_KARRAS kinds run as their base kind with karras = 1
    PredictionType prediction;
    TimestepSpacing spacing;
    int karras;             // Karras sigmas (the kind's name or the config's use_karras_sigmas)
    int steps;              // inference steps asked for
    int n_evals;            // model evaluations in the whole run
    float eta;              // DDIM's eta (0 = deterministic); ignored by the others
    float init_noise_sigma; // scale of the initial noise (diffusers' init_noise_sigma)
    float *timesteps;       // (n_evals) UNet timestep at evaluation i (diffusers' scheduler.timesteps)
    float *sigmas;          // (n_sigmas) diffusers' scheduler.sigmas; NULL for ddim, pndm, ddpm
    int n_sigmas;
    int n_train;            // num_train_timesteps
    float alphas_cumprod[SCHED_MAX_TRAIN_STEPS]; // (n_train) float32, as torch computes them
    float final_abar;       // DDIM / PNDM: alphabar past the last step (set_alpha_to_one: 1)
    int clip;               // DDIM / DDPM / Heun clip_sample: x0 clamped to +-clip_range
    float clip_range;

    // ---- run state: set by sampler_init / sampler_reset, advanced by sampler_step
    size_t n;         // latent floats
    int n_done;       // steps taken in this run
    int n_hist, hist_cap;
    float *hist[4];   // (n) each, oldest first: LMS derivatives, PNDM ets, DPM/UniPC x0 predictions, Heun d
    float *saved;     // (n) Heun/PNDM sample of the first-order half; UniPC last_sample
    float *noise;     // (n) randn for the stochastic samplers
    float *tmp;       // (n) scratch (converted model output)
    int heun_pending; // Heun: the next evaluation is the second-order half of the step
    float heun_dt;    // Heun: dt of that step
    int unipc_order;  // UniPC: order of the previous predictor (the corrector's order)
    float *mem;       // the one allocation behind all the buffers above
} Sampler;

// Looks a sampler name up, case-insensitive: the sdc names above or A1111's
// display names ("Euler a", "DPM++ 2M Karras"); SDC_ERR_ARG lists the known names.
int sampler_parse(const char *name, SamplerKind *out, SdcError *err);
const char *sampler_name(SamplerKind k);
// A1111's display name ("Euler a"), for the PNG parameters chunk.
const char *sampler_display_name(SamplerKind k);
// The class's default timestep_spacing, what XScheduler.from_config(SD 1.5's
// original config) gives: leading for ddim, pndm, ddpm; linspace for the others.
TimestepSpacing sampler_default_spacing(SamplerKind k);

// The diffusers class a sampler runs as (SCHED_CLASS_*) and its name.
unsigned sampler_class(SamplerKind k);
const char *sampler_class_name(SamplerKind k);
// 1 if the sampler's class has use_karras_sigmas (euler, heun, lms, dpm++*, unipc).
int sampler_has_karras(SamplerKind k);
// The *_karras sampler that is k with Karras sigmas (euler -> euler_karras),
// or k itself (unipc: the same sampler, Karras sigmas from the config).
SamplerKind sampler_karras_twin(SamplerKind k);

// Builds the run for `steps` inference steps and latents of n_latent floats
// from a scheduler config (sched_config.h): what diffusers does with
// `Class.from_config(config, **options of the sampler)`. cfg->prediction is
// used when cfg->have has SCHED_HAS_PREDICTION (else epsilon). A field of
// cfg that sdc does not implement and the sampler's class reads fails here
// (SDC_ERR_UNSUPPORTED, naming the file, the field and the value).
// eta: DDIM's eta (pass 0 for the others).
int sampler_init_cfg(Sampler *s, SamplerKind kind, int steps, const SchedConfig *cfg, float eta, size_t n_latent,
                     SdcError *err);
// sampler_init_cfg on SD 1.5's original config (sched_config_sd) with this
// spacing and prediction given.
int sampler_init(Sampler *s, SamplerKind kind, int steps, TimestepSpacing spacing, PredictionType prediction,
                 float eta, size_t n_latent, SdcError *err);
void sampler_free(Sampler *s);
// Clears the multistep state so the same Sampler can run again.
void sampler_reset(Sampler *s);

// Model evaluations in the whole run (Heun: 2*steps-1; PNDM: steps+1).
int sampler_num_evals(const Sampler *s);
// The timestep to give the UNet at evaluation i.
float sampler_timestep(const Sampler *s, int i);
// c_in, the factor on the latent before the UNet at evaluation i (diffusers'
// scale_model_input): 1/sqrt(sigma^2+1) for euler, euler_a, heun, lms; 1 otherwise.
float sampler_input_scale(const Sampler *s, int i);
// Advances x (n floats) in place after evaluation i given the model output
// (n floats, after guidance). Evaluations run in order from the run's first
// one. rng: the pipeline's generator, continued (may be NULL for the
// deterministic samplers).
void sampler_step(Sampler *s, int i, float *x, const float *model_out, Rng *rng);

// img2img: the first evaluation for diffusers' strength semantics
// (init_timestep = min(int(steps*strength), steps), t_start = steps -
// init_timestep, first = t_start * order). n_evals means nothing is left to do.
int sampler_begin_for_strength(const Sampler *s, double strength);
// SDXL's ensemble of experts (diffusers' denoising_end / denoising_start,
// a fraction f of the schedule: the cut is the discrete timestep
// int(round(N - f * N)), N = num_train_timesteps, Python's round).
// sampler_end_for_denoising: the evaluation a run from `first` stops
// before, keeping those whose timestep is at or above the cut
// (StableDiffusionXLPipeline(denoising_end)). sampler_begin_for_denoising:
// the first evaluation of a run that continues from the cut, the last n
// evaluations where n counts the timesteps below it, plus one for a
// second-order sampler (Heun) when n is even, so that the run begins on a
// step's first half (StableDiffusionXLImg2ImgPipeline.get_timesteps with
// denoising_start).
int sampler_end_for_denoising(const Sampler *s, int first, double end);
int sampler_begin_for_denoising(const Sampler *s, double start);
// diffusers' scheduler.add_noise(x0, noise, timestep of evaluation i) into out
// (n floats each; out may alias x0): x0 + sigma*noise for euler, euler_a,
// heun, lms; alpha*x0 + sigma*noise (alpha = 1/sqrt(sigma^2+1)) for dpm++*,
// unipc; sqrt(abar)*x0 + sqrt(1-abar)*noise for ddim, pndm, ddpm.
// Inpainting re-noises the known region after step i with evaluation i+1.
void sampler_add_noise(const Sampler *s, int i, const float *x0, const float *noise, float *out);

#endif
