// unet.c: the SD UNet (diffusers UNet2DConditionModel) as a list of blocks
// over an explicit skip stack; see unet.h for the structure and the memory
// plan. Semantics follow diffusers 0.42 (unet_2d_condition.py,
// unet_2d_blocks.py, resnet.py, transformer_2d.py, attention.py):
// - ResnetBlock2D: GN(eps=norm_eps)+SiLU, conv1, + time_emb_proj(SiLU(temb)),
//   GN+SiLU, conv2, + (1x1 conv_shortcut when channels change); scale 1.
// - Transformer2DModel: GN(eps 1e-6), proj_in (1x1 conv or linear: the same
//   matrix product once the tokens are (N, H*W, C)), BasicTransformerBlocks
//   (LayerNorm eps 1e-5; self-attn, cross-attn, GEGLU feed-forward, each
//   residual), proj_out, + input.
// This file is the only place that knows the UNet's structure; it calls
// only backend ops and never branches on the device.
#include "models/unet.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/params.h"
#include "models/unet_internal.h"

// ---------------------------------------------------------------------------
// building the block list (run twice: measuring, then real parameters)
// ---------------------------------------------------------------------------

static UnetBlock *block_add(Unet *m, UnetBlockKind kind, const char *name, int cin, int cskip,
                            int cout, int in_div, int out_div, int push, int pop) {
    SDC_CHECK(m->n_blocks < m->max_blocks);
    UnetBlock *b = &m->blocks[m->n_blocks++];
    memset(b, 0, sizeof *b);
    b->info.kind = kind;
    snprintf(b->info.name, sizeof b->info.name, "%s", name);
    b->info.in_channels = cin;
    b->info.skip_channels = cskip;
    b->info.out_channels = cout;
    b->info.in_div = in_div;
    b->info.out_div = out_div;
    b->info.pushes_skip = push;
    b->info.pops_skip = pop;
    return b;
}

