// backward_cuda.cu: the backward kernels of group norm (+ fused SiLU), layer
// norm, softmax, the activations (SiLU, GELU, quick GELU) and GEGLU on the
// GPU. Same formulas and conventions as the fp32 CPU reference
// (kernels/cpu/backward_cpu.c): the norms recompute their statistics from x
// (two-pass mean, biased variance, rstd = 1/sqrt(var + eps)), gradients of
// activations are overwritten, dgamma and dbeta are added to. fp32
// arithmetic for every storage dtype; 16-byte vector loads where the row
// lengths and the pointers allow.
//
// Parameter gradients are deterministic (no atomics): every sum is taken in
// a fixed order. Group norm: a block per (sample, channel, chunk of S)
// writes its sums of dz and dz*xhat to the scratch; one thread per channel
// then adds them in (sample, chunk) order into dgamma and dbeta. Layer norm:
// a block per (32 columns, chunk of rows) writes one partial sum per column;
// one thread per column adds the chunks in order. The partials live in the
// context's scratch, or in a stream-ordered allocation when they do not fit.
//
// Written without a GPU; checked against the CPU by tests/test_bwd_cuda.c.
#include "cuda_common.cuh"

#include <math.h>

#define BWD_INV_SQRT_2PI 0.3989422804014327f

// ---- shared helpers --------------------------------------------------------------

static inline bool bwd_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// chunk k of K over n items: [lo, hi)
static __device__ __forceinline__ void bwd_chunk(int64_t n, int k, int K, int64_t *lo,
                                                 int64_t *hi) {
    *lo = n * k / K;
    *hi = n * (k + 1) / K;
}

static __device__ __forceinline__ float bwd_sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }
// d silu(v) / dv = s (1 + v (1 - s)), s = sigmoid(v)
static __device__ __forceinline__ float bwd_silu_grad(float v) {
    float s = bwd_sigmoid(v);
    return s * (1.f + v * (1.f - s));
}
// d gelu(v) / dv = Phi(v) + v phi(v) (erf form). normcdff keeps its relative
// accuracy in the left tail, as the CPU's fm_norm_cdf does (1 + erff does not).
static __device__ __forceinline__ float bwd_gelu_grad(float v) {
    return normcdff(v) + v * BWD_INV_SQRT_2PI * __expf(-0.5f * v * v);
}
// quick gelu = v sigmoid(1.702 v)
static __device__ __forceinline__ float bwd_quick_gelu_grad(float v) {
    float s = bwd_sigmoid(1.702f * v);
    return s * (1.f + 1.702f * v * (1.f - s));
}
template <int ACT>
static __device__ __forceinline__ float bwd_act_grad(float v) {
    if constexpr (ACT == CUDA_ACT_SILU) return bwd_silu_grad(v);
    else if constexpr (ACT == CUDA_ACT_GELU) return bwd_gelu_grad(v);
    else return bwd_quick_gelu_grad(v);
}

// Device memory of `bytes` for one call's partial sums: the context's
// scratch when it fits, else a stream-ordered allocation (*owned set) that
// bwd_ws_release frees once the call's kernels are enqueued. NULL, with the
// failure recorded in the context, when the device is out of memory.
static float *bwd_ws_get(CudaCtx *c, size_t bytes, bool *owned) {
    *owned = false;
    if (bytes <= CUDA_SCRATCH_BYTES) return c->scratch;
    void *p = NULL;
    cudaError_t e = cudaMallocAsync(&p, bytes, c->stream);
    if (e != cudaSuccess) {
        cudaGetLastError(); // an allocation failure is not sticky: clear it
        cuda_fault(c, e == cudaErrorMemoryAllocation ? CUDA_ERR_OOM : CUDA_ERR_LAUNCH,
                   "CUDA error at %s:%d (cudaMallocAsync of %zu bytes): %s: %s", __FILE__,
                   __LINE__, bytes, cudaGetErrorName(e), cudaGetErrorString(e));
        return NULL;
    }
    *owned = true;
    return (float *)p;
}
static void bwd_ws_release(CudaCtx *c, float *p, bool owned) {
    if (owned) CUDA_CHECK(c, cudaFreeAsync(p, c->stream));
}

