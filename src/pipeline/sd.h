// sd.h: the Stable Diffusion pipeline: text -> image.
//
// An SdModel is the four parts loaded on one backend (tokenizer, CLIP text
// encoder, UNet, VAE). sd_txt2img runs classifier-free guidance the way
// diffusers does: the unconditional (negative prompt) half first in the
// batch, eps = uncond + cfg * (cond - uncond), guidance off at cfg <= 1.
#ifndef SDC_SD_H
#define SDC_SD_H

#include <stdint.h>

#include "core/arena.h"
#include "core/backend.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/unet.h"
#include "models/vae.h"
#include "sampling/scheduler.h"
#include "text/tokenizer.h"

typedef struct SdModel {
    const Backend *be;
    ModelFiles *files;
    ClipTokenizer *tok;
    ClipModel *clip;
    Unet *unet;
    Vae *vae;
} SdModel;

typedef struct GenParams {
    const char *prompt;
    const char *negative_prompt; // "" = empty prompt as the unconditional half
    int steps;
    float cfg_scale;
    SamplerKind sampler;
    uint64_t seed;
    int width, height; // pixels, multiples of 8
    int clip_skip;     // 0 = model default; A1111 semantics (2 = penultimate layer)
} GenParams;

// Called after every denoising step (step counts from 1).
typedef void (*ProgressFn)(void *user, int step, int total);

int sd_model_load(SdModel *m, const char *path, const char *config_dir, int prediction, const Backend *be,
                  SdcError *err);
void sd_model_free(SdModel *m);

// Generates one image into rgb (height, width, 3) u8.
int sd_txt2img(SdModel *m, const GenParams *p, uint8_t *rgb, ProgressFn progress, void *user, SdcError *err);

#endif
