// conv_cuda.cu: torch.nn.Conv2d (NCHW, zero padding, no dilation, groups 1)
// on the GPU, fp32 accumulation for every storage dtype, two ways:
//   - im2col + cuBLAS GEMM (the default): sdc's own path on the one library
//     it already needs; the GEMM is where the time goes (the im2col pass is
//     one write and one read of the unfolded input, bounded by the caller's
//     workspace);
//   - cuDNN's legacy convolution API (SDC_CUDA_CONV=cudnn): what PyTorch
//     runs, with implicit-GEMM / Winograd / FFT kernels that skip the
//     unfolded copy; one algorithm per shape, chosen once and kept in a
//     small table in the context, always within the caller's workspace.
//
// im2col, per sample n, row-major:
//   out[n] (OC, P) = w (OC, K) . col[n] (K, P),  K = C*KH*KW, P = OH*OW,
//   col[n][(c*KH + kh)*KW + kw][oh*OW + ow] = x[n][c][oh*s - pad + kh][ow*s - pad + kw]
// which, read column-major, is out^T (P, OC) = col^T (P, K) . w^T (K, OC):
// m = P, n = OC, k = K, A = col (lda = row length of col), B = w (ldb = K),
// C = out (ldc = P). Samples are the batch of a strided-batched GEMM.
//
// 1x1 stride-1 unpadded convs need no im2col: col[n] is x[n] itself.
// Otherwise the workspace (ws, from the backend) holds the columns of as
// many whole samples as fit, else of a range of output pixels of one sample
// (so a 512x512 VAE conv runs in any workspace of at least K*32 elements).
//
// The bias is written into out first and the GEMM (or cuDNN) adds onto it
// (beta = 1): one rounding of the result, the same traffic as a separate
// bias pass.
#include "cuda_common.cuh"

#include <string.h>

static cudaDataType_t conv_cuda_type(int dt) {
    switch (dt) {
    case CDT_F32: return CUDA_R_32F;
    case CDT_F16: return CUDA_R_16F;
    case CDT_BF16: return CUDA_R_16BF;
    }
    CUDA_REQUIRE(!"unsupported dtype");
    return CUDA_R_32F;
}

static size_t conv_dtype_size(int dt) { return dt == CDT_F32 ? 4 : 2; }

// out (N, OC, P) = b[oc] broadcast. grid-stride
template <typename T>
__global__ void conv_bias_fill_kernel(T *out, const T *b, int64_t OC, int64_t P, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = b[(i / P) % OC];
}

// col (nb, K, Pc) for samples [n0, n0+nb) and output pixels [p0, p0+Pc) from
// x (N, C, H, W); out-of-image taps are 0. Raw copies, no conversion.
template <typename T>
__global__ void im2col_kernel(T *col, const T *x, int n0, int nb, int C, int H, int W, int KH,
                              int KW, int stride, int pad, int OW, int64_t p0, int64_t Pc) {
    const int64_t K = (int64_t)C * KH * KW;
    const int64_t total = (int64_t)nb * K * Pc;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t pp = i % Pc;
        int64_t r = (i / Pc) % K;
        int64_t nn = i / (Pc * K);
        int64_t p = p0 + pp;
        int oh = (int)(p / OW), ow = (int)(p % OW);
        int kw = (int)(r % KW), kh = (int)((r / KW) % KH), c = (int)(r / (KW * KH));
        int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
        T v = T(0.f);
        if (ih >= 0 && ih < H && iw >= 0 && iw < W)
            v = x[(((n0 + nn) * C + c) * (int64_t)H + ih) * W + iw];
        col[i] = v;
    }
}

// out (N, OC, P) = b broadcast when b is given; returns the beta that adds
// the convolution onto it (1, or 0 without a bias).
static float conv_bias_fill(CudaCtx *c, int dt, void *out, const void *b, int64_t N, int64_t OC,
                            int64_t P) {
    if (!b) return 0.f;
    int64_t n = N * OC * P;
    CUDA_DISPATCH(dt, {
        conv_bias_fill_kernel<T><<<cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, (const T *)b,
                                                                             OC, P, n);
    });
    CUDA_CHECK_LAUNCH(c);
    return 1.f;
}