// ---- group norm ---------------------------------------------------------------------
// x, dy (N, C, S); a group is Cg = C/G channel rows of S values. Each channel
// row is cut into K chunks (in vectors of VEC values) so that small batches
// still fill the GPU. With xhat = (x - mean) rstd, z = gamma xhat + beta,
// dz = dy (silu: dy silu'(z)):
//   dbeta[c] += sum dz, dgamma[c] += sum dz xhat (over n and S),
//   dx = rstd (gamma dz - mean_g(gamma dz) - xhat mean_g(gamma dz xhat)).
// Kernels, in stream order: chunk (mean, M2) -> group (mean, rstd) -> chunk
// sums of dz and dz xhat -> group means of gamma dz and gamma dz xhat ->
// dgamma, dbeta -> dx. dy is read in full before dx (which may be dy) is written.
// Scratch: part (N*C, K, 2) (the statistics, then the sums), gstat and gsum (N*G, 2).

#define GNB_THREADS 256

// x (N*C, S) -> part (N*C, K, 2) = (mean, M2) of chunk k of each channel row.  grid (N*C, K)
template <typename T, int VEC>
static __global__ void gnb_stats_kernel(float *part, const T *x, int64_t S, int K) {
    __shared__ float sm[32];
    const int64_t nc = blockIdx.x;
    const int k = (int)blockIdx.y;
    int64_t lo, hi;
    bwd_chunk(S / VEC, k, K, &lo, &hi);
    const T *xr = x + nc * S;
    float s = 0.f;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        float v[VEC];
        ld_vec<T, VEC>(xr + j * VEC, v);
#pragma unroll
        for (int e = 0; e < VEC; e++) s += v[e];
    }
    const float tot = block_sum(s, sm);
    const float mean = hi > lo ? tot / (float)((hi - lo) * VEC) : 0.f;
    float q = 0.f;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        float v[VEC];
        ld_vec<T, VEC>(xr + j * VEC, v);
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            float d = v[e] - mean;
            q += d * d;
        }
    }
    const float m2 = block_sum(q, sm);
    if (threadIdx.x == 0) {
        part[(nc * K + k) * 2 + 0] = mean;
        part[(nc * K + k) * 2 + 1] = m2;
    }
}

// part (N*C, K, 2) of gnb_stats_kernel -> gstat (N*G, 2) = (mean, rstd) of
// each group: the exact merge of its Cg*K chunks, in order, in double
// (mean = sum n_p m_p / L, M2 = sum M2_p + n_p (m_p - mean)^2). One thread per group.
static __global__ void gnb_group_stats_kernel(float *gstat, const float *part, int64_t NG,
                                              int64_t Cg, int64_t S, int vec, int K, float eps) {
    const int64_t sv = S / vec, L = Cg * S;
    for (int64_t ng = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; ng < NG;
         ng += (int64_t)gridDim.x * blockDim.x) {
        const float *pp = part + ng * Cg * K * 2; // (Cg, K, 2)
        double s = 0.0;
        for (int64_t i = 0; i < Cg * K; i++) {
            const int k = (int)(i % K);
            s += (double)((sv * (k + 1) / K - sv * k / K) * vec) * pp[2 * i];
        }
        const double mean = s / (double)L;
        double m2 = 0.0;
        for (int64_t i = 0; i < Cg * K; i++) {
            const int k = (int)(i % K);
            const double d = pp[2 * i] - mean;
            m2 += pp[2 * i + 1] + (double)((sv * (k + 1) / K - sv * k / K) * vec) * d * d;
        }
        const float var = (float)(m2 / (double)L);
        gstat[2 * ng + 0] = (float)mean;
        gstat[2 * ng + 1] = rsqrtf(var + eps);
    }
}

// part (N*C, K, 2) = (sum dz, sum dz xhat) over chunk k of each channel row.  grid (N*C, K)
template <typename T, int VEC>
static __global__ void gnb_sums_kernel(float *part, const T *dy, const T *x, const float *gstat,
                                       const T *gamma, const T *beta, int64_t C, int64_t S,
                                       int64_t Cg, int K, int silu) {
    __shared__ float sm[32];
    const int64_t nc = blockIdx.x, c = nc % C, ng = nc / Cg;
    const int k = (int)blockIdx.y;
    const float mean = gstat[2 * ng], rstd = gstat[2 * ng + 1];
    // z = x a + b (as the forward computes it)
    const float a = rstd * ld(gamma + c), b = silu ? ld(beta + c) - mean * a : 0.f;
    int64_t lo, hi;
    bwd_chunk(S / VEC, k, K, &lo, &hi);
    const T *xr = x + nc * S, *dyr = dy + nc * S;
    float s1 = 0.f, s2 = 0.f;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        float xv[VEC], gv[VEC];
        ld_vec<T, VEC>(xr + j * VEC, xv);
        ld_vec<T, VEC>(dyr + j * VEC, gv);
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            float d = gv[e];
            if (silu) d *= bwd_silu_grad(xv[e] * a + b);
            s1 += d;
            s2 += d * ((xv[e] - mean) * rstd);
        }
    }
    const float t1 = block_sum(s1, sm);
    const float t2 = block_sum(s2, sm);
    if (threadIdx.x == 0) {
        part[(nc * K + k) * 2 + 0] = t1;
        part[(nc * K + k) * 2 + 1] = t2;
    }
}

