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

static void dp_share(int64_t n, int rank, int size, int64_t *first, int64_t *count) {
    int64_t q = n / size, r = n % size;
    *first = rank * q + (rank < r ? rank : r);
    *count = q + (rank < r ? 1 : 0);
}

// ---------------------------------------------------------------------------
// set-up
// ---------------------------------------------------------------------------

// ZeRO-1: rank r keeps the moments of the slice [B_r, B_{r+1}) of the
// group's tensors concatenated in table order (B_k = N k / R; so its moments
// are exactly that slice of what a checkpoint stores), as pieces of tensors.
// Its block of the flat gradient / parameter buffer (padding included) runs
// from where B_r falls to where B_{r+1} does: the blocks tile the buffer in
// rank order, as MPI_Reduce_scatter and MPI_Allgatherv want.
static int make_shard(DbTrainer *t, int gi, const OptimTensor *ot, int n_t, const float *pb, size_t nn,
                      OptimTensor **pieces, int *n_pieces, SdcError *err) {
    const int R = t->hooks.world, r = t->hooks.rank;
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
    if (c->train_batch_size < 1 || c->grad_accum < 1 || c->max_train_steps < 1 || !(c->learning_rate > 0) ||
        c->lora_rank < 0 || data->n_inst < 1 || data->lat_h < 1 ||
        (c->with_prior_preservation && (data->n_class < 1 || !data->class_latents)))
        return sdc_err(err, SDC_ERR_ARG,
                       "dreambooth: batch %d, accumulation %d, %lld steps, lr %g, LoRA rank %d, %d instance "
                       "and %d class latents: out of range",
                       c->train_batch_size, c->grad_accum, (long long)c->max_train_steps, c->learning_rate,
                       c->lora_rank, data->n_inst, data->n_class);
    const UnetConfig *uc = unet_config(model->unet);
    const ClipConfig *cc = clip_config(model->clip);
    const int L = cc->max_positions, D = cc->hidden, h = data->lat_h, w = data->lat_w;
    if (uc->in_channels != 4)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "dreambooth: the UNet has %d input channels; training an "
                       "inpainting UNet is not supported\n---> train a text-to-image model", uc->in_channels);
    t->prediction = uc->prediction;
    if (L > 1024) return sdc_err(err, SDC_ERR_UNSUPPORTED, "dreambooth: %d text positions", L);
    int dropped = 0;
    SDC_TRY(clip_tok_encode(model->tok, data->instance_prompt ? data->instance_prompt : "", t->inst_ids, L,
                            cc->pad_token, &dropped, err));
    SDC_TRY(clip_tok_encode(model->tok, data->class_prompt ? data->class_prompt : "", t->class_ids, L,
                            cc->pad_token, &dropped, err));
    t->n_items = c->with_prior_preservation && data->n_class > data->n_inst ? data->n_class : data->n_inst;
    t->batches_per_epoch = (t->n_items + c->train_batch_size - 1) / c->train_batch_size;
    t->updates_per_epoch = (t->batches_per_epoch + c->grad_accum - 1) / c->grad_accum;
    int per_batch = c->train_batch_size * (c->with_prior_preservation ? 2 : 1);
    int64_t f, n;
    dp_share(per_batch, 0, hooks->world > 0 ? hooks->world : 1, &f, &n);
    t->share_max = (int)n;
    if (t->share_max < 1)
        return sdc_err(err, SDC_ERR_ARG, "dreambooth: a global batch of %d samples over %d ranks leaves a rank "
                       "without work\n---> raise --train-batch-size or run fewer ranks", per_batch, hooks->world);

    // noise schedule: DDPMScheduler from the model's config (SD's scaled_linear betas)
    Sampler s;
    SDC_TRY(sampler_init(&s, SAMPLER_DDPM, 1, SPACING_LEADING, t->prediction, 0, 1, err));
    memcpy(t->ac, s.alphas_cumprod, sizeof t->ac);
    sampler_free(&s);

    size_t lat = (size_t)4 * h * w, sm = (size_t)t->share_max;
    t->order = calloc((size_t)t->n_items, sizeof *t->order);
    t->x0 = malloc(sm * lat * sizeof(float));
    t->noise = malloc(sm * lat * sizeof(float));
    t->noisy = malloc(sm * lat * sizeof(float));
    t->target = malloc(sm * lat * sizeof(float));
    t->pred = malloc(sm * lat * sizeof(float));
    t->dout = malloc(sm * lat * sizeof(float));
    t->coef = malloc(sm * sizeof(float));
    t->timesteps = malloc(sm * sizeof(float));
    t->ctx = malloc(sm * (size_t)L * D * sizeof(float));
    t->dctx = malloc(sm * (size_t)L * D * sizeof(float));
    t->ctx_fixed = malloc((size_t)2 * L * D * sizeof(float));
    t->ids = malloc(sm * (size_t)L * sizeof(int32_t));
    if (!t->order || !t->x0 || !t->noise || !t->noisy || !t->target || !t->pred || !t->dout || !t->coef ||
        !t->timesteps || !t->ctx || !t->dctx || !t->ctx_fixed || !t->ids) {
        db_free(t);
        return sdc_err(err, SDC_ERR_OOM, "dreambooth: out of memory for the step buffers");
    }

    int rc;
    UnetTrainOpts uo = {.checkpointing = c->gradient_checkpointing, .lora_rank = c->lora_rank,
                        .lora_alpha = c->lora_alpha, .lora_seed = c->seed, .want_dctx = c->train_text_encoder};
    if ((rc = unet_train_reserve(model->unet, &uo, t->share_max, h, w, L, err))) goto fail;
    if (c->train_text_encoder) {
        ClipTrainOpts co = {.lora_rank = c->lora_rank, .lora_alpha = c->lora_alpha, .lora_seed = c->seed + 1};
        if ((rc = clip_train_reserve(model->clip, &co, t->share_max, err))) goto fail;
    } else { // frozen: the two embeddings once
        int32_t ids2[2 * 1024];
        memcpy(ids2, t->inst_ids, (size_t)L * sizeof(int32_t));
        memcpy(ids2 + L, t->class_ids, (size_t)L * sizeof(int32_t));
        if ((rc = clip_reserve(model->clip, 2, err))) goto fail;
        Tensor o = tensor_make(DT_F32, DEV_CPU, t->ctx_fixed, 3, (int64_t[]){2, L, D});
        if ((rc = clip_encode(model->clip, ids2, 2, 0, &o, err))) goto fail;
    }

    // One OptimTensor per named tensor (the table's order is the arena's), so
    // the AdamW moments are the tensors' moments concatenated, as a
    // checkpoint stores them.
    OptimTensor *ot[2] = {NULL, NULL};
    AdamWGroupDesc gd[2];
    int ng = c->train_text_encoder ? 2 : 1;
    for (int gi = 0; gi < ng; gi++) {
        float *pb, *gb;
        size_t nn;
        const ParamTable *tb;
        if (gi == 0) {
            unet_trainables(model->unet, &pb, &gb, &nn);
            tb = unet_train_table(model->unet);
        } else {
            clip_trainables(model->clip, &pb, &gb, &nn);
            tb = clip_train_table(model->clip);
        }
        ot[gi] = calloc((size_t)tb->n, sizeof *ot[gi]);
        if (!ot[gi]) {
            free(ot[0]);
            rc = sdc_err(err, SDC_ERR_OOM, "dreambooth: out of memory");
            goto fail;
        }
        for (int i = 0; i < tb->n; i++) {
            float *p = tensor_f32p(&tb->e[i].t);
            ot[gi][i] = (OptimTensor){.p = p, .g = gb + (p - pb), .n = (size_t)tensor_numel(&tb->e[i].t)};
        }
        gd[gi] = (AdamWGroupDesc){.tensors = ot[gi], .n_tensors = tb->n, .lr_scale = 1.0};
        t->full_ot[gi] = ot[gi], t->full_n[gi] = tb->n;
        if (t->hooks.zero && t->hooks.world > 1) { // this rank's slice of the group
            OptimTensor *pieces = NULL;
            int np = 0;
            if ((rc = make_shard(t, gi, ot[gi], tb->n, pb, nn, &pieces, &np, err))) goto fail;
            gd[gi] = (AdamWGroupDesc){.tensors = pieces, .n_tensors = np, .lr_scale = 1.0};
        }
    }
    rc = adamw_init(&t->opt, &c->adam, gd, ng, err);
    if (t->hooks.zero && t->hooks.world > 1)
        for (int gi = 0; gi < ng; gi++) free((void *)gd[gi].tensors); // copied by adamw_init
    if (rc) goto fail;
    adamw_zero_grad(&t->opt);
    if ((rc = lr_schedule_init(&t->sched, c->lr_scheduler, c->learning_rate, c->lr_warmup_steps,
                               c->max_train_steps, c->lr_num_cycles, c->lr_power, err)))
        goto fail;
    return 0;
