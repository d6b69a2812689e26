// vae.c: the SD autoencoder (see vae.h). Reads top to bottom: parameters,
// what a block reads and writes, the block kinds (one record each: its
// parameters, its one forward, its backward), loading, the encode and decode
// runs (walks of the block lists, vae_layout.h), tiling, planning, the
// public entry points and training (the walk that keeps activations, the
// backward walk; sdc train vae).
//
// Activation layout: a run keeps its current activation in one "main" buffer
// at the bottom of its arena frame, sized for the largest block output that
// lives there (every block's but the last one's). Each block's forward reads
// its input from main and writes its result back into main: in place, or over
// the start of main when the shape changes, through a temporary where it must
// (a conv cannot write over its own input). Temporaries sit above main and are
// released before the forward returns, so the peak is main plus the
// temporaries of the hungriest block, never a chain of block outputs. The
// first block reads the caller's input, the last writes the caller's output.
// (The UNet's records write into one of two caller-allocated slots instead;
// for the VAE that pair would cost a second full-resolution buffer: 896
// instead of 640 MiB for a 512 px SD decode. docs/decisions.md.)
//
// Downsampling: diffusers' Downsample2D in the VAE pads (left 0, right 1,
// top 0, bottom 1) and then runs a 3x3 stride-2 conv without padding, so
// output row i reads input rows 2i..2i+2. The backend conv2d pads
// symmetrically only. A 4x4 kernel whose first row and column are zero and
// whose lower-right 3x3 is the original kernel, run with stride 2 and pad 1,
// reads rows 2i-1..2i+2 with weight 0 on row 2i-1: exactly the same sum, with
// row H (the bottom pad) zero in both. The 4x4 weight is built once at load.
#include "models/vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "models/params.h"
#include "models/pass.h"
#include "models/vae_layout.h"

#define VAE_LOGVAR_MIN (-30.0f)
#define VAE_LOGVAR_MAX 20.0f

// ---- parameters ------------------------------------------------------------

typedef struct VaeConv {
    Tensor w; // (OC, C, KH, KW)
    Tensor b; // (OC)
} VaeConv;

typedef struct VaeResnet {
    Tensor n1_w, n1_b;   // (cin)
    VaeConv c1;          // (cout, cin, 3, 3)
    Tensor n2_w, n2_b;   // (cout)
    VaeConv c2;          // (cout, cout, 3, 3)
    VaeConv sc;          // (cout, cin, 1, 1) when cin != cout
} VaeResnet;

// diffusers Attention with one head over C channels, residual, rescale 1.
typedef struct VaeAttn {
    Tensor gn_w, gn_b;                 // (C)
    Tensor q_w, k_w, v_w, o_w;         // (C, C)
    Tensor q_b, k_b, v_b, o_b;         // (C)
} VaeAttn;

// One block of a list: its place (vae_layout.h) and its kind's parameters.
typedef struct VaeBlock {
    VaeBlockInfo info;
    VaeConv conv;           // CONV_IN, UPSAMPLE, POST_QUANT; DOWNSAMPLE: (C, C, 4, 4), see the top;
                            // OUT: conv_out; QUANT: rows 0..L-1 of quant_conv, the mean: (L, 2L, 1, 1)
    VaeConv conv2;          // QUANT: rows L..2L-1, the logvar
    Tensor w3;              // DOWNSAMPLE loaded trainable: the (C, C, 3, 3) parameter conv.w is built from
    Tensor norm_w, norm_b;  // OUT: conv_norm_out (Cin)
    VaeResnet res;          // RESNET
    VaeAttn attn;           // ATTENTION
} VaeBlock;

struct Vae {
    VaeConfig cfg;
    const Backend *be;
    Arena params;
    VaeBlock *blocks[VAE_PARTS]; // (n_blocks[part]) the encoder's and the decoder's lists, in execution order
    int n_blocks[VAE_PARTS];
    Arena act;          // activations for encode and decode, planned by vae_reserve
    float *host_lv;     // (N, L, h, w) host scratch for the logvar clamp
    size_t host_lv_n;
    // training (vae_load_opts with trainable, or vae_create): F32 copies named
    // in table; tr holds the kept activations, gradients and scratch
    int trainable;
    ParamTable table;
    struct VaeTrain *tr;
};

static int vae_check_config(const VaeConfig *c, SdcError *err) {
    int ok = c->n_levels >= 1 && c->n_levels <= SDC_MAX_LEVELS && c->layers_per_block >= 1 &&
             c->layers_per_block <= VAE_MAX_LAYERS && c->norm_groups >= 1 &&
             c->in_channels >= 1 && c->out_channels >= 1 && c->latent_channels >= 1;
    for (int i = 0; ok && i < c->n_levels; i++)
        ok = c->block_out[i] >= 1 && c->block_out[i] % c->norm_groups == 0;
    if (!ok)
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "vae config: %d levels (at most %d), layers_per_block %d (at most %d), "
                       "%d groups, channels %d/%d/%d: not an AutoencoderKL sdc handles\n"
                       "---> check vae/config.json",
                       c->n_levels, SDC_MAX_LEVELS, c->layers_per_block, VAE_MAX_LAYERS,
                       c->norm_groups, c->in_channels, c->latent_channels, c->out_channels);
    return 0;
}

// The block lists of m->cfg (checked) with their infos, parameters empty.
static int vae_blocks_make(Vae *m, SdcError *err) {
    for (int p = 0; p < VAE_PARTS; p++) {
        VaeBlockInfo info[VAE_MAX_BLOCKS];
        int n = 0;
        SDC_TRY(vae_layout(&m->cfg, (VaePart)p, info, &n, err));
        m->blocks[p] = calloc((size_t)n, sizeof *m->blocks[p]);
        if (!m->blocks[p]) return sdc_err(err, SDC_ERR_OOM, "vae: out of host memory");
        m->n_blocks[p] = n;
        for (int i = 0; i < n; i++) m->blocks[p][i].info = info[i];
    }
    return 0;
}

// ---- what a block reads and writes ---------------------------------------------
//
// A block's forward runs in a Pass (pass.h: the context the UNet's and CLIP's
// blocks run in). Inference runs with keep NULL: every temporary and save
// lives in p->work, the run's arena above main, and is released before the
// forward returns; training keeps the saves (VaeSave) in p->keep. p->be is the model's backend or
// backend_measure() while planning, p->act the model backend's activation
// dtype in both, so a measuring run sizes exactly what the real one takes.

// y is either x's memory (both views of the run's main buffer from its start:
// the block writes its output in place) or apart from it (x the caller's
// input, or y the caller's output). A forward reads all of x it needs before
// it writes y, or goes through a temporary.
typedef struct VaeIO {
    Tensor x;  // (N, Cin, h, w) the block's input
    Tensor y;  // (N, Cout, h', w') its output
    Tensor y2; // QUANT: the logvar (N, L, h, w); y is the mean
} VaeIO;

// d loss / d a block's output and input, for a kind's backward (training:
// see the training section; the walk gives every block a y apart from x).
typedef struct VaeGradIO {
    Tensor dy;  // (N, Cout, h', w'); QUANT: d loss / d the mean
    Tensor dy2; // QUANT: d loss / d the logvar (N, L, h, w), the clamp's gradient already applied
    Tensor dx;  // (N, Cin, h, w), overwritten; ndim 0: not wanted
} VaeGradIO;

// What a block's forward leaves for its backward (pass.h's SAVE: kept when
// training, temporaries when not). The block's input is its VaeIO's x.
typedef struct VaeSave {
    Tensor h1, t2, h2;    // RESNET: SiLU(norm1(x)) (N, cin, h, w); conv1's output and SiLU(norm2(it)) (N, cout, h, w)
    Tensor s, q, k, v, o; // ATTENTION: normed tokens, q, k, v, the attention's output, each (N, h*w, C)
    Tensor u;             // UPSAMPLE: the upsampled input (N, C, 2h, 2w); OUT: SiLU(conv_norm_out(x)) (N, C, h, w)
} VaeSave;

// A (N, C, h, w) view of data in the pass's activation dtype.
static Tensor act_view(const Pass *p, void *data, int64_t n, int64_t c, int64_t h, int64_t w) {
    return tensor_make(p->act, p->be->device, data, 4, (int64_t[]){n, c, h, w});
}

static void *work_alloc(Pass *p, int64_t elems) {
    return arena_alloc(p->work, (size_t)elems * dtype_size(p->act));
}

// y = conv(x). When y is x's memory the smaller of the two goes through a
// temporary: the input is copied aside (a conv that widens), or the output
// is computed aside and copied back (a conv that shrinks).
static void io_conv(Pass *p, VaeIO *io, const VaeConv *c, int stride, int pad) {
    const Backend *be = p->be;
    if (io->x.data != io->y.data) {
        be->conv2d(be, &io->y, &io->x, &c->w, &c->b, stride, pad);
        return;
    }
    size_t mark = arena_mark(p->work);
    if (tensor_numel(&io->x) <= tensor_numel(&io->y)) {
        Tensor t = pass_like(p, &io->x); // (N, Cin, h, w)
        be->copy(be, &t, &io->x);
        be->conv2d(be, &io->y, &t, &c->w, &c->b, stride, pad);
    } else {
        Tensor t = pass_like(p, &io->y); // (N, Cout, h', w')
        be->conv2d(be, &t, &io->x, &c->w, &c->b, stride, pad);
        be->copy(be, &io->y, &t);
    }
    arena_reset(p->work, mark);
}

// ---- block kinds -------------------------------------------------------------
//
// One record per kind (VAE_KINDS at the end of the section): its parameters
// (asked from the loader by diffusers name, shapes from the block's info),
// its one forward (x -> y, VaeIO) and its backward (none yet). A forward's
// comment says which temporaries it takes above main; vae_reserve records
// their bytes per block (VaeBlockInfo.scratch_bytes).

// Rows r0..r0+n-1 of a parameter along dim 0, as a view (data may be NULL
// when only planning).
static Tensor tensor_rows(Tensor t, int64_t r0, int64_t n) {
    size_t row = (size_t)(tensor_numel(&t) / t.shape[0]) * dtype_size(t.dtype);
    if (t.data) t.data = (char *)t.data + (size_t)r0 * row;
    t.shape[0] = n;
    return t;
}

