// test_backward_backend.c: the backward entries of the CPU backend's op table,
// chained as a model will chain them, against central finite differences of
// the same chain run with the forward entries:
//   h = group_norm(x) (+SiLU) ; y = conv2d(h, w, b) ; L = sum(y * R)
//   a = attention(q, k, v) (causal) ; L2 = sum(a * R2)
// (The kernels themselves are checked one by one in test_backward_cpu.)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/backend.h"
#include "testutil.h"

static Backend *be;

// L = sum(conv(gn_silu(x)) * R)
static double chain_loss(Tensor *x, Tensor *g, Tensor *bt, Tensor *w, Tensor *b, Tensor *h, Tensor *y, const float *R) {
    be->group_norm(be, h, x, g, bt, 2, 1e-5f, 1);
    be->conv2d(be, y, h, w, b, 1, 1);
    double L = 0;
    for (int64_t i = 0; i < tensor_numel(y); i++) L += (double)tensor_f32p(y)[i] * R[i];
    return L;
}

// central differences of f at every element of p (small tensors only)
static void fd(float *p, int64_t n, float *grad, double (*f)(void *), void *ctx) {
    const float eps = 1e-2f;
    for (int64_t i = 0; i < n; i++) {
        float keep = p[i];
        p[i] = keep + eps;
        double lp = f(ctx);
        p[i] = keep - eps;
        double lm = f(ctx);
        p[i] = keep;
        grad[i] = (float)((lp - lm) / (2.0 * eps));
    }
}

typedef struct {
    Tensor x, g, bt, w, b, h, y;
    float *R;
} Chain;
static double chain_f(void *c) {
    Chain *k = c;
    return chain_loss(&k->x, &k->g, &k->bt, &k->w, &k->b, &k->h, &k->y, k->R);
}

