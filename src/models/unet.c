// unet.c: the SD UNet (diffusers UNet2DConditionModel): the model built on
// unet_layout's block list, its loading, FLOP model and the inference pass
// with its memory plan (see unet.h). Each block kind's parameters, forward
// and backward are in unet_kinds.c; training passes in unet_train.c. Calls
// only backend ops and never branches on the device.
#include "models/unet.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/params.h"
#include "models/unet_internal.h"

// ---------------------------------------------------------------------------
// building and loading
// ---------------------------------------------------------------------------

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

static void blocks_free(Unet *m) {
    if (!m->blocks) return;
    for (int i = 0; i < m->n_blocks; i++) free(m->blocks[i].tf.layers);
    free(m->blocks);
    m->blocks = NULL;
    m->n_blocks = 0;
}

// The block list from the layout, with each transformer's per-layer table.
static int blocks_make(Unet *m, SdcError *err) {
    UnetBlockInfo *info = calloc(UNET_MAX_BLOCKS, sizeof *info);
    if (!info) return sdc_err(err, SDC_ERR_OOM, "unet: out of memory for the block list");
    int n = 0, rc = unet_layout(&m->cfg, info, &n, err);
    if (!rc) {
        m->blocks = calloc((size_t)n, sizeof *m->blocks);
        if (!m->blocks) rc = sdc_err(err, SDC_ERR_OOM, "unet: out of memory for the block list");
    }
    for (int i = 0; !rc && i < n; i++) {
        m->blocks[i].info = info[i];
        m->n_blocks = i + 1;
        if (info[i].kind == UNET_BLOCK_TRANSFORMER &&
            !(m->blocks[i].tf.layers = calloc((size_t)info[i].n_layers, sizeof(TLayerParams))))
            rc = sdc_err(err, SDC_ERR_OOM, "unet: out of memory for %s", info[i].name);
    }
    free(info);
    return rc;
}

// Asks pl for the parameters of every block (its own range for real, the
// others only checked), recording each block's parameter count.
static int unet_build(Unet *m, ParamLoader *pl, SdcError *err) {
    for (int i = 0; i < m->n_blocks; i++) {
        UnetBlock *b = &m->blocks[i];
        const int mine = i >= m->first && i < m->end;
        const size_t numel0 = pl->numel;
        pl->check_only = !mine;
        b->param_lo = arena_mark(pl->arena);
        UNET_KINDS[b->info.kind].load(pl, m, b);
        b->info.param_count = pl->numel - numel0;
        b->loaded = mine;
    }
    pl->check_only = 0;
    return pl->failed ? (err && err->code ? err->code : SDC_ERR_SHAPE) : 0;
}

int unet_load(Unet **out, const ModelFiles *mf, const Backend *be, SdcError *err) {
    return unet_load_opts(out, mf, be, NULL, err);
}

