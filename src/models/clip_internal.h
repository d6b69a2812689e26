// clip_internal.h: the CLIP text encoder's structures, shared by clip.c
// (loading, the blocks' one forward, inference) and clip_train.c (backward,
// training passes). Private to src/models: everything else uses clip.h.
//
// The encoder is a list of blocks: the embeddings, cfg.layers transformer
// layers, the final layer norm. Each kind has one forward (pass.h: it keeps
// its saves when training) and one backward.
#ifndef SDC_CLIP_INTERNAL_H
#define SDC_CLIP_INTERNAL_H

#include "core/arena.h"
#include "models/clip.h"
#include "models/pass.h"

// Shapes: D = hidden, I = intermediate, V = vocab_size, P = max_positions.
typedef struct ClipLayer {
    Tensor ln1_w, ln1_b;            // (D)
    Tensor q_w, k_w, v_w, o_w;      // (D, D)
    Tensor q_b, k_b, v_b, o_b;      // (D)
    Tensor ln2_w, ln2_b;            // (D)
    Tensor fc1_w, fc1_b;            // (I, D), (I)
    Tensor fc2_w, fc2_b;            // (D, I), (D)
} ClipLayer;

enum { CLIP_PROJ_Q, CLIP_PROJ_K, CLIP_PROJ_V, CLIP_PROJ_O, CLIP_N_PROJ };

// What a layer's backward reads, saved by its forward. Shapes (B, L, D)
// unless said.
typedef struct ClipLayerSave {
    Tensor hin;              // the residual stream entering the layer
    Tensor x1;               // layer_norm1(hin)
    Tensor q, k, v;          // projections, heads interleaved (H*Dh)
    Tensor o;                // attention output, before out_proj
    Tensor h_mid;            // residual stream after the attention branch
    Tensor x2;               // layer_norm2(h_mid)
    Tensor f_pre, f_act;     // (B, L, I) fc1 output, after (quick_)gelu
    Tensor hout;             // the residual stream leaving the layer
    Tensor u[CLIP_N_PROJ];   // LoRA: down(x) of q, k, v, out: (B*L, r)
} ClipLayerSave;

typedef struct ClipTrain ClipTrain; // clip_train.c

struct ClipModel {
    ClipConfig cfg;
    const Backend *be;
    Arena params;        // converted parameters (F32 on the CPU: views into the mmap)
    ParamTable table;    // named parameters, when loaded trainable (all of them in params)
    Tensor tok_emb;      // (V, D)
    Tensor pos_emb;      // (P, D)
    ClipLayer *layers;   // cfg.layers of them
    Tensor fln_w, fln_b; // (D)
    Tensor proj_w;       // (projection_dim, D) text_projection (CLIPTextModelWithProjection), or none
    Component comp;      // COMP_TEXT_ENCODER, or COMP_TEXT_ENCODER_2 (SDXL's second)
    LoraPair *lora;      // (lora_layers * CLIP_N_PROJ) adapters of q, k, v, out_proj when training LoRA, else NULL
    int lora_layers;     // the layers from 0 up that have adapters (the layers training reaches)
    float lora_scale;    // alpha / rank
    Arena act;           // inference activations, planned by clip_reserve
    ClipLayerSave scratch; // inference's save record (reused by every layer)
    int32_t *pos_ids;    // (reserved_batch, P) host: 0..P-1 per prompt
    int reserved_batch;  // 0 = not planned yet
    ClipTrain *train;    // NULL until clip_train_reserve
};

// ---- the blocks' forward (clip.c) ---------------------------------------------
// h (B, L, D) <- token_embedding[ids] + position_embedding[pos]; ids, pos I32 (B, L)
void clip_embed_forward(Pass *p, const ClipModel *m, Tensor *h, const Tensor *ids, const Tensor *pos);
// Layer i on the residual stream *h: the output is a new save when training,
// *h updated in place when not.
void clip_layer_forward(Pass *p, const ClipModel *m, int i, ClipLayerSave *sv, Tensor *h);
// out (B, L, D) = final_layer_norm(h)
void clip_final_forward(Pass *p, const ClipModel *m, Tensor *out, const Tensor *h);

// Layers the default output runs through (cfg.layers - default_skip + 1).
int clip_default_layers(const ClipConfig *c);
// Frees what clip_train_reserve made (clip_free calls it).
void clip_train_free(ClipModel *m);

#endif