extern "C" size_t cuda_conv2d_workspace_bytes(int dt, int N, int C, int H, int W, int OC, int KH,
                                              int KW, int stride, int pad) {
    if (KH == 1 && KW == 1 && stride == 1 && pad == 0) return 0;
    int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    return (size_t)N * C * KH * KW * OH * OW * conv_dtype_size(dt);
}

extern "C" void cuda_conv2d_im2col(CudaCtx *c, int dt, void *out, const void *x, const void *w,
                            const void *b, int N, int C, int H, int W, int OC, int KH, int KW,
                            int stride, int pad, void *ws, size_t ws_bytes) {
    const int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int64_t P = OH * OW, K = (int64_t)C * KH * KW;
    CUDA_REQUIRE(N > 0 && C > 0 && OC > 0 && OH > 0 && OW > 0 && stride > 0 && pad >= 0);
    CUDA_REQUIRE(P <= INT32_MAX && K <= INT32_MAX);
    const size_t es = conv_dtype_size(dt);
    cudaDataType_t t = conv_cuda_type(dt);
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
    if (dt == CDT_F32 && c->allow_tf32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;

    const float beta = conv_bias_fill(c, dt, out, b, N, OC, P), alpha = 1.f;

    if (KH == 1 && KW == 1 && stride == 1 && pad == 0) { // col[n] = x[n] (C, P)
        CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
            c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)P, OC, (int)K, &alpha, x, t, (int)P,
            (long long)K * P, w, t, (int)K, 0, &beta, out, t, (int)P, (long long)OC * P, N, ct,
            CUBLAS_GEMM_DEFAULT));
        return;
    }

    const size_t per_sample = (size_t)K * P * es;
    CUDA_REQUIRE(ws != NULL && ws_bytes >= (size_t)K * 32 * es);
    if (ws_bytes >= per_sample) { // whole samples, as many as fit
        int chunk = (int)(ws_bytes / per_sample < (size_t)N ? ws_bytes / per_sample : (size_t)N);
        for (int n0 = 0; n0 < N; n0 += chunk) {
            int nb = N - n0 < chunk ? N - n0 : chunk;
            CUDA_DISPATCH(dt, {
                im2col_kernel<T><<<cuda_blocks((int64_t)nb * K * P, 256), 256, 0, c->stream>>>(
                    (T *)ws, (const T *)x, n0, nb, C, H, W, KH, KW, stride, pad, (int)OW, 0, P);
            });
            CUDA_CHECK_LAUNCH(c);
            CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
                c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)P, OC, (int)K, &alpha, ws, t, (int)P,
                (long long)K * P, w, t, (int)K, 0, &beta, (char *)out + (size_t)n0 * OC * P * es, t,
                (int)P, (long long)OC * P, nb, ct, CUBLAS_GEMM_DEFAULT));
        }
        return;
    }
    // one sample at a time, a range of Pc output pixels per GEMM (Pc a multiple of 32)
    int64_t Pc = (int64_t)(ws_bytes / ((size_t)K * es)) / 32 * 32;
    for (int n0 = 0; n0 < N; n0++) {
        for (int64_t p0 = 0; p0 < P; p0 += Pc) {
            int64_t pc = P - p0 < Pc ? P - p0 : Pc;
            CUDA_DISPATCH(dt, {
                im2col_kernel<T><<<cuda_blocks(K * pc, 256), 256, 0, c->stream>>>(
                    (T *)ws, (const T *)x, n0, 1, C, H, W, KH, KW, stride, pad, (int)OW, p0, pc);
            });
            CUDA_CHECK_LAUNCH(c);
            // out[n0][:, p0:p0+pc]: column-major (pc x OC) with ldc = P
            CUBLAS_CHECK(c, cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)pc, OC, (int)K,
                                      &alpha, ws, t, (int)pc, w, t, (int)K, &beta,
                                      (char *)out + ((size_t)n0 * OC * P + p0) * es, t, (int)P, ct,
                                      CUBLAS_GEMM_DEFAULT));
        }
    }
}