int unet_load_opts(Unet **out, const ModelFiles *mf, const Backend *be, const ModelLoadOpts *o,
                   SdcError *err) {
    *out = NULL;
    int own = o && o->trainable;
    if (own && (be->param_dtype != DT_F32 || !be->conv2d_backward))
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "unet: training needs a backend with backward ops and fp32 parameters (got %s, %s)\n"
                       "---> use --device cpu for training",
                       be->name, dtype_name(be->param_dtype));
    Unet *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "unet: out of memory");
    m->cfg = model_files_info(mf)->unet;
    m->be = be;
    m->run_be = be;
    int rc = config_check(&m->cfg, err);
    if (!rc) rc = blocks_make(m, err);
    if (rc) goto fail;
    m->first = o ? o->first_block : 0;
    m->end = o && o->end_block > 0 ? o->end_block : m->n_blocks;
    if (m->first < 0 || m->end > m->n_blocks || m->first >= m->end) {
        rc = sdc_err(err, SDC_ERR_ARG, "unet: blocks [%d, %d) of %d to load", m->first, m->end, m->n_blocks);
        goto fail;
    }
    if ((rc = unet_saves_alloc(m, &m->sv))) {
        rc = sdc_err(err, rc, "unet: out of memory for the blocks' saved state");
        goto fail;
    }

    // Pass 1: check every name and shape, count the bytes to convert.
    const ModelFiles *src = o && o->init ? NULL : mf; // from scratch: no tensor read (params.h)
    if (!src && !own) {
        rc = sdc_err(err, SDC_ERR_INTERNAL, "unet: a from-scratch load must be trainable");
        goto fail;
    }
    Arena meas;
    arena_init_measure(&meas);
    ParamLoader pl = {.mf = src, .comp = COMP_UNET, .be = be, .arena = &meas, .err = err, .own = own,
                      .lora = o ? o->lora : NULL};
    rc = unet_build(m, &pl, err);
    if (rc) goto fail;
    // Pass 2: for real.
    rc = arena_init(&m->params, be, meas.peak, err);
    if (rc) goto fail;
    if (own) be->zero(be, m->params.base, m->params.cap); // padding too: the flat buffer is optimized
    pl = (ParamLoader){.mf = src, .comp = COMP_UNET, .be = be, .arena = &m->params, .err = err,
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

int unet_saves_alloc(const Unet *m, BlockSave **out) {
    BlockSave *sv = calloc((size_t)m->n_blocks, sizeof *sv);
    if (!sv) return SDC_ERR_OOM;
    for (int i = 0; i < m->n_blocks; i++)
        if (m->blocks[i].info.kind == UNET_BLOCK_TRANSFORMER &&
            !(sv[i].L = calloc((size_t)m->blocks[i].info.n_layers, sizeof(TLayerSave)))) {
            unet_saves_free(m, sv);
            return SDC_ERR_OOM;
        }
    *out = sv;
    return 0;
}

void unet_saves_free(const Unet *m, BlockSave *sv) {
    if (!sv) return;
    for (int i = 0; i < m->n_blocks; i++) free(sv[i].L);
    free(sv);
}

void unet_free(Unet *m) {
    if (!m) return;
    unet_train_free(m);
    unet_saves_free(m, m->sv);
    blocks_free(m);
    arena_free(&m->params);
    arena_free(&m->act);
    param_table_free(&m->table);
    free(m);
}

const UnetConfig *unet_config(const Unet *m) { return &m->cfg; }

int unet_n_time_ids(const Unet *m) { return m->cfg.add_time_dim ? m->cfg.n_time_ids : 0; }

int unet_text_dim(const Unet *m) {
    const UnetConfig *c = &m->cfg;
    return c->add_time_dim ? c->add_in_dim - unet_n_time_ids(m) * c->add_time_dim : 0;
}

int unet_set_added_cond(Unet *m, const Tensor *text_embeds, const float *time_ids, SdcError *err) {
    const UnetConfig *c = &m->cfg;
    if (!c->add_time_dim)
        return sdc_err(err, SDC_ERR_ARG, "unet: added conditioning given to a UNet without an added embedding");
    const int64_t text = c->add_in_dim - (int64_t)unet_n_time_ids(m) * c->add_time_dim;
    char b1[64];
    if (!text_embeds || !time_ids || text_embeds->ndim != 2 || text_embeds->shape[1] != text ||
        text_embeds->dtype != m->be->act_dtype || text_embeds->device != m->be->device)
        return sdc_err(err, SDC_ERR_ARG, "unet: text_embeds %s: expected (rows, %lld) %s on %s, and time ids",
                       text_embeds ? tensor_shape_str(text_embeds, b1, sizeof b1) : "none", (long long)text,
                       dtype_name(m->be->act_dtype), m->be->name);
    m->add_text = *text_embeds;
    m->time_ids = time_ids;
    return 0;
}
size_t unet_param_count(const Unet *m) { return m->param_numel; }
size_t unet_param_bytes(const Unet *m) { return m->param_numel * dtype_size(m->be->param_dtype); }
size_t unet_activation_bytes(const Unet *m) { return m->act.cap; }
int unet_block_count(const Unet *m) { return m->n_blocks; }
const UnetBlockInfo *unet_block_info(const Unet *m, int i) {
    SDC_CHECK(i >= 0 && i < m->n_blocks);
    return &m->blocks[i].info;
}

double unet_block_flops(const Unet *m, int i, int batch, int h, int w, int ctx_len) {
    const UnetBlockInfo *bi = unet_block_info(m, i);
    double N = batch, S = (double)(h / bi->in_div) * (double)(w / bi->in_div);
    double cin = bi->in_channels + bi->skip_channels, cout = bi->out_channels;
    switch (bi->kind) {
    case UNET_BLOCK_TIME: return 2 * N * (cin * cout + cout * cout);
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
        double D = bi->inner, C = cin, L = ctx_len, Dc = m->cfg.cross_dim;
        double layer = 2 * N * S * D * D * 4 + 4 * N * S * S * D      // self-attention
                       + 2 * N * S * D * D * 2 + 4 * N * L * Dc * D   // cross q, out; k, v
                       + 4 * N * S * L * D                            // cross scores, values
                       + 2 * N * S * D * 8 * D + 2 * N * S * 4 * D * D; // GEGLU feed-forward
        return 2 * N * S * C * D * 2 + layer * bi->n_layers;
    }
    case UNET_BLOCK_KINDS: break;
    }
    return 0;
}

