// backend_cuda.c: the CUDA backend: the op table of backend.h over the raw
// kernels of kernels/cuda (ops_cuda.h). This file checks shapes and dtypes
// (SDC_CHECK, like the CPU backend) and turns tensors into pointers and
// sizes; all CUDA calls live in kernels/cuda, so this is plain C.
//
// Failures inside an op end in an error the caller gets back (backend.h: status): a failed
// CUDA / cuBLAS / cuDNN call is recorded by the kernels in the CudaCtx, a
// workspace that cannot be allocated or a size the kernels cannot index here
// (CudaBackend.fault); after either, every op returns at once until status
// takes the failure (SDC_ERR_OOM, SDC_ERR_DEVICE, SDC_ERR_UNSUPPORTED).
//
// Activations and parameters share one dtype (act_dtype: F32, F16 or BF16;
// param_dtype = act_dtype), arithmetic is fp32 inside every kernel. fp32
// GEMMs do not use TF32 unless the environment sets SDC_TF32=1 (read once at
// create), so the F32 backend matches the CPU reference to ~1e-6.
//
// conv2d is im2col + cuBLAS (conv_cuda.cu; cuDNN with SDC_CUDA_CONV=cudnn,
// within the same workspace) with a workspace this backend owns and grows on
// demand up to CONV_WS_CAP (so after the first pass of a model it never
// allocates again); attention is a flash-style kernel
// (attention_cuda.cu). Every entry of the table is set.
//
// Built without SDC_HAVE_CUDA, backend_cuda_create fails with SDC_ERR_DEVICE
// and a hint, backend_cuda_available returns 0.
#include "core/backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void backend_cuda_destroy(Backend *be);

#ifndef SDC_HAVE_CUDA

int backend_cuda_available(void) { return 0; }

int backend_cuda_create(Backend **out, int device_index, DType act_dtype, SdcError *err) {
    (void)device_index;
    (void)act_dtype;
    *out = NULL;
    return sdc_err(err, SDC_ERR_DEVICE,
                   "sdc was built without CUDA ---> rebuild on a machine with the CUDA toolkit, "
                   "or use --device cpu");
}

void backend_cuda_destroy(Backend *be) { (void)be; }

#else

#include "cuda/ops_cuda.h"

_Static_assert((int)DT_F32 == CDT_F32 && (int)DT_F16 == CDT_F16 && (int)DT_BF16 == CDT_BF16,
               "ops_cuda.h dtype codes must equal DType");

int backend_cuda_available(void) { return 1; }

// be->impl is the kernels' CudaCtx (bench/ reads it as such); what the
// backend owns beside it lives in the allocation around the Backend.
typedef struct CudaBackend {
    Backend be; // first: a Backend * of this backend is a CudaBackend *
    void *conv_ws; // im2col workspace (device), conv_ws_bytes long
    size_t conv_ws_bytes;
    void *attn_ws; // attention backward's blocks (device), attn_ws_bytes long
    size_t attn_ws_bytes;
    SdcError fault; // the first failure of this file's own since status took the last one
} CudaBackend;

// The whole-batch im2col of SD 1.5's largest UNet conv (320 ch 3x3 at 64x64)
// for batch 8 in bf16 is 189 MB; larger ones run in chunks.
#define CONV_WS_CAP ((size_t)256 << 20)

static CudaBackend *impl_of(const Backend *be) { return (CudaBackend *)be; }
static CudaCtx *ctx_of(const Backend *be) { return (CudaCtx *)be->impl; }

// ---- checks ---------------------------------------------------------------------

// An activation tensor of this backend: on the GPU, in act_dtype.
#define CHECK_ACT(be, t) SDC_CHECK((t)->device == DEV_CUDA && (t)->dtype == (be)->act_dtype)
#define CHECK_PARAM(be, t) SDC_CHECK((t)->device == DEV_CUDA && (t)->dtype == (be)->param_dtype)

static int64_t last_dim(const Tensor *t) { return t->shape[t->ndim - 1]; }

// product of dims 2.. (H*W for NCHW); 1 for (N, C)
static int64_t spatial(const Tensor *t) {
    int64_t s = 1;
    for (int i = 2; i < t->ndim; i++) s *= t->shape[i];
    return s;
}

// An op after a failure does nothing (its output is undefined anyway).
static int faulted(const Backend *be) {
    return ((const CudaBackend *)be)->fault.code || cuda_ctx_faulted((const CudaCtx *)be->impl);
}
#define SKIP_AFTER_FAULT(be) \
    do {                     \
        if (faulted(be)) return; \
    } while (0)

