// clip_train.c: training the CLIP text encoder (clip.h, "training"): a
// forward pass that keeps every activation its backward needs, the backward
// pass over the backend's backward ops, and LoRA on the attention
// projections. It is the reference CPU fp32 version (the backward ops exist
// only there), proven equal to torch autograd by tests/test_clip_grad.c. It
// does not recompute anything to save memory: a text encoder's activations
// are small next to the UNet's (SD 1.5: ~43 MiB per prompt).
//
// Reads top to bottom: state, activation plan, LoRA, forward, backward,
// reserve and the public entry points.
//
// Shapes: B prompts, L = max_positions, D = hidden, I = intermediate,
// r = LoRA rank, N = the layers the default output runs through.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "models/clip.h"
#include "models/clip_internal.h"
#include "sampling/rng.h"

// ---- state -------------------------------------------------------------------

enum { PROJ_Q, PROJ_K, PROJ_V, PROJ_O, N_PROJ };
static const char *const PROJ_NAME[N_PROJ] = {"q_proj", "k_proj", "v_proj", "out_proj"};

// One projection's adapter: y = W x + b + up(scale * down(x)).
typedef struct ClipLora {
    Tensor down, up;     // (r, D), (D, r) in the LoRA arena
    Tensor d_down, d_up; // their gradients, same offsets in the LoRA gradient arena
} ClipLora;

// What layer i's backward reads, saved by the forward.
typedef struct ClipSaved {
    Tensor x1;           // (B, L, D) layer_norm1(h[i])
    Tensor q, k, v;      // (B, L, D) projections, heads interleaved (H*Dh)
    Tensor o;            // (B, L, D) attention output, before out_proj
    Tensor h_mid;        // (B, L, D) residual stream after the attention branch
    Tensor x2;           // (B, L, D) layer_norm2(h_mid)
    Tensor f_pre, f_act; // (B, L, I) fc1 output, after (quick_)gelu
    Tensor u[N_PROJ];    // (B, L, r) LoRA: scale * down(x) of q, k, v, out
} ClipSaved;

struct ClipTrain {
    ClipTrainOpts opts;
    int n_layers;  // N
    float scale;   // alpha / r
    // full training: gradients at the parameters' offsets in their own arena
    Arena grads;
    ClipLayer *dl; // (N) gradient views of each layer's parameters; NULL with LoRA
    Tensor d_tok, d_pos, d_fln_w, d_fln_b;
    // LoRA: adapters (N * N_PROJ, layer-major), their arena, gradients and names
    Arena lora, lora_grads;
    ClipLora *ad;
    ParamTable lora_table;
    // activations, carved from act by plan_activations for the current batch
    Arena act;
    int reserved_batch;
    int batch;          // of the last forward; 0: nothing to run backward on
    int32_t *pos_ids;   // (reserved_batch, L) host: 0..L-1 per prompt
    Tensor ids, pos;    // (B, L) I32
    Tensor *h;          // (N + 1) of (B, L, D): h[i] enters layer i, h[N] the final LN
    ClipSaved *s;       // (N)
    Tensor g;           // (B, L, D) backward: d loss / d residual stream
    Tensor t1, t2;      // (B, L, D) branch outputs (forward), input grads (backward)
    Tensor dq, dk, dv;  // (B, L, D)
    Tensor df;          // (B, L, I)
    Tensor du;          // (B, L, r)
};

static int lora_on(const ClipTrain *tr) { return tr->opts.lora_rank > 0; }

// ---- activation plan ---------------------------------------------------------