// "<prefix>weight" (cout, cin, k, k) and "<prefix>bias" (cout).
static VaeConv get_conv(ParamLoader *pl, const char *prefix, int cout, int cin, int k) {
    VaeConv c;
    c.w = param_get(pl, SHAPE(cout, cin, k, k), "%sweight", prefix);
    c.b = param_get(pl, SHAPE(cout), "%sbias", prefix);
    return c;
}

// conv_in, an upsampler's conv: (cout, cin, 3, 3).
static void load_conv3(ParamLoader *pl, VaeBlock *b) {
    b->conv = get_conv(pl, b->info.pre[0].diff, b->info.out_channels, b->info.in_channels, 3);
}

// post_quant_conv: (L, L, 1, 1).
static void load_conv1(ParamLoader *pl, VaeBlock *b) {
    b->conv = get_conv(pl, b->info.pre[0].diff, b->info.out_channels, b->info.in_channels, 1);
}

// conv_in: encoder, the image into main; decoder, main widened (through a
// copy of its input: (N, L, h, w)). post_quant_conv: the latent into main.
static void conv_in_fwd(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io) {
    (void)m, (void)sv;
    io_conv(p, io, &b->conv, 1, 1);
}

static void post_quant_fwd(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io) {
    (void)m, (void)sv;
    io_conv(p, io, &b->conv, 1, 0);
}

// The (C, C, 3, 3) downsample kernel "<prefix>weight" as a (C, C, 4, 4)
// kernel with a zero first row and column (see the top of the file).
static Tensor get_down_weight(ParamLoader *pl, const char *prefix, int c) {
    const Backend *be = pl->be;
    Tensor none = tensor_make(be->param_dtype, be->device, NULL, 4, (int64_t[]){c, c, 4, 4});
    if (pl->failed) return none;
    char name[128];
    snprintf(name, sizeof name, "%sweight", prefix);
    Tensor src; // (C, C, 3, 3), file dtype, CPU view
    if (model_files_get(pl->mf, pl->comp, name, 4, (int64_t[]){c, c, 3, 3}, &src, pl->err)) {
        pl->failed = 1;
        return none;
    }
    pl->count++;
    pl->numel += (size_t)c * c * 9;
    Tensor dst = arena_tensor(pl->arena, be->param_dtype, 4, (int64_t[]){c, c, 4, 4});
    if (pl->arena->measure) return dst;
    size_t n3 = (size_t)c * c * 9, n4 = (size_t)c * c * 16;
    float *w3 = malloc(n3 * sizeof(float)); // once per level at load
    float *w4 = calloc(n4, sizeof(float));
    if (!w3 || !w4) {
        free(w3);
        free(w4);
        sdc_err(pl->err, SDC_ERR_OOM, "%s: out of host memory building the 4x4 kernel", name);
        pl->failed = 1;
        return none;
    }
    convert_to_f32(w3, src.data, src.dtype, n3);
    for (size_t oi = 0; oi < (size_t)c * c; oi++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++)
                w4[oi * 16 + (ky + 1) * 4 + (kx + 1)] = w3[oi * 9 + ky * 3 + kx];
    backend_upload_f32(be, &dst, w4, n4);
    free(w3);
    free(w4);
    return dst;
}

static void load_downsample(ParamLoader *pl, VaeBlock *b) {
    const int c = b->info.in_channels;
    if (pl->own) { // trainable: the (C, C, 3, 3) parameter, and the 4x4 kernel vae_down_sync builds from it
        b->w3 = param_get(pl, SHAPE(c, c, 3, 3), "%sweight", b->info.pre[0].diff);
        b->conv.w = arena_tensor(pl->arena, pl->be->param_dtype, 4, (int64_t[]){c, c, 4, 4});
    } else {
        b->conv.w = get_down_weight(pl, b->info.pre[0].diff, c);
    }
    b->conv.b = param_get(pl, SHAPE(c), "%sbias", b->info.pre[0].diff);
}

// main (N, C, h, w) -> main (N, C, h/2, w/2). Temporary: the output.
static void downsample_fwd(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io) {
    (void)m, (void)sv;
    io_conv(p, io, &b->conv, 2, 1);
}

// main (N, C, h, w) -> main (N, C, 2h, 2w). Temporary: the upsampled input.
static void upsample_fwd(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io) {
    (void)m;
    const Backend *be = p->be;
    size_t mark = arena_mark(p->work);
    sv->u = SAVE(p, io->x.shape[0], io->x.shape[1], io->y.shape[2], io->y.shape[3]); // (N, C, 2h, 2w)
    be->upsample_nearest2x(be, &sv->u, &io->x);
    be->conv2d(be, &io->y, &sv->u, &b->conv.w, &b->conv.b, 1, 1); // over x, already read
    arena_reset(p->work, mark);
}

static void load_resnet(ParamLoader *pl, VaeBlock *b) {
    VaeResnet *r = &b->res;
    const char *pre = b->info.name;
    const int cin = b->info.in_channels, cout = b->info.out_channels;
    char q[64];
    r->n1_w = param_get(pl, SHAPE(cin), "%s.norm1.weight", pre);
    r->n1_b = param_get(pl, SHAPE(cin), "%s.norm1.bias", pre);
    snprintf(q, sizeof q, "%s.conv1.", pre);
    r->c1 = get_conv(pl, q, cout, cin, 3);
    r->n2_w = param_get(pl, SHAPE(cout), "%s.norm2.weight", pre);
    r->n2_b = param_get(pl, SHAPE(cout), "%s.norm2.bias", pre);
    snprintf(q, sizeof q, "%s.conv2.", pre);
    r->c2 = get_conv(pl, q, cout, cout, 3);
    if (cin != cout) {
        snprintf(q, sizeof q, "%s.conv_shortcut.", pre);
        r->sc = get_conv(pl, q, cout, cin, 1);
    }
}

// ResnetBlock2D without time embedding: main (N, cin, h, w) -> main
// (N, cout, h, w). Temporaries: (N, max(cin, cout), h, w) and (N, cout, h, w).
static void resnet_fwd(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io) {
    const Backend *be = p->be;
    const VaeResnet *r = &b->res;
    const int G = m->cfg.norm_groups;
    const float eps = m->cfg.norm_eps;
    const Tensor *x = &io->x;
    const int64_t N = x->shape[0], h = x->shape[2], w = x->shape[3];
    const int64_t cin = b->info.in_channels, cout = b->info.out_channels, cmax = cin > cout ? cin : cout;
    size_t mark = arena_mark(p->work);
    if (p->keep) { // training: every intermediate kept, y apart from x
        sv->h1 = SAVE(p, N, cin, h, w);
        sv->t2 = SAVE(p, N, cout, h, w);
        sv->h2 = SAVE(p, N, cout, h, w);
    } else { // inference: h1 and h2 share one temporary, conv2 writes over conv1's output
        void *t1 = work_alloc(p, N * cmax * h * w);
        sv->h1 = act_view(p, t1, N, cin, h, w);  // (N, cin, h, w)
        sv->h2 = act_view(p, t1, N, cout, h, w); // (N, cout, h, w), same memory
        sv->t2 = TMP(p, N, cout, h, w);          // (N, cout, h, w)
    }
    be->group_norm(be, &sv->h1, x, &r->n1_w, &r->n1_b, G, eps, 1);
    be->conv2d(be, &sv->t2, &sv->h1, &r->c1.w, &r->c1.b, 1, 1);
    be->group_norm(be, &sv->h2, &sv->t2, &r->n2_w, &r->n2_b, G, eps, 1);
    if (p->keep) {
        be->conv2d(be, &io->y, &sv->h2, &r->c2.w, &r->c2.b, 1, 1);
        if (cin != cout) {
            Tensor sc = TMP(p, N, cout, h, w);
            be->conv2d(be, &sc, x, &r->sc.w, &r->sc.b, 1, 0);
            be->add(be, &io->y, &io->y, &sc);
        } else {
            be->add(be, &io->y, &io->y, x);
        }
        arena_reset(p->work, mark);
        return;
    }
    be->conv2d(be, &sv->t2, &sv->h2, &r->c2.w, &r->c2.b, 1, 1);
    if (cin != cout) {
        be->conv2d(be, &sv->h2, x, &r->sc.w, &r->sc.b, 1, 0);
        be->add(be, &io->y, &sv->h2, &sv->t2); // over x, which is no longer read
    } else {
        be->add(be, &io->y, x, &sv->t2);
    }
    arena_reset(p->work, mark);
}

static void load_attention(ParamLoader *pl, VaeBlock *b) {
    VaeAttn *a = &b->attn;
    const char *pre = b->info.name;
    const int c = b->info.in_channels;
    a->gn_w = param_get(pl, SHAPE(c), "%s.group_norm.weight", pre);
    a->gn_b = param_get(pl, SHAPE(c), "%s.group_norm.bias", pre);
    a->q_w = param_get(pl, SHAPE(c, c), "%s.to_q.weight", pre);
    a->q_b = param_get(pl, SHAPE(c), "%s.to_q.bias", pre);
    a->k_w = param_get(pl, SHAPE(c, c), "%s.to_k.weight", pre);
    a->k_b = param_get(pl, SHAPE(c), "%s.to_k.bias", pre);
    a->v_w = param_get(pl, SHAPE(c, c), "%s.to_v.weight", pre);
    a->v_b = param_get(pl, SHAPE(c), "%s.to_v.bias", pre);
    a->o_w = param_get(pl, SHAPE(c, c), "%s.to_out.0.weight", pre);
    a->o_b = param_get(pl, SHAPE(c), "%s.to_out.0.bias", pre);
}

