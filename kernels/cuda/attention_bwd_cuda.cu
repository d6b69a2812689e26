// attention_bwd_cuda.cu: backward of multi-head scaled dot-product attention
// on the GPU (the forward is attention_cuda.cu; the CPU reference, which
// this follows step for step, is kernels/cpu/attention_bwd_cpu.c).
//
// Layout: q, dout (B, Lq, H*D), k, v (B, Lk, H*D) -> dq (B, Lq, H*D),
// dk, dv (B, Lk, H*D), all overwritten; head h is columns [h*D, (h+1)*D) of
// each row (row stride HD = H*D). scale = 1/sqrt(D); causal masks key
// j > query i.
//
// Flash-attention-2 style without a saved logsumexp: per batch b (a host
// loop) and block of nb <= bq queries starting at i0, for all H heads at
// once (cuBLAS strided-batched GEMMs over the heads: head stride D, leading
// dimension HD; fp32 in and out, CUBLAS_COMPUTE_32F, TF32 only with
// ctx->allow_tf32):
//   S  (nb, Lk) = scale log2(e) Q_blk . K^T         GEMM 1 (into P)
//   dP (nb, Lk) = dO_blk . V^T                      GEMM 2
//   per row (one thread block each, attn_bwd_softmax_ds_kernel):
//     P = exp2(S - max S) / sum (= softmax(scale Q K^T), exact over the
//     whole key row; masked keys P = 0), Di = sum_j P_ij dP_ij,
//     dS = P (dP - Di)                               (in place of dP)
//   dV (Lk, D) (+)= P^T . dO_blk                     GEMM 3
//   dQ_blk (nb, D) = scale dS . K                    GEMM 4
//   dK (Lk, D) (+)= scale dS^T . Q_blk               GEMM 5
// dK and dV: the first query block of a batch writes (beta 0), the others
// add (beta 1). No head's full (Lq, Lk) score matrix is needed: bq is the
// most queries whose P and dP blocks for all heads fit the workspace.
// Scores are scaled by log2(e) inside GEMM 1 so the softmax runs on exp2
// (ex2.approx: 2 ulp whatever the argument), as the forward does.
//
// cuBLAS is column-major: a row-major (R, C) buffer with row stride ld is
// the column-major (C, R) matrix with leading dimension ld, so each
// row-major product X = A . B is issued as X^T = B^T . A^T (the GEMM shapes
// are written out at each call below).
//
// F16/BF16: cuBLAS wants one type for all operands, and P, dS must stay
// fp32, so per batch q, dout, k, v are converted to fp32 copies in the
// workspace, dq, dk, dv accumulate there in fp32 and are converted back to
// the storage dtype at the end of the batch (one rounding, as the CPU
// rounds its fp32 result). F32 runs the GEMMs straight on the caller's
// buffers.
//
// Workspace, in floats, each region rounded up to a multiple of 64 floats
// (256 bytes, for cuBLAS's aligned kernels), R(x) = that rounding:
//   F16/BF16 copies: 3 R(Lq*HD) (q, dout, dq) + 4 R(Lk*HD) (k, v, dk, dv)
//   (F32: none), then P and dP: 2 R(H*bq*Lk).
// cuda_attention_backward_ws_bytes: bq = all of Lq, but P and dP together
// capped at ATTN_BWD_BLOCK_BYTES (256 MiB: SD's 64x64 self-attention,
// 4096 tokens x 8 heads, runs in 4 blocks of 1024 queries, GEMMs of 8 x
// 4096 x 1024, large enough to fill an H100); _min_bytes: bq = 1. Any size
// in between works (bq = what fits); more than _ws_bytes is used for larger
// blocks. The batch count B does not enter (batches reuse the workspace).
// F16/BF16 need the copies of one batch even at the minimum (4096 tokens x
// 320 channels: 35 MiB; with P and dP at full speed 291 MiB, F32 256 MiB).
#include "cuda_common.cuh"

#define ATTN_BWD_LOG2E 1.4426950408889634f
#define ATTN_BWD_BLOCK_BYTES ((int64_t)256 << 20) // P + dP for all heads, at most
#define ATTN_BWD_ALIGN 64                         // floats (256 bytes)

static int64_t attn_bwd_round(int64_t floats) {
    return (floats + ATTN_BWD_ALIGN - 1) / ATTN_BWD_ALIGN * ATTN_BWD_ALIGN;
}