// A size the user's batch, image or model gives that the kernels cannot
// index (32-bit offsets, 65535 grid rows): recorded as SDC_ERR_UNSUPPORTED
// naming the op and shape (status returns it); the process goes on. 1 when too large.
static int too_large(const Backend *be, int ok, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int too_large(const Backend *be, int ok, const char *op, const char *fmt, ...) {
    if (ok) return 0;
    CudaBackend *im = impl_of(be);
    if (!im->fault.code) {
        char shape[160];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(shape, sizeof shape, fmt, ap);
        va_end(ap);
        sdc_err(&im->fault, SDC_ERR_UNSUPPORTED, "CUDA %s: %s is too large for the kernels' indexing ---> use a "
                "smaller batch or image size (or --vae-tiling)", op, shape);
    }
    return 1;
}

static int cu_status(const Backend *be, SdcError *err) {
    CudaBackend *im = impl_of(be);
    char msg[600];
    const int k = cuda_ctx_take_fault(ctx_of(be), msg, sizeof msg);
    int code = im->fault.code;
    if (code) {
        if (err) *err = im->fault;
    } else if (k) {
        code = k == CUDA_ERR_OOM ? SDC_ERR_OOM : SDC_ERR_DEVICE;
        sdc_err(err, code, "CUDA backend: %s ---> %s", msg,
                k == CUDA_ERR_OOM ? "out of GPU memory: use a smaller batch or image size, or free the GPU"
                                  : "the GPU or its libraries failed; rerun with --device cpu to tell a data problem "
                                    "from a device one (CUDA_LAUNCH_BLOCKING=1 names the failing kernel)");
    }
    im->fault = (SdcError){0};
    return code;
}

static void check_elementwise(const Backend *be, const Tensor *out, const Tensor *x) {
    CHECK_ACT(be, out);
    CHECK_ACT(be, x);
    SDC_CHECK(tensor_numel(out) == tensor_numel(x));
}

// ---- memory ---------------------------------------------------------------------

static void *cu_alloc(const Backend *be, size_t bytes) { return cuda_malloc(ctx_of(be), bytes); }
static void cu_free(const Backend *be, void *p) { cuda_free(ctx_of(be), p); }
static int cu_mem_info(const Backend *be, size_t *free_bytes, size_t *total_bytes) {
    return cuda_mem_info(ctx_of(be), free_bytes, total_bytes);
}
static void cu_upload(const Backend *be, void *dst, const void *src, size_t bytes) {
    cuda_upload(ctx_of(be), dst, src, bytes);
}
static void cu_download(const Backend *be, void *dst, const void *src, size_t bytes) {
    cuda_download(ctx_of(be), dst, src, bytes);
}
static void cu_zero(const Backend *be, void *dst, size_t bytes) {
    SKIP_AFTER_FAULT(be);
    if (bytes) cuda_memset_async(ctx_of(be), dst, 0, bytes);
}
static void cu_sync(const Backend *be) { cuda_ctx_sync(ctx_of(be)); }

// ---- ops ------------------------------------------------------------------------

// Makes the device workspace *ws (of *have bytes) at least `want` bytes, or
// as large as the device allows down to `least`; out of memory below that is
// recorded as SDC_ERR_OOM naming `what` ("conv2d", with `kind` "im2col ").
// Grows only.
static void ws_grow(const Backend *be, void **ws, size_t *have, size_t want, size_t least, const char *what,
                    const char *kind) {
    CudaBackend *im = impl_of(be);
    CudaCtx *ctx = ctx_of(be);
    if (want < least) want = least;
    if (*have >= want) return;
    cuda_free(ctx, *ws); // synchronises: no op in flight still reads it
    *ws = NULL;
    *have = 0;
    for (size_t n = want; n >= least; n /= 2) {
        if ((*ws = cuda_malloc(ctx, n)) != NULL) {
            *have = n;
            return;
        }
        if (n == least) break;
        if (n / 2 < least) n = least * 2; // try `least` itself last
    }
    if (!im->fault.code)
        sdc_err(&im->fault, SDC_ERR_OOM, "CUDA %s: out of GPU memory for a %zu-byte %sworkspace ---> use a smaller "
                "batch or image size", what, least, kind);
}

// The conv workspace: at most CONV_WS_CAP; after the first pass of a model
// every conv finds it large enough.
static void conv_ws_reserve(const Backend *be, size_t want, size_t least) {
    CudaBackend *im = impl_of(be);
    if (want > CONV_WS_CAP) want = CONV_WS_CAP;
    ws_grow(be, &im->conv_ws, &im->conv_ws_bytes, want, least, "conv2d", "im2col ");
}

static void cu_conv2d(const Backend *be, Tensor *out, const Tensor *x, const Tensor *w,
                      const Tensor *b, int stride, int pad) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, out);
    CHECK_ACT(be, x);
    CHECK_PARAM(be, w);
    SDC_CHECK(x->ndim == 4 && w->ndim == 4 && out->ndim == 4 && out->data != x->data);
    SDC_CHECK(stride > 0 && pad >= 0);
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t OC = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    SDC_CHECK(w->shape[1] == C && H + 2 * pad >= KH && W + 2 * pad >= KW);
    int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    SDC_CHECK(out->shape[0] == N && out->shape[1] == OC && out->shape[2] == OH && out->shape[3] == OW);
    if (too_large(be, N * C * H * W <= INT32_MAX * 8LL && C * KH * KW <= INT32_MAX && OH * OW <= INT32_MAX,
                  "conv2d", "input (%lld, %lld, %lld, %lld)", (long long)N, (long long)C, (long long)H, (long long)W))
        return;
    if (b) {
        CHECK_PARAM(be, b);
        SDC_CHECK(tensor_numel(b) == OC);
    }
    size_t want = cuda_conv2d_workspace_bytes(be->act_dtype, (int)N, (int)C, (int)H, (int)W, (int)OC,
                                              (int)KH, (int)KW, stride, pad);
    if (want) conv_ws_reserve(be, want, (size_t)(C * KH * KW) * 32 * dtype_size(be->act_dtype));
    CudaBackend *im = impl_of(be);
    if (want && !im->conv_ws) return; // recorded by conv_ws_reserve
    cuda_conv2d(ctx_of(be), be->act_dtype, out->data, x->data, w->data, b ? b->data : NULL, (int)N,
                (int)C, (int)H, (int)W, (int)OC, (int)KH, (int)KW, stride, pad, im->conv_ws,
                im->conv_ws_bytes);
}

