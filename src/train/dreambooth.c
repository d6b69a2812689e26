// dreambooth.c: the DreamBooth training loop (see dreambooth.h for the
// objective). CPU fp32; the models' backward passes are in src/models.
#include "train/dreambooth.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sampling/rng.h"
#include "sampling/scheduler.h"

static double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// splitmix64 over the words: the seed of one sample's generator.
static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h += 0x9e3779b97f4a7c15ULL;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

uint64_t db_sample_seed(uint64_t seed, int64_t epoch, int64_t batch, int64_t index) { // see dreambooth.h
    return mix(mix(mix(mix(0x5dc, seed), (uint64_t)epoch), (uint64_t)batch), (uint64_t)index) >> 11;
}

// The epoch's order: a Fisher-Yates shuffle from (seed, epoch).
static void draw_order(DbTrainer *t, int64_t epoch) {
    if (t->order_epoch == epoch) return;
    Rng r;
    rng_seed(&r, mix(mix(0x0dde, t->cfg.seed), (uint64_t)epoch) >> 11);
    for (int i = 0; i < t->n_items; i++) t->order[i] = i;
    for (int i = t->n_items - 1; i > 0; i--) {
        int j = (int)(rng_u32(&r) % (uint32_t)(i + 1));
        int64_t x = t->order[i];
        t->order[i] = t->order[j];
        t->order[j] = x;
    }
    t->order_epoch = epoch;
}

// Rank `rank`'s contiguous share [first, first + count) of n over `size`.
static void share(int64_t n, int rank, int size, int64_t *first, int64_t *count) {
    int64_t q = n / size, r = n % size;
    *first = rank * q + (rank < r ? rank : r);
    *count = q + (rank < r ? 1 : 0);
}

static int replicas(const DbTrainer *t) { return t->hooks.replicas > 0 ? t->hooks.replicas : 1; }
static int stages(const DbTrainer *t) { return t->hooks.stages > 0 ? t->hooks.stages : 1; }
static int zero_on(const DbTrainer *t) { return t->hooks.zero && replicas(t) > 1; }
static int n_groups(const DbTrainer *t) { return t->n_groups; }

// The text encoder of group gi >= 1 (2: SDXL's text_encoder_2).
static ClipModel *group_clip(const DbTrainer *t, int gi) { return gi == 2 ? t->model->clip2 : t->model->clip; }

// ---------------------------------------------------------------------------
// set-up
// ---------------------------------------------------------------------------

// out (B, L, D1 + D2) = [a (B, L, D1), b (B, L, D2)] along the last axis: the
// channel concat of (B*L, D1) and (B*L, D2) rows.
static void concat_last(const Backend *be, Tensor *out, const Tensor *a, const Tensor *b) {
    const int64_t rows = a->shape[0] * a->shape[1];
    Tensor o = *out, x = *a, y = *b;
    o.ndim = x.ndim = y.ndim = 2;
    o.shape[0] = x.shape[0] = y.shape[0] = rows;
    o.shape[1] = out->shape[2], x.shape[1] = a->shape[2], y.shape[1] = b->shape[2];
    be->concat_channels(be, &o, &x, &y);
}

// ZeRO-1: replica r keeps the moments of the slice [B_r, B_{r+1}) of the
// group's tensors concatenated in table order (B_k = N k / R; so its moments
// are exactly that slice of what a checkpoint stores), as pieces of tensors.
// Its block of the flat gradient / parameter buffer (padding included) runs
// from where B_r falls to where B_{r+1} does: the blocks tile the buffer in
// rank order, as MPI_Reduce_scatter and MPI_Allgatherv want.
static int make_shard(DbTrainer *t, int gi, const OptimTensor *ot, int n_t, const float *pb, size_t nn,
                      OptimTensor **pieces, int *n_pieces, SdcError *err) {
    const int R = replicas(t), r = t->hooks.replica;
    DbShard *z = &t->shard[gi];
    z->n_tensors = n_t;
    z->counts = calloc((size_t)R, sizeof(int)), z->displs = calloc((size_t)R, sizeof(int));
    z->mv_counts = calloc((size_t)R, sizeof(int)), z->mv_displs = calloc((size_t)R, sizeof(int));
    int64_t *cum = calloc((size_t)n_t + 1, sizeof(int64_t));
    *pieces = calloc((size_t)n_t, sizeof **pieces);
    z->piece_tensor = calloc((size_t)n_t, sizeof(int));
    int rc = 0;
    if (!z->counts || !z->displs || !z->mv_counts || !z->mv_displs || !cum || !*pieces || !z->piece_tensor)
        rc = sdc_err(err, SDC_ERR_OOM, "ZeRO-1 shards");
    for (int i = 0; !rc && i < n_t; i++) cum[i + 1] = cum[i] + (int64_t)ot[i].n;
    const int64_t N = rc ? 0 : cum[n_t];
    if (!rc && (N < R || (int64_t)nn > INT_MAX))
        rc = sdc_err(err, SDC_ERR_ARG, "--zero-stage 1: %lld parameters over %d ranks (at most 2^31 - 1 floats per "
                     "group, at least one per rank)", (long long)N, R);
    // concatenated index x -> its place in the flat buffer (N -> the end)
    int ti = 0;
    for (int k = 0; !rc && k <= R; k++) {
        const int64_t x = N * k / R;
        while (ti < n_t && cum[ti + 1] <= x) ti++;
        const int64_t flat = k == 0 ? 0 : k == R || ti == n_t ? (int64_t)nn : (ot[ti].p - pb) + (x - cum[ti]);
        if (k < R) z->displs[k] = (int)flat, z->mv_displs[k] = (int)x;
        if (k > 0) z->counts[k - 1] = (int)(flat - z->displs[k - 1]), z->mv_counts[k - 1] = (int)(x - z->mv_displs[k - 1]);
    }
    const int64_t lo = N * r / R, hi = N * (r + 1) / R;
    int np = 0;
    for (int i = 0; !rc && i < n_t; i++) {
        const int64_t a = cum[i] > lo ? cum[i] : lo, b = cum[i + 1] < hi ? cum[i + 1] : hi;
        if (a >= b) continue;
        (*pieces)[np] = (OptimTensor){.p = ot[i].p + (a - cum[i]), .g = ot[i].g + (a - cum[i]), .n = (size_t)(b - a)};
        z->piece_tensor[np++] = i;
    }
    *n_pieces = np;
    free(cum);
    if (rc) free(*pieces), *pieces = NULL;
    return rc;
}

static int encode_rows(ClipModel *clip, const int32_t *ids, int n, int L, Tensor *out, SdcError *err);

