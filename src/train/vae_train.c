// vae_train.c: one AutoencoderKL training step (see vae_train.h). The model
// runs on the backend; the loss, the sampling and their gradients are small
// (latent-sized, plus one image-sized difference) and are computed on the
// host in double sums, as the trainer's other host maths.
#include "train/vae_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampling/rng.h"

static uint64_t mix(uint64_t h, uint64_t v) { // splitmix64 of h ^ v (dreambooth.c's)
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

uint64_t vae_train_sample_seed(uint64_t seed, int64_t step, int64_t j) {
    return mix(mix(mix(0x7ae, seed), (uint64_t)step), (uint64_t)j) >> 11;
}

void vae_train_order(uint64_t seed, int64_t epoch, int64_t *order, int64_t n) {
    Rng r;
    rng_seed(&r, mix(mix(0x0dde, seed), (uint64_t)epoch) >> 11);
    for (int64_t i = 0; i < n; i++) order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(rng_u32(&r) % (uint32_t)(i + 1));
        int64_t x = order[i];
        order[i] = order[j];
        order[j] = x;
    }
}

// ---- initialisation ------------------------------------------------------------

int vae_init_params(Vae *m, uint64_t seed, SdcError *err) {
    const ParamTable *tb = vae_train_table(m);
    const Backend *be = vae_backend(m);
    Rng r;
    rng_seed(&r, seed);
    size_t cap = 0;
    float *buf = NULL;
    for (int i = 0; i < tb->n; i++) {
        const ParamEntry *e = &tb->e[i];
        const size_t n = (size_t)tensor_numel(&e->t);
        if (n > cap) {
            free(buf);
            cap = n;
            if (!(buf = malloc(cap * sizeof(float)))) return sdc_err(err, SDC_ERR_OOM, "vae init: out of host memory");
        }
        const size_t len = strlen(e->name);
        const int is_bias = len > 5 && !strcmp(e->name + len - 5, ".bias");
        if (strstr(e->name, "norm")) { // GroupNorm: weight 1, bias 0
            for (size_t k = 0; k < n; k++) buf[k] = is_bias ? 0.0f : 1.0f;
        } else {
            // fan_in of the weight (the bias's: its layer's weight, the entry before it)
            const Tensor *w = is_bias && i > 0 ? &tb->e[i - 1].t : &e->t;
            const double fan_in = (double)tensor_numel(w) / (double)w->shape[0];
            const float bound = (float)(1.0 / sqrt(fan_in));
            rng_uniform(&r, buf, n);
            for (size_t k = 0; k < n; k++) buf[k] = bound * (2.0f * buf[k] - 1.0f);
        }
        Tensor t = e->t;
        backend_upload_f32(be, &t, buf, n);
    }
    free(buf);
    return vae_train_sync(m, err);
}

// ---- the step ----------------------------------------------------------------------

int vae_decoder_param(const char *name) {
    return !strncmp(name, "decoder.", 8) || !strncmp(name, "post_quant_conv.", 16);
}