// Mid-block attention, main (N, C, h, w) updated in place:
// x += to_out(attention(to_q(gn(x)), to_k(gn(x)), to_v(gn(x)))) with one head.
// Temporaries: (N, C, h, w) and four (N, h*w, C).
static void attention_fwd(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io) {
    const Backend *be = p->be;
    const VaeAttn *a = &b->attn;
    const Tensor *x = &io->x; // (N, C, h, w)
    const int64_t N = x->shape[0], C = b->info.in_channels, h = x->shape[2], w = x->shape[3], S = h * w;
    size_t mark = arena_mark(p->work);
    void *tp = work_alloc(p, N * C * S);
    Tensor t = act_view(p, tp, N, C, h, w);                                       // (N, C, h, w)
    Tensor t_seq = tensor_make(p->act, be->device, tp, 3, (int64_t[]){N, S, C}); // (N, S, C), same memory
    sv->s = SAVE(p, N, S, C);                                                     // (N, S, C)
    sv->q = SAVE(p, N, S, C);                                                     // (N, S, C)
    sv->k = SAVE(p, N, S, C);                                                     // (N, S, C)
    sv->v = SAVE(p, N, S, C);                                                     // (N, S, C)
    sv->o = p->keep ? SAVE(p, N, S, C) : t_seq; // the attention's output (N, S, C)

    be->group_norm(be, &t, x, &a->gn_w, &a->gn_b, m->cfg.norm_groups, m->cfg.norm_eps, 0);
    be->nchw_to_nlc(be, &sv->s, &t);
    be->linear(be, &sv->q, &sv->s, &a->q_w, &a->q_b);
    be->linear(be, &sv->k, &sv->s, &a->k_w, &a->k_b);
    be->linear(be, &sv->v, &sv->s, &a->v_w, &a->v_b);
    be->attention(be, &sv->o, &sv->q, &sv->k, &sv->v, 1, 0);
    Tensor proj = p->keep ? TMP(p, N, S, C) : sv->q; // to_out's output (N, S, C); q is dead unless kept
    be->linear(be, &proj, &sv->o, &a->o_w, &a->o_b);
    be->nlc_to_nchw(be, &t, &proj);
    be->add(be, &io->y, x, &t);
    arena_reset(p->work, mark);
}

static void load_out(ParamLoader *pl, VaeBlock *b) {
    const int cin = b->info.in_channels;
    b->norm_w = param_get(pl, SHAPE(cin), "%sweight", b->info.pre[0].diff);
    b->norm_b = param_get(pl, SHAPE(cin), "%sbias", b->info.pre[0].diff);
    b->conv = get_conv(pl, b->info.pre[1].diff, b->info.out_channels, cin, 3);
}

// conv_out(SiLU(conv_norm_out(x))): main (N, C, h, w) -> main (encoder: the
// moments) or the image (decoder). Temporary: (N, C, h, w).
static void out_fwd(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io) {
    const Backend *be = p->be;
    size_t mark = arena_mark(p->work);
    const Tensor *x = &io->x;
    sv->u = SAVE(p, x->shape[0], x->shape[1], x->shape[2], x->shape[3]); // (N, C, h, w)
    be->group_norm(be, &sv->u, x, &b->norm_w, &b->norm_b, m->cfg.norm_groups, m->cfg.norm_eps, 1);
    be->conv2d(be, &io->y, &sv->u, &b->conv.w, &b->conv.b, 1, 1); // x is dead: y may be its memory
    arena_reset(p->work, mark);
}

// quant_conv (2L, 2L, 1, 1) split by output rows into the mean's and the
// logvar's convs.
static void load_quant(ParamLoader *pl, VaeBlock *b) {
    const int L2 = b->info.out_channels, L = L2 / 2;
    VaeConv q = get_conv(pl, b->info.pre[0].diff, L2, b->info.in_channels, 1);
    b->conv = (VaeConv){tensor_rows(q.w, 0, L), tensor_rows(q.b, 0, L)};
    b->conv2 = (VaeConv){tensor_rows(q.w, L, L), tensor_rows(q.b, L, L)};
}

// main (N, 2L, h, w), the moments -> the caller's mean and logvar (N, L, h, w).
static void quant_fwd(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io) {
    (void)m, (void)sv;
    const Backend *be = p->be;
    be->conv2d(be, &io->y, &io->x, &b->conv.w, &b->conv.b, 1, 0);
    be->conv2d(be, &io->y2, &io->x, &b->conv2.w, &b->conv2.b, 1, 0);
}

// ---- block backwards (training) -------------------------------------------------
//
// Each reads its block's input (io->x), its output where needed, and its
// save record; parameter gradients are added (pass_grad), g->dx overwritten.
// Temporaries come from p->work and are released before returning.

static void conv_bwd(Pass *p, Tensor *dx, const Tensor *dy, const Tensor *x, const VaeConv *c, int stride, int pad) {
    Tensor gw, gb;
    Tensor *pgw = pass_grad(p, &c->w, &gw), *pgb = pass_grad(p, &c->b, &gb);
    if (dx || pgw || pgb) p->be->conv2d_backward(p->be, dx, pgw, pgb, dy, x, &c->w, stride, pad);
}

static void gn_bwd(Pass *p, const Vae *m, Tensor *dx, const Tensor *dy, const Tensor *x, const Tensor *gamma,
                   const Tensor *beta, int silu) {
    Tensor gg, gb;
    p->be->group_norm_backward(p->be, dx, pass_grad(p, gamma, &gg), pass_grad(p, beta, &gb), dy, x, gamma, beta,
                               m->cfg.norm_groups, m->cfg.norm_eps, silu);
}

static Tensor *want(Tensor *t) { return t->ndim ? t : NULL; }

static void conv_in_bwd(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io, VaeGradIO *g) {
    (void)m, (void)sv;
    conv_bwd(p, want(&g->dx), &g->dy, &io->x, &b->conv, 1, 1);
}

static void post_quant_bwd(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io,
                           VaeGradIO *g) {
    (void)m, (void)sv;
    conv_bwd(p, want(&g->dx), &g->dy, &io->x, &b->conv, 1, 0);
}

// The 4x4 kernel's gradient lands at its own place in the gradient arena;
// vae_train_encode_backward folds it into the 3x3 parameter's.
static void downsample_bwd(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io,
                           VaeGradIO *g) {
    (void)m, (void)sv;
    conv_bwd(p, want(&g->dx), &g->dy, &io->x, &b->conv, 2, 1);
}

static void upsample_bwd(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io,
                         VaeGradIO *g) {
    (void)m, (void)io;
    size_t mark = arena_mark(p->work);
    Tensor du = pass_like(p, &sv->u); // (N, C, 2h, 2w)
    conv_bwd(p, &du, &g->dy, &sv->u, &b->conv, 1, 1);
    if (g->dx.ndim) p->be->upsample_nearest2x_backward(p->be, &g->dx, &du);
    arena_reset(p->work, mark);
}

static void resnet_bwd(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io,
                       VaeGradIO *g) {
    const Backend *be = p->be;
    const VaeResnet *r = &b->res;
    SDC_CHECK(g->dx.ndim); // a resnet is never a list's first block
    size_t mark = arena_mark(p->work);
    // d x: through the shortcut (or identity), then the main path adds in
    if (b->info.in_channels != b->info.out_channels) conv_bwd(p, &g->dx, &g->dy, &io->x, &r->sc, 1, 0);
    else be->copy(be, &g->dx, &g->dy);
    Tensor dh2 = pass_like(p, &sv->h2); // (N, cout, h, w)
    conv_bwd(p, &dh2, &g->dy, &sv->h2, &r->c2, 1, 1);
    Tensor dt2 = pass_like(p, &sv->t2);
    gn_bwd(p, m, &dt2, &dh2, &sv->t2, &r->n2_w, &r->n2_b, 1);
    Tensor dh1 = pass_like(p, &sv->h1); // (N, cin, h, w)
    conv_bwd(p, &dh1, &dt2, &sv->h1, &r->c1, 1, 1);
    Tensor dgn = pass_like(p, &io->x);
    gn_bwd(p, m, &dgn, &dh1, &io->x, &r->n1_w, &r->n1_b, 1);
    be->add(be, &g->dx, &g->dx, &dgn);
    arena_reset(p->work, mark);
}

static void attention_bwd(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io,
                          VaeGradIO *g) {
    const Backend *be = p->be;
    const VaeAttn *a = &b->attn;
    SDC_CHECK(g->dx.ndim);
    size_t mark = arena_mark(p->work);
    Tensor dseq = pass_like(p, &sv->o); // (N, S, C) d loss / d to_out's output
    be->nchw_to_nlc(be, &dseq, &g->dy);
    Tensor dO = pass_like(p, &sv->o);
    pass_linear_backward(p, &dO, &dseq, &sv->o, &a->o_w, &a->o_b, NULL, NULL);
    Tensor dq = pass_like(p, &sv->q), dk = pass_like(p, &sv->k), dv = pass_like(p, &sv->v);
    be->attention_backward(be, &dq, &dk, &dv, &dO, &sv->q, &sv->k, &sv->v, 1, 0);
    Tensor ds = pass_like(p, &sv->s); // (N, S, C) d loss / d the normed tokens
    pass_linear_backward(p, &ds, &dq, &sv->s, &a->q_w, &a->q_b, NULL, NULL);
    pass_linear_backward(p, &dseq, &dk, &sv->s, &a->k_w, &a->k_b, NULL, NULL);
    be->add(be, &ds, &ds, &dseq);
    pass_linear_backward(p, &dseq, &dv, &sv->s, &a->v_w, &a->v_b, NULL, NULL);
    be->add(be, &ds, &ds, &dseq);
    Tensor dhn = pass_like(p, &io->x); // (N, C, h, w)
    be->nlc_to_nchw(be, &dhn, &ds);
    gn_bwd(p, m, &g->dx, &dhn, &io->x, &a->gn_w, &a->gn_b, 0);
    be->add(be, &g->dx, &g->dx, &g->dy); // the residual
    arena_reset(p->work, mark);
}

static void out_bwd(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io, VaeGradIO *g) {
    SDC_CHECK(g->dx.ndim);
    size_t mark = arena_mark(p->work);
    Tensor du = pass_like(p, &sv->u); // (N, C, h, w)
    conv_bwd(p, &du, &g->dy, &sv->u, &b->conv, 1, 1);
    gn_bwd(p, m, &g->dx, &du, &io->x, &b->norm_w, &b->norm_b, 1);
    arena_reset(p->work, mark);
}

