// unet_internal.h: the UNet's private structures, shared by unet.c (loading,
// inference) and unet_train.c (training forward and backward). Nothing
// outside src/models includes it.
#ifndef SDC_UNET_INTERNAL_H
#define SDC_UNET_INTERNAL_H

#include "core/arena.h"
#include "models/params.h"
#include "models/unet.h"

// ---------------------------------------------------------------------------
// parameters of each block kind
// ---------------------------------------------------------------------------

typedef struct ConvParams {
    Tensor w; // (OC, C, KH, KW)
    Tensor b; // (OC)
} ConvParams;

typedef struct ResnetParams {
    Tensor norm1_g, norm1_b; // (Cin)   Cin includes a popped skip's channels
    ConvParams conv1;        // (Cout, Cin, 3, 3)
    Tensor temb_w, temb_b;   // (Cout, 4*C0), (Cout)
    Tensor norm2_g, norm2_b; // (Cout)
    ConvParams conv2;        // (Cout, Cout, 3, 3)
    ConvParams shortcut;     // (Cout, Cin, 1, 1), data NULL when Cin == Cout
} ResnetParams;

typedef struct AttnParams {
    Tensor q, k, v;       // (D, D) / (D, Dk) for cross-attention k and v; no bias
    Tensor out_w, out_b;  // (D, D), (D)
} AttnParams;

typedef struct TLayerParams { // BasicTransformerBlock
    Tensor n1_g, n1_b, n2_g, n2_b, n3_g, n3_b; // (D)
    AttnParams attn1, attn2;
    Tensor ff0_w, ff0_b; // (8D, D), (8D): GEGLU projection
    Tensor ff2_w, ff2_b; // (D, 4D), (D)
} TLayerParams;

typedef struct TransformerParams {
    Tensor norm_g, norm_b;  // (C)
    Tensor in_w, in_b;      // (D, C) (a 1x1 conv viewed as a matrix), (D)
    Tensor out_w, out_b;    // (C, D), (C)
    int heads, inner;       // D = heads * (C / heads)
    int n_layers;
    TLayerParams *layers;   // (n_layers)
} TransformerParams;

typedef struct OutParams {
    Tensor norm_g, norm_b; // (C0)
    ConvParams conv;       // (Cout, C0, 3, 3)
} OutParams;

typedef struct UnetBlock {
    UnetBlockInfo info;
    ConvParams conv;       // CONV_IN, DOWNSAMPLE, UPSAMPLE
    ResnetParams res;      // RESNET
    TransformerParams tf;  // TRANSFORMER
    OutParams out;         // OUT
} UnetBlock;

// Activation regions, all views into the one arena Unet.act.
enum { REG_PERSIST = 0, REG_SLOT0, REG_SLOT1, REG_SKIP, REG_WORK, REG_COUNT };
static const char *const REG_NAMES[REG_COUNT] = {"temb", "slot0", "slot1", "skips", "work"};

struct Unet {
    UnetConfig cfg;
    const Backend *be;
    Arena params;          // converted parameters (empty when all are mmap views)
    ParamTable table;      // named parameters, when loaded trainable (all of them in params)
    size_t param_count;    // tensors
    size_t param_numel;    // elements
    Tensor t_lin1_w, t_lin1_b; // (4*C0, C0), (4*C0)
    Tensor t_lin2_w, t_lin2_b; // (4*C0, 4*C0), (4*C0)
    UnetBlock *blocks;
    int n_blocks, max_blocks;
    // activations
    Arena act;             // the one allocation
    Arena reg[REG_COUNT];  // regions carved out of act (or measuring arenas while planning)
    size_t reg_bytes[REG_COUNT];
    int plan_batch, plan_h, plan_w, plan_ctx; // 0 before the first plan
    const Backend *run_be; // be, or backend_measure() while planning
    struct UnetTrain *train; // training state (unet_train.c), NULL for inference
};

// Frees the training state (unet_train.c).
void unet_train_free(Unet *m);

// An activation tensor of the model's act dtype in arena a: ACT(a, N, C, H, W)
#define ACT(a, ...)                                                                     \
    arena_tensor((a), m->be->act_dtype, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                 (int64_t[]){__VA_ARGS__})

#endif
