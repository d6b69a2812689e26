// matmul_cpu.c: the CPU ops that are one or more sgemm calls: linear and
// conv2d. They run at OpenBLAS speed; the only extra work is im2col.
//
// conv2d: the output is cut into tiles of whole output rows of one image
// (or of several whole images when an image is small, e.g. 8x8 latents, so
// the sgemm is not too thin to run fast). Per tile, im2col writes
//   cols (C*KH*KW, tile)            // one row per (c, kh, kw)
// and one threaded sgemm computes
//   out_tile (OC, tile) = W (OC, C*KH*KW) x cols
// straight into the NCHW output (ldc = OH*OW); a product thinner than THIN_N
// columns (an 8x8 latent at batch 1) is instead cut along OC, one
// single-threaded sgemm per thread (2x faster there). The tile is sized to about
// CONV_TILE_PIXELS columns and to at most CPU_SCRATCH_BUDGET_FLOATS, so a
// 512x512x128 VAE conv never builds a 1 GB im2col matrix. A 1x1 stride-1
// unpadded conv on a big enough image is one sgemm per image, no im2col.
#include "cpu/ops_cpu.h"

#include <assert.h>
#include <cblas.h>
#include <omp.h>
#include <string.h>

// Columns per conv tile: big enough for sgemm to reach full speed, small
// enough that cols stays in the L3 cache between im2col and sgemm.
#define CONV_TILE_PIXELS 2048

// Below this many columns a threaded sgemm splits badly (measured: a
// 1280x64x11520 product, the 8x8 latent conv, runs at ~68 GFLOP/s threaded
// and ~140 cut along M on 2 threads); such products are cut along M by hand,
// one single-threaded sgemm per thread on its own rows of A and C.
#define THIN_N 192

// C (M, N) = A (M, K) . B (K, N) + beta C, all row-major NoTrans.
static void sgemm_nn(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                     float beta, float *C, int ldc) {
    int nt = omp_get_max_threads();
    if (N >= THIN_N || nt < 2 || M < 32 * nt) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, beta,
                    C, ldc);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int id = omp_get_thread_num(), n = omp_get_num_threads();
        int m0 = (int)((int64_t)M * id / n) / 16 * 16;
        int m1 = id == n - 1 ? M : (int)((int64_t)M * (id + 1) / n) / 16 * 16;
        if (m1 > m0) // OpenBLAS is single-threaded inside a parallel region
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m1 - m0, N, K, 1.0f,
                        A + (int64_t)m0 * lda, lda, B, ldb, beta, C + (int64_t)m0 * ldc, ldc);
    }
}

void cpu_linear(float *out, const float *x, const float *w, const float *b, int M, int K, int N) {
    float beta = 0.0f;
    if (b) {
#pragma omp parallel for schedule(static) if ((int64_t)M * N > (1 << 15))
        for (int m = 0; m < M; m++) memcpy(out + (int64_t)m * N, b, sizeof(float) * N);
        beta = 1.0f;
    }
    // out (M, N) = x (M, K) . w^T (K, N)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, beta, out, N);
}

// ---- conv2d tiling -------------------------------------------------------------

typedef struct ConvPlan {
    int OH, OW;
    int64_t CK;       // C*KH*KW: rows of cols
    int direct_1x1;   // 1x1 stride 1 pad 0 on big images: no im2col
    int imgs_per_tile;// > 1: a tile is that many whole images, output via scratch
    int rows_per_tile;// when imgs_per_tile == 1: output rows per tile
    size_t scratch;   // floats
} ConvPlan;

static ConvPlan conv_plan(int C, int H, int W, int OC, int KH, int KW, int stride, int pad,
                          int N) {
    ConvPlan p = {0};
    p.OH = (H + 2 * pad - KH) / stride + 1;
    p.OW = (W + 2 * pad - KW) / stride + 1;
    p.CK = (int64_t)C * KH * KW;
    int64_t ohw = (int64_t)p.OH * p.OW;
    int is_1x1 = KH == 1 && KW == 1 && stride == 1 && pad == 0;
    if (2 * ohw <= CONV_TILE_PIXELS && N > 1) {
        int ipt = (int)(CONV_TILE_PIXELS / ohw);
        int64_t per_img = (p.CK + OC) * ohw; // cols + output staging
        int64_t cap = (int64_t)(CPU_SCRATCH_BUDGET_FLOATS / per_img);
        if (ipt > cap) ipt = (int)cap;
        if (ipt > N) ipt = N;
        if (ipt > 1) {
            p.imgs_per_tile = ipt;
            p.scratch = (size_t)(per_img * ipt);
            return p;
        }
    }
    p.imgs_per_tile = 1;
    if (is_1x1) {
        p.direct_1x1 = 1;
        return p;
    }
    int64_t row = p.CK * p.OW; // floats of cols per output row
    int64_t rows = CONV_TILE_PIXELS / p.OW;
    int64_t cap = (int64_t)(CPU_SCRATCH_BUDGET_FLOATS / row);
    if (rows > cap) rows = cap;
    if (rows < 1) rows = 1;
    if (rows > p.OH) rows = p.OH;
    p.rows_per_tile = (int)rows;
    p.scratch = (size_t)(rows * row);
    return p;
}

size_t cpu_conv2d_scratch_floats(int C, int H, int W, int OC, int KH, int KW, int stride, int pad) {
    // The plan for N = 1 never needs more than the multi-image plan's budget,
    // but callers may pass any N: report the larger of the two.
    ConvPlan p1 = conv_plan(C, H, W, OC, KH, KW, stride, pad, 1);
    ConvPlan pn = conv_plan(C, H, W, OC, KH, KW, stride, pad, 1 << 20);
    return p1.scratch > pn.scratch ? p1.scratch : pn.scratch;
}