fail:
    sdc_err_wrap(err, "setting up DreamBooth training");
    db_free(t);
    return rc;
}

void db_free(DbTrainer *t) {
    adamw_free(&t->opt);
    for (int gi = 0; gi < 2; gi++) {
        DbShard *z = &t->shard[gi];
        free(t->full_ot[gi]), free(z->counts), free(z->displs), free(z->mv_counts), free(z->mv_displs);
        free(z->piece_tensor);
        t->full_ot[gi] = NULL;
        memset(z, 0, sizeof *z);
    }
    free(t->order), free(t->x0), free(t->noise), free(t->noisy), free(t->target), free(t->pred);
    free(t->dout), free(t->coef), free(t->timesteps), free(t->ctx), free(t->dctx), free(t->ctx_fixed);
    free(t->ids);
    t->order = NULL;
    t->x0 = t->noise = t->noisy = t->target = t->pred = t->dout = t->coef = t->timesteps = NULL;
    t->ctx = t->dctx = t->ctx_fixed = NULL;
    t->ids = NULL;
}

// ---------------------------------------------------------------------------
// one micro-batch
// ---------------------------------------------------------------------------

// min-SNR weight of timestep ts: min(snr, gamma) / snr (+ 1 for v-prediction,
// diffusers' floor of the velocity objective).
static float snr_weight(const DbTrainer *t, int ts) {
    if (!(t->cfg.snr_gamma > 0)) return 1.0f;
    double ab = t->ac[ts], snr = ab / (1.0 - ab);
    double w = (snr < t->cfg.snr_gamma ? snr : t->cfg.snr_gamma) / snr;
    if (t->prediction == PRED_V) w += 1.0;
    return (float)w;
}