// dy: d mean, dy2: d logvar -> dx (N, 2L, h, w), the moments.
static void quant_bwd(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io, VaeGradIO *g) {
    (void)m, (void)sv;
    SDC_CHECK(g->dx.ndim);
    size_t mark = arena_mark(p->work);
    Tensor t = pass_like(p, &g->dx);
    conv_bwd(p, &g->dx, &g->dy, &io->x, &b->conv, 1, 0);
    conv_bwd(p, &t, &g->dy2, &io->x, &b->conv2, 1, 0);
    p->be->add(p->be, &g->dx, &g->dx, &t);
    arena_reset(p->work, mark);
}

typedef struct VaeKind {
    // Asks pl for the block's parameters (diffusers names, shapes from the info).
    void (*load)(ParamLoader *pl, VaeBlock *b);
    void (*forward)(Pass *p, const Vae *m, const VaeBlock *b, VaeSave *sv, VaeIO *io);
    void (*backward)(Pass *p, const Vae *m, const VaeBlock *b, const VaeSave *sv, const VaeIO *io, VaeGradIO *g);
} VaeKind;

static const VaeKind VAE_KINDS[VAE_BLOCK_KINDS] = {
    [VAE_BLOCK_CONV_IN] = {load_conv3, conv_in_fwd, conv_in_bwd},
    [VAE_BLOCK_RESNET] = {load_resnet, resnet_fwd, resnet_bwd},
    [VAE_BLOCK_ATTENTION] = {load_attention, attention_fwd, attention_bwd},
    [VAE_BLOCK_DOWNSAMPLE] = {load_downsample, downsample_fwd, downsample_bwd},
    [VAE_BLOCK_UPSAMPLE] = {load_conv3, upsample_fwd, upsample_bwd},
    [VAE_BLOCK_OUT] = {load_out, out_fwd, out_bwd},
    [VAE_BLOCK_QUANT] = {load_quant, quant_fwd, quant_bwd},
    [VAE_BLOCK_POST_QUANT] = {load_conv1, post_quant_fwd, post_quant_bwd},
};

// ---- loading ---------------------------------------------------------------

static void vae_get_params(Vae *m, ParamLoader *pl) {
    for (int p = 0; p < VAE_PARTS; p++)
        for (int i = 0; i < m->n_blocks[p]; i++) {
            VaeBlock *b = &m->blocks[p][i];
            const size_t numel = pl->numel;
            VAE_KINDS[b->info.kind].load(pl, b);
            b->info.param_count = pl->numel - numel;
        }
}

static int vae_down_sync(Vae *m, SdcError *err);
static void vae_train_free(Vae *m);