// ---- cuDNN ----------------------------------------------------------------------
// The legacy API (cudnnConvolutionForward and its algorithm queries), still
// shipped in cuDNN 9 (cudnn_cnn.h): the descriptors map one to one onto
// torch's Conv2d, cuDNN runs its engine heuristics underneath, and a plan is
// four descriptors and an enum, so the per-shape cache stays small. (The
// graph API would buy fused epilogues, which sdc does not use yet.)
//
// A plan is keyed by (dtype, shape, math mode, heuristics or timing) and
// remembers the workspace it was chosen for: the backend's workspace only
// grows, so a shape is re-planned at most a few times per run. The table is
// small and reused round robin; SD 1.5's UNet + VAE have ~40 conv shapes.

#define CONV_PLANS 64

typedef struct ConvPlan {
    int used;
    int dt, N, C, H, W, OC, KH, KW, stride, pad, math, find; // key
    size_t ws_avail;  // the workspace bytes the algorithm was chosen for
    int supported;    // 0: cuDNN said NOT_SUPPORTED (or the test hook): im2col
    int ws_limited;   // supported == 0 only for want of workspace: re-chosen when it changes
    cudnnConvolutionFwdAlgo_t algo;
    size_t ws_need;   // what algo needs (<= ws_avail)
    int pref_algo;    // cuDNN's first choice ignoring the workspace, -1 none
    size_t pref_ws;
    cudnnTensorDescriptor_t xd, yd; // (N, C, H, W), (N, OC, OH, OW)
    cudnnFilterDescriptor_t wd;     // (OC, C, KH, KW)
    cudnnConvolutionDescriptor_t cd;
} ConvPlan;

struct CudaConvCache {
    ConvPlan p[CONV_PLANS];
    int next;                 // round-robin slot to reuse when the table is full
    CudaConvChoice last;      // what the last cuda_conv2d_cudnn ran
    int simulate_unsupported; // test hook (cuda_conv2d_cudnn_simulate_unsupported)
};

static struct CudaConvCache *conv_cache(CudaCtx *c) {
    if (!c->conv_cache) {
        c->conv_cache = (struct CudaConvCache *)calloc(1, sizeof *c->conv_cache);
        if (!c->conv_cache) {
            cuda_fault(c, CUDA_ERR_OOM, "out of host memory for the cuDNN plan table");
            return NULL;
        }
        c->conv_cache->last.algo = c->conv_cache->last.preferred_algo = -1;
    }
    return c->conv_cache;
}

void cuda_conv_cache_destroy(CudaCtx *c) {
    struct CudaConvCache *cc = c->conv_cache;
    if (!cc) return;
    for (int i = 0; i < CONV_PLANS; i++) {
        ConvPlan *p = &cc->p[i];
        if (p->xd) CUDNN_CHECK(c, cudnnDestroyTensorDescriptor(p->xd));
        if (p->yd) CUDNN_CHECK(c, cudnnDestroyTensorDescriptor(p->yd));
        if (p->wd) CUDNN_CHECK(c, cudnnDestroyFilterDescriptor(p->wd));
        if (p->cd) CUDNN_CHECK(c, cudnnDestroyConvolutionDescriptor(p->cd));
    }
    free(cc);
    c->conv_cache = NULL;
}

static const char *const conv_algo_names[] = {
    "IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM",          "DIRECT",
    "FFT",           "FFT_TILING",            "WINOGRAD",      "WINOGRAD_NONFUSED",
};

extern "C" const char *cuda_conv_algo_name(int algo) {
    if (algo < 0) return "im2col";
    if (algo < (int)(sizeof conv_algo_names / sizeof conv_algo_names[0])) return conv_algo_names[algo];
    return "?";
}

