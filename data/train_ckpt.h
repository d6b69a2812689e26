// train_ckpt.h: DreamBooth training checkpoints on top of the sdc checkpoint
// file (data/checkpoint.h): save everything a run needs to continue exactly
// where it stopped (trained tensors, AdamW moments and step, trainer step /
// epoch / micro-step, RNG words, data order, last loss, the job manifest),
// load it back into the trainer's own buffers by name, and manage an output
// folder of `checkpoint-<step>.h5` files the way diffusers' train_dreambooth
// manages its `checkpoint-<step>/` folders (--resume_from_checkpoint latest,
// --checkpoints_total_limit).
//
// It is not the trainer: it knows no model and no optimizer maths; it copies
// flat f32 buffers the trainer owns. In data-parallel training every replica
// holds the same parameters and moments: one writes, every one loads
// (read-only). With pipeline stages every stage holds its own tensors: the
// stages write one file in turn (TrainCkptSpec.part), each loads its own
// (.partial), so the file is the same whatever the layout and a run resumes
// on another one.
//
// Layout (data/README.md, "checkpoint"; what the trainer adds):
//   /<group>/<name>                      f32, a trained tensor ("unet", "text_encoder",
//                                        "unet_lora", "text_encoder_lora", ...)
//   /optimizer/exp_avg/<group>/<name>    f32, AdamW m of that tensor (same shape)
//   /optimizer/exp_avg_sq/<group>/<name> f32, AdamW v
//   /optimizer                           attrs step (i64, torch's state["step"]),
//                                        beta1, beta2, eps, weight_decay (f64, for readers)
//   /state                               attrs step (written last), epoch, micro_step (i64),
//                                        loss (f64), rng_words (u64 [n]: the trainer's
//                                        generator), rng_state (u64 [4]: its first 4 words,
//                                        zero-padded, what ckpt_open reads); dataset
//                                        data_order (i64 [n])
//   /job                                 attrs: the job's identity, key -> string value
//                                        (model path, lora rank, ...), compared on load
//   root                                 attrs manifest (protobuf text), and when a base
//                                        is given: model_index, scheduler_config, source
//   /text_encoder, /unet, /vae           the frozen components copied from the base,
//                                        each group with its `config` attribute
// With a base (an sdc checkpoint of the model being trained, e.g. made once
// by `sdc convert MODEL -o base.h5`) the file is a complete model:
// `sdc convert checkpoint-N.h5 out/` writes a diffusers folder of the
// fine-tuned model (LoRA groups are not merged: convert leaves them out).
#ifndef SDC_TRAIN_CKPT_H
#define SDC_TRAIN_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "io/lora.h"
#include "models/params.h"
#include "train/optim.h"

// One trained tensor given by hand (when the component has no ParamTable).
// data: (shape) f32, contiguous; read on save, written on load.
typedef struct TrainCkptTensor {
    const char *name; // diffusers name, dots kept ("mid_block.attentions.0.proj_in.lora.down.weight")
    float *data;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
} TrainCkptTensor;

// One trained component: its tensors from a ParamTable (every entry F32, CPU)
// or from an array, in the order the optimizer concatenates them.
typedef struct TrainCkptComponent {
    const char *group;               // "unet", "text_encoder", "unet_lora", "text_encoder_lora"
    const ParamTable *table;         // either this ...
    const TrainCkptTensor *tensors;  // ... or this (n_tensors)
    int n_tensors;
    int opt_group;                   // AdamW group holding its moments, -1: none. A group's m / v
                                     // are the tensors of every component naming it, in spec order
} TrainCkptComponent;

// A job-identity field: a resume refuses a checkpoint whose value differs.
typedef struct TrainCkptKey {
    const char *key;   // "model", "lora_rank", "train_text_encoder", ...
    const char *value; // as text ("4", "true")
    const char *absent; // what a checkpoint that does not record the key stands for (a key added later, e.g.
                        // "0" for train_decoder_only); NULL: a checkpoint without it is another job's
} TrainCkptKey;