static void cu_attention(const Backend *be, Tensor *out, const Tensor *q, const Tensor *k,
                         const Tensor *v, int heads, int causal) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, out);
    CHECK_ACT(be, q);
    CHECK_ACT(be, k);
    CHECK_ACT(be, v);
    SDC_CHECK(q->ndim == 3 && k->ndim == 3 && v->ndim == 3 && tensor_same_shape(out, q));
    SDC_CHECK(tensor_same_shape(k, v) && out->data != q->data && out->data != k->data &&
              out->data != v->data);
    int64_t B = q->shape[0], Lq = q->shape[1], HD = q->shape[2], Lk = k->shape[1];
    SDC_CHECK(heads > 0 && HD % heads == 0 && k->shape[0] == B && k->shape[2] == HD);
    SDC_CHECK(!causal || Lq == Lk);
    int64_t D = HD / heads;
    if (too_large(be, D <= CUDA_ATTN_MAX_HEAD_DIM && B * heads <= 65535 && Lq <= INT32_MAX && Lk <= INT32_MAX,
                  "attention", "%lld rows x %d heads of dim %lld over %lld x %lld tokens", (long long)B, heads,
                  (long long)D, (long long)Lq, (long long)Lk))
        return;
    cuda_attention(ctx_of(be), be->act_dtype, out->data, q->data, k->data, v->data, (int)B, (int)Lq,
                   (int)Lk, heads, (int)D, causal);
}

static void cu_linear(const Backend *be, Tensor *out, const Tensor *x, const Tensor *w,
                      const Tensor *b) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, out);
    CHECK_ACT(be, x);
    CHECK_PARAM(be, w);
    SDC_CHECK(w->ndim == 2 && out->data != x->data);
    int64_t K = last_dim(x), N = w->shape[0];
    SDC_CHECK(w->shape[1] == K && last_dim(out) == N);
    int64_t M = tensor_numel(x) / K;
    SDC_CHECK(tensor_numel(out) == M * N);
    if (b) {
        CHECK_PARAM(be, b);
        SDC_CHECK(tensor_numel(b) == N);
    }
    cuda_linear(ctx_of(be), be->act_dtype, out->data, x->data, w->data, b ? b->data : NULL, M, N, K);
}

static void cu_group_norm(const Backend *be, Tensor *out, const Tensor *x, const Tensor *gamma,
                          const Tensor *beta, int groups, float eps, int silu) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    CHECK_PARAM(be, gamma);
    CHECK_PARAM(be, beta);
    SDC_CHECK(x->ndim >= 2 && tensor_same_shape(out, x) && out->data != x->data);
    int64_t N = x->shape[0], C = x->shape[1];
    SDC_CHECK(groups > 0 && C % groups == 0);
    SDC_CHECK(tensor_numel(gamma) == C && tensor_numel(beta) == C);
    cuda_group_norm(ctx_of(be), be->act_dtype, out->data, x->data, gamma->data, beta->data, N, C,
                    spatial(x), groups, eps, silu);
}

static void cu_layer_norm(const Backend *be, Tensor *out, const Tensor *x, const Tensor *gamma,
                          const Tensor *beta, float eps) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    CHECK_PARAM(be, gamma);
    CHECK_PARAM(be, beta);
    int64_t D = last_dim(x);
    SDC_CHECK(last_dim(out) == D && tensor_numel(gamma) == D && tensor_numel(beta) == D);
    cuda_layer_norm(ctx_of(be), be->act_dtype, out->data, x->data, gamma->data, beta->data,
                    tensor_numel(x) / D, D, eps);
}

static void cu_softmax(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    int64_t D = last_dim(x);
    SDC_CHECK(last_dim(out) == D);
    cuda_softmax(ctx_of(be), be->act_dtype, out->data, x->data, tensor_numel(x) / D, D);
}

static void cu_silu(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    cuda_activation(ctx_of(be), be->act_dtype, CUDA_ACT_SILU, out->data, x->data, tensor_numel(x));
}

static void cu_gelu(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    cuda_activation(ctx_of(be), be->act_dtype, CUDA_ACT_GELU, out->data, x->data, tensor_numel(x));
}

static void cu_quick_gelu(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    cuda_activation(ctx_of(be), be->act_dtype, CUDA_ACT_QUICK_GELU, out->data, x->data,
                    tensor_numel(x));
}

static void cu_geglu(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, out);
    CHECK_ACT(be, x);
    SDC_CHECK(out->data != x->data);
    int64_t F2 = last_dim(x), F = last_dim(out);
    SDC_CHECK(F2 == 2 * F && tensor_numel(out) * 2 == tensor_numel(x));
    cuda_geglu(ctx_of(be), be->act_dtype, out->data, x->data, tensor_numel(out) / F, F);
}