// A query whose failure only means "not for this shape": NOT_SUPPORTED and
// BAD_PARAM (a shape outside cuDNN's limits) send the shape to im2col with
// one line on stderr; anything else (a missing cuDNN sub-library, no memory,
// ...) is recorded like CUDNN_CHECK, and the shape goes to im2col too.
#define CUDNN_SOFT(call, p)                                                                   \
    do {                                                                                      \
        cudnnStatus_t s_ = (call);                                                            \
        if (s_ == CUDNN_STATUS_NOT_SUPPORTED || s_ == CUDNN_STATUS_BAD_PARAM) {               \
            fprintf(stderr, "sdc: cuDNN: %s: %s for conv (%d,%d,%d,%d)->%d k%dx%d s%d p%d " \
                            "---> this shape uses im2col\n",                                  \
                    #call, cudnnGetErrorString(s_), (p)->N, (p)->C, (p)->H, (p)->W, (p)->OC,  \
                    (p)->KH, (p)->KW, (p)->stride, (p)->pad);                                 \
            (p)->supported = 0;                                                               \
            return;                                                                           \
        }                                                                                     \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                                     \
            cuda_fault(c, s_ == CUDNN_STATUS_ALLOC_FAILED ? CUDA_ERR_OOM : CUDA_ERR_LIB,       \
                       "cuDNN error at %s:%d (%s): %s", __FILE__, __LINE__, #call,            \
                       cudnnGetErrorString(s_));                                              \
            (p)->supported = 0;                                                               \
            return;                                                                           \
        }                                                                                     \
    } while (0)