// Carves every activation of a training step for B prompts out of a, in one
// fixed layout: forward and backward then allocate nothing. Against a
// measuring arena it only sizes them.
static void plan_activations(ClipTrain *tr, const ClipConfig *c, Arena *a, int B) {
    const int64_t L = c->max_positions, D = c->hidden, I = c->intermediate, r = tr->opts.lora_rank;
    tr->ids = ARENA_DT(a, DT_I32, B, L);
    tr->pos = ARENA_DT(a, DT_I32, B, L);
    for (int i = 0; i <= tr->n_layers; i++) tr->h[i] = ARENA_F32(a, B, L, D);
    for (int i = 0; i < tr->n_layers; i++) {
        ClipSaved *s = &tr->s[i];
        s->x1 = ARENA_F32(a, B, L, D);
        s->q = ARENA_F32(a, B, L, D);
        s->k = ARENA_F32(a, B, L, D);
        s->v = ARENA_F32(a, B, L, D);
        s->o = ARENA_F32(a, B, L, D);
        s->h_mid = ARENA_F32(a, B, L, D);
        s->x2 = ARENA_F32(a, B, L, D);
        s->f_pre = ARENA_F32(a, B, L, I);
        s->f_act = ARENA_F32(a, B, L, I);
        for (int j = 0; j < N_PROJ; j++) s->u[j] = r ? ARENA_F32(a, B, L, r) : (Tensor){0};
    }
    tr->g = ARENA_F32(a, B, L, D);
    tr->t1 = ARENA_F32(a, B, L, D);
    tr->t2 = ARENA_F32(a, B, L, D);
    tr->dq = ARENA_F32(a, B, L, D);
    tr->dk = ARENA_F32(a, B, L, D);
    tr->dv = ARENA_F32(a, B, L, D);
    tr->df = ARENA_F32(a, B, L, I);
    tr->du = r ? ARENA_F32(a, B, L, r) : (Tensor){0};
}

// ---- parameters: gradient views and LoRA ---------------------------------------

// The gradient of parameter p: the same offset in the gradient arena.
static Tensor grad_of(const ClipModel *m, const ClipTrain *tr, Tensor p) {
    size_t off = (size_t)((char *)p.data - m->params.base);
    SDC_CHECK((char *)p.data >= m->params.base && off + tensor_bytes(&p) <= m->params.cap);
    p.data = tr->grads.base + off;
    return p;
}

// Gradient views of every parameter, for full training.
static void map_grads(const ClipModel *m, ClipTrain *tr) {
    // ClipLayer is nothing but Tensors: walk it as an array.
    _Static_assert(sizeof(ClipLayer) % sizeof(Tensor) == 0, "ClipLayer holds only Tensors");
    const int per_layer = (int)(sizeof(ClipLayer) / sizeof(Tensor));
    for (int i = 0; i < tr->n_layers; i++) {
        const Tensor *p = (const Tensor *)&m->layers[i];
        Tensor *d = (Tensor *)&tr->dl[i];
        for (int j = 0; j < per_layer; j++) d[j] = grad_of(m, tr, p[j]);
    }
    tr->d_tok = grad_of(m, tr, m->tok_emb);
    tr->d_pos = grad_of(m, tr, m->pos_emb);
    tr->d_fln_w = grad_of(m, tr, m->fln_w);
    tr->d_fln_b = grad_of(m, tr, m->fln_b);
}

// Carves the adapters (and, with grads, their gradients at the same offsets).
static void carve_lora(ClipTrain *tr, const ClipConfig *c, Arena *a, Arena *grads) {
    const int64_t D = c->hidden, r = tr->opts.lora_rank;
    for (int k = 0; k < tr->n_layers * N_PROJ; k++) {
        ClipLora *ad = &tr->ad[k];
        ad->down = ARENA_F32(a, r, D); // (r, D)
        ad->up = ARENA_F32(a, D, r);   // (D, r)
        if (grads) {
            ad->d_down = ARENA_F32(grads, r, D);
            ad->d_up = ARENA_F32(grads, D, r);
        }
    }
}