static void cu_upsample_nearest2x(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, out);
    CHECK_ACT(be, x);
    SDC_CHECK(x->ndim == 4 && out->ndim == 4 && out->data != x->data);
    SDC_CHECK(out->shape[0] == x->shape[0] && out->shape[1] == x->shape[1] &&
              (out->shape[2] == 2 * x->shape[2] || out->shape[2] == 2 * x->shape[2] - 1) &&
              (out->shape[3] == 2 * x->shape[3] || out->shape[3] == 2 * x->shape[3] - 1));
    cuda_upsample_nearest2x(ctx_of(be), be->act_dtype, out->data, x->data, x->shape[0] * x->shape[1],
                            x->shape[2], x->shape[3], out->shape[2], out->shape[3]);
}

static void cu_timestep_embedding(const Backend *be, Tensor *out, const float *t,
                                  int flip_sin_to_cos, float freq_shift) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, out);
    SDC_CHECK(out->ndim == 2);
    cuda_timestep_embedding(ctx_of(be), be->act_dtype, out->data, t, out->shape[0], out->shape[1],
                            flip_sin_to_cos, freq_shift);
}

static void cu_add(const Backend *be, Tensor *out, const Tensor *a, const Tensor *b) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, a);
    check_elementwise(be, out, b);
    cuda_add(ctx_of(be), be->act_dtype, out->data, a->data, b->data, tensor_numel(out));
}

static void cu_add_channel_bias(const Backend *be, Tensor *out, const Tensor *x, const Tensor *bias) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    CHECK_ACT(be, bias); // a time embedding computed on the fly, so an activation
    SDC_CHECK(x->ndim >= 2);
    int64_t NC = x->shape[0] * x->shape[1];
    SDC_CHECK(tensor_numel(bias) == NC);
    if (too_large(be, NC <= INT32_MAX, "channel bias", "%lld channels", (long long)NC)) return;
    cuda_add_channel_bias(ctx_of(be), be->act_dtype, out->data, x->data, bias->data, NC, spatial(x));
}

static void cu_scale(const Backend *be, Tensor *out, const Tensor *x, float s) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    cuda_scale(ctx_of(be), be->act_dtype, out->data, x->data, s, tensor_numel(x));
}

static void cu_concat_channels(const Backend *be, Tensor *out, const Tensor *a, const Tensor *b) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, out);
    CHECK_ACT(be, a);
    CHECK_ACT(be, b);
    SDC_CHECK(a->ndim >= 2 && b->ndim == a->ndim && out->ndim == a->ndim);
    int64_t N = a->shape[0], Ca = a->shape[1], Cb = b->shape[1], S = spatial(a);
    SDC_CHECK(b->shape[0] == N && spatial(b) == S && out->shape[0] == N &&
              out->shape[1] == Ca + Cb && spatial(out) == S);
    SDC_CHECK(out->data != a->data && out->data != b->data);
    cuda_concat_channels(ctx_of(be), be->act_dtype, out->data, a->data, b->data, N, Ca * S, Cb * S);
}

static void cu_nchw_to_nlc(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    SDC_CHECK(x->ndim == 4 && out->ndim == 3 && out->data != x->data);
    int64_t N = x->shape[0], C = x->shape[1], S = spatial(x);
    SDC_CHECK(out->shape[0] == N && out->shape[1] == S && out->shape[2] == C);
    if (too_large(be, N <= 65535 && (C + 31) / 32 <= 65535, "transpose", "(%lld, %lld, %lld)", (long long)N,
                  (long long)C, (long long)S))
        return;
    cuda_transpose(ctx_of(be), be->act_dtype, out->data, x->data, N, C, S); // (N, C, S) -> (N, S, C)
}

static void cu_nlc_to_nchw(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    check_elementwise(be, out, x);
    SDC_CHECK(x->ndim == 3 && out->ndim == 4 && out->data != x->data);
    int64_t N = out->shape[0], C = out->shape[1], S = spatial(out);
    SDC_CHECK(x->shape[0] == N && x->shape[1] == S && x->shape[2] == C);
    if (too_large(be, N <= 65535 && (S + 31) / 32 <= 65535, "transpose", "(%lld, %lld, %lld)", (long long)N,
                  (long long)S, (long long)C))
        return;
    cuda_transpose(ctx_of(be), be->act_dtype, out->data, x->data, N, S, C); // (N, S, C) -> (N, C, S)
}

static void cu_embedding(const Backend *be, Tensor *out, const Tensor *ids, const Tensor *table) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, out);
    CHECK_PARAM(be, table);
    SDC_CHECK(ids->dtype == DT_I32 && ids->device == DEV_CUDA && table->ndim == 2);
    int64_t n = tensor_numel(ids), V = table->shape[0], D = table->shape[1];
    SDC_CHECK(last_dim(out) == D && tensor_numel(out) == n * D);
    cuda_embedding(ctx_of(be), be->act_dtype, out->data, (const int32_t *)ids->data, table->data, n,
                   V, D);
}

static int is_float_dtype(DType dt) { return dt == DT_F32 || dt == DT_F16 || dt == DT_BF16; }

static void cu_copy(const Backend *be, Tensor *out, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    SDC_CHECK(out->device == DEV_CUDA && x->device == DEV_CUDA);
    int64_t n = tensor_numel(x);
    SDC_CHECK(tensor_numel(out) == n);
    if (out->dtype == x->dtype) { // any dtype, U8 / I32 included: bytes
        cuda_copy_bytes(ctx_of(be), out->data, x->data, tensor_bytes(x));
        return;
    }
    SDC_CHECK(is_float_dtype(out->dtype) && is_float_dtype(x->dtype));
    cuda_convert(ctx_of(be), out->data, out->dtype, x->data, x->dtype, n);
}

