// backend_cpu.c: the CPU backend (the fp32 reference every other backend is
// checked against), the no-op "measure" backend used to size arenas, and the
// device-independent helpers backend_destroy / backend_upload_f32 /
// backend_download_f32.
//
// Each op checks its tensors' shapes and dtypes (SDC_CHECK: a mismatch is a
// caller bug) and calls a raw kernel from kernels/cpu/ops_cpu.h. The backend
// owns one scratch buffer (im2col tiles, attention score blocks) that grows
// to the largest request seen and is then reused: a model's first forward
// sizes it, later forwards never allocate. Kernels keep requests bounded
// (CPU_SCRATCH_BUDGET_FLOATS plus one row or block). Because of that shared
// scratch, one CPU Backend serves one calling thread at a time (its ops
// use all the backend's threads themselves).
//
// The bf16 variant (backend_cpu_create_bf16, a build with oneDNN) is the same
// table with param_dtype BF16: the loader converts every parameter once to
// bf16 (round to nearest even); conv2d, linear and attention compute in bf16
// with fp32 accumulation (kernels/cpu/bf16_cpu.h); every other op, and every
// activation between ops, stays fp32 (a bf16 bias, norm affine or embedding
// row is widened to fp32 where an op reads it). The mixed-precision variant
// (backend_cpu_create_bf16_mixed, training) keeps param_dtype F32 (master
// weights): conv2d and linear round their weights per call, and the
// backward of conv2d, linear and attention multiplies bf16-rounded operands
// (backend_cpu_bwd.c).
#include "core/backend.h"

#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend_cpu_bwd.h"
#include "cpu/ops_cpu.h"
#ifdef SDC_HAVE_DNNL
#include "cpu/bf16_cpu.h"
#endif

// Provided by backend_cuda.c in builds with CUDA. Weak: a CUDA Backend can
// only exist when backend_cuda_create (same object file) was linked in, so a
// CPU-only link that never pulls that object never needs this symbol.
extern void backend_cuda_destroy(Backend *be) __attribute__((weak));

typedef struct CpuImpl {
    float *scratch; // grows to the largest request, then reused
    size_t scratch_cap; // floats
    SdcError fault; // the first failure inside an op (backend.h: status)
    // Test hook (tests/fault/failalloc.sh), read at create: SDC_FAULT_SCRATCH=N
    // makes the Nth scratch request fail as out of memory, so the tests reach
    // a failure inside a training step, where sdc itself allocates nothing;
    // SDC_FAULT_SCRATCH_COUNT=PATH writes the number of requests there at
    // destroy.
    long fault_at, requests;
    const char *count_path;
    // The bf16 variant only: oneDNN's context (bf16_cpu.h) and two buffers
    // for bf16 parameter vectors widened to fp32 (grow, then reused).
    struct CpuBf16 *bf16;
    float *pv[2];
    size_t pv_cap[2]; // floats
    // The mixed variant's backward: operands rounded to bf16 values (fp32),
    // four buffers (grow, then reused; cpu_backend_bf16_operand).
    float *rnd[4];
    size_t rnd_cap[4]; // floats
} CpuImpl;

// ---- helpers -----------------------------------------------------------------

float *cpu_backend_scratch(const Backend *be, size_t floats) {
    CpuImpl *im = be->impl;
    if (++im->requests == im->fault_at) {
        if (!im->fault.code)
            sdc_err(&im->fault, SDC_ERR_OOM, "cpu backend: scratch request %ld failed (SDC_FAULT_SCRATCH): out of "
                    "memory", im->requests);
        return NULL;
    }
    if (floats > im->scratch_cap) {
        free(im->scratch);
        size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
        im->scratch = aligned_alloc(64, bytes);
        im->scratch_cap = im->scratch ? floats : 0;
        // bounded by the kernels (tens of MB): the machine is out of memory
        if (!im->scratch && !im->fault.code)
            sdc_err(&im->fault, SDC_ERR_OOM, "cpu backend: cannot allocate %.1f MiB of scratch (out of memory) "
                    "---> lower --batch-size or the image size, or free memory on this machine",
                    (double)bytes / (1 << 20));
    }
    return im->scratch;
}

#define CHECK_F32(t) SDC_CHECK((t)->dtype == DT_F32 && (t)->device == DEV_CPU)
// a parameter: F32, or BF16 on the bf16 variant
#define CHECK_PARAM(be, t) SDC_CHECK((t)->dtype == (be)->param_dtype && (t)->device == DEV_CPU)

// A parameter vector (bias, norm affine) as fp32: itself on the fp32
// backend; widened into buffer `slot` (0 or 1) on the bf16 one. NULL for a
// NULL t, or (recorded: backend_status) when there is no memory.
static const float *param_f32(const Backend *be, const Tensor *t, int slot) {
    if (!t) return NULL;
    CHECK_PARAM(be, t);
    if (t->dtype == DT_F32) return tensor_f32p(t);
    CpuImpl *im = be->impl;
    const size_t n = (size_t)tensor_numel(t);
    if (n > im->pv_cap[slot]) {
        free(im->pv[slot]);
        im->pv[slot] = malloc(n * sizeof(float));
        im->pv_cap[slot] = im->pv[slot] ? n : 0;
        if (!im->pv[slot]) {
            if (!im->fault.code)
                sdc_err(&im->fault, SDC_ERR_OOM, "cpu backend: cannot allocate %.1f MiB for a parameter (out of "
                        "memory) ---> free memory on this machine", (double)n * sizeof(float) / (1 << 20));
            return NULL;
        }
    }
    convert_to_f32(im->pv[slot], t->data, t->dtype, n);
    return im->pv[slot];
}