int db_init(DbTrainer *t, SdModel *model, const DbConfig *cfg, const DbData *data, const DbHooks *hooks,
            SdcError *err) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->data = *data;
    t->hooks = *hooks;
    t->model = model;
    t->order_epoch = -1;
    DbConfig *c = &t->cfg;
    if (c->lora_rank && !(c->lora_alpha > 0)) c->lora_alpha = (float)c->lora_rank;
    if (c->micro_batches < 1) c->micro_batches = 1;
    if (c->train_batch_size < 1 || c->grad_accum < 1 || c->max_train_steps < 1 || !(c->learning_rate > 0) ||
        c->lora_rank < 0 || data->n_inst < 1 || data->lat_h < 1 ||
        (c->with_prior_preservation && (data->n_class < 1 || !data->class_latents)))
        return sdc_err(err, SDC_ERR_ARG,
                       "dreambooth: batch %d, accumulation %d, %lld steps, lr %g, LoRA rank %d, %d instance "
                       "and %d class latents: out of range",
                       c->train_batch_size, c->grad_accum, (long long)c->max_train_steps, c->learning_rate,
                       c->lora_rank, data->n_inst, data->n_class);
    if ((stages(t) > 1) != (hooks->pipeline != NULL))
        return sdc_err(err, SDC_ERR_INTERNAL, "dreambooth: %d stages with%s a pipeline", stages(t),
                       hooks->pipeline ? "" : "out");
    t->be = model->be;
    const UnetConfig *uc = unet_config(model->unet);
    const ClipConfig *cc = clip_config(model->clip);
    const ClipConfig *cc2 = model->clip2 ? clip_config(model->clip2) : NULL;
    t->xl = uc->add_time_dim > 0;
    const int L = cc->max_positions, h = data->lat_h, w = data->lat_w;
    const int D = cc->hidden + (t->xl && cc2 ? cc2->hidden : 0), P = t->xl && cc2 ? cc2->projection_dim : 0;
    if (t->xl && (!cc2 || !model->tok2 || cc2->max_positions != L || P != unet_text_dim(model->unet) ||
                  unet_n_time_ids(model->unet) != 6 || !data->inst_time_ids))
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "dreambooth: an SDXL UNet needs both text encoders (the second's "
                       "projection %d wide: the UNet takes %d), %d-token prompts in both, six time ids (base, not "
                       "the refiner: %d) and each instance image's size and crop\n---> train SDXL base from a "
                       "diffusers folder or a single file with both encoders", P, unet_text_dim(model->unet), L,
                       unet_n_time_ids(model->unet));
    if (!(c->text_encoder_lr >= 0) || (c->has_te_weight_decay && !(c->te_weight_decay >= 0)))
        return sdc_err(err, SDC_ERR_ARG, "dreambooth: text encoder lr %g, weight decay %g: out of range\n"
                       "---> --text-encoder-lr >= 0 (0: --learning-rate), --adam-weight-decay-text-encoder >= 0",
                       c->text_encoder_lr, c->te_weight_decay);
    t->per_item = data->item_ids || data->class_item_ids || c->proportion_empty > 0;
    if (t->per_item && t->xl)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "per-item captions (or empty prompts) with SDXL are not supported\n"
                       "---> train an SD 1.x / 2.x model, or give one prompt");
    if (data->class_item_ids && !c->with_prior_preservation)
        return sdc_err(err, SDC_ERR_INTERNAL, "dreambooth: class captions without prior preservation");
    if (!(c->proportion_empty >= 0 && c->proportion_empty <= 1) || !(c->input_perturbation >= 0) ||
        (c->use_ema && !(c->ema.decay >= 0 && c->ema.decay <= 1)))
        return sdc_err(err, SDC_ERR_ARG, "proportion of empty prompts %g (0..1), input perturbation %g (>= 0), EMA "
                       "decay %g (0..1): out of range", c->proportion_empty, c->input_perturbation, c->ema.decay);
    if (uc->in_channels != 4)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "dreambooth: the UNet has %d input channels; training an "
                       "inpainting UNet is not supported\n---> train a text-to-image model", uc->in_channels);
    if (D != uc->cross_dim)
        return sdc_err(err, SDC_ERR_ARG, "dreambooth: the text encoder's width %d is not the UNet's context width %d",
                       D, uc->cross_dim);
    t->prediction = uc->prediction;
    const int levels = model_files_info(model->files)->vae.n_levels;
    t->px_per_latent = levels >= 1 && levels <= 8 ? 1 << (levels - 1) : 8;
    t->train_te = c->train_text_encoder && hooks->stage == 0;
    t->n_groups = t->train_te ? (t->xl ? 3 : 2) : 1;
    if (L > 1024) return sdc_err(err, SDC_ERR_UNSUPPORTED, "dreambooth: %d text positions", L);
    int dropped = 0;
    SDC_TRY(clip_tok_encode(model->tok, data->instance_prompt ? data->instance_prompt : "", t->inst_ids, L,
                            cc->pad_token, &dropped, err));
    SDC_TRY(clip_tok_encode(model->tok, data->class_prompt ? data->class_prompt : "", t->class_ids, L,
                            cc->pad_token, &dropped, err));
    SDC_TRY(clip_tok_encode(model->tok, "", t->empty_ids, L, cc->pad_token, &dropped, err));
    if (t->xl) {
        SDC_TRY(clip_tok_encode(model->tok2, data->instance_prompt ? data->instance_prompt : "", t->inst_ids2, L,
                                cc2->pad_token, &dropped, err));
        SDC_TRY(clip_tok_encode(model->tok2, data->class_prompt ? data->class_prompt : "", t->class_ids2, L,
                                cc2->pad_token, &dropped, err));
    }
    t->n_items = c->with_prior_preservation && data->n_class > data->n_inst ? data->n_class : data->n_inst;
    t->batches_per_epoch = (t->n_items + c->train_batch_size - 1) / c->train_batch_size;
    t->updates_per_epoch = (t->batches_per_epoch + c->grad_accum - 1) / c->grad_accum;
    int per_batch = c->train_batch_size * (c->with_prior_preservation ? 2 : 1);
    int64_t f, n;
    share(per_batch, 0, replicas(t), &f, &n);
    t->share_max = (int)n;
    if (t->share_max < 1)
        return sdc_err(err, SDC_ERR_ARG, "dreambooth: a global batch of %d samples over %d replicas leaves a "
                       "replica without work\n---> raise --train-batch-size or run fewer ranks", per_batch,
                       replicas(t));

    // noise schedule: DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    // as diffusers' script builds it: the model's scheduler config (SD's
    // original one for a single file). Training reads only its betas and
    // num_train_timesteps (add_noise, get_velocity), so fields sdc's DDPM
    // sampler does not implement (thresholding, ...) do not matter here.
    SchedConfig sc = model_files_info(model->files)->sched;
    sc.n_unsupported = 0;
    Sampler s;
    SDC_TRY(sampler_init_cfg(&s, SAMPLER_DDPM, 1, &sc, 0, 1, err));
    t->n_train = s.n_train;
    memcpy(t->ac, s.alphas_cumprod, (size_t)s.n_train * sizeof *t->ac);
    sampler_free(&s);

    // host staging (the data side of a batch) and the device buffers
    size_t lat = (size_t)4 * h * w, sm = (size_t)t->share_max;
    t->order = calloc((size_t)t->n_items, sizeof *t->order);
    t->x0 = malloc(sm * lat * sizeof(float));
    t->noise = malloc(sm * lat * sizeof(float));
    t->h_noisy = malloc(sm * lat * sizeof(float));
    t->h_target = malloc(sm * lat * sizeof(float));
    t->timesteps = malloc(sm * sizeof(float));
    t->k = malloc(sm * sizeof(float));
    t->coef = malloc(sm * sizeof(float));
    t->sq = malloc(sm * sizeof(double));
    t->ids = malloc(sm * (size_t)L * sizeof(int32_t));
    t->ids2 = malloc(sm * (size_t)L * sizeof(int32_t));
    t->time_ids = calloc(sm * 6, sizeof(float));
    if (!t->time_ids || !t->order || !t->x0 || !t->noise || !t->h_noisy || !t->h_target || !t->timesteps || !t->k || !t->coef ||
        !t->sq || !t->ids || !t->ids2) {
        db_free(t);
        return sdc_err(err, SDC_ERR_OOM, "dreambooth: out of memory for the step buffers");
    }
    const DType dt = t->be->act_dtype;
    int rc = 0;
    for (int pass = 0; pass < 2 && !rc; pass++) { // measure, then carve
        Arena meas;
        arena_init_measure(&meas);
        Arena *a = pass ? &t->dev : &meas;
        t->noisy = ARENA_DT(a, dt, sm, 4, h, w);
        t->target = ARENA_DT(a, dt, sm, 4, h, w);
        t->ctx = ARENA_DT(a, dt, sm, L, D);
        t->dctx = ARENA_DT(a, dt, sm, L, D);
        t->ctx_fixed = ARENA_DT(a, dt, 2, L, D);
        if (t->xl) {
            t->pooled = ARENA_DT(a, dt, sm, P);
            t->pooled_fixed = ARENA_DT(a, dt, 2, P);
            t->h1_fixed = ARENA_DT(a, dt, 2, L, cc->hidden);
            t->h2_fixed = ARENA_DT(a, dt, 2, L, cc2->hidden);
            if (t->train_te) {
                t->h1 = ARENA_DT(a, dt, sm, L, cc->hidden);
                t->h2 = ARENA_DT(a, dt, sm, L, cc2->hidden);
                t->dh1 = ARENA_DT(a, dt, sm, L, cc->hidden);
                t->dh2 = ARENA_DT(a, dt, sm, L, cc2->hidden);
                t->dpooled = ARENA_DT(a, dt, sm, P);
            }
        }
        if (!pass) rc = arena_init(&t->dev, t->be, meas.peak, err);
    }
    if (rc) goto fail;

    const int M = c->micro_batches, mb_max = (t->share_max + M - 1) / M;
    UnetTrainOpts uo = {.checkpointing = c->gradient_checkpointing, .lora_rank = c->lora_rank,
                        .lora_alpha = c->lora_alpha, .lora_seed = c->seed, .want_dctx = c->train_text_encoder,
                        .want_dtext = t->xl && c->train_text_encoder,
                        .tapes = hooks->pipeline && hooks->tapes > 0 ? hooks->tapes : 1};
    if ((rc = unet_train_reserve(model->unet, &uo, mb_max, h, w, L, err))) goto fail;
    if (t->train_te) { // SDXL: the first encoder's hidden states alone, the second's with its pooled output
        ClipTrainOpts co = {.lora_rank = c->lora_rank, .lora_alpha = c->lora_alpha, .lora_seed = c->seed + 1,
                            .xl = t->xl, .hidden_only = t->xl};
        if ((rc = clip_train_reserve(model->clip, &co, t->share_max, err))) goto fail;
        ClipTrainOpts co2 = {.lora_rank = c->lora_rank, .lora_alpha = c->lora_alpha, .lora_seed = c->seed + 2,
                             .xl = 1};
        if (t->xl && (rc = clip_train_reserve(model->clip2, &co2, t->share_max, err))) goto fail;
    } else if (hooks->stage == 0 && t->per_item) { // frozen: encoded per batch, a prompt at a time
        if ((rc = clip_reserve(model->clip, 1, err))) goto fail;
    } else if (hooks->stage == 0 && !t->xl) { // frozen: the two embeddings once
        int32_t ids2[2 * 1024];
        memcpy(ids2, t->inst_ids, (size_t)L * sizeof(int32_t));
        memcpy(ids2 + L, t->class_ids, (size_t)L * sizeof(int32_t));
        if ((rc = clip_reserve(model->clip, 1, err))) goto fail;
        if ((rc = encode_rows(model->clip, ids2, 2, L, &t->ctx_fixed, err))) goto fail;
    } else if (hooks->stage == 0) { // SDXL, frozen: both encoders' hidden_states[-2] side by side, the pooled
        int32_t ids1[2 * 1024], ids2[2 * 1024];
        memcpy(ids1, t->inst_ids, (size_t)L * sizeof(int32_t));
        memcpy(ids1 + L, t->class_ids, (size_t)L * sizeof(int32_t));
        memcpy(ids2, t->inst_ids2, (size_t)L * sizeof(int32_t));
        memcpy(ids2 + L, t->class_ids2, (size_t)L * sizeof(int32_t));
        if ((rc = clip_reserve(model->clip, 2, err)) || (rc = clip_reserve(model->clip2, 2, err)) ||
            (rc = clip_encode_xl(model->clip, ids1, 2, 0, &t->h1_fixed, NULL, err)) ||
            (rc = clip_encode_xl(model->clip2, ids2, 2, 0, &t->h2_fixed, &t->pooled_fixed, err)))
            goto fail;
        concat_last(t->be, &t->ctx_fixed, &t->h1_fixed, &t->h2_fixed);
    }

    // One OptimTensor per named tensor (the table's order is the arena's), so
    // the AdamW moments are the tensors' moments concatenated, as a
    // checkpoint stores them.
    OptimTensor *ot[DB_MAX_GROUPS] = {NULL};
    AdamWGroupDesc gd[DB_MAX_GROUPS];
    const int ng = n_groups(t);
    // the text encoders' groups: their own lr (the same schedule) and weight decay
    const double te_scale = c->text_encoder_lr > 0 ? c->text_encoder_lr / c->learning_rate : 1.0;
    for (int gi = 0; gi < ng; gi++) {
        float *pb, *gb;
        size_t nn;
        const ParamTable *tb;
        if (gi == 0) {
            unet_trainables(model->unet, &pb, &gb, &nn);
            tb = unet_train_table(model->unet);
        } else {
            clip_trainables(group_clip(t, gi), &pb, &gb, &nn);
            tb = clip_train_table(group_clip(t, gi));
        }
        if (tb->n < 1) {
            rc = sdc_err(err, SDC_ERR_ARG, "dreambooth: stage %d has no trainable %s tensors\n---> use fewer "
                         "--pipeline-stages: a LoRA run trains only the attention blocks", hooks->stage,
                         gi == 2 ? "text_encoder_2" : gi ? "text-encoder" : "UNet");
            goto fail;
        }
        ot[gi] = calloc((size_t)tb->n, sizeof *ot[gi]);
        if (!ot[gi]) {
            rc = sdc_err(err, SDC_ERR_OOM, "dreambooth: out of memory");
            goto fail;
        }
        for (int i = 0; i < tb->n; i++) {
            float *p = tensor_f32p(&tb->e[i].t);
            ot[gi][i] = (OptimTensor){.p = p, .g = gb + (p - pb), .n = (size_t)tensor_numel(&tb->e[i].t)};
        }
        gd[gi] = (AdamWGroupDesc){.tensors = ot[gi], .n_tensors = tb->n, .lr_scale = gi ? te_scale : 1.0,
                                  .has_weight_decay = gi && c->has_te_weight_decay,
                                  .weight_decay = c->te_weight_decay};
        t->full_ot[gi] = ot[gi], t->full_n[gi] = tb->n;
        if (zero_on(t)) { // this replica's slice of the group
            OptimTensor *pieces = NULL;
            int np = 0;
            if ((rc = make_shard(t, gi, ot[gi], tb->n, pb, nn, &pieces, &np, err))) goto fail;
            gd[gi].tensors = pieces, gd[gi].n_tensors = np;
        }
    }
    rc = adamw_init(&t->opt, t->be, &c->adam, gd, ng, err);
    if (zero_on(t))
        for (int gi = 0; gi < ng; gi++) free((void *)gd[gi].tensors); // copied by adamw_init
    if (rc) goto fail;
    adamw_zero_grad(&t->opt);
    if ((rc = lr_schedule_init(&t->sched, c->lr_scheduler, c->learning_rate, c->lr_warmup_steps,
                               c->max_train_steps, c->lr_num_cycles, c->lr_power, err)))
        goto fail;
    if (c->use_ema) { // EMAModel(unet.parameters()): the shadow starts as the weights
        float *pb, *gb;
        size_t nn;
        unet_trainables(model->unet, &pb, &gb, &nn);
        t->ema = t->be->alloc(t->be, nn * sizeof(float));
        if (!t->ema) {
            rc = sdc_err(err, SDC_ERR_OOM, "out of memory for the EMA of %zu parameters", nn);
            goto fail;
        }
        Tensor d = tensor_make(DT_F32, t->be->device, t->ema, 1, &(int64_t){(int64_t)nn});
        Tensor s = tensor_make(DT_F32, t->be->device, pb, 1, &(int64_t){(int64_t)nn});
        t->be->copy(t->be, &d, &s);
    }
    return 0;
