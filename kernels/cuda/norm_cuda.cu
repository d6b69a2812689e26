// norm_cuda.cu: group norm (+ fused SiLU), layer norm and softmax on the GPU.
// fp32 statistics for every storage dtype; variance is the biased one
// (torch), computed two-pass per chunk and merged with Chan's formula, so it
// stays exact for large means (no E[x^2] - E[x]^2 cancellation).
//
// Group norm has two implementations: the chunked one (the default: stats
// kernel + normalise kernel, scalar loads, x read three times) and the fast
// one (SDC_CUDA_GN=fast, below it), which reads x once where the group fits
// in the registers of a thread-block cluster.
#include "cuda_common.cuh"

#include <cooperative_groups.h>

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

extern "C" void cuda_group_norm_chunked(CudaCtx *c, int dt, void *out, const void *x, const void *gamma,
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
        CUDA_CHECK_LAUNCH(c);
        gn_apply_kernel<T><<<dim3((unsigned)(N * C), (unsigned)chunks_s), 256, 0, c->stream>>>(
            (T *)out, (const T *)x, c->scratch, (const T *)gamma, (const T *)beta, C, S, groups,
            (int)P, eps, silu);
        CUDA_CHECK_LAUNCH(c);
    });
}

// ---- group norm, fast ------------------------------------------------------------
// One group of (N, C, S) is L = Cg*S contiguous values. A cluster of P <= 8
// blocks (sm_90 thread-block clusters) owns one (sample, group); block r
// loads its slice [L*r/P, L*(r+1)/P) (in whole vectors) into registers, at
// most 64 values per thread, with 16-byte loads when S and the
// pointers allow (8 bf16/f16 or 4 f32 per load). Then, with the values held:
//   sum over the slice -> block sum -> cluster sum (read from each block's
//   shared memory) -> mean; sum of (x - mean)^2 the same way -> M2;
// so the statistics are the exact two-pass ones in fp32 (as the chunked
// kernel and the CPU reference compute them) and x is read from memory once:
// one read and one write per element, like a copy.
// Groups too large for 8 blocks (VAE at 256 and 512 px: up to 2M values)
// run as P independent blocks that write (mean, M2) per slice to the scratch,
// then a vectorised normalise pass that merges them exactly:
//   mean = sum_p n_p m_p / L,  M2 = sum_p (M2_p + n_p (m_p - mean)^2).

#define GN_THREADS 512
#define GN_MAX_CLUSTER 8
// Vectors per thread held in registers: 64 values with 16-byte vectors, 32
// scalar values (the scalar path's index arithmetic needs the registers).
template <int VEC> __host__ __device__ constexpr int gn_vectors_per_thread() { return VEC == 1 ? 32 : 64 / VEC; }

namespace cg = cooperative_groups;

// Sum of one float per block over the cluster, the same in every block (each
// reads all P blocks' slot in rank order). slot: this block's shared float.
__device__ __forceinline__ float gn_cluster_sum(float block_total, float *slot, int P) {
    cg::cluster_group cl = cg::this_cluster();
    if (threadIdx.x == 0) *slot = block_total;
    cl.sync();
    float s = 0.f;
    for (int r = 0; r < P; r++) s += *cl.map_shared_rank(slot, r);
    return s;
}

// x, out (N*G, L); gamma, beta (C); part (N*G, P, 2) when !FUSED.
// grid.x = N*G*P; FUSED: launched with clusters of P blocks.
template <typename T, int VEC, bool FUSED>
__global__ void __launch_bounds__(GN_THREADS, 1)
gn_fast_kernel(T *out, float *part, const T *x, const T *gamma, const T *beta, int64_t L,
               int64_t S, int64_t Cg, int G, int P, float eps, int silu) {
    constexpr int U = gn_vectors_per_thread<VEC>();
    __shared__ float sm[32];
    __shared__ float xch[2]; // this block's (sum, M2), read by the cluster
    const int64_t ng = blockIdx.x / P;
    const int r = (int)(blockIdx.x % P);
    const int64_t nv = L / VEC;
    const int64_t v0 = nv * r / P, v1 = nv * (r + 1) / P; // this block's vectors
    const T *xg = x + ng * L;
    float v[U][VEC];
    float s = 0.f;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int64_t j = v0 + (int64_t)u * GN_THREADS + threadIdx.x;
        if (j < v1) {
            ld_vec<T, VEC>(xg + j * VEC, v[u]);
#pragma unroll
            for (int e = 0; e < VEC; e++) s += v[u][e];
        }
    }
    float tot = block_sum(s, sm);
    float cnt = FUSED ? (float)L : (float)((v1 - v0) * VEC);
    if (FUSED) tot = gn_cluster_sum(tot, &xch[0], P);
    const float mean = tot / cnt;
    float q = 0.f;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int64_t j = v0 + (int64_t)u * GN_THREADS + threadIdx.x;
        if (j < v1) {
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                float d = v[u][e] - mean;
                q += d * d;
            }
        }
    }
    float m2 = block_sum(q, sm);
    if (!FUSED) {
        if (threadIdx.x == 0) {
            part[(ng * P + r) * 2 + 0] = mean;
            part[(ng * P + r) * 2 + 1] = m2;
        }
        return;
    }
    m2 = gn_cluster_sum(m2, &xch[1], P);
    cg::this_cluster().sync(); // no block leaves while another still reads its xch
    const float rstd = rsqrtf(m2 / (float)L + eps);
    const int64_t c0 = (ng % G) * Cg; // first channel of the group
    T *og = out + ng * L;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int64_t j = v0 + (int64_t)u * GN_THREADS + threadIdx.x;
        if (j < v1) {
            int64_t c = c0 + j * VEC / S; // S % VEC == 0: one channel per vector
            float g = ld(gamma + c) * rstd;
            float bb = ld(beta + c) - mean * g;
            float y[VEC];
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                y[e] = v[u][e] * g + bb;
                if (silu) y[e] = y[e] / (1.f + __expf(-y[e]));
            }
            st_vec<T, VEC>(og + j * VEC, y);
        }
    }
}

