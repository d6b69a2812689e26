// train_cuda.cu: the layout backwards (nearest 2x upsample, channel concat,
// embedding), per-channel sums (conv and channel-bias gradients), and the
// kernels of a training step outside the model: the diffusion loss's
// backward, sums of squares for gradient clipping, AdamW and EMA.
//
// Reductions are deterministic (no atomics): each block sums a fixed slice in
// double and a second pass adds the block partials in a fixed order, with
// block counts that depend only on the shape. fp32 element math that must
// match the CPU reference bit for bit (AdamW, EMA, the loss gradient, the
// embedding and upsample sums) uses the IEEE helpers below: --use_fast_math
// turns even __fadd_rn into a denormal-flushing add, and sqrt and division
// into approximations.
#include "cuda_common.cuh"

#define TR_THREADS 256

#define TR_GRID_STRIDE(i, n)                                                        \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);      \
         i += (int64_t)gridDim.x * blockDim.x)

namespace {

// ---- IEEE fp32 (round to nearest, denormals kept, never contracted) ----------------
__device__ __forceinline__ float f_add(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f_sub(float a, float b) {
    float r;
    asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f_mul(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f_div(float a, float b) {
    float r;
    asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f_sqrt(float a) {
    float r;
    asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}
__device__ __forceinline__ float f_fma(float a, float b, float c) {
    float r;
    asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
    return r;
}
// fp32 <-> double; the plain casts would flush fp32 denormals here too
__device__ __forceinline__ double f_to_d(float a) {
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(a));
    return r;
}
__device__ __forceinline__ float d_to_f(double a) {
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(a));
    return r;
}

// ---- nearest 2x upsample backward ----------------------------------------------------
// dy (NC, OH, OW) -> dx (NC, H, W), OH 2H or 2H - 1 (OW likewise): one thread
// per dx element adds its 2x2 block, cut at an odd edge, in the CPU's order.
template <typename T>
__global__ void tr_up2x_bwd_kernel(T *dx, const T *dy, int64_t NC, int64_t H, int64_t W,
                                   int64_t OH, int64_t OW) {
    TR_GRID_STRIDE(i, NC * H * W) {
        int64_t xx = i % W, t = i / W;
        int64_t y = t % H, nc = t / H;
        const T *r0 = dy + (nc * OH + 2 * y) * OW;
        int64_t c0 = 2 * xx;
        bool has_c1 = c0 + 1 < OW, has_r1 = 2 * y + 1 < OH;
        float s = ld(r0 + c0);
        if (has_c1) s = f_add(s, ld(r0 + c0 + 1));
        if (has_r1) {
            const T *r1 = r0 + OW;
            s = f_add(s, ld(r1 + c0));
            if (has_c1) s = f_add(s, ld(r1 + c0 + 1));
        }
        st(dx + i, s);
    }
}

// ---- channel sums --------------------------------------------------------------------
// out[ch] = (float)s, or out[ch] + (float)s when accumulating (the CPU's
// `db[oc] += (float)s`).
template <typename T>
__device__ __forceinline__ void tr_store_sum(T *out, int64_t ch, double s, int accumulate) {
    float v = d_to_f(s);
    if (accumulate) v = f_add(ld(out + ch), v);
    st(out + ch, v);
}

// x (N, C, S). grid (C, P): block (ch, p) sums channel ch over every n and the
// slice [S p / P, S (p+1) / P) of S, walking the N * len values of its slice
// flattened (n major), so small S still keeps the threads busy. P == 1: the
// block writes out[ch]; else its double partial part[ch * P + p].
template <typename T>
__global__ void tr_chsum_kernel(T *out, double *part, const T *x, int64_t N, int64_t C, int64_t S,
                                int P, int accumulate) {
    __shared__ double sm[32];
    const int64_t ch = blockIdx.x;
    const int p = blockIdx.y;
    const int64_t lo = S * p / P, hi = S * (p + 1) / P, len = hi - lo; // len >= 1
    const int64_t total = N * len;
    const T *xc = x + ch * S + lo; // sample n's slice: xc + n * C * S
    double s = 0.0;
    int64_t n = threadIdx.x / len, i = threadIdx.x % len;
    for (int64_t j = threadIdx.x; j < total; j += blockDim.x) {
        s += f_to_d(ld(xc + n * C * S + i));
        i += blockDim.x;
        if (i >= len) {
            n += i / len;
            i %= len;
        }
    }
    s = block_sum(s, sm);
    if (threadIdx.x == 0) {
        if (P == 1)
            tr_store_sum(out, ch, s, accumulate);
        else
            part[ch * P + p] = s;
    }
}

// part (C, P) -> out (C), the P partials of a channel added in order
template <typename T>
__global__ void tr_chsum_final_kernel(T *out, const double *part, int64_t C, int P, int accumulate) {
    TR_GRID_STRIDE(ch, C) {
        double s = 0.0;
        for (int p = 0; p < P; p++) s += part[ch * P + p];
        tr_store_sum(out, ch, s, accumulate);
    }
}

// ---- embedding backward ------------------------------------------------------------------
// For each position i: first[i] = 1 when no earlier position has its id,
// next[i] = the next position with the same id (-1: none). n is small.
__global__ void tr_emb_links_kernel(int32_t *next, int32_t *first, const int32_t *ids, int64_t n) {
    TR_GRID_STRIDE(i, n) {
        const int32_t id = ids[i];
        int32_t f = 1, nx = -1;
        for (int64_t j = 0; j < i; j++)
            if (ids[j] == id) {
                f = 0;
                break;
            }
        for (int64_t j = i + 1; j < n; j++)
            if (ids[j] == id) {
                nx = (int32_t)j;
                break;
            }
        first[i] = f;
        next[i] = nx;
    }
}

// One thread per (first occurrence of an id, column d): adds the dy rows of
// every position with that id in index order to the fp32 value of the table
// entry, then stores it once (for F32 the CPU's sequence of adds exactly).
template <typename T>
__global__ void tr_emb_bwd_kernel(T *dtable, const int32_t *ids, const T *dy, const int32_t *next,
                                  const int32_t *first, int64_t n, int64_t V, int64_t D) {
    TR_GRID_STRIDE(k, n * D) {
        const int64_t i = k / D, d = k - i * D;
        if (!first[i]) continue;
        const int64_t id = ids[i];
        if (id < 0 || id >= V) continue; // the caller validates; never write outside the table
        T *t = dtable + id * D + d;
        float acc = ld(t);
        for (int64_t j = i; j >= 0; j = next[j]) acc = f_add(acc, ld(dy + j * D + d));
        st(t, acc);
    }
}

// Many positions (not SD's at most 16 * 77): one thread per column walks the
// positions in order, read-modify-write in the table.
template <typename T>
__global__ void tr_emb_bwd_serial_kernel(T *dtable, const int32_t *ids, const T *dy, int64_t n,
                                         int64_t V, int64_t D) {
    TR_GRID_STRIDE(d, D) {
        for (int64_t i = 0; i < n; i++) {
            const int64_t id = ids[i];
            if (id < 0 || id >= V) continue;
            T *t = dtable + id * D + d;
            st(t, f_add(ld(t), ld(dy + i * D + d)));
        }
    }
}

// ---- mse backward ----------------------------------------------------------------------
#define TR_MSE_BATCH 256 // samples per launch (their k travel as a kernel parameter)

struct TrMseK {
    float k[TR_MSE_BATCH];
};

// pred, target, dpred: the batch's (nb, per) from its first sample. grid (P, nb):
// block (p, n) handles the slice [per p / P, per (p+1) / P) of sample n:
// dpred = k[n] * e, and its sum of e^2 into part[n * P + p].
template <typename T>
__global__ void tr_mse_bwd_kernel(T *dpred, double *part, const T *pred, const T *target, TrMseK k,
                                  int64_t per, int P) {
    __shared__ double sm[32];
    const int p = blockIdx.x;
    const int64_t n = blockIdx.y;
    const int64_t lo = per * p / P, hi = per * (p + 1) / P;
    const float kn = k.k[n];
    const T *pr = pred + n * per, *tg = target + n * per;
    T *dr = dpred + n * per; // may be pred: each element is read before it is written
    double s = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float e = f_sub(ld(pr + i), ld(tg + i));
        const double ed = f_to_d(e);
        s += ed * ed;
        st(dr + i, f_mul(kn, e));
    }
    s = block_sum(s, sm);
    if (threadIdx.x == 0) part[n * P + p] = s;
}

// part (nb, P) -> sq (nb), in order
__global__ void tr_rows_sum_kernel(double *sq, const double *part, int64_t nb, int P) {
    TR_GRID_STRIDE(n, nb) {
        double s = 0.0;
        for (int p = 0; p < P; p++) s += part[n * P + p];
        sq[n] = s;
    }
}

// ---- sum of squares ----------------------------------------------------------------------
#define TR_SUMSQ_BLOCKS 1024

// Block b's threads take the grid-stride elements (four loads in flight per
// step, added in index order), double partial per block into part[b].
__global__ void tr_sumsq_kernel(double *part, const float *x, size_t n) {
    __shared__ double sm[32];
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    double s = 0.0;
    for (; i + 3 * stride < n; i += 4 * stride) {
        const double a = f_to_d(x[i]), b = f_to_d(x[i + stride]), c = f_to_d(x[i + 2 * stride]),
                     d = f_to_d(x[i + 3 * stride]);
        s += a * a;
        s += b * b;
        s += c * c;
        s += d * d;
    }
    for (; i < n; i += stride) {
        const double a = f_to_d(x[i]);
        s += a * a;
    }
    s = block_sum(s, sm);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// one block: part (nparts) -> *out
__global__ void tr_sum_parts_kernel(double *out, const double *part, int nparts) {
    __shared__ double sm[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += part[i];
    s = block_sum(s, sm);
    if (threadIdx.x == 0) *out = s;
}

// ---- optimizer -------------------------------------------------------------------------
// cpu_adamw's statements, operation by operation (C evaluates left to right:
// w2 * gi * gi is (w2 * gi) * gi, neg_step * mi / denom is (neg_step * mi) / denom).
__global__ void tr_adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float decay,
                                float w1, float b2, float w2, float bc2_sqrt, float eps,
                                float neg_step) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float pi = f_mul(p[i], decay);
        const float gi = g[i];
        const float m0 = m[i];
        const float mi = f_fma(w1, f_sub(gi, m0), m0);
        float vi = f_mul(v[i], b2);
        vi = f_add(vi, f_mul(f_mul(w2, gi), gi));
        const float denom = f_add(f_div(f_sqrt(vi), bc2_sqrt), eps);
        p[i] = f_add(pi, f_div(f_mul(neg_step, mi), denom));
        m[i] = mi;
        v[i] = vi;
    }
}

__global__ void tr_ema_kernel(float *shadow, const float *p, size_t n, float one_minus_decay) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float s = shadow[i];
        const float d = f_mul(one_minus_decay, f_sub(s, p[i]));
        shadow[i] = f_sub(s, d);
    }
}

} // namespace