// ---- backward and training (issue 12; run on a GPU by tests/test_bwd_cuda.c) -------------
// The CPU backend's contracts (backend.h; kernels/cpu/ops_cpu_bwd.h). The
// optimizer, EMA and sum-of-squares entries take fp32 pointers: master weights,
// gradients and moments are F32 on the device whatever the activations.

#define CHECK_ACT_OPT(be, t) SDC_CHECK(!(t) || ((t)->device == DEV_CUDA && (t)->dtype == (be)->act_dtype))
#define CHECK_PARAM_OPT(be, t) SDC_CHECK(!(t) || ((t)->device == DEV_CUDA && (t)->dtype == (be)->param_dtype))
static void *data_or_null(const Tensor *t) { return t ? t->data : NULL; }

// The tensors of a linear or conv backward: where they live, their dtypes.
static void check_weighted_bwd(const Backend *be, const Tensor *dx, const Tensor *dw, const Tensor *db,
                               const Tensor *dy, const Tensor *x, const Tensor *w) {
    CHECK_ACT(be, dy);
    CHECK_ACT(be, x);
    CHECK_PARAM(be, w);
    CHECK_ACT_OPT(be, dx);
    CHECK_PARAM_OPT(be, dw);
    CHECK_PARAM_OPT(be, db);
}

static void cu_linear_backward(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                               const Tensor *x, const Tensor *w) {
    SKIP_AFTER_FAULT(be);
    check_weighted_bwd(be, dx, dw, db, dy, x, w);
    SDC_CHECK(w->ndim == 2);
    int64_t N = w->shape[0], K = w->shape[1], M = tensor_numel(x) / K;
    SDC_CHECK(last_dim(x) == K && tensor_numel(dy) == M * N);
    SDC_CHECK(!dx || tensor_numel(dx) == M * K);
    SDC_CHECK(!dw || tensor_same_shape(dw, w));
    SDC_CHECK(!db || tensor_numel(db) == N);
    if (M == 0 || N == 0 || K == 0) return; // nothing to compute (the CPU backend does nothing either)
    if (too_large(be, M <= INT32_MAX, "linear backward", "%lld rows", (long long)M)) return;
    cuda_linear_backward(ctx_of(be), be->act_dtype, data_or_null(dx), data_or_null(dw), data_or_null(db), dy->data,
                         x->data, w->data, M, N, K);
}

static void cu_conv2d_backward(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                               const Tensor *x, const Tensor *w, int stride, int pad) {
    SKIP_AFTER_FAULT(be);
    check_weighted_bwd(be, dx, dw, db, dy, x, w);
    SDC_CHECK(x->ndim == 4 && w->ndim == 4 && dy->ndim == 4 && stride >= 1 && pad >= 0);
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t OC = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    SDC_CHECK(w->shape[1] == C && dy->shape[0] == N && dy->shape[1] == OC && dy->shape[2] == OH &&
              dy->shape[3] == OW);
    SDC_CHECK(!dx || tensor_same_shape(dx, x));
    SDC_CHECK(!dw || tensor_same_shape(dw, w));
    SDC_CHECK(!db || tensor_numel(db) == OC);
    if (too_large(be, N * C * H * W <= INT32_MAX && N * OC * OH * OW <= INT32_MAX, "conv2d backward",
                  "input (%lld, %lld, %lld, %lld)", (long long)N, (long long)C, (long long)H, (long long)W))
        return;
    // cuDNN's backward algorithms pick what fits the workspace: the forward's im2col size, at least 32 MiB
    size_t want = cuda_conv2d_workspace_bytes(be->act_dtype, (int)N, (int)C, (int)H, (int)W, (int)OC, (int)KH,
                                              (int)KW, stride, pad);
    if (want < ((size_t)32 << 20)) want = (size_t)32 << 20;
    conv_ws_reserve(be, want, (size_t)1 << 20);
    CudaBackend *im = impl_of(be);
    if (!im->conv_ws) return; // recorded by conv_ws_reserve
    cuda_conv2d_backward(ctx_of(be), be->act_dtype, data_or_null(dx), data_or_null(dw), data_or_null(db), dy->data,
                         x->data, w->data, (int)N, (int)C, (int)H, (int)W, (int)OC, (int)KH, (int)KW, stride, pad,
                         im->conv_ws, im->conv_ws_bytes);
}

static void cu_group_norm_backward(const Backend *be, Tensor *dx, Tensor *dgamma, Tensor *dbeta, const Tensor *dy,
                                   const Tensor *x, const Tensor *gamma, const Tensor *beta, int groups, float eps,
                                   int silu) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, dx);
    CHECK_ACT(be, dy);
    CHECK_ACT(be, x);
    CHECK_PARAM(be, gamma);
    CHECK_PARAM(be, beta);
    CHECK_PARAM_OPT(be, dgamma);
    CHECK_PARAM_OPT(be, dbeta);
    SDC_CHECK(x->ndim >= 2 && tensor_same_shape(dx, x) && tensor_same_shape(dy, x));
    int64_t N = x->shape[0], C = x->shape[1];
    SDC_CHECK(groups > 0 && C % groups == 0 && tensor_numel(gamma) == C && tensor_numel(beta) == C);
    SDC_CHECK((!dgamma || tensor_numel(dgamma) == C) && (!dbeta || tensor_numel(dbeta) == C));
    cuda_group_norm_backward(ctx_of(be), be->act_dtype, dx->data, data_or_null(dgamma), data_or_null(dbeta),
                             dy->data, x->data, gamma->data, beta->data, N, C, spatial(x), groups, eps, silu);
}

