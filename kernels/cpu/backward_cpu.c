// backward_cpu.c: the fp32 CPU backward kernels (see ops_cpu_bwd.h) of
// linear, conv2d, group/layer norm, softmax, the activations and the layout
// ops. Attention's backward lives in attention_bwd_cpu.c.
//
// This is the reference backward: written to be read and checked against
// finite differences (tests/test_backward_cpu.c) first, fast second. The
// matrix products are OpenBLAS sgemm calls (threaded); reductions that
// write a parameter gradient are split so that each thread owns its own
// output entries (no atomics, no per-thread copies).
#include "cpu/ops_cpu_bwd.h"
#include "cpu/ops_cpu.h"
#include "cpu/fastmath.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

// Below this many elements a loop runs on one thread.
#define PAR_MIN ((int64_t)1 << 15)
// Output pixels per conv backward tile (as the forward: sgemm-sized, and the
// cols tile stays in L3 between im2col, the dw product and col2im).
#define CONV_BWD_TILE_PIXELS 2048
// Columns a thread owns when reducing over rows into a parameter gradient,
// and rows summed in float before folding into double.
#define COL_BLOCK 64
#define ROW_CHUNK 256

// acc (N) += sum over rows of a (M, N); parallel over column blocks.
static void col_sum_acc(float *acc, const float *a, int64_t M, int N) {
    int nblk = (N + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (M * N > PAR_MIN)
    for (int bi = 0; bi < nblk; bi++) {
        int c0 = bi * COL_BLOCK, c1 = c0 + COL_BLOCK < N ? c0 + COL_BLOCK : N;
        double s[COL_BLOCK] = {0}; // (c1 - c0)
        for (int64_t m = 0; m < M; m++) {
            const float *r = a + m * N;
            for (int c = c0; c < c1; c++) s[c - c0] += r[c];
        }
        for (int c = c0; c < c1; c++) acc[c] += (float)s[c - c0];
    }
}

// ---- linear ------------------------------------------------------------------

void cpu_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int M, int K, int N) {
    // dx (M, K) = dy (M, N) . w (N, K)
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dy, N, w, K, 0.0f,
                    dx, K);
    // dw (N, K) += dy^T (N, M) . x (M, K)
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dy, N, x, K, 1.0f, dw,
                    K);
    if (db) col_sum_acc(db, dy, M, N);
}

// ---- conv2d ------------------------------------------------------------------

static int conv_out(int H, int K, int stride, int pad) { return (H + 2 * pad - K) / stride + 1; }

size_t cpu_conv2d_backward_scratch_min_floats(int C, int H, int W, int OC, int KH, int KW,
                                              int stride, int pad) {
    (void)H; (void)OC;
    if (KH == 1 && KW == 1 && stride == 1 && pad == 0) return 0;
    return (size_t)C * KH * KW * conv_out(W, KW, stride, pad);
}

// Whole images per tile for a small image (an 8x8 latent: one image is a
// 64-column product, too thin for sgemm): as many as make about
// CONV_BWD_TILE_PIXELS columns and fit in `avail` floats of cols (CK, tile)
// plus staged dy (OC, tile); 1 means tiles of rows of one image.
static int conv_bwd_imgs_per_tile(int64_t CK, int OC, int64_t OHW, int N, size_t avail) {
    if (2 * OHW > CONV_BWD_TILE_PIXELS || N < 2) return 1;
    int64_t per_img = (CK + OC) * OHW;
    int64_t ipt = CONV_BWD_TILE_PIXELS / OHW;
    if (avail > CPU_SCRATCH_BUDGET_FLOATS) avail = CPU_SCRATCH_BUDGET_FLOATS;
    if (ipt > (int64_t)avail / per_img) ipt = (int64_t)avail / per_img;
    if (ipt > N) ipt = N;
    return ipt < 2 ? 1 : (int)ipt;
}

size_t cpu_conv2d_backward_scratch_floats(int C, int H, int W, int OC, int KH, int KW, int stride,
                                          int pad) {
    int OH = conv_out(H, KH, stride, pad), OW = conv_out(W, KW, stride, pad);
    int64_t CK = (int64_t)C * KH * KW, OHW = (int64_t)OH * OW;
    size_t multi = 0; // the multi-image plan for any batch size
    int ipt = conv_bwd_imgs_per_tile(CK, OC, OHW, 1 << 20, CPU_SCRATCH_BUDGET_FLOATS);
    if (ipt > 1) multi = (size_t)((CK + OC) * OHW * ipt);
    size_t row = cpu_conv2d_backward_scratch_min_floats(C, H, W, OC, KH, KW, stride, pad);
    if (row == 0) return multi;
    int64_t rows = CONV_BWD_TILE_PIXELS / OW;
    int64_t cap = (int64_t)(CPU_SCRATCH_BUDGET_FLOATS / row);
    if (rows > cap) rows = cap;
    if (rows < 1) rows = 1;
    if (rows > OH) rows = OH;
    size_t single = (size_t)rows * row;
    return single > multi ? single : multi;
}

