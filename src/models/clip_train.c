// clip_train.c: training the CLIP text encoder (clip.h, "training"): the
// blocks' one forward (clip.c) keeping every save its backward reads, the
// backward pass over the backend's backward ops, and LoRA on the attention
// projections. Proven equal to torch autograd by tests/test_clip_grad.c. It
// does not recompute anything to save memory: a text encoder's activations
// are small next to the UNet's (SD 1.5: ~43 MiB per prompt).
//
// Reads top to bottom: state, LoRA, forward, backward, reserve and the
// public entry points.
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

static const char *const PROJ_NAME[CLIP_N_PROJ] = {"q_proj", "k_proj", "v_proj", "out_proj"};

struct ClipTrain {
    ClipTrainOpts opts;
    int n_layers;  // N
    // full training: gradients at the parameters' offsets in their own arena
    Arena grads;
    // LoRA: adapters (N * CLIP_N_PROJ, layer-major) in their arena, gradients at the same offsets, names
    Arena lora, lora_grads;
    ParamTable lora_table;
    // full training with hidden_only: the load table less the last layer and the final norm
    ParamTable full_table;
    // activations, planned for reserved_batch prompts by a measuring forward + backward
    Arena keep;         // what the forward keeps: ids, positions, every layer's saves
    Arena work, gwork;  // forward / backward temporaries
    int reserved_batch;
    int batch;          // of the last forward; 0: nothing to run backward on
    int32_t *pos_ids;   // (reserved_batch, L) host: 0..L-1 per prompt
    Tensor ids, pos;    // (B, L) I32
    Tensor h0;          // (B, L, D) the embeddings' output
    // SDXL (opts.xl, a model with a projection): the pooled output's path
    Tensor hn;          // (B, L, D) final_layer_norm(the last layer's output)
    Tensor rows;        // (B, D) hn at each prompt's EOS
    int *eos;           // (reserved_batch) the EOS position of each prompt
    int pooled;         // the last forward made the pooled output
    ClipLayerSave *s;   // (N)
    const Backend *be;  // the model's, or backend_measure() while planning
};

static int lora_on(const ClipTrain *tr) { return tr->opts.lora_rank > 0; }

static Pass fwd_pass(const ClipModel *m, ClipTrain *tr) {
    return (Pass){.be = tr->be, .act = m->be->act_dtype, .keep = &tr->keep, .work = &tr->work,
                  .lora_scale = m->lora_scale};
}

static Pass bwd_pass(const ClipModel *m, ClipTrain *tr) {
    return (Pass){.be = tr->be, .act = m->be->act_dtype, .work = &tr->gwork, .params = &m->params,
                  .grads = lora_on(tr) ? NULL : &tr->grads, .lora_p = &tr->lora, .lora_g = &tr->lora_grads,
                  .lora_scale = m->lora_scale};
}

// ---- LoRA --------------------------------------------------------------------------

// The adapters of q, k, v, out_proj of every layer the default output runs
// through, in (layer, projection) order: down (r, D) ~ N(0, 1/r) from one
// generator (peft init_lora_weights="gaussian"), up (D, r) = 0.
static int make_lora(ClipModel *m, ClipTrain *tr, SdcError *err) {
    const ClipConfig *c = &m->cfg;
    const int n = tr->n_layers * CLIP_N_PROJ;
    const int64_t r = tr->opts.lora_rank, D = c->hidden;
    m->lora = calloc((size_t)n, sizeof *m->lora);
    m->lora_layers = tr->n_layers;
    m->lora_scale = (float)tr->opts.lora_alpha / (float)r;
    tr->lora_table.e = calloc((size_t)2 * n, sizeof *tr->lora_table.e);
    float *host = malloc((size_t)(r * D) * sizeof *host);
    int rc = 0;
    if (!m->lora || !tr->lora_table.e || !host) rc = sdc_err(err, SDC_ERR_OOM, "clip LoRA: out of host memory");
    tr->lora_table.cap = 2 * n;
    Arena meas;
    arena_init_measure(&meas);
    for (int k = 0; k < n; k++) (void)ARENA_F32(&meas, r, D), (void)ARENA_F32(&meas, D, r);
    if (!rc) rc = arena_init(&tr->lora, m->be, meas.peak, err);
    if (!rc) rc = arena_init(&tr->lora_grads, m->be, meas.peak, err);
    if (!rc) {
        m->be->zero(m->be, tr->lora.base, tr->lora.cap); // up = 0, and the padding
        m->be->zero(m->be, tr->lora_grads.base, tr->lora_grads.cap);
        Rng rng;
        rng_seed(&rng, tr->opts.lora_seed);
        for (int k = 0; k < n; k++) {
            LoraPair *ad = &m->lora[k];
            ad->down = ARENA_F32(&tr->lora, r, D); // (r, D)
            ad->up = ARENA_F32(&tr->lora, D, r);   // (D, r)
            rng_normal(&rng, host, (size_t)(r * D));
            for (int64_t i = 0; i < r * D; i++) host[i] *= 1.0f / (float)r;
            backend_upload_f32(m->be, &ad->down, host, (size_t)(r * D));
            const char *fmt = "text_model.encoder.layers.%d.self_attn.%s.lora.%s.weight";
            ParamEntry *e = &tr->lora_table.e[tr->lora_table.n++];
            snprintf(e->name, sizeof e->name, fmt, k / CLIP_N_PROJ, PROJ_NAME[k % CLIP_N_PROJ], "down");
            e->t = ad->down;
            e = &tr->lora_table.e[tr->lora_table.n++];
            snprintf(e->name, sizeof e->name, fmt, k / CLIP_N_PROJ, PROJ_NAME[k % CLIP_N_PROJ], "up");
            e->t = ad->up;
        }
    }
    free(host);
    return rc;
}