// ---------------------------------------------------------------------------
// an inference pass: the state between blocks and where each output goes
// ---------------------------------------------------------------------------

// The block's output: the time embedding in the persistent region, a pushed
// skip in the skip region, else the state slot that does not hold the
// block's input (the OUT block writes into the caller's tensor).
static Tensor state_out(Unet *m, UnetState *s, const UnetBlock *b) {
    int64_t shape[4];
    int nd;
    unet_block_out_shape(m, b, &s->x, s->n_skips ? &s->skips[s->n_skips - 1] : NULL, shape, &nd);
    if (b->info.kind == UNET_BLOCK_TIME) return arena_tensor(&m->reg[REG_PERSIST], m->be->act_dtype, nd, shape);
    if (b->info.kind == UNET_BLOCK_OUT) return s->out;
    if (b->info.pushes_skip) {
        SDC_CHECK(s->n_skips < UNET_MAX_SKIPS);
        Arena *a = &m->reg[REG_SKIP];
        s->skip_mark[s->n_skips] = arena_mark(a);
        return arena_tensor(a, m->be->act_dtype, nd, shape);
    }
    const int slot = s->x_slot == 0 ? 1 : 0;
    Arena *a = &m->reg[REG_SLOT0 + slot];
    arena_reset(a, 0);
    return arena_tensor(a, m->be->act_dtype, nd, shape);
}

static void block_run(Unet *m, int i, UnetState *s) {
    const UnetBlock *b = &m->blocks[i];
    Pass p = {.be = m->run_be, .act = m->be->act_dtype, .work = &m->reg[REG_WORK]};
    UnetIO io = {.x = s->x, .temb = s->temb, .ctx = s->ctx, .timesteps = s->timesteps, .add_text = s->add_text,
                 .time_ids = s->time_ids};
    size_t skip_release = 0;
    if (b->info.pops_skip) {
        SDC_CHECK(s->n_skips > 0 && s->x_slot >= 0); // x must not live in the released skips
        io.skip = s->skips[--s->n_skips];
        skip_release = s->skip_mark[s->n_skips];
    }
    io.out = state_out(m, s, b);
    UNET_KINDS[b->info.kind].forward(&p, m, b, &m->sv[i], &io);
    if (b->info.pops_skip) arena_reset(&m->reg[REG_SKIP], skip_release);
    switch (b->info.kind) {
    case UNET_BLOCK_TIME: s->temb = io.out; return;
    case UNET_BLOCK_OUT: s->x_slot = -1; break;
    default:
        if (b->info.pushes_skip) {
            s->skips[s->n_skips++] = io.out;
            s->x_slot = -1;
        } else {
            s->x_slot = s->x_slot == 0 ? 1 : 0;
        }
    }
    s->x = io.out;
}

