// unet_layout.h: the UNet's block list as a pure description, made from a
// UnetConfig alone (no weights, no backend). It is the one list everything
// about the UNet walks:
//   - src/models/unet.c builds the model from it (each block's parameters,
//     forward and backward are those of its kind, unet_kinds.c);
//   - src/io/namemap.c makes the original <-> diffusers name rules from each
//     block's prefixes;
//   - src/io/lora.c and the LoRA trainer take their target modules from each
//     block's modules;
//   - mpi/ cuts it into pipeline stages (a stage runs a contiguous slice).
// The order is the order of execution:
//   time_embedding | conv_in | per down level: layers x (resnet [+ transformer]),
//   downsample | mid: resnet, transformer, resnet | per up level:
//   (layers + 1) x (resnet popping a skip [+ transformer]), upsample | out
// with the skip stack simulated while building, which reproduces diffusers'
// prev_output_channel / res_skip channel bookkeeping.
#ifndef SDC_UNET_LAYOUT_H
#define SDC_UNET_LAYOUT_H

#include <stddef.h>

#include "core/error.h"
#include "models/config.h"

#define UNET_MAX_SKIPS 64
// time + conv_in + levels x (2 layers + down) + mid 3 + levels x (2 (layers+1) + up) + out
#define UNET_MAX_BLOCKS (2 + SDC_MAX_LEVELS * (2 * 8 + 1) + 3 + SDC_MAX_LEVELS * (2 * 9 + 1) + 1)

typedef enum {
    UNET_BLOCK_TIME = 0,    // time_embedding: sinusoid -> linear_1 -> SiLU -> linear_2 (+ SDXL's add_embedding)
                            // -> SiLU (every resnet reads it)
    UNET_BLOCK_CONV_IN,     // conv_in 3x3
    UNET_BLOCK_RESNET,      // ResnetBlock2D (pops a skip and concatenates it in up levels)
    UNET_BLOCK_TRANSFORMER, // Transformer2DModel (self-attn, cross-attn, GEGLU FF)
    UNET_BLOCK_DOWNSAMPLE,  // conv 3x3 stride 2
    UNET_BLOCK_UPSAMPLE,    // nearest 2x + conv 3x3
    UNET_BLOCK_OUT,         // conv_norm_out + SiLU + conv_out
    UNET_BLOCK_KINDS
} UnetBlockKind;

// One prefix pair of the block's parameters: "<orig><suffix>" in the
// original single-file layout (after "model.diffusion_model.") is
// "<diff><suffix>" in diffusers; resnets rename their inner names too
// (in_layers.0. -> norm1., ...: namemap.c's resnet table).
typedef struct UnetPrefix {
    char orig[48]; // "input_blocks.4.1."
    char diff[64]; // "down_blocks.1.attentions.0."
} UnetPrefix;

typedef struct UnetBlockInfo {
    UnetBlockKind kind;
    char name[48];       // diffusers prefix without the dot ("down_blocks.1.attentions.0", "conv_in")
    UnetPrefix pre[4];   // parameter prefixes (the out block and the time MLP have two; SDXL's
                         // time block four: + add_embedding.linear_1, linear_2)
    int n_pre;
    int in_channels;     // of the running state entering the block (time: block_out[0])
    int skip_channels;   // of the popped skip (0 when the block pops none)
    int out_channels;    // (time: 4 * block_out[0], the embedding)
    int in_div;          // input spatial size = latent size / in_div (1, 2, 4, 8)
    int out_div;
    int pushes_skip;     // the block's output is also pushed on the skip stack
    int pops_skip;       // the block concatenates the popped skip to its input
    int heads, n_layers; // transformer: attention heads, BasicTransformerBlocks
    int inner;           // transformer: inner dim = heads * (C / heads)
    int linear_proj;     // transformer: proj_in / proj_out are linear (SD 2.x), else 1x1 convs
    // Filled by the model, 0 before: parameters (elements) the block owns,
    // and for the shape of the last inference plan (unet_reserve) the bytes
    // of its output and of the scratch it needs while running; for the last
    // training plan (unet_train_reserve) what its forward keeps for the
    // backward per micro-batch (all of it, or only its output with gradient
    // checkpointing) and its backward's scratch.
    size_t param_count;
    size_t out_bytes, scratch_bytes;
    size_t keep_bytes, bwd_bytes;
} UnetBlockInfo;

// The block list for config c: n blocks into out (UNET_MAX_BLOCKS of them
// fit). Refuses what the layout cannot describe (levels, layers per block
// out of range), naming the field.
int unet_layout(const UnetConfig *c, UnetBlockInfo *out, int *n, SdcError *err);
const char *unet_block_kind_name(UnetBlockKind k);

// The block's modules (a weight "<module>.weight" with its bias), in a fixed
// order: module k's diffusers name into buf; 0 when k is past the last.
// These are what LoRA files may target (kohya / diffusers module names).
int unet_block_module(const UnetBlockInfo *b, int k, char *buf, size_t n);
// Whether a module is one of the attention projections LoRA trains by
// default (diffusers' target_modules to_q, to_k, to_v, to_out.0).
int unet_module_is_attn_proj(const char *module);

#endif