// After gn_fast_kernel<!FUSED>: x, out (N, C, S); part (N*G, P, 2) per slice
// of gn_fast_kernel's split (in vectors). grid (N*C, chunks of S)
template <typename T, int VEC>
__global__ void gn_fast_apply_kernel(T *out, const T *x, const float *part, const T *gamma,
                                     const T *beta, int64_t C, int64_t S, int G, int P, float eps,
                                     int silu) {
    const int64_t nc = blockIdx.x;
    const int64_t c = nc % C, n = nc / C;
    const int64_t Cg = C / G, ng = n * G + c / Cg;
    const int64_t L = Cg * S, nv = L / VEC;
    const float *pp = part + ng * P * 2;
    float sum = 0.f; // exact merge of the P slices (P <= CUDA_SCRATCH_BYTES / 8 / N*G; reads are broadcasts)
    for (int p = 0; p < P; p++) sum += (float)((nv * (p + 1) / P - nv * p / P) * VEC) * pp[2 * p];
    const float mean = sum / (float)L;
    float m2 = 0.f;
    for (int p = 0; p < P; p++) {
        float d = pp[2 * p] - mean;
        m2 += pp[2 * p + 1] + (float)((nv * (p + 1) / P - nv * p / P) * VEC) * d * d;
    }
    const float rstd = rsqrtf(m2 / (float)L + eps);
    const float g = ld(gamma + c) * rstd;
    const float bb = ld(beta + c) - mean * g;
    const T *xr = x + nc * S;
    T *orow = out + nc * S;
    const int64_t svec = S / VEC, step = (int64_t)gridDim.y * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < svec; i += step) {
        float v[VEC];
        ld_vec<T, VEC>(xr + i * VEC, v);
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            v[e] = v[e] * g + bb;
            if (silu) v[e] = v[e] / (1.f + __expf(-v[e]));
        }
        st_vec<T, VEC>(orow + i * VEC, v);
    }
}

// Whether clusters of P blocks of this kernel can be resident (cached per
// (dtype, vector, P) in the context).
template <typename T, int VEC>
static bool gn_cluster_fits(CudaCtx *c, int dt, int P) {
    int lp = P == 1 ? 0 : P == 2 ? 1 : P == 4 ? 2 : 3;
    signed char *ok = &c->gn_cluster_ok[dt][VEC > 1][lp];
    if (*ok == 0) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3((unsigned)P * 16);
        cfg.blockDim = dim3(GN_THREADS);
        cudaLaunchAttribute attr;
        attr.id = cudaLaunchAttributeClusterDimension;
        attr.val.clusterDim.x = (unsigned)P;
        attr.val.clusterDim.y = 1;
        attr.val.clusterDim.z = 1;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        int n = 0;
        cudaError_t e = cudaOccupancyMaxActiveClusters(&n, gn_fast_kernel<T, VEC, true>, &cfg);
        if (e != cudaSuccess) cudaGetLastError(); // "no" is an answer here, not an error
        *ok = e == cudaSuccess && n > 0 ? 1 : -1;
    }
    return *ok == 1;
}