static cudnnDataType_t conv_cudnn_type(int dt) {
    return dt == CDT_F32 ? CUDNN_DATA_FLOAT : dt == CDT_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

// Fills p (key already set) for a workspace of ws_bytes: descriptors, then
// the algorithm. Heuristics: the first of cuDNN's ranked list that succeeds
// and fits. Timing (find): cuDNN runs the candidates that fit on x, w and
// out (out is overwritten; the caller writes it afterwards).
static void conv_plan_make(CudaCtx *c, cudnnHandle_t h, ConvPlan *p, const void *x, const void *w,
                           void *out, void *ws, size_t ws_bytes) {
    const int OH = (p->H + 2 * p->pad - p->KH) / p->stride + 1;
    const int OW = (p->W + 2 * p->pad - p->KW) / p->stride + 1;
    p->ws_avail = ws_bytes;
    p->supported = 1;
    p->ws_limited = 0;
    p->pref_algo = -1;
    p->pref_ws = 0;
    p->ws_need = 0;
    if (conv_cache(c)->simulate_unsupported) {
        p->supported = 0;
        return;
    }
    // cuDNN's legacy descriptors index with int: larger tensors go to im2col
    if ((int64_t)p->N * p->C * p->H * p->W > INT32_MAX || (int64_t)p->N * p->OC * OH * OW > INT32_MAX) {
        p->supported = 0;
        return;
    }
    if (!p->xd) CUDNN_CHECK(c, cudnnCreateTensorDescriptor(&p->xd));
    if (!p->yd) CUDNN_CHECK(c, cudnnCreateTensorDescriptor(&p->yd));
    if (!p->wd) CUDNN_CHECK(c, cudnnCreateFilterDescriptor(&p->wd));
    if (!p->cd) CUDNN_CHECK(c, cudnnCreateConvolutionDescriptor(&p->cd));
    const cudnnDataType_t t = conv_cudnn_type(p->dt);
    CUDNN_SOFT(cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NCHW, t, p->N, p->C, p->H, p->W), p);
    CUDNN_SOFT(cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NCHW, t, p->N, p->OC, OH, OW), p);
    CUDNN_SOFT(cudnnSetFilter4dDescriptor(p->wd, t, CUDNN_TENSOR_NCHW, p->OC, p->C, p->KH, p->KW), p);
    // torch's Conv2d is a cross-correlation; fp32 compute for every dtype
    CUDNN_SOFT(cudnnSetConvolution2dDescriptor(p->cd, p->pad, p->pad, p->stride, p->stride, 1, 1,
                                               CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
               p);
    CUDNN_SOFT(cudnnSetConvolutionMathType(p->cd, (cudnnMathType_t)p->math), p);

    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = 0;
    if (p->find) {
        CUDNN_SOFT(cudnnFindConvolutionForwardAlgorithmEx(
                       h, p->xd, x, p->wd, w, p->cd, p->yd, out, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n,
                       perf, ws_bytes ? ws : NULL, ws_bytes),
                   p);
    } else {
        CUDNN_SOFT(cudnnGetConvolutionForwardAlgorithm_v7(h, p->xd, p->wd, p->cd, p->yd,
                                                          CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf),
                   p);
    }
    for (int i = 0; i < n; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
        // The descriptor's math mode (never changed) governs the run; skip results
        // measured with more than it allows: no TF32 for plain fp32, no fp16
        // down-conversion anywhere.
        if (perf[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;
        if (p->math == CUDNN_FMA_MATH && perf[i].mathType == CUDNN_TENSOR_OP_MATH) continue;
        size_t need = 0;
        cudnnStatus_t s = cudnnGetConvolutionForwardWorkspaceSize(h, p->xd, p->wd, p->cd, p->yd,
                                                                  perf[i].algo, &need);
        if (s == CUDNN_STATUS_NOT_SUPPORTED || s == CUDNN_STATUS_BAD_PARAM) continue;
        if (s != CUDNN_STATUS_SUCCESS) {
            CUDNN_CHECK(c, s); // cudnnGetConvolutionForwardWorkspaceSize
            p->supported = 0;
            return;
        }
        if (p->pref_algo < 0) {
            p->pref_algo = (int)perf[i].algo;
            p->pref_ws = need;
        }
        if (need <= ws_bytes && (ws || need == 0)) {
            p->algo = perf[i].algo;
            p->ws_need = need;
            return;
        }
    }
    fprintf(stderr, "sdc: cuDNN: no forward algorithm for conv (%d,%d,%d,%d)->%d k%dx%d s%d p%d "
                    "within a %zu-byte workspace ---> this shape uses im2col\n",
            p->N, p->C, p->H, p->W, p->OC, p->KH, p->KW, p->stride, p->pad, ws_bytes);
    p->supported = 0;
    p->ws_limited = 1;
}

// The plan for this call: found in the table (re-chosen when the workspace
// changed) or made in a free or reused slot.
static ConvPlan *conv_plan_get(CudaCtx *c, cudnnHandle_t h, int dt, int N, int C, int H, int W,
                               int OC, int KH, int KW, int stride, int pad, const void *x,
                               const void *w, void *out, void *ws, size_t ws_bytes) {
    struct CudaConvCache *cc = conv_cache(c);
    int math = dt != CDT_F32 || c->allow_tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
    int find = c->conv_algo == CUDA_CONV_CUDNN_FIND;
    ConvPlan *p = NULL;
    for (int i = 0; i < CONV_PLANS && !p; i++) {
        ConvPlan *q = &cc->p[i];
        if (q->used && q->dt == dt && q->N == N && q->C == C && q->H == H && q->W == W &&
            q->OC == OC && q->KH == KH && q->KW == KW && q->stride == stride && q->pad == pad &&
            q->math == math && q->find == find)
            p = q;
    }
    if (p && (p->ws_avail == ws_bytes || (!p->supported && !p->ws_limited)))
        return p; // a shape cuDNN does not support stays on im2col
    if (!p) {
        for (int i = 0; i < CONV_PLANS && !p; i++)
            if (!cc->p[i].used) p = &cc->p[i];
        if (!p) {
            p = &cc->p[cc->next];
            cc->next = (cc->next + 1) % CONV_PLANS;
        }
        p->used = 1;
        p->dt = dt, p->N = N, p->C = C, p->H = H, p->W = W, p->OC = OC;
        p->KH = KH, p->KW = KW, p->stride = stride, p->pad = pad, p->math = math, p->find = find;
    }
    conv_plan_make(c, h, p, x, w, out, ws, ws_bytes);
    return p;
}

extern "C" int cuda_conv2d_cudnn(CudaCtx *c, int dt, void *out, const void *x, const void *w,
                                 const void *b, int N, int C, int H, int W, int OC, int KH, int KW,
                                 int stride, int pad, void *ws, size_t ws_bytes) {
    const int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    CUDA_REQUIRE(N > 0 && C > 0 && OC > 0 && OH > 0 && OW > 0 && stride > 0 && pad >= 0);
    struct CudaConvCache *cc = conv_cache(c);
    if (!cc) return CUDA_CONV_IM2COL; // recorded: out of host memory
    cudnnHandle_t h = cuda_ctx_cudnn(c);
    ConvPlan *p = h ? conv_plan_get(c, h, dt, N, C, H, W, OC, KH, KW, stride, pad, x, w, out, ws,
                                    ws ? ws_bytes : 0)
                    : NULL;
    if (!p || !p->supported) {
        cc->last.algo = -1;
        cc->last.ws_bytes = 0;
        cc->last.preferred_algo = p ? p->pref_algo : -1;
        cc->last.preferred_ws_bytes = p ? p->pref_ws : 0;
        cuda_conv2d_im2col(c, dt, out, x, w, b, N, C, H, W, OC, KH, KW, stride, pad, ws, ws_bytes);
        return CUDA_CONV_IM2COL;
    }
    cc->last.algo = (int)p->algo;
    cc->last.ws_bytes = p->ws_need;
    cc->last.preferred_algo = p->pref_algo;
    cc->last.preferred_ws_bytes = p->pref_ws;
    // after a timing run (find), which wrote into out
    const float beta = conv_bias_fill(c, dt, out, b, N, OC, OH * OW), alpha = 1.f;
    cudnnStatus_t s = cudnnConvolutionForward(h, &alpha, p->xd, x, p->wd, w, p->cd, p->algo,
                                              p->ws_need ? ws : NULL, p->ws_need ? ws_bytes : 0,
                                              &beta, p->yd, out);
    if (s == CUDNN_STATUS_NOT_SUPPORTED || s == CUDNN_STATUS_BAD_PARAM) {
        // refused at run time (e.g. an engine that needs more pointer alignment): im2col from now on
        fprintf(stderr, "sdc: cuDNN: cudnnConvolutionForward (%s): %s for conv (%d,%d,%d,%d)->%d "
                        "k%dx%d s%d p%d ---> this shape uses im2col\n",
                cuda_conv_algo_name((int)p->algo), cudnnGetErrorString(s), N, C, H, W, OC, KH, KW,
                stride, pad);
        p->supported = 0;
        p->ws_limited = 0;
        cc->last.algo = -1;
        cc->last.ws_bytes = 0;
        cuda_conv2d_im2col(c, dt, out, x, w, b, N, C, H, W, OC, KH, KW, stride, pad, ws, ws_bytes);
        return CUDA_CONV_IM2COL;
    }
    if (s != CUDNN_STATUS_SUCCESS)
        cuda_fault(c, s == CUDNN_STATUS_ALLOC_FAILED ? CUDA_ERR_OOM : CUDA_ERR_LIB,
                   "cuDNN error at %s:%d (cudnnConvolutionForward, %s): %s (unset SDC_CUDA_CONV to use the im2col "
                   "convolution)", __FILE__, __LINE__, cuda_conv_algo_name((int)p->algo), cudnnGetErrorString(s));
    return CUDA_CONV_CUDNN;
}

extern "C" void cuda_conv2d_cudnn_last(const CudaCtx *c, CudaConvChoice *out) {
    if (c->conv_cache) {
        *out = c->conv_cache->last;
    } else {
        out->algo = out->preferred_algo = -1;
        out->ws_bytes = out->preferred_ws_bytes = 0;
    }
}

extern "C" void cuda_conv2d_cudnn_simulate_unsupported(CudaCtx *c, int on) {
    if (conv_cache(c)) c->conv_cache->simulate_unsupported = on;
}

// ---- entry point ----------------------------------------------------------------

extern "C" void cuda_conv2d(CudaCtx *c, int dt, void *out, const void *x, const void *w,
                            const void *b, int N, int C, int H, int W, int OC, int KH, int KW,
                            int stride, int pad, void *ws, size_t ws_bytes) {
    // im2col stays the default until cuda_conv2d_cudnn has passed tests/test_conv_cuda on a GPU;
    // then the default flips to cuDNN.
    if (c->conv_algo == CUDA_CONV_IM2COL)
        cuda_conv2d_im2col(c, dt, out, x, w, b, N, C, H, W, OC, KH, KW, stride, pad, ws, ws_bytes);
    else
        cuda_conv2d_cudnn(c, dt, out, x, w, b, N, C, H, W, OC, KH, KW, stride, pad, ws, ws_bytes);
}
