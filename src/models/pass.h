// pass.h: the context one block's forward or backward runs in, shared by the
// models (src/models/unet_kinds.c, clip.c). Private to src/models.
//
// One forward per block, for inference and training alike (llm.c's
// gpt2_forward fills the activations gpt2_backward reads): a block's forward
// writes every intermediate its backward reads into its save record, with
//   SAVE(p, ...)  a save: in p->keep when training (kept for the backward),
//                 in p->work when not (released with the block's temporaries)
//   TMP(p, ...)   a temporary, always in p->work
// and releases p->work to where it found it before returning (sub-steps
// release earlier: whatever lies above a mark in p->work is dead in both
// modes). The caller allocates the block's output. Backward functions take
// temporaries from p->work the same way and get each parameter's gradient
// from pass_grad: the same offset in the gradient arena as the parameter's in
// the parameter arena (full training), NULL when the parameter is frozen
// (LoRA), or a scratch tensor (pass.sink: timing a block's backward on
// weights loaded for inference).
//
// The passes call only backend ops (p->be: the model's backend, or
// backend_measure() while planning), so they run on any backend that has
// the ops, and a measuring run of the same code sizes every arena.
#ifndef SDC_PASS_H
#define SDC_PASS_H

#include "core/arena.h"
#include "core/backend.h"

// A LoRA adapter on one linear: y = W x + b + scale * up(down(x)).
typedef struct LoraPair {
    Tensor down; // (r, in)
    Tensor up;   // (out, r)
} LoraPair;

typedef struct Pass {
    const Backend *be; // the model's backend, or backend_measure() while planning
    DType act;         // the model backend's activation dtype (also while measuring)
    Arena *keep;       // training: a forward's saves; NULL: inference
    Arena *work;       // temporaries (and inference's saves)
    // backward only
    const Arena *params; // the parameter arena (full training)
    Arena *grads;        // gradients at the parameters' offsets; NULL: frozen base (LoRA)
    Arena *sink;         // non-NULL: every parameter gradient is a scratch tensor here (timing)
    const Arena *lora_p; // LoRA parameters and
    Arena *lora_g;       //   their gradients at the same offsets
    float lora_scale;    // alpha / rank
} Pass;

static inline Tensor pass_tensor(Arena *a, DType dt, int ndim, const int64_t *shape) {
    return arena_tensor(a, dt, ndim, shape);
}
#define PASS_NDIM(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t))
#define SAVE(p, ...) pass_tensor((p)->keep ? (p)->keep : (p)->work, (p)->act, PASS_NDIM(__VA_ARGS__), (int64_t[]){__VA_ARGS__})
#define TMP(p, ...) pass_tensor((p)->work, (p)->act, PASS_NDIM(__VA_ARGS__), (int64_t[]){__VA_ARGS__})
// A tensor of x's shape in p->work.
static inline Tensor pass_like(Pass *p, const Tensor *x) { return arena_tensor(p->work, p->act, x->ndim, x->shape); }

// The gradient of parameter w (into *tmp), or NULL when w is frozen.
Tensor *pass_grad(Pass *p, const Tensor *w, Tensor *tmp);
// The gradient of LoRA tensor t.
Tensor pass_lora_grad(Pass *p, const Tensor *t);

// y = x W^T + b (+ scale * up(down x) with an adapter: hidden (M, r) is a
// save holding down(x)). x (..., K), y (..., N).
void pass_linear(Pass *p, Tensor *y, const Tensor *x, const Tensor *w, const Tensor *b, const LoraPair *lo,
                 Tensor *hidden);
// Its backward: dx (overwritten; NULL: not wanted); the gradients of w, b
// and the adapter are added to.
void pass_linear_backward(Pass *p, Tensor *dx, const Tensor *dy, const Tensor *x, const Tensor *w, const Tensor *b,
                          const LoraPair *lo, const Tensor *hidden);

#endif
