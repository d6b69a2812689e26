// clip.c: the CLIP text encoder (see clip.h). Reads top to bottom:
// parameters, loading, the blocks' one forward (clip_internal.h; the
// training passes in clip_train.c run the same functions keeping their
// saves), the inference pass, planning (measure pass), encode.
//
// Shapes: B prompts, L = max_positions tokens, D = hidden, I = intermediate.
#include "models/clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "models/clip_internal.h"
#include "models/params.h"

// ---- parameters ------------------------------------------------------------

// ClipLayer and struct ClipModel: clip_internal.h (clip_train.c shares them).

static void clip_get_params(ClipModel *m, ParamLoader *pl) {
    const ClipConfig *c = &m->cfg;
    const int D = c->hidden, I = c->intermediate;
    m->tok_emb = param_get(pl, SHAPE(c->vocab_size, D), "text_model.embeddings.token_embedding.weight");
    m->pos_emb = param_get(pl, SHAPE(c->max_positions, D), "text_model.embeddings.position_embedding.weight");
    for (int i = 0; i < c->layers; i++) {
        ClipLayer *l = &m->layers[i];
        const char *p = "text_model.encoder.layers";
        l->ln1_w = param_get(pl, SHAPE(D), "%s.%d.layer_norm1.weight", p, i);
        l->ln1_b = param_get(pl, SHAPE(D), "%s.%d.layer_norm1.bias", p, i);
        l->q_w = param_get(pl, SHAPE(D, D), "%s.%d.self_attn.q_proj.weight", p, i);
        l->q_b = param_get(pl, SHAPE(D), "%s.%d.self_attn.q_proj.bias", p, i);
        l->k_w = param_get(pl, SHAPE(D, D), "%s.%d.self_attn.k_proj.weight", p, i);
        l->k_b = param_get(pl, SHAPE(D), "%s.%d.self_attn.k_proj.bias", p, i);
        l->v_w = param_get(pl, SHAPE(D, D), "%s.%d.self_attn.v_proj.weight", p, i);
        l->v_b = param_get(pl, SHAPE(D), "%s.%d.self_attn.v_proj.bias", p, i);
        l->o_w = param_get(pl, SHAPE(D, D), "%s.%d.self_attn.out_proj.weight", p, i);
        l->o_b = param_get(pl, SHAPE(D), "%s.%d.self_attn.out_proj.bias", p, i);
        l->ln2_w = param_get(pl, SHAPE(D), "%s.%d.layer_norm2.weight", p, i);
        l->ln2_b = param_get(pl, SHAPE(D), "%s.%d.layer_norm2.bias", p, i);
        l->fc1_w = param_get(pl, SHAPE(I, D), "%s.%d.mlp.fc1.weight", p, i);
        l->fc1_b = param_get(pl, SHAPE(I), "%s.%d.mlp.fc1.bias", p, i);
        l->fc2_w = param_get(pl, SHAPE(D, I), "%s.%d.mlp.fc2.weight", p, i);
        l->fc2_b = param_get(pl, SHAPE(D), "%s.%d.mlp.fc2.bias", p, i);
    }
    m->fln_w = param_get(pl, SHAPE(D), "text_model.final_layer_norm.weight");
    m->fln_b = param_get(pl, SHAPE(D), "text_model.final_layer_norm.bias");
    if (c->projection_dim > 0) m->proj_w = param_get(pl, SHAPE(c->projection_dim, D), "text_projection.weight");
}

// ---- loading ---------------------------------------------------------------

int clip_load(ClipModel **out, const ModelFiles *mf, const Backend *be, SdcError *err) {
    return clip_load_opts(out, mf, be, NULL, err);
}