// Loads from mf, or (mf NULL) makes every parameter fresh (zero) for the
// caller to initialise through the table. own: trainable F32 copies named
// in m->table (always when fresh).
static int vae_build(Vae **out, const VaeConfig *c, const ModelFiles *mf, const Backend *be, int own, SdcError *err) {
    *out = NULL;
    SDC_TRY(vae_check_config(c, err));
    if (own && (be->param_dtype != DT_F32 || !be->conv2d_backward))
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "vae: training needs a backend with backward ops and fp32 parameters (got %s, %s)\n"
                       "---> use --device cpu for training",
                       be->name, dtype_name(be->param_dtype));
    Vae *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "vae_load: out of host memory");
    m->cfg = *c;
    m->be = be;
    m->trainable = own;
    int rc = vae_blocks_make(m, err);
    // Pass 1 checks every name and shape and measures; pass 2 loads for real.
    Arena meas;
    arena_init_measure(&meas);
    ParamLoader pl = {.mf = mf, .comp = COMP_VAE, .be = be, .arena = &meas, .err = err, .own = own};
    if (!rc) {
        vae_get_params(m, &pl);
        rc = pl.failed ? err->code : 0;
    }
    if (!rc) rc = arena_init(&m->params, be, meas.peak, err);
    if (!rc && own) be->zero(be, m->params.base, m->params.cap); // padding too: the flat buffer is optimized
    if (!rc) {
        pl = (ParamLoader){.mf = mf, .comp = COMP_VAE, .be = be, .arena = &m->params, .err = err, .own = own,
                           .table = own ? &m->table : NULL};
        vae_get_params(m, &pl);
        rc = pl.failed ? err->code : 0;
    }
    if (!rc && own) rc = vae_down_sync(m, err);
    if (rc) {
        sdc_err_wrap(err, "loading the vae");
        vae_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int vae_load(Vae **out, const ModelFiles *mf, const Backend *be, SdcError *err) {
    return vae_build(out, &model_files_info(mf)->vae, mf, be, 0, err);
}

int vae_load_opts(Vae **out, const ModelFiles *mf, const Backend *be, const ModelLoadOpts *o, SdcError *err) {
    return vae_build(out, &model_files_info(mf)->vae, mf, be, o && o->trainable, err);
}

int vae_create(Vae **out, const VaeConfig *cfg, const Backend *be, SdcError *err) {
    return vae_build(out, cfg, NULL, be, 1, err);
}

void vae_free(Vae *m) {
    if (!m) return;
    arena_free(&m->act);
    vae_train_free(m);
    arena_free(&m->params);
    param_table_free(&m->table);
    for (int p = 0; p < VAE_PARTS; p++) free(m->blocks[p]);
    free(m->host_lv);
    free(m);
}

const VaeConfig *vae_config(const Vae *m) { return &m->cfg; }
const Backend *vae_backend(const Vae *m) { return m->be; }
size_t vae_param_bytes(const Vae *m) { return m->params.cap; }
size_t vae_activation_bytes(const Vae *m) { return m->act.cap; }
int vae_block_count(const Vae *m, VaePart part) { return m->n_blocks[part]; }
const VaeBlockInfo *vae_block_info(const Vae *m, VaePart part, int i) {
    SDC_CHECK(i >= 0 && i < m->n_blocks[part]);
    return &m->blocks[part][i].info;
}

// ---- the runs: walks of a block list ---------------------------------------------

// Elements of the main buffer of a pass over the list with image side
// (H, W): the largest output of every block but the last (which writes the
// caller's output); each block's input is the previous block's output or
// the caller's.
static int64_t vae_main_elems(const VaeBlock *bl, int n, int64_t N, int64_t H, int64_t W) {
    int64_t best = 0;
    for (int i = 0; i < n - 1; i++) {
        const VaeBlockInfo *b = &bl[i].info;
        const int64_t e = N * b->out_channels * (H / b->out_div) * (W / b->out_div);
        if (e > best) best = e;
    }
    return best;
}

// What a measuring walk records per block (vae_reserve keeps it in the
// blocks' infos).
typedef struct VaeBlockMem {
    size_t out;     // bytes of its output
    size_t scratch; // bytes it takes above main while it runs
} VaeBlockMem;

// Runs part's block list over in (N, Cin, h, w): block 0 reads in, the last
// block writes out0 (and QUANT out1), the others write main (see the top).
// mem: NULL, or one per block to fill (measuring walks).
static void vae_run(Pass *p, const Vae *m, VaePart part, const Tensor *in, Tensor *out0, Tensor *out1,
                    VaeBlockMem *mem) {
    const VaeBlock *bl = m->blocks[part];
    const int n = m->n_blocks[part];
    const int64_t N = in->shape[0], H = in->shape[2] * bl[0].info.in_div, W = in->shape[3] * bl[0].info.in_div;
    Arena *a = p->work;
    size_t frame = arena_mark(a);
    void *main = work_alloc(p, vae_main_elems(bl, n, N, H, W));
    VaeIO io = {.x = *in};
    for (int i = 0; i < n; i++) {
        const VaeBlockInfo *b = &bl[i].info;
        if (i < n - 1) {
            io.y = act_view(p, main, N, b->out_channels, H / b->out_div, W / b->out_div);
        } else {
            io.y = *out0;
            if (out1) io.y2 = *out1;
        }
        const size_t peak = a->peak; // measure this block's scratch alone
        if (mem) a->peak = a->used;
        VaeSave sv = {0}; // inference: the saves are temporaries
        VAE_KINDS[b->kind].forward(p, m, &bl[i], &sv, &io);
        if (mem) {
            mem[i].scratch = a->peak - a->used;
            mem[i].out = tensor_bytes(&io.y) + (io.y2.ndim ? tensor_bytes(&io.y2) : 0);
            if (peak > a->peak) a->peak = peak;
        }
        io.x = io.y;
    }
    arena_reset(a, frame);
}

// image (N, 3, H, W) -> mean, logvar (N, L, H/f, W/f), f = 2^(levels-1).
// host_lv: (N, L, H/f, W/f) floats for the clamp (unused when measuring).
static void vae_encode_run(const Vae *m, Pass *p, const Tensor *image, Tensor *mean, Tensor *logvar,
                           float *host_lv) {
    const Backend *be = p->be;
    vae_run(p, m, VAE_ENCODER, image, mean, logvar, NULL);
    // The backend has no clamp: round-trip the small logvar through the host.
    // host_lv NULL: the caller clamps (tiled encode clamps after blending).
    if (!p->work->measure && host_lv) {
        size_t cnt = (size_t)tensor_numel(logvar);
        be->sync(be);
        backend_download_f32(be, host_lv, logvar, cnt);
        for (size_t i = 0; i < cnt; i++) {
            float v = host_lv[i];
            host_lv[i] = v < VAE_LOGVAR_MIN ? VAE_LOGVAR_MIN : v > VAE_LOGVAR_MAX ? VAE_LOGVAR_MAX : v;
        }
        backend_upload_f32(be, logvar, host_lv, cnt);
    }
}

// z (N, L, h, w) -> image (N, out, f*h, f*w).
static void vae_decode_run(const Vae *m, Pass *p, const Tensor *z, Tensor *image) {
    vae_run(p, m, VAE_DECODER, z, image, NULL, NULL);
}

int vae_scale_factor(const VaeConfig *c) { return 1 << (c->n_levels - 1); }

static int vae_factor(const VaeConfig *c) { return vae_scale_factor(c); }

// ---- tiling ------------------------------------------------------------------
//
// diffusers' AutoencoderKL.tiled_decode and _tiled_encode with the tile sizes
// counted in latent pixels: tiles of `tile` latent pixels (tile*f image
// pixels, f = 2^(levels-1)) start every tile - overlap latent pixels, the last
// ones of a row or column cut at the border. Each tile is decoded (encoded) on
// its own, so GroupNorm and attention see only the tile: that is why tiles
// overlap, and why the result differs from an untiled pass. The output tiles
// are visited in raster order; the first E rows of a tile are blended
// linearly with the last E rows of the tile above, then its first E columns
// with the last E columns of the tile to the left, E = overlap in output
// pixels (fewer where a tile is smaller), and the top-left square of
// (tile - overlap) output pixels is kept. diffusers blends in place in that
// order, so the tile above and the one to the left take part in their blended
// form: two rows of output tiles stay on the host. diffusers' settings are
// tile = tile_latent_min_size, overlap = tile * tile_overlap_factor (0.25).
// The encoder's logvar is clamped after blending, as diffusers clamps the
// blended moments.

typedef struct VaeGrid {
    int decode;
    int64_t N, cin;            // batch, input channels (latent or image)
    int64_t pin, pout;         // input planes N*cin; output planes N*out (decode) or 2*N*L (mean, logvar)
    int64_t hin, win, hout, wout;
    int64_t tin, stride;       // input tile side and the step between tiles
    int64_t blend, keep;       // output pixels blended, and kept, per tile side
    int64_t ty, tx;            // tiles down, across
    int64_t tin_h, tin_w;      // the largest input tile
    int64_t tout_h, tout_w;    // the largest output tile
    int f;
} VaeGrid;

static int64_t grid_out(const VaeGrid *g, int64_t t) { return g->decode ? t * g->f : t / g->f; }

static int vae_check_tiling(const VaeTiling *t, SdcError *err) {
    if (!t || t->tile == 0) return 0;
    if (t->tile < 1 || t->overlap < 0 || t->overlap >= t->tile)
        return sdc_err(err, SDC_ERR_ARG,
                       "vae tiling: tile %d, overlap %d latent pixels: need tile >= 1 and 0 <= overlap < tile\n"
                       "---> e.g. tile 64, overlap 16 (diffusers' enable_tiling for SD)",
                       t->tile, t->overlap);
    return 0;
}

// Fills g for a pass over (N, *, hin, win) inputs; returns 0 when the input
// fits one tile (or tiling is off) and the pass runs untiled, as diffusers
// does.
static int vae_grid(const VaeConfig *c, int decode, int64_t N, int64_t hin, int64_t win,
                    const VaeTiling *t, VaeGrid *g) {
    if (!t || t->tile <= 0) return 0;
    const int f = vae_factor(c);
    *g = (VaeGrid){.decode = decode, .N = N, .hin = hin, .win = win, .f = f};
    g->tin = decode ? t->tile : (int64_t)t->tile * f;
    if (hin <= g->tin && win <= g->tin) return 0;
    g->stride = decode ? t->tile - t->overlap : (int64_t)(t->tile - t->overlap) * f;
    g->blend = decode ? (int64_t)t->overlap * f : t->overlap;
    g->keep = decode ? (int64_t)(t->tile - t->overlap) * f : t->tile - t->overlap;
    g->ty = (hin + g->stride - 1) / g->stride;
    g->tx = (win + g->stride - 1) / g->stride;
    g->tin_h = hin < g->tin ? hin : g->tin;
    g->tin_w = win < g->tin ? win : g->tin;
    g->tout_h = grid_out(g, g->tin_h);
    g->tout_w = grid_out(g, g->tin_w);
    g->hout = grid_out(g, hin);
    g->wout = grid_out(g, win);
    g->cin = decode ? c->latent_channels : c->in_channels;
    g->pin = N * g->cin;
    g->pout = decode ? N * c->out_channels : 2 * N * c->latent_channels;
    return 1;
}

// The device tiles a tiled pass keeps in the arena below its forward: input
// (N, cin, tin_h, tin_w) and output (N, out, tout_h, tout_w), or mean and
// logvar (N, L, tout_h, tout_w) each. Same order in planning and running.
typedef struct VaeTileBufs {
    void *in, *out0, *out1;
} VaeTileBufs;

static VaeTileBufs vae_tile_bufs(Pass *p, const VaeConfig *c, const VaeGrid *g) {
    VaeTileBufs b = {0};
    b.in = work_alloc(p, g->pin * g->tin_h * g->tin_w);
    if (g->decode) {
        b.out0 = work_alloc(p, g->N * c->out_channels * g->tout_h * g->tout_w);
    } else {
        b.out0 = work_alloc(p, g->N * c->latent_channels * g->tout_h * g->tout_w);
        b.out1 = work_alloc(p, g->N * c->latent_channels * g->tout_h * g->tout_w);
    }
    return b;
}

// Activation bytes of one pass of part over an input of (N, *, hin, win)
// (the image's side for the encoder, the latent's for the decoder); tiled by
// g when non-NULL: the device tiles plus one pass over the largest tile
// (smaller edge tiles need less). mem: NULL, or each block's bytes.
static size_t vae_measure_pass(const Vae *m, DType act, VaePart part, const VaeGrid *g, int64_t N, int64_t hin,
                               int64_t win, VaeBlockMem *mem) {
    const VaeConfig *c = &m->cfg;
    const int dec = part == VAE_DECODER, f = vae_factor(c);
    Arena a;
    arena_init_measure(&a);
    Pass p = {.be = backend_measure(), .act = act, .work = &a};
    VaeTileBufs b = {0}; // untiled: the caller's tensors, outside the arena
    if (g) {
        b = vae_tile_bufs(&p, c, g);
        hin = g->tin_h, win = g->tin_w;
    }
    const int64_t hout = dec ? hin * f : hin / f, wout = dec ? win * f : win / f;
    Tensor in = act_view(&p, b.in, N, dec ? c->latent_channels : c->in_channels, hin, win);
    Tensor out0 = act_view(&p, b.out0, N, dec ? c->out_channels : c->latent_channels, hout, wout);
    Tensor out1 = act_view(&p, b.out1, N, c->latent_channels, hout, wout);
    vae_run(&p, m, part, &in, &out0, dec ? NULL : &out1, mem);
    return a.peak;
}

// diffusers' blend_v: the first e rows of b (planes x bh x w) fade in from the
// last e rows of a (planes x ah x w), e = min(ah, bh, blend).
static void vae_blend_v(const float *a, int64_t ah, float *b, int64_t bh, int64_t w, int64_t planes,
                        int64_t blend) {
    int64_t e = ah < bh ? ah : bh;
    if (blend < e) e = blend;
    for (int64_t y = 0; y < e; y++) {
        const float wb = (float)((double)y / e), wa = (float)(1.0 - (double)y / e);
        for (int64_t p = 0; p < planes; p++) {
            const float *ar = a + (p * ah + ah - e + y) * w;
            float *br = b + (p * bh + y) * w;
            for (int64_t x = 0; x < w; x++) br[x] = ar[x] * wa + br[x] * wb;
        }
    }
}

// diffusers' blend_h: the first e columns of b (planes x h x bw) fade in from
// the last e columns of a (planes x h x aw), e = min(aw, bw, blend).
static void vae_blend_h(const float *a, int64_t aw, float *b, int64_t bw, int64_t h, int64_t planes,
                        int64_t blend) {
    int64_t e = aw < bw ? aw : bw;
    if (blend < e) e = blend;
    for (int64_t p = 0; p < planes; p++)
        for (int64_t y = 0; y < h; y++) {
            const float *ar = a + (p * h + y) * aw + aw - e;
            float *br = b + (p * h + y) * bw;
            for (int64_t x = 0; x < e; x++) {
                const float wb = (float)((double)x / e), wa = (float)(1.0 - (double)x / e);
                br[x] = ar[x] * wa + br[x] * wb;
            }
        }
}

// The tiled pass over `in` (N, cin, hin, win) on the device: decode -> out0
// (N, out, hout, wout); encode -> out0 = mean, out1 = logvar (N, L, hout,
// wout). Host scratch (one allocation per call, not per tile): the input, one
// input tile, two rows of output tiles, the output.
static int vae_tiled_run(Vae *m, const VaeGrid *g, const Tensor *in, Tensor *out0, Tensor *out1,
                         SdcError *err) {
    const VaeConfig *c = &m->cfg;
    const Backend *be = m->be;
    const int64_t slot = g->pout * g->tout_h * g->tout_w, half = g->pout / 2; // half: mean | logvar planes
    const size_t n_in = (size_t)(g->pin * g->hin * g->win), n_tin = (size_t)(g->pin * g->tin_h * g->tin_w);
    const size_t n_out = (size_t)(g->pout * g->hout * g->wout);
    float *xin = malloc((n_in + n_tin + n_out + 2 * (size_t)g->tx * slot) * sizeof(float));
    int64_t *dims = malloc(4 * (size_t)g->tx * sizeof(int64_t)); // (2 rows, tx) tile heights, then widths
    if (!xin || !dims) {
        free(xin);
        free(dims);
        return sdc_err(err, SDC_ERR_OOM, "vae tiling: out of host memory for %lld tiles of %lldx%lld",
                       (long long)(g->ty * g->tx), (long long)g->tout_h, (long long)g->tout_w);
    }
    float *tbuf = xin + n_in;   // (N, cin, th_in, tw_in) one input tile
    float *yout = tbuf + n_tin; // (pout, hout, wout)
    float *slots = yout + n_out; // (2, tx) output tiles, each (pout, th, tw) packed
    int64_t *th = dims, *tw = dims + 2 * g->tx;
    be->sync(be);
    backend_download_f32(be, xin, in, n_in);

    Pass pass = {.be = be, .act = be->act_dtype, .work = &m->act};
    size_t frame = arena_mark(&m->act);
    VaeTileBufs b = vae_tile_bufs(&pass, c, g);
    for (int64_t iy = 0; iy < g->ty; iy++) {
        const int64_t cur = (iy & 1) * g->tx, prev = ((iy + 1) & 1) * g->tx;
        const int64_t y0 = iy * g->stride, hi = g->hin - y0 < g->tin ? g->hin - y0 : g->tin;
        for (int64_t ix = 0; ix < g->tx; ix++) {
            const int64_t x0 = ix * g->stride, wi = g->win - x0 < g->tin ? g->win - x0 : g->tin;
            const int64_t ho = grid_out(g, hi), wo = grid_out(g, wi);
            for (int64_t p = 0; p < g->pin; p++)
                for (int64_t y = 0; y < hi; y++)
                    memcpy(tbuf + (p * hi + y) * wi, xin + (p * g->hin + y0 + y) * g->win + x0,
                           (size_t)wi * sizeof(float));
            Tensor ti = act_view(&pass, b.in, g->N, g->cin, hi, wi); // (N, cin, hi, wi)
            backend_upload_f32(be, &ti, tbuf, (size_t)(g->pin * hi * wi));
            float *dst = slots + (cur + ix) * slot; // (pout, ho, wo)
            if (g->decode) {
                Tensor to = act_view(&pass, b.out0, g->N, c->out_channels, ho, wo); // (N, out, ho, wo)
                vae_decode_run(m, &pass, &ti, &to);
                be->sync(be);
                backend_download_f32(be, dst, &to, (size_t)(g->pout * ho * wo));
            } else {
                Tensor tm = act_view(&pass, b.out0, g->N, c->latent_channels, ho, wo); // (N, L, ho, wo)
                Tensor tl = act_view(&pass, b.out1, g->N, c->latent_channels, ho, wo); // (N, L, ho, wo)
                vae_encode_run(m, &pass, &ti, &tm, &tl, NULL);
                be->sync(be);
                backend_download_f32(be, dst, &tm, (size_t)(half * ho * wo));
                backend_download_f32(be, dst + half * ho * wo, &tl, (size_t)(half * ho * wo));
            }
            th[cur + ix] = ho;
            tw[cur + ix] = wo;
        }
        // blend in diffusers' order (above, then left; both already blended) and keep the top-left
        for (int64_t ix = 0; ix < g->tx; ix++) {
            float *t = slots + (cur + ix) * slot;
            const int64_t ho = th[cur + ix], wo = tw[cur + ix];
            if (iy > 0)
                vae_blend_v(slots + (prev + ix) * slot, th[prev + ix], t, ho, wo, g->pout, g->blend);
            if (ix > 0)
                vae_blend_h(slots + (cur + ix - 1) * slot, tw[cur + ix - 1], t, wo, ho, g->pout, g->blend);
            const int64_t kh = ho < g->keep ? ho : g->keep, kw = wo < g->keep ? wo : g->keep;
            for (int64_t p = 0; p < g->pout; p++)
                for (int64_t y = 0; y < kh; y++)
                    memcpy(yout + (p * g->hout + iy * g->keep + y) * g->wout + ix * g->keep, t + (p * ho + y) * wo,
                           (size_t)kw * sizeof(float));
        }
    }
    arena_reset(&m->act, frame);
    if (g->decode) {
        backend_upload_f32(be, out0, yout, n_out);
    } else {
        float *lv = yout + n_out / 2;
        for (size_t i = 0; i < n_out / 2; i++)
            lv[i] = lv[i] < VAE_LOGVAR_MIN ? VAE_LOGVAR_MIN : lv[i] > VAE_LOGVAR_MAX ? VAE_LOGVAR_MAX : lv[i];
        backend_upload_f32(be, out0, yout, n_out / 2);
        backend_upload_f32(be, out1, lv, n_out / 2);
    }
    free(xin);
    free(dims);
    return backend_status(be, err);
}

// ---- planning ----------------------------------------------------------------

// Measures the activation bytes of encode and decode of (N, in, H, W), tiled
// where t asks for it and the size exceeds one tile. mem: NULL, or per part
// one VaeBlockMem per block to fill.
static void vae_measure(const Vae *m, DType act, int64_t N, int64_t H, int64_t W, const VaeTiling *t,
                        size_t *enc, size_t *dec, VaeBlockMem *const mem[VAE_PARTS]) {
    const int64_t f = vae_factor(&m->cfg);
    VaeGrid g;
    int tiled = vae_grid(&m->cfg, 0, N, H, W, t, &g);
    *enc = vae_measure_pass(m, act, VAE_ENCODER, tiled ? &g : NULL, N, H, W, mem ? mem[VAE_ENCODER] : NULL);
    tiled = vae_grid(&m->cfg, 1, N, H / f, W / f, t, &g);
    *dec = vae_measure_pass(m, act, VAE_DECODER, tiled ? &g : NULL, N, H / f, W / f, mem ? mem[VAE_DECODER] : NULL);
}

static int vae_check_size(const VaeConfig *c, int64_t batch, int64_t height, int64_t width,
                          const char *who, SdcError *err) {
    int f = vae_factor(c);
    if (batch < 1 || height < f || width < f || height % f || width % f)
        return sdc_err(err, SDC_ERR_ARG,
                       "%s: batch %lld of %lldx%lld pixels: need batch >= 1 and a height and "
                       "width that are positive multiples of %d\n"
                       "---> round the image size to a multiple of %d",
                       who, (long long)batch, (long long)height, (long long)width, f, f);
    return 0;
}

int vae_plan_tiled(const VaeConfig *cfg, DType act, int batch, int height, int width, const VaeTiling *t,
                   size_t *encode_bytes, size_t *decode_bytes, SdcError *err) {
    SDC_TRY(vae_check_config(cfg, err));
    SDC_TRY(vae_check_size(cfg, batch, height, width, "vae_plan", err));
    SDC_TRY(vae_check_tiling(t, err));
    // The block lists with empty parameters: the forwards take every shape
    // from the blocks' infos, and the measure backend reads no parameter.
    Vae *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "vae_plan: out of host memory");
    m->cfg = *cfg;
    int rc = vae_blocks_make(m, err);
    if (!rc) vae_measure(m, act, batch, height, width, t, encode_bytes, decode_bytes, NULL);
    vae_free(m);
    return rc;
}

