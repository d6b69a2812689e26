// backend_cpu_bwd.c: the backward entries of the CPU backend's op table:
// shape checks, then the fp32 kernels of kernels/cpu/ops_cpu_bwd.h (each
// checked against finite differences in tests/test_backward_cpu.c).
// Activation gradients are overwritten, parameter gradients accumulated.
// On the mixed-precision variant the matmul-like ones (linear, conv2d,
// attention) take their operands rounded to bf16 (cpu_backend_bf16_operand):
// bf16 products, fp32 accumulation, fp32 gradients, as the forward.
#include "core/backend_cpu_bwd.h"

#include <omp.h>

#include "cpu/ops_cpu_bwd.h"

#define F32(t) SDC_CHECK((t)->dtype == DT_F32 && (t)->device == DEV_CPU)
#define F32_OPT(t) \
    do {           \
        if (t) F32(t); \
    } while (0)

static float *p32(const Tensor *t) { return t ? (float *)t->data : NULL; }

static int64_t spatial_of(const Tensor *t) {
    int64_t s = 1;
    for (int i = 2; i < t->ndim; i++) s *= t->shape[i];
    return s;
}

void cpu_op_linear_backward(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                            const Tensor *x, const Tensor *w) {
    F32(dy); F32(x); F32(w);
    F32_OPT(dx);
    F32_OPT(dw);
    F32_OPT(db);
    SDC_CHECK(w->ndim == 2);
    int64_t N = w->shape[0], K = w->shape[1], M = tensor_numel(x) / K;
    SDC_CHECK(x->shape[x->ndim - 1] == K && tensor_numel(dy) == M * N);
    SDC_CHECK(!dx || tensor_numel(dx) == M * K);
    SDC_CHECK(!dw || tensor_same_shape(dw, w));
    SDC_CHECK(!db || tensor_numel(db) == N);
    if (!cpu_backend_bf16_linear_backward(be, p32(dx), p32(dw), p32(dy), p32(x), w, M, K, N)) {
        if (db) cpu_linear_backward(NULL, NULL, p32(db), p32(dy), p32(x), p32(w), (int)M, (int)K, (int)N);
        return; // oneDNN's bf16 (db from the unrounded dy, as below)
    }
    const float *dyr = cpu_backend_bf16_operand(be, dy, 0), *xr = cpu_backend_bf16_operand(be, x, 1);
    const float *wr = cpu_backend_bf16_operand(be, w, 2);
    if (!dyr || !xr || !wr) return; // recorded: backend_status
    if (db && dyr != p32(dy)) { // db sums the unrounded dy (a reduction: fp32, as autocast keeps it)
        cpu_linear_backward(NULL, NULL, p32(db), p32(dy), p32(x), p32(w), (int)M, (int)K, (int)N);
        db = NULL;
    }
    cpu_linear_backward(p32(dx), p32(dw), p32(db), dyr, xr, wr, (int)M, (int)K, (int)N);
}

void cpu_op_conv2d_backward(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                            const Tensor *x, const Tensor *w, int stride, int pad) {
    F32(dy); F32(x); F32(w);
    F32_OPT(dx);
    F32_OPT(dw);
    F32_OPT(db);
    SDC_CHECK(x->ndim == 4 && w->ndim == 4 && dy->ndim == 4 && stride >= 1 && pad >= 0);
    int N = (int)x->shape[0], C = (int)x->shape[1], H = (int)x->shape[2], W = (int)x->shape[3];
    int OC = (int)w->shape[0], KH = (int)w->shape[2], KW = (int)w->shape[3];
    int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    SDC_CHECK(w->shape[1] == C && dy->shape[0] == N && dy->shape[1] == OC && dy->shape[2] == OH &&
              dy->shape[3] == OW);
    SDC_CHECK(!dx || tensor_same_shape(dx, x));
    SDC_CHECK(!dw || tensor_same_shape(dw, w));
    SDC_CHECK(!db || tensor_numel(db) == OC);
    if (!cpu_backend_bf16_conv2d_backward(be, p32(dx), p32(dw), p32(dy), p32(x), w, N, C, H, W, stride, pad)) {
        if (db) cpu_conv2d_backward(NULL, NULL, p32(db), p32(dy), NULL, NULL, N, C, H, W, OC, KH, KW, stride, pad, NULL, 0);
        return; // oneDNN's bf16 (db from the unrounded dy)
    }
    size_t need = cpu_conv2d_backward_scratch_floats(C, H, W, OC, KH, KW, stride, pad);
    float *s = need ? cpu_backend_scratch(be, need) : NULL;
    if (need && !s) return; // recorded: backend_status
    const float *dyr = cpu_backend_bf16_operand(be, dy, 0), *xr = cpu_backend_bf16_operand(be, x, 1);
    const float *wr = cpu_backend_bf16_operand(be, w, 2);
    if (!dyr || !xr || !wr) return; // recorded: backend_status
    if (db && dyr != p32(dy)) { // db sums the unrounded dy (as for linear); then the rest from the rounded operands
        cpu_conv2d_backward(NULL, NULL, p32(db), p32(dy), p32(x), p32(w), N, C, H, W, OC, KH, KW, stride, pad, s, need);
        db = NULL;
    }
    cpu_conv2d_backward(p32(dx), p32(dw), p32(db), dyr, xr, wr, N, C, H, W, OC, KH, KW, stride, pad, s, need);
}

