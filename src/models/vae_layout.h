// vae_layout.h: the VAE's encoder and decoder block lists as a pure
// description, made from a VaeConfig alone (no weights, no backend). They are
// the one list everything about the VAE walks:
//   - src/models/vae.c loads each block's parameters, runs encode and decode
//     and plans their memory by walking them (each block's parameters and
//     forward are those of its kind);
//   - src/io/namemap.c makes the original <-> diffusers name rules from each
//     block's prefixes.
// There are no LoRA targets and no stage cut: the VAE trains whole (sdc
// train vae) and runs whole on one rank.
// The order is the order of execution:
//   encoder: conv_in | per level: layers x resnet, downsample (not the last
//            level) | mid: resnet, attention, resnet | out | quant_conv
//   decoder: post_quant_conv | conv_in | mid: resnet, attention, resnet |
//            per up level: (layers + 1) x resnet, upsample (not the last) | out
// The decoder's up level i mirrors the encoder's level n-1-i, and the
// original layout counts it that way (decoder.up.(n-1-i)).
#ifndef SDC_VAE_LAYOUT_H
#define SDC_VAE_LAYOUT_H

#include <stddef.h>

#include "core/error.h"
#include "models/config.h"

#define VAE_MAX_LAYERS 8 // layers_per_block
// post_quant + conv_in + mid 3 + levels x (layers + 1 + upsample) + out (the decoder, the longer list)
#define VAE_MAX_BLOCKS (6 + SDC_MAX_LEVELS * (VAE_MAX_LAYERS + 2))

typedef enum { VAE_ENCODER = 0, VAE_DECODER, VAE_PARTS } VaePart;

typedef enum {
    VAE_BLOCK_CONV_IN = 0,  // conv_in 3x3
    VAE_BLOCK_RESNET,       // ResnetBlock2D without time embedding (1x1 conv_shortcut when channels change)
    VAE_BLOCK_ATTENTION,    // the mid block's one-head self-attention over the pixels, residual
    VAE_BLOCK_DOWNSAMPLE,   // pad (0, 1, 0, 1) + conv 3x3 stride 2
    VAE_BLOCK_UPSAMPLE,     // nearest 2x + conv 3x3
    VAE_BLOCK_OUT,          // conv_norm_out + SiLU + conv_out
    VAE_BLOCK_QUANT,        // quant_conv 1x1: the moments -> mean (rows 0..L-1) and logvar (rows L..2L-1)
    VAE_BLOCK_POST_QUANT,   // post_quant_conv 1x1
    VAE_BLOCK_KINDS
} VaeBlockKind;

// One prefix pair of the block's parameters: "<orig><suffix>" in the
// original single-file layout (after "first_stage_model.") is
// "<diff><suffix>" in diffusers; resnets and the attention rename their
// inner names too (namemap.c's tables).
typedef struct VaePrefix {
    char orig[48]; // "decoder.up.0.block.2."
    char diff[48]; // "decoder.up_blocks.3.resnets.2."
} VaePrefix;

typedef struct VaeBlockInfo {
    VaeBlockKind kind;
    char name[48];     // diffusers prefix without the dot ("encoder.down_blocks.1.resnets.0", "quant_conv")
    VaePrefix pre[2];  // parameter prefixes (the out block has two: conv_norm_out, conv_out)
    int n_pre;
    int in_channels;   // of the activation entering the block
    int out_channels;  // of its output (quant: 2 * latent, the moments it splits into mean and logvar)
    int in_div;        // input side = image side / in_div (1, 2, .., 2^(levels-1): the latent)
    int out_div;
    // Filled by the model, 0 before: parameters (elements) the block owns, and
    // for the shape of the last plan (vae_reserve: the image, or one tile when
    // tiled) the bytes of its output and of the scratch it takes above the
    // run's main buffer while it runs. main holds every output but the last
    // one's (the caller's), so a pass needs main + the largest scratch.
    size_t param_count;
    size_t out_bytes, scratch_bytes;
} VaeBlockInfo;

// The block list of one part for config c: n blocks into out
// (VAE_MAX_BLOCKS of them fit). Refuses what the layout cannot describe
// (levels, layers per block out of range), naming the field.
int vae_layout(const VaeConfig *c, VaePart part, VaeBlockInfo *out, int *n, SdcError *err);
const char *vae_block_kind_name(VaeBlockKind k);

#endif
