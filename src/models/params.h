// params.h: loading a model's parameters from ModelFiles onto a backend.
//
// A model's load function asks for each parameter by diffusers name and
// shape: param_get(pl, shape, "down_blocks.%d.resnets.%d.conv1.weight", i, j).
// The load runs twice: once with a measuring arena to learn the bytes the
// parameters need (and to check every name and shape before anything is
// allocated), then for real into one arena of exactly that size. On the CPU
// backend, F32 tensors in the file are used in place (views into the mmap,
// no copy); anything else is converted once to be->param_dtype.
#ifndef SDC_PARAMS_H
#define SDC_PARAMS_H

#include "core/arena.h"
#include "core/backend.h"
#include "io/weights.h"

// The named parameters of a model loaded for training: every tensor an F32
// copy in the model's own arena, in load order, so the parameters (and a
// gradient arena of the same size, at the same offsets) are one flat buffer.
typedef struct ParamEntry {
    char name[128]; // diffusers name, e.g. "down_blocks.0.resnets.0.conv1.weight"
    Tensor t;       // the parameter as stored (its file shape)
} ParamEntry;
typedef struct ParamTable {
    ParamEntry *e;
    int n, cap;
} ParamTable;
void param_table_free(ParamTable *t);
// Index of the entry named `name`, or -1.
int param_table_find(const ParamTable *t, const char *name);

struct LoraSet; // io/lora.h

// How a model is loaded (NULL = for inference).
typedef struct ModelLoadOpts {
    int trainable; // own F32 copies in one arena, named in a ParamTable (never mmap views)
    const struct LoraSet *lora; // LoRAs merged into the weights they target (NULL: none)
    // UNet pipeline stages: load only the blocks [first_block, end_block) of
    // unet_layout's list (end_block 0: to the last). The others' parameters
    // are checked in the file but not loaded.
    int first_block, end_block;
    // Text encoders: load SDXL's second one (text_encoder_2, ModelInfo.clip2).
    int second_text_encoder;
    // From scratch (with trainable): no tensor is read from the files (the
    // loader runs without them, as vae_create does); every parameter is a
    // zeroed own copy, named in the table, for params_init
    // (src/models/init.h) to fill.
    int init;
} ModelLoadOpts;

typedef struct ParamLoader {
    const ModelFiles *mf; // NULL: a fresh model, every parameter allocated (zero: the caller zeroes the arena) and named
    Component comp;
    const Backend *be;
    Arena *arena;   // measuring or real
    SdcError *err;
    int failed;     // first error is kept in err; later calls return empty tensors
    size_t count;   // parameters requested
    size_t numel;   // their total element count
    int own;        // copy every parameter into the arena, even when it could be a view
    ParamTable *table; // when non-NULL (real pass), every parameter is recorded here
    // LoRAs (io/lora.h): a parameter they target is checked against them in
    // both passes and always copied into the arena (never a view) with the
    // updates added in f32 before the conversion to be->param_dtype.
    const struct LoraSet *lora;
    int check_only; // check names and shapes only; every tensor comes back empty (blocks of another stage)
} ParamLoader;

// shape is given as a literal list: PARAM(pl, SHAPE(C, C, 3, 3), "conv_in.weight")
#define SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}
Tensor param_get(ParamLoader *pl, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// Like param_get, but a missing tensor yields a tensor with data == NULL and
// no error (optional parameters, e.g. biases some files omit).
Tensor param_get_opt(ParamLoader *pl, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
