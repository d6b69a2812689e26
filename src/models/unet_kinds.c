// unet_kinds.c: every UNet block kind's record (unet_internal.h): its
// parameters, its one forward (inference and training alike: pass.h) and its
// backward. Semantics follow diffusers 0.42 (unet_2d_condition.py,
// unet_2d_blocks.py, resnet.py, transformer_2d.py, attention.py,
// embeddings.py):
// - time_embedding: sinusoid (flip_sin_to_cos, freq_shift), linear_1, SiLU,
//   linear_2; every resnet then takes SiLU of it (computed once, here).
// - ResnetBlock2D: GN(eps=norm_eps)+SiLU, conv1, + time_emb_proj(SiLU(temb)),
//   GN+SiLU, conv2, + (1x1 conv_shortcut when channels change); scale 1.
// - Transformer2DModel: GN(eps 1e-6), proj_in (1x1 conv or linear: the same
//   matrix product once the tokens are (N, H*W, C)), BasicTransformerBlocks
//   (LayerNorm eps 1e-5; self-attn, cross-attn, GEGLU feed-forward, each
//   residual), proj_out, + input.
// Gradients are checked against torch autograd (tests/test_unet_grad.c), the
// forward against diffusers (tests/test_unet.c). Only backend ops are
// called; nothing here branches on the device.
#include <stdio.h>
#include <string.h>

#include "models/unet_internal.h"

// ---------------------------------------------------------------------------
// loading
// ---------------------------------------------------------------------------

static void load_time(ParamLoader *pl, const Unet *m, UnetBlock *b) {
    const int C0 = b->info.in_channels, T = b->info.out_channels;
    b->time.lin1_w = param_get(pl, SHAPE(T, C0), "%sweight", b->info.pre[0].diff);
    b->time.lin1_b = param_get(pl, SHAPE(T), "%sbias", b->info.pre[0].diff);
    b->time.lin2_w = param_get(pl, SHAPE(T, T), "%sweight", b->info.pre[1].diff);
    b->time.lin2_b = param_get(pl, SHAPE(T), "%sbias", b->info.pre[1].diff);
    if (m->cfg.add_time_dim) { // SDXL's add_embedding
        b->time.add1_w = param_get(pl, SHAPE(T, m->cfg.add_in_dim), "%sweight", b->info.pre[2].diff);
        b->time.add1_b = param_get(pl, SHAPE(T), "%sbias", b->info.pre[2].diff);
        b->time.add2_w = param_get(pl, SHAPE(T, T), "%sweight", b->info.pre[3].diff);
        b->time.add2_b = param_get(pl, SHAPE(T), "%sbias", b->info.pre[3].diff);
    }
}

static void load_conv(ParamLoader *pl, const Unet *m, UnetBlock *b) {
    (void)m;
    const int ci = b->info.in_channels, co = b->info.out_channels;
    b->conv.w = param_get(pl, SHAPE(co, ci, 3, 3), "%sweight", b->info.pre[0].diff);
    b->conv.b = param_get(pl, SHAPE(co), "%sbias", b->info.pre[0].diff);
}

static void load_resnet(ParamLoader *pl, const Unet *m, UnetBlock *b) {
    ResnetParams *r = &b->res;
    const char *p = b->info.name;
    const int cin = b->info.in_channels + b->info.skip_channels, cout = b->info.out_channels;
    const int temb = 4 * m->cfg.block_out[0];
    r->norm1_g = param_get(pl, SHAPE(cin), "%s.norm1.weight", p);
    r->norm1_b = param_get(pl, SHAPE(cin), "%s.norm1.bias", p);
    r->conv1.w = param_get(pl, SHAPE(cout, cin, 3, 3), "%s.conv1.weight", p);
    r->conv1.b = param_get(pl, SHAPE(cout), "%s.conv1.bias", p);
    r->temb_w = param_get(pl, SHAPE(cout, temb), "%s.time_emb_proj.weight", p);
    r->temb_b = param_get(pl, SHAPE(cout), "%s.time_emb_proj.bias", p);
    r->norm2_g = param_get(pl, SHAPE(cout), "%s.norm2.weight", p);
    r->norm2_b = param_get(pl, SHAPE(cout), "%s.norm2.bias", p);
    r->conv2.w = param_get(pl, SHAPE(cout, cout, 3, 3), "%s.conv2.weight", p);
    r->conv2.b = param_get(pl, SHAPE(cout), "%s.conv2.bias", p);
    if (cin != cout) {
        r->shortcut.w = param_get(pl, SHAPE(cout, cin, 1, 1), "%s.conv_shortcut.weight", p);
        r->shortcut.b = param_get(pl, SHAPE(cout), "%s.conv_shortcut.bias", p);
    }
}