static void cu_layer_norm_backward(const Backend *be, Tensor *dx, Tensor *dgamma, Tensor *dbeta, const Tensor *dy,
                                   const Tensor *x, const Tensor *gamma, float eps) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, dy);
    CHECK_ACT(be, x);
    CHECK_PARAM(be, gamma);
    CHECK_ACT_OPT(be, dx);
    CHECK_PARAM_OPT(be, dgamma);
    CHECK_PARAM_OPT(be, dbeta);
    SDC_CHECK((!dx || tensor_same_shape(dx, x)) && tensor_same_shape(dy, x));
    int64_t D = last_dim(x);
    SDC_CHECK(tensor_numel(gamma) == D && (!dgamma || tensor_numel(dgamma) == D) &&
              (!dbeta || tensor_numel(dbeta) == D));
    cuda_layer_norm_backward(ctx_of(be), be->act_dtype, data_or_null(dx), data_or_null(dgamma), data_or_null(dbeta),
                             dy->data, x->data, gamma->data, tensor_numel(x) / D, D, eps);
}

// The attention backward's workspace: what gives the whole problem in one
// block (`want`) when the device allows, `least` at the minimum; within a
// factor 2 of `want` is kept (no re-allocation between layers of one model).
static void attn_ws_reserve(const Backend *be, size_t want, size_t least) {
    CudaBackend *im = impl_of(be);
    if (im->attn_ws_bytes >= least && im->attn_ws_bytes >= want / 2) return;
    ws_grow(be, &im->attn_ws, &im->attn_ws_bytes, want, least, "attention backward", "");
}

static void cu_attention_backward(const Backend *be, Tensor *dq, Tensor *dk, Tensor *dv, const Tensor *dout,
                                  const Tensor *q, const Tensor *k, const Tensor *v, int heads, int causal) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, dq);
    CHECK_ACT(be, dk);
    CHECK_ACT(be, dv);
    CHECK_ACT(be, dout);
    CHECK_ACT(be, q);
    CHECK_ACT(be, k);
    CHECK_ACT(be, v);
    SDC_CHECK(q->ndim == 3 && k->ndim == 3 && tensor_same_shape(k, v) && tensor_same_shape(dout, q));
    SDC_CHECK(tensor_same_shape(dq, q) && tensor_same_shape(dk, k) && tensor_same_shape(dv, v));
    SDC_CHECK(heads > 0 && q->shape[2] % heads == 0 && k->shape[0] == q->shape[0] && k->shape[2] == q->shape[2]);
    int64_t B = q->shape[0], Lq = q->shape[1], Lk = k->shape[1], D = q->shape[2] / heads;
    SDC_CHECK(!causal || Lq == Lk);
    if (too_large(be, B * Lq * heads * D <= INT32_MAX && B * Lk * heads * D <= INT32_MAX, "attention backward",
                  "%lld rows x %d heads of dim %lld over %lld x %lld tokens", (long long)B, heads, (long long)D,
                  (long long)Lq, (long long)Lk))
        return;
    const int dt = be->act_dtype;
    size_t want = cuda_attention_backward_ws_bytes(dt, (int)B, (int)Lq, (int)Lk, heads, (int)D);
    size_t least = cuda_attention_backward_ws_min_bytes(dt, (int)B, (int)Lq, (int)Lk, heads, (int)D);
    attn_ws_reserve(be, want, least);
    CudaBackend *im = impl_of(be);
    if (!im->attn_ws) return; // recorded
    cuda_attention_backward(ctx_of(be), dt, dq->data, dk->data, dv->data, dout->data, q->data, k->data, v->data,
                            (int)B, (int)Lq, (int)Lk, heads, (int)D, causal, im->attn_ws, im->attn_ws_bytes);
}

static void check_unary_bwd(const Backend *be, const Tensor *dx, const Tensor *dy, const Tensor *x) {
    CHECK_ACT(be, dx);
    CHECK_ACT(be, dy);
    CHECK_ACT(be, x);
    SDC_CHECK(tensor_numel(dx) == tensor_numel(x) && tensor_numel(dy) == tensor_numel(x));
}

static void cu_act_backward(const Backend *be, int act, Tensor *dx, const Tensor *dy, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    check_unary_bwd(be, dx, dy, x);
    cuda_activation_backward(ctx_of(be), be->act_dtype, act, dx->data, dy->data, x->data, tensor_numel(x));
}
static void cu_silu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x) {
    cu_act_backward(be, CUDA_ACT_SILU, dx, dy, x);
}
static void cu_gelu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x) {
    cu_act_backward(be, CUDA_ACT_GELU, dx, dy, x);
}
static void cu_quick_gelu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x) {
    cu_act_backward(be, CUDA_ACT_QUICK_GELU, dx, dy, x);
}

static void cu_geglu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, dx);
    CHECK_ACT(be, dy);
    CHECK_ACT(be, x);
    int64_t F2 = last_dim(x), M = tensor_numel(x) / F2;
    SDC_CHECK(F2 % 2 == 0 && tensor_same_shape(dx, x) && tensor_numel(dy) == M * (F2 / 2));
    SDC_CHECK(dx->data != x->data && dx->data != dy->data);
    cuda_geglu_backward(ctx_of(be), be->act_dtype, dx->data, dy->data, x->data, M, F2 / 2);
}

