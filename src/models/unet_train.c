// unet_train.c: the UNet's training forward and backward pass (see unet.h,
// "training"). The CPU fp32 reference for DreamBooth; the gradients are
// checked against torch autograd (tests/test_unet_grad.c).
//
// The forward pass here computes what unet.c's inference forward computes,
// but keeps every intermediate a backward op needs instead of reusing
// buffers in place. Memory, all planned by a measuring run of forward and
// backward (backend_measure) and allocated once:
//   keep     what the forward pass keeps for backward (block outputs, and
//            every block's intermediates unless checkpointing)
//   recomp   one block's intermediates (checkpointing only)
//   fwork    forward temporaries (reset after every use)
//   dslot    two slots the running gradient alternates between
//   dskips   the skip stack's gradients (a stack: pushed by the up blocks
//            in the backward pass, popped by the down blocks that pushed
//            the skips in the forward pass)
//   gwork    backward temporaries (reset after every block)
//   grads    full training: one arena mirroring the parameter arena
//   lora     LoRA parameters and their gradients
// Reads top to bottom: state, LoRA, forward per block kind, backward per
// block kind, planning, the public entry points.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet_internal.h"
#include "sampling/rng.h"

#define TF32(a, ...) ARENA_F32(a, __VA_ARGS__)
#define LORA_PER_LAYER 8 // attn1 q k v out, attn2 q k v out

typedef struct LoraPair {
    Tensor down; // (r, in)
    Tensor up;   // (out, r)
} LoraPair;

typedef struct AttnSave {
    Tensor q, k, v, o;   // (N, S, D), (N, L, D) x2, (N, S, D)
    Tensor hq, hk, hv, ho; // LoRA hidden down(x): (N, S|L, r)
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
    int skip_of;       // index of the block whose output is that skip
    Tensor cat;        // (N, Cx+Cs, H, W) concat (pops_skip)
    Tensor h, h2, h3;  // resnet: GN1+SiLU(x), conv1+temb, GN2+SiLU
    Tensor tok;        // transformer: (N, S, C) normed tokens
    TLayerSave *L;     // transformer layers
    Tensor u;          // upsample: nearest 2x output / out: GN+SiLU
    int64_t up_h, up_w; // upsample target size
    Tensor out;        // the block's output
} BlockSave;

typedef struct UnetTrain {
    UnetTrainOpts o;
    const Backend *be; // the model's backend, or backend_measure() while planning
    int measuring;
    int batch, h, w, ctx_len; // the reservation
    Arena keep, recomp, fwork, dslot[2], dskips, gwork;
    Arena grads;       // full: mirrors m->params
    Arena lora_p, lora_g;
    size_t bytes[9];
    BlockSave *sv;     // (n_blocks)
    LoraPair *lora;    // (n_blocks * max layers * 8) indexed by lora_index
    int *lora_base;    // (n_blocks) first LoRA pair of each transformer block
    int n_lora;
    float lora_scale;
    ParamTable lora_table;
    // time embedding
    Tensor tp, h1, a1, e, temb; // (N, C0), (N, 4C0) x4
    Tensor dtemb;               // (N, 4C0) accumulated over the resnets
    Tensor ctx;                 // (N, L, cross) the caller's context
    Tensor dctx;                // accumulated (want_dctx)
    int have_forward;
    float *merge_backup; // base projection weights while LoRA is merged
    int merged;
} UnetTrain;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

static void zero(const UnetTrain *T, Tensor *t) {
    if (!T->measuring) memset(t->data, 0, tensor_bytes(t));
}

// The gradient of parameter p (a view at the same offset in the gradient
// arena), or NULL when the base is frozen (LoRA).
static Tensor *gp(const Unet *m, const Tensor *p, Tensor *tmp) {
    const UnetTrain *T = m->train;
    if (T->o.lora_rank || !p->data) return NULL;
    *tmp = *p;
    if (T->measuring) return tmp;
    size_t off = (size_t)((const char *)p->data - m->params.base);
    SDC_CHECK(off < m->params.cap);
    tmp->data = T->grads.base + off;
    return tmp;
}

// out += in (same shapes)
static void acc(const Backend *be, Tensor *out, const Tensor *in) { be->add(be, out, out, in); }

// A Tensor of x's shape in arena a.
static Tensor like(Arena *a, const Tensor *x) { return arena_tensor(a, DT_F32, x->ndim, x->shape); }

// The gradient of LoRA parameter p: the same offset in the LoRA gradient arena.
static Tensor lora_grad(const UnetTrain *T, const Tensor *p) {
    Tensor g = *p;
    if (!T->measuring) g.data = T->lora_g.base + ((const char *)p->data - T->lora_p.base);
    return g;
}

// ---------------------------------------------------------------------------
// LoRA'd linear: y = x W^T + b (+ scale * (x down^T) up^T)
// ---------------------------------------------------------------------------

static void lin_fwd(UnetTrain *T, Arena *keep, Tensor *y, const Tensor *x, const Tensor *w,
                    const Tensor *b, const LoraPair *lo, Tensor *hidden) {
    const Backend *be = T->be;
    be->linear(be, y, x, w, b);
    if (!lo) return;
    int64_t M = tensor_numel(x) / x->shape[x->ndim - 1];
    *hidden = TF32(keep, M, lo->down.shape[0]); // (M, r)
    Tensor xf = tensor_reshape(*x, 2, (int64_t[]){M, x->shape[x->ndim - 1]});
    be->linear(be, hidden, &xf, &lo->down, NULL);
    size_t mark = arena_mark(&T->fwork);
    Tensor u = TF32(&T->fwork, M, lo->up.shape[0]); // (M, out)
    be->linear(be, &u, hidden, &lo->up, NULL);
    be->scale(be, &u, &u, T->lora_scale);
    Tensor yf = tensor_reshape(*y, 2, (int64_t[]){M, y->shape[y->ndim - 1]});
    acc(be, &yf, &u);
    arena_reset(&T->fwork, mark);
}