static void load_resnet(ParamLoader *pl, ResnetParams *r, const char *p, int cin, int cout,
                        int temb_dim) {
    r->norm1_g = param_get(pl, SHAPE(cin), "%s.norm1.weight", p);
    r->norm1_b = param_get(pl, SHAPE(cin), "%s.norm1.bias", p);
    r->conv1.w = param_get(pl, SHAPE(cout, cin, 3, 3), "%s.conv1.weight", p);
    r->conv1.b = param_get(pl, SHAPE(cout), "%s.conv1.bias", p);
    r->temb_w = param_get(pl, SHAPE(cout, temb_dim), "%s.time_emb_proj.weight", p);
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

// Returns 0, or SDC_ERR_OOM for the (tiny) per-layer table.
static int load_transformer(ParamLoader *pl, const UnetConfig *c, TransformerParams *t,
                            const char *p, int C, int heads, int n_layers) {
    int D = heads * (C / heads);
    t->heads = heads;
    t->inner = D;
    t->n_layers = n_layers;
    t->norm_g = param_get(pl, SHAPE(C), "%s.norm.weight", p);
    t->norm_b = param_get(pl, SHAPE(C), "%s.norm.bias", p);
    if (c->use_linear_projection) {
        t->in_w = param_get(pl, SHAPE(D, C), "%s.proj_in.weight", p);
        t->out_w = param_get(pl, SHAPE(C, D), "%s.proj_out.weight", p);
    } else { // 1x1 convs: the same (OC, C) matrix once tokens are (N, H*W, C)
        t->in_w = tensor_reshape(param_get(pl, SHAPE(D, C, 1, 1), "%s.proj_in.weight", p), 2,
                                 (int64_t[]){D, C});
        t->out_w = tensor_reshape(param_get(pl, SHAPE(C, D, 1, 1), "%s.proj_out.weight", p), 2,
                                  (int64_t[]){C, D});
    }
    t->in_b = param_get(pl, SHAPE(D), "%s.proj_in.bias", p);
    t->out_b = param_get(pl, SHAPE(C), "%s.proj_out.bias", p);
    t->layers = calloc((size_t)n_layers, sizeof *t->layers);
    if (!t->layers) return SDC_ERR_OOM;
    char q[96];
    for (int l = 0; l < n_layers; l++) {
        TLayerParams *L = &t->layers[l];
        L->n1_g = param_get(pl, SHAPE(D), "%s.transformer_blocks.%d.norm1.weight", p, l);
        L->n1_b = param_get(pl, SHAPE(D), "%s.transformer_blocks.%d.norm1.bias", p, l);
        snprintf(q, sizeof q, "%s.transformer_blocks.%d.attn1", p, l);
        load_attn(pl, &L->attn1, q, D, D);
        L->n2_g = param_get(pl, SHAPE(D), "%s.transformer_blocks.%d.norm2.weight", p, l);
        L->n2_b = param_get(pl, SHAPE(D), "%s.transformer_blocks.%d.norm2.bias", p, l);
        snprintf(q, sizeof q, "%s.transformer_blocks.%d.attn2", p, l);
        load_attn(pl, &L->attn2, q, D, c->cross_dim);
        L->n3_g = param_get(pl, SHAPE(D), "%s.transformer_blocks.%d.norm3.weight", p, l);
        L->n3_b = param_get(pl, SHAPE(D), "%s.transformer_blocks.%d.norm3.bias", p, l);
        L->ff0_w = param_get(pl, SHAPE(8 * D, D), "%s.transformer_blocks.%d.ff.net.0.proj.weight", p, l);
        L->ff0_b = param_get(pl, SHAPE(8 * D), "%s.transformer_blocks.%d.ff.net.0.proj.bias", p, l);
        L->ff2_w = param_get(pl, SHAPE(D, 4 * D), "%s.transformer_blocks.%d.ff.net.2.weight", p, l);
        L->ff2_b = param_get(pl, SHAPE(D), "%s.transformer_blocks.%d.ff.net.2.bias", p, l);
    }
    return 0;
}

static void blocks_free(Unet *m) {
    if (!m->blocks) return;
    for (int i = 0; i < m->n_blocks; i++) free(m->blocks[i].tf.layers);
    free(m->blocks);
    m->blocks = NULL;
    m->n_blocks = m->max_blocks = 0;
}

// Fills m->blocks in execution order, asking pl for every parameter. The skip
// channels each up resnet pops come from simulating the stack while
// building, which reproduces diffusers' prev_output_channel / res_skip
// channel bookkeeping.
static int unet_build(Unet *m, ParamLoader *pl, SdcError *err) {
    const UnetConfig *c = &m->cfg;
    const int nl = c->n_levels, lpb = c->layers_per_block;
    const int C0 = c->block_out[0], temb_dim = 4 * C0;
    blocks_free(m);
    m->max_blocks = 1 + nl * (2 * lpb + 1) + 3 + nl * (2 * (lpb + 1) + 1) + 1;
    m->blocks = calloc((size_t)m->max_blocks, sizeof *m->blocks);
    if (!m->blocks) return sdc_err(err, SDC_ERR_OOM, "unet: cannot allocate the block table");

    m->t_lin1_w = param_get(pl, SHAPE(temb_dim, C0), "time_embedding.linear_1.weight");
    m->t_lin1_b = param_get(pl, SHAPE(temb_dim), "time_embedding.linear_1.bias");
    m->t_lin2_w = param_get(pl, SHAPE(temb_dim, temb_dim), "time_embedding.linear_2.weight");
    m->t_lin2_b = param_get(pl, SHAPE(temb_dim), "time_embedding.linear_2.bias");
    size_t numel0 = pl->numel;

    int skip_ch[UNET_MAX_SKIPS], n_skip = 0;
    char name[48];
    int ch = C0, div = 1;
    UnetBlock *b;

#define BLOCK_DONE(b)                                   \
    do {                                                \
        (b)->info.param_count = pl->numel - numel0;     \
        numel0 = pl->numel;                             \
    } while (0)
#define PUSH(C)                                         \
    do {                                                \
        SDC_CHECK(n_skip < UNET_MAX_SKIPS);             \
        skip_ch[n_skip++] = (C);                        \
    } while (0)

    b = block_add(m, UNET_BLOCK_CONV_IN, "conv_in", c->in_channels, 0, C0, 1, 1, 1, 0);
    b->conv.w = param_get(pl, SHAPE(C0, c->in_channels, 3, 3), "conv_in.weight");
    b->conv.b = param_get(pl, SHAPE(C0), "conv_in.bias");
    BLOCK_DONE(b);
    PUSH(C0);

    // ---- down levels ----
    for (int l = 0; l < nl; l++) {
        int cout = c->block_out[l];
        for (int j = 0; j < lpb; j++) {
            int attn = c->down_attn[l];
            snprintf(name, sizeof name, "down_blocks.%d.resnets.%d", l, j);
            b = block_add(m, UNET_BLOCK_RESNET, name, ch, 0, cout, div, div, !attn, 0);
            load_resnet(pl, &b->res, name, ch, cout, temb_dim);
            BLOCK_DONE(b);
            ch = cout;
            if (attn) {
                snprintf(name, sizeof name, "down_blocks.%d.attentions.%d", l, j);
                b = block_add(m, UNET_BLOCK_TRANSFORMER, name, ch, 0, ch, div, div, 1, 0);
                if (load_transformer(pl, c, &b->tf, name, ch, c->heads[l], c->transformer_layers[l]))
                    return sdc_err(err, SDC_ERR_OOM, "unet: out of memory building %s", name);
                BLOCK_DONE(b);
            }
            PUSH(ch);
        }
        if (l < nl - 1) {
            snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0", l);
            b = block_add(m, UNET_BLOCK_DOWNSAMPLE, name, ch, 0, ch, div, div * 2, 1, 0);
            b->conv.w = param_get(pl, SHAPE(ch, ch, 3, 3), "%s.conv.weight", name);
            b->conv.b = param_get(pl, SHAPE(ch), "%s.conv.bias", name);
            BLOCK_DONE(b);
            div *= 2;
            PUSH(ch);
        }
    }

    // ---- mid block ----
    b = block_add(m, UNET_BLOCK_RESNET, "mid_block.resnets.0", ch, 0, ch, div, div, 0, 0);
    load_resnet(pl, &b->res, "mid_block.resnets.0", ch, ch, temb_dim);
    BLOCK_DONE(b);
    b = block_add(m, UNET_BLOCK_TRANSFORMER, "mid_block.attentions.0", ch, 0, ch, div, div, 0, 0);
    if (load_transformer(pl, c, &b->tf, "mid_block.attentions.0", ch, c->heads[nl - 1],
                         c->transformer_layers[nl - 1]))
        return sdc_err(err, SDC_ERR_OOM, "unet: out of memory building the mid block");
    BLOCK_DONE(b);
    b = block_add(m, UNET_BLOCK_RESNET, "mid_block.resnets.1", ch, 0, ch, div, div, 0, 0);
    load_resnet(pl, &b->res, "mid_block.resnets.1", ch, ch, temb_dim);
    BLOCK_DONE(b);

    // ---- up levels (level i of the up path mirrors down level nl-1-i) ----
    for (int i = 0; i < nl; i++) {
        int dl = nl - 1 - i;
        int cout = c->block_out[dl];
        for (int j = 0; j < lpb + 1; j++) {
            SDC_CHECK(n_skip > 0);
            int cs = skip_ch[--n_skip];
            int attn = c->up_attn[i];
            snprintf(name, sizeof name, "up_blocks.%d.resnets.%d", i, j);
            b = block_add(m, UNET_BLOCK_RESNET, name, ch, cs, cout, div, div, 0, 1);
            load_resnet(pl, &b->res, name, ch + cs, cout, temb_dim);
            BLOCK_DONE(b);
            ch = cout;
            if (attn) {
                snprintf(name, sizeof name, "up_blocks.%d.attentions.%d", i, j);
                b = block_add(m, UNET_BLOCK_TRANSFORMER, name, ch, 0, ch, div, div, 0, 0);
                if (load_transformer(pl, c, &b->tf, name, ch, c->heads[dl], c->transformer_layers[dl]))
                    return sdc_err(err, SDC_ERR_OOM, "unet: out of memory building %s", name);
                BLOCK_DONE(b);
            }
        }
        if (i < nl - 1) {
            snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0", i);
            b = block_add(m, UNET_BLOCK_UPSAMPLE, name, ch, 0, ch, div, div / 2, 0, 0);
            b->conv.w = param_get(pl, SHAPE(ch, ch, 3, 3), "%s.conv.weight", name);
            b->conv.b = param_get(pl, SHAPE(ch), "%s.conv.bias", name);
            BLOCK_DONE(b);
            div /= 2;
        }
    }
    SDC_CHECK(n_skip == 0 && div == 1);

    // ---- out ----
    b = block_add(m, UNET_BLOCK_OUT, "conv_out", ch, 0, c->out_channels, 1, 1, 0, 0);
    b->out.norm_g = param_get(pl, SHAPE(ch), "conv_norm_out.weight");
    b->out.norm_b = param_get(pl, SHAPE(ch), "conv_norm_out.bias");
    b->out.conv.w = param_get(pl, SHAPE(c->out_channels, ch, 3, 3), "conv_out.weight");
    b->out.conv.b = param_get(pl, SHAPE(c->out_channels), "conv_out.bias");
    BLOCK_DONE(b);
#undef BLOCK_DONE
#undef PUSH
    return pl->failed ? (err && err->code ? err->code : SDC_ERR_SHAPE) : 0;
}

static int config_check(const UnetConfig *c, SdcError *err) {
    if (c->n_levels < 1 || c->n_levels > SDC_MAX_LEVELS || c->layers_per_block < 1 ||
        c->in_channels < 1 || c->out_channels < 1 || c->cross_dim < 1 || c->norm_groups < 1)
        return sdc_err(err, SDC_ERR_FORMAT,
                       "unet config: n_levels=%d layers_per_block=%d in=%d out=%d cross_dim=%d "
                       "norm_groups=%d out of range\n---> check unet/config.json",
                       c->n_levels, c->layers_per_block, c->in_channels, c->out_channels,
                       c->cross_dim, c->norm_groups);
    if (!c->mid_attn)
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "unet config: a mid block without cross-attention is not supported "
                       "(SD 1.x/2.x use UNetMidBlock2DCrossAttn)");
    if ((c->layers_per_block + 1) * c->n_levels * 2 + 2 > UNET_MAX_SKIPS)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "unet config: too many skip connections");
    for (int l = 0; l < c->n_levels; l++) {
        int C = c->block_out[l];
        if (C < 1 || C % c->norm_groups)
            return sdc_err(err, SDC_ERR_FORMAT,
                           "unet config: block_out_channels[%d]=%d is not a positive multiple of "
                           "norm_num_groups=%d",
                           l, C, c->norm_groups);
        int uses_attn = c->down_attn[l] || c->up_attn[c->n_levels - 1 - l] || l == c->n_levels - 1;
        if (uses_attn && (c->heads[l] < 1 || c->heads[l] > C || c->transformer_layers[l] < 1))
            return sdc_err(err, SDC_ERR_FORMAT,
                           "unet config: level %d: %d heads, %d transformer layers for %d channels",
                           l, c->heads[l], c->transformer_layers[l], C);
    }
    return 0;
}

