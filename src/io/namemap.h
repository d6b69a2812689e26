// namemap.h: the one map between the original single-file parameter names
// (CompVis/Stability `model.diffusion_model.*`, `first_stage_model.*`,
// `cond_stage_model.transformer.*` / `cond_stage_model.model.*`) and the
// diffusers names models ask for. Data-driven: a table of prefix rules (the
// UNet and VAE block rules generated from the config, since input_blocks.N
// depends on levels and layers_per_block), each with an optional table of
// inner renames (resnet, VAE attention, OpenCLIP layer). Two kinds of entry
// are not plain renames, both views without copies:
//   NM_CONV_TO_LINEAR  VAE attention q/k/v/proj_out (C, C, 1, 1) -> (C, C)
//   NM_ROW_SLICE       OpenCLIP attn.in_proj_weight (3D, D) / _bias (3D) ->
//                      q/k/v rows [s*D, (s+1)*D)
// Works in both directions (namemap_to_original serves error messages and
// writing files back in the original layout).
#ifndef SDC_NAMEMAP_H
#define SDC_NAMEMAP_H

#include "io/weights.h"
#include "models/config.h"

#define NAMEMAP_MAX_RULES 640
#define NAMEMAP_NAME_MAX 256

// NM_TRANSPOSE: a 2-D tensor the file holds transposed (SDXL's OpenCLIP
// text_projection, x @ P, is diffusers' Linear weight P^T): the loader
// transposes it (model_files_transposed).
typedef enum { NM_PLAIN = 0, NM_CONV_TO_LINEAR = 1, NM_ROW_SLICE = 2, NM_TRANSPOSE = 3 } NameMapKind;

typedef struct NameMapping {
    Component comp;
    char name[NAMEMAP_NAME_MAX]; // diffusers name (from_original) or original name (to_original)
    NameMapKind kind;
    int slice;                   // NM_ROW_SLICE: 0 = q, 1 = k, 2 = v (of 3 equal row blocks)
} NameMapping;

typedef struct NameRule {
    Component comp;
    char orig[80], diff[80];  // prefixes; '#' matches / writes one decimal number
    int inner;                // index of an inner rename table, -1 none
} NameRule;

// The text encoders' layout in a single file: SD 1.x's CLIP
// (cond_stage_model.transformer.*), SD 2.x's OpenCLIP (cond_stage_model.model.*),
// or SDXL's two (conditioner.embedders.0.transformer.* CLIP,
// conditioner.embedders.1.model.* OpenCLIP with its projection), or the
// SDXL refiner's one (conditioner.embedders.0.model.* OpenCLIP with its
// projection, the second text encoder).
enum { NM_TEXT_CLIP = 0, NM_TEXT_OPENCLIP = 1, NM_TEXT_XL = 2, NM_TEXT_XL_REFINER = 3 };

typedef struct NameMap {
    int openclip;             // the text layout: NM_TEXT_*
    int n;
    NameRule rules[NAMEMAP_MAX_RULES];
} NameMap;

// Builds the rules for a UNet / VAE of the given shape (levels,
// layers_per_block, which up levels have attention, mid attention).
int namemap_init(NameMap *nm, const UnetConfig *unet, const VaeConfig *vae, int text_layout, SdcError *err);
// Maps one original name to up to 3 diffusers names (3 for a fused in_proj).
// Returns the count (-1 if a name would exceed NAMEMAP_NAME_MAX); 0 for tensors no model uses (model_ema.*, OpenCLIP
// text_projection / logit_scale, scheduler buffers like alphas_cumprod).
int namemap_from_original(const NameMap *nm, const char *orig, NameMapping out[3]);
// The original name holding a diffusers parameter; 0 on success, -1 if none
// (or too long).
int namemap_to_original(const NameMap *nm, Component c, const char *diff, NameMapping *out);
// The original single-file prefix of a component ("model.diffusion_model.", ...).
const char *namemap_prefix(const NameMap *nm, Component c);

#endif