fail:
    sdc_err_wrap(err, "setting up DreamBooth training");
    db_free(t);
    return rc;
}

void db_free(DbTrainer *t) {
    adamw_free(&t->opt);
    if (t->ema) t->be->free(t->be, t->ema);
    t->ema = NULL;
    for (int gi = 0; gi < DB_MAX_GROUPS; gi++) {
        DbShard *z = &t->shard[gi];
        free(t->full_ot[gi]), free(z->counts), free(z->displs), free(z->mv_counts), free(z->mv_displs);
        free(z->piece_tensor);
        t->full_ot[gi] = NULL;
        memset(z, 0, sizeof *z);
    }
    free(t->order), free(t->x0), free(t->noise), free(t->h_noisy), free(t->h_target), free(t->timesteps);
    free(t->rd_std);
    t->rd_std = NULL;
    free(t->k), free(t->coef), free(t->sq), free(t->ids), free(t->ids2), free(t->time_ids);
    t->time_ids = NULL;
    t->ids2 = NULL;
    t->order = NULL;
    t->x0 = t->noise = t->h_noisy = t->h_target = t->timesteps = t->k = t->coef = NULL;
    t->sq = NULL;
    t->ids = NULL;
    arena_free(&t->dev);
}

// ---------------------------------------------------------------------------
// one batch
// ---------------------------------------------------------------------------