// ---- forward -----------------------------------------------------------------

// The blocks' forward (clip.c) keeping every layer's saves; out (B, L, D) the
// default output, or with opts.xl the stream entering the last layer, and
// pooled_out (B, projection_dim) when not NULL.
static void train_forward(const ClipModel *m, ClipTrain *tr, const int32_t *ids, int B, Tensor *out,
                          Tensor *pooled_out) {
    const ClipConfig *c = &m->cfg;
    const Backend *be = tr->be;
    const int64_t L = c->max_positions, D = c->hidden;
    arena_reset(&tr->keep, 0);
    arena_reset(&tr->work, 0);
    tr->ids = ARENA_DT(&tr->keep, DT_I32, B, L);
    tr->pos = ARENA_DT(&tr->keep, DT_I32, B, L);
    be->upload(be, tr->ids.data, ids, (size_t)B * L * sizeof(int32_t));
    be->upload(be, tr->pos.data, tr->pos_ids, (size_t)B * L * sizeof(int32_t));
    Pass p = fwd_pass(m, tr);
    tr->h0 = SAVE(&p, B, L, D);
    clip_embed_forward(&p, m, &tr->h0, &tr->ids, &tr->pos);
    Tensor h = tr->h0;
    for (int i = 0; i < tr->n_layers; i++) clip_layer_forward(&p, m, i, &tr->s[i], &h);
    if (!tr->opts.xl) {
        clip_final_forward(&p, m, out, &h);
        return;
    }
    // SDXL: hidden_states[-2] (the stream entering the last layer, no norm) and the pooled output;
    // hidden_only ran the layers before the last: h is that stream
    if (tr->opts.hidden_only) {
        be->copy(be, out, &h);
        return;
    }
    be->copy(be, out, &tr->s[tr->n_layers - 1].hin);
    if (!pooled_out) return;
    tr->hn = SAVE(&p, B, L, D);
    clip_final_forward(&p, m, &tr->hn, &h);
    tr->rows = SAVE(&p, B, D);
    const size_t es = dtype_size(m->be->act_dtype);
    for (int b = 0; b < B; b++) {
        const int32_t *r = ids ? ids + (size_t)b * L : NULL;
        int k = 0;
        if (r && c->pool_argmax) {
            for (int j = 1; j < L; j++) if (r[j] > r[k]) k = j;
        } else if (r) {
            while (k < L - 1 && r[k] != c->eos_token) k++;
        }
        tr->eos[b] = k;
        Tensor src = tensor_make(tr->hn.dtype, tr->hn.device, (char *)tr->hn.data + ((size_t)b * L + k) * D * es, 1,
                                 (int64_t[]){D});
        Tensor dst = tensor_make(tr->rows.dtype, tr->rows.device, (char *)tr->rows.data + (size_t)b * D * es, 1,
                                 (int64_t[]){D});
        be->copy(be, &dst, &src);
    }
    be->linear(be, pooled_out, &tr->rows, &m->proj_w, NULL);
}

// ---- backward ----------------------------------------------------------------

static Tensor *grad(Pass *p, const Tensor *w, Tensor *tmp) { return pass_grad(p, w, tmp); }