static void load_attn(ParamLoader *pl, AttnParams *a, const char *p, int d, int dk) {
    a->q = param_get(pl, SHAPE(d, d), "%s.to_q.weight", p);
    a->k = param_get(pl, SHAPE(d, dk), "%s.to_k.weight", p);
    a->v = param_get(pl, SHAPE(d, dk), "%s.to_v.weight", p);
    a->out_w = param_get(pl, SHAPE(d, d), "%s.to_out.0.weight", p);
    a->out_b = param_get(pl, SHAPE(d), "%s.to_out.0.bias", p);
}

// The per-layer table is allocated by unet.c before loading (tf.layers).
static void load_transformer(ParamLoader *pl, const Unet *m, UnetBlock *b) {
    TransformerParams *t = &b->tf;
    const char *p = b->info.name;
    const int C = b->info.in_channels, D = b->info.inner, Dc = m->cfg.cross_dim;
    t->norm_g = param_get(pl, SHAPE(C), "%s.norm.weight", p);
    t->norm_b = param_get(pl, SHAPE(C), "%s.norm.bias", p);
    if (b->info.linear_proj) {
        t->in_w = param_get(pl, SHAPE(D, C), "%s.proj_in.weight", p);
        t->out_w = param_get(pl, SHAPE(C, D), "%s.proj_out.weight", p);
    } else { // 1x1 convs: the same (OC, C) matrix once tokens are (N, H*W, C)
        t->in_w = tensor_reshape(param_get(pl, SHAPE(D, C, 1, 1), "%s.proj_in.weight", p), 2, (int64_t[]){D, C});
        t->out_w = tensor_reshape(param_get(pl, SHAPE(C, D, 1, 1), "%s.proj_out.weight", p), 2, (int64_t[]){C, D});
    }
    t->in_b = param_get(pl, SHAPE(D), "%s.proj_in.bias", p);
    t->out_b = param_get(pl, SHAPE(C), "%s.proj_out.bias", p);
    char q[96];
    for (int l = 0; l < b->info.n_layers; l++) {
        TLayerParams *L = &t->layers[l];
        snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, l);
        char a[112];
        L->n1_g = param_get(pl, SHAPE(D), "%s.norm1.weight", q);
        L->n1_b = param_get(pl, SHAPE(D), "%s.norm1.bias", q);
        snprintf(a, sizeof a, "%s.attn1", q);
        load_attn(pl, &L->attn1, a, D, D);
        L->n2_g = param_get(pl, SHAPE(D), "%s.norm2.weight", q);
        L->n2_b = param_get(pl, SHAPE(D), "%s.norm2.bias", q);
        snprintf(a, sizeof a, "%s.attn2", q);
        load_attn(pl, &L->attn2, a, D, Dc);
        L->n3_g = param_get(pl, SHAPE(D), "%s.norm3.weight", q);
        L->n3_b = param_get(pl, SHAPE(D), "%s.norm3.bias", q);
        L->ff0_w = param_get(pl, SHAPE(8 * D, D), "%s.ff.net.0.proj.weight", q);
        L->ff0_b = param_get(pl, SHAPE(8 * D), "%s.ff.net.0.proj.bias", q);
        L->ff2_w = param_get(pl, SHAPE(D, 4 * D), "%s.ff.net.2.weight", q);
        L->ff2_b = param_get(pl, SHAPE(D), "%s.ff.net.2.bias", q);
    }
}

static void load_out(ParamLoader *pl, const Unet *m, UnetBlock *b) {
    (void)m;
    const int C = b->info.in_channels, Co = b->info.out_channels;
    b->out.norm_g = param_get(pl, SHAPE(C), "%sweight", b->info.pre[0].diff);
    b->out.norm_b = param_get(pl, SHAPE(C), "%sbias", b->info.pre[0].diff);
    b->out.conv.w = param_get(pl, SHAPE(Co, C, 3, 3), "%sweight", b->info.pre[1].diff);
    b->out.conv.b = param_get(pl, SHAPE(Co), "%sbias", b->info.pre[1].diff);
}

// ---------------------------------------------------------------------------
// output shapes
// ---------------------------------------------------------------------------