const float *cpu_backend_bf16_operand(const Backend *be, const Tensor *t, int slot) {
    SDC_CHECK(t->dtype == DT_F32 && slot >= 0 && slot < 4);
    CpuImpl *im = be->impl;
    if (!im->bf16) return t->data; // the fp32 backend
    const size_t n = (size_t)tensor_numel(t);
    if (n > im->rnd_cap[slot]) {
        free(im->rnd[slot]);
        im->rnd[slot] = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
        im->rnd_cap[slot] = im->rnd[slot] ? n : 0;
        if (!im->rnd[slot]) {
            if (!im->fault.code)
                sdc_err(&im->fault, SDC_ERR_OOM, "cpu backend, bf16: cannot allocate %.1f MiB for a rounded operand "
                        "(out of memory) ---> lower the batch size", (double)n * sizeof(float) / (1 << 20));
            return NULL;
        }
    }
    const float *x = t->data;
    float *r = im->rnd[slot];
#pragma omp parallel for schedule(static) if (n >= ((size_t)1 << 16))
    for (size_t i = 0; i < n; i++) r[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return r;
}

#ifdef SDC_HAVE_DNNL
// The weights of a bf16 conv2d / linear: bf16 parameters as they are; the
// mixed variant's fp32 master weights rounded for this call. NULL: recorded.
static const uint16_t *bf16_weights(const Backend *be, const Tensor *w) {
    CpuImpl *im = be->impl;
    if (w->dtype == DT_BF16) return w->data;
    const uint16_t *r = cpu_bf16_weights(im->bf16, tensor_f32p(w), tensor_numel(w));
    if (!r && !im->fault.code)
        sdc_err(&im->fault, SDC_ERR_OOM, "cpu backend, bf16: %s ---> lower the batch size", cpu_bf16_error(im->bf16));
    return r;
}

// After a bf16 op: its failure (no staging memory, a oneDNN call) recorded.
static void bf16_status(const Backend *be, int rc, const char *op) {
    CpuImpl *im = be->impl;
    if (!rc || im->fault.code) return;
    const int oom = cpu_bf16_error_is_oom(im->bf16);
    sdc_err(&im->fault, oom ? SDC_ERR_OOM : SDC_ERR_UNSUPPORTED, "cpu backend, bf16 %s: %s ---> %s", op,
            cpu_bf16_error(im->bf16),
            oom ? "lower --batch-size or the image size" : "run with --precision fp32 (the reference path)");
}
#endif

// backend_cpu_bwd.h's oneDNN backward entries
int cpu_backend_bf16_linear_backward(const Backend *be, float *dx, float *dw, const float *dy, const float *x,
                                     const Tensor *w, int64_t M, int64_t K, int64_t N) {
#ifdef SDC_HAVE_DNNL
    CpuImpl *im = be->impl;
    if (!im->bf16 || !cpu_bf16_native(im->bf16)) return 1;
    const uint16_t *wb = bf16_weights(be, w);
    if (wb) bf16_status(be, cpu_bf16_linear_backward(im->bf16, dx, dw, dy, x, wb, M, K, N), "linear backward");
    return 0;
#else
    (void)be, (void)dx, (void)dw, (void)dy, (void)x, (void)w, (void)M, (void)K, (void)N;
    return 1;
#endif
}

int cpu_backend_bf16_conv2d_backward(const Backend *be, float *dx, float *dw, const float *dy, const float *x,
                                     const Tensor *w, int N, int C, int H, int W, int stride, int pad) {
#ifdef SDC_HAVE_DNNL
    CpuImpl *im = be->impl;
    if (!im->bf16 || !cpu_bf16_native(im->bf16)) return 1;
    const uint16_t *wb = bf16_weights(be, w);
    if (wb)
        bf16_status(be, cpu_bf16_conv2d_backward(im->bf16, dx, dw, dy, x, wb, N, C, H, W, (int)w->shape[0],
                                                 (int)w->shape[2], (int)w->shape[3], stride, pad),
                    "conv2d backward");
    return 0;
#else
    (void)be, (void)dx, (void)dw, (void)dy, (void)x, (void)w, (void)N, (void)C, (void)H, (void)W, (void)stride,
        (void)pad;
    return 1;
#endif
}

int cpu_backend_bf16_attention_backward(const Backend *be, float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v, int B, int Lq, int Lk,
                                        int heads, int D, int causal) {
#ifdef SDC_HAVE_DNNL
    CpuImpl *im = be->impl;
    if (!im->bf16 || !cpu_bf16_native(im->bf16)) return 1;
    bf16_status(be, cpu_bf16_attention_backward(im->bf16, dq, dk, dv, dout, q, k, v, B, Lq, Lk, heads, D, causal),
                "attention backward");
    return 0;
#else
    (void)be, (void)dq, (void)dk, (void)dv, (void)dout, (void)q, (void)k, (void)v, (void)B, (void)Lq, (void)Lk,
        (void)heads, (void)D, (void)causal;
    return 1;
#endif
}

static int64_t last_dim(const Tensor *t) { return t->shape[t->ndim - 1]; }

// Product of spatial dims after (N, C).
static int64_t spatial(const Tensor *t) {
    int64_t s = 1;
    for (int i = 2; i < t->ndim; i++) s *= t->shape[i];
    return s;
}

static void check_elementwise(const Tensor *out, const Tensor *x) {
    CHECK_F32(out);
    CHECK_F32(x);
    SDC_CHECK(tensor_numel(out) == tensor_numel(x));
}

// ---- memory ------------------------------------------------------------------

static void *cpu_alloc(const Backend *be, size_t bytes) {
    (void)be;
    return aligned_alloc(64, (bytes + 63) / 64 * 64 + (bytes == 0 ? 64 : 0));
}
static void cpu_free(const Backend *be, void *p) { (void)be; free(p); }
static void cpu_copy_bytes(const Backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}
static void cpu_sync(const Backend *be) { (void)be; }

static int cpu_status(const Backend *be, SdcError *err) {
    CpuImpl *im = be->impl;
    const int code = im->fault.code;
    if (code && err) *err = im->fault;
    im->fault = (SdcError){0};
    return code;
}

// ---- ops ---------------------------------------------------------------------

static void cpu_op_conv2d(const Backend *be, Tensor *out, const Tensor *x, const Tensor *w,
                          const Tensor *b, int stride, int pad) {
    CHECK_F32(out); CHECK_F32(x); CHECK_PARAM(be, w);
    SDC_CHECK(x->ndim == 4 && w->ndim == 4 && out->ndim == 4 && stride >= 1 && pad >= 0);
    int N = (int)x->shape[0], C = (int)x->shape[1], H = (int)x->shape[2], W = (int)x->shape[3];
    int OC = (int)w->shape[0], KH = (int)w->shape[2], KW = (int)w->shape[3];
    SDC_CHECK(w->shape[1] == C);
    int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    SDC_CHECK(OH > 0 && OW > 0);
    SDC_CHECK(out->shape[0] == N && out->shape[1] == OC && out->shape[2] == OH && out->shape[3] == OW);
    if (b) { CHECK_PARAM(be, b); SDC_CHECK(tensor_numel(b) == OC); }
#ifdef SDC_HAVE_DNNL
    if (((CpuImpl *)be->impl)->bf16) {
        const float *bf = param_f32(be, b, 0);
        const uint16_t *wb = bf16_weights(be, w);
        if ((b && !bf) || !wb) return; // recorded: backend_status
        // a BF16 w is a parameter (the bf16 variant's); an F32 one, rounded into staging for this call
        bf16_status(be, cpu_bf16_conv2d(((CpuImpl *)be->impl)->bf16, tensor_f32p(out), tensor_f32p(x), wb,
                                        w->dtype == DT_BF16, bf, N, C, H, W, OC, KH, KW, stride, pad),
                    "conv2d");
        return;
    }
#endif
    size_t need = cpu_conv2d_scratch_floats(C, H, W, OC, KH, KW, stride, pad);
    float *s = need ? cpu_backend_scratch(be, need) : NULL;
    if (need && !s) return; // recorded: backend_status
    cpu_conv2d(tensor_f32p(out), tensor_f32p(x), tensor_f32p(w), b ? tensor_f32p(b) : NULL, N, C,
               H, W, OC, KH, KW, stride, pad, s, need);
}

static void cpu_op_linear(const Backend *be, Tensor *out, const Tensor *x, const Tensor *w,
                          const Tensor *b) {
    CHECK_F32(out); CHECK_F32(x); CHECK_PARAM(be, w);
    SDC_CHECK(w->ndim == 2);
    int64_t K = last_dim(x), Nn = w->shape[0];
    SDC_CHECK(w->shape[1] == K && last_dim(out) == Nn);
    int64_t M = tensor_numel(x) / K;
    SDC_CHECK(tensor_numel(out) == M * Nn);
    if (b) { CHECK_PARAM(be, b); SDC_CHECK(tensor_numel(b) == Nn); }
#ifdef SDC_HAVE_DNNL
    if (((CpuImpl *)be->impl)->bf16) {
        const float *bf = param_f32(be, b, 0);
        const uint16_t *wb = bf16_weights(be, w);
        if ((b && !bf) || !wb) return; // recorded: backend_status
        bf16_status(be, cpu_bf16_linear(((CpuImpl *)be->impl)->bf16, tensor_f32p(out), tensor_f32p(x), wb, bf, M, K,
                                        Nn), "linear");
        return;
    }
#endif
    cpu_linear(tensor_f32p(out), tensor_f32p(x), tensor_f32p(w), b ? tensor_f32p(b) : NULL, (int)M,
               (int)K, (int)Nn);
}

static void cpu_op_group_norm(const Backend *be, Tensor *out, const Tensor *x, const Tensor *gamma,
                              const Tensor *beta, int groups, float eps, int silu) {
    check_elementwise(out, x);
    SDC_CHECK(x->ndim >= 2 && tensor_same_shape(out, x));
    int N = (int)x->shape[0], C = (int)x->shape[1];
    SDC_CHECK(groups > 0 && C % groups == 0);
    SDC_CHECK(tensor_numel(gamma) == C && tensor_numel(beta) == C);
    const float *g = param_f32(be, gamma, 0), *bt = param_f32(be, beta, 1);
    if (!g || !bt) return; // recorded: backend_status
    cpu_group_norm(tensor_f32p(out), tensor_f32p(x), g, bt, N, C, spatial(x), groups, eps, silu);
}

static void cpu_op_layer_norm(const Backend *be, Tensor *out, const Tensor *x, const Tensor *gamma,
                              const Tensor *beta, float eps) {
    check_elementwise(out, x);
    int64_t D = last_dim(x);
    SDC_CHECK(last_dim(out) == D && tensor_numel(gamma) == D && tensor_numel(beta) == D);
    const float *g = param_f32(be, gamma, 0), *bt = param_f32(be, beta, 1);
    if (!g || !bt) return; // recorded: backend_status
    cpu_layer_norm(tensor_f32p(out), tensor_f32p(x), g, bt, tensor_numel(x) / D, (int)D, eps);
}

static void cpu_op_attention(const Backend *be, Tensor *out, const Tensor *q, const Tensor *k,
                             const Tensor *v, int heads, int causal) {
    CHECK_F32(out); CHECK_F32(q); CHECK_F32(k); CHECK_F32(v);
    SDC_CHECK(q->ndim == 3 && k->ndim == 3 && v->ndim == 3 && tensor_same_shape(out, q));
    SDC_CHECK(tensor_same_shape(k, v) && k->shape[0] == q->shape[0] && k->shape[2] == q->shape[2]);
    SDC_CHECK(heads > 0 && q->shape[2] % heads == 0 && k->shape[1] > 0);
    int B = (int)q->shape[0], Lq = (int)q->shape[1], Lk = (int)k->shape[1];
    int D = (int)(q->shape[2] / heads);
#ifdef SDC_HAVE_DNNL
    if (((CpuImpl *)be->impl)->bf16) {
        bf16_status(be, cpu_bf16_attention(((CpuImpl *)be->impl)->bf16, tensor_f32p(out), tensor_f32p(q),
                                           tensor_f32p(k), tensor_f32p(v), B, Lq, Lk, heads, D, causal), "attention");
        return;
    }
#endif
    size_t need = cpu_attention_scratch_floats(Lq, Lk, D, omp_get_max_threads());
    float *s = cpu_backend_scratch(be, need);
    if (!s) return; // recorded: backend_status
    cpu_attention(tensor_f32p(out), tensor_f32p(q), tensor_f32p(k), tensor_f32p(v), B, Lq, Lk,
                  heads, D, causal, s, need);
}

static void cpu_op_softmax(const Backend *be, Tensor *out, const Tensor *x) {
    check_elementwise(out, x);
    int64_t D = last_dim(x);
    cpu_softmax(tensor_f32p(out), tensor_f32p(x), tensor_numel(x) / D, (int)D);
}

static void cpu_op_silu(const Backend *be, Tensor *out, const Tensor *x) {
    check_elementwise(out, x);
    cpu_silu(tensor_f32p(out), tensor_f32p(x), tensor_numel(x));
}

static void cpu_op_gelu(const Backend *be, Tensor *out, const Tensor *x) {
    check_elementwise(out, x);
    cpu_gelu(tensor_f32p(out), tensor_f32p(x), tensor_numel(x));
}

static void cpu_op_quick_gelu(const Backend *be, Tensor *out, const Tensor *x) {
    check_elementwise(out, x);
    cpu_quick_gelu(tensor_f32p(out), tensor_f32p(x), tensor_numel(x));
}

static void cpu_op_geglu(const Backend *be, Tensor *out, const Tensor *x) {
    CHECK_F32(out); CHECK_F32(x);
    SDC_CHECK(out->data != x->data);
    int64_t F2 = last_dim(x), F = last_dim(out);
    SDC_CHECK(F2 == 2 * F && tensor_numel(out) * 2 == tensor_numel(x));
    cpu_geglu(tensor_f32p(out), tensor_f32p(x), tensor_numel(out) / F, (int)F);
}

static void cpu_op_upsample_nearest2x(const Backend *be, Tensor *out, const Tensor *x) {
    CHECK_F32(out); CHECK_F32(x);
    SDC_CHECK(x->ndim == 4 && out->ndim == 4);
    SDC_CHECK(out->shape[0] == x->shape[0] && out->shape[1] == x->shape[1] &&
              (out->shape[2] == 2 * x->shape[2] || out->shape[2] == 2 * x->shape[2] - 1) &&
              (out->shape[3] == 2 * x->shape[3] || out->shape[3] == 2 * x->shape[3] - 1));
    cpu_upsample_nearest2x(tensor_f32p(out), tensor_f32p(x), (int)x->shape[0], (int)x->shape[1],
                           (int)x->shape[2], (int)x->shape[3], (int)out->shape[2], (int)out->shape[3]);
}

static void cpu_op_timestep_embedding(const Backend *be, Tensor *out, const float *t,
                                      int flip_sin_to_cos, float freq_shift) {
    CHECK_F32(out);
    SDC_CHECK(out->ndim == 2);
    cpu_timestep_embedding(tensor_f32p(out), t, (int)out->shape[0], (int)out->shape[1],
                           flip_sin_to_cos, freq_shift);
}

static void cpu_op_add(const Backend *be, Tensor *out, const Tensor *a, const Tensor *b) {
    check_elementwise(out, a);
    check_elementwise(out, b);
    cpu_add(tensor_f32p(out), tensor_f32p(a), tensor_f32p(b), tensor_numel(out));
}

static void cpu_op_add_channel_bias(const Backend *be, Tensor *out, const Tensor *x,
                                    const Tensor *bias) {
    check_elementwise(out, x);
    CHECK_F32(bias);
    SDC_CHECK(x->ndim >= 2);
    int N = (int)x->shape[0], C = (int)x->shape[1];
    SDC_CHECK(tensor_numel(bias) == (int64_t)N * C);
    cpu_add_channel_bias(tensor_f32p(out), tensor_f32p(x), tensor_f32p(bias), N, C, spatial(x));
}

static void cpu_op_scale(const Backend *be, Tensor *out, const Tensor *x, float s) {
    check_elementwise(out, x);
    cpu_scale(tensor_f32p(out), tensor_f32p(x), s, tensor_numel(x));
}

static void cpu_op_concat_channels(const Backend *be, Tensor *out, const Tensor *a,
                                   const Tensor *b) {
    CHECK_F32(out); CHECK_F32(a); CHECK_F32(b);
    SDC_CHECK(a->ndim >= 2 && b->ndim == a->ndim && out->ndim == a->ndim);
    int N = (int)a->shape[0], Ca = (int)a->shape[1], Cb = (int)b->shape[1];
    int64_t S = spatial(a);
    SDC_CHECK(b->shape[0] == N && spatial(b) == S && out->shape[0] == N &&
              out->shape[1] == Ca + Cb && spatial(out) == S);
    cpu_concat_channels(tensor_f32p(out), tensor_f32p(a), tensor_f32p(b), N, Ca, Cb, S);
}

static void cpu_op_nchw_to_nlc(const Backend *be, Tensor *out, const Tensor *x) {
    check_elementwise(out, x);
    SDC_CHECK(x->ndim == 4 && out->ndim == 3);
    int N = (int)x->shape[0], C = (int)x->shape[1];
    int64_t S = spatial(x);
    SDC_CHECK(out->shape[0] == N && out->shape[1] == S && out->shape[2] == C);
    SDC_CHECK(out->data != x->data);
    cpu_nchw_to_nlc(tensor_f32p(out), tensor_f32p(x), N, C, S);
}

static void cpu_op_nlc_to_nchw(const Backend *be, Tensor *out, const Tensor *x) {
    check_elementwise(out, x);
    SDC_CHECK(x->ndim == 3 && out->ndim == 4);
    int N = (int)out->shape[0], C = (int)out->shape[1];
    int64_t S = spatial(out);
    SDC_CHECK(x->shape[0] == N && x->shape[1] == S && x->shape[2] == C);
    SDC_CHECK(out->data != x->data);
    cpu_nlc_to_nchw(tensor_f32p(out), tensor_f32p(x), N, C, S);
}

static void cpu_op_embedding(const Backend *be, Tensor *out, const Tensor *ids,
                             const Tensor *table) {
    CHECK_F32(out); CHECK_PARAM(be, table);
    SDC_CHECK(ids->dtype == DT_I32 && ids->device == DEV_CPU && table->ndim == 2);
    int64_t n = tensor_numel(ids);
    int V = (int)table->shape[0], D = (int)table->shape[1];
    SDC_CHECK(last_dim(out) == D && tensor_numel(out) == n * D);
    if (table->dtype != DT_F32) { // the bf16 variant: the rows asked for, widened
        const int32_t *id = ids->data;
        for (int64_t i = 0; i < n; i++) {
            SDC_CHECK(id[i] >= 0 && id[i] < V); // token ids come from our tokenizer: out of range is a bug
            convert_to_f32(tensor_f32p(out) + i * D, (const char *)table->data + (size_t)id[i] * D * 2, table->dtype,
                           (size_t)D);
        }
        return;
    }
    int64_t bad = cpu_embedding(tensor_f32p(out), (const int32_t *)ids->data, tensor_f32p(table), n,
                                V, D);
    SDC_CHECK(bad < 0); // token ids come from our tokenizer: out of range is a bug
}

static int is_float_dtype(DType dt) { return dt == DT_F32 || dt == DT_F16 || dt == DT_BF16; }

static void cpu_op_copy(const Backend *be, Tensor *out, const Tensor *x) {
    SDC_CHECK(out->device == DEV_CPU && x->device == DEV_CPU);
    size_t n = (size_t)tensor_numel(x);
    SDC_CHECK((size_t)tensor_numel(out) == n);
    if (out->dtype == x->dtype) {
        if (out->data != x->data) memmove(out->data, x->data, n * dtype_size(x->dtype));
        return;
    }
    SDC_CHECK(is_float_dtype(out->dtype) && is_float_dtype(x->dtype));
    if (x->dtype == DT_F32) {
        convert_from_f32(out->data, out->dtype, x->data, n);
    } else if (out->dtype == DT_F32) {
        convert_to_f32(out->data, x->data, x->dtype, n);
    } else { // F16 <-> BF16 through f32 in chunks on the stack
        float buf[1024]; // (chunk)
        const char *src = x->data;
        char *dst = out->data;
        for (size_t i = 0; i < n; i += 1024) {
            size_t m = n - i < 1024 ? n - i : 1024;
            convert_to_f32(buf, src + i * 2, x->dtype, m);
            convert_from_f32(dst + i * 2, out->dtype, buf, m);
        }
    }
}

// ---- training: memory, loss, optimizer --------------------------------------------

static void cpu_zero(const Backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes) memset(dst, 0, bytes);
}