// dy -> dx (overwritten; NULL: not wanted), parameter / LoRA gradients added.
static void lin_bwd(Unet *m, Tensor *dx, const Tensor *dy, const Tensor *x, const Tensor *w,
                    const Tensor *b, const LoraPair *lo, const Tensor *hidden) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    Tensor gw, gb;
    int64_t K = x->shape[x->ndim - 1], N = dy->shape[dy->ndim - 1], M = tensor_numel(x) / K;
    Tensor x2 = tensor_reshape(*x, 2, (int64_t[]){M, K});
    Tensor dy2 = tensor_reshape(*dy, 2, (int64_t[]){M, N});
    Tensor dx2, *pdx = NULL;
    if (dx) {
        dx2 = tensor_reshape(*dx, 2, (int64_t[]){M, K});
        pdx = &dx2;
    }
    Tensor *pgw = gp(m, w, &gw), *pgb = b ? gp(m, b, &gb) : NULL;
    if (pdx || pgw || pgb) be->linear_backward(be, pdx, pgw, pgb, &dy2, &x2, w);
    if (!lo) return;
    size_t mark = arena_mark(&T->gwork);
    int64_t r = lo->down.shape[0];
    Tensor du = TF32(&T->gwork, M, N); // (M, out) scale * dy
    be->scale(be, &du, &dy2, T->lora_scale);
    Tensor dh = TF32(&T->gwork, M, r); // (M, r)
    Tensor gup = lora_grad(T, &lo->up), gdown = lora_grad(T, &lo->down);
    be->linear_backward(be, &dh, &gup, NULL, &du, hidden, &lo->up);
    if (pdx) {
        Tensor dxl = TF32(&T->gwork, M, K);
        be->linear_backward(be, &dxl, &gdown, NULL, &dh, &x2, &lo->down);
        acc(be, pdx, &dxl);
    } else {
        be->linear_backward(be, NULL, &gdown, NULL, &dh, &x2, &lo->down);
    }
    arena_reset(&T->gwork, mark);
}

// ---------------------------------------------------------------------------
// forward, keeping intermediates in `keep` (the output of a block goes to
// `outa`: the kept outputs, or the recompute arena when recomputing)
// ---------------------------------------------------------------------------

static const LoraPair *lora_at(const UnetTrain *T, int block, int layer, int j) {
    if (!T->o.lora_rank) return NULL;
    return &T->lora[T->lora_base[block] + layer * LORA_PER_LAYER + j];
}

// Attention with projections; returns the output projection in res (fwork).
static void attn_fwd(Unet *m, Arena *keep, const AttnParams *a, int heads, const LoraPair *lo,
                     AttnSave *sv, Tensor *res, const Tensor *xq, const Tensor *xkv) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    int64_t N = xq->shape[0], S = xq->shape[1], D = a->q.shape[0], L = xkv->shape[1];
    sv->q = TF32(keep, N, S, D);
    sv->k = TF32(keep, N, L, D);
    sv->v = TF32(keep, N, L, D);
    sv->o = TF32(keep, N, S, D);
    lin_fwd(T, keep, &sv->q, xq, &a->q, NULL, lo ? &lo[0] : NULL, &sv->hq);
    lin_fwd(T, keep, &sv->k, xkv, &a->k, NULL, lo ? &lo[1] : NULL, &sv->hk);
    lin_fwd(T, keep, &sv->v, xkv, &a->v, NULL, lo ? &lo[2] : NULL, &sv->hv);
    be->attention(be, &sv->o, &sv->q, &sv->k, &sv->v, heads, 0);
    lin_fwd(T, keep, res, &sv->o, &a->out_w, &a->out_b, lo ? &lo[3] : NULL, &sv->ho);
}

static void tlayer_fwd(Unet *m, Arena *keep, int bi, int l, const TLayerParams *p, int heads,
                       TLayerSave *sv, const Tensor *hin, const Tensor *ctx) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    int64_t N = hin->shape[0], S = hin->shape[1], D = hin->shape[2];
    const float eps = 1e-5f;
    sv->hin = *hin;
    size_t mark = arena_mark(&T->fwork);
    Tensor res = TF32(&T->fwork, N, S, D); // (N, S, D) a branch's output
    sv->t1 = TF32(keep, N, S, D);
    be->layer_norm(be, &sv->t1, hin, &p->n1_g, &p->n1_b, eps);
    attn_fwd(m, keep, &p->attn1, heads, lora_at(T, bi, l, 0), &sv->a1, &res, &sv->t1, &sv->t1);
    sv->hs1 = TF32(keep, N, S, D);
    be->add(be, &sv->hs1, hin, &res);
    sv->t2 = TF32(keep, N, S, D);
    be->layer_norm(be, &sv->t2, &sv->hs1, &p->n2_g, &p->n2_b, eps);
    attn_fwd(m, keep, &p->attn2, heads, lora_at(T, bi, l, 4), &sv->a2, &res, &sv->t2, ctx);
    sv->hs2 = TF32(keep, N, S, D);
    be->add(be, &sv->hs2, &sv->hs1, &res);
    sv->t3 = TF32(keep, N, S, D);
    be->layer_norm(be, &sv->t3, &sv->hs2, &p->n3_g, &p->n3_b, eps);
    sv->pr = TF32(keep, N, S, 8 * D);
    be->linear(be, &sv->pr, &sv->t3, &p->ff0_w, &p->ff0_b);
    sv->g = TF32(keep, N, S, 4 * D);
    be->geglu(be, &sv->g, &sv->pr);
    be->linear(be, &res, &sv->g, &p->ff2_w, &p->ff2_b);
    sv->hout = TF32(keep, N, S, D);
    be->add(be, &sv->hout, &sv->hs2, &res);
    arena_reset(&T->fwork, mark);
}