void unet_block_out_shape(const Unet *m, const UnetBlock *b, const Tensor *x, const Tensor *next_skip,
                          int64_t shape[4], int *ndim) {
    const int64_t N = x->shape[0], H = x->ndim == 4 ? x->shape[2] : 0, W = x->ndim == 4 ? x->shape[3] : 0;
    *ndim = 4;
    shape[0] = N, shape[1] = b->info.out_channels, shape[2] = H, shape[3] = W;
    switch (b->info.kind) {
    case UNET_BLOCK_TIME:
        *ndim = 2;
        shape[1] = 4 * m->cfg.block_out[0];
        break;
    case UNET_BLOCK_DOWNSAMPLE: // stride 2, pad 1, 3x3: ceil(H / 2), so odd sizes work as in diffusers
        shape[2] = (H + 1) / 2, shape[3] = (W + 1) / 2;
        break;
    case UNET_BLOCK_UPSAMPLE: // to the size of the skip the next block pops (diffusers' upsample_size)
        SDC_CHECK(next_skip && next_skip->ndim == 4);
        shape[2] = next_skip->shape[2], shape[3] = next_skip->shape[3];
        break;
    default: break;
    }
}

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

static void time_fwd(Pass *p, const Unet *m, const UnetBlock *b, BlockSave *sv, const UnetIO *io) {
    const Backend *be = p->be;
    const TimeParams *t = &b->time;
    const int64_t N = io->out.shape[0], C0 = b->info.in_channels, T = b->info.out_channels;
    size_t mark = arena_mark(p->work);
    sv->tp = SAVE(p, N, C0); // (N, C0) sinusoidal projection
    be->timestep_embedding(be, &sv->tp, io->timesteps, m->cfg.flip_sin_to_cos, m->cfg.freq_shift);
    sv->h1 = SAVE(p, N, T); // (N, 4*C0)
    be->linear(be, &sv->h1, &sv->tp, &t->lin1_w, &t->lin1_b);
    sv->a1 = p->keep ? SAVE(p, N, T) : sv->h1; // SiLU in place when nothing is kept
    be->silu(be, &sv->a1, &sv->h1);
    sv->e = SAVE(p, N, T);
    be->linear(be, &sv->e, &sv->a1, &t->lin2_w, &t->lin2_b);
    if (t->add1_w.ndim) { // SDXL: e += add_embedding([text_embeds, sinusoid(each time id)])
        const int64_t nid = unet_n_time_ids(m), td = m->cfg.add_time_dim;
        Tensor ids = TMP(p, N * nid, td); // one sinusoid per id, read as (N, nid * td)
        be->timestep_embedding(be, &ids, io->time_ids, m->cfg.flip_sin_to_cos, m->cfg.freq_shift);
        ids.ndim = 2, ids.shape[0] = N, ids.shape[1] = nid * td;
        sv->ap = SAVE(p, N, m->cfg.add_in_dim);
        be->concat_channels(be, &sv->ap, &io->add_text, &ids);
        sv->ah1 = SAVE(p, N, T);
        be->linear(be, &sv->ah1, &sv->ap, &t->add1_w, &t->add1_b);
        sv->aa1 = p->keep ? SAVE(p, N, T) : sv->ah1;
        be->silu(be, &sv->aa1, &sv->ah1);
        Tensor ae = TMP(p, N, T);
        be->linear(be, &ae, &sv->aa1, &t->add2_w, &t->add2_b);
        be->add(be, &sv->e, &sv->e, &ae);
    }
    be->silu(be, (Tensor *)&io->out, &sv->e); // every resnet takes SiLU(temb)
    arena_reset(p->work, mark);
}

static void conv_in_fwd(Pass *p, const Unet *m, const UnetBlock *b, BlockSave *sv, const UnetIO *io) {
    (void)m, (void)sv;
    p->be->conv2d(p->be, (Tensor *)&io->out, &io->x, &b->conv.w, &b->conv.b, 1, 1);
}

static void downsample_fwd(Pass *p, const Unet *m, const UnetBlock *b, BlockSave *sv, const UnetIO *io) {
    (void)m, (void)sv;
    p->be->conv2d(p->be, (Tensor *)&io->out, &io->x, &b->conv.w, &b->conv.b, 2, 1);
}

static void upsample_fwd(Pass *p, const Unet *m, const UnetBlock *b, BlockSave *sv, const UnetIO *io) {
    (void)m;
    const Backend *be = p->be;
    const Tensor *x = &io->x; // (N, C, H, W)
    size_t mark = arena_mark(p->work);
    sv->u = SAVE(p, x->shape[0], x->shape[1], io->out.shape[2], io->out.shape[3]); // (N, C, H2, W2)
    be->upsample_nearest2x(be, &sv->u, x);
    be->conv2d(be, (Tensor *)&io->out, &sv->u, &b->conv.w, &b->conv.b, 1, 1);
    arena_reset(p->work, mark);
}

