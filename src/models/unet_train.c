// unet_train.c: training passes over the UNet's block list (unet.h,
// "training"): the blocks' one forward (unet_kinds.c) keeping its saves,
// their backward in reverse, by whole model or by pipeline stage, with
// several micro-batches' activations held at once (tapes).
//
// Memory, all planned by a measuring run of forward and backward
// (backend_measure) and allocated once through the model's backend:
//   tapes    per micro-batch in flight: what the forward keeps for backward
//            (the cut entering the blocks, every block's output, and its
//            intermediates unless checkpointing)
//   recomp   one block's intermediates (checkpointing only)
//   fwork    forward temporaries (released after every use)
//   dslot    two slots the running gradient alternates between
//   dskips   the skip stack's gradients (a stack: pushed by the up blocks in
//            the backward pass, popped by the blocks that pushed the skips)
//   gwork    backward temporaries (released after every block)
//   gcut     the time embedding's and the context's gradient sums
//   grads    full training: mirrors the parameter arena
//   lora     LoRA parameters and their gradients
// Reads top to bottom: state, planning the cut shapes, forward, backward,
// LoRA, reserve, the public entry points, merging LoRA.
#include <math.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet_internal.h"
#include "sampling/rng.h"

typedef struct Tape {
    Arena keep;    // a slice of UnetTrain.tape_mem
    BlockSave *sv; // (n_blocks) what each block's forward saved
    UnetCut in;    // the cut entering the blocks (in keep)
    UnetCut out;   // the cut leaving them (views into keep)
    int n;         // rows of the forward held; 0: free
    int forward_done;
} Tape;

typedef struct DskipStack {
    Tensor t[UNET_MAX_SKIPS];
    size_t mark[UNET_MAX_SKIPS];
    int n;
} DskipStack;

enum { A_RECOMP, A_FWORK, A_DSLOT0, A_DSLOT1, A_DSKIPS, A_GWORK, A_GCUT, A_SINK, A_SHARED };

typedef struct UnetTrain {
    UnetTrainOpts o;
    int first, end;          // the blocks this rank trains (the model's loaded range)
    int first_trainable;     // the first block (of all) with trainable parameters
    int want_dtemb;          // the time MLP trains (full fine-tuning)
    int batch, h, w, ctx_len; // the reservation
    Tape *tapes;
    int n_tapes;
    Arena tape_mem;          // the tapes' keep arenas, one allocation
    size_t tape_bytes;       // one tape's
    Arena ar[A_SHARED];      // shared working arenas (see the top)
    Arena grads;             // full: mirrors m->params
    Arena lora_p, lora_g;
    LoraPair *lora;          // (n_pairs) the adapters of the transformers in range
    int n_pairs;
    float lora_scale;
    ParamTable lora_table;
    const Backend *be;       // the model's backend, or backend_measure() while planning
    // the backward in progress
    int bwd_tape;            // -1: none
    DskipStack ds;
    Tensor dcur;             // the running gradient
    int slot;
    UnetCut gin;
    Arena merge_backup;      // base projection weights while LoRA is merged
    int merged;
    int sink;                // timing a model loaded for inference: parameter gradients go to scratch
    void (*grad_hook)(void *user, size_t lo); // told after each block's backward (unet_train_set_grad_hook)
    void *grad_user;
    double *fwd_s, *bwd_s;   // (n_blocks) each block's forward / backward seconds, summed (time_blocks)
} UnetTrain;

static int lora_on(const UnetTrain *T) { return T->o.lora_rank > 0; }

// ---------------------------------------------------------------------------
// the cut entering block `first`: its shapes from the layout
// ---------------------------------------------------------------------------

// Walks the blocks before `first` for n rows at latent (h, w): x's shape and
// the open skips' (bottom first).
static void cut_shapes(const Unet *m, int first, int64_t n, int64_t h, int64_t w, int64_t xs[4],
                       int64_t (*ss)[4], int *n_skips) {
    Tensor x = {.ndim = 4, .shape = {n, m->cfg.in_channels, h, w}};
    Tensor st[UNET_MAX_SKIPS];
    int k = 0;
    for (int i = 0; i < first; i++) {
        const UnetBlock *b = &m->blocks[i];
        if (b->info.kind == UNET_BLOCK_TIME) continue;
        if (b->info.pops_skip) k--;
        int64_t sh[4];
        int nd;
        unet_block_out_shape(m, b, &x, k ? &st[k - 1] : NULL, sh, &nd);
        x = (Tensor){.ndim = 4, .shape = {sh[0], sh[1], sh[2], sh[3]}};
        if (b->info.pushes_skip) st[k++] = x;
    }
    memcpy(xs, x.shape, sizeof x.shape);
    for (int i = 0; i < k; i++) memcpy(ss[i], st[i].shape, sizeof st[i].shape);
    *n_skips = k;
}