int vae_trainer_init(VaeTrainer *t, Vae *m, const VaeTrainConfig *c, const LrSchedule *s, SdcError *err) {
    memset(t, 0, sizeof *t);
    const VaeConfig *vc = vae_config(m);
    const int f = 1 << (vc->n_levels - 1);
    t->m = m;
    t->be = vae_backend(m);
    t->cfg = *c;
    t->sched = *s;
    t->N = c->batch, t->H = t->W = c->resolution, t->L = vc->latent_channels;
    t->h = t->H / f, t->w = t->W / f;
    if (vc->in_channels != 3 || vc->out_channels != 3)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "sdc train vae: a VAE of %d input and %d output channels: RGB "
                       "images need 3 and 3\n---> set in_channels and out_channels to 3 in the config",
                       vc->in_channels, vc->out_channels);
    SDC_TRY(vae_train_reserve(m, t->N, t->H, t->W, err));
    const Backend *be = t->be;
    const int64_t img[4] = {t->N, 3, t->H, t->W}, lat[4] = {t->N, t->L, t->h, t->w};
    const size_t ni = (size_t)t->N * 3 * t->H * t->W, nl = (size_t)t->N * t->L * t->h * t->w;
    int rc = arena_init(&t->io, be, 3 * (ni * sizeof(float) + 256) + 6 * (nl * sizeof(float) + 256), err);
    if (rc) return rc;
    t->x = arena_tensor(&t->io, be->act_dtype, 4, img);
    t->rec = arena_tensor(&t->io, be->act_dtype, 4, img);
    t->drec = arena_tensor(&t->io, be->act_dtype, 4, img);
    Tensor *lt[6] = {&t->mean, &t->lv, &t->z, &t->dz, &t->dm, &t->dl};
    for (int i = 0; i < 6; i++) *lt[i] = arena_tensor(&t->io, be->act_dtype, 4, lat);
    t->host = malloc((2 * ni + 6 * nl) * sizeof(float));
    if (!t->host) {
        vae_trainer_free(t);
        return sdc_err(err, SDC_ERR_OOM, "sdc train vae: out of host memory");
    }
    // AdamW over the named tensors, in the table's order (the checkpoint's)
    const ParamTable *tb = vae_train_table(m);
    float *pb, *gb;
    size_t n;
    vae_trainables(m, &pb, &gb, &n);
    OptimTensor *ot = calloc((size_t)tb->n, sizeof *ot);
    if (!ot) {
        vae_trainer_free(t);
        return sdc_err(err, SDC_ERR_OOM, "sdc train vae: out of host memory");
    }
    int nt = 0;
    for (int i = 0; i < tb->n; i++) {
        if (c->decoder_only && !vae_decoder_param(tb->e[i].name)) continue;
        float *p = tb->e[i].t.data;
        ot[nt++] = (OptimTensor){.p = p, .g = gb + (p - pb), .n = (size_t)tensor_numel(&tb->e[i].t)};
    }
    AdamWGroupDesc gd = {.tensors = ot, .n_tensors = nt, .lr_scale = 1.0};
    rc = adamw_init(&t->opt, be, &c->adam, &gd, 1, err);
    free(ot);
    if (rc) vae_trainer_free(t);
    return rc;
}

void vae_trainer_free(VaeTrainer *t) {
    adamw_free(&t->opt);
    arena_free(&t->io);
    free(t->host);
    t->host = NULL;
}

int vae_trainer_step(VaeTrainer *t, const float *x, const float *eps, VaeStepStats *st, SdcError *err) {
    const Backend *be = t->be;
    Vae *m = t->m;
    const int N = t->N;
    const size_t ni = (size_t)N * 3 * t->H * t->W, nl = (size_t)N * t->L * t->h * t->w, per = nl / (size_t)N;
    float *rec = t->host, *drec = rec + ni, *mu = drec + ni, *lv = mu + nl, *z = lv + nl, *dz = z + nl;
    float *dm = dz + nl, *dl = dm + nl;
    const double klw = t->cfg.kl_weight;

    backend_upload_f32(be, &t->x, x, ni);
    SDC_TRY(vae_train_encode(m, &t->x, &t->mean, &t->lv, err));
    be->sync(be);
    backend_download_f32(be, mu, &t->mean, nl);
    backend_download_f32(be, lv, &t->lv, nl);
    double kl = 0;
    for (int b = 0; b < N; b++) {
        double s = 0;
        for (size_t i = b * per; i < (b + 1) * per; i++) {
            const float var = expf(lv[i]), sd = expf(0.5f * lv[i]);
            z[i] = mu[i] + sd * eps[i];
            s += (double)mu[i] * mu[i] + var - 1.0 - lv[i];
        }
        kl += 0.5 * s;
    }
    kl /= N;
    backend_upload_f32(be, &t->z, z, nl);
    SDC_TRY(vae_train_decode(m, &t->z, &t->rec, err));
    be->sync(be);
    backend_download_f32(be, rec, &t->rec, ni);
    double rl = 0;
    const float inv = (float)(1.0 / (double)ni);
    for (size_t i = 0; i < ni; i++) {
        const float e = rec[i] - x[i];
        if (t->cfg.rec_loss == VAE_REC_L1) {
            rl += fabsf(e);
            drec[i] = (e > 0 ? 1.0f : e < 0 ? -1.0f : 0.0f) * inv;
        } else {
            rl += (double)e * e;
            drec[i] = 2.0f * e * inv;
        }
    }
    rl /= (double)ni;
    backend_upload_f32(be, &t->drec, drec, ni);
    SDC_TRY(vae_train_decode_backward(m, &t->drec, &t->dz, err));
    be->sync(be);
    if (!t->cfg.decoder_only) { // the encoder's gradient (decoder_only: nothing flows there)
        backend_download_f32(be, dz, &t->dz, nl);
        const float kn = (float)(klw / N);
        for (size_t i = 0; i < nl; i++) {
            const float var = expf(lv[i]), sd = expf(0.5f * lv[i]);
            dm[i] = dz[i] + kn * mu[i];
            dl[i] = dz[i] * eps[i] * 0.5f * sd + kn * 0.5f * (var - 1.0f);
        }
        backend_upload_f32(be, &t->dm, dm, nl);
        backend_upload_f32(be, &t->dl, dl, nl);
        SDC_TRY(vae_train_encode_backward(m, &t->dm, &t->dl, NULL, err));
    }
    double stats[3] = {rl + klw * kl, rl, kl};
    if (t->grad_mean) {
        float *pb, *gb;
        size_t n;
        vae_trainables(m, &pb, &gb, &n);
        be->sync(be);
        SDC_TRY(t->grad_mean(t->user, gb, n, err));
        SDC_TRY(t->loss_mean(t->user, stats, 3, err));
    }

    float norm = 0;
    if (t->cfg.max_grad_norm > 0) {
        SDC_TRY(adamw_clip_grad_norm(&t->opt, t->cfg.max_grad_norm, &norm, err));
    }
    const double lr = lr_schedule_lr(&t->sched, t->cfg.learning_rate, t->opt.step);
    adamw_step(&t->opt, lr);
    adamw_zero_grad(&t->opt);
    SDC_TRY(vae_train_sync(m, err));
    if (st) *st = (VaeStepStats){.loss = stats[0], .rec = stats[1], .kl = stats[2], .grad_norm = norm, .lr = lr};
    return backend_status(be, err);
}