static void out_fwd(Pass *p, const Unet *m, const UnetBlock *b, BlockSave *sv, const UnetIO *io) {
    const Backend *be = p->be;
    const Tensor *x = &io->x; // (N, C0, h, w)
    size_t mark = arena_mark(p->work);
    sv->u = SAVE(p, x->shape[0], x->shape[1], x->shape[2], x->shape[3]);
    be->group_norm(be, &sv->u, x, &b->out.norm_g, &b->out.norm_b, m->cfg.norm_groups, m->cfg.norm_eps, 1);
    be->conv2d(be, (Tensor *)&io->out, &sv->u, &b->out.conv.w, &b->out.conv.b, 1, 1); // (N, Cout, h, w)
    arena_reset(p->work, mark);
}

static void resnet_fwd(Pass *p, const Unet *m, const UnetBlock *b, BlockSave *sv, const UnetIO *io) {
    const Backend *be = p->be;
    const ResnetParams *r = &b->res;
    const float eps = m->cfg.norm_eps;
    const int G = m->cfg.norm_groups;
    Tensor *out = (Tensor *)&io->out; // (N, Cout, H, W)
    const Tensor *x = &io->x;         // (N, Cx, H, W)
    const int64_t N = x->shape[0], H = x->shape[2], W = x->shape[3], Cout = b->info.out_channels;
    size_t mark = arena_mark(p->work);
    const Tensor *xin = x;
    if (b->info.pops_skip) {
        sv->cat = SAVE(p, N, x->shape[1] + io->skip.shape[1], H, W); // (N, Cx+Cs, H, W)
        be->concat_channels(be, &sv->cat, x, &io->skip);
        xin = &sv->cat;
    }
    sv->h = SAVE(p, N, xin->shape[1], H, W); // (N, Cin, H, W)
    be->group_norm(be, &sv->h, xin, &r->norm1_g, &r->norm1_b, G, eps, 1);
    sv->h2 = SAVE(p, N, Cout, H, W);
    be->conv2d(be, &sv->h2, &sv->h, &r->conv1.w, &r->conv1.b, 1, 1);
    Tensor tp = TMP(p, N, Cout); // (N, Cout) time_emb_proj(SiLU(temb))
    be->linear(be, &tp, &io->temb, &r->temb_w, &r->temb_b);
    be->add_channel_bias(be, &sv->h2, &sv->h2, &tp);
    sv->h3 = SAVE(p, N, Cout, H, W);
    be->group_norm(be, &sv->h3, &sv->h2, &r->norm2_g, &r->norm2_b, G, eps, 1);
    be->conv2d(be, out, &sv->h3, &r->conv2.w, &r->conv2.b, 1, 1);
    if (r->shortcut.w.ndim) {
        Tensor sc = TMP(p, N, Cout, H, W);
        be->conv2d(be, &sc, xin, &r->shortcut.w, &r->shortcut.b, 1, 0);
        be->add(be, out, out, &sc);
    } else {
        be->add(be, out, out, xin);
    }
    arena_reset(p->work, mark);
}

// Attention with its projections; the output projection into res.
// xq (N, S, D) normed tokens, xkv (N, L, Dk) (xq itself for self-attention).
static void attn_fwd(Pass *p, const AttnParams *a, int heads, const LoraPair *lo, AttnSave *sv, Tensor *res,
                     const Tensor *xq, const Tensor *xkv) {
    const Backend *be = p->be;
    const int64_t N = xq->shape[0], S = xq->shape[1], D = a->q.shape[0], L = xkv->shape[1];
    size_t mark = arena_mark(p->work);
    sv->q = SAVE(p, N, S, D);
    sv->k = SAVE(p, N, L, D);
    sv->v = SAVE(p, N, L, D);
    pass_linear(p, &sv->q, xq, &a->q, NULL, lo ? &lo[0] : NULL, &sv->hq);
    pass_linear(p, &sv->k, xkv, &a->k, NULL, lo ? &lo[1] : NULL, &sv->hk);
    pass_linear(p, &sv->v, xkv, &a->v, NULL, lo ? &lo[2] : NULL, &sv->hv);
    sv->o = SAVE(p, N, S, D);
    be->attention(be, &sv->o, &sv->q, &sv->k, &sv->v, heads, 0);
    pass_linear(p, res, &sv->o, &a->out_w, &a->out_b, lo ? &lo[3] : NULL, &sv->ho);
    arena_reset(p->work, mark);
}

