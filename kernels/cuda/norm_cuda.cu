// norm_cuda.cu: group norm (+ fused SiLU), layer norm and softmax on the GPU.
// fp32 statistics for every storage dtype; variance is the biased one
// (torch), computed two-pass per chunk and merged with Chan's formula, so it
// stays exact for large means (no E[x^2] - E[x]^2 cancellation).
#include "cuda_common.cuh"

// ---- group norm -----------------------------------------------------------------
// A group of (N, C, S) is Cg*S contiguous values; SD's (2, 320, 64, 64) with
// 32 groups is only 64 groups of 40960, too few blocks for an H100, so each
// group is cut into P chunks: gn_stats writes (mean, M2) per chunk, gn_apply
// merges the P chunks of its group and normalises.

// chunk p of P over L values: [lo, hi)
__device__ __forceinline__ void chunk_range(int64_t L, int p, int P, int64_t *lo, int64_t *hi) {
    *lo = L * p / P;
    *hi = L * (p + 1) / P;
}

// x (N*G, L) -> part (N*G, P, 2) = (mean, M2) of each chunk.  grid (P, N*G)
template <typename T>
__global__ void gn_stats_kernel(float *part, const T *x, int64_t L, int P) {
    __shared__ float sm[32];
    int p = blockIdx.x;
    int64_t ng = blockIdx.y;
    int64_t lo, hi;
    chunk_range(L, p, P, &lo, &hi);
    const T *xg = x + ng * L;
    float s = 0.f;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) s += ld(xg + i);
    float mean = block_sum(s, sm) / (float)(hi - lo);
    float q = 0.f;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float d = ld(xg + i) - mean;
        q += d * d;
    }
    float m2 = block_sum(q, sm);
    if (threadIdx.x == 0) {
        part[(ng * P + p) * 2 + 0] = mean;
        part[(ng * P + p) * 2 + 1] = m2;
    }
}

// x, out (N, C, S); part (N*G, P, 2); gamma, beta (C).  grid (N*C, chunks of S)
template <typename T>
__global__ void gn_apply_kernel(T *out, const T *x, const float *part, const T *gamma,
                                const T *beta, int64_t C, int64_t S, int G, int P, float eps,
                                int silu) {
    int64_t nc = blockIdx.x;
    int64_t c = nc % C, n = nc / C;
    int64_t Cg = C / G;
    int64_t ng = n * G + c / Cg;
    int64_t L = Cg * S;
    // Chan's merge of the P chunks (every thread does it: P <= 64, reads are broadcasts)
    const float *pp = part + ng * P * 2;
    float cnt = 0.f, mean = 0.f, m2 = 0.f;
    for (int p = 0; p < P; p++) {
        float nb = (float)(L * (p + 1) / P - L * p / P);
        float mb = pp[2 * p], m2b = pp[2 * p + 1];
        float tot = cnt + nb;
        float d = mb - mean;
        mean += d * (nb / tot);
        m2 += m2b + d * d * (cnt * nb / tot);
        cnt = tot;
    }
    float rstd = rsqrtf(m2 / (float)L + eps);
    float g = ld(gamma + c) * rstd;
    float bb = ld(beta + c) - mean * g;
    const T *xr = x + nc * S;
    T *orow = out + nc * S;
    int64_t step = (int64_t)gridDim.y * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < S; i += step) {
        float v = ld(xr + i) * g + bb;
        if (silu) v = v / (1.f + __expf(-v));
        st(orow + i, v);
    }
}

