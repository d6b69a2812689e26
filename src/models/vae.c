// vae.c: the SD autoencoder (see vae.h). Reads top to bottom: parameters,
// loading, the blocks (ResNet, attention), encoder, decoder, planning and the
// public entry points.
//
// Activation layout: every forward keeps its current activation in one "main"
// buffer at the bottom of its arena frame, sized for the largest activation
// of the pass. A block computes into temporaries above it, writes its result
// back into main (in place, or over the start of main when the channel count
// changes) and resets the arena to where it started. So the peak is main plus
// the temporaries of the hungriest block, never a chain of block outputs.
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

#define VAE_MAX_RESNETS 4 // layers_per_block + 1 (decoder) at most
#define VAE_LOGVAR_MIN (-30.0f)
#define VAE_LOGVAR_MAX 20.0f

// ---- parameters ------------------------------------------------------------

typedef struct VaeResnet {
    int cin, cout;
    Tensor n1_w, n1_b;   // (cin)
    Tensor c1_w, c1_b;   // (cout, cin, 3, 3), (cout)
    Tensor n2_w, n2_b;   // (cout)
    Tensor c2_w, c2_b;   // (cout, cout, 3, 3), (cout)
    Tensor sc_w, sc_b;   // (cout, cin, 1, 1), (cout) when cin != cout
} VaeResnet;

// diffusers Attention with one head over C channels, residual, rescale 1.
typedef struct VaeAttn {
    int c;
    Tensor gn_w, gn_b;                 // (C)
    Tensor q_w, k_w, v_w, o_w;         // (C, C)
    Tensor q_b, k_b, v_b, o_b;         // (C)
} VaeAttn;

typedef struct VaeMid {
    VaeResnet r0;
    VaeAttn attn;
    VaeResnet r1;
} VaeMid;

struct Vae {
    VaeConfig cfg;
    const Backend *be;
    Arena params;

    // encoder
    Tensor enc_in_w, enc_in_b;                          // (C0, 3, 3, 3), (C0)
    VaeResnet enc_res[SDC_MAX_LEVELS][VAE_MAX_RESNETS];
    Tensor enc_down_w[SDC_MAX_LEVELS];                  // (C, C, 4, 4): see the top
    Tensor enc_down_b[SDC_MAX_LEVELS];                  // (C)
    VaeMid enc_mid;
    Tensor enc_norm_w, enc_norm_b;                      // (Clast)
    Tensor enc_out_w, enc_out_b;                        // (2L, Clast, 3, 3), (2L)
    Tensor quant_mean_w, quant_mean_b;                  // rows 0..L-1 of quant_conv: (L, 2L, 1, 1), (L)
    Tensor quant_lv_w, quant_lv_b;                      // rows L..2L-1: (L, 2L, 1, 1), (L)

    // decoder
    Tensor post_quant_w, post_quant_b;                  // (L, L, 1, 1), (L)
    Tensor dec_in_w, dec_in_b;                          // (Clast, L, 3, 3), (Clast)
    VaeMid dec_mid;
    VaeResnet dec_res[SDC_MAX_LEVELS][VAE_MAX_RESNETS]; // up order: channels reversed
    Tensor dec_up_w[SDC_MAX_LEVELS], dec_up_b[SDC_MAX_LEVELS]; // (C, C, 3, 3), (C)
    Tensor dec_norm_w, dec_norm_b;                      // (C0)
    Tensor dec_out_w, dec_out_b;                        // (3, C0, 3, 3), (3)

    Arena act;          // activations for encode and decode, planned by vae_reserve
    float *host_lv;     // (N, L, h, w) host scratch for the logvar clamp
    size_t host_lv_n;
};