// Floats of the fp32 copies (F16/BF16 only) ahead of P and dP.
static int64_t attn_bwd_copy_floats(int dt, int64_t Lq, int64_t Lk, int64_t HD) {
    if (dt == CDT_F32) return 0;
    return 3 * attn_bwd_round(Lq * HD) + 4 * attn_bwd_round(Lk * HD);
}

// ---- kernels --------------------------------------------------------------------

// n elements of x -> fp32 / fp32 -> storage dtype. grid-stride
template <typename T>
static __global__ void attn_bwd_to_f32_kernel(float *out, const T *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = ld(x + i);
}

template <typename T>
static __global__ void attn_bwd_from_f32_kernel(T *out, const float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        st(out + i, x[i]);
}

// Block-wide max of one float per thread (blockDim.x a multiple of 32).
static __device__ __forceinline__ float attn_bwd_block_max(float v, float *smem32) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads(); // smem32 may still be read by a previous call
    if (lane == 0) smem32[wid] = v;
    __syncthreads();
    v = threadIdx.x < nw ? smem32[threadIdx.x] : -INFINITY;
    if (wid == 0) v = warp_max(v);
    if (threadIdx.x == 0) smem32[0] = v;
    __syncthreads();
    return smem32[0];
}

// grid (H*nb), one block per row r of the (H, nb, Lk) blocks P and dP (row
// r is head r / nb, query i0 + r % nb). In: P = log2(e) scale Q K^T,
// dP = dO V^T. Out: P = softmax row (masked keys 0), dP = dS = P (dP - Di).
// Each thread reads back only the entries it wrote itself.
static __global__ void attn_bwd_softmax_ds_kernel(float *P, float *dP, int nb, int Lk, int i0,
                                                  int causal) {
    __shared__ float red[32];
    const int64_t r = blockIdx.x;
    float *p = P + r * Lk, *dp = dP + r * Lk;
    const int i = i0 + (int)(r % nb); // the query's index in the sequence
    const int nk = causal ? (i + 1 < Lk ? i + 1 : Lk) : Lk; // keys seen: j <= i
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) mx = fmaxf(mx, p[j]);
    mx = attn_bwd_block_max(mx, red);
    float s = 0.f;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) s += exp2f(p[j] - mx);
    s = block_sum(s, red);
    const float inv = 1.f / s;
    float di = 0.f;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) {
        float pj = exp2f(p[j] - mx) * inv;
        p[j] = pj;
        di += pj * dp[j];
    }
    di = block_sum(di, red);
    for (int j = threadIdx.x; j < Lk; j += blockDim.x) {
        if (j < nk) {
            dp[j] = p[j] * (dp[j] - di);
        } else {
            p[j] = 0.f;
            dp[j] = 0.f;
        }
    }
}

// ---- API ------------------------------------------------------------------------

// Queries per block when all of Lq would run in one: Lq, or what fits
// ATTN_BWD_BLOCK_BYTES (at least 1).
static int64_t attn_bwd_full_bq(int64_t Lq, int64_t Lk, int64_t H) {
    int64_t bq = ATTN_BWD_BLOCK_BYTES / (2 * H * Lk * (int64_t)sizeof(float));
    if (bq < 1) bq = 1;
    if (bq > Lq) bq = Lq;
    return bq;
}

extern "C" size_t cuda_attention_backward_ws_bytes(int dt, int B, int Lq, int Lk, int H, int D) {
    (void)B;
    const int64_t HD = (int64_t)H * D, bq = attn_bwd_full_bq(Lq, Lk, H);
    int64_t floats = attn_bwd_copy_floats(dt, Lq, Lk, HD) + 2 * attn_bwd_round((int64_t)H * bq * Lk);
    return (size_t)floats * sizeof(float);
}

extern "C" size_t cuda_attention_backward_ws_min_bytes(int dt, int B, int Lq, int Lk, int H,
                                                       int D) {
    (void)B;
    const int64_t HD = (int64_t)H * D;
    int64_t floats = attn_bwd_copy_floats(dt, Lq, Lk, HD) + 2 * attn_bwd_round((int64_t)H * Lk);
    return (size_t)floats * sizeof(float);
}