// One im2col row: for output rows oy0..oy1-1 of image xc (H, W) (channel c
// already selected) and kernel offset (kh, kw), write (oy1-oy0)*OW values.
static void im2col_row(float *dst, const float *xc, int H, int W, int OW, int oy0, int oy1, int kh,
                       int kw, int stride, int pad) {
    // valid ox: 0 <= ox*stride - pad + kw < W
    int ox_lo = 0;
    while (ox_lo < OW && ox_lo * stride - pad + kw < 0) ox_lo++;
    int ox_hi = OW; // exclusive
    while (ox_hi > ox_lo && (ox_hi - 1) * stride - pad + kw >= W) ox_hi--;
    for (int oy = oy0; oy < oy1; oy++, dst += OW) {
        int iy = oy * stride - pad + kh;
        if (iy < 0 || iy >= H) {
            memset(dst, 0, sizeof(float) * OW);
            continue;
        }
        const float *src = xc + (int64_t)iy * W;
        for (int ox = 0; ox < ox_lo; ox++) dst[ox] = 0.0f;
        if (stride == 1) {
            memcpy(dst + ox_lo, src + ox_lo - pad + kw, sizeof(float) * (ox_hi - ox_lo));
        } else {
            for (int ox = ox_lo; ox < ox_hi; ox++) dst[ox] = src[ox * stride - pad + kw];
        }
        for (int ox = ox_hi; ox < OW; ox++) dst[ox] = 0.0f;
    }
}

void cpu_conv2d(float *out, const float *x, const float *w, const float *b, int N, int C, int H,
                int W, int OC, int KH, int KW, int stride, int pad, float *scratch,
                size_t scratch_floats) {
    ConvPlan p = conv_plan(C, H, W, OC, KH, KW, stride, pad, N);
    const int64_t HW = (int64_t)H * W, OHW = (int64_t)p.OH * p.OW, CK = p.CK;
    const int KK = KH * KW;

    if (p.direct_1x1) {
        for (int n = 0; n < N; n++) {
            float *o = out + (int64_t)n * OC * OHW; // (OC, OHW)
            float beta = 0.0f;
            if (b) {
#pragma omp parallel for schedule(static)
                for (int oc = 0; oc < OC; oc++)
                    for (int64_t i = 0; i < OHW; i++) o[oc * OHW + i] = b[oc];
                beta = 1.0f;
            }
            sgemm_nn(OC, (int)OHW, C, w, C, x + (int64_t)n * C * HW, (int)OHW, beta, o, (int)OHW);
        }
        return;
    }

    assert(scratch_floats >= p.scratch); // sized by cpu_conv2d_scratch_floats
    (void)scratch_floats;
    if (p.imgs_per_tile > 1) {
        for (int n0 = 0; n0 < N; n0 += p.imgs_per_tile) {
            int ni = N - n0 < p.imgs_per_tile ? N - n0 : p.imgs_per_tile;
            int64_t tcols = ni * OHW;
            float *cols = scratch;                // (CK, ni*OHW)
            float *otile = scratch + CK * tcols;  // (OC, ni*OHW)
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < CK; r++) {
                int c = (int)(r / KK), kh = (int)(r % KK) / KW, kw = (int)(r % KW);
                for (int i = 0; i < ni; i++)
                    im2col_row(cols + r * tcols + i * OHW, x + ((int64_t)(n0 + i) * C + c) * HW, H,
                               W, p.OW, 0, p.OH, kh, kw, stride, pad);
            }
            sgemm_nn(OC, (int)tcols, (int)CK, w, (int)CK, cols, (int)tcols, 0.0f, otile, (int)tcols);
#pragma omp parallel for collapse(2) schedule(static)
            for (int i = 0; i < ni; i++)
                for (int oc = 0; oc < OC; oc++) {
                    const float *src = otile + (int64_t)oc * tcols + i * OHW;
                    float *dst = out + ((int64_t)(n0 + i) * OC + oc) * OHW;
                    float bv = b ? b[oc] : 0.0f;
                    for (int64_t j = 0; j < OHW; j++) dst[j] = src[j] + bv;
                }
        }
        return;
    }

    for (int n = 0; n < N; n++) {
        const float *xn = x + (int64_t)n * C * HW; // (C, H, W)
        float *on = out + (int64_t)n * OC * OHW;   // (OC, OH, OW)
        for (int oy0 = 0; oy0 < p.OH; oy0 += p.rows_per_tile) {
            int oy1 = oy0 + p.rows_per_tile < p.OH ? oy0 + p.rows_per_tile : p.OH;
            int64_t tcols = (int64_t)(oy1 - oy0) * p.OW;
            float *cols = scratch; // (CK, tcols)
            float *otile = on + (int64_t)oy0 * p.OW; // (OC, tcols) with row stride OHW
#pragma omp parallel
            {
#pragma omp for schedule(static) nowait
                for (int64_t r = 0; r < CK; r++) {
                    int c = (int)(r / KK), kh = (int)(r % KK) / KW, kw = (int)(r % KW);
                    im2col_row(cols + r * tcols, xn + (int64_t)c * HW, H, W, p.OW, oy0, oy1, kh,
                               kw, stride, pad);
                }
                if (b) {
#pragma omp for schedule(static)
                    for (int oc = 0; oc < OC; oc++) {
                        float *o = otile + (int64_t)oc * OHW;
                        for (int64_t j = 0; j < tcols; j++) o[j] = b[oc];
                    }
                }
            }
            sgemm_nn(OC, (int)tcols, (int)CK, w, (int)CK, cols, (int)tcols, b ? 1.0f : 0.0f, otile,
                     (int)OHW);
        }
    }
}
