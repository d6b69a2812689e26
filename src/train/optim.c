// optim.c: AdamW, clip_grad_norm_ and accumulation helpers (see optim.h).
// The AdamW element update repeats torch's single-tensor fp32 path op for op:
// the scalars (bias corrections, step size) in double as Python computes
// them, each rounded to fp32 where torch hands it to an fp32 kernel, and the
// per-element ops in torch's order, so results agree to about an ulp.
#include "train/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Contractions would change roundings that torch's kernels make; the one FMA
// torch does use (lerp) is written out as fmaf.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

AdamWConfig adamw_config_default(void) {
    return (AdamWConfig){.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
}

// ---- init / free -------------------------------------------------------------

int adamw_init(AdamW *opt, const Backend *be, const AdamWConfig *cfg, const AdamWGroupDesc *groups, int n_groups,
               SdcError *err) {
    memset(opt, 0, sizeof *opt);
    opt->be = be;
    if (!be->adamw || !be->zero || !be->sum_squares)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "adamw: the %s backend has no optimizer ops\n"
                       "---> use --device cpu for training", be->name);
    if (!(cfg->beta1 >= 0.0 && cfg->beta1 < 1.0) || !(cfg->beta2 >= 0.0 && cfg->beta2 < 1.0))
        return sdc_err(err, SDC_ERR_ARG, "adamw: betas (%g, %g) must lie in [0, 1)", cfg->beta1, cfg->beta2);
    if (!(cfg->eps >= 0.0) || !(cfg->weight_decay >= 0.0))
        return sdc_err(err, SDC_ERR_ARG, "adamw: eps (%g) and weight decay (%g) must be >= 0", cfg->eps,
                       cfg->weight_decay);
    if (n_groups <= 0) return sdc_err(err, SDC_ERR_ARG, "adamw: no parameter groups");
    opt->cfg = *cfg;
    opt->groups = calloc((size_t)n_groups, sizeof *opt->groups);
    if (!opt->groups) return sdc_err(err, SDC_ERR_OOM, "adamw: out of memory");
    opt->n_groups = n_groups;
    for (int gi = 0; gi < n_groups; gi++) {
        const AdamWGroupDesc *d = &groups[gi];
        AdamWGroup *g = &opt->groups[gi];
        int rc = SDC_OK;
        if (d->n_tensors <= 0 || !d->tensors)
            rc = sdc_err(err, SDC_ERR_ARG, "adamw: group %d has no tensors", gi);
        else if (!(d->lr_scale >= 0.0))
            rc = sdc_err(err, SDC_ERR_ARG, "adamw: group %d: lr_scale %g must be >= 0", gi, d->lr_scale);
        else if (d->has_weight_decay && !(d->weight_decay >= 0.0))
            rc = sdc_err(err, SDC_ERR_ARG, "adamw: group %d: weight decay %g must be >= 0", gi, d->weight_decay);
        for (int i = 0; !rc && i < d->n_tensors; i++) {
            const OptimTensor *t = &d->tensors[i];
            if (!t->p || !t->g || t->n == 0)
                rc = sdc_err(err, SDC_ERR_ARG, "adamw: group %d tensor %d: NULL buffer or n == 0", gi, i);
            g->numel += t->n;
        }
        if (!rc) {
            g->tensors = malloc((size_t)d->n_tensors * sizeof *g->tensors);
            g->m = be->alloc(be, g->numel * sizeof(float));
            g->v = be->alloc(be, g->numel * sizeof(float));
            if (!g->tensors || !g->m || !g->v)
                rc = sdc_err(err, SDC_ERR_OOM, "adamw: out of memory for the state of %zu parameters (%.1f MiB)",
                             g->numel, 2.0 * g->numel * sizeof(float) / (1 << 20));
        }
        if (rc) {
            adamw_free(opt);
            return rc;
        }
        be->zero(be, g->m, g->numel * sizeof(float));
        be->zero(be, g->v, g->numel * sizeof(float));
        memcpy(g->tensors, d->tensors, (size_t)d->n_tensors * sizeof *g->tensors);
        g->n_tensors = d->n_tensors;
        g->lr_scale = d->lr_scale;
        g->weight_decay = d->has_weight_decay ? d->weight_decay : cfg->weight_decay;
    }
    return SDC_OK;
}