static void cpu_op_matmul(const Backend *be, Tensor *c, const Tensor *a, const Tensor *b, float alpha, float beta) {
    (void)be;
    CHECK_F32(c); CHECK_F32(a); CHECK_F32(b);
    SDC_CHECK(a->ndim == 2 && b->ndim == 2 && c->ndim == 2 && a->shape[1] == b->shape[0] &&
              c->shape[0] == a->shape[0] && c->shape[1] == b->shape[1]);
    const int M = (int)a->shape[0], K = (int)a->shape[1], N = (int)b->shape[1];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, tensor_f32p(a), K, tensor_f32p(b), N,
                beta, tensor_f32p(c), N);
}

static void cpu_op_mse_backward(const Backend *be, Tensor *dpred, double *sq, const Tensor *pred,
                                const Tensor *target, const float *k) {
    (void)be;
    CHECK_F32(dpred); CHECK_F32(pred); CHECK_F32(target);
    SDC_CHECK(tensor_same_shape(pred, target) && tensor_same_shape(pred, dpred) && pred->ndim >= 1);
    const int64_t N = pred->shape[0];
    cpu_mse_backward(tensor_f32p(dpred), sq, tensor_f32p(pred), tensor_f32p(target), k, N, tensor_numel(pred) / N);
}

static double cpu_op_sum_squares(const Backend *be, const float *x, size_t n) {
    (void)be;
    return cpu_sum_squares(x, n);
}