// One block from sv->x (and sv->skip); the output goes to outa.
static void block_fwd(Unet *m, int bi, Arena *keep, Arena *outa) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    const UnetBlock *b = &m->blocks[bi];
    BlockSave *sv = &T->sv[bi];
    const float eps = m->cfg.norm_eps;
    const int G = m->cfg.norm_groups;
    Tensor x = sv->x;
    int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], Cout = b->info.out_channels;
    switch (b->info.kind) {
    case UNET_BLOCK_CONV_IN:
        sv->out = TF32(outa, N, Cout, H, W);
        be->conv2d(be, &sv->out, &x, &b->conv.w, &b->conv.b, 1, 1);
        break;
    case UNET_BLOCK_DOWNSAMPLE:
        sv->out = TF32(outa, N, C, (H + 1) / 2, (W + 1) / 2);
        be->conv2d(be, &sv->out, &x, &b->conv.w, &b->conv.b, 2, 1);
        break;
    case UNET_BLOCK_UPSAMPLE:
        sv->u = TF32(keep, N, C, sv->up_h, sv->up_w);
        be->upsample_nearest2x(be, &sv->u, &x);
        sv->out = TF32(outa, N, C, sv->up_h, sv->up_w);
        be->conv2d(be, &sv->out, &sv->u, &b->conv.w, &b->conv.b, 1, 1);
        break;
    case UNET_BLOCK_OUT:
        sv->u = like(keep, &x);
        be->group_norm(be, &sv->u, &x, &b->out.norm_g, &b->out.norm_b, G, eps, 1);
        sv->out = TF32(outa, N, Cout, H, W);
        be->conv2d(be, &sv->out, &sv->u, &b->out.conv.w, &b->out.conv.b, 1, 1);
        break;
    case UNET_BLOCK_RESNET: {
        const ResnetParams *p = &b->res;
        Tensor xin = x;
        if (b->info.pops_skip) {
            sv->cat = TF32(keep, N, C + sv->skip.shape[1], H, W);
            be->concat_channels(be, &sv->cat, &x, &sv->skip);
            xin = sv->cat;
        }
        sv->h = like(keep, &xin);
        be->group_norm(be, &sv->h, &xin, &p->norm1_g, &p->norm1_b, G, eps, 1);
        sv->h2 = TF32(keep, N, Cout, H, W);
        be->conv2d(be, &sv->h2, &sv->h, &p->conv1.w, &p->conv1.b, 1, 1);
        size_t mark = arena_mark(&T->fwork);
        Tensor tp = TF32(&T->fwork, N, Cout); // (N, Cout) time_emb_proj(SiLU(temb))
        be->linear(be, &tp, &T->temb, &p->temb_w, &p->temb_b);
        be->add_channel_bias(be, &sv->h2, &sv->h2, &tp);
        sv->h3 = TF32(keep, N, Cout, H, W);
        be->group_norm(be, &sv->h3, &sv->h2, &p->norm2_g, &p->norm2_b, G, eps, 1);
        sv->out = TF32(outa, N, Cout, H, W);
        be->conv2d(be, &sv->out, &sv->h3, &p->conv2.w, &p->conv2.b, 1, 1);
        if (p->shortcut.w.ndim) {
            Tensor sc = TF32(&T->fwork, N, Cout, H, W);
            be->conv2d(be, &sc, &xin, &p->shortcut.w, &p->shortcut.b, 1, 0);
            acc(be, &sv->out, &sc);
        } else {
            acc(be, &sv->out, &xin);
        }
        arena_reset(&T->fwork, mark);
        break;
    }
    case UNET_BLOCK_TRANSFORMER: {
        const TransformerParams *p = &b->tf;
        int64_t S = H * W, D = p->inner;
        size_t mark = arena_mark(&T->fwork);
        Tensor hn = TF32(&T->fwork, N, C, H, W);
        be->group_norm(be, &hn, &x, &p->norm_g, &p->norm_b, G, 1e-6f, 0);
        sv->tok = TF32(keep, N, S, C);
        be->nchw_to_nlc(be, &sv->tok, &hn);
        arena_reset(&T->fwork, mark);
        Tensor hs = TF32(keep, N, S, D); // (N, S, D) proj_in output
        be->linear(be, &hs, &sv->tok, &p->in_w, &p->in_b);
        for (int l = 0; l < p->n_layers; l++) {
            tlayer_fwd(m, keep, bi, l, &p->layers[l], p->heads, &sv->L[l], &hs, &T->ctx);
            hs = sv->L[l].hout;
        }
        Tensor tok = TF32(&T->fwork, N, S, C);
        be->linear(be, &tok, &hs, &p->out_w, &p->out_b);
        sv->out = TF32(outa, N, C, H, W);
        be->nlc_to_nchw(be, &sv->out, &tok);
        acc(be, &sv->out, &x);
        arena_reset(&T->fwork, mark);
        break;
    }
    }
}