// g (B, L, D): d loss / d the layer's output, turned in place into d loss / d
// its input (not when `last_needed`: nothing before the layer wants it).
static void layer_backward(Pass *p, const ClipModel *m, int i, const ClipLayerSave *s, Tensor *g, int input_needed) {
    const Backend *be = p->be;
    const ClipConfig *c = &m->cfg;
    const ClipLayer *l = &m->layers[i];
    const LoraPair *ad = m->lora && i < m->lora_layers ? &m->lora[i * CLIP_N_PROJ] : NULL;
    const float eps = c->ln_eps;
    size_t mark = arena_mark(p->work);
    Tensor t1 = pass_like(p, g), t2 = pass_like(p, g), df = pass_like(p, &s->f_pre);
    Tensor dq = pass_like(p, &s->q), dk = pass_like(p, &s->k), dv = pass_like(p, &s->v), w1, w2;
    // MLP branch: hout = h_mid + fc2(act(fc1(layer_norm2(h_mid)))); g = d hout
    be->linear_backward(be, &df, grad(p, &l->fc2_w, &w1), grad(p, &l->fc2_b, &w2), g, &s->f_act, &l->fc2_w);
    if (c->act == ACT_GELU) be->gelu_backward(be, &df, &df, &s->f_pre);
    else be->quick_gelu_backward(be, &df, &df, &s->f_pre);
    be->linear_backward(be, &t1, grad(p, &l->fc1_w, &w1), grad(p, &l->fc1_b, &w2), &df, &s->x2, &l->fc1_w);
    be->layer_norm_backward(be, &t2, grad(p, &l->ln2_w, &w1), grad(p, &l->ln2_b, &w2), &t1, &s->h_mid, &l->ln2_w,
                            eps);
    be->add(be, g, g, &t2); // g = d h_mid
    // attention branch: h_mid = hin + out_proj(attention(q, k, v)), q/k/v of layer_norm1(hin)
    pass_linear_backward(p, &t1, g, &s->o, &l->o_w, &l->o_b, ad ? &ad[CLIP_PROJ_O] : NULL, &s->u[CLIP_PROJ_O]);
    be->attention_backward(be, &dq, &dk, &dv, &t1, &s->q, &s->k, &s->v, c->heads, 1);
    // d x1 = the sum over q, k, v; each projection's backward overwrites its dx
    pass_linear_backward(p, &t1, &dq, &s->x1, &l->q_w, &l->q_b, ad ? &ad[CLIP_PROJ_Q] : NULL, &s->u[CLIP_PROJ_Q]);
    pass_linear_backward(p, &dq, &dk, &s->x1, &l->k_w, &l->k_b, ad ? &ad[CLIP_PROJ_K] : NULL, &s->u[CLIP_PROJ_K]);
    be->add(be, &t1, &t1, &dq);
    pass_linear_backward(p, &dk, &dv, &s->x1, &l->v_w, &l->v_b, ad ? &ad[CLIP_PROJ_V] : NULL, &s->u[CLIP_PROJ_V]);
    be->add(be, &t1, &t1, &dk);
    if (input_needed) {
        be->layer_norm_backward(be, &t2, grad(p, &l->ln1_w, &w1), grad(p, &l->ln1_b, &w2), &t1, &s->hin, &l->ln1_w,
                                eps);
        be->add(be, g, g, &t2); // g = d hin
    }
    arena_reset(p->work, mark);
}

// SDXL: d loss / d the last layer's output from d pooled (B, projection_dim):
// the projection, the EOS rows, final_layer_norm; into g (B, L, D).
static void pooled_backward(Pass *p, const ClipModel *m, ClipTrain *tr, const Tensor *dpooled, Tensor *g) {
    const Backend *be = p->be;
    const int64_t B = dpooled->shape[0], L = m->cfg.max_positions, D = m->cfg.hidden;
    size_t mark = arena_mark(p->work);
    Tensor drows = pass_like(p, &tr->rows), dhn = pass_like(p, &tr->hn), w1, w2;
    be->linear_backward(be, &drows, grad(p, &m->proj_w, &w1), NULL, dpooled, &tr->rows, &m->proj_w);
    be->zero(be, dhn.data, tensor_bytes(&dhn));
    const size_t es = dtype_size(dhn.dtype);
    for (int64_t b = 0; b < B; b++) {
        Tensor src = tensor_make(drows.dtype, drows.device, (char *)drows.data + (size_t)b * D * es, 1, (int64_t[]){D});
        Tensor dst = tensor_make(dhn.dtype, dhn.device, (char *)dhn.data + ((size_t)b * L + tr->eos[b]) * D * es, 1,
                                 (int64_t[]){D});
        be->copy(be, &dst, &src);
    }
    be->layer_norm_backward(be, g, grad(p, &m->fln_w, &w1), grad(p, &m->fln_b, &w2), &dhn,
                            &tr->s[tr->n_layers - 1].hout, &m->fln_w, m->cfg.ln_eps);
    arena_reset(p->work, mark);
}