// part (N*C, K, 2) of gnb_sums_kernel -> gsum (N*G, 2) = (sum gamma dz,
// sum gamma dz xhat) / (Cg S) over each group, in double, channel by
// channel in order. One thread per group.
template <typename T>
static __global__ void gnb_group_sums_kernel(float *gsum, const float *part, const T *gamma,
                                             int64_t NG, int64_t Cg, int G, int K, int64_t S) {
    const double L = (double)(Cg * S);
    for (int64_t ng = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; ng < NG;
         ng += (int64_t)gridDim.x * blockDim.x) {
        const int64_t g = ng % G;
        const float *pp = part + ng * Cg * K * 2; // (Cg, K, 2)
        double m1 = 0.0, m2 = 0.0;
        for (int64_t ci = 0; ci < Cg; ci++) {
            double s1 = 0.0, s2 = 0.0;
            for (int k = 0; k < K; k++) {
                s1 += pp[(ci * K + k) * 2 + 0];
                s2 += pp[(ci * K + k) * 2 + 1];
            }
            const double gm = ld(gamma + g * Cg + ci);
            m1 += gm * s1;
            m2 += gm * s2;
        }
        gsum[2 * ng + 0] = (float)(m1 / L);
        gsum[2 * ng + 1] = (float)(m2 / L);
    }
}

// dgamma, dbeta (C) += the sums of gnb_sums_kernel, sample by sample in order
// (as the CPU adds them; either pointer NULL). One thread per channel.
template <typename T>
static __global__ void gnb_params_kernel(T *dgamma, T *dbeta, const float *part, int64_t N,
                                         int64_t C, int K) {
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C;
         c += (int64_t)gridDim.x * blockDim.x) {
        float ag = dgamma ? ld(dgamma + c) : 0.f, ab = dbeta ? ld(dbeta + c) : 0.f;
        for (int64_t n = 0; n < N; n++) {
            const float *pp = part + (n * C + c) * K * 2; // (K, 2)
            double s1 = 0.0, s2 = 0.0;
            for (int k = 0; k < K; k++) {
                s1 += pp[2 * k + 0];
                s2 += pp[2 * k + 1];
            }
            ab += (float)s1;
            ag += (float)s2;
        }
        if (dgamma) st(dgamma + c, ag);
        if (dbeta) st(dbeta + c, ab);
    }
}

// dx (N*C, S) = rstd (gamma dz - mean_g(gamma dz) - xhat mean_g(gamma dz xhat)).
// Each value is read and written by one thread: dx may be dy.  grid (N*C, K)
template <typename T, int VEC>
static __global__ void gnb_dx_kernel(T *dx, const T *dy, const T *x, const float *gstat,
                                     const float *gsum, const T *gamma, const T *beta, int64_t C,
                                     int64_t S, int64_t Cg, int K, int silu) {
    const int64_t nc = blockIdx.x, c = nc % C, ng = nc / Cg;
    const int k = (int)blockIdx.y;
    const float mean = gstat[2 * ng], rstd = gstat[2 * ng + 1];
    const float mm1 = gsum[2 * ng], mm2 = gsum[2 * ng + 1];
    const float gm = ld(gamma + c);
    const float a = rstd * gm, b = silu ? ld(beta + c) - mean * a : 0.f;
    int64_t lo, hi;
    bwd_chunk(S / VEC, k, K, &lo, &hi);
    const T *xr = x + nc * S;
    const T *dyr = dy + nc * S;
    T *dxr = dx + nc * S;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        float xv[VEC], gv[VEC];
        ld_vec<T, VEC>(xr + j * VEC, xv);
        ld_vec<T, VEC>(dyr + j * VEC, gv);
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            float d = gv[e];
            if (silu) d *= bwd_silu_grad(xv[e] * a + b);
            const float xh = (xv[e] - mean) * rstd;
            gv[e] = rstd * (gm * d - mm1 - xh * mm2);
        }
        st_vec<T, VEC>(dxr + j * VEC, gv);
    }
}