// Runs forward and backward of micro-batch `batch` of the current epoch on
// this rank's share; adds this rank's loss terms into loss[0] (instance) and
// loss[1] (prior), already normalised over the global batch.
static int micro_batch(DbTrainer *t, int64_t batch, double loss[2], SdcError *err) {
    const DbConfig *c = &t->cfg;
    const DbData *d = &t->data;
    SdModel *m = t->model;
    const ClipConfig *cc = clip_config(m->clip);
    const int L = cc->max_positions, D = cc->hidden, h = d->lat_h, w = d->lat_w;
    const size_t lat = (size_t)4 * h * w;
    const int world = t->hooks.world > 0 ? t->hooks.world : 1;
    int64_t first_item = batch * c->train_batch_size;
    int b = (int)(t->n_items - first_item < c->train_batch_size ? t->n_items - first_item : c->train_batch_size);
    int prior = c->with_prior_preservation;
    int64_t total = (int64_t)b * (prior ? 2 : 1), f, n;
    dp_share(total, t->hooks.rank, world, &f, &n);
    if (n == 0) return 0; // a short last batch can leave a rank idle; it still joins the all-reduce

    for (int64_t s = 0; s < n; s++) {
        int64_t j = f + s; // index in the global batch: instances first, then the class samples
        int is_class = j >= b;
        int64_t item = t->order[first_item + (is_class ? j - b : j)];
        const float *src = is_class ? d->class_latents + (size_t)(item % d->n_class) * lat
                                    : d->inst_latents + (size_t)(item % d->n_inst) * lat;
        float *x0 = t->x0 + s * lat, *nz = t->noise + s * lat;
        memcpy(x0, src, lat * sizeof(float));
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
        int ts = (int)(u * SCHED_TRAIN_STEPS);
        if (ts >= SCHED_TRAIN_STEPS) ts = SCHED_TRAIN_STEPS - 1;
        t->timesteps[s] = (float)ts;
        float sa = sqrtf(t->ac[ts]), sb = sqrtf(1.0f - t->ac[ts]);
        float *noisy = t->noisy + s * lat, *tg = t->target + s * lat;
        for (size_t i = 0; i < lat; i++) {
            noisy[i] = sa * x0[i] + sb * nz[i];
            tg[i] = t->prediction == PRED_V ? sa * nz[i] - sb * x0[i] : nz[i];
        }
        // loss = sum_j coef_j * sum_i (pred - target)^2, the means of diffusers' loss
        double cj = snr_weight(t, ts) / ((double)b * (double)lat) / c->grad_accum;
        if (is_class) cj *= c->prior_loss_weight;
        t->coef[s] = (float)cj;
        memcpy(t->ids + s * L, is_class ? t->class_ids : t->inst_ids, (size_t)L * sizeof(int32_t));
        if (!c->train_text_encoder)
            memcpy(t->ctx + s * (size_t)L * D, t->ctx_fixed + (is_class ? 1 : 0) * (size_t)L * D,
                   (size_t)L * D * sizeof(float));
    }
    Tensor tctx = tensor_make(DT_F32, DEV_CPU, t->ctx, 3, (int64_t[]){n, L, D});
    if (c->train_text_encoder) SDC_TRY(clip_train_forward(m->clip, t->ids, (int)n, &tctx, err));
    Tensor tx = tensor_make(DT_F32, DEV_CPU, t->noisy, 4, (int64_t[]){n, 4, h, w});
    Tensor tp = tensor_make(DT_F32, DEV_CPU, t->pred, 4, (int64_t[]){n, 4, h, w});
    SDC_TRY(unet_train_forward(m->unet, &tp, &tx, t->timesteps, &tctx, err));
    for (int64_t s = 0; s < n; s++) {
        const float *p = t->pred + s * lat, *tg = t->target + s * lat;
        float *g = t->dout + s * lat;
        double sq = 0;
        // gradient scaled by the rank count: the all-reduce averages
        float k = 2.0f * t->coef[s] * (float)world;
        for (size_t i = 0; i < lat; i++) {
            float e = p[i] - tg[i];
            sq += (double)e * e;
            g[i] = k * e;
        }
        int is_class = f + s >= b;
        loss[is_class] += t->coef[s] * sq;
    }
    Tensor tdo = tensor_make(DT_F32, DEV_CPU, t->dout, 4, (int64_t[]){n, 4, h, w});
    Tensor tdc = tensor_make(DT_F32, DEV_CPU, t->dctx, 3, (int64_t[]){n, L, D});
    SDC_TRY(unet_train_backward(m->unet, &tdo, c->train_text_encoder ? &tdc : NULL, err));
    if (c->train_text_encoder) SDC_TRY(clip_train_backward(m->clip, &tdc, err));
    return 0;
}

