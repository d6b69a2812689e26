// unet.h: the Stable Diffusion denoiser (diffusers UNet2DConditionModel as
// SD 1.x / 2.x and the 9-channel inpainting variant use it), as an explicit
// list of blocks over a skip stack.
//
// The block list is unet_layout.h's (time embedding, conv_in, down levels,
// mid block, up levels, out), driven entirely by UnetConfig, so tiny test
// models and SD 1.5 / 2.1 run the same code. Every block kind has one record
// (unet_kinds.c): its parameters, one forward that keeps what its backward
// reads when training, and its backward. unet_forward is the loop over the
// blocks; a pipeline stage runs a contiguous slice of them (the open skips
// at a cut are the ones on the stack), and a trainer runs the same forward
// keeping its saves, then the backward in reverse.
//
// Memory: parameters live in one arena (or are views into the mmap'd file on
// the CPU backend when the file is f32). Inference activations live in one
// arena, sized by a measuring run (backend_measure) and split into regions:
// the time embedding, two slots the running state alternates between, the
// skip stack (a bump region released as skips are popped) and per-block
// scratch (reset after every block). So the peak is about the skips plus two
// states plus one block's temporaries, not the sum of all activations.
// Training memory: see "training" below.
#ifndef SDC_UNET_H
#define SDC_UNET_H

#include <stddef.h>
#include <stdio.h>

#include "core/arena.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/config.h"
#include "models/params.h"
#include "models/unet_layout.h"

typedef struct Unet Unet;

// ---- whole model -------------------------------------------------------------

// Loads every UNet parameter from mf (diffusers names, either layout) onto be.
// Parameters may be views into mf's mapping: mf must outlive the Unet.
// Errors name the tensor, the expected and the found shape.
int unet_load(Unet **out, const ModelFiles *mf, const Backend *be, SdcError *err);
// The same with options; o->trainable (training, CPU fp32 only) makes every
// parameter an F32 copy in one arena, named in unet_param_table.
int unet_load_opts(Unet **out, const ModelFiles *mf, const Backend *be, const ModelLoadOpts *o,
                   SdcError *err);
// Plans activation memory for up to `batch` items at latent (h, w) with
// ctx_len context tokens (a measuring run), and allocates the arena once.
// unet_forward re-plans by itself only when called with a larger shape.
// The activation bytes unet_reserve would allocate for that shape, without
// allocating (the measuring run only).
int unet_plan_bytes(Unet *m, int batch, int h, int w, int ctx_len, size_t *bytes, SdcError *err);
int unet_reserve(Unet *m, int batch, int h, int w, int ctx_len, SdcError *err);
// x (N, Cin, h, w), timesteps: N floats on the host, ctx (N, L, cross_dim)
// -> out (N, Cout, h, w). Tensors on be's device, act dtype, owned by the
// caller. h and w must be multiples of 2^(n_levels-1).
int unet_forward(Unet *m, Tensor *out, const Tensor *x, const float *timesteps, const Tensor *ctx,
                 SdcError *err);
// SDXL (cfg.add_time_dim > 0): the added conditioning the following
// passes read in their time block, rows in the order of x's batch:
// text_embeds (rows, add_in_dim - n_time_ids * add_time_dim), the pooled
// text embedding, on be's device in the act dtype; time_ids (rows,
// n_time_ids) host floats (original size h, w, crop top, left, target size
// h, w; the refiner: aesthetic score instead of the target size). Both are
// the caller's, read at every pass until set again; a pass with a batch
// larger than rows fails. Without an added embedding: refused.
int unet_set_added_cond(Unet *m, const Tensor *text_embeds, const float *time_ids, SdcError *err);
// The number of time ids the model takes (6 for SDXL base, 5 for the
// refiner), 0 without an added embedding.
int unet_n_time_ids(const Unet *m);
// The width of the pooled text embedding the added embedding takes (SDXL
// base: text_encoder_2's projection_dim), 0 without one.
int unet_text_dim(const Unet *m);
const UnetConfig *unet_config(const Unet *m);
size_t unet_param_count(const Unet *m);
size_t unet_param_bytes(const Unet *m);      // parameter bytes at be->param_dtype
size_t unet_activation_bytes(const Unet *m); // the planned activation arena (0 before planning)
void unet_free(Unet *m);
// Prints the planned activation regions and parameter bytes (tests, benchmarks).
void unet_print_plan(const Unet *m, FILE *f);