// min-SNR weight of timestep ts: min(snr, gamma) / snr (+ 1 for v-prediction,
// diffusers' floor of the velocity objective).
// train_text_to_image.py (snr_v_plus_one) instead divides by snr + 1 for
// v-prediction: min(snr + 1, gamma) / (snr + 1).
static float snr_weight(const DbTrainer *t, int ts) {
    if (!(t->cfg.snr_gamma > 0)) return 1.0f;
    double ab = t->ac[ts], snr = ab / (1.0 - ab);
    if (t->prediction == PRED_V && t->cfg.snr_v_plus_one) snr += 1.0;
    double w = (snr < t->cfg.snr_gamma ? snr : t->cfg.snr_gamma) / snr;
    if (t->prediction == PRED_V && !t->cfg.snr_v_plus_one) w += 1.0;
    return (float)w;
}

// Rows [r0, r0 + n) of a (rows, ...) device tensor.
static Tensor rows_of(const Tensor *x, int r0, int n) {
    Tensor v = *x;
    const size_t row = tensor_bytes(x) / (size_t)x->shape[0];
    v.data = (char *)x->data + row * (size_t)r0;
    v.shape[0] = n;
    return v;
}

// The frozen text encoder, one prompt at a time: a prompt's embedding is then
// the same bits whatever the batch it comes in (a GEMM's rounding can depend
// on its row count), so per-item captions that equal the two prompts train
// what the prompts train, bit for bit (tests/dreambooth_checks.py captions).
static int encode_rows(ClipModel *clip, const int32_t *ids, int n, int L, Tensor *out, SdcError *err) {
    for (int s = 0; s < n; s++) {
        Tensor row = rows_of(out, s, 1);
        SDC_TRY(clip_encode(clip, ids + (size_t)s * L, 1, 0, &row, err));
    }
    return 0;
}

