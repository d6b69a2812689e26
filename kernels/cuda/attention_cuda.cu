// attention_cuda.cu: multi-head scaled dot-product attention on the GPU,
// flash style: keys are visited in tiles with an online softmax (running
// max m and sum l per query, the output rescaled by exp(m_old - m_new)), so
// no (Lq, Lk) score matrix is ever in memory. fp32 softmax and accumulation
// for every storage dtype; exp2 of log2(e)-scaled scores.
//
// Layout: q (B, Lq, H*D), k and v (B, Lk, H*D), out (B, Lq, H*D); head h is
// columns [h*D, (h+1)*D) of each row. scale = 1/sqrt(D). causal masks key
// j > query i (CLIP).
//
// Two kernels:
// - attn_mma: F16/BF16 with D <= 160 (SD 1.x 40/80/160, SD 2.x 64, CLIP 64,
//   the tiny fixtures' 2..8, zero-padded to a multiple of 16). Tensor cores
//   through WMMA 16x16x16, fp32 accumulators: 4 warps x 16 queries per
//   block, 64-key tiles. S = Q K^T goes through shared memory, where each
//   pair of lanes owns one query row for the softmax; P is rounded to the
//   storage dtype for the P V product (as flash attention does), and l sums
//   the rounded P so the normalisation matches what was accumulated.
// - attn_simple: every other case (F32 always, so the F32 backend matches
//   the CPU reference to ~1e-6; the VAE's single 512-wide head). CUDA cores,
//   8 warps x QPW queries per block, 32-key tiles in shared memory: lane j
//   scores key j, then P V with lanes over d.
// SDC_CUDA_ATTN=fa2 sends the attn_mma cases to the FlashAttention-2-style
// kernel of attention_fa2_cuda.cu instead (not the default yet).
#include <mma.h>
#include <string.h>

#include "cuda_common.cuh"

#define ATTN_LOG2E 1.4426950408889634f

// ---- attn_simple (CUDA cores, any dtype, D <= 512) -------------------------------

#define AS_WARPS 8
#define AS_BK 32

// grid (ceil(Lq / (8*QPW)), B*H), block 256. DPL = ceil(D/32) values of the
// output row per lane. smem: Ks (32, D+1) f32, Vs (32, D) f32, Qs (8*QPW, D) f32.
template <typename T, int DPL, int QPW>
__global__ void __launch_bounds__(AS_WARPS * 32)
    attn_simple_kernel(T *out, const T *q, const T *k, const T *v, int Lq, int Lk, int H, int D,
                       int causal, float scale_log2) {
    extern __shared__ __align__(16) float as_smem[];
    const int KS = D + 1; // padded K row: lane j reads row j, no bank conflicts
    float *Ks = as_smem;               // (32, D+1)
    float *Vs = Ks + AS_BK * KS;       // (32, D)
    float *Qs = Vs + AS_BK * D;        // (8*QPW, D)
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int64_t HD = (int64_t)H * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = blockIdx.x * (AS_WARPS * QPW);
    const int nq = AS_WARPS * QPW;

    for (int i = threadIdx.x; i < nq * D; i += blockDim.x) {
        int r = i / D, d = i % D, qi = q0 + r;
        Qs[i] = qi < Lq ? ld(q + ((int64_t)b * Lq + qi) * HD + h * D + d) * scale_log2 : 0.f;
    }

    float m[QPW], l[QPW], acc[QPW][DPL];
#pragma unroll
    for (int u = 0; u < QPW; u++) {
        m[u] = -INFINITY;
        l[u] = 0.f;
#pragma unroll
        for (int e = 0; e < DPL; e++) acc[u][e] = 0.f;
    }
    int kend = Lk;
    if (causal) kend = min(Lk, q0 + nq); // keys past the block's last query are all masked

    for (int kt = 0; kt < kend; kt += AS_BK) {
        __syncthreads(); // previous tile fully read (and Qs written, first time)
        for (int i = threadIdx.x; i < AS_BK * D; i += blockDim.x) {
            int r = i / D, d = i % D, key = kt + r;
            float kv = 0.f, vv = 0.f;
            if (key < Lk) {
                int64_t off = ((int64_t)b * Lk + key) * HD + h * D + d;
                kv = ld(k + off);
                vv = ld(v + off);
            }
            Ks[r * KS + d] = kv;
            Vs[r * D + d] = vv;
        }
        __syncthreads();
        const int key = kt + lane;
        float p[QPW];
#pragma unroll
        for (int u = 0; u < QPW; u++) {
            const int qr = warp * QPW + u, qi = q0 + qr;
            const float *qrow = Qs + qr * D;
            const float *krow = Ks + lane * KS;
            float s = 0.f;
            for (int d = 0; d < D; d++) s += qrow[d] * krow[d];
            if (key >= Lk || (causal && key > qi)) s = -INFINITY;
            float mnew = fmaxf(m[u], warp_max(s));
            float corr = m[u] == -INFINITY ? 0.f : exp2f(m[u] - mnew);
            p[u] = s == -INFINITY ? 0.f : exp2f(s - mnew);
            l[u] = l[u] * corr + warp_sum(p[u]);
            m[u] = mnew;
#pragma unroll
            for (int e = 0; e < DPL; e++) acc[u][e] *= corr;
        }
        const int nk = min(AS_BK, Lk - kt);
        for (int j = 0; j < nk; j++) {
            float pj[QPW];
#pragma unroll
            for (int u = 0; u < QPW; u++) pj[u] = __shfl_sync(0xffffffffu, p[u], j);
            const float *vrow = Vs + j * D;
#pragma unroll
            for (int e = 0; e < DPL; e++) {
                int d = lane + 32 * e;
                float vd = d < D ? vrow[d] : 0.f;
#pragma unroll
                for (int u = 0; u < QPW; u++) acc[u][e] += pj[u] * vd;
            }
        }
    }
#pragma unroll
    for (int u = 0; u < QPW; u++) {
        const int qi = q0 + warp * QPW + u;
        if (qi >= Lq) continue;
        float inv = l[u] > 0.f ? 1.f / l[u] : 0.f;
        T *orow = out + ((int64_t)b * Lq + qi) * HD + h * D;
#pragma unroll
        for (int e = 0; e < DPL; e++) {
            int d = lane + 32 * e;
            if (d < D) st(orow + d, acc[u][e] * inv);
        }
    }
}