// dout: d the default output, or with opts.xl d the stream entering the last
// layer; dpooled (opts.xl) d the pooled output, or NULL.
static void train_backward(const ClipModel *m, ClipTrain *tr, const Tensor *dout, const Tensor *dpooled) {
    const Backend *be = tr->be;
    const int full = !lora_on(tr);
    Pass p = bwd_pass(m, tr);
    arena_reset(&tr->gwork, 0);
    Tensor g = pass_like(&p, dout), w1, w2; // (B, L, D) d loss / d residual stream
    int top = tr->n_layers - 1;             // the layers from top down run their backward
    if (!tr->opts.xl) {
        be->layer_norm_backward(be, &g, grad(&p, &m->fln_w, &w1), grad(&p, &m->fln_b, &w2), dout,
                                &tr->s[tr->n_layers - 1].hout, &m->fln_w, m->cfg.ln_eps);
    } else if (dpooled) { // the last layer only feeds the pooled output
        pooled_backward(&p, m, tr, dpooled, &g);
        layer_backward(&p, m, top, &tr->s[top], &g, 1);
        be->add(be, &g, &g, dout);
        top--;
    } else { // without a pooled output the last layer gets no gradient (hidden_only: it never ran)
        be->copy(be, &g, dout);
        if (!tr->opts.hidden_only) top--;
    }
    // d h0 feeds only the embeddings: wanted when they train
    for (int i = top; i >= 0; i--) layer_backward(&p, m, i, &tr->s[i], &g, i > 0 || full);
    if (full) { // h0 = tok_emb[ids] + pos_emb[0..L-1]
        be->embedding_backward(be, grad(&p, &m->tok_emb, &w1), &tr->ids, &g);
        be->embedding_backward(be, grad(&p, &m->pos_emb, &w2), &tr->pos, &g);
    }
}

// ---- reserve -----------------------------------------------------------------

void clip_train_free(ClipModel *m) {
    ClipTrain *tr = m->train;
    if (!tr) return;
    arena_free(&tr->keep);
    arena_free(&tr->work);
    arena_free(&tr->gwork);
    arena_free(&tr->grads);
    arena_free(&tr->lora);
    arena_free(&tr->lora_grads);
    param_table_free(&tr->lora_table);
    free(tr->full_table.e);
    free(m->lora);
    m->lora = NULL;
    m->lora_layers = 0;
    free(tr->s);
    free(tr->pos_ids);
    free(tr->eos);
    free(tr);
    m->train = NULL;
}

// hidden_only, full training: the load table without what the output does
// not reach (the last layer, the final norm, a projection), in its order.
static int hidden_only_table(const ClipModel *m, ClipTrain *tr, SdcError *err) {
    char last[64];
    snprintf(last, sizeof last, "text_model.encoder.layers.%d.", m->cfg.layers - 1);
    tr->full_table.e = calloc((size_t)m->table.n, sizeof *tr->full_table.e);
    if (!tr->full_table.e) return sdc_err(err, SDC_ERR_OOM, "clip_train_reserve: out of host memory");
    tr->full_table.cap = m->table.n;
    for (int i = 0; i < m->table.n; i++) {
        const char *nm = m->table.e[i].name;
        if (!strncmp(nm, last, strlen(last)) || strstr(nm, "final_layer_norm") || strstr(nm, "text_projection"))
            continue;
        tr->full_table.e[tr->full_table.n++] = m->table.e[i];
    }
    return 0;
}