int unet_load(Unet **out, const ModelFiles *mf, const Backend *be, SdcError *err) {
    return unet_load_opts(out, mf, be, NULL, err);
}

int unet_load_opts(Unet **out, const ModelFiles *mf, const Backend *be, const ModelLoadOpts *o,
                   SdcError *err) {
    *out = NULL;
    int own = o && o->trainable;
    if (own && (be->device != DEV_CPU || be->param_dtype != DT_F32 || !be->conv2d_backward))
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "unet: training needs the CPU backend in fp32 (got %s, %s)\n"
                       "---> use --device cpu for training",
                       be->name, dtype_name(be->param_dtype));
    Unet *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "unet: out of memory");
    m->cfg = model_files_info(mf)->unet;
    m->be = be;
    m->run_be = be;
    int rc = config_check(&m->cfg, err);
    if (rc) goto fail;

    // Pass 1: check every name and shape, count the bytes to convert.
    Arena meas;
    arena_init_measure(&meas);
    ParamLoader pl = {.mf = mf, .comp = COMP_UNET, .be = be, .arena = &meas, .err = err, .own = own,
                      .lora = o ? o->lora : NULL};
    rc = unet_build(m, &pl, err);
    if (rc) goto fail;
    // Pass 2: for real.
    rc = arena_init(&m->params, be, meas.peak, err);
    if (rc) goto fail;
    if (own) memset(m->params.base, 0, m->params.cap); // padding too: the flat buffer is optimized
    pl = (ParamLoader){.mf = mf, .comp = COMP_UNET, .be = be, .arena = &m->params, .err = err,
                       .own = own, .table = own ? &m->table : NULL, .lora = o ? o->lora : NULL};
    rc = unet_build(m, &pl, err);
    if (rc) goto fail;
    m->param_count = pl.count;
    m->param_numel = pl.numel;
    *out = m;
    return 0;