// ---------------------------------------------------------------------------
// the loop
// ---------------------------------------------------------------------------

// ZeRO-1 clip_grad_norm_: every tensor's sum of squares from its pieces on
// all ranks (one all-reduce of a double per tensor), then torch's norm of
// per-tensor fp32 norms as without ZeRO; each rank scales its pieces.
static int zero_clip(DbTrainer *t, double max_norm, float *norm, SdcError *err) {
    const int ng = t->opt.n_groups;
    const int n0 = t->shard[0].n_tensors, n = n0 + (ng > 1 ? t->shard[1].n_tensors : 0);
    double *ss = calloc((size_t)n, sizeof *ss);
    if (!ss) return sdc_err(err, SDC_ERR_OOM, "ZeRO-1 norms");
    for (int gi = 0; gi < ng; gi++) {
        const AdamWGroup *g = &t->opt.groups[gi];
        for (int k = 0; k < g->n_tensors; k++) {
            double s = 0;
            for (size_t j = 0; j < g->tensors[k].n; j++) s += (double)g->tensors[k].g[j] * g->tensors[k].g[j];
            ss[(gi ? n0 : 0) + t->shard[gi].piece_tensor[k]] += s;
        }
    }
    int rc = t->hooks.allreduce_sum ? t->hooks.allreduce_sum(t->hooks.user, ss, n, err) : 0;
    float coef = 1.0f;
    if (!rc) rc = optim_clip_coef_from_sumsq(ss, n, max_norm, norm, &coef, err);
    if (!rc && coef < 1.0f) adamw_scale_grads(&t->opt, coef);
    free(ss);
    return rc;
}

int db_opt_full_alloc(DbTrainer *t, AdamW *full, SdcError *err) {
    if (!(t->hooks.zero && t->hooks.world > 1)) {
        *full = t->opt; // the optimizer itself
        return 0;
    }
    AdamWGroupDesc gd[2];
    for (int gi = 0; gi < t->opt.n_groups; gi++)
        gd[gi] = (AdamWGroupDesc){.tensors = t->full_ot[gi], .n_tensors = t->full_n[gi],
                                  .lr_scale = t->opt.groups[gi].lr_scale};
    SDC_TRY(adamw_init(full, &t->opt.cfg, gd, t->opt.n_groups, err));
    full->step = t->opt.step;
    return 0;
}