void cpu_op_group_norm_backward(const Backend *be, Tensor *dx, Tensor *dgamma, Tensor *dbeta, const Tensor *dy,
                                const Tensor *x, const Tensor *gamma, const Tensor *beta, int groups, float eps,
                                int silu) {
    F32(dx); F32(dy); F32(x); F32(gamma); F32(beta);
    F32_OPT(dgamma);
    F32_OPT(dbeta);
    SDC_CHECK(x->ndim >= 2 && tensor_same_shape(dx, x) && tensor_same_shape(dy, x));
    int N = (int)x->shape[0], C = (int)x->shape[1];
    SDC_CHECK(groups > 0 && C % groups == 0 && tensor_numel(gamma) == C && tensor_numel(beta) == C);
    SDC_CHECK((!dgamma || tensor_numel(dgamma) == C) && (!dbeta || tensor_numel(dbeta) == C));
    cpu_group_norm_backward(p32(dx), p32(dgamma), p32(dbeta), p32(dy), p32(x), p32(gamma), p32(beta), N, C,
                            spatial_of(x), groups, eps, silu);
}

void cpu_op_layer_norm_backward(const Backend *be, Tensor *dx, Tensor *dgamma, Tensor *dbeta, const Tensor *dy,
                                const Tensor *x, const Tensor *gamma, float eps) {
    F32(dx); F32(dy); F32(x); F32(gamma);
    F32_OPT(dgamma);
    F32_OPT(dbeta);
    SDC_CHECK(tensor_same_shape(dx, x) && tensor_same_shape(dy, x));
    int64_t D = x->shape[x->ndim - 1], M = tensor_numel(x) / D;
    SDC_CHECK(tensor_numel(gamma) == D && (!dgamma || tensor_numel(dgamma) == D) &&
              (!dbeta || tensor_numel(dbeta) == D));
    size_t need = cpu_layer_norm_backward_scratch_floats(M);
    float *s = cpu_backend_scratch(be, need);
    if (!s) return; // recorded: backend_status
    cpu_layer_norm_backward(p32(dx), p32(dgamma), p32(dbeta), p32(dy), p32(x), p32(gamma), M, (int)D, eps, s,
                            need);
}

void cpu_op_attention_backward(const Backend *be, Tensor *dq, Tensor *dk, Tensor *dv, const Tensor *dout,
                               const Tensor *q, const Tensor *k, const Tensor *v, int heads, int causal) {
    F32(dq); F32(dk); F32(dv); F32(dout); F32(q); F32(k); F32(v);
    SDC_CHECK(q->ndim == 3 && k->ndim == 3 && tensor_same_shape(k, v) && tensor_same_shape(dout, q));
    SDC_CHECK(tensor_same_shape(dq, q) && tensor_same_shape(dk, k) && tensor_same_shape(dv, v));
    SDC_CHECK(heads > 0 && q->shape[2] % heads == 0 && k->shape[0] == q->shape[0] && k->shape[2] == q->shape[2]);
    int B = (int)q->shape[0], Lq = (int)q->shape[1], Lk = (int)k->shape[1], D = (int)(q->shape[2] / heads);
    if (!cpu_backend_bf16_attention_backward(be, p32(dq), p32(dk), p32(dv), p32(dout), p32(q), p32(k), p32(v), B, Lq,
                                             Lk, heads, D, causal))
        return; // oneDNN's bf16
    size_t need = cpu_attention_backward_scratch_floats(Lq, Lk, D, omp_get_max_threads());
    float *s = cpu_backend_scratch(be, need);
    if (!s) return; // recorded: backend_status
    const float *dor = cpu_backend_bf16_operand(be, dout, 0), *qr = cpu_backend_bf16_operand(be, q, 1);
    const float *kr = cpu_backend_bf16_operand(be, k, 2), *vr = cpu_backend_bf16_operand(be, v, 3);
    if (!dor || !qr || !kr || !vr) return; // recorded: backend_status
    cpu_attention_backward(p32(dq), p32(dk), p32(dv), dor, qr, kr, vr, B, Lq, Lk, heads, D, causal, s, need);
}