static int make_lora(ClipModel *m, ClipTrain *tr, SdcError *err) {
    const ClipConfig *c = &m->cfg;
    const int n = tr->n_layers * N_PROJ, r = tr->opts.lora_rank;
    tr->ad = calloc((size_t)n, sizeof *tr->ad);
    tr->lora_table.e = calloc((size_t)2 * n, sizeof *tr->lora_table.e);
    if (!tr->ad || !tr->lora_table.e) return sdc_err(err, SDC_ERR_OOM, "clip LoRA: out of host memory");
    tr->lora_table.cap = 2 * n;
    Arena meas;
    arena_init_measure(&meas);
    carve_lora(tr, c, &meas, NULL);
    SDC_TRY(arena_init(&tr->lora, m->be, meas.peak, err));
    SDC_TRY(arena_init(&tr->lora_grads, m->be, meas.peak, err));
    memset(tr->lora.base, 0, tr->lora.cap); // up (B) = 0, and the padding
    memset(tr->lora_grads.base, 0, tr->lora_grads.cap);
    carve_lora(tr, c, &tr->lora, &tr->lora_grads);
    // peft init_lora_weights="gaussian": nn.init.normal_(lora_A, std=1/r),
    // drawn in (layer, projection) order from one generator.
    Rng rng;
    rng_seed(&rng, tr->opts.lora_seed);
    for (int k = 0; k < n; k++) {
        ClipLora *ad = &tr->ad[k];
        float *a = tensor_f32p(&ad->down);
        size_t cnt = (size_t)tensor_numel(&ad->down);
        rng_normal(&rng, a, cnt);
        for (size_t i = 0; i < cnt; i++) a[i] *= 1.0f / (float)r;
        const char *fmt = "text_model.encoder.layers.%d.self_attn.%s.lora.%s.weight";
        ParamEntry *e = &tr->lora_table.e[tr->lora_table.n++];
        snprintf(e->name, sizeof e->name, fmt, k / N_PROJ, PROJ_NAME[k % N_PROJ], "down");
        e->t = ad->down;
        e = &tr->lora_table.e[tr->lora_table.n++];
        snprintf(e->name, sizeof e->name, fmt, k / N_PROJ, PROJ_NAME[k % N_PROJ], "up");
        e->t = ad->up;
    }
    return 0;
}

// ---- forward -----------------------------------------------------------------

// y = x W^T + b (+ up(scale * down(x)) with an adapter; u keeps scale * down(x)).
// tmp (same shape as y) must not alias y or x.
static void proj_forward(const Backend *be, float scale, Tensor *y, const Tensor *x, const Tensor *w,
                         const Tensor *b, const ClipLora *ad, Tensor *u, Tensor *tmp) {
    be->linear(be, y, x, w, b);
    if (!ad) return;
    be->linear(be, u, x, &ad->down, NULL);
    be->scale(be, u, u, scale);
    be->linear(be, tmp, u, &ad->up, NULL);
    be->add(be, y, y, tmp);
}