// cols rows r = (c, kh, kw) for output rows oy0..oy1-1 of image xn (C, H, W):
// cols (C*KH*KW, (oy1-oy0)*OW) with row stride ldc, zero where the kernel
// reads padding.
static void im2col_tile(float *cols, int64_t ldc, const float *xn, int C, int H, int W, int KH,
                        int KW, int OW, int oy0, int oy1, int stride, int pad) {
    const int KK = KH * KW;
    const int64_t CK = (int64_t)C * KK, tcols = (int64_t)(oy1 - oy0) * OW;
#pragma omp parallel for schedule(static) if (CK * tcols > PAR_MIN)
    for (int64_t r = 0; r < CK; r++) {
        int c = (int)(r / KK), kh = (int)(r % KK) / KW, kw = (int)(r % KW);
        const float *xc = xn + (int64_t)c * H * W; // (H, W)
        float *dst = cols + r * ldc;
        for (int oy = oy0; oy < oy1; oy++, dst += OW) {
            int iy = oy * stride - pad + kh;
            for (int ox = 0; ox < OW; ox++) {
                int ix = ox * stride - pad + kw;
                dst[ox] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[(int64_t)iy * W + ix]
                                                                   : 0.0f;
            }
        }
    }
}

// dxn (C, H, W) += scatter of dcols (C*KH*KW, (oy1-oy0)*OW), row stride
// ldc. Parallel over channels: the rows of one channel all land in that
// channel's plane.
static void col2im_tile_acc(float *dxn, const float *dcols, int64_t ldc, int C, int H, int W,
                            int KH, int KW, int OW, int oy0, int oy1, int stride, int pad) {
    const int KK = KH * KW;
    const int64_t tcols = (int64_t)(oy1 - oy0) * OW;
#pragma omp parallel for schedule(static) if ((int64_t)C * KK * tcols > PAR_MIN)
    for (int c = 0; c < C; c++) {
        float *dxc = dxn + (int64_t)c * H * W; // (H, W)
        for (int kh = 0; kh < KH; kh++)
            for (int kw = 0; kw < KW; kw++) {
                const float *src = dcols + ((int64_t)c * KK + kh * KW + kw) * ldc;
                for (int oy = oy0; oy < oy1; oy++, src += OW) {
                    int iy = oy * stride - pad + kh;
                    if (iy < 0 || iy >= H) continue;
                    float *drow = dxc + (int64_t)iy * W;
                    for (int ox = 0; ox < OW; ox++) {
                        int ix = ox * stride - pad + kw;
                        if (ix >= 0 && ix < W) drow[ix] += src[ox];
                    }
                }
            }
    }
}