// n elements of src (storage dtype dt) -> fp32 dst (to_f32), or fp32 src -> dt dst.
static void attn_bwd_convert(CudaCtx *c, int dt, void *dst, const void *src, int64_t n,
                             int to_f32) {
    CUDA_DISPATCH(dt, {
        if (to_f32)
            attn_bwd_to_f32_kernel<T><<<cuda_blocks(n, 256), 256, 0, c->stream>>>(
                (float *)dst, (const T *)src, n);
        else
            attn_bwd_from_f32_kernel<T><<<cuda_blocks(n, 256), 256, 0, c->stream>>>(
                (T *)dst, (const float *)src, n);
    });
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_attention_backward(CudaCtx *c, int dt, void *dq, void *dk, void *dv,
                                        const void *dout, const void *q, const void *k,
                                        const void *v, int B, int Lq, int Lk, int H, int D,
                                        int causal, void *ws, size_t ws_bytes) {
    CUDA_REQUIRE(B > 0 && Lq > 0 && Lk > 0 && H > 0 && D > 0);
    CUDA_REQUIRE((int64_t)H * D <= INT32_MAX);
    CUDA_REQUIRE(dt == CDT_F32 || dt == CDT_F16 || dt == CDT_BF16);
    CUDA_REQUIRE(dq && dk && dv && dout && q && k && v);
    const int HD = H * D;
    const size_t need = cuda_attention_backward_ws_min_bytes(dt, B, Lq, Lk, H, D);
    if (ws_bytes < need || !ws) {
        cuda_fault(c, CUDA_ERR_OOM,
                   "attention backward: workspace of %zu bytes at %p, needs at least %zu "
                   "(cuda_attention_backward_ws_min_bytes)",
                   ws_bytes, ws, need);
        return;
    }
    // Workspace: [fp32 copies (F16/BF16)] [P (H, nb, Lk)] [dP (H, nb, Lk)], each
    // P / dP region `region` floats, bq queries per block.
    const int64_t copy = attn_bwd_copy_floats(dt, Lq, Lk, HD);
    const int64_t region = ((int64_t)(ws_bytes / sizeof(float)) - copy) / 2 / ATTN_BWD_ALIGN *
                           ATTN_BWD_ALIGN;
    int64_t bq = region / ((int64_t)H * Lk); // >= 1: region >= R(H*Lk) by `need`
    if (bq > Lq) bq = Lq;
    float *wsf = (float *)ws;
    float *P = wsf + copy, *dP = P + region;

    const float scale = 1.f / sqrtf((float)D);
    const float alpha_s = scale * ATTN_BWD_LOG2E, one = 1.f, zero = 0.f;
    // TF32 only for F32 data, as gemm_cuda.cu (F16/BF16 inputs run here as fp32 copies)
    cublasComputeType_t ct = c->allow_tf32 && dt == CDT_F32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const cudaDataType_t f32 = CUDA_R_32F;
    const int threads = Lk > 1024 ? 256 : Lk > 256 ? 128 : 64;

    // fp32 buffers of the F16/BF16 path (one batch each)
    const int64_t nq = (int64_t)Lq * HD, nk = (int64_t)Lk * HD;
    float *q32 = wsf, *do32 = q32 + attn_bwd_round(nq), *dq32 = do32 + attn_bwd_round(nq);
    float *k32 = dq32 + attn_bwd_round(nq), *v32 = k32 + attn_bwd_round(nk);
    float *dk32 = v32 + attn_bwd_round(nk), *dv32 = dk32 + attn_bwd_round(nk);
    const size_t es = dt == CDT_F32 ? 4 : 2;

    for (int b = 0; b < B; b++) {
        const int64_t oq = (int64_t)b * nq, ok = (int64_t)b * nk; // elements
        // this batch's (L, HD) row-major fp32 matrices
        const float *Qf, *dOf, *Kf, *Vf;
        float *dQf, *dKf, *dVf;
        if (dt == CDT_F32) {
            Qf = (const float *)q + oq;
            dOf = (const float *)dout + oq;
            Kf = (const float *)k + ok;
            Vf = (const float *)v + ok;
            dQf = (float *)dq + oq;
            dKf = (float *)dk + ok;
            dVf = (float *)dv + ok;
        } else {
            attn_bwd_convert(c, dt, q32, (const char *)q + oq * es, nq, 1);
            attn_bwd_convert(c, dt, do32, (const char *)dout + oq * es, nq, 1);
            attn_bwd_convert(c, dt, k32, (const char *)k + ok * es, nk, 1);
            attn_bwd_convert(c, dt, v32, (const char *)v + ok * es, nk, 1);
            Qf = q32, dOf = do32, Kf = k32, Vf = v32;
            dQf = dq32, dKf = dk32, dVf = dv32;
        }
        for (int i0 = 0; i0 < Lq; i0 += (int)bq) {
            const int nb = (int)(Lq - i0 < bq ? Lq - i0 : bq); // queries in this block
            const float *Qb = Qf + (int64_t)i0 * HD, *dOb = dOf + (int64_t)i0 * HD; // (nb, HD)
            float *dQb = dQf + (int64_t)i0 * HD;
            const long long sP = (long long)nb * Lk; // head stride in P, dP: (H, nb, Lk)
            const float *beta_acc = i0 == 0 ? &zero : &one; // dK, dV: write, then add

            // GEMM 1, per head h: S_h (nb, Lk) = alpha_s Qb_h (nb, D) . K_h^T (D, Lk).
            // Column-major: S_h^T (Lk x nb, ldc Lk) = op_T(K buffer: D x Lk, lda HD)
            //   . op_N(Qb buffer: D x nb, ldb HD); m Lk, n nb, k D.
            CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
                                c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, Lk, nb, D, &alpha_s, Kf, f32,
                                HD, (long long)D, Qb, f32, HD, (long long)D, &zero, P, f32, Lk,
                                sP, H, ct, CUBLAS_GEMM_DEFAULT));
            // GEMM 2: dP_h (nb, Lk) = dOb_h (nb, D) . V_h^T (D, Lk); the same shapes:
            // dP_h^T (Lk x nb, ldc Lk) = op_T(V: D x Lk, lda HD) . op_N(dOb: D x nb, ldb HD)
            CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
                                c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, Lk, nb, D, &one, Vf, f32, HD,
                                (long long)D, dOb, f32, HD, (long long)D, &zero, dP, f32, Lk, sP,
                                H, ct, CUBLAS_GEMM_DEFAULT));
            // P = softmax, dP = dS, over the H*nb rows
            attn_bwd_softmax_ds_kernel<<<(unsigned)((int64_t)H * nb), threads, 0, c->stream>>>(
                P, dP, nb, Lk, i0, causal);
            CUDA_CHECK_LAUNCH(c);
            // GEMM 3: dV_h (Lk, D) (+)= P_h^T (Lk, nb) . dOb_h (nb, D).
            // Column-major: dV_h^T (D x Lk, ldc HD) = op_N(dOb: D x nb, lda HD)
            //   . op_T(P buffer: Lk x nb, ldb Lk); m D, n Lk, k nb.
            CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
                                c->cublas, CUBLAS_OP_N, CUBLAS_OP_T, D, Lk, nb, &one, dOb, f32, HD,
                                (long long)D, P, f32, Lk, sP, beta_acc, dVf, f32, HD, (long long)D,
                                H, ct, CUBLAS_GEMM_DEFAULT));
            // GEMM 4: dQb_h (nb, D) = scale dS_h (nb, Lk) . K_h (Lk, D).
            // Column-major: dQb_h^T (D x nb, ldc HD) = op_N(K: D x Lk, lda HD)
            //   . op_N(dS buffer: Lk x nb, ldb Lk); m D, n nb, k Lk.
            CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
                                c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, D, nb, Lk, &scale, Kf, f32, HD,
                                (long long)D, dP, f32, Lk, sP, &zero, dQb, f32, HD, (long long)D,
                                H, ct, CUBLAS_GEMM_DEFAULT));
            // GEMM 5: dK_h (Lk, D) (+)= scale dS_h^T (Lk, nb) . Qb_h (nb, D).
            // Column-major: dK_h^T (D x Lk, ldc HD) = op_N(Qb: D x nb, lda HD)
            //   . op_T(dS buffer: Lk x nb, ldb Lk); m D, n Lk, k nb.
            CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
                                c->cublas, CUBLAS_OP_N, CUBLAS_OP_T, D, Lk, nb, &scale, Qb, f32, HD,
                                (long long)D, dP, f32, Lk, sP, beta_acc, dKf, f32, HD, (long long)D,
                                H, ct, CUBLAS_GEMM_DEFAULT));
        }
        if (dt != CDT_F32) {
            attn_bwd_convert(c, dt, (char *)dq + oq * es, dq32, nq, 0);
            attn_bwd_convert(c, dt, (char *)dk + ok * es, dk32, nk, 0);
            attn_bwd_convert(c, dt, (char *)dv + ok * es, dv32, nk, 0);
        }
    }
}
