// attention_fa2_cuda.cu: multi-head scaled dot-product attention for F16/BF16
// in the FlashAttention-2 manner: register-level tensor-core MMA
// (mma.sync m16n8k16, fp32 accumulators), ldmatrix from shared memory,
// cp.async double-buffered K/V tiles, and an online softmax that never
// leaves the registers. The same contract as cuda_attention (ops_cuda.h);
// attention_cuda.cu routes to it when SDC_CUDA_ATTN=fa2.
//
// PREPARED, NOT YET RUN ON A GPU: tests/test_attn_cuda.c and
// bench/bench_attn_cuda.c check and time it; attn_mma stays the default until
// they have passed on a GPU.
//
// Layout: q (B, Lq, H*D), k and v (B, Lk, H*D), out (B, Lq, H*D); head h is
// columns [h*D, (h+1)*D) of each row. scale = 1/sqrt(D). causal masks key
// j > query i (CLIP).
//
// Algorithm. grid (ceil(Lq / 64), B*H), 4 warps; warp w owns the 16 query
// rows q0 + 16w .. q0 + 16w + 15 of the block's 64.
//   - Q (64, DP) is copied to shared memory once and each warp keeps its
//     rows as mma A fragments in registers (DP/16 x 4 b32).
//   - Keys are visited in tiles of BK (64; 32 for DP = 160). K and V tiles
//     (BK, DP) live in two shared-memory stages: tile t+1 is fetched with
//     cp.async (16 bytes per request) while tile t is computed.
//   - S (16, BK) = Q_w K_t^T in registers (BK/8 fp32 accumulator fragments),
//     K fragments by ldmatrix.x4 (K rows are the "col" B operand as stored).
//   - Online softmax in registers on raw scores: each lane holds two rows
//     (g = lane/4 and g+8) and BK/4 of their columns; the row max is reduced
//     over the 4 lanes of a quad (shfl_xor 1, 2), p = exp2(s*scale*log2e -
//     m*scale*log2e), O and the lane's partial row sum l rescaled by
//     exp2((m_old - m_new)*scale*log2e). l stays a per-lane partial (all
//     lanes of a row rescale alike) and is reduced over the quad once, at
//     the end.
//   - P is rounded to the storage dtype in registers; the S accumulator
//     layout of two adjacent 8-key blocks is exactly the A fragment of one
//     16-key k-step, so P feeds the P.V mma directly (no shared memory). l
//     sums the rounded P, so the normalisation matches what was multiplied.
//   - O (16, DP) += P V_t, V fragments by ldmatrix.x4.trans.
//   - End: O / l, rounded once to the storage dtype, staged through the
//     warp's own (now unused) Q rows in shared memory and written as 16-byte
//     stores (scalar stores on the unaligned path).
//
// Head dims: D is zero-padded to DP, a multiple of 16 (the mma k): 2..16 ->
// 16, 40 -> 48, 64, 80, 97..128 -> 128 (no 112 instance), 129..160 -> 160.
// Zero Q/K columns add nothing to S, zero V columns are not written out.
// Tails: Q rows >= Lq and K/V rows >= Lk are zero-filled in shared memory
// (V must be finite: 0 * NaN is NaN in the mma); keys >= Lk get -inf scores;
// rows >= Lq are not written. causal: tiles wholly above the diagonal are
// not loaded, a warp skips tiles wholly above its rows, keys j > i -inf.
//
// Shared memory, one row stride LDS = DP + 8 elements: 16 extra bytes per
// row make the 8 row addresses of every ldmatrix phase fall in distinct
// 16-byte bank groups (LDS/8 is odd), so no bank conflicts. Per block,
// (64 + 4*BK) * LDS * 2 bytes: Qs (64, LDS), Ks (2, BK, LDS), Vs (2, BK, LDS):
//   DP  16: 15.0 KiB  32: 25.0 KiB  48: 35.0 KiB  64: 45.0 KiB
//   DP  80: 55.0 KiB  96: 65.0 KiB 128: 85.0 KiB 160 (BK 32): 63.0 KiB
// (H100: 227 KiB per block, 228 KiB per SM.)
//
// Loads: 16-byte cp.async needs D % 8 == 0 and 16-byte aligned q/k/v/out
// (then every head row starts aligned: H*D and h*D are multiples of 8).
// Otherwise (tiny test heads, D = 100, offset pointers) the same kernel
// loads and stores element by element (vec = 0); only the copy loops differ.
#include "cuda_common.cuh"