typedef struct TrainCkptSpec {
    const TrainCkptComponent *comps;
    int n_comps;
    AdamW *opt;                       // may be NULL (no optimizer state)
    const TrainCkptKey *job;          // (n_job) written on save, compared on load
    int n_job;
    const char *manifest;             // the job manifest (protobuf text); may be NULL. Not compared.
    // The frozen rest of the model, copied from an sdc checkpoint (tensor by
    // tensor, CRC-checked) together with the configs of text_encoder / unet /
    // vae, model_index and scheduler_config, so that `sdc convert` reads the
    // result. NULL: a training-state-only file. Save only.
    const char *base;
    const char *const *frozen;        // groups copied from base: "vae", "text_encoder", "unet", "extra"
    int n_frozen;
    // Pipeline stages: each writes its own tensors (and their moments) into
    // the one file in turn. TRAIN_CKPT_WHOLE: this call writes it all. FIRST
    // creates it (and writes the base, job, manifest, optimizer and state
    // attributes), MIDDLE and LAST append, LAST commits. On load, `partial`:
    // the file may hold tensors of the components' groups that are not in
    // this spec (another stage's); the caller checks the union.
    int part;
    int partial;
} TrainCkptSpec;

enum { TRAIN_CKPT_WHOLE = 0, TRAIN_CKPT_FIRST, TRAIN_CKPT_MIDDLE, TRAIN_CKPT_LAST };

// The trainer's loop state. On save every field is read; on load the caller
// sets rng / n_rng and data_order / n_order to its own buffers (the counts
// must match the file's) and the rest is filled.
typedef struct TrainCkptState {
    int64_t step;        // optimizer steps done (diffusers' global_step; the file is checkpoint-<step>)
    int64_t epoch;       // epoch in progress (0-based)
    int64_t micro_step;  // micro-batches of this epoch already consumed
    double loss;         // last loss (for the log after a resume)
    uint64_t *rng;       // (n_rng) the trainer's generator state words
    int n_rng;
    int64_t *data_order; // (n_order) sample order of the current epoch; may be NULL with n_order 0
    int64_t n_order;
} TrainCkptState;

// Writes path (path.tmp, renamed when complete: a crash leaves any previous
// file at path intact). Checks the whole spec (names, shapes, the optimizer
// groups' sizes) before writing anything.
int train_ckpt_save(const char *path, const TrainCkptSpec *spec, const TrainCkptState *st, SdcError *err);

// Fills every buffer of spec (tensors, opt m / v / step) and st from path,
// verifying every CRC32. Refuses, naming the file and the field: another
// job (a /job value differs or is missing), a missing or extra trained
// tensor, a shape or dtype mismatch, an optimizer size mismatch, an RNG or
// data-order length mismatch, a model-only checkpoint. On failure the
// buffers may be partly overwritten: the trainer must not go on with them.
int train_ckpt_load(const char *path, const TrainCkptSpec *spec, TrainCkptState *st, SdcError *err);

// The number of tensors in /group of a checkpoint (pipeline stages load
// their own part and check that together they took every one).
int train_ckpt_group_count(const char *path, const char *group, int *n, SdcError *err);

// ----------------------------------------------------------------------------
// an output folder of checkpoint-<step>.h5

// "<output_dir>/checkpoint-<step>.h5" into path.
int train_ckpt_path(const char *output_dir, int64_t step, char *path, size_t cap, SdcError *err);

// The checkpoint of the highest step in output_dir (numerically: 10 > 9) for
// --resume-from-checkpoint latest. None (or no folder): returns 0 with
// path = "" and *step = -1, so the caller starts a fresh run. Only complete
// files count (a .tmp never does). step may be NULL.
int train_ckpt_latest(const char *output_dir, char *path, size_t cap, int64_t *step, SdcError *err);

// diffusers' checkpoints_total_limit, called BEFORE saving a new checkpoint:
// deletes the oldest checkpoint-<step>.h5 so that at most total_limit - 1
// remain (total_limit after the save), but never the newest one (with
// total_limit 1 the previous checkpoint stays until the new one is
// committed: call train_ckpt_rotate(dir, total_limit + 1) after the save to
// trim to total_limit). Also deletes stale checkpoint-*.h5.tmp left by a
// killed writer (call it from the one writing rank only). total_limit <= 0:
// no limit (only the .tmp files go). *removed (may be NULL): files deleted.
int train_ckpt_rotate(const char *output_dir, int total_limit, int *removed, SdcError *err);

// The LoRA tensors of a LoRA training checkpoint (/unet_lora,
// /text_encoder_lora, alpha from /job lora_alpha) written as a LoRA file, so
// `sdc generate --lora checkpoint-N.h5` can use any checkpoint of a run.
int train_ckpt_export_lora(const char *ckpt_path, const char *out_path, LoraFormat format, SdcError *err);

#endif
