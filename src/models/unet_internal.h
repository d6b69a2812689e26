// unet_internal.h: the UNet's private structures, shared by unet.c (loading,
// inference passes), unet_kinds.c (each block kind's parameters, forward and
// backward) and unet_train.c (training passes). Nothing outside src/models
// includes it.
#ifndef SDC_UNET_INTERNAL_H
#define SDC_UNET_INTERNAL_H

#include "core/arena.h"
#include "models/params.h"
#include "models/pass.h"
#include "models/unet.h"

// ---------------------------------------------------------------------------
// parameters of each block kind
// ---------------------------------------------------------------------------

typedef struct ConvParams {
    Tensor w; // (OC, C, KH, KW)
    Tensor b; // (OC)
} ConvParams;

typedef struct TimeParams {
    Tensor lin1_w, lin1_b; // (4*C0, C0), (4*C0)
    Tensor lin2_w, lin2_b; // (4*C0, 4*C0), (4*C0)
    Tensor add1_w, add1_b; // SDXL add_embedding: (4*C0, add_in_dim), (4*C0); data NULL without
    Tensor add2_w, add2_b; // (4*C0, 4*C0), (4*C0)
} TimeParams;

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
    TLayerParams *layers;   // (n_layers)
} TransformerParams;

typedef struct OutParams {
    Tensor norm_g, norm_b; // (C0)
    ConvParams conv;       // (Cout, C0, 3, 3)
} OutParams;

#define UNET_LORA_PER_LAYER 8 // attn1 to_q to_k to_v to_out.0, attn2 the same

typedef struct UnetBlock {
    UnetBlockInfo info;
    int loaded;            // its parameters are loaded (a pipeline stage loads only its own blocks)
    TimeParams time;       // TIME
    ConvParams conv;       // CONV_IN, DOWNSAMPLE, UPSAMPLE
    ResnetParams res;      // RESNET
    TransformerParams tf;  // TRANSFORMER
    OutParams out;         // OUT
    LoraPair *lora;        // TRANSFORMER when training LoRA: (n_layers * UNET_LORA_PER_LAYER), else NULL
    size_t param_lo;       // byte offset of its first parameter in the parameter arena (loaded trainable)
    size_t lora_lo;        // byte offset of its first adapter in the LoRA arena
} UnetBlock;

// ---------------------------------------------------------------------------
// what a block reads and writes, and what its forward keeps for its backward
// ---------------------------------------------------------------------------

typedef struct UnetIO {
    Tensor x;               // (N, C, H, W) the running activation entering the block
    Tensor skip;            // (N, Cs, H, W) the popped skip (pops_skip)
    Tensor temb;            // (N, 4*C0) SiLU(time embedding), read by every resnet
    Tensor ctx;             // (N, L, cross_dim) the text context
    const float *timesteps; // TIME: N floats on the host
    Tensor add_text;        // TIME, SDXL: (N, add_text_dim) the pooled text embedding
    const float *time_ids;  // TIME, SDXL: (N, n_time_ids) on the host
    Tensor out;             // the block's output, allocated by the caller (TIME: the embedding)
} UnetIO;

typedef struct UnetGradIO {
    Tensor dy;    // d loss / d the block's output (TIME: d temb)
    Tensor dx;    // d loss / d x, overwritten; ndim 0 when not wanted
    Tensor dskip; // d loss / d the popped skip, overwritten (pops_skip)
    Tensor dtemb; // accumulated over the resnets; ndim 0: not wanted (the time MLP is frozen)
    Tensor dctx;  // accumulated over the cross-attentions; ndim 0: not wanted
    Tensor dtext; // TIME, SDXL: (N, text dim) d the pooled text embedding, overwritten; ndim 0: not wanted
    Tensor temb, ctx; // the forward's inputs
} UnetGradIO;

typedef struct AttnSave {
    Tensor q, k, v, o;     // (N, S, D), (N, L, D) x2, (N, S, D)
    Tensor hq, hk, hv, ho; // LoRA hidden down(x): (N*S|N*L, r)
} AttnSave;