// Time embedding into T->temb (kept), then every block; the skip stack is
// simulated to record which output each popping block reads.
static void train_forward(Unet *m, const Tensor *x, const float *timesteps) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    int64_t N = x->shape[0], C0 = m->cfg.block_out[0];
    arena_reset(&T->keep, 0);
    arena_reset(&T->recomp, 0);
    arena_reset(&T->fwork, 0);
    T->tp = TF32(&T->keep, N, C0);
    be->timestep_embedding(be, &T->tp, timesteps, m->cfg.flip_sin_to_cos, m->cfg.freq_shift);
    T->h1 = TF32(&T->keep, N, 4 * C0);
    be->linear(be, &T->h1, &T->tp, &m->t_lin1_w, &m->t_lin1_b);
    T->a1 = TF32(&T->keep, N, 4 * C0);
    be->silu(be, &T->a1, &T->h1);
    T->e = TF32(&T->keep, N, 4 * C0);
    be->linear(be, &T->e, &T->a1, &m->t_lin2_w, &m->t_lin2_b);
    T->temb = TF32(&T->keep, N, 4 * C0);
    be->silu(be, &T->temb, &T->e);

    int stack[UNET_MAX_SKIPS], n = 0;
    Tensor cur = *x;
    for (int i = 0; i < m->n_blocks; i++) {
        const UnetBlockInfo *bi = &m->blocks[i].info;
        BlockSave *sv = &T->sv[i];
        sv->x = cur;
        if (bi->pops_skip) {
            SDC_CHECK(n > 0);
            sv->skip_of = stack[--n];
            sv->skip = T->sv[sv->skip_of].out;
        }
        if (bi->kind == UNET_BLOCK_UPSAMPLE) {
            SDC_CHECK(n > 0);
            const Tensor *next = &T->sv[stack[n - 1]].out;
            sv->up_h = next->shape[2];
            sv->up_w = next->shape[3];
        }
        Arena *inner = T->o.checkpointing ? &T->recomp : &T->keep;
        block_fwd(m, i, inner, &T->keep);
        if (T->o.checkpointing) arena_reset(&T->recomp, 0);
        if (bi->pushes_skip) {
            SDC_CHECK(n < UNET_MAX_SKIPS);
            stack[n++] = i;
        }
        cur = sv->out;
    }
    SDC_CHECK(n == 0);
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

static void conv_bwd(Unet *m, Tensor *dx, const Tensor *dy, const Tensor *x, const ConvParams *c,
                     int stride, int pad) {
    const Backend *be = m->train->be;
    Tensor gw, gb;
    Tensor *pgw = gp(m, &c->w, &gw), *pgb = gp(m, &c->b, &gb);
    if (dx || pgw || pgb) be->conv2d_backward(be, dx, pgw, pgb, dy, x, &c->w, stride, pad);
}

static void gn_bwd(Unet *m, Tensor *dx, const Tensor *dy, const Tensor *x, const Tensor *gamma,
                   const Tensor *beta, float eps, int silu) {
    const Backend *be = m->train->be;
    Tensor gg, gb;
    be->group_norm_backward(be, dx, gp(m, gamma, &gg), gp(m, beta, &gb), dy, x, gamma, beta,
                            m->cfg.norm_groups, eps, silu);
}

static void ln_bwd(Unet *m, Tensor *dx, const Tensor *dy, const Tensor *x, const Tensor *gamma,
                   const Tensor *beta) {
    const Backend *be = m->train->be;
    Tensor gg, gb;
    be->layer_norm_backward(be, dx, gp(m, gamma, &gg), gp(m, beta, &gb), dy, x, gamma, 1e-5f);
}

// dres (N, S, D): gradient of the attention's output projection -> dxq
// (overwritten); self-attention adds the k/v paths into dxq, cross-attention
// adds them into T->dctx (when wanted).
static void attn_bwd(Unet *m, const AttnParams *a, int heads, const LoraPair *lo, const AttnSave *sv,
                     const Tensor *dres, const Tensor *xq, const Tensor *xkv, Tensor *dxq, int cross) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    size_t mark = arena_mark(&T->gwork);
    Tensor dO = like(&T->gwork, &sv->o);
    lin_bwd(m, &dO, dres, &sv->o, &a->out_w, &a->out_b, lo ? &lo[3] : NULL, &sv->ho);
    Tensor dq = like(&T->gwork, &sv->q), dk = like(&T->gwork, &sv->k), dv = like(&T->gwork, &sv->v);
    be->attention_backward(be, &dq, &dk, &dv, &dO, &sv->q, &sv->k, &sv->v, heads, 0);
    lin_bwd(m, dxq, &dq, xq, &a->q, NULL, lo ? &lo[0] : NULL, &sv->hq);
    if (!cross || T->o.want_dctx) {
        Tensor *dst = cross ? &T->dctx : dxq;
        Tensor tmp = like(&T->gwork, xkv);
        lin_bwd(m, &tmp, &dk, xkv, &a->k, NULL, lo ? &lo[1] : NULL, &sv->hk);
        acc(be, dst, &tmp);
        lin_bwd(m, &tmp, &dv, xkv, &a->v, NULL, lo ? &lo[2] : NULL, &sv->hv);
        acc(be, dst, &tmp);
    } else {
        lin_bwd(m, NULL, &dk, xkv, &a->k, NULL, lo ? &lo[1] : NULL, &sv->hk);
        lin_bwd(m, NULL, &dv, xkv, &a->v, NULL, lo ? &lo[2] : NULL, &sv->hv);
    }
    arena_reset(&T->gwork, mark);
}

// dh (N, S, D): gradient of the layer's output, turned in place into the
// gradient of its input.
static void tlayer_bwd(Unet *m, int bi, int l, const TLayerParams *p, int heads, const TLayerSave *sv,
                       Tensor *dh) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    size_t mark = arena_mark(&T->gwork);
    Tensor dt = like(&T->gwork, dh), dn = like(&T->gwork, dh); // (N, S, D)
    size_t mark2 = arena_mark(&T->gwork);
    Tensor dg = like(&T->gwork, &sv->g);   // (N, S, 4D)
    lin_bwd(m, &dg, dh, &sv->g, &p->ff2_w, &p->ff2_b, NULL, NULL);
    Tensor dpr = like(&T->gwork, &sv->pr); // (N, S, 8D)
    be->geglu_backward(be, &dpr, &dg, &sv->pr);
    lin_bwd(m, &dt, &dpr, &sv->t3, &p->ff0_w, &p->ff0_b, NULL, NULL);
    arena_reset(&T->gwork, mark2);
    ln_bwd(m, &dn, &dt, &sv->hs2, &p->n3_g, &p->n3_b);
    acc(be, dh, &dn);
    attn_bwd(m, &p->attn2, heads, lora_at(T, bi, l, 4), &sv->a2, dh, &sv->t2, &T->ctx, &dt, 1);
    ln_bwd(m, &dn, &dt, &sv->hs1, &p->n2_g, &p->n2_b);
    acc(be, dh, &dn);
    attn_bwd(m, &p->attn1, heads, lora_at(T, bi, l, 0), &sv->a1, dh, &sv->t1, &sv->t1, &dt, 0);
    ln_bwd(m, &dn, &dt, &sv->hin, &p->n1_g, &p->n1_b);
    acc(be, dh, &dn);
    arena_reset(&T->gwork, mark);
}