fail:
    sdc_err_wrap(err, "loading unet");
    unet_free(m);
    return rc;
}

void unet_free(Unet *m) {
    if (!m) return;
    unet_train_free(m);
    blocks_free(m);
    arena_free(&m->params);
    arena_free(&m->act);
    param_table_free(&m->table);
    free(m);
}

const UnetConfig *unet_config(const Unet *m) { return &m->cfg; }
size_t unet_param_count(const Unet *m) { return m->param_numel; }
size_t unet_param_bytes(const Unet *m) { return m->param_numel * dtype_size(m->be->param_dtype); }
size_t unet_activation_bytes(const Unet *m) { return m->act.cap; }
int unet_block_count(const Unet *m) { return m->n_blocks; }
const UnetBlockInfo *unet_block_info(const Unet *m, int i) {
    SDC_CHECK(i >= 0 && i < m->n_blocks);
    return &m->blocks[i].info;
}

const char *unet_block_kind_name(UnetBlockKind k) {
    switch (k) {
    case UNET_BLOCK_CONV_IN: return "conv_in";
    case UNET_BLOCK_RESNET: return "resnet";
    case UNET_BLOCK_TRANSFORMER: return "transformer";
    case UNET_BLOCK_DOWNSAMPLE: return "downsample";
    case UNET_BLOCK_UPSAMPLE: return "upsample";
    case UNET_BLOCK_OUT: return "out";
    }
    return "?";
}

double unet_block_flops(const Unet *m, int i, int batch, int h, int w, int ctx_len) {
    const UnetBlockInfo *bi = unet_block_info(m, i);
    const UnetBlock *b = &m->blocks[i];
    double N = batch, S = (double)(h / bi->in_div) * (double)(w / bi->in_div);
    double cin = bi->in_channels + bi->skip_channels, cout = bi->out_channels;
    switch (bi->kind) {
    case UNET_BLOCK_CONV_IN:
    case UNET_BLOCK_OUT: return 2 * N * S * cout * cin * 9;
    case UNET_BLOCK_DOWNSAMPLE: return 2 * N * (S / 4) * cout * cin * 9;
    case UNET_BLOCK_UPSAMPLE: return 2 * N * (S * 4) * cout * cin * 9;
    case UNET_BLOCK_RESNET: {
        double f = 2 * N * S * cout * (cin + cout) * 9 + 2 * N * cout * 4 * m->cfg.block_out[0];
        if (cin != cout) f += 2 * N * S * cout * cin;
        return f;
    }
    case UNET_BLOCK_TRANSFORMER: {
        double D = b->tf.inner, C = cin, L = ctx_len, Dc = m->cfg.cross_dim;
        double layer = 2 * N * S * D * D * 4 + 4 * N * S * S * D      // self-attention
                       + 2 * N * S * D * D * 2 + 4 * N * L * Dc * D   // cross q, out; k, v
                       + 4 * N * S * L * D                            // cross scores, values
                       + 2 * N * S * D * 8 * D + 2 * N * S * 4 * D * D; // GEGLU feed-forward
        return 2 * N * S * C * D * 2 + layer * b->tf.n_layers;
    }
    }
    return 0;
}

// ---------------------------------------------------------------------------
// forward of each block kind
// ---------------------------------------------------------------------------

// Where a block's output goes: pushed on the skip stack, or into the state
// slot that does not hold the block's input.
static Tensor state_out(Unet *m, UnetState *s, const UnetBlock *b, int64_t N, int64_t C, int64_t H,
                        int64_t W) {
    Tensor t;
    if (b->info.pushes_skip) {
        SDC_CHECK(s->n_skips < UNET_MAX_SKIPS);
        Arena *a = &m->reg[REG_SKIP];
        s->skip_mark[s->n_skips] = arena_mark(a);
        t = ACT(a, N, C, H, W);
        s->skips[s->n_skips++] = t;
        s->x_slot = -1;
    } else {
        int slot = s->x_slot == 0 ? 1 : 0;
        Arena *a = &m->reg[REG_SLOT0 + slot];
        arena_reset(a, 0);
        t = ACT(a, N, C, H, W);
        s->x_slot = slot;
    }
    return t;
}

static void conv_in_forward(Unet *m, const UnetBlock *b, UnetState *s) {
    const Backend *be = m->run_be;
    Tensor x = s->x; // (N, Cin, H, W)
    Tensor out = state_out(m, s, b, x.shape[0], b->info.out_channels, x.shape[2], x.shape[3]);
    be->conv2d(be, &out, &x, &b->conv.w, &b->conv.b, 1, 1);
    s->x = out;
}