// clip_forward's computation (clip.c), op for op, keeping the activations.
static void train_forward(const ClipModel *m, ClipTrain *tr, const Backend *be, Arena *a,
                          const int32_t *ids, int B, Tensor *out) {
    const ClipConfig *c = &m->cfg;
    const size_t n_ids = (size_t)B * c->max_positions;
    arena_reset(a, 0);
    plan_activations(tr, c, a, B);
    be->upload(be, tr->ids.data, ids, n_ids * sizeof(int32_t));
    be->upload(be, tr->pos.data, tr->pos_ids, n_ids * sizeof(int32_t));

    be->embedding(be, &tr->h[0], &tr->ids, &m->tok_emb);
    be->embedding(be, &tr->t1, &tr->pos, &m->pos_emb);
    be->add(be, &tr->h[0], &tr->h[0], &tr->t1);

    for (int i = 0; i < tr->n_layers; i++) {
        const ClipLayer *l = &m->layers[i];
        ClipSaved *s = &tr->s[i];
        const ClipLora *ad = lora_on(tr) ? &tr->ad[i * N_PROJ] : NULL;
        be->layer_norm(be, &s->x1, &tr->h[i], &l->ln1_w, &l->ln1_b, c->ln_eps);
        proj_forward(be, tr->scale, &s->q, &s->x1, &l->q_w, &l->q_b, ad ? &ad[PROJ_Q] : NULL, &s->u[PROJ_Q], &tr->t2);
        proj_forward(be, tr->scale, &s->k, &s->x1, &l->k_w, &l->k_b, ad ? &ad[PROJ_K] : NULL, &s->u[PROJ_K], &tr->t2);
        proj_forward(be, tr->scale, &s->v, &s->x1, &l->v_w, &l->v_b, ad ? &ad[PROJ_V] : NULL, &s->u[PROJ_V], &tr->t2);
        be->attention(be, &s->o, &s->q, &s->k, &s->v, c->heads, 1);
        proj_forward(be, tr->scale, &tr->t1, &s->o, &l->o_w, &l->o_b, ad ? &ad[PROJ_O] : NULL, &s->u[PROJ_O], &tr->t2);
        be->add(be, &s->h_mid, &tr->h[i], &tr->t1);

        be->layer_norm(be, &s->x2, &s->h_mid, &l->ln2_w, &l->ln2_b, c->ln_eps);
        be->linear(be, &s->f_pre, &s->x2, &l->fc1_w, &l->fc1_b);
        if (c->act == ACT_GELU) be->gelu(be, &s->f_act, &s->f_pre);
        else be->quick_gelu(be, &s->f_act, &s->f_pre);
        be->linear(be, &tr->t1, &s->f_act, &l->fc2_w, &l->fc2_b);
        be->add(be, &tr->h[i + 1], &s->h_mid, &tr->t1);
    }
    be->layer_norm(be, out, &tr->h[tr->n_layers], &m->fln_w, &m->fln_b, c->ln_eps);
}

// ---- backward ----------------------------------------------------------------

// The backward of proj_forward: dx = d loss / d x (overwritten); dw, db
// (NULL when frozen) and the adapter's gradients accumulate. du is (B, L, r)
// scratch; tmp must not alias dx, dy or x.
static void proj_backward(const Backend *be, float scale, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                          const Tensor *x, const Tensor *w, ClipLora *ad, const Tensor *u, Tensor *du,
                          Tensor *tmp) {
    be->linear_backward(be, dx, dw, db, dy, x, w);
    if (!ad) return;
    be->linear_backward(be, du, &ad->d_up, NULL, dy, u, &ad->up); // d_up += dy^T u, du = dy up
    be->scale(be, du, du, scale);                                  // through u = scale * down(x)
    be->linear_backward(be, tmp, &ad->d_down, NULL, du, x, &ad->down);
    be->add(be, dx, dx, tmp);
}