#define FA2_LOG2E 1.4426950408889634f
#define FA2_WARPS 4
#define FA2_THREADS (FA2_WARPS * 32)
#define FA2_BQ (FA2_WARPS * 16) // queries per block

// Tile shape per padded head dim DP.
template <int DP> struct Fa2Cfg {
    static constexpr int BK = DP >= 160 ? 32 : 64; // keys per tile
    static constexpr int LDS = DP + 8;             // shared row stride (elements)
    static constexpr size_t SMEM = (size_t)(FA2_BQ + 4 * BK) * LDS * 2;
};

// ---- PTX wrappers -------------------------------------------------------------------

__device__ __forceinline__ uint32_t fa2_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, asynchronous; src_bytes 0 writes 16 zero bytes
// (src is then not read, but must still be a valid address).
__device__ __forceinline__ void fa2_cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(fa2_smem_addr(dst)),
                 "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void fa2_cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void fa2_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i,
// and lane l receives r[i] = row l/4, columns 2(l%4), 2(l%4)+1 of matrix i
// (.trans: column l/4, rows 2(l%4), 2(l%4)+1).
__device__ __forceinline__ void fa2_ldmatrix_x4(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void fa2_ldmatrix_x4_trans(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// d (16x8 f32) += a (16x16, row) . b (16x8, col). Per lane (g = lane/4,
// c = lane%4): a = {A[g][2c..], A[g+8][2c..], A[g][2c+8..], A[g+8][2c+8..]},
// b = {B[2c..][g], B[2c+8..][g]}, d = {D[g][2c], D[g][2c+1], D[g+8][2c],
// D[g+8][2c+1]}; the lower-indexed element of a pair in the low 16 bits.
__device__ __forceinline__ void fa2_mma(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1,
                                        __nv_bfloat16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void fa2_mma(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1,
                                        __half) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> one b32 of the storage dtype (lo in the low half), round to
// nearest; and back.
__device__ __forceinline__ uint32_t fa2_pack(float lo, float hi, __nv_bfloat16) {
    __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&p;
}
__device__ __forceinline__ uint32_t fa2_pack(float lo, float hi, __half) {
    __half2 p = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&p;
}
__device__ __forceinline__ float2 fa2_unpack(uint32_t u, __nv_bfloat16) {
    return __bfloat1622float2(*(__nv_bfloat162 *)&u);
}
__device__ __forceinline__ float2 fa2_unpack(uint32_t u, __half) {
    return __half22float2(*(__half2 *)&u);
}

// ---- tile loads -----------------------------------------------------------------

// dst (ROWS, LDS) <- rows [row0, row0 + ROWS) of one head: src points at its
// row 0, column 0, rows ld elements apart. Columns [D, DP) and rows >= n are
// zeros. vec: 16-byte cp.async (D % 8 == 0, src 16-byte aligned); otherwise
// plain element copies.
template <typename T, int DP, int ROWS>
__device__ __forceinline__ void fa2_load_tile(T *dst, const T *src, int64_t ld, int row0, int n,
                                              int D, int vec) {
    constexpr int LDS = Fa2Cfg<DP>::LDS, CPR = DP / 8; // 16-byte chunks per row
    if (vec) {
        constexpr int N = ROWS * CPR;
#pragma unroll
        for (int it = 0; it < (N + FA2_THREADS - 1) / FA2_THREADS; it++) {
            const int i = threadIdx.x + it * FA2_THREADS;
            if (N % FA2_THREADS != 0 && i >= N) break;
            const int r = i / CPR, c = i % CPR, row = row0 + r;
            const bool ok = row < n && c * 8 < D;
            fa2_cp_async16(dst + r * LDS + c * 8, ok ? src + (int64_t)row * ld + c * 8 : src,
                           ok ? 16 : 0);
        }
    } else {
        for (int i = threadIdx.x; i < ROWS * DP; i += FA2_THREADS) {
            const int r = i / DP, d = i % DP, row = row0 + r;
            dst[r * LDS + d] = (row < n && d < D) ? src[(int64_t)row * ld + d] : T(0.f);
        }
    }
}

// ---- kernel ---------------------------------------------------------------------

// grid (ceil(Lq / 64), B*H), block 128, dynamic smem Fa2Cfg<DP>::SMEM.
template <typename T, int DP>
__global__ void __launch_bounds__(FA2_THREADS)
    fa2_kernel(T *out, const T *q, const T *k, const T *v, int Lq, int Lk, int H, int D,
               int causal, float scale_log2, int vec) {
    constexpr int BK = Fa2Cfg<DP>::BK, LDS = Fa2Cfg<DP>::LDS;
    constexpr int NB = BK / 8;  // 8-key column blocks of S
    constexpr int ND = DP / 8;  // 8-wide column blocks of O
    constexpr int KD = DP / 16; // k-steps of Q K^T
    extern __shared__ __align__(128) unsigned char fa2_smem[];
    T *Qs = (T *)fa2_smem;     // (64, LDS)
    T *Ks = Qs + FA2_BQ * LDS; // (2, BK, LDS) stages
    T *Vs = Ks + 2 * BK * LDS; // (2, BK, LDS) stages
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int64_t HD = (int64_t)H * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3; // mma fragment row group / column pair
    const int q0 = blockIdx.x * FA2_BQ;
    const int qw = q0 + warp * 16; // this warp's first query row
    const T *qh = q + (int64_t)b * Lq * HD + (int64_t)h * D; // (Lq, D) rows HD apart
    const T *kh = k + (int64_t)b * Lk * HD + (int64_t)h * D; // (Lk, D) rows HD apart
    const T *vh = v + (int64_t)b * Lk * HD + (int64_t)h * D;
    const int kend = causal ? min(Lk, q0 + FA2_BQ) : Lk; // later keys are masked for every row
    const int ntiles = (kend + BK - 1) / BK;

    // cp.async groups: Q, then K/V tile 0
    fa2_load_tile<T, DP, FA2_BQ>(Qs, qh, HD, q0, Lq, D, vec);
    fa2_cp_async_commit();
    fa2_load_tile<T, DP, BK>(Ks, kh, HD, 0, Lk, D, vec);
    fa2_load_tile<T, DP, BK>(Vs, vh, HD, 0, Lk, D, vec);
    fa2_cp_async_commit();

    // per-lane ldmatrix row/column inside a 16x16 block (see fa2_ldmatrix_x4):
    // Q: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (0-7, 8-15), (8-15, 8-15) = a0..a3
    // K: (keys 0-7, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 0-7), (8-15, 8-15)
    //    = b0, b1 of key block 0, b0, b1 of key block 1
    // V (.trans): (keys 0-7, d 0-7), (keys 8-15, d 0-7), (0-7, 8-15), (8-15, 8-15)
    //    = b0, b1 of column block 0, b0, b1 of column block 1
    const uint32_t q_lane = ((lane & 15) * LDS + (lane >> 4) * 8) * 2;
    const uint32_t k_lane = (((lane & 7) + (lane >> 4) * 8) * LDS + ((lane >> 3) & 1) * 8) * 2;
    const uint32_t v_lane = (((lane & 7) + ((lane >> 3) & 1) * 8) * LDS + (lane >> 4) * 8) * 2;

    fa2_cp_async_wait<1>(); // Q has landed (K/V tile 0 may still be in flight)
    __syncthreads();
    uint32_t qf[KD][4]; // A fragments of Q rows qw..qw+15
    {
        const uint32_t base = fa2_smem_addr(Qs + warp * 16 * LDS) + q_lane;
#pragma unroll
        for (int kd = 0; kd < KD; kd++) fa2_ldmatrix_x4(qf[kd], base + kd * 16 * 2);
    }

    float o[ND][4]; // O accumulator fragments: rows g, g+8 of the warp, columns 8n + 2tq, +1
#pragma unroll
    for (int n = 0; n < ND; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY; // running max of rows g, g+8 (raw scores)
    float l0 = 0.f, l1 = 0.f;             // this lane's share of their row sums

    for (int t = 0; t < ntiles; t++) {
        const int kt = t * BK;
        if (t + 1 < ntiles) { // prefetch tile t+1 into the other stage (freed at the end of t-1)
            const int st = (t + 1) & 1;
            fa2_load_tile<T, DP, BK>(Ks + st * BK * LDS, kh, HD, kt + BK, Lk, D, vec);
            fa2_load_tile<T, DP, BK>(Vs + st * BK * LDS, vh, HD, kt + BK, Lk, D, vec);
            fa2_cp_async_commit();
            fa2_cp_async_wait<1>(); // tile t has landed
        } else {
            fa2_cp_async_wait<0>();
        }
        __syncthreads();
        // warp-uniform: rows past Lq need nothing; under causal a tile wholly
        // after the warp's last row adds nothing (m is finite after tile 0)
        const bool active = qw < Lq && !(causal && kt > qw + 15);
        if (active) {
            const uint32_t kbase = fa2_smem_addr(Ks + (t & 1) * BK * LDS) + k_lane;
            const uint32_t vbase = fa2_smem_addr(Vs + (t & 1) * BK * LDS) + v_lane;

            // S (16, BK) = Q_w K_t^T
            float s[NB][4];
#pragma unroll
            for (int n = 0; n < NB; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int kd = 0; kd < KD; kd++) {
#pragma unroll
                for (int n2 = 0; n2 < NB / 2; n2++) {
                    uint32_t kb[4];
                    fa2_ldmatrix_x4(kb, kbase + (n2 * 16 * LDS + kd * 16) * 2);
                    fa2_mma(s[2 * n2], qf[kd], kb[0], kb[1], T());
                    fa2_mma(s[2 * n2 + 1], qf[kd], kb[2], kb[3], T());
                }
            }

            // masks: keys >= Lk (last tile), keys after the query (diagonal tiles)
            if (kt + BK > Lk || (causal && kt + BK - 1 > qw)) {
                const int i0 = qw + g, i1 = i0 + 8;
#pragma unroll
                for (int n = 0; n < NB; n++) {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int j = kt + n * 8 + tq * 2 + e;
                        if (j >= Lk || (causal && j > i0)) s[n][e] = -INFINITY;
                        if (j >= Lk || (causal && j > i1)) s[n][2 + e] = -INFINITY;
                    }
                }
            }

            // online softmax: new row max over the quad, rescale O and l
            float mx0 = m0, mx1 = m1;
#pragma unroll
            for (int n = 0; n < NB; n++) {
                mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
                mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            // scaled max; 0 for a row with no key yet (keeps -inf - -inf out)
            const float ms0 = mx0 == -INFINITY ? 0.f : mx0 * scale_log2;
            const float ms1 = mx1 == -INFINITY ? 0.f : mx1 * scale_log2;
            const float c0 = exp2f(m0 * scale_log2 - ms0), c1 = exp2f(m1 * scale_log2 - ms1);
            m0 = mx0;
            m1 = mx1;
            l0 *= c0;
            l1 *= c1;
#pragma unroll
            for (int n = 0; n < ND; n++) {
                o[n][0] *= c0;
                o[n][1] *= c0;
                o[n][2] *= c1;
                o[n][3] *= c1;
            }

            // P = exp2(s * scale_log2 - ms) rounded to T: key blocks 2k, 2k+1
            // of S are a0/a1 and a2/a3 of the A fragment for keys 16k..16k+15
            uint32_t pf[NB / 2][4];
#pragma unroll
            for (int n = 0; n < NB; n++) {
                const uint32_t lo = fa2_pack(exp2f(fmaf(s[n][0], scale_log2, -ms0)),
                                             exp2f(fmaf(s[n][1], scale_log2, -ms0)), T());
                const uint32_t hi = fa2_pack(exp2f(fmaf(s[n][2], scale_log2, -ms1)),
                                             exp2f(fmaf(s[n][3], scale_log2, -ms1)), T());
                pf[n >> 1][(n & 1) * 2] = lo;
                pf[n >> 1][(n & 1) * 2 + 1] = hi;
                const float2 pl = fa2_unpack(lo, T()), ph = fa2_unpack(hi, T());
                l0 += pl.x + pl.y;
                l1 += ph.x + ph.y;
            }

            // O (16, DP) += P (16, BK) V_t (BK, DP)
#pragma unroll
            for (int kc = 0; kc < NB / 2; kc++) {
#pragma unroll
                for (int n2 = 0; n2 < ND / 2; n2++) {
                    uint32_t vb[4];
                    fa2_ldmatrix_x4_trans(vb, vbase + (kc * 16 * LDS + n2 * 16) * 2);
                    fa2_mma(o[2 * n2], pf[kc], vb[0], vb[1], T());
                    fa2_mma(o[2 * n2 + 1], pf[kc], vb[2], vb[3], T());
                }
            }
        }
        __syncthreads(); // every warp is done with stage t&1 before tile t+2 is fetched into it
    }

    if (qw >= Lq) return; // no row of this warp exists (no block-wide sync follows)
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;

    // O / l rounded to T, staged in this warp's 16 rows of Qs (read only by
    // this warp, before the loop), then copied out row by row
    T *Ow = Qs + warp * 16 * LDS; // (16, LDS)
#pragma unroll
    for (int n = 0; n < ND; n++) {
        *(uint32_t *)(Ow + g * LDS + n * 8 + tq * 2) =
            fa2_pack(o[n][0] * inv0, o[n][1] * inv0, T());
        *(uint32_t *)(Ow + (g + 8) * LDS + n * 8 + tq * 2) =
            fa2_pack(o[n][2] * inv1, o[n][3] * inv1, T());
    }
    __syncwarp();
    T *oh = out + (int64_t)b * Lq * HD + (int64_t)h * D; // (Lq, D) rows HD apart
    if (vec) {
#pragma unroll
        for (int it = 0; it < ND / 2; it++) { // 16 rows x ND chunks over 32 lanes
            const int i = lane + it * 32, r = i / ND, c = i % ND, row = qw + r;
            if (row < Lq && c * 8 < D)
                *(uint4 *)(oh + (int64_t)row * HD + c * 8) = *(const uint4 *)(Ow + r * LDS + c * 8);
        }
    } else {
        for (int i = lane; i < 16 * DP; i += 32) {
            const int r = i / DP, d = i % DP, row = qw + r;
            if (row < Lq && d < D) oh[(int64_t)row * HD + d] = Ow[r * LDS + d];
        }
    }
}

// ---- launch ---------------------------------------------------------------------

template <typename T, int DP>
static void fa2_launch(CudaCtx *c, T *out, const T *q, const T *k, const T *v, int B, int Lq,
                       int Lk, int H, int D, int causal, float scale_log2, int vec) {
    const size_t smem = Fa2Cfg<DP>::SMEM;
    CUDA_CHECK(c, cudaFuncSetAttribute(fa2_kernel<T, DP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem));
    dim3 grid((unsigned)((Lq + FA2_BQ - 1) / FA2_BQ), (unsigned)(B * H));
    fa2_kernel<T, DP><<<grid, FA2_THREADS, smem, c->stream>>>(out, q, k, v, Lq, Lk, H, D, causal,
                                                              scale_log2, vec);
    CUDA_CHECK_LAUNCH(c);
}

template <typename T>
static void fa2_run(CudaCtx *c, T *out, const T *q, const T *k, const T *v, int B, int Lq, int Lk,
                    int H, int D, int causal) {
    const float scale_log2 = FA2_LOG2E / sqrtf((float)D);
    const uintptr_t any = (uintptr_t)out | (uintptr_t)q | (uintptr_t)k | (uintptr_t)v;
    const int vec = D % 8 == 0 && any % 16 == 0;
#define FA2_CASE(N) fa2_launch<T, N>(c, out, q, k, v, B, Lq, Lk, H, D, causal, scale_log2, vec)
    if (D <= 16) FA2_CASE(16);
    else if (D <= 32) FA2_CASE(32);
    else if (D <= 48) FA2_CASE(48);
    else if (D <= 64) FA2_CASE(64);
    else if (D <= 80) FA2_CASE(80);
    else if (D <= 96) FA2_CASE(96);
    else if (D <= 128) FA2_CASE(128);
    else FA2_CASE(160);
#undef FA2_CASE
}

// ---- entry ----------------------------------------------------------------------

extern "C" void cuda_attention_fa2(CudaCtx *c, int dt, void *out, const void *q, const void *k,
                                   const void *v, int B, int Lq, int Lk, int H, int D, int causal) {
    CUDA_REQUIRE(B > 0 && Lq > 0 && Lk > 0 && H > 0 && D > 0);
    CUDA_REQUIRE(D <= CUDA_ATTN_FA2_MAX_HEAD_DIM);
    CUDA_REQUIRE((int64_t)B * H <= 65535);
    if (dt == CDT_F16) {
        fa2_run<__half>(c, (__half *)out, (const __half *)q, (const __half *)k, (const __half *)v,
                        B, Lq, Lk, H, D, causal);
    } else {
        CUDA_REQUIRE(dt == CDT_BF16);
        fa2_run<__nv_bfloat16>(c, (__nv_bfloat16 *)out, (const __nv_bfloat16 *)q,
                               (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v, B, Lq, Lk, H, D,
                               causal);
    }
}