// ---- evaluation ------------------------------------------------------------------

int vae_psnr(Vae *m, const float *x, int n, int height, int width, double *psnr, double *latent_std, SdcError *err) {
    const Backend *be = vae_backend(m);
    const VaeConfig *c = vae_config(m);
    const int f = 1 << (c->n_levels - 1);
    const size_t ni = (size_t)3 * height * width, nl = (size_t)c->latent_channels * (height / f) * (width / f);
    Arena a = {0};
    SDC_TRY(arena_init(&a, be, 2 * (ni * sizeof(float) + 256) + 2 * (nl * sizeof(float) + 256), err));
    Tensor ti = arena_tensor(&a, be->act_dtype, 4, (int64_t[]){1, 3, height, width});
    Tensor to = arena_tensor(&a, be->act_dtype, 4, (int64_t[]){1, 3, height, width});
    Tensor tm = arena_tensor(&a, be->act_dtype, 4, (int64_t[]){1, c->latent_channels, height / f, width / f});
    Tensor tl = arena_tensor(&a, be->act_dtype, 4, (int64_t[]){1, c->latent_channels, height / f, width / f});
    float *out = malloc(ni * sizeof(float)), *lat = malloc(nl * sizeof(float));
    int rc = out && lat ? 0 : sdc_err(err, SDC_ERR_OOM, "vae_psnr: out of host memory");
    double se = 0, ls = 0, lss = 0;
    for (int i = 0; i < n && !rc; i++) {
        const float *xi = x + (size_t)i * ni;
        backend_upload_f32(be, &ti, xi, ni);
        rc = vae_encode(m, &ti, &tm, &tl, err);
        if (!rc) rc = vae_decode(m, &tm, &to, err);
        if (rc) break;
        be->sync(be);
        backend_download_f32(be, out, &to, ni);
        backend_download_f32(be, lat, &tm, nl);
        for (size_t k = 0; k < nl; k++) ls += lat[k], lss += (double)lat[k] * lat[k];
        for (size_t k = 0; k < ni; k++) {
            const float o = out[k] < -1 ? -1 : out[k] > 1 ? 1 : out[k];
            const double d = 0.5 * ((double)o - xi[k]); // in [0, 1] units
            se += d * d;
        }
    }
    free(out), free(lat);
    arena_free(&a);
    if (!rc) *psnr = 10.0 * log10(1.0 / (se / ((double)n * ni) + 1e-20));
    if (!rc && latent_std) {
        const double cnt = (double)n * nl, mean = ls / cnt, var = lss / cnt - mean * mean;
        *latent_std = var > 0 ? sqrt(var) : 0;
    }
    return rc;
}