void adamw_free(AdamW *opt) {
    if (!opt) return;
    for (int gi = 0; gi < opt->n_groups && opt->groups; gi++) {
        free(opt->groups[gi].tensors);
        if (opt->groups[gi].m) opt->be->free(opt->be, opt->groups[gi].m);
        if (opt->groups[gi].v) opt->be->free(opt->be, opt->groups[gi].v);
    }
    free(opt->groups);
    memset(opt, 0, sizeof *opt);
}

// ---- step ----------------------------------------------------------------------

void adamw_step(AdamW *opt, double lr) {
    const AdamWConfig *c = &opt->cfg;
    opt->step += 1;
    const double step = (double)opt->step;
    const double bc1 = 1.0 - pow(c->beta1, step);
    const double bc2 = 1.0 - pow(c->beta2, step);
    AdamWScalars sc = {.w1 = (float)(1.0 - c->beta1), .b2 = (float)c->beta2, .w2 = (float)(1.0 - c->beta2),
                       .bc2_sqrt = (float)pow(bc2, 0.5), .eps = (float)c->eps};
    for (int gi = 0; gi < opt->n_groups; gi++) {
        AdamWGroup *g = &opt->groups[gi];
        const double glr = lr * g->lr_scale;
        // torch skips the mul when weight_decay == 0; multiplying by 1.0f is the same.
        sc.decay = (float)(1.0 - glr * g->weight_decay);
        sc.neg_step = (float)-(glr / bc1);
        size_t off = 0;
        for (int i = 0; i < g->n_tensors; i++) {
            const OptimTensor *t = &g->tensors[i];
            opt->be->adamw(opt->be, t->p, t->g, g->m + off, g->v + off, t->n, &sc);
            off += t->n;
        }
    }
}

void adamw_zero_grad(AdamW *opt) {
    for (int gi = 0; gi < opt->n_groups; gi++)
        for (int i = 0; i < opt->groups[gi].n_tensors; i++)
            opt->be->zero(opt->be, opt->groups[gi].tensors[i].g, opt->groups[gi].tensors[i].n * sizeof(float));
}

// ---- clipping ------------------------------------------------------------------

// torch: per-tensor fp32 norms, then the norm of their stack. Sums in double
// (within an ulp of torch's fp32 result; a GPU version will differ at that
// level). Returns the sum of the squared per-tensor norms.
static double sum_sq_norms(const OptimTensor *ts, int n) {
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *g = ts[i].g;
        double s = 0.0;
        for (size_t j = 0; j < ts[i].n; j++) s += (double)g[j] * g[j];
        float norm_i = (float)sqrt(s);
        total += (double)norm_i * norm_i;
    }
    return total;
}

float optim_grad_norm(const OptimTensor *ts, int n) { return (float)sqrt(sum_sq_norms(ts, n)); }

// The clip coefficient for a total norm, or SDC_ERR_NONFINITE. *coef < 1 means scale.
static int clip_coef(float norm, double max_norm, float *coef, SdcError *err) {
    if (!isfinite(norm))
        return sdc_err(err, SDC_ERR_NONFINITE, "gradient norm is %s\n---> training diverged or a NaN reached the "
                       "loss: lower the learning rate, check the inputs, or use fp32", isnan(norm) ? "NaN" : "Inf");
    // clip_coef = max_norm / (total_norm + 1e-6) on an fp32 tensor: Python's
    // float / Tensor is reciprocal() * max_norm. clamp(max=1) follows; the
    // caller skips the multiply by 1, which would change nothing.
    *coef = (1.0f / (norm + 1e-6f)) * (float)max_norm;
    return SDC_OK;
}

