// train_cpu.c: the fp32 CPU kernels of a training step outside the model:
// the diffusion loss's backward, gradient sums of squares and the AdamW
// update. They are the reference a device version is checked against
// (tests/test_optim.c holds torch's results for AdamW and clip_grad_norm_).
#include "cpu/ops_cpu.h"

#include <math.h>

// Contractions would change roundings that torch's kernels make; the one FMA
// torch does use (lerp) is written out as fmaf.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

void cpu_mse_backward(float *dpred, double *sq, const float *pred, const float *target, const float *k, int64_t N,
                      int64_t per) {
    for (int64_t n = 0; n < N; n++) {
        const float *p = pred + n * per, *t = target + n * per;
        float *d = dpred + n * per;
        double s = 0;
        for (int64_t i = 0; i < per; i++) {
            const float e = p[i] - t[i];
            s += (double)e * e;
            d[i] = k[n] * e;
        }
        sq[n] = s;
    }
}

double cpu_sum_squares(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

void cpu_ema(float *restrict shadow, const float *restrict p, size_t n, float one_minus_decay) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        const float d = one_minus_decay * (shadow[i] - p[i]); // s_param.sub_(one_minus_decay * (s_param - param))
        shadow[i] = shadow[i] - d;
    }
}

void cpu_adamw(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, size_t n,
               float decay, float w1, float b2, float w2, float bc2_sqrt, float eps, float neg_step) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay;                  // param.mul_(1 - lr * wd)
        float gi = g[i];
        float mi = fmaf(w1, gi - m[i], m[i]);     // exp_avg.lerp_(grad, 1 - beta1): |w| < 0.5 branch
        float vi = v[i] * b2;                     // exp_avg_sq.mul_(beta2)
        vi = vi + w2 * gi * gi;                   //   .addcmul_(grad, grad, value=1 - beta2)
        float denom = sqrtf(vi) / bc2_sqrt + eps; // (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
        p[i] = pi + neg_step * mi / denom;        // param.addcdiv_(exp_avg, denom, value=-step_size)
        m[i] = mi;
        v[i] = vi;
    }
}