static size_t tr_elem_size(int dt) {
    CUDA_REQUIRE(dt == CDT_F32 || dt == CDT_F16 || dt == CDT_BF16);
    return dt == CDT_F32 ? 4 : 2;
}

static int64_t tr_min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- layout backwards ----------------------------------------------------------------------

extern "C" void cuda_upsample_nearest2x_backward(CudaCtx *c, int dt, void *dx, const void *dy,
                                                 int64_t NC, int64_t H, int64_t W, int64_t OH,
                                                 int64_t OW) {
    const int64_t n = NC * H * W;
    if (NC <= 0 || H <= 0 || W <= 0) return;
    CUDA_REQUIRE((OH == 2 * H || OH == 2 * H - 1) && (OW == 2 * W || OW == 2 * W - 1));
    CUDA_DISPATCH(dt, {
        tr_up2x_bwd_kernel<T><<<cuda_blocks(n, TR_THREADS), TR_THREADS, 0, c->stream>>>(
            (T *)dx, (const T *)dy, NC, H, W, OH, OW);
    });
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_channel_sums(CudaCtx *c, int dt, void *out, const void *x, int64_t N, int64_t C,
                                  int64_t S, int accumulate) {
    if (C <= 0) return;
    CUDA_REQUIRE(N >= 0 && S >= 0 && C <= INT32_MAX);
    if (N == 0 || S == 0) { // empty sums: out = 0, or unchanged when accumulating
        if (!accumulate) CUDA_CHECK(c, cudaMemsetAsync(out, 0, (size_t)C * tr_elem_size(dt), c->stream));
        return;
    }
    // About 1024 blocks whatever the GPU (so the bits do not depend on it),
    // slices of at least 1024 values of S and 8192 values per block.
    int64_t P = (1024 + C - 1) / C;
    P = tr_min64(P, (S + 1023) / 1024);
    P = tr_min64(P, (N * S + 8191) / 8192);
    P = tr_min64(P, (int64_t)(CUDA_SCRATCH_BYTES / sizeof(double)) / C);
    if (P < 1) P = 1; // P <= S, so every slice holds at least one value
    double *part = (double *)c->scratch;
    CUDA_DISPATCH(dt, {
        tr_chsum_kernel<T><<<dim3((unsigned)C, (unsigned)P), TR_THREADS, 0, c->stream>>>(
            (T *)out, part, (const T *)x, N, C, S, (int)P, accumulate);
        CUDA_CHECK_LAUNCH(c);
        if (P > 1) {
            tr_chsum_final_kernel<T><<<cuda_blocks(C, TR_THREADS), TR_THREADS, 0, c->stream>>>(
                (T *)out, part, C, (int)P, accumulate);
            CUDA_CHECK_LAUNCH(c);
        }
    });
}

// Two strided 2D copies, as cuda_concat_channels the other way round.
extern "C" void cuda_concat_channels_backward(CudaCtx *c, int dt, void *da, void *db, const void *dy,
                                              int64_t N, int64_t a_per_n, int64_t b_per_n) {
    const size_t es = tr_elem_size(dt);
    if (N <= 0) return;
    CUDA_REQUIRE(a_per_n >= 0 && b_per_n >= 0);
    const size_t pitch = (size_t)(a_per_n + b_per_n) * es;
    if (da && a_per_n > 0)
        CUDA_CHECK(c, cudaMemcpy2DAsync(da, (size_t)a_per_n * es, dy, pitch, (size_t)a_per_n * es,
                                        (size_t)N, cudaMemcpyDeviceToDevice, c->stream));
    if (db && b_per_n > 0)
        CUDA_CHECK(c, cudaMemcpy2DAsync(db, (size_t)b_per_n * es, (const char *)dy + (size_t)a_per_n * es,
                                        pitch, (size_t)b_per_n * es, (size_t)N,
                                        cudaMemcpyDeviceToDevice, c->stream));
}

#define TR_EMB_LINKED_MAX 16384 // positions the O(n^2) link pass is cheap for

extern "C" void cuda_embedding_backward(CudaCtx *c, int dt, void *dtable, const int32_t *ids,
                                        const void *dy, int64_t n_ids, int64_t V, int64_t D) {
    if (n_ids <= 0 || D <= 0 || V <= 0) return;
    if (n_ids <= TR_EMB_LINKED_MAX) {
        static_assert(2 * TR_EMB_LINKED_MAX * sizeof(int32_t) <= CUDA_SCRATCH_BYTES, "scratch");
        int32_t *next = (int32_t *)c->scratch, *first = next + n_ids;
        tr_emb_links_kernel<<<cuda_blocks(n_ids, TR_THREADS), TR_THREADS, 0, c->stream>>>(next, first, ids,
                                                                                        n_ids);
        CUDA_CHECK_LAUNCH(c);
        CUDA_DISPATCH(dt, {
            tr_emb_bwd_kernel<T><<<cuda_blocks(n_ids * D, TR_THREADS), TR_THREADS, 0, c->stream>>>(
                (T *)dtable, ids, (const T *)dy, next, first, n_ids, V, D);
        });
        CUDA_CHECK_LAUNCH(c);
    } else {
        CUDA_DISPATCH(dt, {
            tr_emb_bwd_serial_kernel<T><<<cuda_blocks(D, 128), 128, 0, c->stream>>>(
                (T *)dtable, ids, (const T *)dy, n_ids, V, D);
        });
        CUDA_CHECK_LAUNCH(c);
    }
}

// ---- training step -------------------------------------------------------------------------

extern "C" void cuda_mse_backward(CudaCtx *c, int dt, void *dpred, double *sq_host, const void *pred,
                                  const void *target, const float *k_host, int64_t N, int64_t per) {
    const size_t es = tr_elem_size(dt);
    if (N <= 0) return;
    for (int64_t n = 0; n < N; n++) sq_host[n] = 0.0;
    if (per <= 0) return;
    // About 1024 blocks whatever the GPU, slices of at least 2048 values.
    const int64_t nb_max = tr_min64(N, TR_MSE_BATCH);
    int64_t P = (1024 + nb_max - 1) / nb_max;
    P = tr_min64(P, (per + 2047) / 2048);
    if (P < 1) P = 1;
    // P <= 1024: the partials and sums of a batch take 256 * 1025 doubles (2.1 MB)
    static_assert((size_t)TR_MSE_BATCH * 1025 * sizeof(double) <= CUDA_SCRATCH_BYTES, "scratch");
    double *part = (double *)c->scratch, *sums = part + TR_MSE_BATCH * P;
    for (int64_t n0 = 0; n0 < N; n0 += TR_MSE_BATCH) {
        const int64_t nb = tr_min64(TR_MSE_BATCH, N - n0);
        TrMseK k;
        for (int64_t j = 0; j < TR_MSE_BATCH; j++) k.k[j] = j < nb ? k_host[n0 + j] : 0.f;
        const size_t off = (size_t)n0 * (size_t)per * es;
        CUDA_DISPATCH(dt, {
            tr_mse_bwd_kernel<T><<<dim3((unsigned)P, (unsigned)nb), TR_THREADS, 0, c->stream>>>(
                (T *)((char *)dpred + off), part, (const T *)((const char *)pred + off),
                (const T *)((const char *)target + off), k, per, (int)P);
        });
        CUDA_CHECK_LAUNCH(c);
        tr_rows_sum_kernel<<<1, TR_THREADS, 0, c->stream>>>(sums, part, nb, (int)P);
        CUDA_CHECK_LAUNCH(c);
        // pageable destination: returns once the copy is done, so the next
        // batch may reuse the scratch (stream order guarantees it anyway)
        CUDA_CHECK(c, cudaMemcpyAsync(sq_host + n0, sums, (size_t)nb * sizeof(double),
                                      cudaMemcpyDeviceToHost, c->stream));
    }
    CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
    if (c->fault)
        for (int64_t n = 0; n < N; n++) sq_host[n] = 0.0;
}

extern "C" double cuda_sum_squares(CudaCtx *c, const float *x, size_t n) {
    if (n == 0) return 0.0;
    // a block count fixed by n alone (not the GPU): same bits on every card
    size_t nblk = (n + TR_THREADS - 1) / TR_THREADS;
    if (nblk > TR_SUMSQ_BLOCKS) nblk = TR_SUMSQ_BLOCKS;
    static_assert((TR_SUMSQ_BLOCKS + 1) * sizeof(double) <= CUDA_SCRATCH_BYTES, "scratch");
    double *part = (double *)c->scratch, *res = part + TR_SUMSQ_BLOCKS;
    tr_sumsq_kernel<<<(unsigned)nblk, TR_THREADS, 0, c->stream>>>(part, x, n);
    CUDA_CHECK_LAUNCH(c);
    tr_sum_parts_kernel<<<1, 1024, 0, c->stream>>>(res, part, (int)nblk);
    CUDA_CHECK_LAUNCH(c);
    double r = 0.0;
    CUDA_CHECK(c, cudaMemcpyAsync(&r, res, sizeof(double), cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
    return c->fault ? 0.0 : r;
}

extern "C" void cuda_adamw(CudaCtx *c, float *p, const float *g, float *m, float *v, size_t n,
                           float decay, float w1, float b2, float w2, float bc2_sqrt, float eps,
                           float neg_step) {
    if (n == 0) return;
    tr_adamw_kernel<<<cuda_blocks((int64_t)n, TR_THREADS), TR_THREADS, 0, c->stream>>>(
        p, g, m, v, n, decay, w1, b2, w2, bc2_sqrt, eps, neg_step);
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_ema(CudaCtx *c, float *shadow, const float *p, size_t n, float one_minus_decay) {
    if (n == 0) return;
    tr_ema_kernel<<<cuda_blocks((int64_t)n, TR_THREADS), TR_THREADS, 0, c->stream>>>(shadow, p, n,
                                                                                    one_minus_decay);
    CUDA_CHECK_LAUNCH(c);
}