static void cu_softmax_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *y) {
    SKIP_AFTER_FAULT(be);
    check_unary_bwd(be, dx, dy, y);
    int64_t D = last_dim(y);
    cuda_softmax_backward(ctx_of(be), be->act_dtype, dx->data, dy->data, y->data, tensor_numel(y) / D, D);
}

static void cu_upsample_nearest2x_backward(const Backend *be, Tensor *dx, const Tensor *dy) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, dx);
    CHECK_ACT(be, dy);
    SDC_CHECK(dx->ndim == 4 && dy->ndim == 4 && dx->shape[0] == dy->shape[0] && dx->shape[1] == dy->shape[1]);
    SDC_CHECK((dy->shape[2] == 2 * dx->shape[2] || dy->shape[2] == 2 * dx->shape[2] - 1) &&
              (dy->shape[3] == 2 * dx->shape[3] || dy->shape[3] == 2 * dx->shape[3] - 1));
    cuda_upsample_nearest2x_backward(ctx_of(be), be->act_dtype, dx->data, dy->data, dx->shape[0] * dx->shape[1],
                                     dx->shape[2], dx->shape[3], dy->shape[2], dy->shape[3]);
}

static void cu_add_channel_bias_backward(const Backend *be, Tensor *dbias, const Tensor *dy) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, dbias);
    CHECK_ACT(be, dy);
    SDC_CHECK(dy->ndim >= 2 && tensor_numel(dbias) == dy->shape[0] * dy->shape[1]);
    // (N, C, S) summed over S into (N, C): one "sample" of N*C channels, overwritten
    cuda_channel_sums(ctx_of(be), be->act_dtype, dbias->data, dy->data, 1, dy->shape[0] * dy->shape[1], spatial(dy),
                      0);
}

static void cu_concat_channels_backward(const Backend *be, Tensor *da, Tensor *db, const Tensor *dy) {
    SKIP_AFTER_FAULT(be);
    CHECK_ACT(be, dy);
    CHECK_ACT_OPT(be, da);
    CHECK_ACT_OPT(be, db);
    SDC_CHECK(dy->ndim >= 2 && (da || db));
    int64_t N = dy->shape[0], S = spatial(dy);
    int64_t Ca = da ? da->shape[1] : dy->shape[1] - db->shape[1], Cb = dy->shape[1] - Ca;
    SDC_CHECK(Ca >= 0 && Cb >= 0 && (!da || tensor_numel(da) == N * Ca * S) && (!db || tensor_numel(db) == N * Cb * S));
    cuda_concat_channels_backward(ctx_of(be), be->act_dtype, data_or_null(da), data_or_null(db), dy->data, N, Ca * S,
                                  Cb * S);
}

static void cu_embedding_backward(const Backend *be, Tensor *dtable, const Tensor *ids, const Tensor *dy) {
    SKIP_AFTER_FAULT(be);
    CHECK_PARAM(be, dtable);
    CHECK_ACT(be, dy);
    SDC_CHECK(ids->dtype == DT_I32 && ids->device == DEV_CUDA && dtable->ndim == 2);
    int64_t n = tensor_numel(ids), V = dtable->shape[0], D = dtable->shape[1];
    SDC_CHECK(tensor_numel(dy) == n * D);
    cuda_embedding_backward(ctx_of(be), be->act_dtype, dtable->data, (const int32_t *)ids->data, dy->data, n, V, D);
}

static void cu_matmul(const Backend *be, Tensor *c, const Tensor *a, const Tensor *b, float alpha, float beta) {
    SKIP_AFTER_FAULT(be);
    SDC_CHECK(c->device == DEV_CUDA && a->dtype == c->dtype && b->dtype == c->dtype && a->device == DEV_CUDA &&
              b->device == DEV_CUDA && is_float_dtype(c->dtype));
    SDC_CHECK(a->ndim == 2 && b->ndim == 2 && c->ndim == 2 && a->shape[1] == b->shape[0] &&
              c->shape[0] == a->shape[0] && c->shape[1] == b->shape[1]);
    if (too_large(be, a->shape[0] <= INT32_MAX && a->shape[1] <= INT32_MAX && b->shape[1] <= INT32_MAX, "matmul",
                  "(%lld, %lld) x (%lld, %lld)", (long long)a->shape[0], (long long)a->shape[1],
                  (long long)b->shape[0], (long long)b->shape[1]))
        return;
    cuda_matmul(ctx_of(be), c->dtype, c->data, a->data, b->data, a->shape[0], b->shape[1], a->shape[1], alpha, beta);
}

static void cu_mse_backward(const Backend *be, Tensor *dpred, double *sq, const Tensor *pred, const Tensor *target,
                            const float *k) {
    const int64_t N = pred->ndim >= 1 ? pred->shape[0] : 0;
    if (faulted(be)) { // the caller reads sq: nothing computed
        for (int64_t n = 0; n < N; n++) sq[n] = 0;
        return;
    }
    CHECK_ACT(be, dpred);
    CHECK_ACT(be, pred);
    CHECK_ACT(be, target);
    SDC_CHECK(tensor_same_shape(pred, target) && tensor_same_shape(pred, dpred) && pred->ndim >= 1);
    cuda_mse_backward(ctx_of(be), be->act_dtype, dpred->data, sq, pred->data, target->data, k, N,
                      tensor_numel(pred) / N);
}

