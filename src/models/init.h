// init.h: a model trained from scratch (issue 16): the parameters of a
// diffusers folder's configs, initialised as the PyTorch modules that
// diffusers and transformers construct are, and written as a diffusers
// folder any loader (sdc, diffusers) opens.
//
//   UNet (diffusers' UNet2DConditionModel: PyTorch's module defaults):
//     conv / linear weight  U(-1/sqrt(fan_in), 1/sqrt(fan_in))  (kaiming_uniform, a = sqrt 5)
//     their bias            U(-1/sqrt(fan_in), 1/sqrt(fan_in))
//     norm weight 1, bias 0
//   CLIP text encoder (transformers' CLIPPreTrainedModel._init_weights,
//   initializer_factor 1, initializer_range 0.02; D hidden, L layers):
//     token / position embedding  N(0, 0.02)
//     q, k, v                     N(0, D^-0.5 (2L)^-0.5)    out_proj N(0, D^-0.5)
//     fc1                         N(0, (2D)^-0.5)           fc2      N(0, D^-0.5 (2L)^-0.5)
//     text_projection             N(0, D^-0.5)
//     every linear bias 0; layer norm weight 1, bias 0
// Each tensor's values come from its own generator seeded by (seed, name),
// so they do not depend on the load order or on which stage loads what.
// Not initialised here: the VAE (it comes from a trained one: --vae, or
// `sdc train vae`).
#ifndef SDC_INIT_H
#define SDC_INIT_H

#include <stdint.h>

#include "core/error.h"
#include "models/config.h"
#include "models/params.h"

typedef enum { INIT_TORCH_DEFAULT = 0, INIT_CLIP } InitRule;

// Fills every tensor of t (F32 on the CPU) by the rule; clip: the text
// encoder's config (INIT_CLIP), else NULL.
int params_init(const ParamTable *t, InitRule rule, const ClipConfig *clip, uint64_t seed, SdcError *err);

// data/model_init.h writes a folder of such a model.
typedef struct ModelInitOpts {
    const char *config_dir; // a diffusers folder's configs: unet/, vae/, text_encoder/ config.json,
                            // scheduler/scheduler_config.json, model_index.json; tokenizer/ copied when present
                            // (else the shipped CLIP vocab); weights not needed
    const char *vae;        // the VAE's weights: a model (file or folder) or a diffusers vae/ folder
    const char *output;     // the new diffusers folder (must not exist)
    uint64_t seed;
    int quiet;
} ModelInitOpts;

#endif
