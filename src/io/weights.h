// weights.h: opening the model files users have, in either layout, and
// looking up every parameter by its diffusers name.
//
// Layouts: (1) the original single file (SD 1.x/2.x `model.diffusion_model.*`,
// `first_stage_model.*`, `cond_stage_model.transformer.*` (SD 1.x) or
// `cond_stage_model.model.*` (SD 2.x OpenCLIP, fused in_proj), `model_ema.*`
// ignored); (2) a diffusers folder (`unet/`, `vae/`, `text_encoder/`,
// `tokenizer/`, each with config.json and diffusion_pytorch_model.safetensors
// or model.safetensors, or their shards and .fp16 variants; transformers 5's
// text encoders without the "text_model." prefix and diffusers < 0.14's VAE
// attention names read as diffusers reads them). Models ask for diffusers
// names only; the one name map (namemap.c) turns original names into diffusers names, with the few
// reshapes it needs (1x1 conv <-> linear in the VAE attention, row slices of
// OpenCLIP's fused in_proj), all as views without copies.
#ifndef SDC_WEIGHTS_H
#define SDC_WEIGHTS_H

#include "core/error.h"
#include "core/tensor.h"
#include "models/config.h"
#include "sampling/sched_config.h"

// COMP_TEXT_ENCODER_2: SDXL's second text encoder (text_encoder_2/).
typedef enum { COMP_TEXT_ENCODER = 0, COMP_UNET = 1, COMP_VAE = 2, COMP_TEXT_ENCODER_2 = 3, COMP_COUNT = 4 } Component;
typedef enum { LAYOUT_SINGLE_FILE = 0, LAYOUT_DIFFUSERS = 1 } WeightLayout;

typedef struct ModelFiles ModelFiles; // opaque

typedef struct ModelInfo {
    WeightLayout layout;
    SdFamily family;
    ClipConfig clip;
    UnetConfig unet;
    VaeConfig vae;
    char tokenizer_dir[1024]; // diffusers tokenizer/ folder, "" = shipped vocab
    // SDXL: the second text encoder (OpenCLIP ViT-bigG with its projection)
    // and its tokenizer folder; the context is the two encoders' penultimate
    // hidden states side by side, the pooled embedding the second's.
    int has_clip2;
    ClipConfig clip2;
    char tokenizer2_dir[1024];
    // The SDXL refiner: the second text encoder alone (text_encoder_2/, or
    // conditioner.embedders.0.model.* in a single file; `clip` and
    // tokenizer_dir are unset), the UNet conditioned on its hidden states,
    // five time ids (the aesthetic score in place of the target size).
    int refiner;
    // model_index.json's force_zeros_for_empty_prompt (SDXL: no negative
    // prompt gives zero negative embeddings, as diffusers does); 1 by default
    // for SDXL.
    int force_zeros_negative;
    // The scheduler config the samplers run on: the folder's (or config_dir's)
    // scheduler/scheduler_config.json, else SD's original one
    // (sched_config_sd); its prediction is the UNet's (the user's
    // --prediction-type included), always given.
    SchedConfig sched;
} ModelInfo;

// path: a .safetensors single file or a diffusers folder. config_dir
// (optional, may be NULL): a diffusers folder whose */config.json describe
// the architecture of a single file, as diffusers' from_single_file(config=)
// does; without it, the architecture is inferred from tensor shapes and SD
// 1.x/2.x constants (32 groups; 8 heads for SD 1.x; head dim 64 for SD 2.x).
// prediction: -1 = from config (or epsilon for SD 1.x, v for 768px SD 2.x),
// else a PredictionType the user gave.
int model_files_open(ModelFiles **out, const char *path, const char *config_dir, int prediction,
                     SdcError *err);
// The configs of a diffusers folder without its weights (what a model
// trained from scratch starts from: src/models/init.h). Every lookup of a
// tensor fails; the loaders' init mode (ModelLoadOpts.init) asks for none.
int model_files_open_configs(ModelFiles **out, const char *dir, SdcError *err);
void model_files_close(ModelFiles *m);
const ModelInfo *model_files_info(const ModelFiles *m);
// The path the model was opened from (for messages).
const char *model_files_path(const ModelFiles *m);
// The text of the scheduler_config.json that ModelInfo.sched was read from,
// or NULL (a single file without config_dir: sdc's built-in SD config).
const char *model_files_scheduler_json(const ModelFiles *m);

// Looks up a parameter by diffusers name within a component (e.g. COMP_UNET,
// "down_blocks.0.resnets.0.conv1.weight") and checks its shape against
// `shape` (ndim dims). The result is a CPU view into the mapped file, in the
// file's dtype (F32, F16 or BF16). Errors name the file, the tensor, the
// expected and the found shape.
int model_files_get(const ModelFiles *m, Component c, const char *name, int ndim,
                    const int64_t *shape, Tensor *out, SdcError *err);
// Takes the VAE weights from another file instead (A1111's --vae, diffusers'
// vae=AutoencoderKL.from_single_file(...)): an A1111 VAE file (original names
// without first_stage_model.), a whole SD checkpoint (its VAE), a diffusers
// AutoencoderKL .safetensors, or a diffusers vae/ folder, whose config.json
// gives the scaling factor (a file without one keeps the model's). The
// architecture stays the model's; a tensor of another shape fails at load,
// naming it.
int model_files_set_vae(ModelFiles *m, const char *path, SdcError *err);
// 1 if the component has a tensor of that diffusers name.
int model_files_has(const ModelFiles *m, Component c, const char *name);
// 1 if the file holds that 2-D tensor transposed (SDXL's OpenCLIP
// text_projection): model_files_get gives the diffusers shape over the file's
// bytes, which the caller must read transposed.
int model_files_transposed(const ModelFiles *m, Component c, const char *name);
// A tensor's bytes [p, p + bytes) are read and copied: where they lie in a
// mapped .safetensors file, its whole pages are given back (madvise
// MADV_DONTNEED), so a model converted at load (bf16 from an f32 file,
// training copies) does not keep the file resident beside its copy. A page
// touched again is read back from the file: never wrong, only slower. Other
// memory (a file read whole, e.g. .h5 or .ckpt) is left alone.
void model_files_drop_pages(const ModelFiles *m, const void *p, size_t bytes);
// Every tensor of a component, in name order: its diffusers name and its
// view (the file's dtype and shape; SDC_ERR_UNSUPPORTED for a dtype that is
// not F32, F16 or BF16), as model_files_get finds it. For sdc convert.
int model_files_count(const ModelFiles *m, Component c);
int model_files_at(const ModelFiles *m, Component c, int i, const char **name, Tensor *out, SdcError *err);

// A ModelFiles holding only a VAE: a diffusers vae/ folder (config.json and
// diffusion_pytorch_model.safetensors), as `sdc train vae` writes it. The
// other components are empty; ModelInfo.vae is the folder's config.
int model_files_open_vae(ModelFiles **out, const char *dir, SdcError *err);
// An AutoencoderKL config.json read as the VAE of a diffusers folder is.
int model_files_read_vae_config(VaeConfig *v, const char *config_json, SdcError *err);

#endif