static void cpu_op_ema(const Backend *be, float *shadow, const float *p, size_t n, float one_minus_decay) {
    (void)be;
    cpu_ema(shadow, p, n, one_minus_decay);
}

static void cpu_op_adamw(const Backend *be, float *p, const float *g, float *m, float *v, size_t n,
                         const AdamWScalars *s) {
    (void)be;
    cpu_adamw(p, g, m, v, n, s->decay, s->w1, s->b2, s->w2, s->bc2_sqrt, s->eps, s->neg_step);
}

// MemAvailable / MemTotal from /proc/meminfo (what can be allocated without
// swapping; overcommit makes malloc itself no test).
static int cpu_mem_info(const Backend *be, size_t *free_bytes, size_t *total_bytes) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    unsigned long long avail = 0, total = 0;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "MemAvailable: %llu kB", &avail);
        sscanf(line, "MemTotal: %llu kB", &total);
    }
    fclose(f);
    if (!avail || !total) return -1;
    *free_bytes = (size_t)avail * 1024;
    *total_bytes = (size_t)total * 1024;
    return 0;
}

static const Backend cpu_template = {
    .name = "cpu",
    .device = DEV_CPU,
    .act_dtype = DT_F32,
    .param_dtype = DT_F32,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy_bytes,
    .download = cpu_copy_bytes,
    .sync = cpu_sync,
    .conv2d = cpu_op_conv2d,
    .linear = cpu_op_linear,
    .group_norm = cpu_op_group_norm,
    .layer_norm = cpu_op_layer_norm,
    .attention = cpu_op_attention,
    .softmax = cpu_op_softmax,
    .silu = cpu_op_silu,
    .gelu = cpu_op_gelu,
    .quick_gelu = cpu_op_quick_gelu,
    .geglu = cpu_op_geglu,
    .upsample_nearest2x = cpu_op_upsample_nearest2x,
    .timestep_embedding = cpu_op_timestep_embedding,
    .add = cpu_op_add,
    .add_channel_bias = cpu_op_add_channel_bias,
    .scale = cpu_op_scale,
    .concat_channels = cpu_op_concat_channels,
    .nchw_to_nlc = cpu_op_nchw_to_nlc,
    .nlc_to_nchw = cpu_op_nlc_to_nchw,
    .embedding = cpu_op_embedding,
    .copy = cpu_op_copy,
    .mem_info = cpu_mem_info,
    .status = cpu_status,
    .zero = cpu_zero,
    .matmul = cpu_op_matmul,
    .mse_backward = cpu_op_mse_backward,
    .sum_squares = cpu_op_sum_squares,
    .adamw = cpu_op_adamw,
    .ema = cpu_op_ema,
    CPU_BACKWARD_ENTRIES
};