static void scale_grads(const OptimTensor *ts, int n, float coef) {
    for (int i = 0; i < n; i++) {
        float *g = ts[i].g;
        const size_t len = ts[i].n;
#pragma omp parallel for simd schedule(static) if (len > 65536)
        for (size_t j = 0; j < len; j++) g[j] *= coef;
    }
}

int optim_clip_grad_norm(const OptimTensor *ts, int n, double max_norm, float *total_norm, SdcError *err) {
    float norm = optim_grad_norm(ts, n), coef = 1.0f;
    if (total_norm) *total_norm = norm;
    SDC_TRY(clip_coef(norm, max_norm, &coef, err));
    if (coef < 1.0f) scale_grads(ts, n, coef);
    return SDC_OK;
}

void adamw_tensor_sumsq(const AdamW *opt, double *sq) {
    int k = 0;
    for (int gi = 0; gi < opt->n_groups; gi++)
        for (int i = 0; i < opt->groups[gi].n_tensors; i++) {
            const OptimTensor *t = &opt->groups[gi].tensors[i];
            const float norm_i = (float)sqrt(opt->be->sum_squares(opt->be, t->g, t->n));
            sq[k++] = (double)norm_i * norm_i;
        }
}

int adamw_clip_grad_norm(AdamW *opt, double max_norm, float *total_norm, SdcError *err) {
    // One norm over every group, like clip_grad_norm_ over all trained params.
    int n = 0;
    for (int gi = 0; gi < opt->n_groups; gi++) n += opt->groups[gi].n_tensors;
    double *sq = malloc((size_t)(n > 0 ? n : 1) * sizeof *sq);
    if (!sq) return sdc_err(err, SDC_ERR_OOM, "clip_grad_norm: out of memory");
    adamw_tensor_sumsq(opt, sq);
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += sq[i];
    free(sq);
    float norm = (float)sqrt(sum), coef = 1.0f;
    if (total_norm) *total_norm = norm;
    SDC_TRY(clip_coef(norm, max_norm, &coef, err));
    if (coef < 1.0f) adamw_scale_grads(opt, coef);
    return SDC_OK;
}

int optim_clip_coef_from_sumsq(const double *per_tensor, int n, double max_norm, float *total_norm, float *coef,
                               SdcError *err) {
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float norm_i = (float)sqrt(per_tensor[i]);
        total += (double)norm_i * norm_i;
    }
    const float norm = (float)sqrt(total);
    if (total_norm) *total_norm = norm;
    *coef = 1.0f;
    return clip_coef(norm, max_norm, coef, err);
}

void adamw_scale_grads(AdamW *opt, float coef) {
    const Backend *be = opt->be;
    for (int gi = 0; gi < opt->n_groups; gi++)
        for (int i = 0; i < opt->groups[gi].n_tensors; i++) {
            const OptimTensor *t = &opt->groups[gi].tensors[i];
            Tensor g = tensor_make(DT_F32, be->device, t->g, 1, (int64_t[]){(int64_t)t->n});
            be->scale(be, &g, &g, coef);
        }
}

void optim_zero_grad(const OptimTensor *ts, int n) {
    for (int i = 0; i < n; i++) memset(ts[i].g, 0, ts[i].n * sizeof(float));
}

// ---- gradient accumulation -------------------------------------------------------

float optim_accum_scale(int accum_steps) { return accum_steps > 1 ? 1.0f / (float)accum_steps : 1.0f; }

int optim_accum_is_sync(int64_t micro_step_in_epoch, int accum_steps, int last_batch_of_epoch) {
    if (accum_steps <= 1 || last_batch_of_epoch) return 1;
    return (micro_step_in_epoch + 1) % accum_steps == 0;
}