typedef struct DskipStack {
    Tensor t[UNET_MAX_SKIPS];
    size_t mark[UNET_MAX_SKIPS];
    int n;
} DskipStack;

// dy: gradient of block bi's output -> the gradient of its input state, in
// dxa (an empty tensor for conv_in). A popping block pushes its skip's
// gradient on ds.
static Tensor block_bwd(Unet *m, int bi, const Tensor *dy, Arena *dxa, DskipStack *ds) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    const UnetBlock *b = &m->blocks[bi];
    const BlockSave *sv = &T->sv[bi];
    const float eps = m->cfg.norm_eps;
    const int lora = T->o.lora_rank > 0;
    Tensor x = sv->x, dx = {0};
    size_t mark = arena_mark(&T->gwork);
    switch (b->info.kind) {
    case UNET_BLOCK_CONV_IN:
        conv_bwd(m, NULL, dy, &x, &b->conv, 1, 1);
        break;
    case UNET_BLOCK_DOWNSAMPLE:
        dx = like(dxa, &x);
        conv_bwd(m, &dx, dy, &x, &b->conv, 2, 1);
        break;
    case UNET_BLOCK_UPSAMPLE: {
        Tensor du = like(&T->gwork, &sv->u);
        conv_bwd(m, &du, dy, &sv->u, &b->conv, 1, 1);
        dx = like(dxa, &x);
        be->upsample_nearest2x_backward(be, &dx, &du);
        break;
    }
    case UNET_BLOCK_OUT: {
        Tensor dhn = like(&T->gwork, &sv->u);
        conv_bwd(m, &dhn, dy, &sv->u, &b->out.conv, 1, 1);
        dx = like(dxa, &x);
        gn_bwd(m, &dx, &dhn, &x, &b->out.norm_g, &b->out.norm_b, eps, 1);
        break;
    }
    case UNET_BLOCK_RESNET: {
        const ResnetParams *p = &b->res;
        const Tensor *xin = b->info.pops_skip ? &sv->cat : &x;
        Tensor dxin = like(b->info.pops_skip ? &T->gwork : dxa, xin);
        if (p->shortcut.w.ndim) conv_bwd(m, &dxin, dy, xin, &p->shortcut, 1, 0);
        else be->copy(be, &dxin, dy);
        Tensor dh3 = like(&T->gwork, &sv->h3);
        conv_bwd(m, &dh3, dy, &sv->h3, &p->conv2, 1, 1);
        Tensor dh2 = like(&T->gwork, &sv->h2);
        gn_bwd(m, &dh2, &dh3, &sv->h2, &p->norm2_g, &p->norm2_b, eps, 1);
        if (!lora) {
            int64_t N = dy->shape[0];
            Tensor dtp = TF32(&T->gwork, N, dy->shape[1]); // (N, Cout)
            be->add_channel_bias_backward(be, &dtp, &dh2);
            Tensor dt = like(&T->gwork, &T->temb);
            Tensor gw, gb;
            be->linear_backward(be, &dt, gp(m, &p->temb_w, &gw), gp(m, &p->temb_b, &gb), &dtp, &T->temb,
                                &p->temb_w);
            acc(be, &T->dtemb, &dt);
        }
        Tensor dh = like(&T->gwork, &sv->h);
        conv_bwd(m, &dh, &dh2, &sv->h, &p->conv1, 1, 1);
        Tensor dg = like(&T->gwork, xin);
        gn_bwd(m, &dg, &dh, xin, &p->norm1_g, &p->norm1_b, eps, 1);
        acc(be, &dxin, &dg);
        if (b->info.pops_skip) {
            dx = like(dxa, &x);
            SDC_CHECK(ds->n < UNET_MAX_SKIPS);
            ds->mark[ds->n] = arena_mark(&T->dskips);
            Tensor dsk = like(&T->dskips, &sv->skip);
            ds->t[ds->n++] = dsk;
            be->concat_channels_backward(be, &dx, &dsk, &dxin);
        } else {
            dx = dxin;
        }
        break;
    }
    case UNET_BLOCK_TRANSFORMER: {
        const TransformerParams *p = &b->tf;
        int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2] * x.shape[3], D = p->inner;
        Tensor dtok = TF32(&T->gwork, N, S, C);
        be->nchw_to_nlc(be, &dtok, dy);
        Tensor dh = TF32(&T->gwork, N, S, D);
        lin_bwd(m, &dh, &dtok, &sv->L[p->n_layers - 1].hout, &p->out_w, &p->out_b, NULL, NULL);
        for (int l = p->n_layers - 1; l >= 0; l--) tlayer_bwd(m, bi, l, &p->layers[l], p->heads, &sv->L[l], &dh);
        lin_bwd(m, &dtok, &dh, &sv->tok, &p->in_w, &p->in_b, NULL, NULL);
        Tensor dhn = like(&T->gwork, &x);
        be->nlc_to_nchw(be, &dhn, &dtok);
        dx = like(dxa, &x);
        gn_bwd(m, &dx, &dhn, &x, &p->norm_g, &p->norm_b, 1e-6f, 0);
        acc(be, &dx, dy);
        break;
    }
    }
    arena_reset(&T->gwork, mark);
    return dx;
}