void cpu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int N, int C, int H, int W, int OC, int KH, int KW,
                         int stride, int pad, float *scratch, size_t scratch_floats) {
    const int OH = conv_out(H, KH, stride, pad), OW = conv_out(W, KW, stride, pad);
    const int64_t HW = (int64_t)H * W, OHW = (int64_t)OH * OW, CK = (int64_t)C * KH * KW;

    if (db) { // db (OC) += sum over n, pixels of dy
#pragma omp parallel for schedule(static) if ((int64_t)N * OC * OHW > PAR_MIN)
        for (int oc = 0; oc < OC; oc++) {
            double s = 0.0;
            for (int n = 0; n < N; n++) {
                const float *p = dy + ((int64_t)n * OC + oc) * OHW;
                for (int64_t i = 0; i < OHW; i++) s += p[i];
            }
            db[oc] += (float)s;
        }
    }
    if (!dx && !dw) return;

    const int ipt = conv_bwd_imgs_per_tile(CK, OC, OHW, N, scratch ? scratch_floats : 0);
    if (ipt > 1) {
        if (dx) memset(dx, 0, sizeof(float) * (size_t)N * C * HW);
        for (int n0 = 0; n0 < N; n0 += ipt) {
            const int ni = N - n0 < ipt ? N - n0 : ipt;
            const int tcols = (int)(ni * OHW);
            float *cols = scratch;             // (CK, ni*OHW): image i at column i*OHW
            float *dys = scratch + CK * tcols; // (OC, ni*OHW): dy of the tile's images
#pragma omp parallel for collapse(2) schedule(static) if ((int64_t)OC * tcols > PAR_MIN)
            for (int i = 0; i < ni; i++)
                for (int oc = 0; oc < OC; oc++)
                    memcpy(dys + (int64_t)oc * tcols + i * OHW,
                           dy + ((int64_t)(n0 + i) * OC + oc) * OHW, sizeof(float) * OHW);
            if (dw) {
                for (int i = 0; i < ni; i++)
                    im2col_tile(cols + i * OHW, tcols, x + (int64_t)(n0 + i) * C * HW, C, H, W,
                                KH, KW, OW, 0, OH, stride, pad);
                // dw (OC, CK) += dys (OC, tcols) . cols^T (tcols, CK)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OC, (int)CK, tcols, 1.0f, dys,
                            tcols, cols, tcols, 1.0f, dw, (int)CK);
            }
            if (dx) {
                // dcols (CK, tcols) = w^T (CK, OC) . dys (OC, tcols), into cols
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CK, tcols, OC, 1.0f, w,
                            (int)CK, dys, tcols, 0.0f, cols, tcols);
                for (int i = 0; i < ni; i++)
                    col2im_tile_acc(dx + (int64_t)(n0 + i) * C * HW, cols + i * OHW, tcols, C, H,
                                    W, KH, KW, OW, 0, OH, stride, pad);
            }
        }
        return;
    }

    if (KH == 1 && KW == 1 && stride == 1 && pad == 0) { // cols would be x itself
        for (int n = 0; n < N; n++) {
            const float *xn = x + (int64_t)n * C * HW;    // (C, HW)
            const float *dyn = dy + (int64_t)n * OC * HW; // (OC, HW)
            // dw (OC, C) += dyn . xn^T
            if (dw)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OC, C, (int)HW, 1.0f, dyn,
                            (int)HW, xn, (int)HW, 1.0f, dw, C);
            // dxn (C, HW) = w^T (C, OC) . dyn
            if (dx)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, (int)HW, OC, 1.0f, w, C,
                            dyn, (int)HW, 0.0f, dx + (int64_t)n * C * HW, (int)HW);
        }
        return;
    }

    const int64_t row = CK * OW; // scratch floats per output row
    assert(scratch_floats >= (size_t)row);
    int64_t rows = CONV_BWD_TILE_PIXELS / OW;
    if (rows * row > (int64_t)scratch_floats) rows = (int64_t)scratch_floats / row;
    if (rows < 1) rows = 1;
    if (rows > OH) rows = OH;

    if (dx) memset(dx, 0, sizeof(float) * (size_t)N * C * HW);
    for (int n = 0; n < N; n++) {
        const float *xn = x + (int64_t)n * C * HW;     // (C, H, W)
        const float *dyn = dy + (int64_t)n * OC * OHW; // (OC, OH, OW)
        float *dxn = dx ? dx + (int64_t)n * C * HW : NULL;
        for (int oy0 = 0; oy0 < OH; oy0 += (int)rows) {
            int oy1 = oy0 + (int)rows < OH ? oy0 + (int)rows : OH;
            int tcols = (oy1 - oy0) * OW;
            const float *dyt = dyn + (int64_t)oy0 * OW; // (OC, tcols), row stride OHW
            float *cols = scratch;                       // (CK, tcols)
            if (dw) {
                im2col_tile(cols, tcols, xn, C, H, W, KH, KW, OW, oy0, oy1, stride, pad);
                // dw (OC, CK) += dyt (OC, tcols) . cols^T (tcols, CK)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OC, (int)CK, tcols, 1.0f, dyt,
                            (int)OHW, cols, tcols, 1.0f, dw, (int)CK);
            }
            if (dxn) {
                // dcols (CK, tcols) = w^T (CK, OC) . dyt (OC, tcols), into the same scratch
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CK, tcols, OC, 1.0f, w,
                            (int)CK, dyt, (int)OHW, 0.0f, cols, tcols);
                col2im_tile_acc(dxn, cols, tcols, C, H, W, KH, KW, OW, oy0, oy1, stride, pad);
            }
        }
    }
}

// ---- normalisation -----------------------------------------------------------