// Sizes the activations of a step for `batch` prompts with a measuring
// forward and backward, then allocates them once.
static int plan_batch(ClipModel *m, ClipTrain *tr, int batch, SdcError *err) {
    const ClipConfig *c = &m->cfg;
    const int64_t L = c->max_positions;
    arena_free(&tr->keep);
    arena_free(&tr->work);
    arena_free(&tr->gwork);
    free(tr->pos_ids);
    free(tr->eos);
    tr->pos_ids = malloc((size_t)batch * L * sizeof(int32_t));
    tr->eos = calloc((size_t)batch, sizeof *tr->eos);
    tr->reserved_batch = tr->batch = 0;
    if (!tr->pos_ids || !tr->eos) return sdc_err(err, SDC_ERR_OOM, "clip_train_reserve: out of host memory");
    for (int b = 0; b < batch; b++)
        for (int64_t i = 0; i < L; i++) tr->pos_ids[b * L + i] = (int32_t)i;

    tr->be = backend_measure();
    arena_init_measure(&tr->keep);
    arena_init_measure(&tr->work);
    arena_init_measure(&tr->gwork);
    Arena real_grads = tr->grads, real_lora_g = tr->lora_grads;
    tr->grads.measure = 1;
    tr->lora_grads.measure = 1;
    Tensor out = tensor_make(m->be->act_dtype, DEV_CPU, NULL, 3, (int64_t[]){batch, L, c->hidden});
    Tensor pooled = tensor_make(m->be->act_dtype, DEV_CPU, NULL, 2, (int64_t[]){batch, c->projection_dim});
    Tensor *pp = tr->opts.xl && !tr->opts.hidden_only && c->projection_dim > 0 ? &pooled : NULL;
    train_forward(m, tr, NULL, batch, &out, pp);
    train_backward(m, tr, &out, pp);
    tr->grads = real_grads;
    tr->lora_grads = real_lora_g;
    tr->be = m->be;
    size_t kb = tr->keep.peak, wb = tr->work.peak, gb = tr->gwork.peak;
    SDC_TRY(arena_init(&tr->keep, m->be, kb, err));
    SDC_TRY(arena_init(&tr->work, m->be, wb, err));
    SDC_TRY(arena_init(&tr->gwork, m->be, gb, err));
    tr->reserved_batch = batch;
    return 0;
}

int clip_train_reserve(ClipModel *m, const ClipTrainOpts *o, int batch, SdcError *err) {
    const Backend *be = m->be;
    if (batch <= 0) return sdc_err(err, SDC_ERR_ARG, "clip_train_reserve: batch %d must be >= 1", batch);
    if (be->act_dtype != DT_F32 || be->param_dtype != DT_F32 || !be->linear_backward || !be->zero)
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "text encoder training needs a backend with backward ops in fp32 (got %s, %s)\n"
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
    tr->be = be;
    tr->n_layers = o->xl ? m->cfg.layers - (o->hidden_only ? 1 : 0) : clip_default_layers(&m->cfg);
    tr->s = calloc((size_t)tr->n_layers, sizeof *tr->s);
    int rc = !tr->s ? sdc_err(err, SDC_ERR_OOM, "clip_train_reserve: out of host memory") : 0;
    if (!rc && lora_on(tr)) {
        rc = make_lora(m, tr, err);
    } else if (!rc) {
        rc = arena_init(&tr->grads, be, m->params.cap, err);
        if (!rc) be->zero(be, tr->grads.base, tr->grads.cap);
        if (!rc && o->xl && o->hidden_only) rc = hidden_only_table(m, tr, err);
    }
    if (!rc) rc = plan_batch(m, tr, batch, err);
    if (rc) {
        sdc_err_wrap(err, "planning text-encoder training");
        clip_train_free(m);
    }
    return rc;
}

// ---- entry points --------------------------------------------------------------