int backend_cpu_env_threads(void) {
    const char *e = getenv("OMP_NUM_THREADS");
    char *end = NULL;
    long n = e ? strtol(e, &end, 10) : 0;
    return e && end != e && (*end == 0 || *end == ',') && n > 0 && n <= 4096 ? (int)n : 0;
}

int backend_cpu_create(Backend **out, int threads, SdcError *err) {
    *out = NULL;
    if (threads < 0)
        return sdc_err(err, SDC_ERR_ARG, "cpu backend: threads = %d\n---> pass 0 for all cores",
                       threads);
    if (threads == 0) threads = backend_cpu_env_threads();
    if (threads == 0) threads = omp_get_num_procs();
    Backend *be = malloc(sizeof *be);
    CpuImpl *im = calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        return sdc_err(err, SDC_ERR_OOM, "cpu backend: out of memory");
    }
    *be = cpu_template;
    be->threads = threads;
    be->impl = im;
    const char *f = getenv("SDC_FAULT_SCRATCH");
    im->fault_at = f ? atol(f) : 0;
    im->count_path = getenv("SDC_FAULT_SCRATCH_COUNT");
    // Process-wide settings: OpenMP loops and OpenBLAS both use `threads`.
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    *out = be;
    return 0;
}

int backend_cpu_bf16_available(void) {
#ifdef SDC_HAVE_DNNL
    return 1;
#else
    return 0;
#endif
}

