// sched_config.h: a diffusers scheduler/scheduler_config.json, read the way
// diffusers reads it when a user builds any scheduler on it
// (`XScheduler.from_config(pipe.scheduler.config)`).
//
// What a field does depends on whether the file gives it. A field the file
// gives is used by every scheduler class that has it (PNDM's
// "timestep_spacing": "leading" makes Euler leading too). A field the file
// leaves out takes the default of the class the sampler runs as: diffusers
// records such fields in `_use_default_values` when it loads the folder's
// scheduler and drops them in from_config. So SD 1.5's original file (no
// "timestep_spacing") gives Euler linspace and DDIM leading, while the same
// file as diffusers >= 0.22 writes it gives leading to both; a DDIM on a
// PNDM file without "clip_sample" clips x0 to [-1, 1] (DDIM's default).
// SchedConfig keeps the given fields and the set of them (`have`);
// sampler_init_cfg (scheduler.h) resolves the rest for the sampler's class.
//
// Fields that change the images but that sdc does not implement
// (thresholding, final_sigmas_type "sigma_min", exponential sigmas, a
// UniPC corrector switched off, ...) are kept with their value and the classes
// that read them: a sampler of such a class refuses to start with a message
// naming the file, the field and the value. Fields that only name the sampler
// (algorithm_type, solver_order, skip_prk_steps, predict_x0: what "dpm++2m" or
// "pndm" means) are set by the sampler, as `from_config(config, **options)`.
//
// This file knows JSON and the field names; it knows no file layout (the
// model loader finds scheduler/scheduler_config.json, io/weights.c).
#ifndef SDC_SCHED_CONFIG_H
#define SDC_SCHED_CONFIG_H

#include <stddef.h>

#include "core/error.h"
#include "models/config.h"

#define SCHED_MAX_TRAIN_STEPS 1000 // num_train_timesteps sdc accepts: 2 .. this

typedef enum { SPACING_LEADING = 0, SPACING_TRAILING, SPACING_LINSPACE } TimestepSpacing;
typedef enum { BETAS_LINEAR = 0, BETAS_SCALED_LINEAR, BETAS_SQUAREDCOS_CAP_V2 } BetaSchedule;

// The diffusers scheduler classes sdc's samplers run as (bit masks).
enum {
    SCHED_CLASS_EULER = 1u << 0,   // EulerDiscreteScheduler
    SCHED_CLASS_EULER_A = 1u << 1, // EulerAncestralDiscreteScheduler
    SCHED_CLASS_HEUN = 1u << 2,    // HeunDiscreteScheduler
    SCHED_CLASS_LMS = 1u << 3,     // LMSDiscreteScheduler
    SCHED_CLASS_DDIM = 1u << 4,    // DDIMScheduler
    SCHED_CLASS_PNDM = 1u << 5,    // PNDMScheduler
    SCHED_CLASS_DDPM = 1u << 6,    // DDPMScheduler
    SCHED_CLASS_DPM = 1u << 7,     // DPMSolverMultistepScheduler
    SCHED_CLASS_UNIPC = 1u << 8,   // UniPCMultistepScheduler
    SCHED_CLASS_ALL = (1u << 9) - 1,
};

// SchedConfig.have: the fields the file gave.
enum {
    SCHED_HAS_TRAIN_STEPS = 1u << 0,
    SCHED_HAS_BETA_START = 1u << 1,
    SCHED_HAS_BETA_END = 1u << 2,
    SCHED_HAS_BETA_SCHEDULE = 1u << 3,
    SCHED_HAS_TRAINED_BETAS = 1u << 4,
    SCHED_HAS_PREDICTION = 1u << 5,
    SCHED_HAS_SPACING = 1u << 6,
    SCHED_HAS_STEPS_OFFSET = 1u << 7,
    SCHED_HAS_CLIP_SAMPLE = 1u << 8,
    SCHED_HAS_CLIP_RANGE = 1u << 9,
    SCHED_HAS_ALPHA_TO_ONE = 1u << 10,
    SCHED_HAS_KARRAS = 1u << 11,
    SCHED_HAS_ZERO_SNR = 1u << 12,
};

#define SCHED_MAX_UNSUPPORTED 16

typedef struct SchedUnsupported {
    char field[40];
    char value[48];   // as written in the file (shortened)
    unsigned classes; // SCHED_CLASS_* bits of the classes that read it
    int karras_only;  // matters only when the run uses Karras sigmas
} SchedUnsupported;

typedef struct SchedConfig {
    char path[512];       // the file read ("" = sdc's built-in SD config), for messages
    char class_name[64];  // "_class_name" ("" if none)
    unsigned have;        // SCHED_HAS_*
    int num_train_timesteps;
    double beta_start, beta_end; // Python floats, as diffusers gets them
    BetaSchedule beta_schedule;
    int n_trained;        // trained_betas given (n_trained == num_train_timesteps)
    float trained_betas[SCHED_MAX_TRAIN_STEPS];
    PredictionType prediction;
    TimestepSpacing spacing;
    int steps_offset;
    int clip_sample;
    double clip_sample_range;
    int set_alpha_to_one;
    int use_karras_sigmas;
    int rescale_betas_zero_snr;
    int n_unsupported;
    SchedUnsupported unsupported[SCHED_MAX_UNSUPPORTED];
} SchedConfig;

// The configuration SD 1.x / 2.x shipped with (runwayml/stable-diffusion-v1-5,
// stabilityai/stable-diffusion-2-1 scheduler_config.json): PNDMScheduler,
// scaled_linear betas 0.00085 .. 0.012 over 1000 steps, steps_offset 1,
// set_alpha_to_one false, clip_sample false, skip_prk_steps true, no
// timestep_spacing (each class its own default), and `prediction`. What sdc
// uses for a single-file model without a config folder, as diffusers'
// from_single_file takes the original repository's.
void sched_config_sd(SchedConfig *c, PredictionType prediction);
// SDXL's (stabilityai/stable-diffusion-xl-base-1.0 scheduler_config.json, what
// diffusers' from_single_file gives an SDXL file, base or refiner: its legacy
// path builds the same from SCHEDULER_DEFAULT_CONFIG with "euler"):
// EulerDiscreteScheduler, the same betas, steps_offset 1, timestep_spacing
// "leading", interpolation linear, no Karras sigmas, and `prediction`.
void sched_config_sdxl(SchedConfig *c, PredictionType prediction);

// Parses scheduler_config.json text (len bytes; Python's -Infinity allowed).
// what: the file name for messages. Malformed or impossible values (a
// timestep_spacing diffusers rejects, trained_betas of the wrong length, a
// prediction_type sdc has no model for) fail here, naming the field.
int sched_config_parse(SchedConfig *c, const char *json, size_t len, const char *what, SdcError *err);
// Reads and parses a file; text (may be NULL) gets its bytes, NUL-terminated,
// malloc'd (the caller frees), when it parses.
int sched_config_read(SchedConfig *c, const char *path, char **text, SdcError *err);

// The config as scheduler_config.json text that gives the same runs in
// diffusers and sdc: the given fields only, so that the others stay each
// class's default (a malloc'd string, NULL when out of memory). Unsupported
// fields are not written: where a file was read, copy its own text instead.
char *sched_config_to_json(const SchedConfig *c);

// "leading" / "trailing" / "linspace"; -1 for anything else.
int sched_spacing_parse(const char *s);
const char *sched_spacing_name(TimestepSpacing s);

#endif