size_t unet_cut_bytes(const Unet *m, int first, int n, int h, int w, int ctx_len) {
    int64_t xs[4], ss[UNET_MAX_SKIPS][4];
    int k = 0;
    cut_shapes(m, first, n, h, w, xs, ss, &k);
    const size_t e = dtype_size(m->be->act_dtype);
    size_t b = (size_t)(xs[0] * xs[1] * xs[2] * xs[3]) * e + (size_t)n * ctx_len * m->cfg.cross_dim * e;
    for (int i = 0; i < k; i++) b += (size_t)(ss[i][0] * ss[i][1] * ss[i][2] * ss[i][3]) * e;
    if (first > 0) b += (size_t)n * 4 * m->cfg.block_out[0] * e;
    return b;
}

static Tensor act4(Arena *a, DType dt, const int64_t s[4]) { return ARENA_DT(a, dt, s[0], s[1], s[2], s[3]); }

static void cut_alloc(Unet *m, Tape *tp, int n) {
    UnetTrain *T = m->train;
    const DType dt = m->be->act_dtype;
    const int64_t C0 = m->cfg.block_out[0];
    UnetCut *in = &tp->in;
    memset(in, 0, sizeof *in);
    arena_reset(&tp->keep, 0);
    int64_t xs[4], ss[UNET_MAX_SKIPS][4];
    cut_shapes(m, T->first, n, T->h, T->w, xs, ss, &in->n_skips);
    in->x = act4(&tp->keep, dt, xs);
    for (int k = 0; k < in->n_skips; k++) in->skips[k] = act4(&tp->keep, dt, ss[k]);
    if (T->first > 0) in->temb = ARENA_DT(&tp->keep, dt, n, 4 * C0);
    in->ctx = ARENA_DT(&tp->keep, dt, n, T->ctx_len, m->cfg.cross_dim);
    tp->n = n;
    tp->forward_done = 0;
}

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

// Runs block i's forward on io (its output allocated), saving into tape tp's
// record; intermediates in keep.
static void run_block(Unet *m, int i, Tape *tp, Arena *keep, UnetIO *io) {
    UnetTrain *T = m->train;
    const UnetBlock *b = &m->blocks[i];
    Pass p = {.be = T->be, .act = m->be->act_dtype, .keep = keep, .work = &T->ar[A_FWORK],
              .lora_scale = T->lora_scale};
    tp->sv[i].x = io->x;
    tp->sv[i].skip = io->skip;
    UNET_KINDS[b->info.kind].forward(&p, m, b, &tp->sv[i], io);
}

// The rank's blocks on tape tp, each output kept in the tape; the cut
// leaving them into tp->out.
static double clock_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void stage_forward(Unet *m, Tape *tp, const float *timesteps) {
    UnetTrain *T = m->train;
    UnetCut *o = &tp->out;
    *o = tp->in;
    Arena *recomp = &T->ar[A_RECOMP];
    for (int i = T->first; i < T->end; i++) {
        const UnetBlock *b = &m->blocks[i];
        const size_t k0 = arena_mark(&tp->keep);
        UnetIO io = {.x = o->x, .temb = o->temb, .ctx = tp->in.ctx, .timesteps = timesteps};
        if (b->info.kind == UNET_BLOCK_TIME && m->cfg.add_time_dim) { // SDXL's added conditioning
            io.time_ids = m->time_ids;
            io.add_text = m->add_text;
            if (T->be == backend_measure()) // shapes only while planning
                io.add_text = (Tensor){.dtype = m->be->act_dtype, .ndim = 2, .shape = {o->x.shape[0], unet_text_dim(m)}};
        }
        if (b->info.pops_skip) {
            SDC_CHECK(o->n_skips > 0);
            io.skip = o->skips[--o->n_skips];
        }
        int64_t sh[4];
        int nd;
        unet_block_out_shape(m, b, &o->x, o->n_skips ? &o->skips[o->n_skips - 1] : NULL, sh, &nd);
        io.out = arena_tensor(&tp->keep, m->be->act_dtype, nd, sh);
        tp->sv[i].out = io.out;
        // the time MLP's few saves are always kept (recomputing it would need the timesteps)
        const int ckpt = T->o.checkpointing && b->info.kind != UNET_BLOCK_TIME;
        const double t0 = T->fwd_s ? clock_s() : 0;
        if (ckpt) arena_reset(recomp, 0); // empty: a backward's last recompute may still be there
        run_block(m, i, tp, ckpt ? recomp : &tp->keep, &io);
        if (T->fwd_s) {
            T->be->sync(T->be);
            T->fwd_s[i] += clock_s() - t0;
        }
        if (ckpt) arena_reset(recomp, 0);
        if (T->be == backend_measure()) m->blocks[i].info.keep_bytes = arena_mark(&tp->keep) - k0;
        if (b->info.kind == UNET_BLOCK_TIME) {
            o->temb = io.out;
            continue;
        }
        if (b->info.pushes_skip) {
            SDC_CHECK(o->n_skips < UNET_MAX_SKIPS);
            o->skips[o->n_skips++] = io.out;
        }
        o->x = io.out;
    }
    tp->forward_done = 1;
}