template <typename T, int DPL, int QPW>
static void attn_simple_launch(CudaCtx *c, T *out, const T *q, const T *k, const T *v, int B,
                               int Lq, int Lk, int H, int D, int causal, float scale_log2) {
    const int nq = AS_WARPS * QPW;
    size_t smem = (size_t)(AS_BK * (D + 1) + AS_BK * D + nq * D) * sizeof(float);
    CUDA_CHECK(c, cudaFuncSetAttribute(attn_simple_kernel<T, DPL, QPW>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((unsigned)((Lq + nq - 1) / nq), (unsigned)(B * H));
    attn_simple_kernel<T, DPL, QPW><<<grid, AS_WARPS * 32, smem, c->stream>>>(
        out, q, k, v, Lq, Lk, H, D, causal, scale_log2);
    CUDA_CHECK_LAUNCH(c);
}

template <typename T>
static void attn_simple(CudaCtx *c, T *out, const T *q, const T *k, const T *v, int B, int Lq,
                        int Lk, int H, int D, int causal, float scale_log2) {
    int dpl = (D + 31) / 32;
#define AS_CASE(N, Q)                                                                          \
    attn_simple_launch<T, N, Q>(c, out, q, k, v, B, Lq, Lk, H, D, causal, scale_log2);          \
    return
    switch (dpl) {
    case 1: AS_CASE(1, 4);
    case 2: AS_CASE(2, 4);
    case 3: AS_CASE(3, 4);
    case 4: AS_CASE(4, 4);
    case 5: AS_CASE(5, 4);
    case 6:
    case 7:
    case 8: AS_CASE(8, 2);
    default: AS_CASE(16, 1); // D <= 512 (checked by the caller)
    }
#undef AS_CASE
}

// ---- attn_mma (tensor cores, F16/BF16, D <= 160) ----------------------------------

#define AM_WARPS 4
#define AM_BQ 64 // 16 queries per warp
#define AM_BK 64

// smem bytes of attn_mma for padded head dim DP: Qs, Ks, Vs (64, DP) T;
// Ss (4, 16, 64) f32; Ps (4, 16, 64) T; Os (4, 16, DP) f32.
static size_t attn_mma_smem(int DP) {
    return (size_t)3 * 64 * DP * 2 + (size_t)AM_WARPS * 16 * 64 * 4 + (size_t)AM_WARPS * 16 * 64 * 2 +
           (size_t)AM_WARPS * 16 * DP * 4;
}

// grid (ceil(Lq / 64), B*H), block 128. DP = D rounded up to 16; padded
// columns of Q, K, V (and keys past Lk) are zeros.
template <typename T, int DP>
__global__ void __launch_bounds__(AM_WARPS * 32)
    attn_mma_kernel(T *out, const T *q, const T *k, const T *v, int Lq, int Lk, int H, int D,
                    int causal, float scale_log2) {
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char am_smem[];
    T *Qs = (T *)am_smem;                                 // (64, DP)
    T *Ks = Qs + AM_BQ * DP;                              // (64, DP)
    T *Vs = Ks + AM_BK * DP;                              // (64, DP)
    float *Ss = (float *)(Vs + AM_BK * DP);               // (4, 16, 64)
    T *Ps = (T *)(Ss + AM_WARPS * 16 * AM_BK);            // (4, 16, 64)
    float *Os = (float *)(Ps + AM_WARPS * 16 * AM_BK);    // (4, 16, DP)
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int64_t HD = (int64_t)H * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = blockIdx.x * AM_BQ;
    float *Sw = Ss + warp * 16 * AM_BK;
    T *Pw = Ps + warp * 16 * AM_BK;
    float *Ow = Os + warp * 16 * DP;

    for (int i = threadIdx.x; i < AM_BQ * DP; i += blockDim.x) {
        int r = i / DP, d = i % DP, qi = q0 + r;
        Qs[i] = (qi < Lq && d < D) ? q[((int64_t)b * Lq + qi) * HD + h * D + d] : T(0.f);
    }
    for (int i = lane; i < 16 * DP; i += 32) Ow[i] = 0.f;

    // softmax ownership: lane pair (2r, 2r+1) holds query row r of the warp,
    // columns [half*32, half*32+32) of S and [half*DP/2, (half+1)*DP/2) of O.
    const int r = lane >> 1, half = lane & 1;
    const int qi = q0 + warp * 16 + r;
    float m = -INFINITY, l = 0.f;
    int kend = Lk;
    if (causal) kend = min(Lk, q0 + AM_BQ);

    for (int kt = 0; kt < kend; kt += AM_BK) {
        __syncthreads(); // previous tile fully read (and Qs written, first time)
        for (int i = threadIdx.x; i < AM_BK * DP; i += blockDim.x) {
            int rr = i / DP, d = i % DP, key = kt + rr;
            T kv = T(0.f), vv = T(0.f);
            if (key < Lk && d < D) {
                int64_t off = ((int64_t)b * Lk + key) * HD + h * D + d;
                kv = k[off];
                vv = v[off];
            }
            Ks[i] = kv;
            Vs[i] = vv;
        }
        __syncthreads();

        // S (16, 64) = Q_w (16, DP) . K_tile^T (DP, 64)
#pragma unroll
        for (int kf = 0; kf < AM_BK / 16; kf++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
            wmma::fill_fragment(sf, 0.f);
#pragma unroll
            for (int df = 0; df < DP / 16; df++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf;
                wmma::load_matrix_sync(af, Qs + (warp * 16) * DP + df * 16, DP);
                wmma::load_matrix_sync(bf, Ks + (kf * 16) * DP + df * 16, DP);
                wmma::mma_sync(sf, af, bf, sf);
            }
            wmma::store_matrix_sync(Sw + kf * 16, sf, AM_BK, wmma::mem_row_major);
        }
        __syncwarp();

        // online softmax of row r over this tile's 64 keys (32 per lane)
        float s[32];
        float mt = -INFINITY;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            int col = half * 32 + j, key = kt + col;
            float x = Sw[r * AM_BK + col] * scale_log2;
            if (key >= Lk || (causal && key > qi)) x = -INFINITY;
            s[j] = x;
            mt = fmaxf(mt, x);
        }
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
        float mnew = fmaxf(m, mt);
        float corr = m == -INFINITY ? 0.f : exp2f(m - mnew);
        float ps = 0.f;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            T pt = T(s[j] == -INFINITY ? 0.f : exp2f(s[j] - mnew));
            Pw[r * AM_BK + half * 32 + j] = pt;
            ps += ld(&pt);
        }
        ps += __shfl_xor_sync(0xffffffffu, ps, 1);
        l = l * corr + ps;
        m = mnew;
        for (int d = half * (DP / 2); d < (half + 1) * (DP / 2); d++) Ow[r * DP + d] *= corr;
        __syncwarp();

        // O_w (16, DP) += P_w (16, 64) . V_tile (64, DP)
#pragma unroll
        for (int df = 0; df < DP / 16; df++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
            wmma::load_matrix_sync(of, Ow + df * 16, DP, wmma::mem_row_major);
#pragma unroll
            for (int kf = 0; kf < AM_BK / 16; kf++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bf;
                wmma::load_matrix_sync(af, Pw + kf * 16, AM_BK);
                wmma::load_matrix_sync(bf, Vs + (kf * 16) * DP + df * 16, DP);
                wmma::mma_sync(of, af, bf, of);
            }
            wmma::store_matrix_sync(Ow + df * 16, of, DP, wmma::mem_row_major);
        }
        __syncwarp();
    }

    if (qi < Lq) {
        float inv = l > 0.f ? 1.f / l : 0.f;
        T *orow = out + ((int64_t)b * Lq + qi) * HD + h * D;
        for (int d = half * (DP / 2); d < (half + 1) * (DP / 2) && d < D; d++)
            st(orow + d, Ow[r * DP + d] * inv);
    }
}