// Batch `batch` of the current epoch, this replica's share: every sample's
// latents, noise, timestep, targets and loss weight (on every stage: cheap,
// and each stage uses its part), uploaded; the context, encoded by the text
// encoder on stage 0 when it trains. Sets t->rows (0: this replica is idle).
static int prepare_batch(DbTrainer *t, int64_t batch, SdcError *err) {
    const DbConfig *c = &t->cfg;
    const DbData *d = &t->data;
    SdModel *m = t->model;
    const Backend *be = t->be;
    const int L = clip_config(m->clip)->max_positions, h = d->lat_h, w = d->lat_w;
    const size_t lat = (size_t)4 * h * w;
    const int64_t first_item = batch * c->train_batch_size;
    const int b = (int)(t->n_items - first_item < c->train_batch_size ? t->n_items - first_item : c->train_batch_size);
    const int64_t total = (int64_t)b * (c->with_prior_preservation ? 2 : 1);
    int64_t f, n;
    share(total, t->hooks.replica, replicas(t), &f, &n);
    t->batch = batch, t->b_inst = b, t->first_row = (int)f, t->rows = (int)n;
    if (n == 0) return 0; // a short last batch can leave a replica idle; it still joins the all-reduce
    for (int64_t s = 0; s < n; s++) {
        const int64_t j = f + s; // index in the global batch: instances first, then the class samples
        const int is_class = j >= b;
        const int64_t item = t->order[first_item + (is_class ? j - b : j)];
        const size_t at = (size_t)(item % (is_class ? d->n_class : d->n_inst)) * lat;
        float *x0 = t->x0 + s * lat, *nz = t->noise + s * lat;
        Rng r;
        rng_seed(&r, db_sample_seed(c->seed, t->st.epoch, batch, j));
        rng_normal(&r, nz, lat);
        if (c->offset_noise > 0) { // diffusers: noise + 0.1 * randn(N, C, 1, 1)
            float off[4];
            rng_normal(&r, off, 4);
            for (int ch = 0; ch < 4; ch++)
                for (int i = 0; i < h * w; i++) nz[(size_t)ch * h * w + i] += c->offset_noise * off[ch];
        }
        float u;
        rng_uniform(&r, &u, 1);
        int ts = (int)(u * t->n_train);
        if (ts >= t->n_train) ts = t->n_train - 1;
        t->timesteps[s] = (float)ts;
        float *noisy = t->h_noisy + s * lat, *tg = t->h_target + s * lat;
        // text-to-image draws, each only when on (dreambooth.h's order); the
        // perturbation waits in noisy, the latent sample's noise in tg
        if (c->input_perturbation > 0) rng_normal(&r, noisy, lat);
        int flip = 0;
        if (!is_class && (d->flip_latents || (d->read_latents && d->has_flip))) {
            float uf;
            rng_uniform(&r, &uf, 1);
            flip = uf < 0.5f;
        }
        const float *mean, *sd;
        if (!is_class && d->read_latents) { // this item's rows, read now (x0 holds the mean until the sample)
            if (!t->rd_std && !(t->rd_std = malloc(lat * sizeof(float))))
                return sdc_err(err, SDC_ERR_OOM, "out of memory for a latent row");
            SDC_TRY(d->read_latents(d->read_user, item % d->n_inst, flip, x0, t->rd_std, err));
            mean = x0, sd = t->rd_std;
        } else {
            mean = is_class ? d->class_latents + at : (flip ? d->flip_latents : d->inst_latents) + at;
            sd = is_class ? NULL : flip ? d->flip_std : d->inst_std;
            if (sd) sd += at;
        }
        if (sd) { // latent_dist.sample(): mean + std * randn
            rng_normal(&r, tg, lat);
            for (size_t i = 0; i < lat; i++) x0[i] = mean[i] + sd[i] * tg[i];
        } else {
            if (mean != x0) memcpy(x0, mean, lat * sizeof(float));
        }
        int empty = 0;
        if (!is_class && c->proportion_empty > 0) {
            float ue;
            rng_uniform(&r, &ue, 1);
            empty = ue < c->proportion_empty;
        }
        const float sa = sqrtf(t->ac[ts]), sb = sqrtf(1.0f - t->ac[ts]), ip = c->input_perturbation;
        for (size_t i = 0; i < lat; i++) { // the target keeps the unperturbed noise
            noisy[i] = sa * x0[i] + sb * (ip > 0 ? nz[i] + ip * noisy[i] : nz[i]);
            tg[i] = t->prediction == PRED_V ? sa * nz[i] - sb * x0[i] : nz[i];
        }
        // loss = sum_j coef_j * sum_i (pred - target)^2, the means of diffusers' loss
        double cj = snr_weight(t, ts) / ((double)b * (double)lat) / c->grad_accum;
        if (is_class) cj *= c->prior_loss_weight;
        t->coef[s] = (float)cj;
        // d loss / d pred = 2 coef_j (pred - target), times the replica count: the all-reduce averages
        t->k[s] = 2.0f * t->coef[s] * (float)replicas(t);
        const int32_t *ids = is_class ? (d->class_item_ids ? d->class_item_ids + (size_t)(item % d->n_class) * L
                                                           : t->class_ids)
                             : empty ? t->empty_ids
                             : d->item_ids ? d->item_ids + (size_t)(item % d->n_inst) * L : t->inst_ids;
        memcpy(t->ids + s * L, ids, (size_t)L * sizeof(int32_t));
        if (t->xl) memcpy(t->ids2 + s * L, is_class ? t->class_ids2 : t->inst_ids2, (size_t)L * sizeof(int32_t));
        if (t->xl) // a class sample: the ids of the instance it is paired with (diffusers' collate_fn)
            memcpy(t->time_ids + s * 6, d->inst_time_ids + (size_t)(item % d->n_inst) * 6, 6 * sizeof(float));
    }
    Tensor nv = rows_of(&t->noisy, 0, (int)n), tv = rows_of(&t->target, 0, (int)n);
    backend_upload_f32(be, &nv, t->h_noisy, (size_t)n * lat);
    backend_upload_f32(be, &tv, t->h_target, (size_t)n * lat);
    if (t->hooks.stage != 0) return 0;
    Tensor cv = rows_of(&t->ctx, 0, (int)n);
    if (t->train_te && !t->xl) return clip_train_forward(m->clip, t->ids, (int)n, &cv, err);
    if (t->train_te) { // SDXL: [hidden_states[-2] of both] and text_encoder_2's pooled output
        Tensor h1 = rows_of(&t->h1, 0, (int)n), h2 = rows_of(&t->h2, 0, (int)n), pv = rows_of(&t->pooled, 0, (int)n);
        SDC_TRY(clip_train_forward_xl(m->clip, t->ids, (int)n, &h1, NULL, err));
        SDC_TRY(clip_train_forward_xl(m->clip2, t->ids2, (int)n, &h2, &pv, err));
        concat_last(be, &cv, &h1, &h2);
        return 0;
    }
    if (t->per_item) return encode_rows(m->clip, t->ids, (int)n, L, &cv, err);
    for (int64_t s = 0; s < n; s++) { // the frozen encoder's instance or class embedding
        Tensor dst = rows_of(&t->ctx, (int)s, 1), src = rows_of(&t->ctx_fixed, f + s >= b ? 1 : 0, 1);
        be->copy(be, &dst, &src);
        if (!t->xl) continue;
        dst = rows_of(&t->pooled, (int)s, 1), src = rows_of(&t->pooled_fixed, f + s >= b ? 1 : 0, 1);
        be->copy(be, &dst, &src);
    }
    return 0;
}

int db_micro_count(const DbTrainer *t, int rows) { return t->cfg.micro_batches < rows ? t->cfg.micro_batches : rows; }

void db_micro_rows(int rows, int M, int j, int *start, int *count) {
    int64_t f, n;
    share(rows, j, M, &f, &n);
    *start = (int)f, *count = (int)n;
}

int db_stage_inputs(DbTrainer *t, int r0, int n, UnetCut *in, const float **timesteps, SdcError *err) {
    if (r0 < 0 || n < 1 || r0 + n > t->rows || in->x.shape[0] != n)
        return sdc_err(err, SDC_ERR_INTERNAL, "dreambooth: rows [%d, %d) of %d", r0, r0 + n, t->rows);
    Tensor x = rows_of(&t->noisy, r0, n), c = rows_of(&t->ctx, r0, n);
    t->be->copy(t->be, &in->x, &x);
    t->be->copy(t->be, &in->ctx, &c);
    *timesteps = t->timesteps + r0;
    if (t->xl) { // read by the time block in the stage forward that follows
        Tensor pv = rows_of(&t->pooled, r0, n);
        SDC_TRY(unet_set_added_cond(t->model->unet, &pv, t->time_ids + (size_t)r0 * 6, err));
    }
    return 0;
}

int db_stage_loss(DbTrainer *t, int r0, int n, const Tensor *out, Tensor *dout, SdcError *err) {
    if (r0 < 0 || n < 1 || r0 + n > t->rows || out->shape[0] != n)
        return sdc_err(err, SDC_ERR_INTERNAL, "dreambooth: rows [%d, %d) of %d", r0, r0 + n, t->rows);
    Tensor tg = rows_of(&t->target, r0, n);
    t->be->mse_backward(t->be, dout, t->sq + r0, out, &tg, t->k + r0);
    for (int s = r0; s < r0 + n; s++) t->loss[t->first_row + s >= t->b_inst] += t->coef[s] * t->sq[s];
    return 0;
}