void db_opt_take(DbTrainer *t, const AdamW *full) {
    t->opt.step = full->step; // (without ZeRO full shares t->opt's moments: the step is all there is to take)
    if (!(t->hooks.zero && t->hooks.world > 1)) return;
    for (int gi = 0; gi < t->opt.n_groups; gi++) {
        const size_t off = (size_t)t->shard[gi].mv_displs[t->hooks.rank], n = t->opt.groups[gi].numel;
        memcpy(t->opt.groups[gi].m, full->groups[gi].m + off, n * sizeof(float));
        memcpy(t->opt.groups[gi].v, full->groups[gi].v + off, n * sizeof(float));
    }
}

void db_opt_full_free(DbTrainer *t, AdamW *full) {
    if (t->hooks.zero && t->hooks.world > 1) adamw_free(full);
    memset(full, 0, sizeof *full);
}

int db_opt_full(DbTrainer *t, AdamW *full, SdcError *err) {
    if (!(t->hooks.zero && t->hooks.world > 1)) {
        *full = t->opt;
        return 0;
    }
    // rank 0 holds the whole state for the moment of the save
    int rc = t->hooks.rank == 0 ? db_opt_full_alloc(t, full, err) : 0;
    if (t->hooks.rank != 0) memset(full, 0, sizeof *full);
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

int db_train(DbTrainer *t, int64_t until, SdcError *err) {
    const DbConfig *c = &t->cfg;
    if (until > c->max_train_steps) until = c->max_train_steps;
    while (t->st.global_step < until) {
        double t0 = wall_s();
        double loss[2] = {0, 0};
        int items = 0, n_micro = 0;
        // one optimizer step: grad_accum micro-batches, or the epoch's rest
        for (;;) {
            draw_order(t, t->st.epoch);
            int64_t bi = t->st.batch_in_epoch;
            SDC_TRY(micro_batch(t, bi, loss, err));
            n_micro++;
            int64_t fi = bi * c->train_batch_size;
            items += (int)(t->n_items - fi < c->train_batch_size ? t->n_items - fi : c->train_batch_size);
            int last = bi + 1 == t->batches_per_epoch;
            int sync = optim_accum_is_sync(bi, c->grad_accum, last);
            t->st.batch_in_epoch++;
            if (last) {
                t->st.epoch++;
                t->st.batch_in_epoch = 0;
            }
            if (sync) break;
        }
        const int zero = t->hooks.zero && t->hooks.world > 1;
        if (zero) { // each rank's block of the flat gradient buffers, averaged
            for (int gi = 0; gi < (c->train_text_encoder ? 2 : 1); gi++) {
                float *pb, *gb;
                size_t nn;
                if (gi == 0) unet_trainables(t->model->unet, &pb, &gb, &nn);
                else clip_trainables(t->model->clip, &pb, &gb, &nn);
                SDC_TRY(t->hooks.reduce_scatter_mean(t->hooks.user, gb, t->shard[gi].counts, t->shard[gi].displs, err));
            }
        } else if (t->hooks.allreduce_mean) { // the flat gradient buffers, padding included
            float *pb, *gb;
            size_t nn;
            unet_trainables(t->model->unet, &pb, &gb, &nn);
            SDC_TRY(t->hooks.allreduce_mean(t->hooks.user, gb, nn, err));
            if (c->train_text_encoder) {
                clip_trainables(t->model->clip, &pb, &gb, &nn);
                SDC_TRY(t->hooks.allreduce_mean(t->hooks.user, gb, nn, err));
            }
        }
        if (t->hooks.allreduce_sum) SDC_TRY(t->hooks.allreduce_sum(t->hooks.user, loss, 2, err));
        // the mean over the step's micro-batches of diffusers' loss (each term carries 1 / accum)
        double unscale = (double)c->grad_accum / n_micro;
        double total = (loss[0] + loss[1]) * unscale;
        int64_t step = t->st.global_step;
        if (!isfinite(total))
            return sdc_err(err, SDC_ERR_NONFINITE,
                           "the loss became %g at step %lld\n---> lower --learning-rate; the weights are "
                           "those of step %lld (the last checkpoint is kept)",
                           total, (long long)step + 1, (long long)step);
        float norm = 0;
        int rc = zero ? zero_clip(t, c->max_grad_norm > 0 ? c->max_grad_norm : INFINITY, &norm, err)
                      : adamw_clip_grad_norm(&t->opt, c->max_grad_norm > 0 ? c->max_grad_norm : INFINITY, &norm, err);
        if (rc == SDC_ERR_NONFINITE)
            return sdc_err(err, SDC_ERR_NONFINITE,
                           "the gradient norm became %g at step %lld\n---> lower --learning-rate; the weights "
                           "are those of step %lld (the last checkpoint is kept)",
                           norm, (long long)step + 1, (long long)step);
        if (rc) return rc;
        double lr = lr_schedule_lr(&t->sched, c->learning_rate, step);
        adamw_step(&t->opt, lr);
        if (zero) { // every rank's updated slice to all; the stale gradient blocks cleared too
            for (int gi = 0; gi < (c->train_text_encoder ? 2 : 1); gi++) {
                float *pb, *gb;
                size_t nn;
                if (gi == 0) unet_trainables(t->model->unet, &pb, &gb, &nn);
                else clip_trainables(t->model->clip, &pb, &gb, &nn);
                SDC_TRY(t->hooks.allgather(t->hooks.user, pb, t->shard[gi].counts, t->shard[gi].displs, err));
                memset(gb, 0, nn * sizeof(float));
            }
        } else {
            adamw_zero_grad(&t->opt);
        }
        t->st.global_step++;
        t->st.last_loss = total;
        double dt = wall_s() - t0;
        DbStepInfo info = {.step = t->st.global_step, .max_steps = c->max_train_steps, .loss = total,
                           .loss_prior = loss[1] * unscale, .lr = lr, .grad_norm = norm,
                           .items_per_s = dt > 0 ? items / dt : 0, .seconds = dt};
        if (t->hooks.on_step) SDC_TRY(t->hooks.on_step(t->hooks.user, &info, err));
    }
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
    float *ctx = malloc((size_t)2 * L * D * sizeof(float));
    if (!ctx) return sdc_err(err, SDC_ERR_OOM, "validation: out of memory");
    int rc = 0;
    if (t->cfg.train_text_encoder) { // the trained encoder (LoRA included), negative "" first
        int32_t ids[2 * 1024];
        int dropped;
        if (!(rc = clip_tok_encode(m->tok, "", ids, L, cc->pad_token, &dropped, err)) &&
            !(rc = clip_tok_encode(m->tok, prompt, ids + L, L, cc->pad_token, &dropped, err))) {
            Tensor o = tensor_make(DT_F32, DEV_CPU, ctx, 3, (int64_t[]){2, L, D});
            rc = t->share_max >= 2 ? clip_train_forward(m->clip, ids, 2, &o, err) : 0;
            if (!rc && t->share_max < 2) { // the reservation holds one prompt at a time
                Tensor o1 = tensor_make(DT_F32, DEV_CPU, ctx, 3, (int64_t[]){1, L, D});
                Tensor o2 = tensor_make(DT_F32, DEV_CPU, ctx + (size_t)L * D, 3, (int64_t[]){1, L, D});
                rc = clip_train_forward(m->clip, ids, 1, &o1, err);
                if (!rc) rc = clip_train_forward(m->clip, ids + L, 1, &o2, err);
            }
        }
    } else {
        rc = sd_encode_prompt(m, prompt, "", 0, ctx, err);
    }
    if (!rc) rc = unet_lora_merge(m->unet, 1, err);
    if (!rc) {
        GenParams p = {.mode = GEN_TXT2IMG, .steps = steps, .cfg_scale = cfg_scale, .sampler = SAMPLER_DPMPP_2M,
                       .seed = seed, .width = t->data.lat_w * 8, .height = t->data.lat_h * 8, .batch = 1};
        size_t img = (size_t)3 * p.width * p.height;
        for (int i = 0; i < n && !rc; i++) {
            p.seed = seed + (uint64_t)i;
            rc = sd_generate(m, &p, ctx, NULL, images + i * img, NULL, NULL, err);
        }
        SdcError e2 = {0};
        if (unet_lora_merge(m->unet, 0, &e2) && !rc) rc = sdc_err(err, e2.code, "%s", e2.msg);
    }
    free(ctx);
    return rc ? sdc_err_wrap(err, "validation images") : 0;
}