// BasicTransformerBlock: *hs (N, S, D) in -> out (a new save when training,
// updated in place when not), ctx (N, L, Dc).
static void tlayer_fwd(Pass *p, const TLayerParams *lp, int heads, const LoraPair *lo, TLayerSave *sv, Tensor *hs,
                       const Tensor *ctx) {
    const Backend *be = p->be;
    const int64_t N = hs->shape[0], S = hs->shape[1], D = hs->shape[2];
    const float eps = 1e-5f;
    size_t mark = arena_mark(p->work);
    sv->hin = *hs;
    Tensor res = TMP(p, N, S, D); // (N, S, D) a branch's output
    size_t mark1 = arena_mark(p->work);
    sv->t1 = SAVE(p, N, S, D);
    be->layer_norm(be, &sv->t1, &sv->hin, &lp->n1_g, &lp->n1_b, eps);
    attn_fwd(p, &lp->attn1, heads, lo, &sv->a1, &res, &sv->t1, &sv->t1);
    sv->hs1 = p->keep ? SAVE(p, N, S, D) : sv->hin;
    be->add(be, &sv->hs1, &sv->hin, &res);
    arena_reset(p->work, mark1); // t1 is dead unless kept
    sv->t2 = SAVE(p, N, S, D);
    be->layer_norm(be, &sv->t2, &sv->hs1, &lp->n2_g, &lp->n2_b, eps);
    attn_fwd(p, &lp->attn2, heads, lo ? lo + 4 : NULL, &sv->a2, &res, &sv->t2, ctx);
    sv->hs2 = p->keep ? SAVE(p, N, S, D) : sv->hs1;
    be->add(be, &sv->hs2, &sv->hs1, &res);
    arena_reset(p->work, mark1);
    sv->t3 = SAVE(p, N, S, D);
    be->layer_norm(be, &sv->t3, &sv->hs2, &lp->n3_g, &lp->n3_b, eps);
    sv->pr = SAVE(p, N, S, 8 * D); // (N, S, 8D) GEGLU projection
    be->linear(be, &sv->pr, &sv->t3, &lp->ff0_w, &lp->ff0_b);
    sv->g = SAVE(p, N, S, 4 * D); // (N, S, 4D)
    be->geglu(be, &sv->g, &sv->pr);
    be->linear(be, &res, &sv->g, &lp->ff2_w, &lp->ff2_b);
    sv->hout = p->keep ? SAVE(p, N, S, D) : sv->hs2;
    be->add(be, &sv->hout, &sv->hs2, &res);
    *hs = sv->hout;
    arena_reset(p->work, mark);
}

static void transformer_fwd(Pass *p, const Unet *m, const UnetBlock *b, BlockSave *sv, const UnetIO *io) {
    const Backend *be = p->be;
    const TransformerParams *t = &b->tf;
    const Tensor *x = &io->x; // (N, C, H, W)
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], S = H * W, D = b->info.inner;
    size_t mark = arena_mark(p->work);
    Tensor hn = TMP(p, N, C, H, W);
    be->group_norm(be, &hn, x, &t->norm_g, &t->norm_b, m->cfg.norm_groups, 1e-6f, 0);
    sv->tok = SAVE(p, N, S, C); // (N, S, C)
    be->nchw_to_nlc(be, &sv->tok, &hn);
    Tensor hs = SAVE(p, N, S, D); // (N, S, D) proj_in output: the layers' residual stream
    be->linear(be, &hs, &sv->tok, &t->in_w, &t->in_b);
    for (int l = 0; l < b->info.n_layers; l++)
        tlayer_fwd(p, &t->layers[l], b->info.heads, b->lora ? b->lora + l * UNET_LORA_PER_LAYER : NULL, &sv->L[l],
                   &hs, &io->ctx);
    Tensor tok = p->keep ? TMP(p, N, S, C) : sv->tok; // the tokens are dead unless kept
    be->linear(be, &tok, &hs, &t->out_w, &t->out_b);
    be->nlc_to_nchw(be, (Tensor *)&io->out, &tok);
    be->add(be, (Tensor *)&io->out, &io->out, x);
    arena_reset(p->work, mark);
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

static void conv_bwd(Pass *p, Tensor *dx, const Tensor *dy, const Tensor *x, const ConvParams *c, int stride,
                     int pad) {
    Tensor gw, gb;
    Tensor *pgw = pass_grad(p, &c->w, &gw), *pgb = pass_grad(p, &c->b, &gb);
    if (dx || pgw || pgb) p->be->conv2d_backward(p->be, dx, pgw, pgb, dy, x, &c->w, stride, pad);
}