// ---- blocks ------------------------------------------------------------------

int unet_block_count(const Unet *m);
const UnetBlockInfo *unet_block_info(const Unet *m, int i);
// Multiply-add FLOPs (2 per MAC) of the block's convolutions, linears and
// attention products for `batch` items at latent (h, w) with ctx_len
// context tokens; norms and elementwise ops (a few percent) are not counted.
double unet_block_flops(const Unet *m, int i, int batch, int h, int w, int ctx_len);

// ---- running the blocks one by one --------------------------------------------

// The state flowing between blocks. Its tensors live in the Unet's activation
// arena (regions described above); skips[] is the explicit skip stack.
typedef struct UnetState {
    Tensor x;      // (N, C, H, W) the running activation
    int x_slot;    // which state slot holds x (0 or 1), -1 when elsewhere
    Tensor temb;   // (N, 4*block_out[0]) SiLU(time embedding): block 0's output, read by every resnet
    Tensor ctx;    // (N, L, cross_dim) the caller's context
    Tensor out;    // (N, Cout, h, w) where the OUT block writes (the caller's tensor)
    const float *timesteps; // (N) on the host, read by block 0 (the time embedding)
    Tensor add_text;        // SDXL: (N, text dim) the pooled text embedding, read by block 0
    const float *time_ids;  // SDXL: (N, n_time_ids) on the host, read by block 0
    Tensor skips[UNET_MAX_SKIPS]; // (N, C_k, H_k, W_k) pushed skips, bottom first
    size_t skip_mark[UNET_MAX_SKIPS]; // skip region offset to release each to
    int n_skips;
} UnetState;

// Starts a pass: plans memory if the shapes grew, resets the activation
// arena and sets s->x = x. The block loop
//   for (i = 0; i < unet_block_count(m); i++) unet_block_forward(m, i, &s, err);
// (block 0 computes the time embedding from timesteps) then leaves the
// result in out.
int unet_begin(Unet *m, UnetState *s, Tensor *out, const Tensor *x, const float *timesteps,
               const Tensor *ctx, SdcError *err);
int unet_block_forward(Unet *m, int i, UnetState *s, SdcError *err);
// Pipeline stages (mpi/pp.h): a pass that starts at block `first` > 0 with
// the running activation (x_shape), the time embedding and the n_skips open
// skips (bottom first) a previous stage handed over. Like unet_begin (x
// gives the batch and the latent size the memory plan is for); then s->x,
// s->temb and s->skips[0..n_skips) are allocated, for the caller to fill
// with the previous stage's data, and the blocks from `first` on run as usual.
int unet_begin_at(Unet *m, UnetState *s, Tensor *out, const Tensor *x, const Tensor *ctx, int first,
                  const int64_t x_shape[4], int n_skips, const int64_t (*skip_shapes)[4], SdcError *err);