template <typename T, int VEC>
static void gnb_launch(CudaCtx *c, T *dx, T *dgamma, T *dbeta, const T *dy, const T *x,
                       const T *gamma, const T *beta, int64_t N, int64_t C, int64_t S, int G,
                       float eps, int silu, int K, float *part, float *gstat, float *gsum) {
    const int64_t NC = N * C, NG = N * G, Cg = C / G;
    const dim3 grid((unsigned)NC, (unsigned)K);
    // up to GNB_THREADS threads, no more warps than a chunk has vectors (small S)
    const int64_t per_chunk = (S / VEC + K - 1) / K;
    const unsigned threads =
        (unsigned)(per_chunk >= GNB_THREADS ? GNB_THREADS : (per_chunk + 31) / 32 * 32);
    gnb_stats_kernel<T, VEC><<<grid, threads, 0, c->stream>>>(part, x, S, K);
    CUDA_CHECK_LAUNCH(c);
    gnb_group_stats_kernel<<<cuda_blocks(NG, 128), 128, 0, c->stream>>>(gstat, part, NG, Cg, S,
                                                                         VEC, K, eps);
    CUDA_CHECK_LAUNCH(c);
    // the statistics in part are consumed: it takes the sums now
    gnb_sums_kernel<T, VEC><<<grid, threads, 0, c->stream>>>(part, dy, x, gstat, gamma, beta,
                                                                 C, S, Cg, K, silu);
    CUDA_CHECK_LAUNCH(c);
    gnb_group_sums_kernel<T><<<cuda_blocks(NG, 128), 128, 0, c->stream>>>(gsum, part, gamma, NG,
                                                                          Cg, G, K, S);
    CUDA_CHECK_LAUNCH(c);
    if (dgamma || dbeta) {
        gnb_params_kernel<T><<<cuda_blocks(C, 128), 128, 0, c->stream>>>(dgamma, dbeta, part, N,
                                                                         C, K);
        CUDA_CHECK_LAUNCH(c);
    }
    gnb_dx_kernel<T, VEC><<<grid, threads, 0, c->stream>>>(dx, dy, x, gstat, gsum, gamma,
                                                               beta, C, S, Cg, K, silu);
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_group_norm_backward(CudaCtx *c, int dt, void *dx, void *dgamma, void *dbeta,
                                         const void *dy, const void *x, const void *gamma,
                                         const void *beta, int64_t N, int64_t C, int64_t S,
                                         int groups, float eps, int silu) {
    CUDA_REQUIRE(N > 0 && C > 0 && S > 0 && groups > 0 && C % groups == 0);
    CUDA_REQUIRE(dx && dy && x && gamma && (beta || !silu));
    const int64_t NC = N * C, NG = N * groups;
    CUDA_REQUIRE(NC <= INT32_MAX); // grid.x
    // chunks per channel row: about 1024 blocks in all (8 per SM of an H100), chunks of at
    // least 2048 values; from the shape alone, so the sums' bits do not depend on the GPU
    int64_t K = (1024 + NC - 1) / NC;
    if (K > (S + 2047) / 2048) K = (S + 2047) / 2048;
    if (K > 64) K = 64;
    if (K < 1) K = 1;
    const int64_t cap = (int64_t)(CUDA_SCRATCH_BYTES / sizeof(float));
    if (NC * K * 2 + NG * 4 > cap) { // fewer chunks to fit the scratch, else an allocation
        K = (cap - NG * 4) / (NC * 2);
        if (K < 1) K = 1;
    }
    const size_t floats = (size_t)(NC * K * 2 + NG * 4);
    bool owned;
    float *ws = bwd_ws_get(c, floats * sizeof(float), &owned);
    if (!ws) return;
    float *part = ws, *gstat = ws + NC * K * 2, *gsum = gstat + NG * 2;
    const int64_t vec = dt == CDT_F32 ? 4 : 8;
    const bool vec_ok = S % vec == 0 && bwd_aligned16(dx) && bwd_aligned16(dy) && bwd_aligned16(x);
    CUDA_DISPATCH(dt, {
        if (vec_ok)
            gnb_launch<T, 16 / sizeof(T)>(c, (T *)dx, (T *)dgamma, (T *)dbeta, (const T *)dy,
                                          (const T *)x, (const T *)gamma, (const T *)beta, N, C,
                                          S, groups, eps, silu, (int)K, part, gstat, gsum);
        else
            gnb_launch<T, 1>(c, (T *)dx, (T *)dgamma, (T *)dbeta, (const T *)dy, (const T *)x,
                             (const T *)gamma, (const T *)beta, N, C, S, groups, eps, silu,
                             (int)K, part, gstat, gsum);
    });
    bwd_ws_release(c, ws, owned);
}

// ---- layer norm ---------------------------------------------------------------------
// x, dy (rows, D). Kernels, in stream order: per row (mean, rstd) into the
// scratch (one warp per row, two passes); if dgamma or dbeta: per (32
// columns, chunk of rows) partial column sums of dy xhat and dy, then per
// column the chunks in order, added into dgamma, dbeta; if dx: one warp per
// row, dx = rstd (g - mean(g) - xhat mean(g xhat)), g = gamma dy. The
// column sums read dy before dx (which may be dy) is written.
// Scratch: stat (rows, 2), pg and pb (RC, D).

#define LNB_ROW_CHUNK 64  // rows per column-sum block, at least (up to LNB_MAX_CHUNKS chunks)
#define LNB_MAX_CHUNKS 1024

// x (rows, D) -> stat (rows, 2) = (mean, rstd).  one warp per row
template <typename T>
static __global__ void lnb_stats_kernel(float *stat, const T *x, int64_t rows, int64_t D,
                                        float eps) {
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return; // the whole warp
    const T *xr = x + row * D;
    float s = 0.f;
    for (int64_t i = lane; i < D; i += 32) s += ld(xr + i);
    const float mean = warp_sum(s) / (float)D;
    float q = 0.f;
    for (int64_t i = lane; i < D; i += 32) {
        float d = ld(xr + i) - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(warp_sum(q) / (float)D + eps);
    if (lane == 0) {
        stat[2 * row + 0] = mean;
        stat[2 * row + 1] = rstd;
    }
}

// pg, pb (RC, D) = sums of dy xhat and of dy over chunk k of the rows.
// block (32, 8): threadIdx.x a column, threadIdx.y every 8th row of the
// chunk; the 8 partials are added in y order.  grid (D / 32, RC)
template <typename T>
static __global__ void lnb_cols_kernel(float *pg, float *pb, const T *dy, const T *x,
                                       const float *stat, int64_t rows, int64_t D, int RC) {
    __shared__ float sg[8][33], sb[8][33];
    const int64_t col = (int64_t)blockIdx.x * 32 + threadIdx.x;
    const int k = (int)blockIdx.y;
    int64_t r0, r1;
    bwd_chunk(rows, k, RC, &r0, &r1);
    float ag = 0.f, ab = 0.f;
    if (col < D) {
#pragma unroll 4
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const float mu = stat[2 * r], rs = stat[2 * r + 1];
            const float d = ld(dy + r * D + col);
            ag += d * ((ld(x + r * D + col) - mu) * rs);
            ab += d;
        }
    }
    sg[threadIdx.y][threadIdx.x] = ag;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && col < D) {
        float g = 0.f, b = 0.f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            g += sg[j][threadIdx.x];
            b += sb[j][threadIdx.x];
        }
        pg[(int64_t)k * D + col] = g;
        pb[(int64_t)k * D + col] = b;
    }
}