static void gn_bwd(Pass *p, const Unet *m, Tensor *dx, const Tensor *dy, const Tensor *x, const Tensor *gamma,
                   const Tensor *beta, float eps, int silu) {
    Tensor gg, gb;
    p->be->group_norm_backward(p->be, dx, pass_grad(p, gamma, &gg), pass_grad(p, beta, &gb), dy, x, gamma, beta,
                               m->cfg.norm_groups, eps, silu);
}

static void ln_bwd(Pass *p, Tensor *dx, const Tensor *dy, const Tensor *x, const Tensor *gamma, const Tensor *beta) {
    Tensor gg, gb;
    p->be->layer_norm_backward(p->be, dx, pass_grad(p, gamma, &gg), pass_grad(p, beta, &gb), dy, x, gamma, 1e-5f);
}

static Tensor *want(Tensor *t) { return t->ndim ? t : NULL; }

static void time_bwd(Pass *p, const Unet *m, const UnetBlock *b, const BlockSave *sv, UnetGradIO *g) {
    const Backend *be = p->be;
    const TimeParams *t = &b->time;
    size_t mark = arena_mark(p->work);
    Tensor de = pass_like(p, &sv->e), gw, gb;
    be->silu_backward(be, &de, &g->dy, &sv->e);
    if (t->add1_w.ndim) { // SDXL's add_embedding; d text_embeds when wanted (text-encoder training)
        Tensor daa1 = pass_like(p, &sv->aa1), dah1 = pass_like(p, &sv->ah1);
        Tensor dap = g->dtext.ndim ? pass_like(p, &sv->ap) : (Tensor){0};
        be->linear_backward(be, &daa1, pass_grad(p, &t->add2_w, &gw), pass_grad(p, &t->add2_b, &gb), &de,
                            &sv->aa1, &t->add2_w);
        be->silu_backward(be, &dah1, &daa1, &sv->ah1);
        Tensor *pgw = pass_grad(p, &t->add1_w, &gw), *pgb = pass_grad(p, &t->add1_b, &gb);
        if (pgw || pgb || dap.ndim)
            be->linear_backward(be, want(&dap), pgw, pgb, &dah1, &sv->ap, &t->add1_w);
        if (dap.ndim) be->concat_channels_backward(be, &g->dtext, NULL, &dap); // [text, id sinusoids]
    }
    Tensor *pgw2 = pass_grad(p, &t->lin2_w, &gw);
    if (pgw2) { // the time MLP trains (LoRA: frozen, and nothing before it)
        Tensor da1 = pass_like(p, &sv->a1), dh1 = pass_like(p, &sv->h1), gw1, gb1;
        be->linear_backward(be, &da1, pgw2, pass_grad(p, &t->lin2_b, &gb), &de, &sv->a1, &t->lin2_w);
        be->silu_backward(be, &dh1, &da1, &sv->h1);
        be->linear_backward(be, NULL, pass_grad(p, &t->lin1_w, &gw1), pass_grad(p, &t->lin1_b, &gb1), &dh1,
                            &sv->tp, &t->lin1_w);
    }
    (void)m;
    arena_reset(p->work, mark);
}

static void conv_in_bwd(Pass *p, const Unet *m, const UnetBlock *b, const BlockSave *sv, UnetGradIO *g) {
    (void)m;
    conv_bwd(p, want(&g->dx), &g->dy, &sv->x, &b->conv, 1, 1);
}

static void downsample_bwd(Pass *p, const Unet *m, const UnetBlock *b, const BlockSave *sv, UnetGradIO *g) {
    (void)m;
    conv_bwd(p, want(&g->dx), &g->dy, &sv->x, &b->conv, 2, 1);
}

static void upsample_bwd(Pass *p, const Unet *m, const UnetBlock *b, const BlockSave *sv, UnetGradIO *g) {
    (void)m;
    size_t mark = arena_mark(p->work);
    Tensor du = pass_like(p, &sv->u);
    conv_bwd(p, &du, &g->dy, &sv->u, &b->conv, 1, 1);
    if (g->dx.ndim) p->be->upsample_nearest2x_backward(p->be, &g->dx, &du);
    arena_reset(p->work, mark);
}