int db_stage_dctx(DbTrainer *t, int r0, int n, const Tensor *dctx, const Tensor *dtext, SdcError *err) {
    if (r0 < 0 || n < 1 || r0 + n > t->rows || dctx->shape[0] != n)
        return sdc_err(err, SDC_ERR_INTERNAL, "dreambooth: rows [%d, %d) of %d", r0, r0 + n, t->rows);
    Tensor d = rows_of(&t->dctx, r0, n);
    t->be->copy(t->be, &d, dctx);
    if (t->xl && t->train_te) {
        if (!dtext || !dtext->ndim || dtext->shape[0] != n)
            return sdc_err(err, SDC_ERR_INTERNAL, "dreambooth: no gradient of the pooled text embedding");
        Tensor dp = rows_of(&t->dpooled, r0, n);
        t->be->copy(t->be, &dp, dtext);
    }
    return 0;
}

static void grad_ready(void *user, size_t lo) {
    DbTrainer *t = user;
    if (!t->ov_rc) t->ov_rc = t->hooks.overlap_ready(t->hooks.user, lo, &t->ov_err);
}

int db_overlap_arm(DbTrainer *t, SdcError *err) {
    if (!t->final_batch || !t->hooks.overlap_begin || zero_on(t) || t->ov_armed) return 0;
    float *pb, *gb;
    size_t nn;
    unet_trainables(t->model->unet, &pb, &gb, &nn);
    SDC_TRY(t->hooks.overlap_begin(t->hooks.user, gb, nn, err));
    t->ov_armed = 1;
    unet_train_set_grad_hook(t->model->unet, grad_ready, t);
    return 0;
}

// One rank holding every block: the micro-batches one after the other.
static int run_local(DbTrainer *t, SdcError *err) {
    Unet *u = t->model->unet;
    const int M = db_micro_count(t, t->rows);
    for (int j = 0; j < M; j++) {
        int r0, n;
        db_micro_rows(t->rows, M, j, &r0, &n);
        UnetCut in, out, gin, gout;
        const float *ts = NULL;
        SDC_TRY(unet_train_cut_in(u, 0, n, &in, err));
        SDC_TRY(db_stage_inputs(t, r0, n, &in, &ts, err));
        SDC_TRY(unet_train_stage_forward(u, 0, ts, &out, err));
        SDC_TRY(unet_train_grad_in(u, 0, &gin, err));
        SDC_TRY(db_stage_loss(t, r0, n, &out.x, &gin.x, err));
        if (j == M - 1) SDC_TRY(db_overlap_arm(t, err));
        SDC_TRY(unet_train_stage_backward(u, 0, &gout, err));
        if (t->cfg.train_text_encoder) SDC_TRY(db_stage_dctx(t, r0, n, &gout.ctx, &gout.text, err));
    }
    return 0;
}

// Forward and backward of batch `batch` of the current epoch on this
// replica's share; adds this rank's loss terms into t->loss.
static int data_batch(DbTrainer *t, int64_t batch, SdcError *err) {
    SDC_TRY(prepare_batch(t, batch, err));
    if (t->rows == 0) return db_overlap_arm(t, err); // an idle replica still posts its share of the all-reduce
    int rc = t->hooks.pipeline ? t->hooks.pipeline(t->hooks.user, t, t->rows, err) : run_local(t, err);
    unet_train_set_grad_hook(t->model->unet, NULL, NULL);
    SDC_TRY(rc);
    if (t->ov_rc) return sdc_err(err, t->ov_rc, "%s", t->ov_err.msg);
    if (t->train_te && !t->xl) {
        Tensor dv = rows_of(&t->dctx, 0, t->rows);
        SDC_TRY(clip_train_backward(t->model->clip, &dv, err));
    } else if (t->train_te) { // SDXL: d ctx split back into the two encoders' hidden states
        Tensor dv = rows_of(&t->dctx, 0, t->rows), d1 = rows_of(&t->dh1, 0, t->rows), d2 = rows_of(&t->dh2, 0, t->rows);
        Tensor dp = rows_of(&t->dpooled, 0, t->rows);
        const int64_t rows = (int64_t)t->rows * dv.shape[1];
        Tensor dy = dv, da = d1, db = d2; // (B*L, D1 + D2) -> (B*L, D1), (B*L, D2)
        dy.ndim = da.ndim = db.ndim = 2;
        dy.shape[0] = da.shape[0] = db.shape[0] = rows;
        dy.shape[1] = dv.shape[2], da.shape[1] = d1.shape[2], db.shape[1] = d2.shape[2];
        t->be->concat_channels_backward(t->be, &da, &db, &dy);
        SDC_TRY(clip_train_backward_xl(t->model->clip, &d1, NULL, err));
        SDC_TRY(clip_train_backward_xl(t->model->clip2, &d2, &dp, err));
    }
    return 0;
}

// ---------------------------------------------------------------------------
// the loop
// ---------------------------------------------------------------------------

static void group_trainables(DbTrainer *t, int gi, float **pb, float **gb, size_t *nn) {
    if (gi == 0) unet_trainables(t->model->unet, pb, gb, nn);
    else clip_trainables(group_clip(t, gi), pb, gb, nn);
}

// clip_grad_norm_ over every stage's tensors: each tensor's sum of squares
// (with ZeRO-1 from its pieces on every replica), then torch's norm of the
// per-tensor fp32 norms in one order: the UNet's tensors stage by stage,
// then the text encoder's (stage 0's), as one process's table lists them.
// Every rank scales its own gradients.
static int clip_grads(DbTrainer *t, double max_norm, float *norm, SdcError *err) {
    // the tensors' places: group 0's from 0, then the text encoders' groups in order
    const int ng = n_groups(t), n0 = t->full_n[0];
    int first[DB_MAX_GROUPS] = {0}, n1 = 0;
    for (int gi = 1; gi < ng; gi++) first[gi] = n0 + n1, n1 += t->full_n[gi];
    const int n = n0 + n1;
    double *ss = calloc((size_t)n + 1, sizeof *ss), *all = NULL;
    int rc = ss ? 0 : sdc_err(err, SDC_ERR_OOM, "gradient norm");
    for (int gi = 0; !rc && gi < ng; gi++) {
        const AdamWGroup *g = &t->opt.groups[gi];
        for (int k = 0; k < g->n_tensors; k++) {
            const double s = t->be->sum_squares(t->be, g->tensors[k].g, g->tensors[k].n);
            ss[first[gi] + (zero_on(t) ? t->shard[gi].piece_tensor[k] : k)] += s;
        }
    }
    if (!rc && zero_on(t) && t->hooks.dp_sum) rc = t->hooks.dp_sum(t->hooks.user, ss, n, err);
    int n_all = n;
    if (!rc && stages(t) > 1) { // the UNet's tensors of every stage, then the text encoders' (stage 0's)
        const int cap = 1 << 16;
        all = malloc((size_t)cap * sizeof *all);
        if (!all) rc = sdc_err(err, SDC_ERR_OOM, "gradient norm");
        if (!rc) rc = t->hooks.stage_allgather(t->hooks.user, ss, n0, all, cap, &n_all, err);
        double n_te = n1;
        if (!rc) rc = t->hooks.stage_bcast(t->hooks.user, &n_te, 1, 0, err);
        if (!rc && n_all + (int)n_te > cap)
            rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "gradient norm: more than %d tensors", cap);
        if (!rc && t->hooks.stage == 0) memcpy(all + n_all, ss + n0, (size_t)n1 * sizeof *all);
        if (!rc && n_te > 0) rc = t->hooks.stage_bcast(t->hooks.user, all + n_all, (int)n_te, 0, err);
        n_all += (int)n_te;
    }
    float coef = 1.0f;
    if (!rc) rc = optim_clip_coef_from_sumsq(all ? all : ss, n_all, max_norm, norm, &coef, err);
    if (!rc && coef < 1.0f) adamw_scale_grads(&t->opt, coef);
    free(ss), free(all);
    return rc;
}