int vae_plan(const VaeConfig *cfg, DType act, int batch, int height, int width,
             size_t *encode_bytes, size_t *decode_bytes, SdcError *err) {
    return vae_plan_tiled(cfg, act, batch, height, width, NULL, encode_bytes, decode_bytes, err);
}

VaeTiling vae_tiling_auto(const VaeConfig *cfg, DType act, int batch, int height, int width) {
    const VaeTiling none = {0, 0}, dflt = {VAE_TILE_DEFAULT, VAE_TILE_DEFAULT / 4};
    size_t enc = 0, dec = 0;
    SdcError e;
    if (vae_plan(cfg, act, batch, height, width, &enc, &dec, &e)) return none;
    return dec > VAE_TILE_BUDGET ? dflt : none;
}

// host_lv holds the logvar of an untiled encode of (N, H, W) for the clamp.
static int vae_host_lv(Vae *m, int64_t N, int64_t H, int64_t W, const VaeTiling *t, SdcError *err) {
    VaeGrid g;
    if (vae_grid(&m->cfg, 0, N, H, W, t, &g)) return 0; // the tiled pass clamps its own output
    int64_t f = vae_factor(&m->cfg);
    size_t lv_n = (size_t)N * m->cfg.latent_channels * (H / f) * (W / f);
    if (lv_n > m->host_lv_n) {
        free(m->host_lv);
        m->host_lv_n = 0;
        m->host_lv = malloc(lv_n * sizeof(float));
        if (!m->host_lv) return sdc_err(err, SDC_ERR_OOM, "vae_reserve: out of host memory");
        m->host_lv_n = lv_n;
    }
    return 0;
}

int vae_reserve_tiled(Vae *m, int batch, int height, int width, const VaeTiling *t, SdcError *err) {
    SDC_TRY(vae_check_size(&m->cfg, batch, height, width, "vae_reserve", err));
    SDC_TRY(vae_check_tiling(t, err));
    size_t enc, dec;
    VaeBlockMem mem[VAE_PARTS][VAE_MAX_BLOCKS];
    vae_measure(m, m->be->act_dtype, batch, height, width, t, &enc, &dec, (VaeBlockMem *const[]){mem[0], mem[1]});
    for (int p = 0; p < VAE_PARTS; p++)
        for (int i = 0; i < m->n_blocks[p]; i++) {
            m->blocks[p][i].info.out_bytes = mem[p][i].out;
            m->blocks[p][i].info.scratch_bytes = mem[p][i].scratch;
        }
    size_t need = enc > dec ? enc : dec;
    if (need > m->act.cap) {
        arena_free(&m->act);
        SDC_TRY(arena_init(&m->act, m->be, need, err));
    }
    return vae_host_lv(m, batch, height, width, t, err);
}

int vae_reserve(Vae *m, int batch, int height, int width, SdcError *err) {
    return vae_reserve_tiled(m, batch, height, width, NULL, err);
}

// ---- encode / decode -------------------------------------------------------------

static int vae_check_tensor(const Vae *m, const Tensor *t, const char *who, const char *what,
                            const int64_t *shape, SdcError *err) {
    Tensor want = tensor_make(m->be->act_dtype, m->be->device, NULL, 4, shape);
    if (t->data && tensor_same_shape(t, &want) && t->dtype == want.dtype && t->device == want.device)
        return 0;
    char got[64], exp[64];
    return sdc_err(err, SDC_ERR_ARG, "%s: %s is %s %s%s, expected %s %s on %s", who, what,
                   tensor_shape_str(t, got, sizeof got), dtype_name(t->dtype),
                   t->data ? "" : " without data", tensor_shape_str(&want, exp, sizeof exp),
                   dtype_name(want.dtype), m->be->name);
}

// Makes sure the arena fits a pass of (N, H, W) with tiling t; plans it on
// first use.
static int vae_ensure(Vae *m, int64_t N, int64_t H, int64_t W, const VaeTiling *t, int decode,
                      const char *who, SdcError *err) {
    if (m->act.cap == 0) return vae_reserve_tiled(m, (int)N, (int)H, (int)W, t, err);
    size_t enc, dec;
    vae_measure(m, m->be->act_dtype, N, H, W, t, &enc, &dec, NULL);
    size_t need = decode ? dec : enc;
    int64_t f = vae_factor(&m->cfg);
    size_t lv_n = (size_t)N * m->cfg.latent_channels * (H / f) * (W / f);
    VaeGrid g;
    int lv_short = !decode && !vae_grid(&m->cfg, 0, N, H, W, t, &g) && lv_n > m->host_lv_n;
    if (need > m->act.cap || lv_short)
        return sdc_err(err, SDC_ERR_ARG,
                       "%s of %lld images of %lldx%lld needs %.1f MiB of activations, "
                       "vae_reserve planned %.1f MiB\n"
                       "---> call vae_reserve (vae_reserve_tiled) with the largest batch and size first",
                       who, (long long)N, (long long)H, (long long)W, (double)need / (1 << 20),
                       (double)m->act.cap / (1 << 20));
    return 0;
}

