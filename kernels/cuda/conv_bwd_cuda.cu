// conv_bwd_cuda.cu: torch Conv2d's backward on the GPU through cuDNN's
// legacy convolution API (cudnnConvolutionBackwardData / BackwardFilter),
// NCHW, fp32 compute for every storage dtype; the bias gradient is
// cuda_channel_sums (train_cuda.cu).
//
// Algorithms: cuDNN's heuristics (the _v7 queries), the first one in its
// ranked list that is deterministic (CUDNN_DETERMINISTIC: the same gradients
// on every run, so a resumed training run equals an uninterrupted one on the
// same card), within the math mode sdc allows (no TF32 for plain fp32 unless
// ctx->allow_tf32, never fp16 down-conversion) and within the caller's
// workspace. When no deterministic algorithm fits, the first that fits is
// taken and said once on stderr. A plan (four descriptors and the two
// algorithms) is kept per shape, like the forward's (conv_cuda.cu).
//
// Written without a GPU: checked against the CPU by tests/test_bwd_cuda.c on
// the first card that runs tests/gpu/run.sh.
#include "cuda_common.cuh"

#include <string.h>

#define CONV_BWD_PLANS 64

typedef struct ConvBwdPlan {
    int used;
    int dt, N, C, H, W, OC, KH, KW, stride, pad, math; // key
    size_t ws_avail; // the workspace the algorithms were chosen for
    int ok;          // 0: no usable algorithm (recorded as a fault when met)
    cudnnConvolutionBwdDataAlgo_t data_algo;
    cudnnConvolutionBwdFilterAlgo_t filter_algo;
    size_t data_ws, filter_ws;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
} ConvBwdPlan;

struct ConvBwdCache {
    ConvBwdPlan p[CONV_BWD_PLANS];
    int next; // round-robin slot to reuse when the table is full
};

static struct ConvBwdCache *bwd_cache(CudaCtx *c) {
    if (!c->conv_bwd_cache) {
        c->conv_bwd_cache = (struct ConvBwdCache *)calloc(1, sizeof *c->conv_bwd_cache);
        if (!c->conv_bwd_cache) cuda_fault(c, CUDA_ERR_OOM, "out of host memory for the cuDNN backward plans");
    }
    return c->conv_bwd_cache;
}

static void bwd_plan_reset(CudaCtx *c, ConvBwdPlan *p) {
    if (p->xd) CUDNN_CHECK(c, cudnnDestroyTensorDescriptor(p->xd));
    if (p->yd) CUDNN_CHECK(c, cudnnDestroyTensorDescriptor(p->yd));
    if (p->wd) CUDNN_CHECK(c, cudnnDestroyFilterDescriptor(p->wd));
    if (p->cd) CUDNN_CHECK(c, cudnnDestroyConvolutionDescriptor(p->cd));
    memset(p, 0, sizeof *p);
}

void cuda_conv_bwd_cache_destroy(CudaCtx *c) {
    if (!c->conv_bwd_cache) return;
    for (int i = 0; i < CONV_BWD_PLANS; i++) bwd_plan_reset(c, &c->conv_bwd_cache->p[i]);
    free(c->conv_bwd_cache);
    c->conv_bwd_cache = NULL;
}

