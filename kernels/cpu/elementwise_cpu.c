// elementwise_cpu.c: the CPU's pointwise ops (activations, add, scale,
// channel bias), layout changes (upsample, concat, NCHW <-> NLC), embedding
// lookup and the timestep embedding. Loops are written so GCC vectorises
// them (fastmath.h for exp and the normal CDF) and split across OpenMP
// threads only when the array is big enough to pay for the fork.
#include "cpu/ops_cpu.h"
#include "cpu/fastmath.h"

#include <math.h>
#include <string.h>

// Below this many elements a loop runs on one thread.
#define PAR_MIN ((int64_t)1 << 15)

// ---- activations -------------------------------------------------------------

void cpu_vexp(float *out, const float *x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = fm_expf(x[i]);
}

void cpu_silu(float *out, const float *x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * fm_sigmoid(x[i]);
}

void cpu_gelu(float *out, const float *x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * fm_norm_cdf(x[i]);
}

void cpu_quick_gelu(float *out, const float *x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * fm_sigmoid(1.702f * x[i]);
}

void cpu_geglu(float *out, const float *x, int64_t M, int F) {
#pragma omp parallel for schedule(static) if (M * F > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        const float *a = x + m * 2 * F; // (F) value half
        const float *g = a + F;         // (F) gate half
        float *o = out + m * F;         // (F)
#pragma omp simd
        for (int i = 0; i < F; i++) o[i] = a[i] * (g[i] * fm_norm_cdf(g[i]));
    }
}

// ---- arithmetic --------------------------------------------------------------

void cpu_add(float *out, const float *a, const float *b, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void cpu_scale(float *out, const float *x, float s, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * s;
}

void cpu_add_channel_bias(float *out, const float *x, const float *bias, int N, int C, int64_t S) {
    int64_t rows = (int64_t)N * C;
#pragma omp parallel for schedule(static) if (rows * S > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float bv = bias[r]; // bias (N, C) flattened matches row r = n*C + c
        const float *xr = x + r * S;
        float *o = out + r * S;
#pragma omp simd
        for (int64_t i = 0; i < S; i++) o[i] = xr[i] + bv;
    }
}

// ---- layout ------------------------------------------------------------------

void cpu_upsample_nearest2x(float *out, const float *x, int N, int C, int H, int W, int OH, int OW) {
    // out[y][x] = in[y / 2][x / 2]; OH may be 2H - 1 (an odd skip size on the
    // UNet's way up): the same as torch's nearest interpolate to that size.
    int64_t planes = (int64_t)N * C;
#pragma omp parallel for schedule(static) if (planes * H * W > PAR_MIN / 4)
    for (int64_t p = 0; p < planes; p++) {
        const float *xp = x + p * H * W;    // (H, W)
        float *op = out + p * OH * OW;      // (OH, OW)
        for (int y = 0; y < OH; y++) {
            float *o = op + (int64_t)y * OW;
            if (y & 1) { // odd rows repeat the row above
                memcpy(o, o - OW, sizeof(float) * OW);
                continue;
            }
            const float *xr = xp + (int64_t)(y / 2) * W;
            for (int xx = 0; xx < OW; xx++) o[xx] = xr[xx >> 1];
        }
    }
}

void cpu_concat_channels(float *out, const float *a, const float *b, int N, int Ca, int Cb,
                         int64_t S) {
    for (int n = 0; n < N; n++) {
        float *o = out + (int64_t)n * (Ca + Cb) * S;
        memcpy(o, a + (int64_t)n * Ca * S, sizeof(float) * Ca * S);
        memcpy(o + (int64_t)Ca * S, b + (int64_t)n * Cb * S, sizeof(float) * Cb * S);
    }
}

// x (rows, cols) row-major -> out (cols, rows). Image planes make one side
// a power-of-two stride (H*W = 4096 floats = 16 KB), so a wide tile would
// read 32 lines that all fall in one L1 set; 8x8 blocks touch 8 lines per
// side, which an 8-way L1 holds. Blocks are walked in 64x64 tiles.
static void transpose_2d(float *out, const float *x, int64_t rows, int64_t cols) {
    const int64_t T = 64;
    int64_t tiles_r = (rows + T - 1) / T, tiles_c = (cols + T - 1) / T;
#pragma omp parallel for collapse(2) schedule(static) if (rows * cols > PAR_MIN)
    for (int64_t tr = 0; tr < tiles_r; tr++) {
        for (int64_t tc = 0; tc < tiles_c; tc++) {
            int64_t r0 = tr * T, c0 = tc * T;
            int64_t r1 = r0 + T < rows ? r0 + T : rows;
            int64_t c1 = c0 + T < cols ? c0 + T : cols;
            for (int64_t rb = r0; rb < r1; rb += 8) {
                for (int64_t cb = c0; cb < c1; cb += 8) {
                    if (rb + 8 <= r1 && cb + 8 <= c1) {
                        float blk[8][8]; // (8 rows, 8 cols) of x
                        for (int i = 0; i < 8; i++)
                            for (int j = 0; j < 8; j++) blk[i][j] = x[(rb + i) * cols + cb + j];
                        for (int j = 0; j < 8; j++)
                            for (int i = 0; i < 8; i++) out[(cb + j) * rows + rb + i] = blk[i][j];
                    } else {
                        int64_t re = rb + 8 < r1 ? rb + 8 : r1, ce = cb + 8 < c1 ? cb + 8 : c1;
                        for (int64_t c = cb; c < ce; c++)
                            for (int64_t r = rb; r < re; r++) out[c * rows + r] = x[r * cols + c];
                    }
                }
            }
        }
    }
}

void cpu_nchw_to_nlc(float *out, const float *x, int N, int C, int64_t S) {
    for (int n = 0; n < N; n++)
        transpose_2d(out + (int64_t)n * C * S, x + (int64_t)n * C * S, C, S);
}

void cpu_nlc_to_nchw(float *out, const float *x, int N, int C, int64_t S) {
    for (int n = 0; n < N; n++)
        transpose_2d(out + (int64_t)n * C * S, x + (int64_t)n * C * S, S, C);
}

int64_t cpu_embedding(float *out, const int32_t *ids, const float *table, int64_t n, int V, int D) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) return i;
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * D, table + (int64_t)ids[i] * D, sizeof(float) * D);
    return -1;
}

// Follows diffusers' float32 arithmetic step by step (exponent, exp, product,
// sin/cos) so the embedding matches torch to rounding.
void cpu_timestep_embedding(float *out, const float *t, int N, int dim, int flip_sin_to_cos,
                            float freq_shift) {
    int half = dim / 2;
    const float neg_log_period = -logf(10000.0f);
    for (int n = 0; n < N; n++) {
        float *o = out + (int64_t)n * dim; // (dim)
        for (int i = 0; i < half; i++) {
            float exponent = neg_log_period * (float)i;
            exponent = exponent / ((float)half - freq_shift);
            float arg = t[n] * expf(exponent);
            float s = sinf(arg), c = cosf(arg);
            o[i] = flip_sin_to_cos ? c : s;
            o[half + i] = flip_sin_to_cos ? s : c;
        }
        if (dim % 2) o[dim - 1] = 0.0f; // diffusers pads an odd dim with one zero
    }
}
