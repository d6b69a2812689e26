// sd.h: the Stable Diffusion pipeline: text -> image.
//
// An SdModel is the four parts loaded on one backend (tokenizer, CLIP text
// encoder, UNet, VAE); SDXL adds the second text encoder and its tokenizer,
// and the SDXL refiner has only that one (tok and clip NULL). sd_txt2img runs classifier-free guidance the way
// diffusers does: the unconditional (negative prompt) half first in the
// batch, eps = uncond + cfg * (cond - uncond), guidance off at cfg <= 1.
#ifndef SDC_SD_H
#define SDC_SD_H

#include <stdint.h>

#include "core/arena.h"
#include "core/backend.h"
#include "io/lora.h"
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
    ClipTokenizer *tok2; // SDXL: the second text encoder and its tokenizer, else NULL
    ClipModel *clip2;    // (the SDXL refiner: the only one; tok, clip NULL)
    Unet *unet;
    Vae *vae;
} SdModel;

typedef enum { GEN_TXT2IMG = 0, GEN_IMG2IMG = 1, GEN_INPAINT = 2 } GenMode;

// SDXL's micro-conditioning, diffusers' StableDiffusionXLPipeline arguments
// in pixels (height first); 0 = diffusers' default: original and target
// size (height, width) of the request, crop (0, 0). The negative ones apply
// to the unconditional rows as each diffusers pipeline applies them: text-
// to-image when both the negative original and target sizes are given
// (else those rows take the positive ids); image-to-image and inpainting
// each negative size given, with the positive crop. The refiner (5 time
// ids) takes an aesthetic score instead of the target size, 6.0 and 2.5
// (negative) by default, and its negative rows the negative crop.
typedef struct SdxlCond {
    int original_h, original_w, crop_top, crop_left, target_h, target_w;
    int neg_original_h, neg_original_w, neg_crop_top, neg_crop_left, neg_target_h, neg_target_w;
    float aesthetic_score, neg_aesthetic_score; // 0 = 6.0 / 2.5
} SdxlCond;

// One generation request: `batch` items, item i drawing all its noise from
// its own generator seeded with seed + i (diffusers with a list of
// generators; A1111 and stable-diffusion.cpp number seeds the same way).
typedef struct GenParams {
    GenMode mode;
    int steps;
    float cfg_scale; // <= 1: no guidance, one UNet row per item
    SamplerKind sampler;
    float eta;       // DDIM's eta (0 = deterministic)
    uint64_t seed;
    int width, height; // pixels, multiples of 8
    int batch;         // items denoised together (UNet batch 2*batch with guidance)
    double strength;   // img2img, inpaint: diffusers' strength (1 = start from pure noise)
    const float *init_image; // (3, H, W) in [-1, 1]: img2img, inpaint (image_to_tensor)
    const float *mask;       // (H, W) in {0, 1}, 1 = repaint: inpaint (mask_to_tensor)
    int vae_tile;            // VAE decode tile in latent pixels (overlap a quarter): 0 = auto
                             // (vae_tiling_auto: above 1 GiB), < 0 = never
    // The schedule: the model's scheduler config (ModelInfo.sched, read as
    // diffusers reads it) unless sched is given; the run's overrides on top,
    // as A1111's schedule options: timestep_spacing "leading" | "trailing" |
    // "linspace" (NULL or "": the config's), karras 1 = Karras sigmas (for the
    // samplers whose diffusers class has use_karras_sigmas).
    const SchedConfig *sched;
    const char *timestep_spacing;
    int karras;
    SdxlCond xl;       // SDXL's micro-conditioning (ignored by SD 1.x/2.x)
    // SDXL's ensemble of experts, diffusers' denoising_end / denoising_start
    // (fractions in (0, 1) of the schedule; 0 = not given), for text-to-
    // image and image-to-image. denoising_end: the run keeps the evaluations
    // whose timestep is at or above the cut (sampler_end_for_denoising); its
    // latents are the refiner's input (the base with output_type="latent").
    // denoising_start: mode GEN_IMG2IMG from init_latents (batch, 4, h, w),
    // taken as they are (no VAE, no noise; strength unused), from the
    // evaluation sampler_begin_for_denoising gives; each item's generator
    // starts again from its seed (diffusers with a fresh generator per pipeline).
    double denoising_end, denoising_start;
    const float *init_latents;
} GenParams;

// Called after every model evaluation (step counts from 1).
typedef void (*ProgressFn)(void *user, int step, int total);

// The model's tokenizer: its tokenizer/ folder, else the shipped vocab with
// the special tokens of SD 1.x's tokenizer folder, or SD 2.x's when the model
// pads with "!" (what diffusers' from_single_file gives either).
int sd_tokenizer_load(ClipTokenizer **out, const ModelInfo *info, SdcError *err);
int sd_model_load(SdModel *m, const char *path, const char *config_dir, int prediction, const Backend *be,
                  SdcError *err);