typedef struct {
    Tensor q, k, v, a;
    float *R;
} Att;
static double att_f(void *c) {
    Att *t = c;
    be->attention(be, &t->a, &t->q, &t->k, &t->v, 2, 1);
    double L = 0;
    for (int64_t i = 0; i < tensor_numel(&t->a); i++) L += (double)tensor_f32p(&t->a)[i] * t->R[i];
    return L;
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    Arena a;
    arena_init(&a, NULL, 1 << 22, &err);
    const int N = 2, C = 4, H = 5, W = 3, OC = 3;
    Chain k = {.x = ARENA_F32(&a, N, C, H, W), .g = ARENA_F32(&a, C), .bt = ARENA_F32(&a, C),
               .w = ARENA_F32(&a, OC, C, 3, 3), .b = ARENA_F32(&a, OC), .h = ARENA_F32(&a, N, C, H, W),
               .y = ARENA_F32(&a, N, OC, H, W)};
    k.R = arena_alloc(&a, sizeof(float) * N * OC * H * W);
    fill_uniform(k.x.data, tensor_numel(&k.x), 1, -2, 2);
    fill_uniform(k.g.data, C, 2, 0.5f, 1.5f);
    fill_uniform(k.bt.data, C, 3, -0.5f, 0.5f);
    fill_uniform(k.w.data, tensor_numel(&k.w), 4, -0.5f, 0.5f);
    fill_uniform(k.b.data, OC, 5, -0.5f, 0.5f);
    fill_uniform(k.R, (size_t)N * OC * H * W, 6, -1, 1);

    // analytic: dy = R; conv backward -> dh, dw, db; group norm (+SiLU) backward -> dx, dgamma, dbeta
    Tensor dy = ARENA_F32(&a, N, OC, H, W), dh = ARENA_F32(&a, N, C, H, W), dx = ARENA_F32(&a, N, C, H, W);
    Tensor dw = ARENA_F32(&a, OC, C, 3, 3), db = ARENA_F32(&a, OC), dg = ARENA_F32(&a, C), dbt = ARENA_F32(&a, C);
    memcpy(dy.data, k.R, tensor_bytes(&dy));
    memset(dw.data, 0, tensor_bytes(&dw)), memset(db.data, 0, tensor_bytes(&db));
    memset(dg.data, 0, tensor_bytes(&dg)), memset(dbt.data, 0, tensor_bytes(&dbt));
    chain_loss(&k.x, &k.g, &k.bt, &k.w, &k.b, &k.h, &k.y, k.R); // forward (h is conv's input)
    be->conv2d_backward(be, &dh, &dw, &db, &dy, &k.h, &k.w, 1, 1);
    be->group_norm_backward(be, &dx, &dg, &dbt, &dh, &k.x, &k.g, &k.bt, 2, 1e-5f, 1);

    float *num = malloc(sizeof(float) * 1024);
    // Finite differences of the fp32 forward with eps 1e-2 agree to ~4e-5
    // here; 1e-3 leaves room for rounding, and wrong wiring gives O(1).
    fd(k.x.data, tensor_numel(&k.x), num, chain_f, &k);
    check_rel(&t, "chain dx (group_norm+silu <- conv2d)", dx.data, num, tensor_numel(&dx), 1e-3);
    fd(k.w.data, tensor_numel(&k.w), num, chain_f, &k);
    check_rel(&t, "chain dw (conv2d)", dw.data, num, tensor_numel(&dw), 1e-3);
    fd(k.b.data, OC, num, chain_f, &k);
    check_rel(&t, "chain db (conv2d)", db.data, num, OC, 1e-3);
    fd(k.g.data, C, num, chain_f, &k);
    check_rel(&t, "chain dgamma (group_norm)", dg.data, num, C, 1e-3);
    fd(k.bt.data, C, num, chain_f, &k);
    check_rel(&t, "chain dbeta (group_norm)", dbt.data, num, C, 1e-3);

    // attention, causal, 2 heads, Lq = Lk = 6, D = 4
    Att at = {.q = ARENA_F32(&a, 1, 6, 8), .k = ARENA_F32(&a, 1, 6, 8), .v = ARENA_F32(&a, 1, 6, 8),
              .a = ARENA_F32(&a, 1, 6, 8)};
    at.R = arena_alloc(&a, sizeof(float) * 48);
    fill_uniform(at.q.data, 48, 7, -1, 1), fill_uniform(at.k.data, 48, 8, -1, 1);
    fill_uniform(at.v.data, 48, 9, -1, 1), fill_uniform(at.R, 48, 10, -1, 1);
    Tensor dq = ARENA_F32(&a, 1, 6, 8), dk = ARENA_F32(&a, 1, 6, 8), dv = ARENA_F32(&a, 1, 6, 8);
    Tensor dout = ARENA_F32(&a, 1, 6, 8);
    memcpy(dout.data, at.R, 48 * sizeof(float));
    be->attention_backward(be, &dq, &dk, &dv, &dout, &at.q, &at.k, &at.v, 2, 1);
    fd(at.q.data, 48, num, att_f, &at);
    check_rel(&t, "attention dq (causal, 2 heads)", dq.data, num, 48, 1e-3);
    fd(at.k.data, 48, num, att_f, &at);
    check_rel(&t, "attention dk", dk.data, num, 48, 1e-3);
    fd(at.v.data, 48, num, att_f, &at);
    check_rel(&t, "attention dv", dv.data, num, 48, 1e-3);

    { // the measure backend plans training memory: every backward entry is there (a no-op)
        const Backend *mb = backend_measure();
        check_true(&t, mb->linear_backward && mb->conv2d_backward && mb->group_norm_backward &&
                           mb->layer_norm_backward && mb->attention_backward && mb->silu_backward &&
                           mb->gelu_backward && mb->quick_gelu_backward && mb->geglu_backward &&
                           mb->softmax_backward && mb->upsample_nearest2x_backward &&
                           mb->add_channel_bias_backward && mb->concat_channels_backward && mb->embedding_backward,
                   "the measure backend has every backward entry (no-ops, for planning)");
    }
    free(num);
    arena_free(&a);
    backend_destroy(be);
    return test_summary(&t);
}