static void check_unary(const Tensor *dx, const Tensor *dy, const Tensor *x) {
    F32(dx); F32(dy); F32(x);
    SDC_CHECK(tensor_numel(dx) == tensor_numel(x) && tensor_numel(dy) == tensor_numel(x));
}

void cpu_op_silu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x) {
    check_unary(dx, dy, x);
    cpu_silu_backward(p32(dx), p32(dy), p32(x), tensor_numel(x));
}

void cpu_op_gelu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x) {
    check_unary(dx, dy, x);
    cpu_gelu_backward(p32(dx), p32(dy), p32(x), tensor_numel(x));
}

void cpu_op_quick_gelu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x) {
    check_unary(dx, dy, x);
    cpu_quick_gelu_backward(p32(dx), p32(dy), p32(x), tensor_numel(x));
}

void cpu_op_geglu_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x) {
    F32(dx); F32(dy); F32(x);
    int64_t F2 = x->shape[x->ndim - 1], M = tensor_numel(x) / F2;
    SDC_CHECK(F2 % 2 == 0 && tensor_same_shape(dx, x) && tensor_numel(dy) == M * (F2 / 2));
    SDC_CHECK(dx->data != x->data && dx->data != dy->data);
    cpu_geglu_backward(p32(dx), p32(dy), p32(x), M, (int)(F2 / 2));
}

void cpu_op_softmax_backward(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *y) {
    check_unary(dx, dy, y);
    int64_t D = y->shape[y->ndim - 1];
    cpu_softmax_backward(p32(dx), p32(dy), p32(y), tensor_numel(y) / D, (int)D);
}

void cpu_op_upsample_nearest2x_backward(const Backend *be, Tensor *dx, const Tensor *dy) {
    F32(dx); F32(dy);
    SDC_CHECK(dx->ndim == 4 && dy->ndim == 4 && dx->shape[0] == dy->shape[0] && dx->shape[1] == dy->shape[1]);
    SDC_CHECK((dy->shape[2] == 2 * dx->shape[2] || dy->shape[2] == 2 * dx->shape[2] - 1) &&
              (dy->shape[3] == 2 * dx->shape[3] || dy->shape[3] == 2 * dx->shape[3] - 1));
    cpu_upsample_nearest2x_backward(p32(dx), p32(dy), (int)dx->shape[0], (int)dx->shape[1], (int)dx->shape[2],
                                    (int)dx->shape[3], (int)dy->shape[2], (int)dy->shape[3]);
}

void cpu_op_add_channel_bias_backward(const Backend *be, Tensor *dbias, const Tensor *dy) {
    F32(dbias); F32(dy);
    SDC_CHECK(dy->ndim >= 2 && tensor_numel(dbias) == dy->shape[0] * dy->shape[1]);
    cpu_add_channel_bias_backward(p32(dbias), p32(dy), (int)dy->shape[0], (int)dy->shape[1], spatial_of(dy));
}

void cpu_op_concat_channels_backward(const Backend *be, Tensor *da, Tensor *db, const Tensor *dy) {
    F32(dy);
    F32_OPT(da);
    F32_OPT(db);
    SDC_CHECK(dy->ndim >= 2 && (da || db));
    int64_t N = dy->shape[0], S = spatial_of(dy);
    int64_t Ca = da ? da->shape[1] : dy->shape[1] - db->shape[1], Cb = dy->shape[1] - Ca;
    SDC_CHECK(Ca >= 0 && Cb >= 0 && (!da || tensor_numel(da) == N * Ca * S) && (!db || tensor_numel(db) == N * Cb * S));
    cpu_concat_channels_backward(p32(da), p32(db), p32(dy), (int)N, (int)Ca, (int)Cb, S);
}

void cpu_op_embedding_backward(const Backend *be, Tensor *dtable, const Tensor *ids, const Tensor *dy) {
    F32(dtable); F32(dy);
    SDC_CHECK(ids->dtype == DT_I32 && ids->device == DEV_CPU && dtable->ndim == 2);
    int64_t n = tensor_numel(ids), D = dtable->shape[1];
    SDC_CHECK(tensor_numel(dy) == n * D);
    int64_t bad = cpu_embedding_backward(p32(dtable), (const int32_t *)ids->data, p32(dy), n, (int)dtable->shape[0],
                                         (int)D);
    SDC_CHECK(bad < 0); // ids were valid in the forward pass
}
