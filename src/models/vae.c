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
    if (!r->a->measure) {
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

// ---- planning ----------------------------------------------------------------

static int vae_factor(const VaeConfig *c) { return 1 << (c->n_levels - 1); }

// Measures the activation bytes of encode and decode of (N, in, H, W).
static void vae_measure(const Vae *m, DType act, int64_t N, int64_t H, int64_t W, size_t *enc,
                        size_t *dec) {
    const VaeConfig *c = &m->cfg;
    const Backend *mb = backend_measure();
    const int64_t f = vae_factor(c), L = c->latent_channels;
    VaeRun r = {.be = mb, .act = act, .groups = c->norm_groups, .eps = c->norm_eps};
    Tensor img = tensor_make(act, mb->device, NULL, 4, (int64_t[]){N, c->in_channels, H, W});
    Tensor lat = tensor_make(act, mb->device, NULL, 4, (int64_t[]){N, L, H / f, W / f});
    Tensor lat2 = lat;
    Tensor out = tensor_make(act, mb->device, NULL, 4, (int64_t[]){N, c->out_channels, H, W});
    Arena a;
    arena_init_measure(&a);
    r.a = &a;
    vae_encode_run(m, &r, &img, &lat, &lat2, NULL);
    *enc = a.peak;
    arena_init_measure(&a);
    vae_decode_run(m, &r, &lat, &out);
    *dec = a.peak;
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

int vae_plan(const VaeConfig *cfg, DType act, int batch, int height, int width,
             size_t *encode_bytes, size_t *decode_bytes, SdcError *err) {
    SDC_TRY(vae_check_config(cfg, err));
    SDC_TRY(vae_check_size(cfg, batch, height, width, "vae_plan", err));
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
    vae_measure(m, act, batch, height, width, encode_bytes, decode_bytes);
    free(m);
    return 0;
}

int vae_reserve(Vae *m, int batch, int height, int width, SdcError *err) {
    SDC_TRY(vae_check_size(&m->cfg, batch, height, width, "vae_reserve", err));
    size_t enc, dec;
    vae_measure(m, m->be->act_dtype, batch, height, width, &enc, &dec);
    size_t need = enc > dec ? enc : dec;
    int64_t f = vae_factor(&m->cfg);
    size_t lv_n = (size_t)batch * m->cfg.latent_channels * (height / f) * (width / f);
    if (need > m->act.cap) {
        arena_free(&m->act);
        SDC_TRY(arena_init(&m->act, m->be, need, err));
    }
    if (lv_n > m->host_lv_n) {
        free(m->host_lv);
        m->host_lv_n = 0;
        m->host_lv = malloc(lv_n * sizeof(float));
        if (!m->host_lv) return sdc_err(err, SDC_ERR_OOM, "vae_reserve: out of host memory");
        m->host_lv_n = lv_n;
    }
    return 0;
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

// Makes sure the arena fits a pass of (N, H, W); plans it on first use.
static int vae_ensure(Vae *m, int64_t N, int64_t H, int64_t W, int decode, const char *who,
                      SdcError *err) {
    if (m->act.cap == 0) return vae_reserve(m, (int)N, (int)H, (int)W, err);
    size_t enc, dec;
    vae_measure(m, m->be->act_dtype, N, H, W, &enc, &dec);
    size_t need = decode ? dec : enc;
    int64_t f = vae_factor(&m->cfg);
    size_t lv_n = (size_t)N * m->cfg.latent_channels * (H / f) * (W / f);
    if (need > m->act.cap || (!decode && lv_n > m->host_lv_n))
        return sdc_err(err, SDC_ERR_ARG,
                       "%s of %lld images of %lldx%lld needs %.1f MiB of activations, "
                       "vae_reserve planned %.1f MiB\n"
                       "---> call vae_reserve with the largest batch and size first",
                       who, (long long)N, (long long)H, (long long)W, (double)need / (1 << 20),
                       (double)m->act.cap / (1 << 20));
    return 0;
}

int vae_encode(Vae *m, const Tensor *image, Tensor *mean, Tensor *logvar, SdcError *err) {
    const VaeConfig *c = &m->cfg;
    if (image->ndim != 4)
        return sdc_err(err, SDC_ERR_ARG, "vae_encode: image has %d dims, expected (N, %d, H, W)",
                       image->ndim, c->in_channels);
    int64_t N = image->shape[0], H = image->shape[2], W = image->shape[3], f = vae_factor(c);
    SDC_TRY(vae_check_size(c, N, H, W, "vae_encode", err));
    SDC_TRY(vae_check_tensor(m, image, "vae_encode", "image", (int64_t[]){N, c->in_channels, H, W}, err));
    int64_t lat[4] = {N, c->latent_channels, H / f, W / f};
    SDC_TRY(vae_check_tensor(m, mean, "vae_encode", "mean", lat, err));
    SDC_TRY(vae_check_tensor(m, logvar, "vae_encode", "logvar", lat, err));
    SDC_TRY(vae_ensure(m, N, H, W, 0, "vae_encode", err));
    VaeRun r = {.be = m->be, .a = &m->act, .act = m->be->act_dtype, .groups = c->norm_groups,
                .eps = c->norm_eps};
    vae_encode_run(m, &r, image, mean, logvar, m->host_lv);
    return 0;
}

int vae_decode(Vae *m, const Tensor *z, Tensor *image, SdcError *err) {
    const VaeConfig *c = &m->cfg;
    if (z->ndim != 4)
        return sdc_err(err, SDC_ERR_ARG, "vae_decode: latent has %d dims, expected (N, %d, h, w)",
                       z->ndim, c->latent_channels);
    int64_t N = z->shape[0], f = vae_factor(c), H = z->shape[2] * f, W = z->shape[3] * f;
    SDC_TRY(vae_check_size(c, N, H, W, "vae_decode", err));
    SDC_TRY(vae_check_tensor(m, z, "vae_decode", "latent", (int64_t[]){N, c->latent_channels, H / f, W / f}, err));
    SDC_TRY(vae_check_tensor(m, image, "vae_decode", "image", (int64_t[]){N, c->out_channels, H, W}, err));
    SDC_TRY(vae_ensure(m, N, H, W, 1, "vae_decode", err));
    VaeRun r = {.be = m->be, .a = &m->act, .act = m->be->act_dtype, .groups = c->norm_groups,
                .eps = c->norm_eps};
    vae_decode_run(m, &r, z, image);
    return 0;
}