static cudnnDataType_t bwd_cudnn_type(int dt) {
    return dt == CDT_F32 ? CUDNN_DATA_FLOAT : dt == CDT_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

// Whether a ranked result may run under the plan's math mode.
static int math_ok(int plan_math, cudnnMathType_t m) {
    if (m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) return 0;
    if (plan_math == CUDNN_FMA_MATH && m == CUDNN_TENSOR_OP_MATH) return 0;
    return 1;
}

// Among cuDNN's ranked results (perf[0..n)), the first that succeeded, may run
// under the plan's math mode and fits ws_bytes (ws_of(i, &need): its
// workspace), preferring deterministic ones; the first that fits otherwise
// (said on stderr). 1 with *algo and *ws, or 0.
template <typename Perf, typename WsOf>
static int pick_algo(const ConvBwdPlan *p, const char *what, const Perf *perf, int n, size_t ws_bytes, int *algo,
                     size_t *ws, WsOf ws_of) {
    int any = -1;
    size_t any_ws = 0;
    for (int i = 0; i < n; i++) {
        size_t need = 0;
        if (perf[i].status != CUDNN_STATUS_SUCCESS || !math_ok(p->math, perf[i].mathType) ||
            ws_of(i, &need) != CUDNN_STATUS_SUCCESS || need > ws_bytes)
            continue;
        if (perf[i].determinism == CUDNN_DETERMINISTIC) {
            *algo = (int)perf[i].algo, *ws = need;
            return 1;
        }
        if (any < 0) any = (int)perf[i].algo, any_ws = need;
    }
    if (any < 0) return 0;
    fprintf(stderr, "sdc: cuDNN: no deterministic backward-%s algorithm for conv (%d,%d,%d,%d)->%d k%dx%d s%d p%d "
            "within %zu bytes: gradients may differ between runs\n", what, p->N, p->C, p->H, p->W, p->OC, p->KH,
            p->KW, p->stride, p->pad, ws_bytes);
    *algo = any, *ws = any_ws;
    return 1;
}

// Fills p for a workspace of ws_bytes; p->ok says whether it can run.
static void bwd_plan_make(CudaCtx *c, cudnnHandle_t h, ConvBwdPlan *p, size_t ws_bytes) {
    const int OH = (p->H + 2 * p->pad - p->KH) / p->stride + 1;
    const int OW = (p->W + 2 * p->pad - p->KW) / p->stride + 1;
    p->ok = 0;
    p->ws_avail = ws_bytes;
    if (!p->xd) CUDNN_CHECK(c, cudnnCreateTensorDescriptor(&p->xd));
    if (!p->yd) CUDNN_CHECK(c, cudnnCreateTensorDescriptor(&p->yd));
    if (!p->wd) CUDNN_CHECK(c, cudnnCreateFilterDescriptor(&p->wd));
    if (!p->cd) CUDNN_CHECK(c, cudnnCreateConvolutionDescriptor(&p->cd));
    if (!p->xd || !p->yd || !p->wd || !p->cd) return; // recorded
    const cudnnDataType_t t = bwd_cudnn_type(p->dt);
    CUDNN_CHECK(c, cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NCHW, t, p->N, p->C, p->H, p->W));
    CUDNN_CHECK(c, cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NCHW, t, p->N, p->OC, OH, OW));
    CUDNN_CHECK(c, cudnnSetFilter4dDescriptor(p->wd, t, CUDNN_TENSOR_NCHW, p->OC, p->C, p->KH, p->KW));
    CUDNN_CHECK(c, cudnnSetConvolution2dDescriptor(p->cd, p->pad, p->pad, p->stride, p->stride, 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(c, cudnnSetConvolutionMathType(p->cd, (cudnnMathType_t)p->math));
    if (cuda_ctx_faulted(c)) return;

    // backward data, then filter
    cudnnConvolutionBwdDataAlgoPerf_t dperf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    cudnnConvolutionBwdFilterAlgoPerf_t fperf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int n = 0, algo = -1, found = 0;
    CUDNN_CHECK(c, cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p->wd, p->yd, p->cd, p->xd,
                                                               CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, dperf));
    found = pick_algo(p, "data", dperf, n, ws_bytes, &algo, &p->data_ws, [&](int i, size_t *need) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->wd, p->yd, p->cd, p->xd, dperf[i].algo, need);
    });
    if (!found) return;
    p->data_algo = (cudnnConvolutionBwdDataAlgo_t)algo;
    n = 0;
    CUDNN_CHECK(c, cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->xd, p->yd, p->cd, p->wd,
                                                                 CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, fperf));
    found = pick_algo(p, "filter", fperf, n, ws_bytes, &algo, &p->filter_ws, [&](int i, size_t *need) {
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->xd, p->yd, p->cd, p->wd, fperf[i].algo, need);
    });
    p->filter_algo = (cudnnConvolutionBwdFilterAlgo_t)algo;
    p->ok = found && !cuda_ctx_faulted(c);
}