static int create_bf16(Backend **out, int threads, int mixed, SdcError *err) {
    *out = NULL;
#ifdef SDC_HAVE_DNNL
    Backend *be;
    SDC_TRY(backend_cpu_create(&be, threads, err));
    CpuImpl *im = be->impl;
    char msg[256];
    if (cpu_bf16_create(&im->bf16, msg, sizeof msg)) {
        backend_destroy(be);
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "cpu backend, bf16: %s ---> run with --precision fp32", msg);
    }
    be->param_dtype = mixed ? DT_F32 : DT_BF16;
    be->name = mixed ? "cpu-bf16-mixed" : "cpu-bf16";
    *out = be;
    return 0;
#else
    (void)threads, (void)mixed;
    return sdc_err(err, SDC_ERR_UNSUPPORTED, "--precision bf16 on the CPU: this sdc was built without oneDNN ---> "
                   "install it (tools/setup.sh: libdnnl-dev) and rebuild, or run with --precision fp32");
#endif
}

int backend_cpu_create_bf16(Backend **out, int threads, SdcError *err) { return create_bf16(out, threads, 0, err); }
int backend_cpu_create_bf16_mixed(Backend **out, int threads, SdcError *err) {
    return create_bf16(out, threads, 1, err);
}

// the CPU bf16 context of be, or NULL (any other backend, the measure one included)
static struct CpuBf16 *bf16_of(const Backend *be) {
#ifdef SDC_HAVE_DNNL
    if (be && be->device == DEV_CPU && be->impl && be->alloc == cpu_alloc) return ((CpuImpl *)be->impl)->bf16;
#else
    (void)be;
#endif
    return NULL;
}