int vae_encode_tiled(Vae *m, const Tensor *image, Tensor *mean, Tensor *logvar, const VaeTiling *t,
                     SdcError *err) {
    const VaeConfig *c = &m->cfg;
    if (image->ndim != 4)
        return sdc_err(err, SDC_ERR_ARG, "vae_encode: image has %d dims, expected (N, %d, H, W)",
                       image->ndim, c->in_channels);
    int64_t N = image->shape[0], H = image->shape[2], W = image->shape[3], f = vae_factor(c);
    SDC_TRY(vae_check_size(c, N, H, W, "vae_encode", err));
    SDC_TRY(vae_check_tiling(t, err));
    SDC_TRY(vae_check_tensor(m, image, "vae_encode", "image", (int64_t[]){N, c->in_channels, H, W}, err));
    int64_t lat[4] = {N, c->latent_channels, H / f, W / f};
    SDC_TRY(vae_check_tensor(m, mean, "vae_encode", "mean", lat, err));
    SDC_TRY(vae_check_tensor(m, logvar, "vae_encode", "logvar", lat, err));
    SDC_TRY(vae_ensure(m, N, H, W, t, 0, "vae_encode", err));
    VaeGrid g;
    if (vae_grid(c, 0, N, H, W, t, &g)) return vae_tiled_run(m, &g, image, mean, logvar, err);
    Pass p = {.be = m->be, .act = m->be->act_dtype, .work = &m->act};
    vae_encode_run(m, &p, image, mean, logvar, m->host_lv);
    return backend_status(m->be, err);
}

int vae_encode(Vae *m, const Tensor *image, Tensor *mean, Tensor *logvar, SdcError *err) {
    return vae_encode_tiled(m, image, mean, logvar, NULL, err);
}

int vae_decode_tiled(Vae *m, const Tensor *z, Tensor *image, const VaeTiling *t, SdcError *err) {
    const VaeConfig *c = &m->cfg;
    if (z->ndim != 4)
        return sdc_err(err, SDC_ERR_ARG, "vae_decode: latent has %d dims, expected (N, %d, h, w)",
                       z->ndim, c->latent_channels);
    int64_t N = z->shape[0], f = vae_factor(c), H = z->shape[2] * f, W = z->shape[3] * f;
    SDC_TRY(vae_check_size(c, N, H, W, "vae_decode", err));
    SDC_TRY(vae_check_tiling(t, err));
    SDC_TRY(vae_check_tensor(m, z, "vae_decode", "latent", (int64_t[]){N, c->latent_channels, H / f, W / f}, err));
    SDC_TRY(vae_check_tensor(m, image, "vae_decode", "image", (int64_t[]){N, c->out_channels, H, W}, err));
    SDC_TRY(vae_ensure(m, N, H, W, t, 1, "vae_decode", err));
    VaeGrid g;
    if (vae_grid(c, 1, N, H / f, W / f, t, &g)) return vae_tiled_run(m, &g, z, image, NULL, err);
    Pass p = {.be = m->be, .act = m->be->act_dtype, .work = &m->act};
    vae_decode_run(m, &p, z, image);
    return backend_status(m->be, err);
}

int vae_decode(Vae *m, const Tensor *z, Tensor *image, SdcError *err) {
    return vae_decode_tiled(m, z, image, NULL, err);
}

// ---- training ------------------------------------------------------------------
//
// The training walk runs the same block forwards with p->keep set: every
// block writes a fresh output in the keep arena (never main) and keeps its
// saves, so each block's input stays alive for its backward. One keep arena
// holds the encoder's activations, then the decoder's; the trainer runs
// encode, decode, decode backward, encode backward. Backward walks a list
// in reverse with two gradient buffers in the work arena, ping-pong.
//
// The downsample's 4x4 kernel (see the top) is derived: the parameter is the
// (C, C, 3, 3) kernel w3. The 4x4 kernel's gradient collects in its own
// place in the gradient arena and is folded into w3's (its lower-right 3x3)
// at the end of the encoder's backward; vae_train_sync rebuilds the 4x4
// kernels after the optimizer changed w3.

typedef struct VaeTrain {
    int64_t N, H, W;         // the planned batch and image size
    Arena keep;              // the block outputs and saves of the last training forwards
    Arena work;              // temporaries and the backward's gradient buffers
    Arena grads;             // (params.cap) gradients at the parameters' offsets
    VaeIO *io[VAE_PARTS];    // (n_blocks) each block's input and output of the last training forward
    VaeSave *sv[VAE_PARTS];  // (n_blocks)
    size_t dec_mark;         // where the decoder's activations start in keep
    float *lv_raw;           // (N, L, h, w) host: the logvar before the clamp, for the clamp's gradient
    float *host;             // (lv_n) host scratch for the logvar and its gradient
    size_t lv_n;
} VaeTrain;

static void vae_train_free(Vae *m) {
    VaeTrain *tr = m->tr;
    if (!tr) return;
    arena_free(&tr->keep);
    arena_free(&tr->work);
    arena_free(&tr->grads);
    for (int p = 0; p < VAE_PARTS; p++) {
        free(tr->io[p]);
        free(tr->sv[p]);
    }
    free(tr->lv_raw);
    free(tr->host);
    free(tr);
    m->tr = NULL;
}

// Every encoder downsample's 4x4 kernel from its 3x3 parameter.
static int vae_down_sync(Vae *m, SdcError *err) {
    const Backend *be = m->be;
    for (int i = 0; i < m->n_blocks[VAE_ENCODER]; i++) {
        VaeBlock *b = &m->blocks[VAE_ENCODER][i];
        if (b->info.kind != VAE_BLOCK_DOWNSAMPLE) continue;
        const size_t cc = (size_t)b->info.in_channels * b->info.in_channels;
        float *w3 = malloc(cc * 25 * sizeof(float)), *w4 = w3 + cc * 9; // once per level per step
        if (!w3) return sdc_err(err, SDC_ERR_OOM, "vae: out of host memory for the downsample kernels");
        be->sync(be);
        backend_download_f32(be, w3, &b->w3, cc * 9);
        memset(w4, 0, cc * 16 * sizeof(float));
        for (size_t oi = 0; oi < cc; oi++)
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) w4[oi * 16 + (ky + 1) * 4 + (kx + 1)] = w3[oi * 9 + ky * 3 + kx];
        backend_upload_f32(be, &b->conv.w, w4, cc * 16);
        free(w3);
    }
    return backend_status(be, err);
}

int vae_train_sync(Vae *m, SdcError *err) { return vae_down_sync(m, err); }

// Adds each encoder downsample's 4x4 kernel gradient (lower-right 3x3) into
// its 3x3 parameter's and zeroes it.
static int vae_down_fold(Vae *m, SdcError *err) {
    const Backend *be = m->be;
    VaeTrain *tr = m->tr;
    Pass p = {.be = be, .params = &m->params, .grads = &tr->grads};
    for (int i = 0; i < m->n_blocks[VAE_ENCODER]; i++) {
        VaeBlock *b = &m->blocks[VAE_ENCODER][i];
        if (b->info.kind != VAE_BLOCK_DOWNSAMPLE) continue;
        const size_t cc = (size_t)b->info.in_channels * b->info.in_channels;
        Tensor t3, t4;
        Tensor *g3 = pass_grad(&p, &b->w3, &t3), *g4 = pass_grad(&p, &b->conv.w, &t4);
        float *h3 = malloc(cc * 25 * sizeof(float)), *h4 = h3 + cc * 9; // once per level per step
        if (!h3) return sdc_err(err, SDC_ERR_OOM, "vae: out of host memory for the downsample gradients");
        be->sync(be);
        backend_download_f32(be, h3, g3, cc * 9);
        backend_download_f32(be, h4, g4, cc * 16);
        for (size_t oi = 0; oi < cc; oi++)
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) h3[oi * 9 + ky * 3 + kx] += h4[oi * 16 + (ky + 1) * 4 + (kx + 1)];
        backend_upload_f32(be, g3, h3, cc * 9);
        be->zero(be, g4->data, tensor_bytes(g4));
        free(h3);
    }
    return backend_status(be, err);
}

// The forward of part's list over in with every activation kept (see above).
static void vae_train_run(Pass *p, const Vae *m, VaeTrain *tr, VaePart part, const Tensor *in, Tensor *out0,
                          Tensor *out1) {
    const VaeBlock *bl = m->blocks[part];
    const int n = m->n_blocks[part];
    const int64_t N = in->shape[0], H = in->shape[2] * bl[0].info.in_div, W = in->shape[3] * bl[0].info.in_div;
    VaeIO io = {.x = *in};
    for (int i = 0; i < n; i++) {
        const VaeBlockInfo *b = &bl[i].info;
        if (i < n - 1) {
            io.y = arena_tensor(p->keep, p->act, 4,
                                (int64_t[]){N, b->out_channels, H / b->out_div, W / b->out_div});
        } else {
            io.y = *out0;
            if (out1) io.y2 = *out1;
        }
        memset(&tr->sv[part][i], 0, sizeof tr->sv[part][i]);
        VAE_KINDS[b->kind].forward(p, m, &bl[i], &tr->sv[part][i], &io);
        tr->io[part][i] = io;
        io.x = io.y;
    }
}