static void train_backward(Unet *m, const Tensor *dout) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    const int lora = T->o.lora_rank > 0;
    for (int i = 0; i < 2; i++) arena_reset(&T->dslot[i], 0);
    arena_reset(&T->dskips, 0);
    arena_reset(&T->gwork, 0);
    T->dtemb = like(&T->keep, &T->temb);
    zero(T, &T->dtemb);
    if (T->o.want_dctx) {
        T->dctx = like(&T->keep, &T->ctx);
        zero(T, &T->dctx);
    }
    DskipStack ds = {.n = 0};
    Tensor dcur = *dout;
    int slot = 0;
    for (int i = m->n_blocks - 1; i >= 0; i--) {
        const UnetBlockInfo *bi = &m->blocks[i].info;
        if (bi->kind == UNET_BLOCK_CONV_IN && lora) break; // nothing trainable before it
        if (bi->pushes_skip) {
            SDC_CHECK(ds.n > 0);
            Tensor *dsk = &ds.t[--ds.n];
            SDC_CHECK(tensor_same_shape(dsk, &dcur));
            acc(be, &dcur, dsk);
            arena_reset(&T->dskips, ds.mark[ds.n]);
        }
        if (T->o.checkpointing) { // recompute the block's intermediates
            arena_reset(&T->recomp, 0);
            Tensor out = T->sv[i].out;
            block_fwd(m, i, &T->recomp, &T->recomp);
            T->sv[i].out = out;
        }
        arena_reset(&T->dslot[slot], 0);
        dcur = block_bwd(m, i, &dcur, &T->dslot[slot], &ds);
        slot ^= 1;
    }
    SDC_CHECK(ds.n == 0 || lora);
    if (!lora) { // the time embedding MLP
        Tensor de = like(&T->gwork, &T->e), da1 = like(&T->gwork, &T->a1), dh1 = like(&T->gwork, &T->h1);
        Tensor gw, gb;
        be->silu_backward(be, &de, &T->dtemb, &T->e);
        be->linear_backward(be, &da1, gp(m, &m->t_lin2_w, &gw), gp(m, &m->t_lin2_b, &gb), &de, &T->a1,
                            &m->t_lin2_w);
        be->silu_backward(be, &dh1, &da1, &T->h1);
        be->linear_backward(be, NULL, gp(m, &m->t_lin1_w, &gw), gp(m, &m->t_lin1_b, &gb), &dh1, &T->tp,
                            &m->t_lin1_w);
        arena_reset(&T->gwork, 0);
    }
    // dtemb / dctx stay in keep until the next forward resets it (the caller copies dctx first)
}

// ---------------------------------------------------------------------------
// planning and the public entry points
// ---------------------------------------------------------------------------

enum { B_KEEP, B_RECOMP, B_FWORK, B_DSLOT0, B_DSLOT1, B_DSKIPS, B_GWORK, B_GRADS, B_LORA };

static Arena *train_arena(UnetTrain *T, int i) {
    switch (i) {
    case B_KEEP: return &T->keep;
    case B_RECOMP: return &T->recomp;
    case B_FWORK: return &T->fwork;
    case B_DSLOT0: return &T->dslot[0];
    case B_DSLOT1: return &T->dslot[1];
    case B_DSKIPS: return &T->dskips;
    case B_GWORK: return &T->gwork;
    }
    return NULL;
}

void unet_train_free(Unet *m) {
    UnetTrain *T = m->train;
    if (!T) return;
    for (int i = 0; i <= B_GWORK; i++) arena_free(train_arena(T, i));
    arena_free(&T->grads);
    arena_free(&T->lora_p);
    arena_free(&T->lora_g);
    if (T->sv)
        for (int i = 0; i < m->n_blocks; i++) free(T->sv[i].L);
    free(T->sv);
    free(T->lora);
    free(T->lora_base);
    free(T->merge_backup);
    param_table_free(&T->lora_table);
    free(T);
    m->train = NULL;
}

// The LoRA pairs of every transformer layer, in block order; measuring
// (count only) when a->measure.
static void lora_build(Unet *m, Arena *a, int rank, Rng *rng) {
    UnetTrain *T = m->train;
    static const char *const names[LORA_PER_LAYER] = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                                      "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"};
    int k = 0;
    for (int bi = 0; bi < m->n_blocks; bi++) {
        const UnetBlock *b = &m->blocks[bi];
        T->lora_base[bi] = k;
        if (b->info.kind != UNET_BLOCK_TRANSFORMER) continue;
        for (int l = 0; l < b->tf.n_layers; l++) {
            const TLayerParams *p = &b->tf.layers[l];
            const Tensor *ws[LORA_PER_LAYER] = {&p->attn1.q, &p->attn1.k, &p->attn1.v, &p->attn1.out_w,
                                                &p->attn2.q, &p->attn2.k, &p->attn2.v, &p->attn2.out_w};
            for (int j = 0; j < LORA_PER_LAYER; j++, k++) {
                LoraPair *lp = &T->lora[k];
                int64_t out = ws[j]->shape[0], in = ws[j]->shape[1];
                lp->down = TF32(a, rank, in);
                lp->up = TF32(a, out, rank);
                if (a->measure) continue;
                rng_normal(rng, tensor_f32p(&lp->down), (size_t)(rank * in));
                float *d = tensor_f32p(&lp->down);
                for (int64_t i = 0; i < rank * in; i++) d[i] *= 1.0f / (float)rank;
                memset(lp->up.data, 0, tensor_bytes(&lp->up));
                char nm[160];
                snprintf(nm, sizeof nm, "%s.transformer_blocks.%d.%s.lora.down.weight", b->info.name, l, names[j]);
                ParamTable *tb = &T->lora_table;
                if (tb->n + 2 > tb->cap) {
                    tb->cap = tb->cap ? 2 * tb->cap : 256;
                    tb->e = realloc(tb->e, (size_t)tb->cap * sizeof *tb->e);
                    SDC_CHECK(tb->e); // once at reserve
                }
                snprintf(tb->e[tb->n].name, sizeof tb->e[tb->n].name, "%.127s", nm);
                tb->e[tb->n++].t = lp->down;
                snprintf(nm, sizeof nm, "%s.transformer_blocks.%d.%s.lora.up.weight", b->info.name, l, names[j]);
                snprintf(tb->e[tb->n].name, sizeof tb->e[tb->n].name, "%.127s", nm);
                tb->e[tb->n++].t = lp->up;
            }
        }
    }
    T->n_lora = k;
}

