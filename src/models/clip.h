// clip.h: the CLIP text encoder of Stable Diffusion (transformers
// CLIPTextModel semantics): token + position embeddings, pre-LN transformer
// layers with causal self-attention, an MLP with quick_gelu (SD 1.x) or gelu
// (SD 2.x), and the final layer norm. It maps token ids to the hidden states
// the UNet cross-attends to; it does not tokenize (src/text) and has no
// pooled/projection output (SD does not use it).
//
// Parameters live in one arena sized by a measuring load; activations in one
// arena planned by clip_reserve (a measuring forward pass), so clip_encode
// never allocates.
#ifndef SDC_CLIP_H
#define SDC_CLIP_H

#include <stdint.h>

#include "core/backend.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/config.h"
#include "models/params.h"

typedef struct ClipModel ClipModel;

// Loads every text-encoder parameter of mf (diffusers names
// text_model.*) onto be. The config comes from model_files_info(mf)->clip.
int clip_load(ClipModel **out, const ModelFiles *mf, const Backend *be, SdcError *err);
// The same with options; o->trainable (training, CPU fp32 only) makes every
// parameter an F32 copy in one arena, named in clip_param_table.
int clip_load_opts(ClipModel **out, const ModelFiles *mf, const Backend *be, const ModelLoadOpts *o,
                   SdcError *err);

// Plans the activation arena for up to `batch` prompts (a measuring pass),
// then allocates it once. Calling it again with a batch that fits is free;
// a larger batch re-plans. clip_encode calls it itself on first use.
int clip_reserve(ClipModel *m, int batch, SdcError *err);

// ids: (batch, max_positions) int32 on the HOST.
// out: (batch, max_positions, hidden) of dtype be->act_dtype on be's device,
// allocated by the caller.
// clip_skip (A1111 / kohya "CLIP skip"): 0 = the model's default output
// (cfg.default_skip); k >= 1 takes the hidden state k - 1 layers before the
// default one and applies final_layer_norm to it. With default_skip 1 (SD 1.x,
// and SD 2.x diffusers folders whose config already counts 23 layers) the
// output is final_ln(hidden state after layer `layers - k + 1`). Only the
// layers needed are run.
int clip_encode(ClipModel *m, const int32_t *ids, int batch, int clip_skip, Tensor *out,
                SdcError *err);

const ClipConfig *clip_config(const ClipModel *m);
// Bytes of the parameter arena and of the planned activation arena.
size_t clip_param_bytes(const ClipModel *m);
size_t clip_activation_bytes(const ClipModel *m);
void clip_free(ClipModel *m);

#endif