int clip_load_opts(ClipModel **out, const ModelFiles *mf, const Backend *be, const ModelLoadOpts *o,
                   SdcError *err) {
    *out = NULL;
    int own = o && o->trainable;
    if (own && (be->param_dtype != DT_F32 || !be->linear_backward))
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "text encoder: training needs a backend with backward ops and fp32 parameters (got %s, %s)\n"
                       "---> use --device cpu for training",
                       be->name, dtype_name(be->param_dtype));
    const ModelInfo *info = model_files_info(mf);
    const int second = o && o->second_text_encoder;
    if (second && !info->has_clip2)
        return sdc_err(err, SDC_ERR_ARG, "clip_load: the model has no second text encoder (text_encoder_2)");
    if (!second && info->refiner)
        return sdc_err(err, SDC_ERR_ARG, "clip_load: the SDXL refiner has no first text encoder (text_encoder/): "
                       "its one encoder is the second (text_encoder_2)");
    const ClipConfig *c = second ? &info->clip2 : &info->clip;
    const Component comp = second ? COMP_TEXT_ENCODER_2 : COMP_TEXT_ENCODER;
    if (c->hidden <= 0 || c->layers <= 0 || c->heads <= 0 || c->hidden % c->heads ||
        c->intermediate <= 0 || c->max_positions <= 0 || c->vocab_size <= 0)
        return sdc_err(err, SDC_ERR_FORMAT,
                       "text encoder config: hidden %d, layers %d, heads %d, intermediate %d, "
                       "positions %d, vocab %d do not describe a CLIP text model\n"
                       "---> check text_encoder/config.json",
                       c->hidden, c->layers, c->heads, c->intermediate, c->max_positions,
                       c->vocab_size);
    if (c->max_positions > 1024) // the pipelines hold a prompt's ids on the stack (sd_encode_prompt)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "text encoder config: %d positions; sdc takes at most 1024 "
                       "---> SD 1.x/2.x text encoders have 77", c->max_positions);
    ClipModel *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "clip_load: out of host memory");
    m->cfg = *c;
    m->be = be;
    m->comp = comp;
    m->layers = calloc((size_t)c->layers, sizeof *m->layers);
    if (!m->layers) {
        free(m);
        return sdc_err(err, SDC_ERR_OOM, "clip_load: out of host memory");
    }
    // Pass 1 checks every name and shape and measures; pass 2 loads for real.
    const ModelFiles *src = o && o->init ? NULL : mf; // from scratch: no tensor read (params.h)
    if (!src && !own) {
        clip_free(m);
        return sdc_err(err, SDC_ERR_INTERNAL, "clip: a from-scratch load must be trainable");
    }
    Arena meas;
    arena_init_measure(&meas);
    ParamLoader pl = {.mf = src, .comp = comp, .be = be, .arena = &meas, .err = err,
                      .own = own, .lora = o ? o->lora : NULL};
    clip_get_params(m, &pl);
    int rc = pl.failed ? err->code : 0;
    if (!rc) rc = arena_init(&m->params, be, meas.peak, err);
    // Trainable: the arena is the flat buffer the optimizer sees; zero its padding.
    if (!rc && own) be->zero(be, m->params.base, m->params.cap);
    if (!rc) {
        pl = (ParamLoader){.mf = src, .comp = comp, .be = be, .arena = &m->params,
                           .err = err, .own = own, .table = own ? &m->table : NULL,
                           .lora = o ? o->lora : NULL};
        clip_get_params(m, &pl);
        rc = pl.failed ? err->code : 0;
    }
    if (rc) {
        sdc_err_wrap(err, second ? "loading the second text encoder" : "loading the text encoder");
        clip_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void clip_free(ClipModel *m) {
    if (!m) return;
    clip_train_free(m);
    arena_free(&m->act);
    arena_free(&m->params);
    param_table_free(&m->table);
    free(m->pos_ids);
    free(m->layers);
    free(m);
}

const ClipConfig *clip_config(const ClipModel *m) { return &m->cfg; }
size_t clip_param_bytes(const ClipModel *m) { return m->params.cap; }
size_t clip_activation_bytes(const ClipModel *m) { return m->act.cap; }

// ---- the blocks' forward --------------------------------------------------------

void clip_embed_forward(Pass *p, const ClipModel *m, Tensor *h, const Tensor *ids, const Tensor *pos) {
    const Backend *be = p->be;
    size_t mark = arena_mark(p->work);
    Tensor t = pass_like(p, h); // (B, L, D) position embeddings
    be->embedding(be, h, ids, &m->tok_emb);
    be->embedding(be, &t, pos, &m->pos_emb);
    be->add(be, h, h, &t);
    arena_reset(p->work, mark);
}

void clip_layer_forward(Pass *p, const ClipModel *m, int i, ClipLayerSave *sv, Tensor *h) {
    const Backend *be = p->be;
    const ClipConfig *c = &m->cfg;
    const ClipLayer *l = &m->layers[i];
    const LoraPair *lo = m->lora && i < m->lora_layers ? &m->lora[i * CLIP_N_PROJ] : NULL;
    const int64_t B = h->shape[0], L = h->shape[1], D = c->hidden, I = c->intermediate;
    size_t mark = arena_mark(p->work);
    sv->hin = *h;
    Tensor t = TMP(p, B, L, D); // (B, L, D) a branch's output
    size_t mark1 = arena_mark(p->work);
    // attention branch: h_mid = hin + out_proj(attention(q, k, v)), q/k/v of layer_norm1(hin)
    sv->x1 = SAVE(p, B, L, D);
    be->layer_norm(be, &sv->x1, &sv->hin, &l->ln1_w, &l->ln1_b, c->ln_eps);
    sv->q = SAVE(p, B, L, D);
    sv->k = SAVE(p, B, L, D);
    sv->v = SAVE(p, B, L, D);
    pass_linear(p, &sv->q, &sv->x1, &l->q_w, &l->q_b, lo ? &lo[CLIP_PROJ_Q] : NULL, &sv->u[CLIP_PROJ_Q]);
    pass_linear(p, &sv->k, &sv->x1, &l->k_w, &l->k_b, lo ? &lo[CLIP_PROJ_K] : NULL, &sv->u[CLIP_PROJ_K]);
    pass_linear(p, &sv->v, &sv->x1, &l->v_w, &l->v_b, lo ? &lo[CLIP_PROJ_V] : NULL, &sv->u[CLIP_PROJ_V]);
    sv->o = SAVE(p, B, L, D);
    be->attention(be, &sv->o, &sv->q, &sv->k, &sv->v, c->heads, 1);
    pass_linear(p, &t, &sv->o, &l->o_w, &l->o_b, lo ? &lo[CLIP_PROJ_O] : NULL, &sv->u[CLIP_PROJ_O]);
    sv->h_mid = p->keep ? SAVE(p, B, L, D) : sv->hin;
    be->add(be, &sv->h_mid, &sv->hin, &t);
    arena_reset(p->work, mark1); // x1, q, k, v, o are dead unless kept
    // MLP branch: hout = h_mid + fc2(act(fc1(layer_norm2(h_mid))))
    sv->x2 = SAVE(p, B, L, D);
    be->layer_norm(be, &sv->x2, &sv->h_mid, &l->ln2_w, &l->ln2_b, c->ln_eps);
    sv->f_pre = SAVE(p, B, L, I);
    be->linear(be, &sv->f_pre, &sv->x2, &l->fc1_w, &l->fc1_b);
    sv->f_act = p->keep ? SAVE(p, B, L, I) : sv->f_pre;
    if (c->act == ACT_GELU) be->gelu(be, &sv->f_act, &sv->f_pre);
    else be->quick_gelu(be, &sv->f_act, &sv->f_pre);
    be->linear(be, &t, &sv->f_act, &l->fc2_w, &l->fc2_b);
    sv->hout = p->keep ? SAVE(p, B, L, D) : sv->h_mid;
    be->add(be, &sv->hout, &sv->h_mid, &t);
    *h = sv->hout;
    arena_reset(p->work, mark);
}

void clip_final_forward(Pass *p, const ClipModel *m, Tensor *out, const Tensor *h) {
    p->be->layer_norm(p->be, out, h, &m->fln_w, &m->fln_b, m->cfg.ln_eps);
}

// The embeddings and the first n_layers layers, then final_layer_norm into
// out (B, L, D). With hidden (SDXL), the residual stream after layer
// hidden_at is copied there too (no norm); with pooled, the layers run to
// the last and pooled (B, projection_dim) = text_projection(final_ln(h) at
// the EOS position of each prompt). Against backend_measure() and a
// measuring arena it only sizes the activations; act is the real backend's
// activation dtype.
static void clip_forward(const ClipModel *m, const Backend *be, Arena *a, DType act, const int32_t *ids, int B,
                         int n_layers, Tensor *out, int hidden_at, Tensor *hidden, Tensor *pooled) {
    const ClipConfig *c = &m->cfg;
    const int64_t L = c->max_positions, D = c->hidden;
    size_t mark = arena_mark(a);
    Tensor ids_t = arena_tensor(a, DT_I32, 2, (int64_t[]){B, L}); // (B, L)
    Tensor pos_t = arena_tensor(a, DT_I32, 2, (int64_t[]){B, L}); // (B, L) 0..L-1 each
    be->upload(be, ids_t.data, ids, (size_t)B * L * sizeof(int32_t));
    // Position ids are 0..L-1 for every prompt (m->pos_ids, made by clip_reserve).
    be->upload(be, pos_t.data, m->pos_ids, (size_t)B * L * sizeof(int32_t));
    Tensor h = arena_tensor(a, act, 3, (int64_t[]){B, L, D}); // (B, L, D) residual stream
    Pass p = {.be = be, .act = act, .work = a, .lora_scale = m->lora_scale};
    clip_embed_forward(&p, m, &h, &ids_t, &pos_t);
    ClipLayerSave sv; // nothing is kept: a scratch record
    if (pooled) n_layers = c->layers;
    for (int i = 0; i < n_layers; i++) {
        if (hidden && i == hidden_at) be->copy(be, hidden, &h);
        clip_layer_forward(&p, m, i, &sv, &h);
    }
    if (hidden && hidden_at == n_layers) be->copy(be, hidden, &h);
    if (out) clip_final_forward(&p, m, out, &h);
    if (pooled) {
        // the EOS row of each prompt in final_ln(h), copied (B small copies)
        Tensor hn = arena_tensor(a, act, 3, (int64_t[]){B, L, D});
        clip_final_forward(&p, m, &hn, &h);
        Tensor rows = arena_tensor(a, act, 2, (int64_t[]){B, D});
        const size_t es = dtype_size(act);
        for (int b = 0; ids && b < B; b++) {
            const int32_t *r = ids + (size_t)b * L;
            int k = 0;
            if (c->pool_argmax) {
                for (int j = 1; j < L; j++) if (r[j] > r[k]) k = j;
            } else {
                while (k < L - 1 && r[k] != c->eos_token) k++;
            }
            Tensor src = tensor_make(act, be->device, (char *)hn.data + ((size_t)b * L + k) * D * es, 1, (int64_t[]){D});
            Tensor dst = tensor_make(act, be->device, (char *)rows.data + (size_t)b * D * es, 1, (int64_t[]){D});
            be->copy(be, &dst, &src);
        }
        be->linear(be, pooled, &rows, &m->proj_w, NULL);
    }
    arena_reset(a, mark);
}

// ---- planning ----------------------------------------------------------------

static size_t clip_measure(const ClipModel *m, int batch) {
    Arena meas;
    arena_init_measure(&meas);
    const Backend *mb = backend_measure();
    Tensor out = tensor_make(m->be->act_dtype, mb->device, NULL, 3,
                             (int64_t[]){batch, m->cfg.max_positions, m->cfg.hidden});
    Tensor pooled = tensor_make(m->be->act_dtype, mb->device, NULL, 2, (int64_t[]){batch, m->cfg.projection_dim});
    clip_forward(m, mb, &meas, m->be->act_dtype, NULL, batch, m->cfg.layers, &out, 0, &out,
                 m->cfg.projection_dim > 0 ? &pooled : NULL);
    return meas.peak;
}

int clip_reserve(ClipModel *m, int batch, SdcError *err) {
    if (batch <= 0) return sdc_err(err, SDC_ERR_ARG, "clip_reserve: batch %d must be >= 1", batch);
    if (batch <= m->reserved_batch) return 0;
    arena_free(&m->act);
    free(m->pos_ids);
    m->reserved_batch = 0;
    const int P = m->cfg.max_positions;
    m->pos_ids = malloc((size_t)batch * P * sizeof(int32_t));
    if (!m->pos_ids) return sdc_err(err, SDC_ERR_OOM, "clip_reserve: out of host memory");
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < P; i++) m->pos_ids[(size_t)b * P + i] = i;
    SDC_TRY(arena_init(&m->act, m->be, clip_measure(m, batch), err));
    m->reserved_batch = batch;
    return 0;
}