// The backward of part's list: dy0 (and for the encoder dy1, the logvar's)
// d loss / d its outputs -> dx_in (NULL: not wanted), parameter gradients added.
static void vae_train_back(Pass *p, const Vae *m, VaeTrain *tr, VaePart part, const Tensor *dy0, const Tensor *dy1,
                           Tensor *dx_in) {
    const VaeBlock *bl = m->blocks[part];
    const int n = m->n_blocks[part];
    size_t mark = arena_mark(p->work);
    int64_t elems = 0;
    for (int i = 1; i < n; i++) {
        const int64_t e = tensor_numel(&tr->io[part][i].x);
        if (e > elems) elems = e;
    }
    void *buf[2] = {work_alloc(p, elems), work_alloc(p, elems)};
    Tensor dy = *dy0;
    for (int i = n - 1; i >= 0; i--) {
        const VaeIO *io = &tr->io[part][i];
        VaeGradIO g = {.dy = dy};
        if (bl[i].info.kind == VAE_BLOCK_QUANT) g.dy2 = *dy1;
        if (i > 0) {
            g.dx = io->x;
            g.dx.data = buf[i & 1];
        } else if (dx_in) {
            g.dx = *dx_in;
        }
        VAE_KINDS[bl[i].info.kind].backward(p, m, &bl[i], &tr->sv[part][i], io, &g);
        dy = g.dx;
    }
    arena_reset(p->work, mark);
}

static Pass vae_train_pass(Vae *m) {
    VaeTrain *tr = m->tr;
    return (Pass){.be = m->be, .act = m->be->act_dtype, .keep = &tr->keep, .work = &tr->work,
                  .params = &m->params, .grads = &tr->grads};
}

// Encode, decode and both backwards of (N, H, W) on the measure backend:
// the keep and work arenas' peaks.
static void vae_train_measure(Vae *m, int64_t N, int64_t H, int64_t W, size_t *keep, size_t *work) {
    const VaeConfig *c = &m->cfg;
    const int64_t f = vae_factor(c), h = H / f, w = W / f;
    VaeTrain *tr = m->tr;
    Arena k, wk, g;
    arena_init_measure(&k);
    arena_init_measure(&wk);
    arena_init_measure(&g);
    Pass p = {.be = backend_measure(), .act = m->be->act_dtype, .keep = &k, .work = &wk, .params = &m->params,
              .grads = &g};
    Tensor img = act_view(&p, NULL, N, c->in_channels, H, W);
    Tensor lat = act_view(&p, NULL, N, c->latent_channels, h, w);
    Tensor out = act_view(&p, NULL, N, c->out_channels, H, W);
    Tensor mean = lat, lv = lat, z = lat, dz = lat;
    vae_train_run(&p, m, tr, VAE_ENCODER, &img, &mean, &lv);
    vae_train_run(&p, m, tr, VAE_DECODER, &z, &out, NULL);
    Tensor tmp = TMP(&p, N, c->latent_channels, h, w); // the masked logvar gradient
    vae_train_back(&p, m, tr, VAE_DECODER, &out, NULL, &dz);
    vae_train_back(&p, m, tr, VAE_ENCODER, &mean, &tmp, NULL);
    *keep = k.peak;
    *work = wk.peak;
}

int vae_train_reserve(Vae *m, int batch, int height, int width, SdcError *err) {
    if (!m->trainable)
        return sdc_err(err, SDC_ERR_ARG, "vae_train_reserve: the vae was loaded for inference\n"
                       "---> load it with vae_load_opts (trainable) or vae_create");
    SDC_TRY(vae_check_size(&m->cfg, batch, height, width, "vae_train_reserve", err));
    vae_train_free(m);
    VaeTrain *tr = calloc(1, sizeof *tr);
    if (!tr) return sdc_err(err, SDC_ERR_OOM, "vae_train_reserve: out of host memory");
    m->tr = tr;
    const int64_t f = vae_factor(&m->cfg);
    tr->N = batch, tr->H = height, tr->W = width;
    tr->lv_n = (size_t)batch * m->cfg.latent_channels * (height / f) * (width / f);
    for (int p = 0; p < VAE_PARTS; p++) {
        tr->io[p] = calloc((size_t)m->n_blocks[p], sizeof *tr->io[p]);
        tr->sv[p] = calloc((size_t)m->n_blocks[p], sizeof *tr->sv[p]);
        if (!tr->io[p] || !tr->sv[p]) goto oom;
    }
    tr->lv_raw = malloc(tr->lv_n * sizeof(float));
    tr->host = malloc(tr->lv_n * sizeof(float));
    if (!tr->lv_raw || !tr->host) goto oom;
    size_t keep, work;
    vae_train_measure(m, batch, height, width, &keep, &work);
    int rc = arena_init(&tr->keep, m->be, keep, err);
    if (!rc) rc = arena_init(&tr->work, m->be, work, err);
    if (!rc) rc = arena_init(&tr->grads, m->be, m->params.cap, err);
    if (rc) {
        vae_train_free(m);
        return sdc_err_wrap(err, "vae_train_reserve: %d images of %dx%d", batch, height, width);
    }
    m->be->zero(m->be, tr->grads.base, tr->grads.cap);
    return backend_status(m->be, err);
oom:
    vae_train_free(m);
    return sdc_err(err, SDC_ERR_OOM, "vae_train_reserve: out of host memory");
}

static int vae_train_check(const Vae *m, const Tensor *t, const char *who, const char *what, int64_t c, int64_t div,
                           SdcError *err) {
    if (!m->tr) return sdc_err(err, SDC_ERR_ARG, "%s: call vae_train_reserve first", who);
    const VaeTrain *tr = m->tr;
    return vae_check_tensor(m, t, who, what, (int64_t[]){tr->N, c, tr->H / div, tr->W / div}, err);
}

int vae_train_encode(Vae *m, const Tensor *image, Tensor *mean, Tensor *logvar, SdcError *err) {
    const VaeConfig *c = &m->cfg;
    const int64_t f = vae_factor(c);
    SDC_TRY(vae_train_check(m, image, "vae_train_encode", "image", c->in_channels, 1, err));
    SDC_TRY(vae_train_check(m, mean, "vae_train_encode", "mean", c->latent_channels, f, err));
    SDC_TRY(vae_train_check(m, logvar, "vae_train_encode", "logvar", c->latent_channels, f, err));
    VaeTrain *tr = m->tr;
    const Backend *be = m->be;
    arena_reset(&tr->keep, 0);
    Pass p = vae_train_pass(m);
    vae_train_run(&p, m, tr, VAE_ENCODER, image, mean, logvar);
    tr->dec_mark = arena_mark(&tr->keep);
    be->sync(be);
    backend_download_f32(be, tr->lv_raw, logvar, tr->lv_n);
    for (size_t i = 0; i < tr->lv_n; i++) {
        const float v = tr->lv_raw[i];
        tr->host[i] = v < VAE_LOGVAR_MIN ? VAE_LOGVAR_MIN : v > VAE_LOGVAR_MAX ? VAE_LOGVAR_MAX : v;
    }
    backend_upload_f32(be, logvar, tr->host, tr->lv_n);
    return backend_status(be, err);
}

int vae_train_decode(Vae *m, const Tensor *z, Tensor *image, SdcError *err) {
    const VaeConfig *c = &m->cfg;
    SDC_TRY(vae_train_check(m, z, "vae_train_decode", "latent", c->latent_channels, vae_factor(c), err));
    SDC_TRY(vae_train_check(m, image, "vae_train_decode", "image", c->out_channels, 1, err));
    VaeTrain *tr = m->tr;
    arena_reset(&tr->keep, tr->dec_mark);
    Pass p = vae_train_pass(m);
    vae_train_run(&p, m, tr, VAE_DECODER, z, image, NULL);
    return backend_status(m->be, err);
}

int vae_train_decode_backward(Vae *m, const Tensor *dimage, Tensor *dz, SdcError *err) {
    const VaeConfig *c = &m->cfg;
    SDC_TRY(vae_train_check(m, dimage, "vae_train_decode_backward", "image gradient", c->out_channels, 1, err));
    if (dz)
        SDC_TRY(vae_train_check(m, dz, "vae_train_decode_backward", "latent gradient", c->latent_channels,
                                vae_factor(c), err));
    Pass p = vae_train_pass(m);
    vae_train_back(&p, m, m->tr, VAE_DECODER, dimage, NULL, dz);
    return backend_status(m->be, err);
}

int vae_train_encode_backward(Vae *m, const Tensor *dmean, const Tensor *dlogvar, Tensor *dimage, SdcError *err) {
    const VaeConfig *c = &m->cfg;
    const int64_t f = vae_factor(c);
    SDC_TRY(vae_train_check(m, dmean, "vae_train_encode_backward", "mean gradient", c->latent_channels, f, err));
    SDC_TRY(vae_train_check(m, dlogvar, "vae_train_encode_backward", "logvar gradient", c->latent_channels, f, err));
    if (dimage)
        SDC_TRY(vae_train_check(m, dimage, "vae_train_encode_backward", "image gradient", c->in_channels, 1, err));
    VaeTrain *tr = m->tr;
    const Backend *be = m->be;
    Pass p = vae_train_pass(m);
    size_t mark = arena_mark(p.work);
    // torch.clamp's gradient: passed where min <= logvar <= max, 0 elsewhere
    Tensor dlv = pass_like(&p, dlogvar); // (N, L, h, w)
    be->sync(be);
    backend_download_f32(be, tr->host, dlogvar, tr->lv_n);
    for (size_t i = 0; i < tr->lv_n; i++)
        if (!(tr->lv_raw[i] >= VAE_LOGVAR_MIN && tr->lv_raw[i] <= VAE_LOGVAR_MAX)) tr->host[i] = 0.0f;
    backend_upload_f32(be, &dlv, tr->host, tr->lv_n);
    vae_train_back(&p, m, tr, VAE_ENCODER, dmean, &dlv, dimage);
    arena_reset(p.work, mark);
    SDC_TRY(backend_status(be, err));
    return vae_down_fold(m, err);
}

void vae_trainables(Vae *m, float **params, float **grads, size_t *n) {
    *params = (float *)m->params.base;
    *grads = m->tr ? (float *)m->tr->grads.base : NULL;
    *n = m->params.cap / sizeof(float);
}

const ParamTable *vae_train_table(const Vae *m) { return &m->table; }

size_t vae_train_bytes(const Vae *m) {
    return m->tr ? m->tr->keep.cap + m->tr->work.cap + m->tr->grads.cap : 0;
}