static void out_bwd(Pass *p, const Unet *m, const UnetBlock *b, const BlockSave *sv, UnetGradIO *g) {
    size_t mark = arena_mark(p->work);
    Tensor dhn = pass_like(p, &sv->u);
    conv_bwd(p, &dhn, &g->dy, &sv->u, &b->out.conv, 1, 1);
    SDC_CHECK(g->dx.ndim); // the group norm's backward always yields dx
    gn_bwd(p, m, &g->dx, &dhn, &sv->x, &b->out.norm_g, &b->out.norm_b, m->cfg.norm_eps, 1);
    arena_reset(p->work, mark);
}

static void resnet_bwd(Pass *p, const Unet *m, const UnetBlock *b, const BlockSave *sv, UnetGradIO *g) {
    const Backend *be = p->be;
    const ResnetParams *r = &b->res;
    const float eps = m->cfg.norm_eps;
    const int pops = b->info.pops_skip;
    size_t mark = arena_mark(p->work);
    const Tensor *xin = pops ? &sv->cat : &sv->x;
    // d xin: through the shortcut (or identity), then the main path adds in
    Tensor dxin = pops || !g->dx.ndim ? pass_like(p, xin) : g->dx;
    if (r->shortcut.w.ndim) conv_bwd(p, &dxin, &g->dy, xin, &r->shortcut, 1, 0);
    else be->copy(be, &dxin, &g->dy);
    Tensor dh3 = pass_like(p, &sv->h3);
    conv_bwd(p, &dh3, &g->dy, &sv->h3, &r->conv2, 1, 1);
    Tensor dh2 = pass_like(p, &sv->h2);
    gn_bwd(p, m, &dh2, &dh3, &sv->h2, &r->norm2_g, &r->norm2_b, eps, 1);
    if (g->dtemb.ndim) { // h2 += time_emb_proj(temb) broadcast over the pixels
        const int64_t N = g->dy.shape[0];
        Tensor dtp = TMP(p, N, g->dy.shape[1]); // (N, Cout)
        be->add_channel_bias_backward(be, &dtp, &dh2);
        Tensor dt = pass_like(p, &g->temb), gw, gb;
        be->linear_backward(be, &dt, pass_grad(p, &r->temb_w, &gw), pass_grad(p, &r->temb_b, &gb), &dtp, &g->temb,
                            &r->temb_w);
        be->add(be, &g->dtemb, &g->dtemb, &dt);
    }
    Tensor dh = pass_like(p, &sv->h);
    conv_bwd(p, &dh, &dh2, &sv->h, &r->conv1, 1, 1);
    Tensor dgn = pass_like(p, xin);
    gn_bwd(p, m, &dgn, &dh, xin, &r->norm1_g, &r->norm1_b, eps, 1);
    be->add(be, &dxin, &dxin, &dgn);
    if (pops) be->concat_channels_backward(be, want(&g->dx), &g->dskip, &dxin);
    arena_reset(p->work, mark);
}

// dres (N, S, D): d loss / d the output projection -> dxq (overwritten);
// self-attention adds the k / v paths into dxq, cross-attention into dctx
// (when wanted).
static void attn_bwd(Pass *p, const AttnParams *a, int heads, const LoraPair *lo, const AttnSave *sv,
                     const Tensor *dres, const Tensor *xq, const Tensor *xkv, Tensor *dxq, Tensor *dctx, int cross) {
    const Backend *be = p->be;
    size_t mark = arena_mark(p->work);
    Tensor dO = pass_like(p, &sv->o);
    pass_linear_backward(p, &dO, dres, &sv->o, &a->out_w, &a->out_b, lo ? &lo[3] : NULL, &sv->ho);
    Tensor dq = pass_like(p, &sv->q), dk = pass_like(p, &sv->k), dv = pass_like(p, &sv->v);
    be->attention_backward(be, &dq, &dk, &dv, &dO, &sv->q, &sv->k, &sv->v, heads, 0);
    pass_linear_backward(p, dxq, &dq, xq, &a->q, NULL, lo ? &lo[0] : NULL, &sv->hq);
    Tensor *dst = cross ? dctx : dxq;
    if (dst && dst->ndim) {
        Tensor tmp = pass_like(p, xkv);
        pass_linear_backward(p, &tmp, &dk, xkv, &a->k, NULL, lo ? &lo[1] : NULL, &sv->hk);
        be->add(be, dst, dst, &tmp);
        pass_linear_backward(p, &tmp, &dv, xkv, &a->v, NULL, lo ? &lo[2] : NULL, &sv->hv);
        be->add(be, dst, dst, &tmp);
    } else {
        pass_linear_backward(p, NULL, &dk, xkv, &a->k, NULL, lo ? &lo[1] : NULL, &sv->hk);
        pass_linear_backward(p, NULL, &dv, xkv, &a->v, NULL, lo ? &lo[2] : NULL, &sv->hv);
    }
    arena_reset(p->work, mark);
}