// ---- training -------------------------------------------------------------------
// The same forward keeping what the backward needs, and the backward through
// the block list in reverse (the skip stack's gradients ride a stack of
// their own). Either every parameter trains (the model loaded with
// ModelLoadOpts.trainable: the gradients live in one arena at the
// parameters' offsets) or LoRA: the base is frozen (may be mmap views) and
// every attention projection (to_q, to_k, to_v, to_out.0 of attn1 and attn2,
// the modules unet_module_is_attn_proj names) gets
// y += (alpha / rank) * up(down(x)), down (rank, in) ~ N(0, 1/rank) from
// lora_seed (peft's "gaussian" init), up (out, rank) = 0. Gradient
// checkpointing keeps only each block's output in the forward pass and
// recomputes the block's intermediates in the backward pass (the same
// gradients, less memory). Everything is allocated through the backend
// (be->alloc) and computed by its ops: a backend with the backward entries
// trains.
//
// Pipeline stages: a rank may train a contiguous slice [first, end) of the
// blocks (the model loaded with ModelLoadOpts.first_block / end_block), and
// hold the activations of several micro-batches at once ("tapes": 1F1B keeps
// up to the stage count in flight). What crosses a cut is a UnetCut: forward,
// the running activation, the open skips, the time embedding and the
// context; backward, their gradients (the time embedding's and the
// context's only when wanted). The gradient of the time embedding and of the
// context are sums over the blocks in reverse order: a stage continues the
// sum the next stage handed back, so the stages add in the order one process
// does and the gradients are the same bit for bit.
typedef struct UnetTrainOpts {
    int checkpointing;
    int lora_rank;      // 0: full fine-tuning
    float lora_alpha;   // scale = alpha / rank
    uint64_t lora_seed;
    int want_dctx;      // compute d loss / d context (text-encoder training)
    // SDXL: compute d loss / d the pooled text embedding (unet_set_added_cond's
    // text_embeds) through add_embedding: the time embedding's gradient is
    // then summed over every ResNet, LoRA too (text-encoder training).
    int want_dtext;
    int tapes;          // micro-batches whose activations are held at once (0: 1)
    // Sum each block's forward and backward seconds (unet_train_block_times),
    // for the stage cut. A model loaded for inference may then run full
    // training passes: its parameter gradients go to scratch.
    int time_blocks;
} UnetTrainOpts;

typedef struct UnetCut {
    Tensor x;                     // (N, C, H, W) the running activation (the UNet output after the last block)
    Tensor skips[UNET_MAX_SKIPS]; // the open skips, bottom first
    int n_skips;
    Tensor temb;                  // (N, 4*C0); backward: ndim 0 when its gradient is not wanted
    Tensor ctx;                   // (N, L, cross); backward: ndim 0 when its gradient is not wanted
    Tensor text;                  // backward only, SDXL with want_dtext, at block 0: (N, text dim) d loss /
                                  // d the pooled text embedding; ndim 0 otherwise
} UnetCut;

// Plans (a measuring forward + backward of this rank's blocks) and allocates
// everything for `batch` items at latent (h, w) with ctx_len context tokens:
// o->tapes sets of kept activations, the backward scratch, the gradients
// (zeroed), the LoRA parameters. Calling it again re-plans.
int unet_train_reserve(Unet *m, const UnetTrainOpts *o, int batch, int h, int w, int ctx_len,
                       SdcError *err);
// One process (every block loaded): x (N, Cin, h, w), timesteps (N) on the
// host, ctx (N, L, cross) -> out; keeps the activations (tape 0) for
// unet_train_backward. Shapes must fit the reservation. SDXL: the added
// conditioning of these N rows set first (unet_set_added_cond), as for the
// stage forward of block 0.
int unet_train_forward(Unet *m, Tensor *out, const Tensor *x, const float *timesteps,
                       const Tensor *ctx, SdcError *err);
// dout (N, Cout, h, w): ADDS every trainable parameter's gradient into the
// gradient buffer (micro-batches accumulate); dctx (N, L, cross) is
// overwritten when given (needs want_dctx), else NULL.
int unet_train_backward(Unet *m, const Tensor *dout, Tensor *dctx, SdcError *err);
// The same, SDXL: dtext (N, text dim) overwritten with d loss / d the pooled
// text embedding when given (needs want_dtext).
int unet_train_backward_xl(Unet *m, const Tensor *dout, Tensor *dctx, Tensor *dtext, SdcError *err);