// The checks and the pass of clip_train_forward(_xl); pooled NULL: none.
static int forward_entry(ClipModel *m, const int32_t *ids, int batch, Tensor *out, Tensor *pooled, int xl,
                         SdcError *err) {
    const ClipConfig *c = &m->cfg;
    ClipTrain *tr = m->train;
    const char *fn = xl ? "clip_train_forward_xl" : "clip_train_forward";
    if (!tr) return sdc_err(err, SDC_ERR_ARG, "%s: nothing planned\n---> call clip_train_reserve first", fn);
    if (tr->opts.xl != xl)
        return sdc_err(err, SDC_ERR_ARG, "%s: the training was reserved %s SDXL's outputs (ClipTrainOpts.xl)", fn,
                       tr->opts.xl ? "with" : "without");
    if (batch <= 0 || !ids) return sdc_err(err, SDC_ERR_ARG, "%s: no token ids (batch %d)", fn, batch);
    Tensor want = tensor_make(m->be->act_dtype, m->be->device, out->data, 3,
                              (int64_t[]){batch, c->max_positions, c->hidden});
    if (!out->data || !tensor_same_shape(out, &want) || out->dtype != want.dtype || out->device != want.device) {
        char got[64], exp[64];
        return sdc_err(err, SDC_ERR_ARG, "%s: output tensor %s %s, expected %s %s on %s", fn,
                       tensor_shape_str(out, got, sizeof got), dtype_name(out->dtype),
                       tensor_shape_str(&want, exp, sizeof exp), dtype_name(want.dtype), m->be->name);
    }
    if (pooled && tr->opts.hidden_only)
        return sdc_err(err, SDC_ERR_ARG, "%s: reserved hidden_only (ClipTrainOpts): no pooled output", fn);
    if (pooled && (c->projection_dim <= 0 || !pooled->data || pooled->ndim != 2 || pooled->shape[0] != batch ||
                   pooled->shape[1] != c->projection_dim || pooled->dtype != want.dtype))
        return sdc_err(err, SDC_ERR_ARG, "%s: a pooled output (%d, %d) needs a text encoder with a projection "
                       "(this one: projection_dim %d)", fn, batch, c->projection_dim, c->projection_dim);
    for (int64_t i = 0; i < (int64_t)batch * c->max_positions; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return sdc_err(err, SDC_ERR_ARG, "%s: token id %d at position %lld is outside "
                           "the vocabulary [0, %d)\n---> is the tokenizer the model's own?",
                           fn, ids[i], (long long)i, c->vocab_size);
    if (batch > tr->reserved_batch) SDC_TRY(plan_batch(m, tr, batch, err));
    train_forward(m, tr, ids, batch, out, pooled);
    tr->batch = batch;
    tr->pooled = pooled != NULL;
    return backend_status(m->be, err);
}

int clip_train_forward(ClipModel *m, const int32_t *ids, int batch, Tensor *out, SdcError *err) {
    return forward_entry(m, ids, batch, out, NULL, 0, err);
}

int clip_train_forward_xl(ClipModel *m, const int32_t *ids, int batch, Tensor *hidden, Tensor *pooled,
                          SdcError *err) {
    return forward_entry(m, ids, batch, hidden, pooled, 1, err);
}

static int backward_entry(ClipModel *m, const Tensor *dout, const Tensor *dpooled, SdcError *err) {
    const ClipConfig *c = &m->cfg;
    ClipTrain *tr = m->train;
    if (!tr || !tr->batch)
        return sdc_err(err, SDC_ERR_ARG, "clip_train_backward: no forward pass to differentiate\n"
                       "---> call clip_train_forward first");
    Tensor want = tensor_make(m->be->act_dtype, m->be->device, dout->data, 3,
                              (int64_t[]){tr->batch, c->max_positions, c->hidden});
    if (!dout->data || !tensor_same_shape(dout, &want) || dout->dtype != want.dtype || dout->device != want.device) {
        char got[64], exp[64];
        return sdc_err(err, SDC_ERR_ARG, "clip_train_backward: dout %s %s, expected %s (the last forward's)",
                       tensor_shape_str(dout, got, sizeof got), dtype_name(dout->dtype),
                       tensor_shape_str(&want, exp, sizeof exp));
    }
    if (dpooled && (!tr->pooled || dpooled->ndim != 2 || dpooled->shape[0] != tr->batch ||
                    dpooled->shape[1] != c->projection_dim))
        return sdc_err(err, SDC_ERR_ARG, "clip_train_backward_xl: d pooled needs the forward's pooled output's "
                       "shape (%d, %d)", tr->batch, c->projection_dim);
    train_backward(m, tr, dout, dpooled);
    return backend_status(m->be, err);
}

int clip_train_backward(ClipModel *m, const Tensor *dout, SdcError *err) {
    if (m->train && m->train->opts.xl)
        return sdc_err(err, SDC_ERR_ARG, "clip_train_backward: reserved for SDXL's outputs: clip_train_backward_xl");
    return backward_entry(m, dout, NULL, err);
}

int clip_train_backward_xl(ClipModel *m, const Tensor *dhidden, const Tensor *dpooled, SdcError *err) {
    return backward_entry(m, dhidden, dpooled, err);
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
    const ClipTrain *tr = m->train;
    if (!tr) return NULL;
    return lora_on(tr) ? &tr->lora_table : tr->full_table.e ? &tr->full_table : &m->table;
}

size_t clip_train_bytes(const ClipModel *m) {
    const ClipTrain *tr = m->train;
    if (!tr) return 0;
    return tr->keep.cap + tr->work.cap + tr->gwork.cap + tr->grads.cap + tr->lora.cap + tr->lora_grads.cap;
}