template <typename T, int DP>
static void attn_mma_launch(CudaCtx *c, T *out, const T *q, const T *k, const T *v, int B, int Lq,
                            int Lk, int H, int D, int causal, float scale_log2) {
    size_t smem = attn_mma_smem(DP);
    CUDA_CHECK(c, cudaFuncSetAttribute(attn_mma_kernel<T, DP>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((unsigned)((Lq + AM_BQ - 1) / AM_BQ), (unsigned)(B * H));
    attn_mma_kernel<T, DP><<<grid, AM_WARPS * 32, smem, c->stream>>>(out, q, k, v, Lq, Lk, H, D,
                                                                      causal, scale_log2);
    CUDA_CHECK_LAUNCH(c);
}

template <typename T>
static void attn_mma(CudaCtx *c, T *out, const T *q, const T *k, const T *v, int B, int Lq, int Lk,
                     int H, int D, int causal, float scale_log2) {
#define AM_CASE(N)                                                                             \
    case N / 16: attn_mma_launch<T, N>(c, out, q, k, v, B, Lq, Lk, H, D, causal, scale_log2); return
    switch ((D + 15) / 16) {
    AM_CASE(16); AM_CASE(32); AM_CASE(48); AM_CASE(64); AM_CASE(80);
    AM_CASE(96); AM_CASE(112); AM_CASE(128); AM_CASE(144); AM_CASE(160);
    }
#undef AM_CASE
    CUDA_REQUIRE(!"attn_mma: head dim above 160");
}

// ---- entry ----------------------------------------------------------------------

// SDC_CUDA_ATTN: "fa2" routes F16/BF16 (D <= 160) to cuda_attention_fa2
// (attention_fa2_cuda.cu); unset or "wmma" keeps attn_mma. Read once.
// The default flips to fa2 once it has passed tests/gpu/run.sh on a GPU.
static int attn_use_fa2(void) {
    static int use = -1; // a benign race: every thread computes the same value
    if (use < 0) {
        const char *s = getenv("SDC_CUDA_ATTN");
        int fa2 = s && strcmp(s, "fa2") == 0;
        if (s && *s && !fa2 && strcmp(s, "wmma") != 0)
            fprintf(stderr, "sdc: SDC_CUDA_ATTN=%s is not a kernel ---> use fa2 or wmma; "
                            "using wmma\n", s);
        use = fa2;
    }
    return use;
}

extern "C" void cuda_attention(CudaCtx *c, int dt, void *out, const void *q, const void *k,
                               const void *v, int B, int Lq, int Lk, int H, int D, int causal) {
    CUDA_REQUIRE(B > 0 && Lq > 0 && Lk > 0 && H > 0 && D > 0);
    CUDA_REQUIRE(D <= CUDA_ATTN_MAX_HEAD_DIM);
    CUDA_REQUIRE((int64_t)B * H <= 65535);
    float scale_log2 = ATTN_LOG2E / sqrtf((float)D);
    if ((dt == CDT_F16 || dt == CDT_BF16) && D <= CUDA_ATTN_FA2_MAX_HEAD_DIM && attn_use_fa2()) {
        cuda_attention_fa2(c, dt, out, q, k, v, B, Lq, Lk, H, D, causal);
    } else if (dt == CDT_F16 && D <= 160) {
        attn_mma<__half>(c, (__half *)out, (const __half *)q, (const __half *)k, (const __half *)v, B,
                         Lq, Lk, H, D, causal, scale_log2);
    } else if (dt == CDT_BF16 && D <= 160) {
        attn_mma<__nv_bfloat16>(c, (__nv_bfloat16 *)out, (const __nv_bfloat16 *)q,
                                (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v, B, Lq, Lk, H, D,
                                causal, scale_log2);
    } else {
        CUDA_DISPATCH(dt, {
            attn_simple<T>(c, (T *)out, (const T *)q, (const T *)k, (const T *)v, B, Lq, Lk, H, D,
                           causal, scale_log2);
        });
    }
}