// ---- the same by stage: forward --
// The cut entering this rank's blocks for n rows, allocated in tape t (its
// shapes from the layout; first == 0: x, ctx only), for the caller to fill.
// Starts the tape's forward.
int unet_train_cut_in(Unet *m, int tape, int n, UnetCut *in, SdcError *err);
// Runs this rank's blocks on tape t (after unet_train_cut_in; timesteps for
// block 0, else NULL; SDXL's block 0 also reads the added conditioning set
// last by unet_set_added_cond, for exactly the tape's rows) and returns the cut leaving them (views into the
// tape; after the last block x is the UNet output).
int unet_train_stage_forward(Unet *m, int tape, const float *timesteps, UnetCut *out, SdcError *err);
// The cut leaving this rank's blocks of tape t's forward (the UNet output
// after the last block), until its backward.
int unet_train_tape_out(Unet *m, int tape, UnetCut *out, SdcError *err);
// ---- backward --
// The gradient of the cut leaving this rank's blocks, for tape t's rows,
// allocated for the caller to fill (the next stage's unet_train_stage_backward
// result, or d loss / d output after the last block: x only, the rest zero).
int unet_train_grad_in(Unet *m, int tape, UnetCut *gin, SdcError *err);
// Runs this rank's blocks backward on tape t, adding the parameter gradients,
// and returns the gradient of the cut entering them (x ndim 0 when nothing
// before needs it; at block 0 the context's gradient alone). Views into the
// backward arenas, valid until the next unet_train_grad_in. Releases the tape.
int unet_train_stage_backward(Unet *m, int tape, UnetCut *gout, SdcError *err);
// The first and one-past-last block this rank trains, and whether its
// backward yields the gradient of the running activation entering it (some
// block before `first` is trained and `first` is not conv_in, whose input is
// the noisy latent): the dx a stage sends back.
void unet_train_range(const Unet *m, int *first, int *end, int *grad_before);

// The bytes of the cut entering block `first` (the running activation, the
// open skips, the time embedding unless first == 0, the context) for n rows
// at latent h x w: what a pipeline stage starting there receives per
// micro-batch (and sends back as gradients).
size_t unet_cut_bytes(const Unet *m, int first, int n, int h, int w, int ctx_len);

// Overlap (the data-parallel all-reduce during the backward): fn is called
// after each block's backward in every backward pass until it is unset (fn
// NULL) with lo, such that the trainables' gradient elements [lo, n)
// (unet_trainables) get nothing more from this backward: lo only decreases
// (the blocks are laid out in order, the backward runs them in reverse).
void unet_train_set_grad_hook(Unet *m, void (*fn)(void *user, size_t lo), void *user);

// The trainable parameters and their gradients as flat f32 buffers of *n
// floats (zero padding between tensors is harmless to AdamW and norms), on
// the model's backend.
void unet_trainables(Unet *m, float **params, float **grads, size_t *n);
// The named trainable tensors: the load table (full) or the LoRA tensors,
// named "<module>.lora.down.weight" / "<module>.lora.up.weight" with module
// e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q".
const ParamTable *unet_train_table(const Unet *m);
// Every parameter of a trainable load (ModelLoadOpts.trainable), named, in
// load order (LoRA or not): what a from-scratch init fills (models/init.h).
const ParamTable *unet_param_table(const Unet *m);
// Bytes planned for training: kept activations (all tapes), backward
// scratch, gradients (and LoRA parameters), by unet_train_reserve; and the
// kept activations of one tape.
size_t unet_train_bytes(const Unet *m);
size_t unet_train_tape_bytes(const Unet *m);
// With time_blocks: each block's forward (backward = 0) or backward seconds
// summed over the passes run (n_blocks; 0 outside this rank's range).
const double *unet_train_block_times(const Unet *m, int backward);
// After the last step: frees the activations, the scratch and the
// gradients, keeping the trained tensors and their names (for the export;
// no further step can run).
void unet_train_shrink(Unet *m);
// on = 1: adds the LoRA to the base weights (kept: the base must be loaded
// trainable) so unet_forward sees the adapted model; on = 0 restores the
// exact base weights. No-op without LoRA.
int unet_lora_merge(Unet *m, int on, SdcError *err);

#endif