static void resnet_forward(Unet *m, const UnetBlock *b, UnetState *s) {
    const Backend *be = m->run_be;
    const ResnetParams *p = &b->res;
    const float eps = m->cfg.norm_eps;
    const int G = m->cfg.norm_groups;
    Arena *wk = &m->reg[REG_WORK];
    size_t mark = arena_mark(wk);
    Tensor x = s->x; // (N, Cx, H, W)
    int64_t N = x.shape[0], H = x.shape[2], W = x.shape[3], Cout = b->info.out_channels;
    size_t skip_release = 0;
    if (b->info.pops_skip) {
        SDC_CHECK(s->n_skips > 0 && s->x_slot >= 0); // x must not live in the released skips
        Tensor sk = s->skips[--s->n_skips]; // (N, Cs, H, W)
        skip_release = s->skip_mark[s->n_skips];
        Tensor cat = ACT(wk, N, x.shape[1] + sk.shape[1], H, W); // (N, Cx+Cs, H, W)
        be->concat_channels(be, &cat, &x, &sk);
        x = cat;
    }
    int64_t Cin = x.shape[1];
    Tensor h = ACT(wk, N, Cin, H, W); // (N, Cin, H, W)
    be->group_norm(be, &h, &x, &p->norm1_g, &p->norm1_b, G, eps, 1);
    Tensor h2 = ACT(wk, N, Cout, H, W); // (N, Cout, H, W)
    be->conv2d(be, &h2, &h, &p->conv1.w, &p->conv1.b, 1, 1);
    Tensor tp = ACT(wk, N, Cout); // (N, Cout) time_emb_proj(SiLU(temb))
    be->linear(be, &tp, &s->temb, &p->temb_w, &p->temb_b);
    be->add_channel_bias(be, &h2, &h2, &tp);
    Tensor h3 = ACT(wk, N, Cout, H, W); // (N, Cout, H, W)
    be->group_norm(be, &h3, &h2, &p->norm2_g, &p->norm2_b, G, eps, 1);
    Tensor out = state_out(m, s, b, N, Cout, H, W); // (N, Cout, H, W)
    be->conv2d(be, &out, &h3, &p->conv2.w, &p->conv2.b, 1, 1);
    if (p->shortcut.w.ndim) {
        Tensor sc = ACT(wk, N, Cout, H, W); // (N, Cout, H, W)
        be->conv2d(be, &sc, &x, &p->shortcut.w, &p->shortcut.b, 1, 0);
        be->add(be, &out, &out, &sc);
    } else {
        be->add(be, &out, &out, &x);
    }
    arena_reset(wk, mark);
    if (b->info.pops_skip) arena_reset(&m->reg[REG_SKIP], skip_release);
    s->x = out;
}

// One multi-head attention with its projections; xq (N, S, D) the normed
// tokens, xkv (N, L, Dk) the keys' source (xq itself for self-attention).
// Adds the result to hs (N, S, D).
static void attn_forward(Unet *m, const AttnParams *a, int heads, Tensor *hs, const Tensor *xq,
                         const Tensor *xkv) {
    const Backend *be = m->run_be;
    Arena *wk = &m->reg[REG_WORK];
    size_t mark = arena_mark(wk);
    int64_t N = xq->shape[0], S = xq->shape[1], D = xq->shape[2], L = xkv->shape[1];
    Tensor q = ACT(wk, N, S, D); // (N, S, D)
    Tensor k = ACT(wk, N, L, D); // (N, L, D)
    Tensor v = ACT(wk, N, L, D); // (N, L, D)
    be->linear(be, &q, xq, &a->q, NULL);
    be->linear(be, &k, xkv, &a->k, NULL);
    be->linear(be, &v, xkv, &a->v, NULL);
    Tensor o = ACT(wk, N, S, D); // (N, S, D)
    be->attention(be, &o, &q, &k, &v, heads, 0);
    be->linear(be, &q, &o, &a->out_w, &a->out_b); // q is dead: reuse it for the projection
    be->add(be, hs, hs, &q);
    arena_reset(wk, mark);
}

// BasicTransformerBlock on hs (N, S, D) in place, ctx (N, L, Dc).
static void tlayer_forward(Unet *m, const TLayerParams *p, int heads, Tensor *hs, const Tensor *ctx) {
    const Backend *be = m->run_be;
    Arena *wk = &m->reg[REG_WORK];
    size_t mark = arena_mark(wk);
    int64_t N = hs->shape[0], S = hs->shape[1], D = hs->shape[2];
    const float ln_eps = 1e-5f;
    Tensor t = ACT(wk, N, S, D); // (N, S, D) normed tokens
    be->layer_norm(be, &t, hs, &p->n1_g, &p->n1_b, ln_eps);
    attn_forward(m, &p->attn1, heads, hs, &t, &t);
    be->layer_norm(be, &t, hs, &p->n2_g, &p->n2_b, ln_eps);
    attn_forward(m, &p->attn2, heads, hs, &t, ctx);
    be->layer_norm(be, &t, hs, &p->n3_g, &p->n3_b, ln_eps);
    Tensor pr = ACT(wk, N, S, 8 * D); // (N, S, 8D) GEGLU projection
    be->linear(be, &pr, &t, &p->ff0_w, &p->ff0_b);
    Tensor g = ACT(wk, N, S, 4 * D); // (N, S, 4D)
    be->geglu(be, &g, &pr);
    be->linear(be, &t, &g, &p->ff2_w, &p->ff2_b);
    be->add(be, hs, hs, &t);
    arena_reset(wk, mark);
}