extern "C" void cuda_group_norm(CudaCtx *c, int dt, void *out, const void *x, const void *gamma,
                                const void *beta, int64_t N, int64_t C, int64_t S, int groups,
                                float eps, int silu) {
    CUDA_REQUIRE(N > 0 && C > 0 && S > 0 && groups > 0 && C % groups == 0);
    int64_t NG = N * groups, L = (C / groups) * S;
    CUDA_REQUIRE(NG <= 65535); // grid.y of the stats kernel
    // enough blocks to fill the GPU 4x over, chunks of at least 2048 values
    int64_t P = (4LL * c->sm_count + NG - 1) / NG;
    if (P > 64) P = 64;
    if (P > (L + 2047) / 2048) P = (L + 2047) / 2048;
    int64_t cap = CUDA_SCRATCH_BYTES / (2 * sizeof(float)) / NG;
    if (P > cap) P = cap;
    if (P < 1) P = 1;
    CUDA_REQUIRE(NG * P * 2 * sizeof(float) <= CUDA_SCRATCH_BYTES);
    int64_t chunks_s = (S + 1023) / 1024; // apply: each block covers ~1024 values of a channel row
    if (chunks_s > 65535) chunks_s = 65535;
    CUDA_DISPATCH(dt, {
        gn_stats_kernel<T><<<dim3((unsigned)P, (unsigned)NG), 256, 0, c->stream>>>(
            c->scratch, (const T *)x, L, (int)P);
        CUDA_CHECK_LAUNCH();
        gn_apply_kernel<T><<<dim3((unsigned)(N * C), (unsigned)chunks_s), 256, 0, c->stream>>>(
            (T *)out, (const T *)x, c->scratch, (const T *)gamma, (const T *)beta, C, S, groups,
            (int)P, eps, silu);
        CUDA_CHECK_LAUNCH();
    });
}

// ---- layer norm -----------------------------------------------------------------
// One warp per row of D (320..1280 in SD); two passes over the row for an
// exact variance, a third to write.  x, out (rows, D); gamma, beta (D)
template <typename T>
__global__ void layer_norm_kernel(T *out, const T *x, const T *gamma, const T *beta,
                                  int64_t rows, int64_t D, float eps) {
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T *xr = x + row * D;
    T *orow = out + row * D;
    float s = 0.f;
    for (int64_t i = lane; i < D; i += 32) s += ld(xr + i);
    float mean = warp_sum(s) / (float)D;
    float q = 0.f;
    for (int64_t i = lane; i < D; i += 32) {
        float d = ld(xr + i) - mean;
        q += d * d;
    }
    float rstd = rsqrtf(warp_sum(q) / (float)D + eps);
    for (int64_t i = lane; i < D; i += 32)
        st(orow + i, (ld(xr + i) - mean) * rstd * ld(gamma + i) + ld(beta + i));
}

extern "C" void cuda_layer_norm(CudaCtx *c, int dt, void *out, const void *x, const void *gamma,
                                const void *beta, int64_t rows, int64_t D, float eps) {
    CUDA_REQUIRE(rows > 0 && D > 0);
    unsigned blocks = (unsigned)((rows + 7) / 8);
    CUDA_DISPATCH(dt, {
        layer_norm_kernel<T><<<blocks, 256, 0, c->stream>>>((T *)out, (const T *)x,
                                                            (const T *)gamma, (const T *)beta,
                                                            rows, D, eps);
    });
    CUDA_CHECK_LAUNCH();
}

// ---- softmax ----------------------------------------------------------------------
// One warp per row: max, sum of exp(x - max), write.  x, out (rows, D)
template <typename T>
__global__ void softmax_kernel(T *out, const T *x, int64_t rows, int64_t D) {
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T *xr = x + row * D;
    T *orow = out + row * D;
    float m = -INFINITY;
    for (int64_t i = lane; i < D; i += 32) m = fmaxf(m, ld(xr + i));
    m = warp_max(m);
    float s = 0.f;
    for (int64_t i = lane; i < D; i += 32) s += __expf(ld(xr + i) - m);
    float inv = 1.f / warp_sum(s);
    for (int64_t i = lane; i < D; i += 32) st(orow + i, __expf(ld(xr + i) - m) * inv);
}

extern "C" void cuda_softmax(CudaCtx *c, int dt, void *out, const void *x, int64_t rows, int64_t D) {
    CUDA_REQUIRE(rows > 0 && D > 0);
    unsigned blocks = (unsigned)((rows + 7) / 8);
    CUDA_DISPATCH(dt, {
        softmax_kernel<T><<<blocks, 256, 0, c->stream>>>((T *)out, (const T *)x, rows, D);
    });
    CUDA_CHECK_LAUNCH();
}