typedef struct TLayerSave {
    Tensor hin;          // (N, S, D) the layer's input residual stream
    Tensor t1, t2, t3;   // (N, S, D) layer-normed inputs of attn1, attn2, ff
    AttnSave a1, a2;
    Tensor hs1, hs2;     // (N, S, D) residual stream after attn1, attn2
    Tensor pr;           // (N, S, 8D) GEGLU input
    Tensor g;            // (N, S, 4D) ff2 input
    Tensor hout;         // (N, S, D)
} TLayerSave;

typedef struct BlockSave {
    Tensor x;          // the block's input state
    Tensor skip;       // the popped skip (pops_skip)
    Tensor out;        // the block's output
    Tensor cat;        // (N, Cx+Cs, H, W) concat (pops_skip)
    Tensor h, h2, h3;  // resnet: GN1+SiLU(x), conv1+temb, GN2+SiLU
    Tensor tok;        // transformer: (N, S, C) normed tokens
    TLayerSave *L;     // transformer layers (n_layers)
    Tensor u;          // upsample: nearest 2x output / out: GN+SiLU
    Tensor tp, h1, a1, e; // time: (N, C0) sinusoid, (N, 4C0) linear_1, SiLU, linear_2 (+ the added embedding)
    Tensor ap, ah1, aa1;  // time, SDXL: (N, add_in) [text, id sinusoids], (N, 4C0) add linear_1, SiLU
} BlockSave;

// One record per block kind.
typedef struct UnetKind {
    // Asks pl for the block's parameters (diffusers names, shapes from the info).
    void (*load)(ParamLoader *pl, const Unet *m, UnetBlock *b);
    void (*forward)(Pass *p, const Unet *m, const UnetBlock *b, BlockSave *sv, const UnetIO *io);
    // sv: what the forward saved (sv->x, sv->skip, sv->out set by the caller too).
    void (*backward)(Pass *p, const Unet *m, const UnetBlock *b, const BlockSave *sv, UnetGradIO *g);
} UnetKind;
extern const UnetKind UNET_KINDS[UNET_BLOCK_KINDS];

// The output shape of block b for input x (and the skip the next block pops,
// which an upsample matches: 2H, or 2H - 1 after an odd size on the way down).
void unet_block_out_shape(const Unet *m, const UnetBlock *b, const Tensor *x, const Tensor *next_skip,
                          int64_t shape[4], int *ndim);

// ---------------------------------------------------------------------------
// the model
// ---------------------------------------------------------------------------

// Inference activation regions, all views into the one arena Unet.act.
enum { REG_PERSIST = 0, REG_SLOT0, REG_SLOT1, REG_SKIP, REG_WORK, REG_COUNT };
static const char *const REG_NAMES[REG_COUNT] = {"temb", "slot0", "slot1", "skips", "work"};

struct Unet {
    UnetConfig cfg;
    const Backend *be;
    Arena params;          // converted parameters (empty when all are mmap views)
    ParamTable table;      // named parameters, when loaded trainable (all of them in params)
    size_t param_count;    // tensors
    size_t param_numel;    // elements
    UnetBlock *blocks;     // (n_blocks) in execution order, from unet_layout
    int n_blocks;
    int first, end;        // the blocks whose parameters are loaded: [first, end)
    BlockSave *sv;         // (n_blocks) inference's per-block save records (scratch)
    // inference activations
    Arena act;             // the one allocation
    Arena reg[REG_COUNT];  // regions carved out of act (or measuring arenas while planning)
    size_t reg_bytes[REG_COUNT];
    int plan_batch, plan_h, plan_w, plan_ctx; // 0 before the first plan
    const Backend *run_be; // be, or backend_measure() while planning
    // SDXL's added conditioning for the next passes (unet_set_added_cond)
    Tensor add_text;       // (rows, add_text_dim) on be's device, the caller's
    const float *time_ids; // (rows, n_time_ids) on the host, the caller's
    struct UnetTrain *train; // training state (unet_train.c), NULL for inference
};

// Per-block save records with their transformer-layer arrays; freed with unet_saves_free.
int unet_saves_alloc(const Unet *m, BlockSave **out);
void unet_saves_free(const Unet *m, BlockSave *sv);
// Frees the training state (unet_train.c).
void unet_train_free(Unet *m);

#endif