static void transformer_forward(Unet *m, const UnetBlock *b, UnetState *s) {
    const Backend *be = m->run_be;
    const TransformerParams *p = &b->tf;
    Arena *wk = &m->reg[REG_WORK];
    size_t mark = arena_mark(wk);
    Tensor x = s->x; // (N, C, H, W)
    int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], S = H * W, D = p->inner;
    Tensor hn = ACT(wk, N, C, H, W); // (N, C, H, W)
    be->group_norm(be, &hn, &x, &p->norm_g, &p->norm_b, m->cfg.norm_groups, 1e-6f, 0);
    Tensor tok = ACT(wk, N, S, C); // (N, S, C)
    be->nchw_to_nlc(be, &tok, &hn);
    Tensor hs = ACT(wk, N, S, D); // (N, S, D) the residual stream of the transformer layers
    be->linear(be, &hs, &tok, &p->in_w, &p->in_b);
    for (int l = 0; l < p->n_layers; l++) tlayer_forward(m, &p->layers[l], p->heads, &hs, &s->ctx);
    be->linear(be, &tok, &hs, &p->out_w, &p->out_b); // (N, S, C)
    Tensor out = state_out(m, s, b, N, C, H, W);     // (N, C, H, W)
    be->nlc_to_nchw(be, &out, &tok);
    be->add(be, &out, &out, &x);
    arena_reset(wk, mark);
    s->x = out;
}

static void downsample_forward(Unet *m, const UnetBlock *b, UnetState *s) {
    const Backend *be = m->run_be;
    Tensor x = s->x; // (N, C, H, W)
    // stride 2, pad 1, 3x3: ceil(H / 2), so odd sizes work as in diffusers
    Tensor out = state_out(m, s, b, x.shape[0], x.shape[1], (x.shape[2] + 1) / 2, (x.shape[3] + 1) / 2);
    be->conv2d(be, &out, &x, &b->conv.w, &b->conv.b, 2, 1);
    s->x = out;
}

static void upsample_forward(Unet *m, const UnetBlock *b, UnetState *s) {
    const Backend *be = m->run_be;
    Arena *wk = &m->reg[REG_WORK];
    size_t mark = arena_mark(wk);
    Tensor x = s->x; // (N, C, H, W)
    // To the size of the skip the next block pops (diffusers' upsample_size):
    // 2H, or 2H - 1 when the way down halved an odd size.
    SDC_CHECK(s->n_skips > 0);
    const Tensor *next = &s->skips[s->n_skips - 1];
    int64_t N = x.shape[0], C = x.shape[1], H2 = next->shape[2], W2 = next->shape[3];
    Tensor u = ACT(wk, N, C, H2, W2); // (N, C, H2, W2)
    be->upsample_nearest2x(be, &u, &x);
    Tensor out = state_out(m, s, b, N, C, H2, W2); // (N, C, 2H, 2W)
    be->conv2d(be, &out, &u, &b->conv.w, &b->conv.b, 1, 1);
    arena_reset(wk, mark);
    s->x = out;
}