// What sd_model_load_opts adds: LoRAs (io/lora.h), each merged into the text
// encoder and UNet weights it targets with its weight (0: checked, not applied).
typedef struct SdLoadOpts {
    const LoraSpec *loras;
    int n_loras;
    const char *vae; // the VAE from this file or folder instead (model_files_set_vae), or NULL
} SdLoadOpts;
int sd_model_load_opts(SdModel *m, const char *path, const char *config_dir, int prediction, const Backend *be,
                       const SdLoadOpts *o, SdcError *err);
void sd_model_free(SdModel *m);
// The config of the model's first text encoder (the SDXL refiner's only
// one): its max_positions is the context length.
const ClipConfig *sd_text_config(const SdModel *m);
// How much smaller than the image the latents are: the VAE's
// vae_scale_factor (8 for SD's VAE, 4 for a 3-level one; diffusers'
// pipelines take the same 2^(levels-1)).
int sd_latent_factor(const SdModel *m);

// Text conditioning: ctx (2, L, D) host floats, row 0 the negative prompt
// ("" = the empty prompt), row 1 the prompt. Warns when a prompt is cut to
// the 77-token window. clip_skip: 0 = model default, 2 = penultimate layer.
// SDXL: ctx (2, L, D1 + D2), the two encoders' hidden_states[-(clip_skip + 1)]
// side by side (clip_skip 0 or 1: the penultimate), then the pooled
// embeddings (2, P) of the second encoder (the SDXL refiner: its one
// encoder's hidden states (2, L, D2), then the pooled rows, as diffusers'
// encode_prompt with text_encoder None); with force_zeros_for_empty_prompt
// (ModelInfo) a NULL or empty negative prompt gives zeros (diffusers'
// negative_prompt=None). sd_cond_floats gives the size of ctx in floats.
size_t sd_cond_floats(const SdModel *m);
int sd_encode_prompt(SdModel *m, const char *prompt, const char *negative, int clip_skip, float *ctx,
                     SdcError *err);

// Checks a request against the model (sizes, mode, inputs, strength) without
// running it; sd_generate runs the same checks.
int sd_check_params(const SdModel *m, const GenParams *p, SdcError *err);

// Device bytes a request needs beyond the weights (UNet, VAE and pipeline
// activations, as planned), without allocating: the runner refuses a request
// that cannot fit before any work starts.
int sd_plan_bytes(SdModel *m, const GenParams *p, size_t *bytes, SdcError *err);

// Runs one request. ctx: from sd_encode_prompt (sd_cond_floats floats). Outputs (either
// may be NULL): latents (batch, 4, h, w) after the last step, images (batch,
// 3, H, W) decoded by the VAE in [-1, 1] (unclamped; image_from_vae turns
// them into pixels). The UNet's kind decides inpainting: 9 input channels
// get [latent, mask, masked-image latent]; 4 get the re-noised original
// blended outside the mask after every step (diffusers' legacy inpainting).
int sd_generate(SdModel *m, const GenParams *p, const float *ctx, float *latents, float *images,
                ProgressFn progress, void *user, SdcError *err);

// sd_generate in steps, for a caller that runs the UNet passes itself (a
// pipeline over ranks keeps several runs in flight, mpi/pp.h):
//   sd_run_begin(m, p, ctx, &r, err);
//   while (!sd_run_next(r, &x, &ts, &c, &out)) { out = UNet(x, ts, c); sd_run_step(r, ...); }
//   sd_run_finish(r, latents, images, err); sd_run_free(r);
// gives what sd_generate gives, bit for bit. Runs share the model's VAE and
// UNet arenas: begin and finish use the VAE, begin plans the UNet for the
// run's rows.
typedef struct SdRun SdRun;
int sd_run_begin(SdModel *m, const GenParams *p, const float *ctx, SdRun **out, SdcError *err);
// The next evaluation's UNet input, time steps, context and output tensor
// (on the model's backend): 0 when one is due, 1 when the denoising is done.
int sd_run_next(SdRun *r, Tensor **x, const float **timesteps, Tensor **ctx, Tensor **out);
// After *out holds the UNet's output for the inputs sd_run_next gave:
// guidance and the samplers' step (progress called as sd_generate calls it).
int sd_run_step(SdRun *r, ProgressFn progress, void *user, SdcError *err);
// Latents (batch, 4, h, w) and/or images (batch, 3, H, W), either may be NULL.
int sd_run_finish(SdRun *r, float *latents, float *images, SdcError *err);
void sd_run_free(SdRun *r);

#endif