static void train_backward(const ClipModel *m, ClipTrain *tr, const Backend *be, const Tensor *dout) {
    const ClipConfig *c = &m->cfg;
    const int full = !lora_on(tr);
    const float eps = c->ln_eps;
    Tensor *g = &tr->g, *t1 = &tr->t1, *t2 = &tr->t2, *du = &tr->du;
    // Parameter gradients: the views in tr->dl when training everything, else NULL (frozen).
#define GRAD(d, field) ((d) ? &(d)->field : NULL)
    be->layer_norm_backward(be, g, full ? &tr->d_fln_w : NULL, full ? &tr->d_fln_b : NULL, dout,
                            &tr->h[tr->n_layers], &m->fln_w, eps);
    for (int i = tr->n_layers - 1; i >= 0; i--) {
        const ClipLayer *l = &m->layers[i];
        const ClipSaved *s = &tr->s[i];
        ClipLayer *d = full ? &tr->dl[i] : NULL;
        ClipLora *ad = full ? NULL : &tr->ad[i * N_PROJ];
        // MLP branch: h[i+1] = h_mid + fc2(act(fc1(layer_norm2(h_mid)))); g = d h[i+1]
        be->linear_backward(be, &tr->df, GRAD(d, fc2_w), GRAD(d, fc2_b), g, &s->f_act, &l->fc2_w);
        if (c->act == ACT_GELU) be->gelu_backward(be, &tr->df, &tr->df, &s->f_pre);
        else be->quick_gelu_backward(be, &tr->df, &tr->df, &s->f_pre);
        be->linear_backward(be, t1, GRAD(d, fc1_w), GRAD(d, fc1_b), &tr->df, &s->x2, &l->fc1_w);
        be->layer_norm_backward(be, t2, GRAD(d, ln2_w), GRAD(d, ln2_b), t1, &s->h_mid, &l->ln2_w, eps);
        be->add(be, g, g, t2); // g = d h_mid
        // attention branch: h_mid = h[i] + out_proj(attention(q, k, v)), q/k/v of layer_norm1(h[i])
        proj_backward(be, tr->scale, t1, GRAD(d, o_w), GRAD(d, o_b), g, &s->o, &l->o_w, ad ? &ad[PROJ_O] : NULL,
                      &s->u[PROJ_O], du, t2); // t1 = d o
        be->attention_backward(be, &tr->dq, &tr->dk, &tr->dv, t1, &s->q, &s->k, &s->v, c->heads, 1);
        // d x1 = the sum over q, k, v; each proj_backward overwrites its dx
        proj_backward(be, tr->scale, t1, GRAD(d, q_w), GRAD(d, q_b), &tr->dq, &s->x1, &l->q_w,
                      ad ? &ad[PROJ_Q] : NULL, &s->u[PROJ_Q], du, t2);
        proj_backward(be, tr->scale, &tr->dq, GRAD(d, k_w), GRAD(d, k_b), &tr->dk, &s->x1, &l->k_w,
                      ad ? &ad[PROJ_K] : NULL, &s->u[PROJ_K], du, t2);
        be->add(be, t1, t1, &tr->dq);
        proj_backward(be, tr->scale, &tr->dk, GRAD(d, v_w), GRAD(d, v_b), &tr->dv, &s->x1, &l->v_w,
                      ad ? &ad[PROJ_V] : NULL, &s->u[PROJ_V], du, t2);
        be->add(be, t1, t1, &tr->dk);
        if (i == 0 && !full) break; // d h[0] feeds only the (frozen) embeddings
        be->layer_norm_backward(be, t2, GRAD(d, ln1_w), GRAD(d, ln1_b), t1, &tr->h[i], &l->ln1_w, eps);
        be->add(be, g, g, t2); // g = d h[i]
    }
#undef GRAD
    if (full) { // h[0] = tok_emb[ids] + pos_emb[0..L-1]
        be->embedding_backward(be, &tr->d_tok, &tr->ids, g);
        be->embedding_backward(be, &tr->d_pos, &tr->pos, g);
    }
}

// ---- reserve -----------------------------------------------------------------

void clip_train_free(ClipModel *m) {
    ClipTrain *tr = m->train;
    if (!tr) return;
    arena_free(&tr->act);
    arena_free(&tr->grads);
    arena_free(&tr->lora);
    arena_free(&tr->lora_grads);
    param_table_free(&tr->lora_table);
    free(tr->ad);
    free(tr->dl);
    free(tr->h);
    free(tr->s);
    free(tr->pos_ids);
    free(tr);
    m->train = NULL;
}

