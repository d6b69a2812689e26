// clip_internal.h: the CLIP text encoder's model struct, shared by clip.c
// (loading, inference) and clip_train.c (training). Private to src/models:
// everything else uses the functions of clip.h.
#ifndef SDC_CLIP_INTERNAL_H
#define SDC_CLIP_INTERNAL_H

#include "core/arena.h"
#include "models/clip.h"

// Shapes: D = hidden, I = intermediate, V = vocab_size, P = max_positions.
typedef struct ClipLayer {
    Tensor ln1_w, ln1_b;            // (D)
    Tensor q_w, k_w, v_w, o_w;      // (D, D)
    Tensor q_b, k_b, v_b, o_b;      // (D)
    Tensor ln2_w, ln2_b;            // (D)
    Tensor fc1_w, fc1_b;            // (I, D), (I)
    Tensor fc2_w, fc2_b;            // (D, I), (D)
} ClipLayer;

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
    Arena act;           // activations, planned by clip_reserve
    int32_t *pos_ids;    // (reserved_batch, P) host: 0..P-1 per prompt
    int reserved_batch;  // 0 = not planned yet
    ClipTrain *train;    // NULL until clip_train_reserve
};

// Layers the default output runs through (cfg.layers - default_skip + 1).
int clip_default_layers(const ClipConfig *c);
// Frees what clip_train_reserve made (clip_free calls it).
void clip_train_free(ClipModel *m);

#endif