int db_opt_full_alloc(DbTrainer *t, AdamW *full, SdcError *err) {
    if (!zero_on(t)) {
        *full = t->opt; // the optimizer itself
        return 0;
    }
    AdamWGroupDesc gd[DB_MAX_GROUPS];
    for (int gi = 0; gi < t->opt.n_groups; gi++)
        gd[gi] = (AdamWGroupDesc){.tensors = t->full_ot[gi], .n_tensors = t->full_n[gi],
                                  .lr_scale = t->opt.groups[gi].lr_scale, .has_weight_decay = 1,
                                  .weight_decay = t->opt.groups[gi].weight_decay};
    SDC_TRY(adamw_init(full, t->be, &t->opt.cfg, gd, t->opt.n_groups, err));
    full->step = t->opt.step;
    return 0;
}

void db_opt_take(DbTrainer *t, const AdamW *full) {
    t->opt.step = full->step; // (without ZeRO full shares t->opt's moments: the step is all there is to take)
    if (!zero_on(t)) return;
    const Backend *be = t->be;
    for (int gi = 0; gi < t->opt.n_groups; gi++) {
        const size_t off = (size_t)t->shard[gi].mv_displs[t->hooks.replica];
        const int64_t n = (int64_t)t->opt.groups[gi].numel;
        Tensor dm = tensor_make(DT_F32, be->device, t->opt.groups[gi].m, 1, &n);
        Tensor dv = tensor_make(DT_F32, be->device, t->opt.groups[gi].v, 1, &n);
        Tensor sm = tensor_make(DT_F32, be->device, full->groups[gi].m + off, 1, &n);
        Tensor sv = tensor_make(DT_F32, be->device, full->groups[gi].v + off, 1, &n);
        be->copy(be, &dm, &sm);
        be->copy(be, &dv, &sv);
    }
}

void db_opt_full_free(DbTrainer *t, AdamW *full) {
    if (zero_on(t)) adamw_free(full);
    memset(full, 0, sizeof *full);
}

int db_opt_full(DbTrainer *t, AdamW *full, SdcError *err) {
    if (!zero_on(t)) {
        *full = t->opt;
        return 0;
    }
    // replica 0 holds the whole state of its stage for the moment of the save
    const int root = t->hooks.replica == 0;
    int rc = root ? db_opt_full_alloc(t, full, err) : 0;
    if (!root) memset(full, 0, sizeof *full);
    for (int gi = 0; gi < t->opt.n_groups; gi++) {
        int grc = t->hooks.gather(t->hooks.user, t->opt.groups[gi].m, rc ? NULL : full->groups ? full->groups[gi].m : NULL,
                                  t->shard[gi].mv_counts, t->shard[gi].mv_displs, err);
        if (!grc)
            grc = t->hooks.gather(t->hooks.user, t->opt.groups[gi].v, rc ? NULL : full->groups ? full->groups[gi].v : NULL,
                                  t->shard[gi].mv_counts, t->shard[gi].mv_displs, err);
        if (!rc) rc = grc;
    }
    return rc;
}

// A failure of this rank's alone inside a step: with other ranks waiting on
// it, the job ends here (hooks.failed_alone does not return).
static int failed_alone(DbTrainer *t, int rc, SdcError *err) {
    if (t->hooks.failed_alone) t->hooks.failed_alone(t->hooks.user, err);
    return rc;
}

int db_train(DbTrainer *t, int64_t until, SdcError *err) {
    const DbConfig *c = &t->cfg;
    const Backend *be = t->be;
    if (until > c->max_train_steps) until = c->max_train_steps;
    while (t->st.global_step < until) {
        double t0 = wall_s();
        // A failure before the update leaves the weights and the optimizer
        // as the last step left them: the state goes back to that step too,
        // so the caller can still checkpoint it (out of memory on the device).
        // With other ranks, a failure of this rank's alone ends the job
        // (hooks.failed_alone): they are mid-step, waiting on this one.
        const DbState st0 = t->st;
#define STEP_TRY(expr)                               \
    do {                                             \
        int rc_ = (expr);                            \
        if (rc_) {                                   \
            t->st = st0;                             \
            return failed_alone(t, rc_, err);        \
        }                                            \
    } while (0)
#define ALONE_TRY(expr)                              \
    do {                                             \
        int rc_ = (expr);                            \
        if (rc_) return failed_alone(t, rc_, err);   \
    } while (0)
        t->loss[0] = t->loss[1] = 0;
        int items = 0, n_batches = 0;
        // one optimizer step: grad_accum batches, or the epoch's rest
        for (;;) {
            draw_order(t, t->st.epoch);
            int64_t bi = t->st.batch_in_epoch;
            int last = bi + 1 == t->batches_per_epoch;
            int sync = optim_accum_is_sync(bi, c->grad_accum, last);
            t->final_batch = sync;
            STEP_TRY(data_batch(t, bi, err));
            n_batches++;
            int64_t fi = bi * c->train_batch_size;
            items += (int)(t->n_items - fi < c->train_batch_size ? t->n_items - fi : c->train_batch_size);
            t->st.batch_in_epoch++;
            if (last) {
                t->st.epoch++;
                t->st.batch_in_epoch = 0;
            }
            if (sync) break;
        }
        if (c->fault_step == t->st.global_step + 1)
            STEP_TRY(sdc_err(err, SDC_ERR_OOM, "step %lld: out of memory (SDC_FAULT_STEP)", (long long)c->fault_step));
        const int ng = n_groups(t);
        if (zero_on(t)) { // each replica's block of the flat gradient buffers, averaged
            for (int gi = 0; gi < ng; gi++) {
                float *pb, *gb;
                size_t nn;
                group_trainables(t, gi, &pb, &gb, &nn);
                STEP_TRY(t->hooks.reduce_scatter_mean(t->hooks.user, gb, t->shard[gi].counts, t->shard[gi].displs, err));
            }
        } else if (t->hooks.allreduce_mean) { // the flat gradient buffers, padding included
            for (int gi = 0; gi < ng; gi++) {
                float *pb, *gb;
                size_t nn;
                group_trainables(t, gi, &pb, &gb, &nn);
                if (gi == 0 && t->ov_armed) STEP_TRY(t->hooks.overlap_end(t->hooks.user, err)); // in flight already
                else STEP_TRY(t->hooks.allreduce_mean(t->hooks.user, gb, nn, err));
            }
        }
        t->ov_armed = 0;
        double loss[2] = {t->loss[0], t->loss[1]};
        if (t->hooks.allreduce_sum) STEP_TRY(t->hooks.allreduce_sum(t->hooks.user, loss, 2, err));
        // the mean over the step's batches of diffusers' loss (each term carries 1 / accum)
        double unscale = (double)c->grad_accum / n_batches;
        double total = (loss[0] + loss[1]) * unscale;
        int64_t step = t->st.global_step;
        STEP_TRY(backend_status(be, err)); // an op failed (no memory for its scratch, a device error)
        if (!isfinite(total))
            return t->st = st0, sdc_err(err, SDC_ERR_NONFINITE,
                           "the loss became %g at step %lld\n---> lower --learning-rate; the weights are "
                           "those of step %lld (the last checkpoint is kept)",
                           total, (long long)step + 1, (long long)step);
        float norm = 0;
        int rc = clip_grads(t, c->max_grad_norm > 0 ? c->max_grad_norm : INFINITY, &norm, err);
        if (rc == SDC_ERR_NONFINITE)
            return t->st = st0, sdc_err(err, SDC_ERR_NONFINITE,
                           "the gradient norm became %g at step %lld\n---> lower --learning-rate; the weights "
                           "are those of step %lld (the last checkpoint is kept)",
                           norm, (long long)step + 1, (long long)step);
        STEP_TRY(rc);
        double lr = lr_schedule_lr(&t->sched, c->learning_rate, step);
        t->updating = 1;
        adamw_step(&t->opt, lr);
        for (int gi = 0; gi < ng; gi++) { // ZeRO: every replica's updated slice to all; every gradient cleared
            float *pb, *gb;
            size_t nn;
            group_trainables(t, gi, &pb, &gb, &nn);
            if (zero_on(t)) ALONE_TRY(t->hooks.allgather(t->hooks.user, pb, t->shard[gi].counts, t->shard[gi].displs, err));
            be->zero(be, gb, nn * sizeof(float));
        }
        if (c->use_ema) { // EMAModel.step(unet.parameters()) after the optimizer's
            float *pb, *gb;
            size_t nn;
            unet_trainables(t->model->unet, &pb, &gb, &nn);
            ALONE_TRY(ema_update(be, &c->ema, t->st.global_step + 1, t->ema, pb, nn, err));
        }
        ALONE_TRY(backend_status(be, err)); // the update failed on the device: this state is never checkpointed
        t->st.global_step++;
        t->st.last_loss = total;
        t->updating = 0;
        double dt = wall_s() - t0;
        DbStepInfo info = {.step = t->st.global_step, .max_steps = c->max_train_steps, .loss = total,
                           .loss_prior = loss[1] * unscale, .lr = lr, .grad_norm = norm,
                           .items_per_s = dt > 0 ? items / dt : 0, .seconds = dt};
        if (t->hooks.on_step) SDC_TRY(t->hooks.on_step(t->hooks.user, &info, err)); // (a stop all ranks agreed)
    }
#undef STEP_TRY
#undef ALONE_TRY
    return 0;
}