// Gradient checkpointing: block i's intermediates again, into the recompute
// arena (its output too: the kept one stays as it was).
static void recompute(Unet *m, int i, Tape *tp) {
    UnetTrain *T = m->train;
    Arena *recomp = &T->ar[A_RECOMP];
    const BlockSave *sv = &tp->sv[i];
    arena_reset(recomp, 0);
    UnetIO io = {.x = sv->x, .skip = sv->skip, .temb = tp->out.temb, .ctx = tp->in.ctx,
                 .out = arena_tensor(recomp, sv->out.dtype, sv->out.ndim, sv->out.shape)};
    run_block(m, i, tp, recomp, &io);
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

// This rank's blocks are the time embedding alone (a cut right after it).
static int stage_is_time_only(const Unet *m) {
    const UnetTrain *T = m->train;
    return T->end == T->first + 1 && m->blocks[T->first].info.kind == UNET_BLOCK_TIME;
}

static void grad_alloc(Unet *m, Tape *tp) {
    UnetTrain *T = m->train;
    const DType dt = m->be->act_dtype;
    for (int a = A_DSLOT0; a <= A_GCUT; a++) arena_reset(&T->ar[a], 0);
    UnetCut *g = &T->gin;
    memset(g, 0, sizeof *g);
    // (a stage of the time block alone hands conv_in the latent, which has no
    // gradient: it gets back the time embedding's and the context's only)
    if (!stage_is_time_only(m)) g->x = arena_tensor(&T->ar[A_DSLOT1], dt, tp->out.x.ndim, tp->out.x.shape);
    T->ds.n = 0;
    for (int k = 0; k < tp->out.n_skips; k++) {
        Arena *a = &T->ar[A_DSKIPS];
        T->ds.mark[k] = arena_mark(a);
        g->skips[k] = arena_tensor(a, dt, 4, tp->out.skips[k].shape);
        T->ds.t[k] = g->skips[k];
    }
    g->n_skips = T->ds.n = tp->out.n_skips;
    if (T->want_dtemb && tp->out.temb.ndim) {
        g->temb = arena_tensor(&T->ar[A_GCUT], dt, 2, tp->out.temb.shape);
        T->be->zero(T->be, g->temb.data, tensor_bytes(&g->temb));
    }
    if (T->o.want_dctx) {
        g->ctx = arena_tensor(&T->ar[A_GCUT], dt, 3, tp->out.ctx.shape);
        T->be->zero(T->be, g->ctx.data, tensor_bytes(&g->ctx));
    }
    if (T->o.want_dtext && T->first == 0) { // the time block is this rank's
        g->text = ARENA_DT(&T->ar[A_GCUT], dt, tp->in.x.shape[0], unet_text_dim(m));
        T->be->zero(T->be, g->text.data, tensor_bytes(&g->text));
    }
    T->dcur = g->x;
    T->slot = 0;
}

static void stage_backward(Unet *m, Tape *tp, UnetCut *gout) {
    UnetTrain *T = m->train;
    const Backend *be = T->be;
    const DType dt = m->be->act_dtype;
    Arena *recomp = &T->ar[A_RECOMP], *gwork = &T->ar[A_GWORK], *dskips = &T->ar[A_DSKIPS];
    DskipStack *ds = &T->ds;
    const int stop = T->first > T->first_trainable ? T->first : T->first_trainable;
    for (int i = T->end - 1; i >= stop; i--) {
        const UnetBlock *b = &m->blocks[i];
        BlockSave *sv = &tp->sv[i];
        const int time = b->info.kind == UNET_BLOCK_TIME;
        if (b->info.pushes_skip) { // the skip's gradient joins the output's
            SDC_CHECK(ds->n > 0);
            Tensor *dsk = &ds->t[--ds->n];
            SDC_CHECK(tensor_same_shape(dsk, &T->dcur));
            be->add(be, &T->dcur, &T->dcur, dsk);
            arena_reset(dskips, ds->mark[ds->n]);
        }
        if (time && !T->want_dtemb) continue;
        const size_t g0 = gwork->peak;
        if (be == backend_measure()) gwork->peak = gwork->used;
        const double t0 = T->bwd_s ? clock_s() : 0;
        if (T->o.checkpointing && !time) recompute(m, i, tp);
        arena_reset(&T->ar[A_SINK], 0);
        Pass p = {.be = be, .act = dt, .work = gwork, .params = &m->params, .grads = lora_on(T) ? NULL : &T->grads,
                  .sink = T->sink ? &T->ar[A_SINK] : NULL, .lora_p = &T->lora_p, .lora_g = &T->lora_g,
                  .lora_scale = T->lora_scale};
        UnetGradIO g = {.dy = time ? T->gin.temb : T->dcur, .temb = tp->out.temb, .ctx = tp->in.ctx};
        if (!time && T->want_dtemb) g.dtemb = T->gin.temb;
        if (time) g.dtext = T->gin.text;
        if (T->o.want_dctx) g.dctx = T->gin.ctx;
        // dx when a block before needs it (a transformer's and the out block's group
        // norm backward yields it anyway)
        const UnetBlockKind kind = b->info.kind;
        if (!time && kind != UNET_BLOCK_CONV_IN &&
            (i > T->first_trainable || kind == UNET_BLOCK_TRANSFORMER || kind == UNET_BLOCK_OUT)) {
            Arena *a = &T->ar[A_DSLOT0 + T->slot];
            arena_reset(a, 0);
            g.dx = arena_tensor(a, dt, sv->x.ndim, sv->x.shape);
        }
        if (b->info.pops_skip) {
            SDC_CHECK(ds->n < UNET_MAX_SKIPS);
            ds->mark[ds->n] = arena_mark(dskips);
            g.dskip = arena_tensor(dskips, dt, 4, sv->skip.shape);
            ds->t[ds->n++] = g.dskip;
        }
        UNET_KINDS[b->info.kind].backward(&p, m, b, sv, &g);
        if (T->bwd_s) {
            be->sync(be);
            T->bwd_s[i] += clock_s() - t0;
        }
        if (T->grad_hook && be != backend_measure()) { // this block's gradients and every later one's are final
            const int has = lora_on(T) ? b->lora != NULL : b->info.param_count > 0;
            if (has) {
                be->sync(be);
                T->grad_hook(T->grad_user, (lora_on(T) ? b->lora_lo : b->param_lo) / sizeof(float));
            }
        }
        if (be == backend_measure()) {
            m->blocks[i].info.bwd_bytes = gwork->peak + (T->o.checkpointing ? recomp->peak : 0);
            if (g0 > gwork->peak) gwork->peak = g0;
        }
        if (!time) {
            T->dcur = g.dx;
            T->slot ^= 1;
        }
    }
    arena_reset(recomp, 0); // the last recomputed block's intermediates are dead
    memset(gout, 0, sizeof *gout);
    if (T->first > 0 && stop == T->first) gout->x = T->dcur;
    for (int k = 0; k < ds->n && stop == T->first; k++) gout->skips[k] = ds->t[k];
    gout->n_skips = stop == T->first ? ds->n : 0;
    if (T->first > 0 && T->want_dtemb) gout->temb = T->gin.temb;
    if (T->o.want_dctx) gout->ctx = T->gin.ctx;
    if (T->first == 0) gout->text = T->gin.text;
    tp->n = 0;
    tp->forward_done = 0;
}

// ---------------------------------------------------------------------------
// LoRA
// ---------------------------------------------------------------------------

// The adapters of every attention projection of the transformers in range,
// in block order; a measuring arena only counts. With rng, down ~ N(0, 1/r)
// drawn for every transformer from block 0 on (the blocks of earlier stages
// too, discarded), so every layout starts from the same adapters.
static int lora_build(Unet *m, Arena *a, Rng *rng, SdcError *err) {
    static const char *const NAMES[UNET_LORA_PER_LAYER] = {"attn1.to_q", "attn1.to_k", "attn1.to_v",
                                                           "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                                                           "attn2.to_v", "attn2.to_out.0"};
    UnetTrain *T = m->train;
    const int64_t r = T->o.lora_rank;
    int k = 0;
    for (int bi = 0; bi < m->n_blocks; bi++) {
        UnetBlock *b = &m->blocks[bi];
        if (b->info.kind != UNET_BLOCK_TRANSFORMER) continue;
        const int mine = bi >= T->first && bi < T->end;
        if (mine) b->lora = &T->lora[k], b->lora_lo = arena_mark(a);
        const int64_t D = b->info.inner, Dc = m->cfg.cross_dim;
        const int64_t in_dim[UNET_LORA_PER_LAYER] = {D, D, D, D, D, Dc, Dc, D}; // out is D for all
        for (int l = 0; l < b->info.n_layers; l++)
            for (int j = 0; j < UNET_LORA_PER_LAYER; j++) {
                const int64_t in = in_dim[j];
                float *host = NULL;
                if (rng) { // down ~ N(0, 1/r): r * in draws, discarded for another stage's blocks
                    host = malloc((size_t)(r * in) * sizeof *host);
                    if (!host) return sdc_err(err, SDC_ERR_OOM, "unet LoRA: out of memory");
                    rng_normal(rng, host, (size_t)(r * in));
                    for (int64_t i = 0; i < r * in; i++) host[i] *= 1.0f / (float)r;
                }
                if (!mine) {
                    free(host);
                    continue;
                }
                LoraPair *lp = &T->lora[k++];
                lp->down = ARENA_F32(a, r, in); // (r, in)
                lp->up = ARENA_F32(a, D, r);    // (out, r), zero
                if (a->measure) continue;
                backend_upload_f32(T->be, &lp->down, host, (size_t)(r * in));
                free(host);
                ParamTable *tb = &T->lora_table;
                if (tb->n + 2 > tb->cap) {
                    int cap = tb->cap ? 2 * tb->cap : 256;
                    ParamEntry *e = realloc(tb->e, (size_t)cap * sizeof *e);
                    if (!e) return sdc_err(err, SDC_ERR_OOM, "unet LoRA: out of memory");
                    tb->e = e;
                    tb->cap = cap;
                }
                const char *fmt[2] = {"%.60s.transformer_blocks.%d.%s.lora.down.weight",
                                      "%.60s.transformer_blocks.%d.%s.lora.up.weight"};
                for (int u = 0; u < 2; u++) {
                    snprintf(tb->e[tb->n].name, sizeof tb->e[tb->n].name, fmt[u], b->info.name, l, NAMES[j]);
                    tb->e[tb->n++].t = u ? lp->up : lp->down;
                }
            }
    }
    T->n_pairs = k;
    return 0;
}

// ---------------------------------------------------------------------------
// reserve
// ---------------------------------------------------------------------------

void unet_train_free(Unet *m) {
    UnetTrain *T = m->train;
    if (!T) return;
    for (int i = 0; i < m->n_blocks; i++) m->blocks[i].lora = NULL;
    for (int a = 0; a < A_SHARED; a++) arena_free(&T->ar[a]);
    arena_free(&T->tape_mem);
    arena_free(&T->grads);
    arena_free(&T->lora_p);
    arena_free(&T->lora_g);
    arena_free(&T->merge_backup);
    for (int t = 0; T->tapes && t < T->n_tapes; t++) unet_saves_free(m, T->tapes[t].sv);
    free(T->tapes);
    free(T->lora);
    free(T->fwd_s), free(T->bwd_s);
    param_table_free(&T->lora_table);
    free(T);
    m->train = NULL;
}

// One forward and backward of tape 0 against no-op ops and measuring arenas.
static void plan_run(Unet *m) {
    UnetTrain *T = m->train;
    Tape *tp = &T->tapes[0];
    float *ts = NULL; // never read by the measure backend
    cut_alloc(m, tp, T->batch);
    stage_forward(m, tp, ts);
    grad_alloc(m, tp);
    UnetCut gout;
    stage_backward(m, tp, &gout);
}

int unet_train_reserve(Unet *m, const UnetTrainOpts *o, int batch, int h, int w, int ctx_len,
                       SdcError *err) {
    if (!m->be->conv2d_backward || !m->be->zero || m->be->act_dtype != DT_F32)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "unet: training needs a backend with backward ops in fp32 (%s has "
                       "none)\n---> use --device cpu for training", m->be->name);
    if (o->want_dtext && !m->cfg.add_time_dim)
        return sdc_err(err, SDC_ERR_ARG, "unet: want_dtext needs a UNet with SDXL's added embedding");
    if (!o->lora_rank && !m->table.n && !o->time_blocks)
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
    T->n_tapes = o->tapes > 0 ? o->tapes : 1;
    T->first = m->first;
    T->end = m->end;
    T->batch = batch, T->h = h, T->w = w, T->ctx_len = ctx_len;
    // d text_embeds goes through the time embedding, whose gradient every ResNet adds to
    T->want_dtemb = !o->lora_rank || o->want_dtext;
    T->first_trainable = 0;
    if (o->lora_rank && !o->want_dtext)
        while (T->first_trainable < m->n_blocks && m->blocks[T->first_trainable].info.kind != UNET_BLOCK_TRANSFORMER)
            T->first_trainable++;
    T->bwd_tape = -1;
    T->be = m->be;
    int rc = 0;
    T->tapes = calloc((size_t)T->n_tapes, sizeof *T->tapes);
    if (!T->tapes) goto oom;
    for (int t = 0; t < T->n_tapes; t++)
        if (unet_saves_alloc(m, &T->tapes[t].sv)) goto oom;

    if (o->lora_rank) {
        int n_pairs = 0;
        for (int i = T->first; i < T->end; i++)
            if (m->blocks[i].info.kind == UNET_BLOCK_TRANSFORMER) n_pairs += m->blocks[i].info.n_layers;
        T->lora = calloc((size_t)n_pairs * UNET_LORA_PER_LAYER + 1, sizeof *T->lora);
        if (!T->lora) goto oom;
        T->lora_scale = o->lora_alpha / (float)o->lora_rank;
        Arena meas;
        arena_init_measure(&meas);
        if ((rc = lora_build(m, &meas, NULL, err))) goto fail;
        if ((rc = arena_init(&T->lora_p, m->be, meas.peak, err)) ||
            (rc = arena_init(&T->lora_g, m->be, meas.peak, err)))
            goto fail;
        m->be->zero(m->be, T->lora_p.base, T->lora_p.cap);
        m->be->zero(m->be, T->lora_g.base, T->lora_g.cap);
        Rng rng;
        rng_seed(&rng, o->lora_seed);
        if ((rc = lora_build(m, &T->lora_p, &rng, err))) goto fail;
    } else if (!m->table.n) { // timing a model loaded for inference
        T->sink = 1;
    } else {
        if ((rc = arena_init(&T->grads, m->be, m->params.cap, err))) goto fail;
        m->be->zero(m->be, T->grads.base, T->grads.cap);
    }
    if (o->time_blocks && (!(T->fwd_s = calloc((size_t)m->n_blocks, sizeof(double))) ||
                           !(T->bwd_s = calloc((size_t)m->n_blocks, sizeof(double)))))
        goto oom;

    // The measuring pass: forward and backward against no-op ops.
    Arena real_lora_g = T->lora_g, real_grads = T->grads;
    T->be = backend_measure();
    double *fwd_s = T->fwd_s, *bwd_s = T->bwd_s;
    T->fwd_s = T->bwd_s = NULL;
    for (int a = 0; a < A_SHARED; a++) arena_init_measure(&T->ar[a]);
    arena_init_measure(&T->tapes[0].keep);
    arena_init_measure(&T->lora_g);
    T->grads.measure = 1;
    plan_run(m);
    T->lora_g = real_lora_g;
    T->grads = real_grads;
    T->be = m->be;
    T->fwd_s = fwd_s, T->bwd_s = bwd_s;
    size_t shared[A_SHARED];
    for (int a = 0; a < A_SHARED; a++) shared[a] = T->ar[a].peak;
    T->tape_bytes = (T->tapes[0].keep.peak + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    for (int a = 0; a < A_SHARED; a++)
        if ((rc = arena_init(&T->ar[a], m->be, shared[a], err))) goto fail;
    if ((rc = arena_init(&T->tape_mem, m->be, T->tape_bytes * (size_t)T->n_tapes, err))) goto fail;
    for (int t = 0; t < T->n_tapes; t++)
        T->tapes[t].keep = (Arena){.be = m->be, .base = T->tape_mem.base + T->tape_bytes * (size_t)t,
                                   .cap = T->tape_bytes};
    return 0;
oom:
    rc = sdc_err(err, SDC_ERR_OOM, "unet: out of memory planning training");
fail:
    sdc_err_wrap(err, "unet training memory for batch %d at %dx%d", batch, h, w);
    unet_train_free(m);
    return rc;
}

// ---------------------------------------------------------------------------
// entry points
// ---------------------------------------------------------------------------

static int check_tape(const Unet *m, int tape, SdcError *err) {
    const UnetTrain *T = m->train;
    if (!T) return sdc_err(err, SDC_ERR_ARG, "unet: unet_train_reserve first");
    if (tape < 0 || tape >= T->n_tapes)
        return sdc_err(err, SDC_ERR_ARG, "unet: tape %d of %d reserved", tape, T->n_tapes);
    return 0;
}

int unet_train_cut_in(Unet *m, int tape, int n, UnetCut *in, SdcError *err) {
    SDC_TRY(check_tape(m, tape, err));
    UnetTrain *T = m->train;
    if (n < 1 || n > T->batch)
        return sdc_err(err, SDC_ERR_ARG, "unet training: %d rows; the reservation holds 1 to %d", n, T->batch);
    if (T->tapes[tape].n)
        return sdc_err(err, SDC_ERR_ARG, "unet training: tape %d still holds a forward awaiting its backward", tape);
    cut_alloc(m, &T->tapes[tape], n);
    *in = T->tapes[tape].in;
    return 0;
}

int unet_train_stage_forward(Unet *m, int tape, const float *timesteps, UnetCut *out, SdcError *err) {
    SDC_TRY(check_tape(m, tape, err));
    UnetTrain *T = m->train;
    Tape *tp = &T->tapes[tape];
    if (!tp->n || tp->forward_done)
        return sdc_err(err, SDC_ERR_ARG, "unet training: tape %d: unet_train_cut_in first", tape);
    if (T->first == 0 && !timesteps) return sdc_err(err, SDC_ERR_ARG, "unet training: block 0 needs the timesteps");
    if (T->first == 0 && m->cfg.add_time_dim &&
        (m->add_text.ndim != 2 || m->add_text.shape[0] != tp->n || !m->time_ids))
        return sdc_err(err, SDC_ERR_ARG, "unet training: an SDXL UNet needs the added conditioning of the tape's %d "
                       "rows\n---> unet_set_added_cond before the stage forward of block 0", tp->n);
    stage_forward(m, tp, timesteps);
    *out = tp->out;
    return backend_status(m->be, err);
}

int unet_train_tape_out(Unet *m, int tape, UnetCut *out, SdcError *err) {
    SDC_TRY(check_tape(m, tape, err));
    const Tape *tp = &m->train->tapes[tape];
    if (!tp->forward_done) return sdc_err(err, SDC_ERR_ARG, "unet training: tape %d holds no forward", tape);
    *out = tp->out;
    return 0;
}

int unet_train_grad_in(Unet *m, int tape, UnetCut *gin, SdcError *err) {
    SDC_TRY(check_tape(m, tape, err));
    UnetTrain *T = m->train;
    Tape *tp = &T->tapes[tape];
    if (!tp->forward_done)
        return sdc_err(err, SDC_ERR_ARG, "unet training: tape %d has no forward to differentiate", tape);
    grad_alloc(m, tp);
    T->bwd_tape = tape;
    *gin = T->gin;
    return 0;
}

int unet_train_stage_backward(Unet *m, int tape, UnetCut *gout, SdcError *err) {
    SDC_TRY(check_tape(m, tape, err));
    UnetTrain *T = m->train;
    if (T->bwd_tape != tape)
        return sdc_err(err, SDC_ERR_ARG, "unet training: tape %d: unet_train_grad_in first", tape);
    stage_backward(m, &T->tapes[tape], gout);
    T->bwd_tape = -1;
    return backend_status(m->be, err);
}

void unet_train_range(const Unet *m, int *first, int *end, int *grad_before) {
    const UnetTrain *T = m->train;
    *first = T ? T->first : m->first;
    *end = T ? T->end : m->end;
    // conv_in's input is the noisy latent: a stage starting there sends back no dx
    const int f = *first;
    *grad_before = (T ? T->first_trainable < f : f > 0) && f < m->n_blocks &&
                   m->blocks[f].info.kind != UNET_BLOCK_CONV_IN;
}

int unet_train_forward(Unet *m, Tensor *out, const Tensor *x, const float *timesteps,
                       const Tensor *ctx, SdcError *err) {
    UnetTrain *T = m->train;
    if (!T) return sdc_err(err, SDC_ERR_ARG, "unet: unet_train_reserve first");
    if (T->first != 0 || T->end != m->n_blocks)
        return sdc_err(err, SDC_ERR_ARG, "unet: unet_train_forward runs every block; this rank holds [%d, %d)",
                       T->first, T->end);
    const UnetConfig *c = &m->cfg;
    const DType dt = m->be->act_dtype;
    if (x->ndim != 4 || ctx->ndim != 3 || out->ndim != 4 || x->dtype != dt || ctx->dtype != dt ||
        out->dtype != dt || x->shape[0] < 1 || x->shape[0] > T->batch || x->shape[1] != c->in_channels ||
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
    Tape *tp = &T->tapes[0];
    tp->n = 0; // a forward without its backward is dropped
    UnetCut in, o;
    SDC_TRY(unet_train_cut_in(m, 0, (int)x->shape[0], &in, err));
    m->be->copy(m->be, &in.x, x);
    m->be->copy(m->be, &in.ctx, ctx);
    SDC_TRY(unet_train_stage_forward(m, 0, timesteps, &o, err));
    m->be->copy(m->be, out, &o.x);
    return backend_status(m->be, err);
}

int unet_train_backward(Unet *m, const Tensor *dout, Tensor *dctx, SdcError *err) {
    return unet_train_backward_xl(m, dout, dctx, NULL, err);
}

int unet_train_backward_xl(Unet *m, const Tensor *dout, Tensor *dctx, Tensor *dtext, SdcError *err) {
    UnetTrain *T = m->train;
    if (!T || !T->tapes[0].forward_done)
        return sdc_err(err, SDC_ERR_ARG, "unet: unet_train_backward needs a unet_train_forward first");
    const Tensor *y = &T->tapes[0].out.x;
    if (!tensor_same_shape(dout, y) || dout->dtype != m->be->act_dtype)
        return sdc_err(err, SDC_ERR_ARG, "unet: dout must have the output's shape");
    if (dctx && (!T->o.want_dctx || !tensor_same_shape(dctx, &T->tapes[0].in.ctx)))
        return sdc_err(err, SDC_ERR_ARG, "unet: dctx needs want_dctx and the context's shape");
    if (dtext && (!T->o.want_dtext || dtext->ndim != 2 || dtext->shape[0] != y->shape[0] ||
                  dtext->shape[1] != unet_text_dim(m)))
        return sdc_err(err, SDC_ERR_ARG, "unet: dtext needs want_dtext and the pooled embedding's shape");
    UnetCut gin, gout;
    SDC_TRY(unet_train_grad_in(m, 0, &gin, err));
    m->be->copy(m->be, &gin.x, dout);
    SDC_TRY(unet_train_stage_backward(m, 0, &gout, err));
    if (dctx) m->be->copy(m->be, dctx, &gout.ctx);
    if (dtext) m->be->copy(m->be, dtext, &gout.text);
    return backend_status(m->be, err);
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

size_t unet_train_tape_bytes(const Unet *m) { return m->train ? m->train->tape_bytes : 0; }

void unet_train_shrink(Unet *m) {
    UnetTrain *T = m->train;
    if (!T) return;
    for (int a = 0; a < A_SHARED; a++) arena_free(&T->ar[a]);
    arena_free(&T->tape_mem);
    for (int t = 0; t < T->n_tapes; t++) memset(&T->tapes[t].keep, 0, sizeof T->tapes[t].keep), T->tapes[t].n = 0;
    arena_free(&T->grads);
    arena_free(&T->lora_g);
    T->tape_bytes = 0;
}

void unet_train_set_grad_hook(Unet *m, void (*fn)(void *user, size_t lo), void *user) {
    if (!m->train) return;
    m->train->grad_hook = fn;
    m->train->grad_user = user;
}

const double *unet_train_block_times(const Unet *m, int backward) {
    const UnetTrain *T = m->train;
    return !T ? NULL : backward ? T->bwd_s : T->fwd_s;
}

size_t unet_train_bytes(const Unet *m) {
    const UnetTrain *T = m->train;
    if (!T) return 0;
    size_t s = T->tape_mem.cap + T->grads.cap + T->lora_p.cap + T->lora_g.cap;
    for (int a = 0; a < A_SHARED; a++) s += T->ar[a].cap;
    return s;
}

// ---------------------------------------------------------------------------
// LoRA merged into the base weights (inference with the trained adapter)
// ---------------------------------------------------------------------------

// The base weight each adapter of block b's layer l adds to.
static void lora_targets(UnetBlock *b, int l, Tensor *ws[UNET_LORA_PER_LAYER]) {
    TLayerParams *p = &b->tf.layers[l];
    Tensor *t[UNET_LORA_PER_LAYER] = {&p->attn1.q, &p->attn1.k, &p->attn1.v, &p->attn1.out_w,
                                      &p->attn2.q, &p->attn2.k, &p->attn2.v, &p->attn2.out_w};
    memcpy(ws, t, sizeof t);
}

int unet_lora_merge(Unet *m, int on, SdcError *err) {
    UnetTrain *T = m->train;
    if (!T || !T->o.lora_rank || on == T->merged) return 0;
    if (on && !m->table.n)
        return sdc_err(err, SDC_ERR_ARG, "unet: merging LoRA needs the base loaded trainable (own copies)");
    const Backend *be = m->be;
    if (!be->matmul) return sdc_err(err, SDC_ERR_UNSUPPORTED, "unet: the %s backend cannot merge LoRA", be->name);
    if (!T->merge_backup.base) { // room for every base weight an adapter changes
        size_t need = 0;
        for (int bi = T->first; bi < T->end; bi++) {
            UnetBlock *b = &m->blocks[bi];
            for (int l = 0; b->lora && l < b->info.n_layers; l++) {
                Tensor *ws[UNET_LORA_PER_LAYER];
                lora_targets(b, l, ws);
                for (int j = 0; j < UNET_LORA_PER_LAYER; j++)
                    need += (tensor_bytes(ws[j]) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
            }
        }
        SDC_TRY(arena_init(&T->merge_backup, be, need, err));
    }
    arena_reset(&T->merge_backup, 0);
    for (int bi = T->first; bi < T->end; bi++) {
        UnetBlock *b = &m->blocks[bi];
        for (int l = 0; b->lora && l < b->info.n_layers; l++) {
            Tensor *ws[UNET_LORA_PER_LAYER];
            lora_targets(b, l, ws);
            for (int j = 0; j < UNET_LORA_PER_LAYER; j++) {
                Tensor bk = arena_tensor(&T->merge_backup, ws[j]->dtype, ws[j]->ndim, ws[j]->shape);
                if (!on) { // restore the exact base weights
                    be->copy(be, ws[j], &bk);
                    continue;
                }
                be->copy(be, &bk, ws[j]);
                const LoraPair *lp = &b->lora[l * UNET_LORA_PER_LAYER + j];
                be->matmul(be, ws[j], &lp->up, &lp->down, T->lora_scale, 1.0f); // W += scale * up down
            }
        }
    }
    T->merged = on;
    return backend_status(be, err);
}