// dh (N, S, D): d loss / d the layer's output, turned in place into the
// gradient of its input.
static void tlayer_bwd(Pass *p, const TLayerParams *lp, int heads, const LoraPair *lo, const TLayerSave *sv,
                       Tensor *dh, const Tensor *ctx, Tensor *dctx) {
    const Backend *be = p->be;
    size_t mark = arena_mark(p->work);
    Tensor dt = pass_like(p, dh), dn = pass_like(p, dh); // (N, S, D)
    size_t mark2 = arena_mark(p->work);
    Tensor dg = pass_like(p, &sv->g); // (N, S, 4D)
    pass_linear_backward(p, &dg, dh, &sv->g, &lp->ff2_w, &lp->ff2_b, NULL, NULL);
    Tensor dpr = pass_like(p, &sv->pr); // (N, S, 8D)
    be->geglu_backward(be, &dpr, &dg, &sv->pr);
    pass_linear_backward(p, &dt, &dpr, &sv->t3, &lp->ff0_w, &lp->ff0_b, NULL, NULL);
    arena_reset(p->work, mark2);
    ln_bwd(p, &dn, &dt, &sv->hs2, &lp->n3_g, &lp->n3_b);
    be->add(be, dh, dh, &dn);
    attn_bwd(p, &lp->attn2, heads, lo ? lo + 4 : NULL, &sv->a2, dh, &sv->t2, ctx, &dt, dctx, 1);
    ln_bwd(p, &dn, &dt, &sv->hs1, &lp->n2_g, &lp->n2_b);
    be->add(be, dh, dh, &dn);
    attn_bwd(p, &lp->attn1, heads, lo, &sv->a1, dh, &sv->t1, &sv->t1, &dt, NULL, 0);
    ln_bwd(p, &dn, &dt, &sv->hin, &lp->n1_g, &lp->n1_b);
    be->add(be, dh, dh, &dn);
    arena_reset(p->work, mark);
}

static void transformer_bwd(Pass *p, const Unet *m, const UnetBlock *b, const BlockSave *sv, UnetGradIO *g) {
    const Backend *be = p->be;
    const TransformerParams *t = &b->tf;
    const Tensor *x = &sv->x;
    const int64_t N = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3], D = b->info.inner;
    const int nl = b->info.n_layers;
    size_t mark = arena_mark(p->work);
    Tensor dtok = TMP(p, N, S, C);
    be->nchw_to_nlc(be, &dtok, &g->dy);
    Tensor dh = TMP(p, N, S, D);
    pass_linear_backward(p, &dh, &dtok, &sv->L[nl - 1].hout, &t->out_w, &t->out_b, NULL, NULL);
    for (int l = nl - 1; l >= 0; l--)
        tlayer_bwd(p, &t->layers[l], b->info.heads, b->lora ? b->lora + l * UNET_LORA_PER_LAYER : NULL, &sv->L[l],
                   &dh, &g->ctx, want(&g->dctx));
    pass_linear_backward(p, &dtok, &dh, &sv->tok, &t->in_w, &t->in_b, NULL, NULL);
    Tensor dhn = pass_like(p, x);
    be->nlc_to_nchw(be, &dhn, &dtok);
    SDC_CHECK(g->dx.ndim); // the group norm's backward always yields dx
    gn_bwd(p, m, &g->dx, &dhn, x, &t->norm_g, &t->norm_b, 1e-6f, 0);
    be->add(be, &g->dx, &g->dx, &g->dy);
    arena_reset(p->work, mark);
}

const UnetKind UNET_KINDS[UNET_BLOCK_KINDS] = {
    [UNET_BLOCK_TIME] = {load_time, time_fwd, time_bwd},
    [UNET_BLOCK_CONV_IN] = {load_conv, conv_in_fwd, conv_in_bwd},
    [UNET_BLOCK_RESNET] = {load_resnet, resnet_fwd, resnet_bwd},
    [UNET_BLOCK_TRANSFORMER] = {load_transformer, transformer_fwd, transformer_bwd},
    [UNET_BLOCK_DOWNSAMPLE] = {load_conv, downsample_fwd, downsample_bwd},
    [UNET_BLOCK_UPSAMPLE] = {load_conv, upsample_fwd, upsample_bwd},
    [UNET_BLOCK_OUT] = {load_out, out_fwd, out_bwd},
};