int unet_train_reserve(Unet *m, const UnetTrainOpts *o, int batch, int h, int w, int ctx_len,
                       SdcError *err) {
    if (m->be->device != DEV_CPU || m->be->act_dtype != DT_F32 || !m->be->conv2d_backward)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "unet: training runs on the CPU backend in fp32 (got %s)\n"
                       "---> use --device cpu for training", m->be->name);
    if (!o->lora_rank && !m->table.n)
        return sdc_err(err, SDC_ERR_ARG, "unet: full training needs the model loaded trainable "
                       "(unet_load_opts with .trainable = 1)");
    if (o->lora_rank < 0 || (o->lora_rank && !(o->lora_alpha > 0)))
        return sdc_err(err, SDC_ERR_ARG, "unet: LoRA rank %d, alpha %g: the rank must be >= 0 and the alpha > 0",
                       o->lora_rank, o->lora_alpha);
    int d = 1 << (m->cfg.n_levels - 1);
    if (batch < 1 || h < 1 || w < 1 || ctx_len < 1 || h % d || w % d)
        return sdc_err(err, SDC_ERR_ARG, "unet: training batch %d at latent %dx%d with %d tokens: the "
                       "latent size must be a positive multiple of %d", batch, h, w, ctx_len, d);
    unet_train_free(m);
    UnetTrain *T = calloc(1, sizeof *T);
    if (!T) return sdc_err(err, SDC_ERR_OOM, "unet: out of memory");
    m->train = T;
    T->o = *o;
    T->sv = calloc((size_t)m->n_blocks, sizeof *T->sv);
    T->lora_base = calloc((size_t)m->n_blocks, sizeof *T->lora_base);
    int n_pairs = 0;
    for (int i = 0; T->sv && i < m->n_blocks; i++)
        if (m->blocks[i].info.kind == UNET_BLOCK_TRANSFORMER) {
            T->sv[i].L = calloc((size_t)m->blocks[i].tf.n_layers, sizeof *T->sv[i].L);
            if (!T->sv[i].L) goto oom;
            n_pairs += m->blocks[i].tf.n_layers * LORA_PER_LAYER;
        }
    T->lora = calloc((size_t)n_pairs + 1, sizeof *T->lora);
    if (!T->sv || !T->lora_base || !T->lora) goto oom;

    int rc;
    if (o->lora_rank) {
        T->lora_scale = o->lora_alpha / (float)o->lora_rank;
        Arena meas;
        arena_init_measure(&meas);
        lora_build(m, &meas, o->lora_rank, NULL);
        if ((rc = arena_init(&T->lora_p, NULL, meas.peak, err)) ||
            (rc = arena_init(&T->lora_g, NULL, meas.peak, err)))
            goto fail;
        memset(T->lora_p.base, 0, T->lora_p.cap);
        memset(T->lora_g.base, 0, T->lora_g.cap);
        Rng rng;
        rng_seed(&rng, o->lora_seed);
        lora_build(m, &T->lora_p, o->lora_rank, &rng);
    } else {
        if ((rc = arena_init(&T->grads, NULL, m->params.cap, err))) goto fail;
        memset(T->grads.base, 0, T->grads.cap);
    }

    // The measuring pass: forward and backward against no-op ops.
    T->measuring = 1;
    T->be = backend_measure();
    for (int i = 0; i <= B_GWORK; i++) arena_init_measure(train_arena(T, i));
    Arena fake;
    arena_init_measure(&fake);
    const UnetConfig *c = &m->cfg;
    Tensor x = TF32(&fake, batch, c->in_channels, h, w);
    Tensor dout = TF32(&fake, batch, c->out_channels, h, w);
    T->ctx = TF32(&fake, batch, ctx_len, c->cross_dim);
    float *ts = calloc((size_t)batch, sizeof *ts);
    if (!ts) goto oom;
    train_forward(m, &x, ts);
    train_backward(m, &dout);
    free(ts);
    for (int i = 0; i <= B_GWORK; i++) T->bytes[i] = train_arena(T, i)->peak;
    T->measuring = 0;
    T->be = m->be;
    for (int i = 0; i <= B_GWORK; i++)
        if ((rc = arena_init(train_arena(T, i), NULL, T->bytes[i], err))) goto fail;
    T->bytes[B_GRADS] = T->grads.cap;
    T->bytes[B_LORA] = T->lora_p.cap + T->lora_g.cap;
    T->batch = batch;
    T->h = h;
    T->w = w;
    T->ctx_len = ctx_len;
    return 0;
oom:
    rc = sdc_err(err, SDC_ERR_OOM, "unet: out of memory planning training");
fail:
    sdc_err_wrap(err, "unet training memory for batch %d at %dx%d", batch, h, w);
    unet_train_free(m);
    return rc;
}