// Sizes the activations of a step for `batch` prompts with a measuring
// forward and backward, then allocates them once.
static int plan_batch(ClipModel *m, ClipTrain *tr, int batch, SdcError *err) {
    const ClipConfig *c = &m->cfg;
    const int64_t L = c->max_positions;
    arena_free(&tr->act);
    free(tr->pos_ids);
    tr->pos_ids = malloc((size_t)batch * L * sizeof(int32_t));
    tr->reserved_batch = tr->batch = 0;
    if (!tr->pos_ids) return sdc_err(err, SDC_ERR_OOM, "clip_train_reserve: out of host memory");
    for (int b = 0; b < batch; b++)
        for (int64_t i = 0; i < L; i++) tr->pos_ids[b * L + i] = (int32_t)i;

    const Backend *mb = backend_measure();
    Arena meas;
    arena_init_measure(&meas);
    int64_t shape[3] = {batch, L, c->hidden};
    Tensor out = tensor_make(DT_F32, mb->device, NULL, 3, shape);
    train_forward(m, tr, mb, &meas, NULL, batch, &out);
    train_backward(m, tr, mb, &out);
    SDC_TRY(arena_init(&tr->act, m->be, meas.peak, err));
    tr->reserved_batch = batch;
    return 0;
}

int clip_train_reserve(ClipModel *m, const ClipTrainOpts *o, int batch, SdcError *err) {
    const ClipConfig *c = &m->cfg;
    const Backend *be = m->be;
    if (batch <= 0) return sdc_err(err, SDC_ERR_ARG, "clip_train_reserve: batch %d must be >= 1", batch);
    if (be->device != DEV_CPU || be->act_dtype != DT_F32 || be->param_dtype != DT_F32 || !be->linear_backward)
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "text encoder training needs the CPU backend in fp32 (got %s, %s)\n"
                       "---> use --device cpu for training",
                       be->name, dtype_name(be->act_dtype));
    if (o->lora_rank < 0 || (o->lora_rank > 0 && !(o->lora_alpha > 0)))
        return sdc_err(err, SDC_ERR_ARG, "text encoder LoRA: rank %d, alpha %g\n"
                       "---> use a rank >= 1 and alpha > 0 (diffusers' default: alpha = rank), "
                       "or rank 0 to train every parameter", o->lora_rank, (double)o->lora_alpha);
    if (o->lora_rank == 0 && m->table.n == 0)
        return sdc_err(err, SDC_ERR_ARG,
                       "training every text-encoder parameter needs them loaded trainable\n"
                       "---> load with clip_load_opts(.., &(ModelLoadOpts){.trainable = 1}, ..), "
                       "or train LoRA (lora_rank > 0)");

    ClipTrain *tr = m->train;
    if (tr) {
        const ClipTrainOpts *p = &tr->opts;
        if (p->lora_rank != o->lora_rank || (o->lora_rank &&
            (p->lora_alpha != o->lora_alpha || p->lora_seed != o->lora_seed)))
            return sdc_err(err, SDC_ERR_ARG,
                           "clip_train_reserve: already set up for %s, asked for %s\n"
                           "---> one training setup per loaded model (clip_free and load again)",
                           p->lora_rank ? "LoRA" : "full training", o->lora_rank ? "LoRA" : "full training");
        if (batch <= tr->reserved_batch) return 0;
        return plan_batch(m, tr, batch, err);
    }

    tr = m->train = calloc(1, sizeof *tr);
    if (!tr) return sdc_err(err, SDC_ERR_OOM, "clip_train_reserve: out of host memory");
    tr->opts = *o;
    tr->n_layers = clip_default_layers(c);
    tr->scale = o->lora_rank ? o->lora_alpha / (float)o->lora_rank : 0.0f;
    tr->h = calloc((size_t)tr->n_layers + 1, sizeof *tr->h);
    tr->s = calloc((size_t)tr->n_layers, sizeof *tr->s);
    int rc = (!tr->h || !tr->s) ? sdc_err(err, SDC_ERR_OOM, "clip_train_reserve: out of host memory") : 0;
    if (!rc && lora_on(tr)) {
        rc = make_lora(m, tr, err);
    } else if (!rc) {
        tr->dl = calloc((size_t)tr->n_layers, sizeof *tr->dl);
        rc = tr->dl ? arena_init(&tr->grads, be, m->params.cap, err)
                    : sdc_err(err, SDC_ERR_OOM, "clip_train_reserve: out of host memory");
        if (!rc) {
            memset(tr->grads.base, 0, tr->grads.cap);
            map_grads(m, tr);
        }
    }
    if (!rc) rc = plan_batch(m, tr, batch, err);
    if (rc) {
        sdc_err_wrap(err, "planning text-encoder training");
        clip_train_free(m);
    }
    return rc;
}