// dgamma, dbeta (D) += the RC chunk sums, in chunk order, in double (either NULL)
template <typename T>
static __global__ void lnb_params_kernel(T *dgamma, T *dbeta, const float *pg, const float *pb,
                                         int64_t D, int RC) {
    for (int64_t col = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; col < D;
         col += (int64_t)gridDim.x * blockDim.x) {
        double g = 0.0, b = 0.0;
        for (int k = 0; k < RC; k++) {
            g += pg[(int64_t)k * D + col];
            b += pb[(int64_t)k * D + col];
        }
        if (dgamma) st(dgamma + col, ld(dgamma + col) + (float)g);
        if (dbeta) st(dbeta + col, ld(dbeta + col) + (float)b);
    }
}

// dx (rows, D), one warp per row; a lane reads and writes only its own
// columns, so dx may be dy.
template <typename T>
static __global__ void lnb_dx_kernel(T *dx, const T *dy, const T *x, const T *gamma,
                                     const float *stat, int64_t rows, int64_t D) {
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return; // the whole warp
    const T *xr = x + row * D;
    const T *dyr = dy + row * D;
    T *dxr = dx + row * D;
    const float mu = stat[2 * row], rs = stat[2 * row + 1];
    float s1 = 0.f, s2 = 0.f;
    for (int64_t i = lane; i < D; i += 32) {
        const float g = ld(gamma + i) * ld(dyr + i);
        s1 += g;
        s2 += g * ((ld(xr + i) - mu) * rs);
    }
    const float m1 = warp_sum(s1) / (float)D, m2 = warp_sum(s2) / (float)D;
    for (int64_t i = lane; i < D; i += 32) {
        const float xh = (ld(xr + i) - mu) * rs;
        st(dxr + i, rs * (ld(gamma + i) * ld(dyr + i) - m1 - xh * m2));
    }
}