void backend_hold_params(const Backend *be, int hold) {
#ifdef SDC_HAVE_DNNL
    if (bf16_of(be)) cpu_bf16_hold(bf16_of(be), hold);
#else
    (void)be, (void)hold;
#endif
}

void backend_params_changed(const Backend *be) {
#ifdef SDC_HAVE_DNNL
    if (bf16_of(be)) cpu_bf16_params_changed(bf16_of(be));
#else
    (void)be;
#endif
}

size_t backend_held_bytes(const Backend *be) {
#ifdef SDC_HAVE_DNNL
    return bf16_of(be) ? cpu_bf16_held_bytes(bf16_of(be)) : 0;
#else
    (void)be;
    return 0;
#endif
}

double backend_cpu_bf16_gemm_gflops(const Backend *be, int n, int reps) {
#ifdef SDC_HAVE_DNNL
    return bf16_of(be) ? cpu_bf16_gemm_gflops(bf16_of(be), n, reps) : 0;
#else
    (void)be, (void)n, (void)reps;
    return 0;
#endif
}

void backend_cpu_bf16_info(const Backend *be, char *buf, size_t n) {
    if (n) buf[0] = 0;
#ifdef SDC_HAVE_DNNL
    if (be && be->device == DEV_CPU && be->impl && ((CpuImpl *)be->impl)->bf16) // (measure: no impl)
        cpu_bf16_impl_info(((CpuImpl *)be->impl)->bf16, buf, n);
#endif
}

// ---- measure backend ---------------------------------------------------------
// Every op does nothing: a model's forward against it and a measuring arena
// only records how much memory the real run needs.

static void *measure_alloc(const Backend *be, size_t bytes) { (void)be; (void)bytes; return NULL; }
static void measure_free(const Backend *be, void *p) { (void)be; (void)p; }
static void measure_move(const Backend *be, void *d, const void *s, size_t n) { (void)be; (void)d; (void)s; (void)n; }
static void measure_sync(const Backend *be) { (void)be; }
static void m_conv2d(const Backend *be, Tensor *o, const Tensor *x, const Tensor *w, const Tensor *b, int s, int p) {}
static void m_linear(const Backend *be, Tensor *o, const Tensor *x, const Tensor *w, const Tensor *b) {}
static void m_group_norm(const Backend *be, Tensor *o, const Tensor *x, const Tensor *g, const Tensor *b, int n, float e, int s) {}
static void m_layer_norm(const Backend *be, Tensor *o, const Tensor *x, const Tensor *g, const Tensor *b, float e) {}
static void m_attention(const Backend *be, Tensor *o, const Tensor *q, const Tensor *k, const Tensor *v, int h, int c) {}
static void m_unary(const Backend *be, Tensor *o, const Tensor *x) {}
static void m_timestep(const Backend *be, Tensor *o, const float *t, int f, float s) {}
static void m_binary(const Backend *be, Tensor *o, const Tensor *a, const Tensor *b) {}
static void m_scale(const Backend *be, Tensor *o, const Tensor *x, float s) {}
// backward entries (no-ops too: a training step's memory is planned the same way)
static void m_lin_bwd(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy, const Tensor *x,
                      const Tensor *w) {}
static void m_conv_bwd(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy, const Tensor *x,
                       const Tensor *w, int s, int p) {}
static void m_gn_bwd(const Backend *be, Tensor *dx, Tensor *dg, Tensor *db, const Tensor *dy, const Tensor *x,
                     const Tensor *g, const Tensor *b, int n, float e, int s) {}
static void m_ln_bwd(const Backend *be, Tensor *dx, Tensor *dg, Tensor *db, const Tensor *dy, const Tensor *x,
                     const Tensor *g, float e) {}
static void m_attn_bwd(const Backend *be, Tensor *dq, Tensor *dk, Tensor *dv, const Tensor *d, const Tensor *q,
                       const Tensor *k, const Tensor *v, int h, int c) {}
static void m_ternary(const Backend *be, Tensor *o, const Tensor *a, const Tensor *b) {}
static void m_unary_bwd(const Backend *be, Tensor *o, const Tensor *a) {}
static void m_split_bwd(const Backend *be, Tensor *a, Tensor *b, const Tensor *d) {}
static void m_zero(const Backend *be, void *d, size_t n) {}
static void m_matmul(const Backend *be, Tensor *c, const Tensor *a, const Tensor *b, float al, float bt) {}
static void m_mse_bwd(const Backend *be, Tensor *d, double *sq, const Tensor *p, const Tensor *t, const float *k) {}
static double m_sum_sq(const Backend *be, const float *x, size_t n) { return 0; }
static void m_adamw(const Backend *be, float *p, const float *g, float *m, float *v, size_t n,
                    const AdamWScalars *s) {}