// Resets the regions and sets the state. Shapes are already checked.
static void pass_start(Unet *m, UnetState *s, Tensor *out, const Tensor *x, const float *timesteps,
                       const Tensor *ctx) {
    for (int r = 0; r < REG_COUNT; r++) arena_reset(&m->reg[r], 0);
    memset(s, 0, sizeof *s);
    s->x = *x;
    s->x_slot = -1;
    s->ctx = *ctx;
    s->out = *out;
    s->timesteps = timesteps;
    s->add_text = m->add_text;
    s->time_ids = m->time_ids;
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
    const DType dt = m->be->act_dtype;
    Tensor x = ARENA_DT(&fake, dt, batch, c->in_channels, h, w);
    Tensor ctx = ARENA_DT(&fake, dt, batch, ctx_len, c->cross_dim);
    Tensor out = ARENA_DT(&fake, dt, batch, c->out_channels, h, w);
    UnetState s;
    pass_start(m, &s, &out, &x, ts, &ctx);
    if (c->add_time_dim) { // shapes only: the measure backend reads no data
        s.add_text = ARENA_DT(&fake, dt, batch, c->add_in_dim - unet_n_time_ids(m) * c->add_time_dim);
        s.time_ids = ts;
    }
    size_t max_x = 0; // the largest running activation at a block boundary
    for (int i = 0; i < m->n_blocks; i++) {
        Arena *wk = &m->reg[REG_WORK];
        size_t peak = wk->peak; // the region's peak so far; measure this block alone
        wk->peak = wk->used;
        block_run(m, i, &s);
        if (record) m->blocks[i].info.scratch_bytes = wk->peak;
        if (peak > wk->peak) wk->peak = peak;
        const size_t ob = m->blocks[i].info.kind == UNET_BLOCK_TIME ? tensor_bytes(&s.temb) : tensor_bytes(&s.x);
        if (record) m->blocks[i].info.out_bytes = ob;
        if (m->blocks[i].info.kind != UNET_BLOCK_TIME && ob > max_x) max_x = ob;
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

static int check_loaded(const Unet *m, int first, int end, SdcError *err) {
    if (first < m->first || end > m->end)
        return sdc_err(err, SDC_ERR_ARG, "unet: blocks [%d, %d) are not loaded (this model holds [%d, %d))", first,
                       end, m->first, m->end);
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
    if (c->add_time_dim && timesteps && (m->add_text.ndim != 2 || m->add_text.shape[0] != N || !m->time_ids))
        return sdc_err(err, SDC_ERR_ARG, "unet: an SDXL UNet needs its added conditioning for each of the %lld rows "
                       "(unet_set_added_cond: %lld given)", (long long)N,
                       (long long)(m->add_text.ndim == 2 ? m->add_text.shape[0] : 0));
    pass_start(m, s, out, x, timesteps, ctx);
    return 0;
}

int unet_begin_at(Unet *m, UnetState *s, Tensor *out, const Tensor *x, const Tensor *ctx, int first,
                  const int64_t x_shape[4], int n_skips, const int64_t (*skip_shapes)[4], SdcError *err) {
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
    SDC_TRY(unet_begin(m, s, out, x, NULL, ctx, err));
    s->temb = ARENA_DT(&m->reg[REG_PERSIST], m->be->act_dtype, n, 4 * m->cfg.block_out[0]);
    for (int k = 0; k < n_skips; k++) {
        Arena *a = &m->reg[REG_SKIP];
        s->skip_mark[k] = arena_mark(a);
        s->skips[k] = ARENA_DT(a, m->be->act_dtype, skip_shapes[k][0], skip_shapes[k][1], skip_shapes[k][2],
                               skip_shapes[k][3]);
    }
    s->n_skips = n_skips;
    Arena *a = &m->reg[REG_SLOT0];
    arena_reset(a, 0);
    s->x = ARENA_DT(a, m->be->act_dtype, x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    s->x_slot = 0;
    return 0;
}

int unet_block_forward(Unet *m, int i, UnetState *s, SdcError *err) {
    if (i < 0 || i >= m->n_blocks)
        return sdc_err(err, SDC_ERR_ARG, "unet: block %d of %d", i, m->n_blocks);
    SDC_TRY(check_loaded(m, i, i + 1, err));
    const UnetBlock *b = &m->blocks[i];
    const int time = b->info.kind == UNET_BLOCK_TIME;
    if ((time && !s->timesteps) || (!time && (s->temb.ndim != 2 || s->x.ndim != 4 ||
                                              s->x.shape[1] != b->info.in_channels)) ||
        (b->info.pops_skip && (s->n_skips < 1 || s->skips[s->n_skips - 1].shape[1] != b->info.skip_channels)))
        return sdc_err(err, SDC_ERR_ARG,
                       "unet: block %d (%s) expects %d input channels, %d skip channels%s; the "
                       "state has %d channels, %d skips%s",
                       i, b->info.name, b->info.in_channels, b->info.skip_channels,
                       time ? " and timesteps" : " and the time embedding",
                       s->x.ndim == 4 ? (int)s->x.shape[1] : -1, s->n_skips,
                       s->temb.ndim == 2 ? "" : ", no time embedding");
    block_run(m, i, s);
    return backend_status(m->be, err);
}

int unet_forward(Unet *m, Tensor *out, const Tensor *x, const float *timesteps, const Tensor *ctx,
                 SdcError *err) {
    SDC_TRY(check_loaded(m, 0, m->n_blocks, err));
    UnetState s;
    SDC_TRY(unet_begin(m, &s, out, x, timesteps, ctx, err));
    for (int i = 0; i < m->n_blocks; i++) block_run(m, i, &s);
    SDC_CHECK(s.n_skips == 0);
    return backend_status(m->be, err);
}

void unet_print_plan(const Unet *m, FILE *f) {
    fprintf(f, "unet activation plan (batch %d, %dx%d, %d tokens): %.1f MiB =", m->plan_batch,
            m->plan_h, m->plan_w, m->plan_ctx, (double)m->act.cap / (1 << 20));
    for (int r = 0; r < REG_COUNT; r++)
        fprintf(f, " %s %.1f", REG_NAMES[r], (double)m->reg_bytes[r] / (1 << 20));
    fprintf(f, " MiB; params %.1f MiB (%zu tensors)\n", (double)unet_param_bytes(m) / (1 << 20),
            m->param_count);
}

const ParamTable *unet_param_table(const Unet *m) { return &m->table; }