// Sums over chunks of SUM_CHUNK floats run in float SIMD lanes and are
// folded into doubles, as the forward norms do (a 40960-element group keeps
// ~1e-7 accuracy and the loops vectorise).
#define SUM_CHUNK 1024

// mean and 1/sqrt(var + eps) of x (n), two-pass, rounded to float as the
// forward kernels round them.
static void stats(const float *x, int64_t n, float eps, float *mean_out, float *rstd_out) {
    double s = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += SUM_CHUNK) {
        int64_t i1 = i0 + SUM_CHUNK < n ? i0 + SUM_CHUNK : n;
        float f = 0.0f;
#pragma omp simd reduction(+ : f)
        for (int64_t i = i0; i < i1; i++) f += x[i];
        s += f;
    }
    const float mean = (float)(s / (double)n);
    double v = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += SUM_CHUNK) {
        int64_t i1 = i0 + SUM_CHUNK < n ? i0 + SUM_CHUNK : n;
        float f = 0.0f;
#pragma omp simd reduction(+ : f)
        for (int64_t i = i0; i < i1; i++) {
            float d = x[i] - mean;
            f += d * d;
        }
        v += f;
    }
    const float var = (float)(v / (double)n);
    *mean_out = mean;
    *rstd_out = 1.0f / sqrtf(var + eps);
}

// One channel of group norm backward, pass 1: dz (S) = dy * silu'(z) (or
// dy), z = x a + b; returns sum dz and sum dz xhat, xhat = (x - mean) rstd.
static void gn_channel_dz(float *dz, const float *dy, const float *x, int64_t S, float a, float b,
                          float mean, float rstd, int silu, double *sdz_out, double *sdzx_out) {
    double sdz = 0.0, sdzx = 0.0;
    for (int64_t i0 = 0; i0 < S; i0 += SUM_CHUNK) {
        int64_t i1 = i0 + SUM_CHUNK < S ? i0 + SUM_CHUNK : S;
        float f1 = 0.0f, f2 = 0.0f;
        if (silu) {
#pragma omp simd reduction(+ : f1, f2)
            for (int64_t i = i0; i < i1; i++) {
                float z = x[i] * a + b, sg = fm_sigmoid(z);
                float d = dy[i] * (sg * (1.0f + z * (1.0f - sg)));
                dz[i] = d;
                f1 += d;
                f2 += d * ((x[i] - mean) * rstd);
            }
        } else {
#pragma omp simd reduction(+ : f1, f2)
            for (int64_t i = i0; i < i1; i++) {
                float d = dy[i];
                dz[i] = d;
                f1 += d;
                f2 += d * ((x[i] - mean) * rstd);
            }
        }
        sdz += f1;
        sdzx += f2;
    }
    *sdz_out = sdz;
    *sdzx_out = sdzx;
}

void cpu_group_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *x, const float *gamma, const float *beta, int N, int C,
                             int64_t S, int groups, float eps, int silu) {
    const int cg = C / groups;              // channels per group
    const int64_t gsize = (int64_t)cg * S;  // elements per group, contiguous
    // One thread per group: it owns the group's channels of dgamma and dbeta
    // and walks the batch itself, so the += needs no reduction across threads.
#pragma omp parallel for schedule(dynamic, 1) if ((int64_t)N * C * S > PAR_MIN)
    for (int g = 0; g < groups; g++) {
        for (int n = 0; n < N; n++) {
            const int64_t off = ((int64_t)n * groups + g) * gsize;
            const float *xg = x + off;   // (cg, S)
            const float *dyg = dy + off; // (cg, S)
            float *dxg = dx + off;       // (cg, S): first dL/d(affine out), then dx
            float mean, rstd;
            stats(xg, gsize, eps, &mean, &rstd);
            // xhat = (x - mean) rstd; z = gamma xhat + beta; y = silu(z) or z.
            // Pass 1: dz into dx, per-channel sums of dz and dz*xhat.
            double m1 = 0.0, m2 = 0.0; // sum gamma dz, sum gamma dz xhat over the group
            for (int c = 0; c < cg; c++) {
                const int ch = g * cg + c;
                const float a = rstd * gamma[ch], b = silu ? beta[ch] - mean * a : 0.0f;
                const float *xc = xg + (int64_t)c * S, *dyc = dyg + (int64_t)c * S;
                double sdz, sdzx;
                gn_channel_dz(dxg + (int64_t)c * S, dyc, xc, S, a, b, mean, rstd, silu, &sdz,
                              &sdzx);
                if (dbeta) dbeta[ch] += (float)sdz;
                if (dgamma) dgamma[ch] += (float)sdzx;
                m1 += gamma[ch] * sdz;
                m2 += gamma[ch] * sdzx;
            }
            // Pass 2: dx = rstd (gamma dz - mean(gamma dz) - xhat mean(gamma dz xhat)).
            const float mm1 = (float)(m1 / (double)gsize), mm2 = (float)(m2 / (double)gsize);
            for (int c = 0; c < cg; c++) {
                const float gm = gamma[g * cg + c];
                const float *xc = xg + (int64_t)c * S;
                float *dzc = dxg + (int64_t)c * S;
#pragma omp simd
                for (int64_t i = 0; i < S; i++) {
                    float xh = (xc[i] - mean) * rstd;
                    dzc[i] = rstd * (gm * dzc[i] - mm1 - xh * mm2);
                }
            }
        }
    }
}