extern "C" void cuda_layer_norm_backward(CudaCtx *c, int dt, void *dx, void *dgamma, void *dbeta,
                                         const void *dy, const void *x, const void *gamma,
                                         int64_t rows, int64_t D, float eps) {
    CUDA_REQUIRE(rows > 0 && D > 0);
    CUDA_REQUIRE(dy && x && (gamma || !dx));
    if (!dx && !dgamma && !dbeta) return;
    const bool params = dgamma || dbeta;
    const int64_t row_blocks = (rows + 7) / 8; // 8 warps of 256 threads, a row each
    CUDA_REQUIRE(row_blocks <= INT32_MAX);
    int64_t RC = 0; // chunks of rows for the column sums
    if (params) {
        RC = (rows + LNB_ROW_CHUNK - 1) / LNB_ROW_CHUNK;
        if (RC > LNB_MAX_CHUNKS) RC = LNB_MAX_CHUNKS;
        const int64_t cap = (int64_t)(CUDA_SCRATCH_BYTES / sizeof(float));
        if (rows * 2 + RC * D * 2 > cap) { // fewer chunks to fit the scratch, unless too few
            const int64_t fit = cap > rows * 2 ? (cap - rows * 2) / (D * 2) : 0;
            const int64_t least = RC < 128 ? RC : 128;
            if (fit >= least) RC = fit < RC ? fit : RC;
        }
    }
    const size_t floats = (size_t)(rows * 2 + RC * D * 2);
    bool owned;
    float *ws = bwd_ws_get(c, floats * sizeof(float), &owned);
    if (!ws) return;
    float *stat = ws, *pg = ws + rows * 2, *pb = pg + RC * D;
    CUDA_DISPATCH(dt, {
        lnb_stats_kernel<T><<<(unsigned)row_blocks, 256, 0, c->stream>>>(stat, (const T *)x, rows,
                                                                         D, eps);
        CUDA_CHECK_LAUNCH(c);
        if (params) {
            const dim3 grid((unsigned)((D + 31) / 32), (unsigned)RC);
            lnb_cols_kernel<T><<<grid, dim3(32, 8), 0, c->stream>>>(
                pg, pb, (const T *)dy, (const T *)x, stat, rows, D, (int)RC);
            CUDA_CHECK_LAUNCH(c);
            lnb_params_kernel<T><<<cuda_blocks(D, 128), 128, 0, c->stream>>>(
                (T *)dgamma, (T *)dbeta, pg, pb, D, (int)RC);
            CUDA_CHECK_LAUNCH(c);
        }
        if (dx) {
            lnb_dx_kernel<T><<<(unsigned)row_blocks, 256, 0, c->stream>>>(
                (T *)dx, (const T *)dy, (const T *)x, (const T *)gamma, stat, rows, D);
            CUDA_CHECK_LAUNCH(c);
        }
    });
    bwd_ws_release(c, ws, owned);
}

// ---- softmax ------------------------------------------------------------------------
// dx = y (dy - sum_d dy y) per row. A row's y and dy are held in registers
// between the sum and the write: one warp per row up to D = 1024 (PER values
// of each per lane), one block of 512 threads per row up to D = 8192; longer
// rows are read twice. A thread writes only the values it read: dx may be dy.

#define SMB_BLOCK 512

// one warp per row, lane holds columns lane + 32 j, j < PER (32 PER >= D)
template <typename T, int PER>
static __global__ void smb_warp_kernel(T *dx, const T *dy, const T *y, int64_t rows, int64_t D) {
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return; // the whole warp
    const T *yr = y + row * D;
    const T *gr = dy + row * D;
    T *dxr = dx + row * D;
    float yv[PER], gv[PER];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int64_t i = lane + 32 * j;
        yv[j] = 0.f;
        gv[j] = 0.f;
        if (i < D) {
            yv[j] = ld(yr + i);
            gv[j] = ld(gr + i);
        }
        s += yv[j] * gv[j];
    }
    s = warp_sum(s);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int64_t i = lane + 32 * j;
        if (i < D) st(dxr + i, yv[j] * (gv[j] - s));
    }
}