static void out_forward(Unet *m, const UnetBlock *b, UnetState *s) {
    const Backend *be = m->run_be;
    Arena *wk = &m->reg[REG_WORK];
    size_t mark = arena_mark(wk);
    Tensor x = s->x; // (N, C0, h, w)
    Tensor hn = ACT(wk, x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    be->group_norm(be, &hn, &x, &b->out.norm_g, &b->out.norm_b, m->cfg.norm_groups, m->cfg.norm_eps, 1);
    be->conv2d(be, &s->out, &hn, &b->out.conv.w, &b->out.conv.b, 1, 1); // (N, Cout, h, w)
    arena_reset(wk, mark);
    s->x = s->out;
    s->x_slot = -1;
}

// ---------------------------------------------------------------------------
// planning and running a pass
// ---------------------------------------------------------------------------

// Resets the regions, computes SiLU(time embedding) into the persistent
// region. Shapes are already checked.
static void pass_start(Unet *m, UnetState *s, Tensor *out, const Tensor *x, const float *timesteps,
                       const Tensor *ctx) {
    const Backend *be = m->run_be;
    for (int r = 0; r < REG_COUNT; r++) arena_reset(&m->reg[r], 0);
    int64_t N = x->shape[0], C0 = m->cfg.block_out[0];
    Arena *wk = &m->reg[REG_WORK];
    Tensor tp = ACT(wk, N, C0); // (N, C0) sinusoidal projection
    be->timestep_embedding(be, &tp, timesteps, m->cfg.flip_sin_to_cos, m->cfg.freq_shift);
    Tensor h1 = ACT(wk, N, 4 * C0); // (N, 4*C0)
    be->linear(be, &h1, &tp, &m->t_lin1_w, &m->t_lin1_b);
    be->silu(be, &h1, &h1);
    memset(s, 0, sizeof *s);
    s->temb = ACT(&m->reg[REG_PERSIST], N, 4 * C0); // (N, 4*C0)
    be->linear(be, &s->temb, &h1, &m->t_lin2_w, &m->t_lin2_b);
    be->silu(be, &s->temb, &s->temb); // every resnet takes SiLU(temb)
    arena_reset(wk, 0);
    s->x = *x;
    s->x_slot = -1;
    s->ctx = *ctx;
    s->out = *out;
}

static void block_run(Unet *m, const UnetBlock *b, UnetState *s) {
    switch (b->info.kind) {
    case UNET_BLOCK_CONV_IN: conv_in_forward(m, b, s); break;
    case UNET_BLOCK_RESNET: resnet_forward(m, b, s); break;
    case UNET_BLOCK_TRANSFORMER: transformer_forward(m, b, s); break;
    case UNET_BLOCK_DOWNSAMPLE: downsample_forward(m, b, s); break;
    case UNET_BLOCK_UPSAMPLE: upsample_forward(m, b, s); break;
    case UNET_BLOCK_OUT: out_forward(m, b, s); break;
    }
}

// The measuring run: every region a measuring arena, every op a no-op; fills
// reg_bytes with each region's peak. record != 0 also stores each block's
// output and scratch bytes in its info (the plan that will be allocated).
static int unet_measure(Unet *m, int batch, int h, int w, int ctx_len, int record, size_t *reg_bytes,
                        SdcError *err) {
    const UnetConfig *c = &m->cfg;
    if (batch < 1 || h < 1 || w < 1 || ctx_len < 1)
        return sdc_err(err, SDC_ERR_ARG, "unet: batch %d, latent %dx%d, %d context tokens: all must be positive",
                       batch, h, w, ctx_len);
    float *ts = calloc((size_t)batch, sizeof *ts); // never read by the measure backend
    if (!ts) return sdc_err(err, SDC_ERR_OOM, "unet: out of memory");
    Arena real[REG_COUNT];
    memcpy(real, m->reg, sizeof real);
    for (int r = 0; r < REG_COUNT; r++) arena_init_measure(&m->reg[r]);
    m->run_be = backend_measure();
    Arena fake;
    arena_init_measure(&fake);
    Tensor x = ACT(&fake, batch, c->in_channels, h, w);
    Tensor ctx = ACT(&fake, batch, ctx_len, c->cross_dim);
    Tensor out = ACT(&fake, batch, c->out_channels, h, w);
    UnetState s;
    pass_start(m, &s, &out, &x, ts, &ctx);
    size_t max_x = 0; // the largest running activation at a block boundary
    for (int i = 0; i < m->n_blocks; i++) {
        Arena *wk = &m->reg[REG_WORK];
        size_t peak = wk->peak; // the region's peak so far; measure this block alone
        wk->peak = wk->used;
        block_run(m, &m->blocks[i], &s);
        if (record) m->blocks[i].info.scratch_bytes = wk->peak;
        if (peak > wk->peak) wk->peak = peak;
        if (record) m->blocks[i].info.out_bytes = tensor_bytes(&s.x);
        if (tensor_bytes(&s.x) > max_x) max_x = tensor_bytes(&s.x);
    }
    SDC_CHECK(s.n_skips == 0);
    // a pipeline stage starting at any block receives its input into slot 0
    // (unet_begin_at), whatever region the previous stage had it in
    for (int r = REG_SLOT0; r <= REG_SLOT1; r++)
        if (m->reg[r].peak < max_x) m->reg[r].peak = max_x;
    free(ts);
    for (int r = 0; r < REG_COUNT; r++)
        reg_bytes[r] = (m->reg[r].peak + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    m->run_be = m->be;
    memcpy(m->reg, real, sizeof real);
    return 0;
}

int unet_plan_bytes(Unet *m, int batch, int h, int w, int ctx_len, size_t *bytes, SdcError *err) {
    size_t reg[REG_COUNT];
    SDC_TRY(unet_measure(m, batch, h, w, ctx_len, 0, reg, err));
    *bytes = 0;
    for (int r = 0; r < REG_COUNT; r++) *bytes += reg[r];
    return 0;
}

int unet_reserve(Unet *m, int batch, int h, int w, int ctx_len, SdcError *err) {
    SDC_TRY(unet_measure(m, batch, h, w, ctx_len, 1, m->reg_bytes, err));
    size_t total = 0;
    for (int r = 0; r < REG_COUNT; r++) total += m->reg_bytes[r];

    // The one allocation, carved into regions.
    arena_free(&m->act);
    memset(m->reg, 0, sizeof m->reg);
    m->plan_batch = m->plan_h = m->plan_w = m->plan_ctx = 0;
    int rc = arena_init(&m->act, m->be, total, err);
    if (rc) return sdc_err_wrap(err, "unet activations for batch %d at %dx%d", batch, h, w);
    size_t off = 0;
    for (int r = 0; r < REG_COUNT; r++) {
        m->reg[r] = (Arena){.be = m->be, .base = m->act.base + off, .cap = m->reg_bytes[r]};
        off += m->reg_bytes[r];
    }
    m->plan_batch = batch;
    m->plan_h = h;
    m->plan_w = w;
    m->plan_ctx = ctx_len;
    return 0;
}

static int check_act(const Unet *m, const Tensor *t, const char *what, int ndim, SdcError *err) {
    if (t->dtype != m->be->act_dtype || t->device != m->be->device || t->ndim != ndim)
        return sdc_err(err, SDC_ERR_ARG, "unet: %s must be a %dD %s tensor on %s (got %dD %s)", what,
                       ndim, dtype_name(m->be->act_dtype), m->be->name, t->ndim, dtype_name(t->dtype));
    return 0;
}

int unet_begin(Unet *m, UnetState *s, Tensor *out, const Tensor *x, const float *timesteps,
               const Tensor *ctx, SdcError *err) {
    const UnetConfig *c = &m->cfg;
    SDC_TRY(check_act(m, x, "x", 4, err));
    SDC_TRY(check_act(m, ctx, "context", 3, err));
    SDC_TRY(check_act(m, out, "out", 4, err));
    int64_t N = x->shape[0], h = x->shape[2], w = x->shape[3], L = ctx->shape[1];
    char b1[64], b2[64], b3[64];
    if (N < 1 || L < 1 || x->shape[1] != c->in_channels || ctx->shape[0] != N || ctx->shape[2] != c->cross_dim ||
        out->shape[0] != N || out->shape[1] != c->out_channels || out->shape[2] != h ||
        out->shape[3] != w)
        return sdc_err(err, SDC_ERR_ARG,
                       "unet: x %s, context %s, out %s; expected x (N, %d, h, w), context (N, L, %d), "
                       "out (N, %d, h, w)",
                       tensor_shape_str(x, b1, sizeof b1), tensor_shape_str(ctx, b2, sizeof b2),
                       tensor_shape_str(out, b3, sizeof b3), c->in_channels, c->cross_dim,
                       c->out_channels);
    if (N > m->plan_batch || h > m->plan_h || w > m->plan_w || L > m->plan_ctx) {
        // Grow every dimension to the larger of plan and call (outside the hot loop).
        SDC_TRY(unet_reserve(m, N > m->plan_batch ? (int)N : m->plan_batch,
                             h > m->plan_h ? (int)h : m->plan_h, w > m->plan_w ? (int)w : m->plan_w,
                             L > m->plan_ctx ? (int)L : m->plan_ctx, err));
    }
    pass_start(m, s, out, x, timesteps, ctx);
    return 0;
}

int unet_begin_at(Unet *m, UnetState *s, Tensor *out, const Tensor *x, const float *timesteps, const Tensor *ctx,
                  int first, const int64_t x_shape[4], int n_skips, const int64_t (*skip_shapes)[4], SdcError *err) {
    if (first < 1 || first >= m->n_blocks || n_skips < 0 || n_skips > UNET_MAX_SKIPS)
        return sdc_err(err, SDC_ERR_ARG, "unet: a stage cannot start at block %d with %d skips (%d blocks)", first,
                       n_skips, m->n_blocks);
    const UnetBlockInfo *bi = &m->blocks[first].info;
    const int64_t n = x->shape[0];
    int ok = x_shape[0] == n && x_shape[1] == bi->in_channels && x_shape[2] >= 1 && x_shape[3] >= 1;
    for (int k = 0; ok && k < n_skips; k++)
        ok = skip_shapes[k][0] == n && skip_shapes[k][1] >= 1 && skip_shapes[k][2] >= 1 && skip_shapes[k][3] >= 1 &&
             skip_shapes[k][2] <= x->shape[2] && skip_shapes[k][3] <= x->shape[3];
    ok = ok && x_shape[2] <= x->shape[2] && x_shape[3] <= x->shape[3];
    if (!ok)
        return sdc_err(err, SDC_ERR_ARG, "unet: block %d (%s) takes (%lld, %d, h, w) with %d skips; the stage was "
                       "given (%lld, %lld, %lld, %lld) with %d skips", first, bi->name, (long long)n,
                       bi->in_channels, n_skips, (long long)x_shape[0], (long long)x_shape[1], (long long)x_shape[2],
                       (long long)x_shape[3], n_skips);
    SDC_TRY(unet_begin(m, s, out, x, timesteps, ctx, err));
    for (int k = 0; k < n_skips; k++) {
        Arena *a = &m->reg[REG_SKIP];
        s->skip_mark[k] = arena_mark(a);
        s->skips[k] = ACT(a, skip_shapes[k][0], skip_shapes[k][1], skip_shapes[k][2], skip_shapes[k][3]);
    }
    s->n_skips = n_skips;
    Arena *a = &m->reg[REG_SLOT0];
    arena_reset(a, 0);
    s->x = ACT(a, x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    s->x_slot = 0;
    return 0;
}

int unet_block_forward(Unet *m, int i, UnetState *s, SdcError *err) {
    if (i < 0 || i >= m->n_blocks)
        return sdc_err(err, SDC_ERR_ARG, "unet: block %d of %d", i, m->n_blocks);
    const UnetBlock *b = &m->blocks[i];
    if (s->x.ndim != 4 || s->x.shape[1] != b->info.in_channels ||
        (b->info.pops_skip && (s->n_skips < 1 || s->skips[s->n_skips - 1].shape[1] != b->info.skip_channels)))
        return sdc_err(err, SDC_ERR_ARG,
                       "unet: block %d (%s) expects %d input channels and %d skip channels; the "
                       "state has %d and %d skips",
                       i, b->info.name, b->info.in_channels, b->info.skip_channels,
                       s->x.ndim == 4 ? (int)s->x.shape[1] : -1, s->n_skips);
    block_run(m, b, s);
    return 0;
}

int unet_forward(Unet *m, Tensor *out, const Tensor *x, const float *timesteps, const Tensor *ctx,
                 SdcError *err) {
    UnetState s;
    SDC_TRY(unet_begin(m, &s, out, x, timesteps, ctx, err));
    for (int i = 0; i < m->n_blocks; i++) block_run(m, &m->blocks[i], &s);
    SDC_CHECK(s.n_skips == 0);
    return 0;
}

void unet_print_plan(const Unet *m, FILE *f) {
    fprintf(f, "unet activation plan (batch %d, %dx%d, %d tokens): %.1f MiB =", m->plan_batch,
            m->plan_h, m->plan_w, m->plan_ctx, (double)m->act.cap / (1 << 20));
    for (int r = 0; r < REG_COUNT; r++)
        fprintf(f, " %s %.1f", REG_NAMES[r], (double)m->reg_bytes[r] / (1 << 20));
    fprintf(f, " MiB; params %.1f MiB (%zu tensors)\n", (double)unet_param_bytes(m) / (1 << 20),
            m->param_count);
}
