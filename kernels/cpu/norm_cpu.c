// norm_cpu.c: group norm (with the fused SiLU of the ResNet norm+act pair),
// layer norm and row softmax on the CPU.
//
// Statistics are two-pass (mean, then mean of squared deviations), the way
// torch computes them, with float partial sums in SIMD lanes folded into a
// double per row/channel, so a 40960-element group keeps ~1e-7 accuracy.
#include "cpu/ops_cpu.h"
#include "cpu/fastmath.h"

#include <math.h>

static double sum_f32(const float *x, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
}

static double sum_sq_dev_f32(const float *x, int64_t n, float mean) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) {
        float d = x[i] - mean;
        s += d * d;
    }
    return s;
}

// Sums in chunks of 1024 floats so float lanes never add many terms.
static double sum_chunked(const float *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i += 1024) s += sum_f32(x + i, n - i < 1024 ? n - i : 1024);
    return s;
}

static double sum_sq_dev_chunked(const float *x, int64_t n, float mean) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i += 1024)
        s += sum_sq_dev_f32(x + i, n - i < 1024 ? n - i : 1024, mean);
    return s;
}

void cpu_group_norm(float *out, const float *x, const float *gamma, const float *beta, int N,
                    int C, int64_t S, int groups, float eps, int silu) {
    int cg = C / groups;            // channels per group
    int64_t gsize = (int64_t)cg * S; // elements per group, contiguous
    int64_t ngroups = (int64_t)N * groups;
#pragma omp parallel for schedule(dynamic, 1) if (ngroups * gsize > (1 << 15))
    for (int64_t ng = 0; ng < ngroups; ng++) {
        const float *xg = x + ng * gsize; // (cg, S)
        float *og = out + ng * gsize;     // (cg, S)
        int g = (int)(ng % groups);
        float mean = (float)(sum_chunked(xg, gsize) / (double)gsize);
        float var = (float)(sum_sq_dev_chunked(xg, gsize, mean) / (double)gsize);
        float rstd = 1.0f / sqrtf(var + eps);
        for (int c = 0; c < cg; c++) {
            int ch = g * cg + c;
            // y = (x - mean) * rstd * gamma + beta = x * a + b
            float a = rstd * gamma[ch];
            float b = beta[ch] - mean * a;
            const float *xc = xg + (int64_t)c * S;
            float *oc = og + (int64_t)c * S;
            if (silu) {
#pragma omp simd
                for (int64_t i = 0; i < S; i++) {
                    float y = xc[i] * a + b;
                    oc[i] = y * fm_sigmoid(y);
                }
            } else {
#pragma omp simd
                for (int64_t i = 0; i < S; i++) oc[i] = xc[i] * a + b;
            }
        }
    }
}

void cpu_layer_norm(float *out, const float *x, const float *gamma, const float *beta, int64_t M,
                    int D, float eps) {
#pragma omp parallel for schedule(static) if (M * D > (1 << 15))
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D; // (D)
        float *o = out + m * D;      // (D)
        float mean = (float)(sum_chunked(xr, D) / D);
        float var = (float)(sum_sq_dev_chunked(xr, D, mean) / D);
        float rstd = 1.0f / sqrtf(var + eps);
#pragma omp simd
        for (int i = 0; i < D; i++) o[i] = (xr[i] - mean) * rstd * gamma[i] + beta[i];
    }
}

void cpu_softmax(float *out, const float *x, int64_t M, int D) {
#pragma omp parallel for schedule(static) if (M * D > (1 << 15))
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D; // (D)
        float *o = out + m * D;      // (D)
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int i = 0; i < D; i++) mx = xr[i] > mx ? xr[i] : mx;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < D; i++) {
            float e = fm_expf(xr[i] - mx);
            o[i] = e;
            s += e;
        }
        float inv = 1.0f / s;
#pragma omp simd
        for (int i = 0; i < D; i++) o[i] *= inv;
    }
}