static int vae_check_config(const VaeConfig *c, SdcError *err) {
    int ok = c->n_levels >= 1 && c->n_levels <= SDC_MAX_LEVELS && c->layers_per_block >= 1 &&
             c->layers_per_block + 1 <= VAE_MAX_RESNETS && c->norm_groups >= 1 &&
             c->in_channels >= 1 && c->out_channels >= 1 && c->latent_channels >= 1;
    for (int i = 0; ok && i < c->n_levels; i++)
        ok = c->block_out[i] >= 1 && c->block_out[i] % c->norm_groups == 0;
    if (!ok)
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "vae config: %d levels (at most %d), layers_per_block %d (at most %d), "
                       "%d groups, channels %d/%d/%d: not an AutoencoderKL sdc handles\n"
                       "---> check vae/config.json",
                       c->n_levels, SDC_MAX_LEVELS, c->layers_per_block, VAE_MAX_RESNETS - 1,
                       c->norm_groups, c->in_channels, c->latent_channels, c->out_channels);
    return 0;
}

// Rows r0..r0+n-1 of a parameter along dim 0, as a view (data may be NULL
// when only planning).
static Tensor tensor_rows(Tensor t, int64_t r0, int64_t n) {
    size_t row = (size_t)(tensor_numel(&t) / t.shape[0]) * dtype_size(t.dtype);
    if (t.data) t.data = (char *)t.data + (size_t)r0 * row;
    t.shape[0] = n;
    return t;
}

static void vae_get_resnet(ParamLoader *pl, VaeResnet *r, int cin, int cout, const char *pre) {
    r->cin = cin;
    r->cout = cout;
    r->n1_w = param_get(pl, SHAPE(cin), "%s.norm1.weight", pre);
    r->n1_b = param_get(pl, SHAPE(cin), "%s.norm1.bias", pre);
    r->c1_w = param_get(pl, SHAPE(cout, cin, 3, 3), "%s.conv1.weight", pre);
    r->c1_b = param_get(pl, SHAPE(cout), "%s.conv1.bias", pre);
    r->n2_w = param_get(pl, SHAPE(cout), "%s.norm2.weight", pre);
    r->n2_b = param_get(pl, SHAPE(cout), "%s.norm2.bias", pre);
    r->c2_w = param_get(pl, SHAPE(cout, cout, 3, 3), "%s.conv2.weight", pre);
    r->c2_b = param_get(pl, SHAPE(cout), "%s.conv2.bias", pre);
    if (cin != cout) {
        r->sc_w = param_get(pl, SHAPE(cout, cin, 1, 1), "%s.conv_shortcut.weight", pre);
        r->sc_b = param_get(pl, SHAPE(cout), "%s.conv_shortcut.bias", pre);
    }
}

static void vae_get_mid(ParamLoader *pl, VaeMid *mid, int c, const char *pre) {
    char name[256];
    snprintf(name, sizeof name, "%s.resnets.0", pre);
    vae_get_resnet(pl, &mid->r0, c, c, name);
    snprintf(name, sizeof name, "%s.resnets.1", pre);
    vae_get_resnet(pl, &mid->r1, c, c, name);
    VaeAttn *a = &mid->attn;
    a->c = c;
    a->gn_w = param_get(pl, SHAPE(c), "%s.attentions.0.group_norm.weight", pre);
    a->gn_b = param_get(pl, SHAPE(c), "%s.attentions.0.group_norm.bias", pre);
    a->q_w = param_get(pl, SHAPE(c, c), "%s.attentions.0.to_q.weight", pre);
    a->q_b = param_get(pl, SHAPE(c), "%s.attentions.0.to_q.bias", pre);
    a->k_w = param_get(pl, SHAPE(c, c), "%s.attentions.0.to_k.weight", pre);
    a->k_b = param_get(pl, SHAPE(c), "%s.attentions.0.to_k.bias", pre);
    a->v_w = param_get(pl, SHAPE(c, c), "%s.attentions.0.to_v.weight", pre);
    a->v_b = param_get(pl, SHAPE(c), "%s.attentions.0.to_v.bias", pre);
    a->o_w = param_get(pl, SHAPE(c, c), "%s.attentions.0.to_out.0.weight", pre);
    a->o_b = param_get(pl, SHAPE(c), "%s.attentions.0.to_out.0.bias", pre);
}