size_t cpu_layer_norm_backward_scratch_floats(int64_t M) { return (size_t)(2 * M); }

void cpu_layer_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *x, const float *gamma, int64_t M, int D, float eps,
                             float *scratch, size_t scratch_floats) {
    assert(scratch_floats >= (size_t)(2 * M));
    (void)scratch_floats;
    float *mean = scratch, *rstd = scratch + M; // (M), (M)
#pragma omp parallel for schedule(static) if (M * D > PAR_MIN)
    for (int64_t m = 0; m < M; m++) stats(x + m * D, D, eps, &mean[m], &rstd[m]);
    // Columns first (they read dy, which dx may overwrite): dgamma += sum dy
    // xhat, dbeta += sum dy; a thread owns a block of columns.
    if (dgamma || dbeta) {
        int nblk = (D + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (M * D > PAR_MIN)
        for (int bi = 0; bi < nblk; bi++) {
            int c0 = bi * COL_BLOCK, c1 = c0 + COL_BLOCK < D ? c0 + COL_BLOCK : D;
            double sg[COL_BLOCK] = {0}, sb[COL_BLOCK] = {0}; // (c1 - c0)
            // float partial sums over ROW_CHUNK rows (they vectorise along
            // the columns), folded into double
            for (int64_t m0 = 0; m0 < M; m0 += ROW_CHUNK) {
                const int64_t m1 = m0 + ROW_CHUNK < M ? m0 + ROW_CHUNK : M;
                float fg[COL_BLOCK] = {0}, fb[COL_BLOCK] = {0};
                for (int64_t m = m0; m < m1; m++) {
                    const float *xr = x + m * D + c0, *dyr = dy + m * D + c0; // (c1-c0)
                    const float mu = mean[m], rs = rstd[m];
#pragma omp simd
                    for (int c = 0; c < c1 - c0; c++) {
                        fg[c] += dyr[c] * ((xr[c] - mu) * rs);
                        fb[c] += dyr[c];
                    }
                }
                for (int c = 0; c < c1 - c0; c++) {
                    sg[c] += fg[c];
                    sb[c] += fb[c];
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dgamma) dgamma[c] += (float)sg[c - c0];
                if (dbeta) dbeta[c] += (float)sb[c - c0];
            }
        }
    }
    if (!dx) return;
    // Rows: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = gamma dy.
#pragma omp parallel for schedule(static) if (M * D > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D, *dyr = dy + m * D; // (D), (D)
        float *dxr = dx + m * D;                        // (D)
        const float mu = mean[m], rs = rstd[m];
        double s1 = 0.0, s2 = 0.0;
        for (int i0 = 0; i0 < D; i0 += SUM_CHUNK) {
            const int i1 = i0 + SUM_CHUNK < D ? i0 + SUM_CHUNK : D;
            float f1 = 0.0f, f2 = 0.0f;
#pragma omp simd reduction(+ : f1, f2)
            for (int i = i0; i < i1; i++) {
                float gi = gamma[i] * dyr[i];
                f1 += gi;
                f2 += gi * ((xr[i] - mu) * rs);
            }
            s1 += f1;
            s2 += f2;
        }
        const float m1 = (float)(s1 / D), m2 = (float)(s2 / D);
#pragma omp simd
        for (int i = 0; i < D; i++)
            dxr[i] = rs * (gamma[i] * dyr[i] - m1 - (xr[i] - mu) * rs * m2);
    }
}