// ---- entry points --------------------------------------------------------------

int clip_train_forward(ClipModel *m, const int32_t *ids, int batch, Tensor *out, SdcError *err) {
    const ClipConfig *c = &m->cfg;
    ClipTrain *tr = m->train;
    if (!tr)
        return sdc_err(err, SDC_ERR_ARG, "clip_train_forward: nothing planned\n"
                       "---> call clip_train_reserve first");
    if (batch <= 0 || !ids) return sdc_err(err, SDC_ERR_ARG, "clip_train_forward: no token ids (batch %d)", batch);
    Tensor want = tensor_make(DT_F32, DEV_CPU, out->data, 3, (int64_t[]){batch, c->max_positions, c->hidden});
    if (!out->data || !tensor_same_shape(out, &want) || out->dtype != DT_F32 || out->device != DEV_CPU) {
        char got[64], exp[64];
        return sdc_err(err, SDC_ERR_ARG, "clip_train_forward: output tensor %s %s, expected %s F32 on cpu",
                       tensor_shape_str(out, got, sizeof got), dtype_name(out->dtype),
                       tensor_shape_str(&want, exp, sizeof exp));
    }
    for (int64_t i = 0; i < (int64_t)batch * c->max_positions; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return sdc_err(err, SDC_ERR_ARG, "clip_train_forward: token id %d at position %lld is outside "
                           "the vocabulary [0, %d)\n---> is the tokenizer the model's own?",
                           ids[i], (long long)i, c->vocab_size);
    if (batch > tr->reserved_batch) SDC_TRY(plan_batch(m, tr, batch, err));
    train_forward(m, tr, m->be, &tr->act, ids, batch, out);
    tr->batch = batch;
    return 0;
}

int clip_train_backward(ClipModel *m, const Tensor *dout, SdcError *err) {
    const ClipConfig *c = &m->cfg;
    ClipTrain *tr = m->train;
    if (!tr || !tr->batch)
        return sdc_err(err, SDC_ERR_ARG, "clip_train_backward: no forward pass to differentiate\n"
                       "---> call clip_train_forward first");
    Tensor want = tensor_make(DT_F32, DEV_CPU, dout->data, 3,
                              (int64_t[]){tr->batch, c->max_positions, c->hidden});
    if (!dout->data || !tensor_same_shape(dout, &want) || dout->dtype != DT_F32 || dout->device != DEV_CPU) {
        char got[64], exp[64];
        return sdc_err(err, SDC_ERR_ARG, "clip_train_backward: dout %s %s, expected %s F32 (the last forward's)",
                       tensor_shape_str(dout, got, sizeof got), dtype_name(dout->dtype),
                       tensor_shape_str(&want, exp, sizeof exp));
    }
    train_backward(m, tr, m->be, dout);
    return 0;
}

void clip_trainables(ClipModel *m, float **params, float **grads, size_t *n) {
    const ClipTrain *tr = m->train;
    *params = *grads = NULL;
    *n = 0;
    if (!tr) return;
    const Arena *p = lora_on(tr) ? &tr->lora : &m->params;
    const Arena *g = lora_on(tr) ? &tr->lora_grads : &tr->grads;
    *params = (float *)p->base;
    *grads = (float *)g->base;
    *n = p->cap / sizeof(float);
}

const ParamTable *clip_train_table(const ClipModel *m) {
    if (!m->train) return NULL;
    return lora_on(m->train) ? &m->train->lora_table : &m->table;
}

size_t clip_train_bytes(const ClipModel *m) {
    const ClipTrain *tr = m->train;
    if (!tr) return 0;
    return tr->act.cap + tr->grads.cap + tr->lora.cap + tr->lora_grads.cap;
}
