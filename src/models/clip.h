// clip.h: the CLIP text encoder of Stable Diffusion (transformers
// CLIPTextModel semantics): token + position embeddings, pre-LN transformer
// layers with causal self-attention, an MLP with quick_gelu (SD 1.x) or gelu
// (SD 2.x), and the final layer norm. It maps token ids to the hidden states
// the UNet cross-attends to; it does not tokenize (src/text) and has no
// pooled/projection output for SD 1.x/2.x; SDXL's second encoder has it
// (clip_encode_xl).
//
// Parameters live in one arena sized by a measuring load; activations in one
// arena planned by clip_reserve (a measuring forward pass), so clip_encode
// never allocates. The encoder is a block list (embeddings, layers, final
// norm) whose one forward serves inference and training (clip_internal.h).
// Training (DreamBooth --train-text-encoder, full or LoRA): the
// clip_train_* functions below, in clip_train.c, on any backend with the
// backward ops.
#ifndef SDC_CLIP_H
#define SDC_CLIP_H

#include <stddef.h>
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

// SDXL's conditioning: hidden (batch, max_positions, hidden) = the hidden
// state after layer `layers - skip` with no final norm (skip = clip_skip,
// 0 meaning 1: diffusers' hidden_states[-2], or hidden_states[-(s + 2)] for
// its clip_skip s = clip_skip - 1); pooled (batch, projection_dim), when not
// NULL: text_projection(final_layer_norm(last layer)) at each prompt's EOS
// (CLIPTextModelWithProjection's text_embeds; the model needs a projection).
// Tensors as for clip_encode.
int clip_encode_xl(ClipModel *m, const int32_t *ids, int batch, int clip_skip, Tensor *hidden, Tensor *pooled,
                   SdcError *err);

const ClipConfig *clip_config(const ClipModel *m);
// Bytes of the parameter arena and of the planned activation arena.
size_t clip_param_bytes(const ClipModel *m);
size_t clip_activation_bytes(const ClipModel *m);
void clip_free(ClipModel *m);

// ---- training (clip_train.c; a backend with backward ops, fp32) --------------
// The default output only (clip_skip is not supported in training). A step:
//   clip_train_reserve(m, &opts, batch, &err);                    // once
//   clip_train_forward(m, ids, batch, &out, &err);  // out -> the UNet, loss
//   clip_train_backward(m, &dout, &err);            // ADDS into the gradients
//   clip_trainables(m, &p, &g, &n);  // AdamW over p[0..n), g[0..n); then zero g
// clip_encode runs the same layer forward (clip_internal.h), with the
// adapters when LoRA is being trained.

typedef struct ClipTrainOpts {
    int lora_rank;      // 0: every parameter trainable (needs a trainable load);
                        // r > 0: base frozen, LoRA on q/k/v/out_proj of every layer
    float lora_alpha;   // LoRA scale = alpha / rank (diffusers' default: alpha = rank)
    uint64_t lora_seed; // lora down (A) ~ normal(0, 1/rank) from sdc's torch-compatible
                        // RNG (sampling/rng.h), one draw per (layer, q, k, v, out) in
                        // that order; up (B) = 0 (peft init_lora_weights="gaussian")
    int xl;             // SDXL's outputs (clip_train_forward_xl): every layer trains
                        // (LoRA on all of them, as peft puts it)
    int hidden_only;    // with xl, an encoder whose pooled output is not used (SDXL's first):
                        // only the layers before the last reach the loss, so only they train
                        // (LoRA on them alone; clip_train_table lists only them and the
                        // embeddings): torch gives the last layer and the final norm no
                        // gradient, and AdamW skips such parameters, weight decay included
} ClipTrainOpts;

// Plans and allocates everything training needs for up to `batch` prompts:
// saved activations (a measuring forward + backward pass), the gradient arena
// (full: the layout of the parameter arena; LoRA: of the LoRA arena), and the
// LoRA parameters when o->lora_rank > 0. Gradients start at zero. Calling it
// again with the same options and a batch that fits is free; a larger batch
// re-plans the activations (parameters and gradients are kept); other
// options are refused.
int clip_train_reserve(ClipModel *m, const ClipTrainOpts *o, int batch, SdcError *err);
// The forward pass that keeps what backward needs. ids: (batch, max_positions)
// int32 on the host; out: (batch, max_positions, hidden) f32, the default
// output (final_layer_norm after the last default layer), equal to
// clip_encode(m, ids, batch, 0, out) for the base model. A batch larger than
// reserved re-plans (clip_train_reserve with the same options).
int clip_train_forward(ClipModel *m, const int32_t *ids, int batch, Tensor *out, SdcError *err);
// dout: (batch, max_positions, hidden) f32, d loss / d out of the last
// clip_train_forward. ADDS the parameter gradients into the gradient arena
// (micro-batches accumulate); leaves the saved activations as they are, so
// it may run again for the same forward.
int clip_train_backward(ClipModel *m, const Tensor *dout, SdcError *err);
// SDXL (reserved with opts.xl): hidden (batch, max_positions, hidden) the
// stream entering the last layer (diffusers' hidden_states[-2], no norm, as
// clip_encode_xl with clip_skip 0) and, when pooled is not NULL (a model with
// a projection), pooled (batch, projection_dim) = text_projection(
// final_layer_norm(the last layer's output) at each prompt's EOS). The
// backward ADDS the gradients from d hidden and d pooled (NULL: none; then
// the last layer and the final norm get nothing).
int clip_train_forward_xl(ClipModel *m, const int32_t *ids, int batch, Tensor *hidden, Tensor *pooled,
                          SdcError *err);
int clip_train_backward_xl(ClipModel *m, const Tensor *dhidden, const Tensor *dpooled, SdcError *err);
// The trainable parameters and their gradients as flat f32 buffers of n
// floats at the same offsets (full: the parameter arena; LoRA: the LoRA
// arena). Padding between tensors is zero in both. NULL, NULL, 0 before
// clip_train_reserve.
void clip_trainables(ClipModel *m, float **params, float **grads, size_t *n);
// The named trainable tensors, for checkpoints and export. Full: the load
// table (diffusers names). LoRA: per layer and projection (q_proj, k_proj,
// v_proj, out_proj) "text_model.encoder.layers.<i>.self_attn.<proj>.lora.down.weight"
// (rank, in) and "....lora.up.weight" (out, rank). NULL before clip_train_reserve.
const ParamTable *clip_train_table(const ClipModel *m);
// Every parameter of a trainable load, named (as unet_param_table).
const ParamTable *clip_param_table(const ClipModel *m);
// Bytes of the training activations, the gradients and the LoRA parameters
// (for the memory report); 0 before clip_train_reserve.
size_t clip_train_bytes(const ClipModel *m);

#endif