template <typename T, int VEC>
static void gn_fast_launch(CudaCtx *c, int dt, T *out, const T *x, const T *gamma, const T *beta,
                           int64_t N, int64_t C, int64_t S, int G, float eps, int silu) {
    const int64_t NG = N * G, Cg = C / G, L = Cg * S, nv = L / VEC;
    const int64_t per_block = (int64_t)GN_THREADS * gn_vectors_per_thread<VEC>(); // vectors
    int64_t P = (nv + per_block - 1) / per_block; // blocks needed to hold a group
    if (P <= GN_MAX_CLUSTER) {
        int p2 = 1;
        while (p2 < P) p2 *= 2;
        // more blocks per group while the GPU is not full and each thread keeps >= 1 vector
        while (p2 < GN_MAX_CLUSTER && NG * p2 < c->sm_count && nv / (p2 * 2) >= GN_THREADS) p2 *= 2;
        if (gn_cluster_fits<T, VEC>(c, dt, p2)) {
            cudaLaunchConfig_t cfg = {};
            cfg.gridDim = dim3((unsigned)(NG * p2));
            cfg.blockDim = dim3(GN_THREADS);
            cfg.stream = c->stream;
            cudaLaunchAttribute attr;
            attr.id = cudaLaunchAttributeClusterDimension;
            attr.val.clusterDim.x = (unsigned)p2;
            attr.val.clusterDim.y = 1;
            attr.val.clusterDim.z = 1;
            cfg.attrs = &attr;
            cfg.numAttrs = 1;
            CUDA_CHECK(c, cudaLaunchKernelEx(&cfg, gn_fast_kernel<T, VEC, true>, out, (float *)NULL, x,
                                          gamma, beta, L, S, Cg, G, p2, eps, silu));
            return;
        }
    }
    // slices of at most per_block vectors: statistics per slice, then normalise
    CUDA_REQUIRE(NG * P * 2 * sizeof(float) <= CUDA_SCRATCH_BYTES); // the caller made sure
    gn_fast_kernel<T, VEC, false><<<(unsigned)(NG * P), GN_THREADS, 0, c->stream>>>(
        (T *)NULL, c->scratch, x, gamma, beta, L, S, Cg, G, (int)P, eps, silu);
    CUDA_CHECK_LAUNCH(c);
    int64_t chunks_s = (S / VEC + 4 * 256 - 1) / (4 * 256); // ~4 vectors per thread
    if (chunks_s > 65535) chunks_s = 65535;
    gn_fast_apply_kernel<T, VEC><<<dim3((unsigned)(N * C), (unsigned)chunks_s), 256, 0, c->stream>>>(
        out, x, c->scratch, gamma, beta, C, S, G, (int)P, eps, silu);
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_group_norm_fast(CudaCtx *c, int dt, void *out, const void *x,
                                     const void *gamma, const void *beta, int64_t N, int64_t C,
                                     int64_t S, int groups, float eps, int silu) {
    CUDA_REQUIRE(N > 0 && C > 0 && S > 0 && groups > 0 && C % groups == 0);
    const int64_t NG = N * groups, L = (C / groups) * S;
    const int64_t vec = dt == CDT_F32 ? 4 : 8;
    const bool vec_ok = S % vec == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)out % 16 == 0;
    // the split-statistics path needs NG * slices (mean, M2) pairs of scratch
    const int64_t per_block = vec_ok ? (int64_t)GN_THREADS * 64 : (int64_t)GN_THREADS * 32; // values
    const int64_t slices = (L + per_block - 1) / per_block;
    if (NG * slices * 2 * sizeof(float) > CUDA_SCRATCH_BYTES) { // batches of > 1000s of groups
        cuda_group_norm_chunked(c, dt, out, x, gamma, beta, N, C, S, groups, eps, silu);
        return;
    }
    CUDA_REQUIRE(NG * GN_MAX_CLUSTER <= INT32_MAX);
    CUDA_DISPATCH(dt, {
        if (vec_ok)
            gn_fast_launch<T, 16 / sizeof(T)>(c, dt, (T *)out, (const T *)x, (const T *)gamma,
                                              (const T *)beta, N, C, S, groups, eps, silu);
        else
            gn_fast_launch<T, 1>(c, dt, (T *)out, (const T *)x, (const T *)gamma, (const T *)beta,
                                 N, C, S, groups, eps, silu);
    });
}

extern "C" void cuda_group_norm(CudaCtx *c, int dt, void *out, const void *x, const void *gamma,
                                const void *beta, int64_t N, int64_t C, int64_t S, int groups,
                                float eps, int silu) {
    // the chunked kernel stays the default until the fast one has passed tests/test_conv_cuda
    // on a GPU
    if (c->gn_fast)
        cuda_group_norm_fast(c, dt, out, x, gamma, beta, N, C, S, groups, eps, silu);
    else
        cuda_group_norm_chunked(c, dt, out, x, gamma, beta, N, C, S, groups, eps, silu);
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
    CUDA_CHECK_LAUNCH(c);
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
    CUDA_CHECK_LAUNCH(c);
}