// one block of SMB_BLOCK threads per row (grid-stride over rows); thread t
// holds columns t + SMB_BLOCK j, j < PER (PER 0: reads the row twice)
template <typename T, int PER>
static __global__ void __launch_bounds__(SMB_BLOCK)
smb_block_kernel(T *dx, const T *dy, const T *y, int64_t rows, int64_t D) {
    __shared__ float sm[32];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T *yr = y + row * D;
        const T *gr = dy + row * D;
        T *dxr = dx + row * D;
        if constexpr (PER > 0) {
            float yv[PER], gv[PER];
            float s = 0.f;
#pragma unroll
            for (int j = 0; j < PER; j++) {
                const int64_t i = threadIdx.x + (int64_t)SMB_BLOCK * j;
                yv[j] = 0.f;
                gv[j] = 0.f;
                if (i < D) {
                    yv[j] = ld(yr + i);
                    gv[j] = ld(gr + i);
                }
                s += yv[j] * gv[j];
            }
            s = block_sum(s, sm);
#pragma unroll
            for (int j = 0; j < PER; j++) {
                const int64_t i = threadIdx.x + (int64_t)SMB_BLOCK * j;
                if (i < D) st(dxr + i, yv[j] * (gv[j] - s));
            }
        } else {
            float s = 0.f;
            for (int64_t i = threadIdx.x; i < D; i += SMB_BLOCK) s += ld(yr + i) * ld(gr + i);
            s = block_sum(s, sm);
            for (int64_t i = threadIdx.x; i < D; i += SMB_BLOCK) {
                const float yi = ld(yr + i);
                st(dxr + i, yi * (ld(gr + i) - s));
            }
        }
    }
}

template <typename T>
static void smb_launch(CudaCtx *c, T *dx, const T *dy, const T *y, int64_t rows, int64_t D) {
    if (D <= 1024) {
        const unsigned blocks = (unsigned)((rows + 7) / 8); // 8 warps of 256 threads
        if (D <= 64)
            smb_warp_kernel<T, 2><<<blocks, 256, 0, c->stream>>>(dx, dy, y, rows, D);
        else if (D <= 128)
            smb_warp_kernel<T, 4><<<blocks, 256, 0, c->stream>>>(dx, dy, y, rows, D);
        else if (D <= 256)
            smb_warp_kernel<T, 8><<<blocks, 256, 0, c->stream>>>(dx, dy, y, rows, D);
        else if (D <= 512)
            smb_warp_kernel<T, 16><<<blocks, 256, 0, c->stream>>>(dx, dy, y, rows, D);
        else
            smb_warp_kernel<T, 32><<<blocks, 256, 0, c->stream>>>(dx, dy, y, rows, D);
    } else {
        const unsigned blocks = (unsigned)(rows < 65535LL * 32 ? rows : 65535LL * 32);
        if (D <= SMB_BLOCK * 4)
            smb_block_kernel<T, 4><<<blocks, SMB_BLOCK, 0, c->stream>>>(dx, dy, y, rows, D);
        else if (D <= SMB_BLOCK * 8)
            smb_block_kernel<T, 8><<<blocks, SMB_BLOCK, 0, c->stream>>>(dx, dy, y, rows, D);
        else if (D <= SMB_BLOCK * 16)
            smb_block_kernel<T, 16><<<blocks, SMB_BLOCK, 0, c->stream>>>(dx, dy, y, rows, D);
        else
            smb_block_kernel<T, 0><<<blocks, SMB_BLOCK, 0, c->stream>>>(dx, dy, y, rows, D);
    }
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_softmax_backward(CudaCtx *c, int dt, void *dx, const void *dy, const void *y,
                                      int64_t rows, int64_t D) {
    CUDA_REQUIRE(rows > 0 && D > 0);
    CUDA_REQUIRE(dx && dy && y && (rows + 7) / 8 <= INT32_MAX);
    CUDA_DISPATCH(dt, { smb_launch<T>(c, (T *)dx, (const T *)dy, (const T *)y, rows, D); });
}

// ---- activations --------------------------------------------------------------------
// dx = dy act'(x), one read of x and dy and one write per element; VEC > 1:
// 16-byte vectors (all three pointers aligned), the last n % VEC values one
// by one. Each value is read and written by one thread: dx may be dy.

template <typename T, int ACT, int VEC>
static __global__ void actb_kernel(T *dx, const T *dy, const T *x, int64_t n) {
    const int64_t nv = n / VEC;
    const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = tid; i < nv; i += step) {
        float xv[VEC], gv[VEC];
        ld_vec<T, VEC>(x + i * VEC, xv);
        ld_vec<T, VEC>(dy + i * VEC, gv);
#pragma unroll
        for (int e = 0; e < VEC; e++) gv[e] *= bwd_act_grad<ACT>(xv[e]);
        st_vec<T, VEC>(dx + i * VEC, gv);
    }
    if constexpr (VEC > 1) {
        const int64_t t = nv * VEC + tid; // the tail, fewer than VEC values
        if (t < n) st(dx + t, ld(dy + t) * bwd_act_grad<ACT>(ld(x + t)));
    }
}