static double cu_sum_squares(const Backend *be, const float *x, size_t n) {
    if (faulted(be) || n == 0) return 0.0;
    return cuda_sum_squares(ctx_of(be), x, n);
}

static void cu_adamw(const Backend *be, float *p, const float *g, float *m, float *v, size_t n,
                     const AdamWScalars *s) {
    SKIP_AFTER_FAULT(be);
    if (n) cuda_adamw(ctx_of(be), p, g, m, v, n, s->decay, s->w1, s->b2, s->w2, s->bc2_sqrt, s->eps, s->neg_step);
}

static void cu_ema(const Backend *be, float *shadow, const float *p, size_t n, float one_minus_decay) {
    SKIP_AFTER_FAULT(be);
    if (n) cuda_ema(ctx_of(be), shadow, p, n, one_minus_decay);
}

// ---- create / destroy ---------------------------------------------------------------

int backend_cuda_create(Backend **out, int device_index, DType act_dtype, SdcError *err) {
    *out = NULL;
    if (act_dtype != DT_F32 && act_dtype != DT_F16 && act_dtype != DT_BF16)
        return sdc_err(err, SDC_ERR_ARG, "CUDA backend: activation dtype %s not supported ---> use F32, F16 or BF16",
                       dtype_name(act_dtype));
    const char *tf32 = getenv("SDC_TF32");
    int allow_tf32 = tf32 && tf32[0] == '1';
    char msg[1024];
    CudaCtx *ctx = NULL;
    if (device_index < 0) { // one rank per GPU: the node-local rank's device
        const char *names[] = {"SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "LOCAL_RANK"};
        int local = 0, count = 0;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (getenv(names[i]) && getenv(names[i])[0]) {
                local = atoi(getenv(names[i]));
                break;
            }
        if (cuda_device_count(&count, msg, sizeof msg) != CUDA_OK)
            return sdc_err(err, SDC_ERR_DEVICE, "CUDA backend: %s", msg);
        device_index = count > 0 ? local % count : 0;
    }
    if (cuda_ctx_create(&ctx, device_index, allow_tf32, msg, sizeof msg) != CUDA_OK)
        return sdc_err(err, SDC_ERR_DEVICE, "CUDA backend: %s", msg);
    CudaBackend *cb = calloc(1, sizeof *cb);
    if (!cb) {
        cuda_ctx_destroy(ctx);
        return sdc_err(err, SDC_ERR_OOM, "CUDA backend: out of host memory");
    }
    Backend *be = &cb->be;
    *be = (Backend){
        .name = "cuda",
        .device = DEV_CUDA,
        .act_dtype = act_dtype,
        .param_dtype = act_dtype,
        .threads = 0,
        .impl = ctx,
        .alloc = cu_alloc,
        .free = cu_free,
        .upload = cu_upload,
        .download = cu_download,
        .sync = cu_sync,
        .conv2d = cu_conv2d,
        .attention = cu_attention,
        .linear = cu_linear,
        .group_norm = cu_group_norm,
        .layer_norm = cu_layer_norm,
        .softmax = cu_softmax,
        .silu = cu_silu,
        .gelu = cu_gelu,
        .quick_gelu = cu_quick_gelu,
        .geglu = cu_geglu,
        .upsample_nearest2x = cu_upsample_nearest2x,
        .timestep_embedding = cu_timestep_embedding,
        .add = cu_add,
        .add_channel_bias = cu_add_channel_bias,
        .scale = cu_scale,
        .concat_channels = cu_concat_channels,
        .nchw_to_nlc = cu_nchw_to_nlc,
        .nlc_to_nchw = cu_nlc_to_nchw,
        .embedding = cu_embedding,
        .copy = cu_copy,
        .mem_info = cu_mem_info,
        .status = cu_status,
        .zero = cu_zero,
        .linear_backward = cu_linear_backward,
        .conv2d_backward = cu_conv2d_backward,
        .group_norm_backward = cu_group_norm_backward,
        .layer_norm_backward = cu_layer_norm_backward,
        .attention_backward = cu_attention_backward,
        .silu_backward = cu_silu_backward,
        .gelu_backward = cu_gelu_backward,
        .quick_gelu_backward = cu_quick_gelu_backward,
        .geglu_backward = cu_geglu_backward,
        .softmax_backward = cu_softmax_backward,
        .upsample_nearest2x_backward = cu_upsample_nearest2x_backward,
        .add_channel_bias_backward = cu_add_channel_bias_backward,
        .concat_channels_backward = cu_concat_channels_backward,
        .embedding_backward = cu_embedding_backward,
        .matmul = cu_matmul,
        .mse_backward = cu_mse_backward,
        .sum_squares = cu_sum_squares,
        .adamw = cu_adamw,
        .ema = cu_ema,
    };
    *out = be;
    return SDC_OK;
}

void backend_cuda_destroy(Backend *be) {
    if (!be) return;
    CudaBackend *cb = impl_of(be);
    cuda_free(ctx_of(be), cb->conv_ws);
    cuda_free(ctx_of(be), cb->attn_ws);
    cuda_ctx_destroy(ctx_of(be));
    free(cb);
}

#endif