// The (C, C, 3, 3) downsample kernel of level l as a (C, C, 4, 4) kernel
// with a zero first row and column (see the top of the file).
static Tensor vae_get_down_weight(ParamLoader *pl, int c, int level) {
    const Backend *be = pl->be;
    Tensor none = tensor_make(be->param_dtype, be->device, NULL, 4, (int64_t[]){c, c, 4, 4});
    if (pl->failed) return none;
    char name[128];
    snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv.weight", level);
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

static void vae_get_params(Vae *m, ParamLoader *pl) {
    const VaeConfig *c = &m->cfg;
    const int n = c->n_levels, L = c->latent_channels, lpb = c->layers_per_block;
    const int *bo = c->block_out;
    char pre[128];

    // encoder
    m->enc_in_w = param_get(pl, SHAPE(bo[0], c->in_channels, 3, 3), "encoder.conv_in.weight");
    m->enc_in_b = param_get(pl, SHAPE(bo[0]), "encoder.conv_in.bias");
    int ch = bo[0];
    for (int l = 0; l < n; l++) {
        for (int j = 0; j < lpb; j++) {
            snprintf(pre, sizeof pre, "encoder.down_blocks.%d.resnets.%d", l, j);
            vae_get_resnet(pl, &m->enc_res[l][j], j == 0 ? ch : bo[l], bo[l], pre);
        }
        ch = bo[l];
        if (l < n - 1) {
            m->enc_down_w[l] = vae_get_down_weight(pl, ch, l);
            m->enc_down_b[l] = param_get(pl, SHAPE(ch), "encoder.down_blocks.%d.downsamplers.0.conv.bias", l);
        }
    }
    vae_get_mid(pl, &m->enc_mid, ch, "encoder.mid_block");
    m->enc_norm_w = param_get(pl, SHAPE(ch), "encoder.conv_norm_out.weight");
    m->enc_norm_b = param_get(pl, SHAPE(ch), "encoder.conv_norm_out.bias");
    m->enc_out_w = param_get(pl, SHAPE(2 * L, ch, 3, 3), "encoder.conv_out.weight");
    m->enc_out_b = param_get(pl, SHAPE(2 * L), "encoder.conv_out.bias");
    Tensor qw = param_get(pl, SHAPE(2 * L, 2 * L, 1, 1), "quant_conv.weight");
    Tensor qb = param_get(pl, SHAPE(2 * L), "quant_conv.bias");
    m->quant_mean_w = tensor_rows(qw, 0, L);
    m->quant_mean_b = tensor_rows(qb, 0, L);
    m->quant_lv_w = tensor_rows(qw, L, L);
    m->quant_lv_b = tensor_rows(qb, L, L);

    // decoder
    m->post_quant_w = param_get(pl, SHAPE(L, L, 1, 1), "post_quant_conv.weight");
    m->post_quant_b = param_get(pl, SHAPE(L), "post_quant_conv.bias");
    ch = bo[n - 1];
    m->dec_in_w = param_get(pl, SHAPE(ch, L, 3, 3), "decoder.conv_in.weight");
    m->dec_in_b = param_get(pl, SHAPE(ch), "decoder.conv_in.bias");
    vae_get_mid(pl, &m->dec_mid, ch, "decoder.mid_block");
    for (int i = 0; i < n; i++) {
        int out = bo[n - 1 - i];
        for (int j = 0; j < lpb + 1; j++) {
            snprintf(pre, sizeof pre, "decoder.up_blocks.%d.resnets.%d", i, j);
            vae_get_resnet(pl, &m->dec_res[i][j], j == 0 ? ch : out, out, pre);
        }
        ch = out;
        if (i < n - 1) {
            m->dec_up_w[i] = param_get(pl, SHAPE(ch, ch, 3, 3), "decoder.up_blocks.%d.upsamplers.0.conv.weight", i);
            m->dec_up_b[i] = param_get(pl, SHAPE(ch), "decoder.up_blocks.%d.upsamplers.0.conv.bias", i);
        }
    }
    m->dec_norm_w = param_get(pl, SHAPE(ch), "decoder.conv_norm_out.weight");
    m->dec_norm_b = param_get(pl, SHAPE(ch), "decoder.conv_norm_out.bias");
    m->dec_out_w = param_get(pl, SHAPE(c->out_channels, ch, 3, 3), "decoder.conv_out.weight");
    m->dec_out_b = param_get(pl, SHAPE(c->out_channels), "decoder.conv_out.bias");
}

// ---- loading ---------------------------------------------------------------

int vae_load(Vae **out, const ModelFiles *mf, const Backend *be, SdcError *err) {
    *out = NULL;
    const VaeConfig *c = &model_files_info(mf)->vae;
    SDC_TRY(vae_check_config(c, err));
    Vae *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "vae_load: out of host memory");
    m->cfg = *c;
    m->be = be;
    // Pass 1 checks every name and shape and measures; pass 2 loads for real.
    Arena meas;
    arena_init_measure(&meas);
    ParamLoader pl = {.mf = mf, .comp = COMP_VAE, .be = be, .arena = &meas, .err = err};
    vae_get_params(m, &pl);
    int rc = pl.failed ? err->code : 0;
    if (!rc) rc = arena_init(&m->params, be, meas.peak, err);
    if (!rc) {
        pl = (ParamLoader){.mf = mf, .comp = COMP_VAE, .be = be, .arena = &m->params, .err = err};
        vae_get_params(m, &pl);
        rc = pl.failed ? err->code : 0;
    }
    if (rc) {
        sdc_err_wrap(err, "loading the vae");
        vae_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void vae_free(Vae *m) {
    if (!m) return;
    arena_free(&m->act);
    arena_free(&m->params);
    free(m->host_lv);
    free(m);
}

const VaeConfig *vae_config(const Vae *m) { return &m->cfg; }
size_t vae_param_bytes(const Vae *m) { return m->params.cap; }
size_t vae_activation_bytes(const Vae *m) { return m->act.cap; }

// ---- blocks --------------------------------------------------------------------

// One forward's context: the backend that runs (the real one or
// backend_measure()), its arena, and the real backend's activation dtype so a
// measuring run sizes exactly what the real one allocates.
typedef struct VaeRun {
    const Backend *be;
    Arena *a;
    DType act;
    int groups;
    float eps;
} VaeRun;

static Tensor run_view(const VaeRun *r, void *p, int64_t n, int64_t c, int64_t h, int64_t w) {
    return tensor_make(r->act, r->be->device, p, 4, (int64_t[]){n, c, h, w});
}

static void *run_alloc(VaeRun *r, int64_t elems) {
    return arena_alloc(r->a, (size_t)elems * dtype_size(r->act));
}

// ResnetBlock2D without time embedding: x (N, cin, h, w) in main ->
// (N, cout, h, w) in main. Temporaries: (N, max(cin, cout), h, w) and
// (N, cout, h, w).
static void vae_resnet(VaeRun *r, void *main, const VaeResnet *p, int64_t N, int64_t h, int64_t w) {
    const Backend *be = r->be;
    const int64_t cin = p->cin, cout = p->cout, cmax = cin > cout ? cin : cout;
    size_t mark = arena_mark(r->a);
    Tensor x = run_view(r, main, N, cin, h, w);  // (N, cin, h, w)
    void *t1 = run_alloc(r, N * cmax * h * w);
    Tensor t1_in = run_view(r, t1, N, cin, h, w);   // (N, cin, h, w)
    Tensor t1_out = run_view(r, t1, N, cout, h, w); // (N, cout, h, w), same memory
    Tensor t2 = run_view(r, run_alloc(r, N * cout * h * w), N, cout, h, w); // (N, cout, h, w)

    be->group_norm(be, &t1_in, &x, &p->n1_w, &p->n1_b, r->groups, r->eps, 1);
    be->conv2d(be, &t2, &t1_in, &p->c1_w, &p->c1_b, 1, 1);
    be->group_norm(be, &t1_out, &t2, &p->n2_w, &p->n2_b, r->groups, r->eps, 1);
    be->conv2d(be, &t2, &t1_out, &p->c2_w, &p->c2_b, 1, 1);
    if (cin != cout) {
        Tensor y = run_view(r, main, N, cout, h, w); // over x, which is no longer read
        be->conv2d(be, &t1_out, &x, &p->sc_w, &p->sc_b, 1, 0);
        be->add(be, &y, &t1_out, &t2);
    } else {
        be->add(be, &x, &x, &t2);
    }
    arena_reset(r->a, mark);
}

// Mid-block attention: x (N, C, h, w) in main, updated in place:
// x += to_out(attention(to_q(gn(x)), to_k(gn(x)), to_v(gn(x)))) with one head.
static void vae_attention(VaeRun *r, void *main, const VaeAttn *p, int64_t N, int64_t h, int64_t w) {
    const Backend *be = r->be;
    const int64_t C = p->c, S = h * w;
    size_t mark = arena_mark(r->a);
    Tensor x = run_view(r, main, N, C, h, w); // (N, C, h, w)
    void *tp = run_alloc(r, N * C * S);
    Tensor t = run_view(r, tp, N, C, h, w);                               // (N, C, h, w)
    Tensor t_seq = tensor_make(r->act, be->device, tp, 3, (int64_t[]){N, S, C}); // (N, S, C)
    Tensor s = arena_tensor(r->a, r->act, 3, (int64_t[]){N, S, C});       // (N, S, C)
    Tensor q = arena_tensor(r->a, r->act, 3, (int64_t[]){N, S, C});       // (N, S, C)
    Tensor k = arena_tensor(r->a, r->act, 3, (int64_t[]){N, S, C});       // (N, S, C)
    Tensor v = arena_tensor(r->a, r->act, 3, (int64_t[]){N, S, C});       // (N, S, C)

    be->group_norm(be, &t, &x, &p->gn_w, &p->gn_b, r->groups, r->eps, 0);
    be->nchw_to_nlc(be, &s, &t);
    be->linear(be, &q, &s, &p->q_w, &p->q_b);
    be->linear(be, &k, &s, &p->k_w, &p->k_b);
    be->linear(be, &v, &s, &p->v_w, &p->v_b);
    be->attention(be, &t_seq, &q, &k, &v, 1, 0);
    be->linear(be, &q, &t_seq, &p->o_w, &p->o_b);
    be->nlc_to_nchw(be, &t, &q);
    be->add(be, &x, &x, &t);
    arena_reset(r->a, mark);
}

static void vae_mid(VaeRun *r, void *main, const VaeMid *p, int64_t N, int64_t h, int64_t w) {
    vae_resnet(r, main, &p->r0, N, h, w);
    vae_attention(r, main, &p->attn, N, h, w);
    vae_resnet(r, main, &p->r1, N, h, w);
}

// ---- encoder -----------------------------------------------------------------

// Elements of the main buffer: the largest (channels x pixels) any block
// reads or writes at its resolution.
static int64_t vae_encoder_main_elems(const VaeConfig *c, int64_t N, int64_t H, int64_t W) {
    int64_t best = 0;
    for (int l = 0; l < c->n_levels; l++) {
        int64_t cin = l ? c->block_out[l - 1] : c->block_out[0];
        int64_t ch = cin > c->block_out[l] ? cin : c->block_out[l];
        int64_t e = N * ch * (H >> l) * (W >> l);
        if (e > best) best = e;
    }
    return best;
}

// image (N, 3, H, W) -> mean, logvar (N, L, H/f, W/f), f = 2^(levels-1).
// host_lv: (N, L, H/f, W/f) floats for the clamp (unused when measuring).
static void vae_encode_run(const Vae *m, VaeRun *r, const Tensor *image, Tensor *mean,
                           Tensor *logvar, float *host_lv) {
    const VaeConfig *c = &m->cfg;
    const Backend *be = r->be;
    const int n = c->n_levels, lpb = c->layers_per_block, L = c->latent_channels;
    const int64_t N = image->shape[0];
    int64_t h = image->shape[2], w = image->shape[3];
    size_t frame = arena_mark(r->a);
    void *main = run_alloc(r, vae_encoder_main_elems(c, N, h, w));

    int64_t ch = c->block_out[0];
    Tensor x = run_view(r, main, N, ch, h, w); // (N, C0, H, W)
    be->conv2d(be, &x, image, &m->enc_in_w, &m->enc_in_b, 1, 1);
    for (int l = 0; l < n; l++) {
        for (int j = 0; j < lpb; j++) vae_resnet(r, main, &m->enc_res[l][j], N, h, w);
        ch = c->block_out[l];
        if (l < n - 1) {
            size_t mark = arena_mark(r->a);
            Tensor src = run_view(r, main, N, ch, h, w);                                // (N, C, h, w)
            Tensor t = run_view(r, run_alloc(r, N * ch * (h / 2) * (w / 2)), N, ch, h / 2, w / 2); // (N, C, h/2, w/2)
            be->conv2d(be, &t, &src, &m->enc_down_w[l], &m->enc_down_b[l], 2, 1);
            h /= 2;
            w /= 2;
            Tensor dst = run_view(r, main, N, ch, h, w); // (N, C, h/2, w/2)
            be->copy(be, &dst, &t);
            arena_reset(r->a, mark);
        }
    }
    vae_mid(r, main, &m->enc_mid, N, h, w);

    Tensor xs = run_view(r, main, N, ch, h, w);                            // (N, Clast, h, w)
    Tensor t = run_view(r, run_alloc(r, N * ch * h * w), N, ch, h, w);     // (N, Clast, h, w)
    Tensor mom = run_view(r, run_alloc(r, N * 2 * L * h * w), N, 2 * L, h, w); // (N, 2L, h, w)
    be->group_norm(be, &t, &xs, &m->enc_norm_w, &m->enc_norm_b, r->groups, r->eps, 1);
    be->conv2d(be, &mom, &t, &m->enc_out_w, &m->enc_out_b, 1, 1);
    // quant_conv split by output rows: mean = rows 0..L-1, logvar = rows L..2L-1.
    be->conv2d(be, mean, &mom, &m->quant_mean_w, &m->quant_mean_b, 1, 0);
    be->conv2d(be, logvar, &mom, &m->quant_lv_w, &m->quant_lv_b, 1, 0);
    arena_reset(r->a, frame);

    // The backend has no clamp: round-trip the small logvar through the host.
    // host_lv NULL: the caller clamps (tiled encode clamps after blending).
    if (!r->a->measure && host_lv) {
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

// ---- decoder -----------------------------------------------------------------

static int64_t vae_decoder_main_elems(const VaeConfig *c, int64_t N, int64_t h, int64_t w) {
    const int n = c->n_levels;
    int64_t ch = c->block_out[n - 1];
    int64_t best = N * ch * h * w; // conv_in, mid block
    for (int i = 0; i < n; i++) {
        int64_t out = c->block_out[n - 1 - i];
        int64_t cm = ch > out ? ch : out;
        int64_t hi = h << i, wi = w << i;
        if (N * cm * hi * wi > best) best = N * cm * hi * wi;
        if (i < n - 1 && N * out * 4 * hi * wi > best) best = N * out * 4 * hi * wi; // upsampled
        ch = out;
    }
    return best;
}

// z (N, L, h, w) -> image (N, out, f*h, f*w).
static void vae_decode_run(const Vae *m, VaeRun *r, const Tensor *z, Tensor *image) {
    const VaeConfig *c = &m->cfg;
    const Backend *be = r->be;
    const int n = c->n_levels, lpb = c->layers_per_block, L = c->latent_channels;
    const int64_t N = z->shape[0];
    int64_t h = z->shape[2], w = z->shape[3];
    size_t frame = arena_mark(r->a);
    void *main = run_alloc(r, vae_decoder_main_elems(c, N, h, w));

    int64_t ch = c->block_out[n - 1];
    {
        size_t mark = arena_mark(r->a);
        Tensor t = run_view(r, run_alloc(r, N * L * h * w), N, L, h, w); // (N, L, h, w)
        Tensor x = run_view(r, main, N, ch, h, w);                         // (N, Clast, h, w)
        be->conv2d(be, &t, z, &m->post_quant_w, &m->post_quant_b, 1, 0);
        be->conv2d(be, &x, &t, &m->dec_in_w, &m->dec_in_b, 1, 1);
        arena_reset(r->a, mark);
    }
    vae_mid(r, main, &m->dec_mid, N, h, w);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < lpb + 1; j++) vae_resnet(r, main, &m->dec_res[i][j], N, h, w);
        ch = c->block_out[n - 1 - i];
        if (i < n - 1) {
            size_t mark = arena_mark(r->a);
            Tensor x = run_view(r, main, N, ch, h, w);                                     // (N, C, h, w)
            Tensor u = run_view(r, run_alloc(r, N * ch * 4 * h * w), N, ch, 2 * h, 2 * w); // (N, C, 2h, 2w)
            be->upsample_nearest2x(be, &u, &x);
            h *= 2;
            w *= 2;
            Tensor y = run_view(r, main, N, ch, h, w); // (N, C, 2h, 2w) over x, already read
            be->conv2d(be, &y, &u, &m->dec_up_w[i], &m->dec_up_b[i], 1, 1);
            arena_reset(r->a, mark);
        }
    }
    Tensor xs = run_view(r, main, N, ch, h, w);                        // (N, C0, H, W)
    Tensor t = run_view(r, run_alloc(r, N * ch * h * w), N, ch, h, w); // (N, C0, H, W)
    be->group_norm(be, &t, &xs, &m->dec_norm_w, &m->dec_norm_b, r->groups, r->eps, 1);
    be->conv2d(be, image, &t, &m->dec_out_w, &m->dec_out_b, 1, 1);
    arena_reset(r->a, frame);
}

static int vae_factor(const VaeConfig *c) { return 1 << (c->n_levels - 1); }

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

static VaeTileBufs vae_tile_bufs(VaeRun *r, const VaeConfig *c, const VaeGrid *g) {
    VaeTileBufs b = {0};
    b.in = run_alloc(r, g->pin * g->tin_h * g->tin_w);
    if (g->decode) {
        b.out0 = run_alloc(r, g->N * c->out_channels * g->tout_h * g->tout_w);
    } else {
        b.out0 = run_alloc(r, g->N * c->latent_channels * g->tout_h * g->tout_w);
        b.out1 = run_alloc(r, g->N * c->latent_channels * g->tout_h * g->tout_w);
    }
    return b;
}

// Activation bytes of a tiled pass: the device tiles plus one pass over the
// largest tile (smaller edge tiles need less).
static size_t vae_measure_grid(const Vae *m, DType act, const VaeGrid *g) {
    const VaeConfig *c = &m->cfg;
    const Backend *mb = backend_measure();
    Arena a;
    arena_init_measure(&a);
    VaeRun r = {.be = mb, .a = &a, .act = act, .groups = c->norm_groups, .eps = c->norm_eps};
    VaeTileBufs b = vae_tile_bufs(&r, c, g);
    Tensor in = run_view(&r, b.in, g->N, g->cin, g->tin_h, g->tin_w);
    if (g->decode) {
        Tensor out = run_view(&r, b.out0, g->N, c->out_channels, g->tout_h, g->tout_w);
        vae_decode_run(m, &r, &in, &out);
    } else {
        Tensor mean = run_view(&r, b.out0, g->N, c->latent_channels, g->tout_h, g->tout_w);
        Tensor lv = run_view(&r, b.out1, g->N, c->latent_channels, g->tout_h, g->tout_w);
        vae_encode_run(m, &r, &in, &mean, &lv, NULL);
    }
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

    VaeRun r = {.be = be, .a = &m->act, .act = be->act_dtype, .groups = c->norm_groups, .eps = c->norm_eps};
    size_t frame = arena_mark(&m->act);
    VaeTileBufs b = vae_tile_bufs(&r, c, g);
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
            Tensor ti = run_view(&r, b.in, g->N, g->cin, hi, wi); // (N, cin, hi, wi)
            backend_upload_f32(be, &ti, tbuf, (size_t)(g->pin * hi * wi));
            float *dst = slots + (cur + ix) * slot; // (pout, ho, wo)
            if (g->decode) {
                Tensor to = run_view(&r, b.out0, g->N, c->out_channels, ho, wo); // (N, out, ho, wo)
                vae_decode_run(m, &r, &ti, &to);
                be->sync(be);
                backend_download_f32(be, dst, &to, (size_t)(g->pout * ho * wo));
            } else {
                Tensor tm = run_view(&r, b.out0, g->N, c->latent_channels, ho, wo); // (N, L, ho, wo)
                Tensor tl = run_view(&r, b.out1, g->N, c->latent_channels, ho, wo); // (N, L, ho, wo)
                vae_encode_run(m, &r, &ti, &tm, &tl, NULL);
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
// where t asks for it and the size exceeds one tile.
static void vae_measure(const Vae *m, DType act, int64_t N, int64_t H, int64_t W, const VaeTiling *t,
                        size_t *enc, size_t *dec) {
    const VaeConfig *c = &m->cfg;
    const Backend *mb = backend_measure();
    const int64_t f = vae_factor(c), L = c->latent_channels;
    VaeGrid g;
    VaeRun r = {.be = mb, .act = act, .groups = c->norm_groups, .eps = c->norm_eps};
    Tensor img = tensor_make(act, mb->device, NULL, 4, (int64_t[]){N, c->in_channels, H, W});
    Tensor lat = tensor_make(act, mb->device, NULL, 4, (int64_t[]){N, L, H / f, W / f});
    Tensor lat2 = lat;
    Tensor out = tensor_make(act, mb->device, NULL, 4, (int64_t[]){N, c->out_channels, H, W});
    Arena a;
    r.a = &a;
    if (vae_grid(c, 0, N, H, W, t, &g)) {
        *enc = vae_measure_grid(m, act, &g);
    } else {
        arena_init_measure(&a);
        vae_encode_run(m, &r, &img, &lat, &lat2, NULL);
        *enc = a.peak;
    }
    if (vae_grid(c, 1, N, H / f, W / f, t, &g)) {
        *dec = vae_measure_grid(m, act, &g);
    } else {
        arena_init_measure(&a);
        vae_decode_run(m, &r, &lat, &out);
        *dec = a.peak;
    }
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
    Vae *m = calloc(1, sizeof *m); // parameters stay empty: the measure backend reads none
    if (!m) return sdc_err(err, SDC_ERR_OOM, "vae_plan: out of host memory");
    m->cfg = *cfg;
    // The resnets' channel counts are all the forward needs from the params.
    const int n = cfg->n_levels, lpb = cfg->layers_per_block;
    const int *bo = cfg->block_out;
    int ch = bo[0];
    for (int l = 0; l < n; l++) {
        for (int j = 0; j < lpb; j++)
            m->enc_res[l][j] = (VaeResnet){.cin = j == 0 ? ch : bo[l], .cout = bo[l]};
        ch = bo[l];
    }
    m->enc_mid.r0 = m->enc_mid.r1 = (VaeResnet){.cin = ch, .cout = ch};
    m->enc_mid.attn.c = ch;
    m->dec_mid = m->enc_mid;
    for (int i = 0; i < n; i++) {
        int out = bo[n - 1 - i];
        for (int j = 0; j < lpb + 1; j++)
            m->dec_res[i][j] = (VaeResnet){.cin = j == 0 ? ch : out, .cout = out};
        ch = out;
    }
    vae_measure(m, act, batch, height, width, t, encode_bytes, decode_bytes);
    free(m);
    return 0;
}

int vae_plan(const VaeConfig *cfg, DType act, int batch, int height, int width,
             size_t *encode_bytes, size_t *decode_bytes, SdcError *err) {
    return vae_plan_tiled(cfg, act, batch, height, width, NULL, encode_bytes, decode_bytes, err);
}

VaeTiling vae_tiling_auto(const VaeConfig *cfg, DType act, int batch, int height, int width) {
    const VaeTiling none = {0, 0}, dflt = {VAE_TILE_DEFAULT, VAE_TILE_DEFAULT / 4};
    size_t enc, dec;
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
    vae_measure(m, m->be->act_dtype, batch, height, width, t, &enc, &dec);
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
    vae_measure(m, m->be->act_dtype, N, H, W, t, &enc, &dec);
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
    VaeRun r = {.be = m->be, .a = &m->act, .act = m->be->act_dtype, .groups = c->norm_groups,
                .eps = c->norm_eps};
    vae_encode_run(m, &r, image, mean, logvar, m->host_lv);
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
    VaeRun r = {.be = m->be, .a = &m->act, .act = m->be->act_dtype, .groups = c->norm_groups,
                .eps = c->norm_eps};
    vae_decode_run(m, &r, z, image);
    return backend_status(m->be, err);
}

int vae_decode(Vae *m, const Tensor *z, Tensor *image, SdcError *err) {
    return vae_decode_tiled(m, z, image, NULL, err);
}