// ---------------------------------------------------------------------------
// validation images
// ---------------------------------------------------------------------------

int db_validate(DbTrainer *t, const char *prompt, int n, int steps, float cfg_scale, uint64_t seed,
                float *images, SdcError *err) {
    SdModel *m = t->model;
    const ClipConfig *cc = clip_config(m->clip);
    const int L = cc->max_positions, D = cc->hidden;
    // the frozen encoders' conditioning as the pipeline takes it (SDXL: both encoders and the pooled embeddings)
    // (SDXL: the inference forward runs the trained weights too, LoRA adapters included)
    const int own = t->train_te && !t->xl;
    float *ctx = malloc((own ? (size_t)2 * L * D : sd_cond_floats(m)) * sizeof(float));
    if (!ctx) return sdc_err(err, SDC_ERR_OOM, "validation: out of memory");
    int rc = 0;
    if (own) { // the trained encoder (LoRA included), negative "" first
        int32_t ids[2 * 1024];
        int dropped;
        if (!(rc = clip_tok_encode(m->tok, "", ids, L, cc->pad_token, &dropped, err)) &&
            !(rc = clip_tok_encode(m->tok, prompt, ids + L, L, cc->pad_token, &dropped, err))) {
            // through the step's context buffer (share_max rows); one prompt at a time if it holds one
            const int per = t->share_max >= 2 ? 2 : 1;
            for (int i = 0; i < 2 && !rc; i += per) {
                Tensor o = rows_of(&t->ctx, 0, per);
                rc = clip_train_forward(m->clip, ids + (size_t)i * L, per, &o, err);
                if (!rc) backend_download_f32(t->be, ctx + (size_t)i * L * D, &o, (size_t)per * L * D);
                if (!rc) rc = backend_status(t->be, err);
            }
        }
    } else {
        rc = sd_encode_prompt(m, prompt, "", 0, ctx, err);
    }
    if (t->ema) db_ema_swap(t); // EMAModel.store + copy_to; swapped back below (restore)
    if (!rc) rc = unet_lora_merge(m->unet, 1, err);
    if (!rc) {
        GenParams p = {.mode = GEN_TXT2IMG, .steps = steps, .cfg_scale = cfg_scale, .sampler = SAMPLER_DPMPP_2M,
                       .seed = seed, .width = t->data.lat_w * t->px_per_latent,
                       .height = t->data.lat_h * t->px_per_latent, .batch = 1};
        size_t img = (size_t)3 * p.width * p.height;
        for (int i = 0; i < n && !rc; i++) {
            p.seed = seed + (uint64_t)i;
            rc = sd_generate(m, &p, ctx, NULL, images + i * img, NULL, NULL, err);
        }
        SdcError e2 = {0};
        if (unet_lora_merge(m->unet, 0, &e2) && !rc) rc = sdc_err(err, e2.code, "%s", e2.msg);
    }
    if (t->ema) db_ema_swap(t);
    free(ctx);
    return rc ? sdc_err_wrap(err, "validation images") : 0;
}

// ---------------------------------------------------------------------------
// EMA
// ---------------------------------------------------------------------------

int db_ema_table(const DbTrainer *t, ParamTable *out, SdcError *err) {
    memset(out, 0, sizeof *out);
    if (!t->ema) return sdc_err(err, SDC_ERR_INTERNAL, "no EMA in this training run");
    const ParamTable *tb = unet_train_table(t->model->unet);
    float *pb, *gb;
    size_t nn;
    unet_trainables(t->model->unet, &pb, &gb, &nn);
    out->e = malloc((size_t)(tb->n > 0 ? tb->n : 1) * sizeof *out->e);
    if (!out->e) return sdc_err(err, SDC_ERR_OOM, "EMA table");
    out->n = out->cap = tb->n;
    for (int i = 0; i < tb->n; i++) {
        out->e[i] = tb->e[i];
        out->e[i].t.data = t->ema + (tensor_f32p(&tb->e[i].t) - pb);
    }
    return 0;
}

void db_ema_swap(DbTrainer *t) {
    if (!t->ema) return;
    float *pb, *gb;
    size_t nn;
    unet_trainables(t->model->unet, &pb, &gb, &nn);
    // through the gradient buffer, which holds nothing between steps (zeroed after each update)
    const int64_t n = (int64_t)nn;
    Tensor p = tensor_make(DT_F32, t->be->device, pb, 1, &n), e = tensor_make(DT_F32, t->be->device, t->ema, 1, &n),
           g = tensor_make(DT_F32, t->be->device, gb, 1, &n);
    t->be->copy(t->be, &g, &p);
    t->be->copy(t->be, &p, &e);
    t->be->copy(t->be, &e, &g);
    t->be->zero(t->be, gb, nn * sizeof(float));
}