int unet_train_forward(Unet *m, Tensor *out, const Tensor *x, const float *timesteps,
                       const Tensor *ctx, SdcError *err) {
    UnetTrain *T = m->train;
    if (!T) return sdc_err(err, SDC_ERR_ARG, "unet: unet_train_reserve first");
    const UnetConfig *c = &m->cfg;
    if (x->ndim != 4 || ctx->ndim != 3 || out->ndim != 4 || x->dtype != DT_F32 || ctx->dtype != DT_F32 ||
        out->dtype != DT_F32 || x->shape[0] < 1 || x->shape[0] > T->batch || x->shape[1] != c->in_channels ||
        x->shape[2] != T->h || x->shape[3] != T->w || ctx->shape[0] != x->shape[0] ||
        ctx->shape[1] != T->ctx_len || ctx->shape[2] != c->cross_dim || out->shape[0] != x->shape[0] ||
        out->shape[1] != c->out_channels || out->shape[2] != T->h || out->shape[3] != T->w) {
        char b1[64], b2[64], b3[64];
        return sdc_err(err, SDC_ERR_ARG,
                       "unet training: x %s, context %s, out %s do not match the reservation "
                       "(batch up to %d, latent %dx%d, %d tokens)",
                       tensor_shape_str(x, b1, sizeof b1), tensor_shape_str(ctx, b2, sizeof b2),
                       tensor_shape_str(out, b3, sizeof b3), T->batch, T->h, T->w, T->ctx_len);
    }
    T->ctx = *ctx;
    train_forward(m, x, timesteps);
    m->be->copy(m->be, out, &T->sv[m->n_blocks - 1].out);
    T->have_forward = 1;
    return 0;
}

int unet_train_backward(Unet *m, const Tensor *dout, Tensor *dctx, SdcError *err) {
    UnetTrain *T = m->train;
    if (!T || !T->have_forward)
        return sdc_err(err, SDC_ERR_ARG, "unet: unet_train_backward needs a unet_train_forward first");
    const Tensor *y = &T->sv[m->n_blocks - 1].out;
    if (!tensor_same_shape(dout, y) || dout->dtype != DT_F32)
        return sdc_err(err, SDC_ERR_ARG, "unet: dout must have the output's shape");
    if (dctx && (!T->o.want_dctx || !tensor_same_shape(dctx, &T->ctx)))
        return sdc_err(err, SDC_ERR_ARG, "unet: dctx needs want_dctx and the context's shape");
    train_backward(m, dout);
    if (dctx) m->be->copy(m->be, dctx, &T->dctx);
    T->have_forward = 0;
    return 0;
}

void unet_trainables(Unet *m, float **params, float **grads, size_t *n) {
    UnetTrain *T = m->train;
    SDC_CHECK(T);
    if (T->o.lora_rank) {
        *params = (float *)T->lora_p.base;
        *grads = (float *)T->lora_g.base;
        *n = T->lora_p.cap / sizeof(float);
    } else {
        *params = (float *)m->params.base;
        *grads = (float *)T->grads.base;
        *n = m->params.cap / sizeof(float);
    }
}

const ParamTable *unet_train_table(const Unet *m) {
    SDC_CHECK(m->train);
    return m->train->o.lora_rank ? &m->train->lora_table : &m->table;
}

size_t unet_train_bytes(const Unet *m) {
    if (!m->train) return 0;
    size_t s = 0;
    for (int i = 0; i <= B_LORA; i++) s += m->train->bytes[i];
    return s;
}

// ---------------------------------------------------------------------------
// LoRA merged into the base weights (inference with the trained adapter)
// ---------------------------------------------------------------------------

int unet_lora_merge(Unet *m, int on, SdcError *err) {
    UnetTrain *T = m->train;
    if (!T || !T->o.lora_rank) return 0;
    if (on && !m->table.n)
        return sdc_err(err, SDC_ERR_ARG, "unet: merging LoRA needs the base loaded trainable (own copies)");
    int k = 0;
    size_t need = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        k = 0;
        for (int bi = 0; bi < m->n_blocks; bi++) {
            const UnetBlock *b = &m->blocks[bi];
            if (b->info.kind != UNET_BLOCK_TRANSFORMER) continue;
            for (int l = 0; l < b->tf.n_layers; l++) {
                TLayerParams *p = &b->tf.layers[l];
                Tensor *ws[LORA_PER_LAYER] = {&p->attn1.q, &p->attn1.k, &p->attn1.v, &p->attn1.out_w,
                                              &p->attn2.q, &p->attn2.k, &p->attn2.v, &p->attn2.out_w};
                for (int j = 0; j < LORA_PER_LAYER; j++, k++) {
                    size_t n = (size_t)tensor_numel(ws[j]);
                    if (pass == 0) {
                        need += n;
                        continue;
                    }
                    float *w = tensor_f32p(ws[j]), *bk = T->merge_backup + off;
                    off += n;
                    if (!on) { // restore the exact base weights
                        memcpy(w, bk, n * sizeof *w);
                        continue;
                    }
                    memcpy(bk, w, n * sizeof *w);
                    const LoraPair *lp = &T->lora[k];
                    int64_t out = ws[j]->shape[0], in = ws[j]->shape[1], r = lp->down.shape[0];
                    const float *up = tensor_f32p(&lp->up), *down = tensor_f32p(&lp->down);
                    for (int64_t o = 0; o < out; o++)
                        for (int64_t q = 0; q < r; q++) {
                            float u = T->lora_scale * up[o * r + q];
                            for (int64_t i = 0; i < in; i++) w[o * in + i] += u * down[q * in + i];
                        }
                }
            }
        }
        if (pass == 0) {
            if (!on && !T->merged) return 0;
            if (on && T->merged) return 0;
            if (!T->merge_backup) {
                T->merge_backup = malloc(need * sizeof(float));
                if (!T->merge_backup) return sdc_err(err, SDC_ERR_OOM, "unet: out of memory merging LoRA");
            }
        }
    }
    T->merged = on;
    return 0;
}