static void m_ema(const Backend *be, float *shadow, const float *p, size_t n, float one_minus_decay) {}

static const Backend measure_backend = {
    .name = "measure",
    .device = DEV_CPU,
    .act_dtype = DT_F32,
    .param_dtype = DT_F32,
    .threads = 1,
    .alloc = measure_alloc,
    .free = measure_free,
    .upload = measure_move,
    .download = measure_move,
    .sync = measure_sync,
    .conv2d = m_conv2d,
    .linear = m_linear,
    .group_norm = m_group_norm,
    .layer_norm = m_layer_norm,
    .attention = m_attention,
    .softmax = m_unary,
    .silu = m_unary,
    .gelu = m_unary,
    .quick_gelu = m_unary,
    .geglu = m_unary,
    .upsample_nearest2x = m_unary,
    .timestep_embedding = m_timestep,
    .add = m_binary,
    .add_channel_bias = m_binary,
    .scale = m_scale,
    .concat_channels = m_binary,
    .nchw_to_nlc = m_unary,
    .nlc_to_nchw = m_unary,
    .embedding = m_binary,
    .copy = m_unary,
    .linear_backward = m_lin_bwd,
    .conv2d_backward = m_conv_bwd,
    .group_norm_backward = m_gn_bwd,
    .layer_norm_backward = m_ln_bwd,
    .attention_backward = m_attn_bwd,
    .silu_backward = m_ternary,
    .gelu_backward = m_ternary,
    .quick_gelu_backward = m_ternary,
    .geglu_backward = m_ternary,
    .softmax_backward = m_ternary,
    .upsample_nearest2x_backward = m_unary_bwd,
    .add_channel_bias_backward = m_unary_bwd,
    .concat_channels_backward = m_split_bwd,
    .embedding_backward = m_ternary,
    .zero = m_zero,
    .matmul = m_matmul,
    .mse_backward = m_mse_bwd,
    .sum_squares = m_sum_sq,
    .adamw = m_adamw,
    .ema = m_ema,
};

const Backend *backend_measure(void) { return &measure_backend; }

// ---- device-independent helpers ---------------------------------------------

void backend_destroy(Backend *be) {
    if (!be || be == &measure_backend) return;
    if (be->device == DEV_CUDA) {
        SDC_CHECK(backend_cuda_destroy != NULL); // only backend_cuda_create makes these
        backend_cuda_destroy(be);
        return;
    }
    CpuImpl *im = be->impl;
    if (im && im->count_path) { // the test hook's count (see CpuImpl)
        FILE *f = fopen(im->count_path, "w");
        if (f) fprintf(f, "%ld\n", im->requests), fclose(f);
    }
    if (im) {
        free(im->scratch);
        free(im->pv[0]), free(im->pv[1]);
        for (int i = 0; i < 4; i++) free(im->rnd[i]);
#ifdef SDC_HAVE_DNNL
        cpu_bf16_destroy(im->bf16);
#endif
    }
    free(im);
    free(be);
}

int backend_status(const Backend *be, SdcError *err) {
    return be && be->status ? be->status(be, err) : 0;
}

// Host staging for the dtype conversion of an upload or download to a
// device: at most STAGE_BYTES at a time, and a small buffer on the stack
// when even that cannot be allocated, so that moving a tensor never fails
// for want of host memory.
#define STAGE_BYTES ((size_t)64 << 20)

void backend_upload_f32(const Backend *be, Tensor *dst, const float *host, size_t n) {
    SDC_CHECK((size_t)tensor_numel(dst) == n);
    if (be == &measure_backend) return;
    if (be->device == DEV_CPU) {
        convert_from_f32(dst->data, dst->dtype, host, n);
        return;
    }
    if (dst->dtype == DT_F32) {
        be->upload(be, dst->data, host, n * sizeof(float));
        return;
    }
    size_t es = dtype_size(dst->dtype), chunk = STAGE_BYTES / es;
    if (chunk > n) chunk = n;
    uint64_t small[512];
    void *tmp = chunk ? malloc(chunk * es) : NULL;
    if (!tmp) chunk = sizeof small / es;
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        convert_from_f32(tmp ? tmp : small, dst->dtype, host + i, k);
        be->upload(be, (char *)dst->data + i * es, tmp ? tmp : small, k * es);
    }
    free(tmp);
}

void backend_download_f32(const Backend *be, float *host, const Tensor *src, size_t n) {
    SDC_CHECK((size_t)tensor_numel(src) == n);
    if (be == &measure_backend) return;
    if (be->device == DEV_CPU) {
        convert_to_f32(host, src->data, src->dtype, n);
        return;
    }
    if (src->dtype == DT_F32) {
        be->download(be, host, src->data, n * sizeof(float));
        return;
    }
    size_t es = dtype_size(src->dtype), chunk = STAGE_BYTES / es;
    if (chunk > n) chunk = n;
    uint64_t small[512];
    void *tmp = chunk ? malloc(chunk * es) : NULL;
    if (!tmp) chunk = sizeof small / es;
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        be->download(be, tmp ? tmp : small, (const char *)src->data + i * es, k * es);
        convert_to_f32(host + i, tmp ? tmp : small, src->dtype, k);
    }
    free(tmp);
}