// ---- encode ------------------------------------------------------------------

int clip_default_layers(const ClipConfig *c) {
    return c->layers - (c->default_skip >= 1 ? c->default_skip : 1) + 1;
}

// Every id inside the vocabulary (a tokenizer of another model gives ids past it).
static int check_ids(const ClipConfig *c, const int32_t *ids, int batch, const char *fn, SdcError *err) {
    for (int64_t i = 0; i < (int64_t)batch * c->max_positions; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return sdc_err(err, SDC_ERR_ARG, "%s: token id %d at position %lld is outside the vocabulary [0, %d)\n"
                           "---> is the tokenizer the model's own?", fn, ids[i], (long long)i, c->vocab_size);
    return 0;
}

int clip_encode(ClipModel *m, const int32_t *ids, int batch, int clip_skip, Tensor *out,
                SdcError *err) {
    const ClipConfig *c = &m->cfg;
    if (batch <= 0 || !ids) return sdc_err(err, SDC_ERR_ARG, "clip_encode: no token ids (batch %d)", batch);
    int n_default = clip_default_layers(c);
    int n_layers = clip_skip > 0 ? n_default - (clip_skip - 1) : n_default;
    if (clip_skip < 0 || n_layers < 1 || n_layers > c->layers)
        return sdc_err(err, SDC_ERR_ARG,
                       "clip_skip %d: the text encoder has %d layers and its default output is "
                       "after layer %d\n---> use a clip_skip between 0 (default) and %d",
                       clip_skip, c->layers, n_default, n_default);
    Tensor want = tensor_make(m->be->act_dtype, m->be->device, out->data, 3,
                              (int64_t[]){batch, c->max_positions, c->hidden});
    if (!out->data || !tensor_same_shape(out, &want) || out->dtype != want.dtype ||
        out->device != want.device) {
        char got[64], exp[64];
        return sdc_err(err, SDC_ERR_ARG, "clip_encode: output tensor %s %s, expected %s %s on %s",
                       tensor_shape_str(out, got, sizeof got), dtype_name(out->dtype),
                       tensor_shape_str(&want, exp, sizeof exp), dtype_name(want.dtype), m->be->name);
    }
    SDC_TRY(check_ids(c, ids, batch, "clip_encode", err));
    SDC_TRY(clip_reserve(m, batch, err));
    clip_forward(m, m->be, &m->act, m->be->act_dtype, ids, batch, n_layers, out, 0, NULL, NULL);
    return backend_status(m->be, err);
}

static int check_out(const ClipModel *m, const Tensor *t, int batch, int ndim, int64_t d1, int64_t d2,
                     const char *what, SdcError *err) {
    Tensor want = tensor_make(m->be->act_dtype, m->be->device, t->data, ndim, (int64_t[]){batch, d1, d2});
    if (t->data && tensor_same_shape(t, &want) && t->dtype == want.dtype && t->device == want.device) return 0;
    char got[64], exp[64];
    return sdc_err(err, SDC_ERR_ARG, "clip_encode_xl: %s tensor %s %s, expected %s %s on %s", what,
                   tensor_shape_str(t, got, sizeof got), dtype_name(t->dtype),
                   tensor_shape_str(&want, exp, sizeof exp), dtype_name(want.dtype), m->be->name);
}

int clip_encode_xl(ClipModel *m, const int32_t *ids, int batch, int clip_skip, Tensor *hidden, Tensor *pooled,
                   SdcError *err) {
    const ClipConfig *c = &m->cfg;
    if (batch <= 0 || !ids) return sdc_err(err, SDC_ERR_ARG, "clip_encode_xl: no token ids (batch %d)", batch);
    int skip = clip_skip > 0 ? clip_skip : 1, at = c->layers - skip;
    if (clip_skip < 0 || at < 0)
        return sdc_err(err, SDC_ERR_ARG, "clip_skip %d: the text encoder has %d layers\n---> use a clip_skip "
                       "between 0 (default) and %d", clip_skip, c->layers, c->layers);
    if (pooled && c->projection_dim <= 0)
        return sdc_err(err, SDC_ERR_ARG, "clip_encode_xl: a pooled output needs a text encoder with a projection");
    SDC_TRY(check_out(m, hidden, batch, 3, c->max_positions, c->hidden, "hidden", err));
    if (pooled) SDC_TRY(check_out(m, pooled, batch, 2, c->projection_dim, 0, "pooled", err));
    SDC_TRY(check_ids(c, ids, batch, "clip_encode_xl", err));
    SDC_TRY(clip_reserve(m, batch, err));
    clip_forward(m, m->be, &m->act, m->be->act_dtype, ids, batch, at, NULL, at, hidden, pooled);
    return backend_status(m->be, err);
}

const ParamTable *clip_param_table(const ClipModel *m) { return &m->table; }