template <typename T, int VEC>
static void actb_launch(CudaCtx *c, int act, T *dx, const T *dy, const T *x, int64_t n) {
    const unsigned nb = cuda_blocks(n / VEC, 256);
    switch (act) {
    case CUDA_ACT_SILU:
        actb_kernel<T, CUDA_ACT_SILU, VEC><<<nb, 256, 0, c->stream>>>(dx, dy, x, n);
        break;
    case CUDA_ACT_GELU:
        actb_kernel<T, CUDA_ACT_GELU, VEC><<<nb, 256, 0, c->stream>>>(dx, dy, x, n);
        break;
    case CUDA_ACT_QUICK_GELU:
        actb_kernel<T, CUDA_ACT_QUICK_GELU, VEC><<<nb, 256, 0, c->stream>>>(dx, dy, x, n);
        break;
    default: CUDA_REQUIRE(!"unknown activation");
    }
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_activation_backward(CudaCtx *c, int dt, int act, void *dx, const void *dy,
                                         const void *x, int64_t n) {
    if (n <= 0) return;
    const bool vec_ok = bwd_aligned16(dx) && bwd_aligned16(dy) && bwd_aligned16(x);
    CUDA_DISPATCH(dt, {
        if (vec_ok)
            actb_launch<T, 16 / sizeof(T)>(c, act, (T *)dx, (const T *)dy, (const T *)x, n);
        else
            actb_launch<T, 1>(c, act, (T *)dx, (const T *)dy, (const T *)x, n);
    });
}

// ---- GEGLU --------------------------------------------------------------------------
// x (rows, 2F) = [a | g], dy (rows, F) -> dx (rows, 2F) = [dy gelu(g) | dy a gelu'(g)],
// gelu(g) = g Phi(g). One thread per VEC columns of a row (VEC > 1 when F
// divides by it and the pointers are 16-byte aligned).

template <typename T, int VEC>
static __global__ void gegb_kernel(T *dx, const T *dy, const T *x, int64_t rows, int64_t F) {
    const int64_t Fv = F / VEC, n = rows * Fv;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / Fv, f = (i - r * Fv) * VEC;
        const T *xa = x + r * 2 * F + f; // value half
        const T *xg = xa + F;            // gate half
        T *da = dx + r * 2 * F + f;
        T *dg = da + F;
        float av[VEC], gv[VEC], dv[VEC];
        ld_vec<T, VEC>(xa, av);
        ld_vec<T, VEC>(xg, gv);
        ld_vec<T, VEC>(dy + r * F + f, dv);
        float oa[VEC], og[VEC];
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            const float g = gv[e], cdf = normcdff(g);
            oa[e] = dv[e] * (g * cdf);
            og[e] = dv[e] * av[e] * (cdf + g * BWD_INV_SQRT_2PI * __expf(-0.5f * g * g));
        }
        st_vec<T, VEC>(da, oa);
        st_vec<T, VEC>(dg, og);
    }
}

extern "C" void cuda_geglu_backward(CudaCtx *c, int dt, void *dx, const void *dy, const void *x,
                                    int64_t rows, int64_t F) {
    if (rows <= 0 || F <= 0) return;
    const int64_t vec = dt == CDT_F32 ? 4 : 8;
    const bool vec_ok =
        F % vec == 0 && bwd_aligned16(dx) && bwd_aligned16(dy) && bwd_aligned16(x);
    CUDA_DISPATCH(dt, {
        if (vec_ok)
            gegb_kernel<T, 16 / sizeof(T)><<<cuda_blocks(rows * F / (16 / sizeof(T)), 256), 256, 0,
                                             c->stream>>>((T *)dx, (const T *)dy, (const T *)x,
                                                          rows, F);
        else
            gegb_kernel<T, 1><<<cuda_blocks(rows * F, 256), 256, 0, c->stream>>>(
                (T *)dx, (const T *)dy, (const T *)x, rows, F);
    });
    CUDA_CHECK_LAUNCH(c);
}