static ConvBwdPlan *bwd_plan_get(CudaCtx *c, cudnnHandle_t h, int dt, int N, int C, int H, int W, int OC,
                                 int KH, int KW, int stride, int pad, size_t ws_bytes) {
    struct ConvBwdCache *cc = bwd_cache(c);
    if (!cc) return NULL;
    const int math = dt != CDT_F32 || c->allow_tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
    ConvBwdPlan *p = NULL;
    for (int i = 0; i < CONV_BWD_PLANS && !p; i++) {
        ConvBwdPlan *q = &cc->p[i];
        if (q->used && q->dt == dt && q->N == N && q->C == C && q->H == H && q->W == W && q->OC == OC &&
            q->KH == KH && q->KW == KW && q->stride == stride && q->pad == pad && q->math == math)
            p = q;
    }
    if (p && p->ws_avail == ws_bytes && p->ok) return p; // a failed plan is tried again (the failure may pass)
    if (!p) {
        for (int i = 0; i < CONV_BWD_PLANS && !p; i++)
            if (!cc->p[i].used) p = &cc->p[i];
        if (!p) {
            p = &cc->p[cc->next];
            cc->next = (cc->next + 1) % CONV_BWD_PLANS;
            bwd_plan_reset(c, p);
        }
        p->used = 1;
        p->dt = dt, p->N = N, p->C = C, p->H = H, p->W = W, p->OC = OC;
        p->KH = KH, p->KW = KW, p->stride = stride, p->pad = pad, p->math = math;
    }
    bwd_plan_make(c, h, p, ws_bytes);
    return p;
}

extern "C" int cuda_conv2d_backward(CudaCtx *c, int dt, void *dx, void *dw, void *db, const void *dy,
                                    const void *x, const void *w, int N, int C, int H, int W, int OC, int KH,
                                    int KW, int stride, int pad, void *ws, size_t ws_bytes) {
    const int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    CUDA_REQUIRE(N > 0 && C > 0 && OC > 0 && OH > 0 && OW > 0 && stride > 0 && pad >= 0);
    if (!ws) ws_bytes = 0;
    if (db) cuda_channel_sums(c, dt, db, dy, N, OC, OH * OW, 1);
    if (!dx && !dw) return 0;
    if ((int64_t)N * C * H * W > INT32_MAX || (int64_t)N * OC * OH * OW > INT32_MAX) {
        cuda_fault(c, CUDA_ERR_LIB, "conv2d backward: (%d, %d, %d, %d) -> %d channels is beyond cuDNN's 32-bit "
                   "indexing ---> use a smaller batch or image size", N, C, H, W, OC);
        return -1;
    }
    cudnnHandle_t h = cuda_ctx_cudnn(c);
    if (!h) {
        cuda_fault(c, CUDA_ERR_LIB, "conv2d backward needs cuDNN, which could not be initialised ---> install "
                   "cuDNN 9 for this CUDA version, or train with --device cpu");
        return -1;
    }
    ConvBwdPlan *p = bwd_plan_get(c, h, dt, N, C, H, W, OC, KH, KW, stride, pad, ws_bytes);
    if (!p) return -1; // recorded
    if (!p->ok) {
        if (!cuda_ctx_faulted(c))
            cuda_fault(c, CUDA_ERR_LIB, "conv2d backward: cuDNN has no algorithm for conv (%d,%d,%d,%d)->%d "
                       "k%dx%d s%d p%d within a %zu-byte workspace", N, C, H, W, OC, KH, KW, stride, pad,
                       ws_bytes);
        return -1;
    }
    const float one = 1.f, zero = 0.f;
    if (dx)
        CUDNN_CHECK(c, cudnnConvolutionBackwardData(h, &one, p->wd, w, p->yd, dy, p->cd, p->data_algo,
                                                    p->data_ws ? ws : NULL, p->data_ws, &zero, p->xd, dx));
    if (dw) // beta 1: the parameter gradient accumulates
        CUDNN_CHECK(c, cudnnConvolutionBackwardFilter(h, &one, p->xd, x, p->yd, dy, p->cd, p->filter_algo,
                                                      p->filter_ws ? ws : NULL, p->filter_ws, &one, p->wd, dw));
    return cuda_ctx_faulted(c) ? -1 : 0;
}