void cpu_softmax_backward(float *dx, const float *dy, const float *y, int64_t M, int D) {
#pragma omp parallel for schedule(static) if (M * D > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        const float *dyr = dy + m * D, *yr = y + m * D; // (D), (D)
        float *dxr = dx + m * D;
        double s = 0.0;
        for (int i = 0; i < D; i++) s += (double)dyr[i] * yr[i];
        const float sf = (float)s;
        for (int i = 0; i < D; i++) dxr[i] = yr[i] * (dyr[i] - sf);
    }
}

// ---- elementwise -------------------------------------------------------------

// 1/sqrt(2 pi): gelu'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2/2)/sqrt(2 pi)
#define INV_SQRT_2PI 0.3989422804014327f

void cpu_silu_backward(float *dx, const float *dy, const float *x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float s = fm_sigmoid(x[i]);
        dx[i] = dy[i] * (s * (1.0f + x[i] * (1.0f - s)));
    }
}

void cpu_gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i];
        dx[i] = dy[i] * (fm_norm_cdf(xi) + xi * INV_SQRT_2PI * fm_expf(-0.5f * xi * xi));
    }
}

void cpu_quick_gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float s = fm_sigmoid(1.702f * x[i]);
        dx[i] = dy[i] * (s * (1.0f + 1.702f * x[i] * (1.0f - s)));
    }
}

void cpu_geglu_backward(float *dx, const float *dy, const float *x, int64_t M, int F) {
#pragma omp parallel for schedule(static) if (M * F > PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        const float *a = x + m * 2 * F, *g = a + F; // (F) value, (F) gate
        const float *d = dy + m * F;                // (F)
        float *da = dx + m * 2 * F, *dg = da + F;   // (F), (F)
#pragma omp simd
        for (int i = 0; i < F; i++) {
            float cdf = fm_norm_cdf(g[i]);
            da[i] = d[i] * (g[i] * cdf);
            dg[i] = d[i] * a[i] * (cdf + g[i] * INV_SQRT_2PI * fm_expf(-0.5f * g[i] * g[i]));
        }
    }
}

void cpu_add_channel_bias_backward(float *dbias, const float *dy, int N, int C, int64_t S) {
    int64_t rows = (int64_t)N * C;
#pragma omp parallel for schedule(static) if (rows * S > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *p = dy + r * S; // (S)
        double s = 0.0;
        for (int64_t i = 0; i < S; i++) s += p[i];
        dbias[r] = (float)s;
    }
}

// ---- layout ------------------------------------------------------------------

void cpu_upsample_nearest2x_backward(float *dx, const float *dy, int N, int C, int H, int W,
                                     int OH, int OW) {
    int64_t planes = (int64_t)N * C;
#pragma omp parallel for schedule(static) if (planes * OH * OW > PAR_MIN)
    for (int64_t p = 0; p < planes; p++) {
        const float *dp = dy + p * OH * OW; // (OH, OW)
        float *xp = dx + p * H * W;         // (H, W)
        for (int y = 0; y < H; y++) {
            const float *r0 = dp + (int64_t)(2 * y) * OW;
            const float *r1 = 2 * y + 1 < OH ? r0 + OW : NULL; // cut at an odd OH
            float *o = xp + (int64_t)y * W;
            for (int xx = 0; xx < W; xx++) {
                int c0 = 2 * xx, c1 = 2 * xx + 1;
                float s = r0[c0];
                if (c1 < OW) s += r0[c1];
                if (r1) {
                    s += r1[c0];
                    if (c1 < OW) s += r1[c1];
                }
                o[xx] = s;
            }
        }
    }
}

void cpu_concat_channels_backward(float *da, float *db, const float *dout, int N, int Ca, int Cb,
                                  int64_t S) {
    for (int n = 0; n < N; n++) {
        const float *d = dout + (int64_t)n * (Ca + Cb) * S; // (Ca+Cb, S)
        if (da) memcpy(da + (int64_t)n * Ca * S, d, sizeof(float) * Ca * S);
        if (db) memcpy(db + (int64_t)n * Cb * S, d + (int64_t)Ca * S, sizeof(float) * Cb * S);
    }
}

int64_t cpu_embedding_backward(float *dtable, const int32_t *ids, const float *dy, int64_t n,
                               int V, int D) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) return i;
    // Serial: repeated ids add into one row (n is a few hundred positions).
    for (int64_t i = 0; i < n; i++) {
        float *t = dtable + (int64_t)ids[i] * D;
        const float *d = dy + i * D;
        for (int j = 0; j < D; j++) t[j] += d[j];
    }
    return -1;
}
