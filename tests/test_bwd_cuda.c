// test_bwd_cuda.c: every backward and training-step op of the CUDA backend
// against the CPU backend (the fp32 reference, kernels/cpu/ops_cpu_bwd.h) on
// random inputs with SD shapes, for activations in F32, then F16 and BF16
// (issue 12, part 1).
//
// Per op and gradient: one line "name rel_err tol OK" (max |gpu - cpu| /
// max |cpu|). Gradients of activations are poisoned with NaN bytes before the
// op (an element never written shows as NaN); gradients of parameters start
// from the same random values on both sides (they are accumulated into, so a
// kernel that overwrote them would fail). Inputs are rounded to the
// activation dtype on the host first, so both sides see the same values.
// Each op with a parameter gradient or a reduction runs twice on the GPU from
// the same start: the results must be bit-identical (deterministic kernels:
// a resumed run must equal an uninterrupted one). AdamW and EMA must equal
// the CPU bit for bit (F32, torch's roundings).
//
// Tolerances (F32, relative to max |ref|): GEMM-based (linear, conv through
// cuDNN with TF32 off, attention through fp32 cuBLAS GEMMs): 1e-5 like the
// forward tests, 2e-5 for the products summed over a long axis (dw of a conv
// sums N*OH*OW products, attention's dk and dv sum Lq); reductions (norms,
// softmax, bias and channel sums): 1e-5; elementwise: 1e-5 (__expf and erff
// against the CPU's polynomials); exact data movement: 0. F16 / BF16: one
// rounding of the output (and of accumulated parameter gradients): 2e-3 /
// 1e-2, attention 4e-3 / 3e-2 as in the forward test.
//
// Written without a GPU: it has not run on one yet. SDC_TEST_GPU_IS_CPU=1
// runs it with a second CPU backend standing in for the GPU (F32 only): a
// check of the harness itself (every comparison at error 0). Without a GPU (or in a build
// without CUDA) it prints "SKIPPED: no CUDA device (reason)" and exits 77
// (CTest: skipped), unless SDC_REQUIRE_GPU=1 (tests/gpu/run.sh).
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "testutil.h"

#define SH(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

typedef struct Env {
    TestCtx *t;
    Backend *cpu, *gpu;
    DType dt;      // activation (and parameter) dtype of gpu
    double dt_tol; // output rounding of dt
} Env;

#include "cuda_testbuf.h"

// Back to the start values h0 (n floats) on both sides (a second GPU run).
static void buf_reset(Env *e, Buf *b, const float *h0) {
    memcpy(b->h, h0, b->n * sizeof(float));
    backend_upload_f32(e->gpu, &b->g, b->h, b->n);
}

static float *download(Env *e, Buf *b) {
    e->gpu->sync(e->gpu);
    float *got = xmalloc(b->n * sizeof(float));
    backend_download_f32(e->gpu, got, &b->g, b->n);
    return got;
}

// Compares b's device values with the CPU result in b->h. tol is the F32
// tolerance (0: exact in every dtype); low_tol overrides the dtype rounding
// tolerance when > 0.
static void check_buf(Env *e, const char *name, Buf *b, double tol, double low_tol) {
    float *got = download(e, b);
    double t = tol;
    if (e->dt != DT_F32 && tol > 0) t = low_tol > 0 ? low_tol : (e->dt_tol > t ? e->dt_tol : t);
    char label[128];
    snprintf(label, sizeof label, "%s [%s]", name, dtype_name(e->dt));
    check_rel(e->t, label, got, b->h, b->n, t);
    size_t nan = 0;
    for (size_t i = 0; i < b->n; i++) nan += isnan(got[i]) != 0;
    check_true(e->t, nan == 0, "%-48s every element written (%zu NaN of %zu)", label, nan, b->n);
    free(got);
}

// The device values of b against an earlier download `first`: bit-identical.
static void check_same(Env *e, const char *name, Buf *b, const float *first) {
    float *got = download(e, b);
    size_t diff = 0;
    for (size_t i = 0; i < b->n; i++) diff += memcmp(&got[i], &first[i], sizeof(float)) != 0;
    check_true(e->t, diff == 0, "%-40s [%s] deterministic: %zu of %zu differ on a second run", name,
               dtype_name(e->dt), diff, b->n);
    free(got);
}

static void check_status(Env *e, const char *name) {
    SdcError err = {0};
    int rc = backend_status(e->gpu, &err);
    check_true(e->t, rc == 0, "%-40s [%s] no device fault (%s)", name, dtype_name(e->dt), rc ? err.msg : "");
}

static float *copy_h(const Buf *b) {
    float *p = xmalloc(b->n * sizeof(float));
    memcpy(p, b->h, b->n * sizeof(float));
    return p;
}

// ---- matrix products ----------------------------------------------------------

static void test_linear(Env *e, const char *name, int64_t M, int64_t K, int64_t N, int want_dx, int want_db) {
    Buf x = buf_in(e, 11, -1, 1, SH(M, K));
    Buf w = buf_in(e, 12, -1, 1, SH(N, K));
    Buf dy = buf_in(e, 13, -1, 1, SH(M, N));
    Buf dw = buf_in(e, 14, -1, 1, SH(N, K)); // accumulated into
    Buf db = buf_in(e, 15, -1, 1, SH(N));
    Buf dx = buf_out(e, SH(M, K));
    float *dw0 = copy_h(&dw), *db0 = copy_h(&db);
    e->cpu->linear_backward(e->cpu, want_dx ? &dx.c : NULL, &dw.c, want_db ? &db.c : NULL, &dy.c, &x.c, &w.c);
    e->gpu->linear_backward(e->gpu, want_dx ? &dx.g : NULL, &dw.g, want_db ? &db.g : NULL, &dy.g, &x.g, &w.g);
    char l[128];
    if (want_dx) snprintf(l, sizeof l, "%s dx", name), check_buf(e, l, &dx, 1e-5, 0);
    snprintf(l, sizeof l, "%s dw +=", name), check_buf(e, l, &dw, 2e-5, 0);
    snprintf(l, sizeof l, "%s db +=", name), check_buf(e, l, &db, 1e-5, 0);
    float *first_dw = download(e, &dw), *first_db = download(e, &db);
    buf_reset(e, &dw, dw0), buf_reset(e, &db, db0);
    e->gpu->linear_backward(e->gpu, NULL, &dw.g, want_db ? &db.g : NULL, &dy.g, &x.g, &w.g);
    snprintf(l, sizeof l, "%s dw", name), check_same(e, l, &dw, first_dw);
    snprintf(l, sizeof l, "%s db", name), check_same(e, l, &db, first_db);
    check_status(e, name);
    free(dw0), free(db0), free(first_dw), free(first_db);
    buf_free(e, &x), buf_free(e, &w), buf_free(e, &dy), buf_free(e, &dw), buf_free(e, &db), buf_free(e, &dx);
}

static void test_matmul(Env *e) {
    Buf a = buf_in(e, 21, -1, 1, SH(320, 8));  // LoRA up (out, r)
    Buf b = buf_in(e, 22, -1, 1, SH(8, 768));  // LoRA down (r, in)
    Buf c = buf_in(e, 23, -1, 1, SH(320, 768)); // the weight it merges into
    e->cpu->matmul(e->cpu, &c.c, &a.c, &b.c, 0.75f, 1.0f);
    e->gpu->matmul(e->gpu, &c.g, &a.g, &b.g, 0.75f, 1.0f);
    check_buf(e, "matmul (320,8)x(8,768) a=0.75 b=1", &c, 1e-5, 0);
    check_status(e, "matmul");
    buf_free(e, &a), buf_free(e, &b), buf_free(e, &c);
}

static void test_conv(Env *e, const char *name, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OC, int64_t K,
                      int stride, int pad, int want_dx) {
    int64_t OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    Buf x = buf_in(e, 31, -1, 1, SH(N, C, H, W));
    Buf w = buf_in(e, 32, -1, 1, SH(OC, C, K, K));
    Buf dy = buf_in(e, 33, -1, 1, SH(N, OC, OH, OW));
    Buf dw = buf_in(e, 34, -1, 1, SH(OC, C, K, K));
    Buf db = buf_in(e, 35, -1, 1, SH(OC));
    Buf dx = buf_out(e, SH(N, C, H, W));
    float *dw0 = copy_h(&dw), *db0 = copy_h(&db);
    e->cpu->conv2d_backward(e->cpu, want_dx ? &dx.c : NULL, &dw.c, &db.c, &dy.c, &x.c, &w.c, stride, pad);
    e->gpu->conv2d_backward(e->gpu, want_dx ? &dx.g : NULL, &dw.g, &db.g, &dy.g, &x.g, &w.g, stride, pad);
    char l[128];
    if (want_dx) snprintf(l, sizeof l, "%s dx", name), check_buf(e, l, &dx, 1e-5, 0);
    snprintf(l, sizeof l, "%s dw +=", name), check_buf(e, l, &dw, 2e-5, 0);
    snprintf(l, sizeof l, "%s db +=", name), check_buf(e, l, &db, 1e-5, 0);
    float *first_dw = download(e, &dw), *first_db = download(e, &db);
    float *first_dx = want_dx ? download(e, &dx) : NULL;
    buf_reset(e, &dw, dw0), buf_reset(e, &db, db0);
    if (want_dx) buf_poison(e, &dx);
    e->gpu->conv2d_backward(e->gpu, want_dx ? &dx.g : NULL, &dw.g, &db.g, &dy.g, &x.g, &w.g, stride, pad);
    snprintf(l, sizeof l, "%s dw", name), check_same(e, l, &dw, first_dw);
    snprintf(l, sizeof l, "%s db", name), check_same(e, l, &db, first_db);
    if (want_dx) snprintf(l, sizeof l, "%s dx", name), check_same(e, l, &dx, first_dx);
    check_status(e, name);
    free(dw0), free(db0), free(first_dw), free(first_db), free(first_dx);
    buf_free(e, &x), buf_free(e, &w), buf_free(e, &dy), buf_free(e, &dw), buf_free(e, &db), buf_free(e, &dx);
}

// ---- attention ------------------------------------------------------------------

static void test_attention(Env *e, const char *name, int64_t B, int64_t Lq, int64_t Lk, int heads, int64_t D,
                           int causal) {
    const int64_t HD = heads * D;
    Buf q = buf_in(e, 41, -4, 4, SH(B, Lq, HD)); // peaked rows, as in the forward test
    Buf k = buf_in(e, 42, -2, 2, SH(B, Lk, HD));
    Buf v = buf_in(e, 43, -1, 1, SH(B, Lk, HD));
    Buf dout = buf_in(e, 44, -1, 1, SH(B, Lq, HD));
    Buf dq = buf_out(e, SH(B, Lq, HD)), dk = buf_out(e, SH(B, Lk, HD)), dv = buf_out(e, SH(B, Lk, HD));
    e->cpu->attention_backward(e->cpu, &dq.c, &dk.c, &dv.c, &dout.c, &q.c, &k.c, &v.c, heads, causal);
    e->gpu->attention_backward(e->gpu, &dq.g, &dk.g, &dv.g, &dout.g, &q.g, &k.g, &v.g, heads, causal);
    const double low = e->dt == DT_BF16 ? 3e-2 : 4e-3;
    char l[128];
    snprintf(l, sizeof l, "%s dq", name), check_buf(e, l, &dq, 1e-5, low);
    snprintf(l, sizeof l, "%s dk", name), check_buf(e, l, &dk, 2e-5, low);
    snprintf(l, sizeof l, "%s dv", name), check_buf(e, l, &dv, 2e-5, low);
    float *f_dq = download(e, &dq), *f_dk = download(e, &dk), *f_dv = download(e, &dv);
    buf_poison(e, &dq), buf_poison(e, &dk), buf_poison(e, &dv);
    e->gpu->attention_backward(e->gpu, &dq.g, &dk.g, &dv.g, &dout.g, &q.g, &k.g, &v.g, heads, causal);
    snprintf(l, sizeof l, "%s dq", name), check_same(e, l, &dq, f_dq);
    snprintf(l, sizeof l, "%s dk", name), check_same(e, l, &dk, f_dk);
    snprintf(l, sizeof l, "%s dv", name), check_same(e, l, &dv, f_dv);
    check_status(e, name);
    free(f_dq), free(f_dk), free(f_dv);
    buf_free(e, &q), buf_free(e, &k), buf_free(e, &v), buf_free(e, &dout);
    buf_free(e, &dq), buf_free(e, &dk), buf_free(e, &dv);
}

// ---- normalisation --------------------------------------------------------------

// in_place: dx is dy's buffer (the trainer overwrites dy with dx).
static void test_group_norm(Env *e, const char *name, int64_t N, int64_t C, int64_t H, int64_t W, int groups,
                            float eps, int silu, int in_place) {
    Buf x = buf_in(e, 51, 2, 4, SH(N, C, H, W)); // offset mean: a naive variance would show
    Buf g = buf_in(e, 52, 0.5f, 1.5f, SH(C));
    Buf bt = buf_in(e, 53, -0.5f, 0.5f, SH(C));
    Buf dy = buf_in(e, 54, -1, 1, SH(N, C, H, W));
    Buf dg = buf_in(e, 55, -1, 1, SH(C)), db = buf_in(e, 56, -1, 1, SH(C));
    Buf dx = buf_out(e, SH(N, C, H, W));
    float *dy0 = copy_h(&dy), *dg0 = copy_h(&dg), *db0 = copy_h(&db);
    Buf *out = in_place ? &dy : &dx;
    e->cpu->group_norm_backward(e->cpu, &out->c, &dg.c, &db.c, &dy.c, &x.c, &g.c, &bt.c, groups, eps, silu);
    e->gpu->group_norm_backward(e->gpu, &out->g, &dg.g, &db.g, &dy.g, &x.g, &g.g, &bt.g, groups, eps, silu);
    char l[128];
    snprintf(l, sizeof l, "%s dx%s", name, in_place ? " (= dy)" : ""), check_buf(e, l, out, 1e-5, 0);
    snprintf(l, sizeof l, "%s dgamma +=", name), check_buf(e, l, &dg, 1e-5, 0);
    snprintf(l, sizeof l, "%s dbeta +=", name), check_buf(e, l, &db, 1e-5, 0);
    float *f_dg = download(e, &dg), *f_db = download(e, &db);
    buf_reset(e, &dg, dg0), buf_reset(e, &db, db0), buf_reset(e, &dy, dy0);
    e->gpu->group_norm_backward(e->gpu, &out->g, &dg.g, &db.g, &dy.g, &x.g, &g.g, &bt.g, groups, eps, silu);
    snprintf(l, sizeof l, "%s dgamma", name), check_same(e, l, &dg, f_dg);
    snprintf(l, sizeof l, "%s dbeta", name), check_same(e, l, &db, f_db);
    // without parameter gradients (a frozen norm): dx alone
    buf_reset(e, &dy, dy0);
    Buf dx2 = buf_out(e, SH(N, C, H, W));
    e->cpu->group_norm_backward(e->cpu, &dx2.c, NULL, NULL, &dy.c, &x.c, &g.c, &bt.c, groups, eps, silu);
    e->gpu->group_norm_backward(e->gpu, &dx2.g, NULL, NULL, &dy.g, &x.g, &g.g, &bt.g, groups, eps, silu);
    snprintf(l, sizeof l, "%s dx, no dgamma/dbeta", name), check_buf(e, l, &dx2, 1e-5, 0);
    check_status(e, name);
    free(dy0), free(dg0), free(db0), free(f_dg), free(f_db);
    buf_free(e, &x), buf_free(e, &g), buf_free(e, &bt), buf_free(e, &dy), buf_free(e, &dg), buf_free(e, &db);
    buf_free(e, &dx), buf_free(e, &dx2);
}

static void test_layer_norm(Env *e, const char *name, int64_t M, int64_t D, int in_place) {
    Buf x = buf_in(e, 61, -2, 3, SH(M, D));
    Buf g = buf_in(e, 62, 0.5f, 1.5f, SH(D));
    Buf dy = buf_in(e, 63, -1, 1, SH(M, D));
    Buf dg = buf_in(e, 64, -1, 1, SH(D)), db = buf_in(e, 65, -1, 1, SH(D));
    Buf dx = buf_out(e, SH(M, D));
    float *dg0 = copy_h(&dg), *db0 = copy_h(&db), *dy0 = copy_h(&dy);
    Buf *out = in_place ? &dy : &dx;
    e->cpu->layer_norm_backward(e->cpu, &out->c, &dg.c, &db.c, &dy.c, &x.c, &g.c, 1e-5f);
    e->gpu->layer_norm_backward(e->gpu, &out->g, &dg.g, &db.g, &dy.g, &x.g, &g.g, 1e-5f);
    char l[128];
    snprintf(l, sizeof l, "%s dx%s", name, in_place ? " (= dy)" : ""), check_buf(e, l, out, 1e-5, 0);
    snprintf(l, sizeof l, "%s dgamma +=", name), check_buf(e, l, &dg, 1e-5, 0);
    snprintf(l, sizeof l, "%s dbeta +=", name), check_buf(e, l, &db, 1e-5, 0);
    float *f_dg = download(e, &dg), *f_db = download(e, &db);
    buf_reset(e, &dg, dg0), buf_reset(e, &db, db0), buf_reset(e, &dy, dy0);
    e->gpu->layer_norm_backward(e->gpu, &dx.g, &dg.g, &db.g, &dy.g, &x.g, &g.g, 1e-5f); // dx apart from dy
    snprintf(l, sizeof l, "%s dgamma", name), check_same(e, l, &dg, f_dg);
    snprintf(l, sizeof l, "%s dbeta", name), check_same(e, l, &db, f_db);
    check_status(e, name);
    free(dg0), free(db0), free(dy0), free(f_dg), free(f_db);
    buf_free(e, &x), buf_free(e, &g), buf_free(e, &dy), buf_free(e, &dg), buf_free(e, &db), buf_free(e, &dx);
}

static void test_softmax(Env *e, const char *name, int64_t M, int64_t D) {
    Buf x = buf_in(e, 71, -8, 8, SH(M, D));
    Buf y = buf_out(e, SH(M, D));
    e->cpu->softmax(e->cpu, &y.c, &x.c); // y: the forward output both sides read
    round_to(y.h, y.n, e->dt);
    backend_upload_f32(e->gpu, &y.g, y.h, y.n);
    Buf dy = buf_in(e, 72, -1, 1, SH(M, D));
    Buf dx = buf_out(e, SH(M, D));
    e->cpu->softmax_backward(e->cpu, &dx.c, &dy.c, &y.c);
    e->gpu->softmax_backward(e->gpu, &dx.g, &dy.g, &y.g);
    check_buf(e, name, &dx, 1e-5, 0);
    e->cpu->softmax_backward(e->cpu, &dy.c, &dy.c, &y.c); // in place
    e->gpu->softmax_backward(e->gpu, &dy.g, &dy.g, &y.g);
    char l[128];
    snprintf(l, sizeof l, "%s in place", name), check_buf(e, l, &dy, 1e-5, 0);
    check_status(e, name);
    buf_free(e, &x), buf_free(e, &y), buf_free(e, &dy), buf_free(e, &dx);
}

// ---- elementwise and layout ------------------------------------------------------

typedef void (*UnaryBwd)(const Backend *, Tensor *, const Tensor *, const Tensor *);

static void test_act(Env *e, const char *name, size_t off) {
    Buf x = buf_in(e, 81, -6, 6, SH(2, 320, 64, 64));
    Buf dy = buf_in(e, 82, -1, 1, SH(2, 320, 64, 64));
    Buf dx = buf_out(e, SH(2, 320, 64, 64));
    UnaryBwd cpu_op = *(UnaryBwd *)((char *)e->cpu + off), gpu_op = *(UnaryBwd *)((char *)e->gpu + off);
    cpu_op(e->cpu, &dx.c, &dy.c, &x.c);
    gpu_op(e->gpu, &dx.g, &dy.g, &x.g);
    check_buf(e, name, &dx, 1e-5, 0);
    cpu_op(e->cpu, &dy.c, &dy.c, &x.c); // in place
    gpu_op(e->gpu, &dy.g, &dy.g, &x.g);
    char l[128];
    snprintf(l, sizeof l, "%s in place", name), check_buf(e, l, &dy, 1e-5, 0);
    check_status(e, name);
    buf_free(e, &x), buf_free(e, &dy), buf_free(e, &dx);
}

static void test_geglu(Env *e) {
    Buf x = buf_in(e, 91, -4, 4, SH(2, 1024, 2 * 1280));
    Buf dy = buf_in(e, 92, -1, 1, SH(2, 1024, 1280));
    Buf dx = buf_out(e, SH(2, 1024, 2 * 1280));
    e->cpu->geglu_backward(e->cpu, &dx.c, &dy.c, &x.c);
    e->gpu->geglu_backward(e->gpu, &dx.g, &dy.g, &x.g);
    check_buf(e, "geglu backward (2,1024,2560)", &dx, 1e-5, 0);
    check_status(e, "geglu backward");
    buf_free(e, &x), buf_free(e, &dy), buf_free(e, &dx);
}

static void test_layout(Env *e) {
    // upsample to an even and to an odd skip size
    const int64_t oh[2] = {32, 31}, ow[2] = {32, 32};
    for (int i = 0; i < 2; i++) {
        Buf dy = buf_in(e, 101 + i, -1, 1, SH(2, 640, oh[i], ow[i]));
        Buf dx = buf_out(e, SH(2, 640, 16, 16));
        e->cpu->upsample_nearest2x_backward(e->cpu, &dx.c, &dy.c);
        e->gpu->upsample_nearest2x_backward(e->gpu, &dx.g, &dy.g);
        char l[96];
        snprintf(l, sizeof l, "upsample backward (%lld,%lld) -> (16,16)", (long long)oh[i], (long long)ow[i]);
        check_buf(e, l, &dx, 1e-6, 0); // sums of 4 (or 2, 1) values: the CPU's order
        buf_free(e, &dy), buf_free(e, &dx);
    }
    Buf dy = buf_in(e, 103, -1, 1, SH(2, 320, 64, 64));
    Buf dbias = buf_out(e, SH(2, 320));
    e->cpu->add_channel_bias_backward(e->cpu, &dbias.c, &dy.c);
    e->gpu->add_channel_bias_backward(e->gpu, &dbias.g, &dy.g);
    check_buf(e, "add_channel_bias backward (2,320,64,64)", &dbias, 1e-5, 0);
    float *f = download(e, &dbias);
    buf_poison(e, &dbias);
    e->gpu->add_channel_bias_backward(e->gpu, &dbias.g, &dy.g);
    check_same(e, "add_channel_bias backward", &dbias, f);
    free(f);
    Buf dcat = buf_in(e, 104, -1, 1, SH(2, 960, 32, 32));
    Buf da = buf_out(e, SH(2, 320, 32, 32)), db = buf_out(e, SH(2, 640, 32, 32));
    e->cpu->concat_channels_backward(e->cpu, &da.c, &db.c, &dcat.c);
    e->gpu->concat_channels_backward(e->gpu, &da.g, &db.g, &dcat.g);
    check_buf(e, "concat backward 320+640: da", &da, 0, 0);
    check_buf(e, "concat backward 320+640: db", &db, 0, 0);
    Buf db2 = buf_out(e, SH(2, 640, 32, 32));
    e->cpu->concat_channels_backward(e->cpu, NULL, &db2.c, &dcat.c);
    e->gpu->concat_channels_backward(e->gpu, NULL, &db2.g, &dcat.g);
    check_buf(e, "concat backward db alone", &db2, 0, 0);
    check_status(e, "layout backward");
    buf_free(e, &dy), buf_free(e, &dbias), buf_free(e, &dcat), buf_free(e, &da), buf_free(e, &db), buf_free(e, &db2);
}

static void test_embedding(Env *e) {
    int32_t ids[2 * 77]; // (B, L), with repeats (the padding token, as CLIP's prompts have)
    for (int i = 0; i < 2 * 77; i++) ids[i] = i % 77 > 40 ? 999 : (i * 7919 + 13) % 1000;
    int64_t ish[2] = {2, 77};
    Tensor ids_c = tensor_make(DT_I32, DEV_CPU, ids, 2, ish);
    Tensor ids_g = tensor_make(DT_I32, e->gpu->device, gpu_alloc(e, sizeof ids), 2, ish);
    e->gpu->upload(e->gpu, ids_g.data, ids, sizeof ids);
    Buf dy = buf_in(e, 111, -1, 1, SH(2, 77, 768));
    Buf dt = buf_in(e, 112, -1, 1, SH(1000, 768));
    float *dt0 = copy_h(&dt);
    e->cpu->embedding_backward(e->cpu, &dt.c, &ids_c, &dy.c);
    e->gpu->embedding_backward(e->gpu, &dt.g, &ids_g, &dy.g);
    check_buf(e, "embedding backward (2,77) into (1000,768) +=", &dt, 1e-6, 0);
    float *f = download(e, &dt);
    buf_reset(e, &dt, dt0);
    e->gpu->embedding_backward(e->gpu, &dt.g, &ids_g, &dy.g);
    check_same(e, "embedding backward", &dt, f);
    check_status(e, "embedding backward");
    free(f), free(dt0);
    e->gpu->free(e->gpu, ids_g.data);
    buf_free(e, &dy), buf_free(e, &dt);
}

// ---- the training step's kernels ---------------------------------------------------

static void test_mse(Env *e) {
    Buf pred = buf_in(e, 121, -2, 2, SH(3, 4, 64, 64)), target = buf_in(e, 122, -2, 2, SH(3, 4, 64, 64));
    Buf d = buf_out(e, SH(3, 4, 64, 64));
    const float k[3] = {0.5f, 1.0f / 49152, 2.0f};
    double sq_c[3] = {0}, sq_g[3] = {-1, -1, -1};
    e->cpu->mse_backward(e->cpu, &d.c, sq_c, &pred.c, &target.c, k);
    e->gpu->mse_backward(e->gpu, &d.g, sq_g, &pred.g, &target.g, k);
    check_buf(e, "mse backward dpred (3,4,64,64)", &d, 1e-6, 0);
    double worst = 0;
    for (int n = 0; n < 3; n++) worst = fmax(worst, fabs(sq_g[n] - sq_c[n]) / fabs(sq_c[n]));
    check_true(e->t, worst <= 1e-12, "mse backward sum of squares [%s]: rel err %.2e (tol 1e-12)",
               dtype_name(e->dt), worst);
    double sq_g2[3];
    e->gpu->mse_backward(e->gpu, &d.g, sq_g2, &pred.g, &target.g, k);
    check_true(e->t, !memcmp(sq_g, sq_g2, sizeof sq_g), "mse backward sums [%s] deterministic", dtype_name(e->dt));
    // dpred == pred: the trainer's in-place form
    e->cpu->mse_backward(e->cpu, &pred.c, sq_c, &pred.c, &target.c, k);
    e->gpu->mse_backward(e->gpu, &pred.g, sq_g, &pred.g, &target.g, k);
    check_buf(e, "mse backward in place", &pred, 1e-6, 0);
    check_status(e, "mse backward");
    buf_free(e, &pred), buf_free(e, &target), buf_free(e, &d);
}

// The fp32 optimizer kernels (F32 pointers whatever the activation dtype): run once.
static void test_optim(Env *e) {
    const size_t n = 3000017; // not a multiple of any block size
    float *p = xmalloc(n * 4), *g = xmalloc(n * 4), *m = xmalloc(n * 4), *v = xmalloc(n * 4), *got = xmalloc(n * 4);
    fill_uniform(p, n, 131, -1, 1);
    fill_uniform(g, n, 132, -1e-2f, 1e-2f);
    fill_uniform(m, n, 133, -1e-3f, 1e-3f);
    fill_uniform(v, n, 134, 0, 1e-5f);
    g[7] = 0, v[7] = 0; // the eps-dominated corner
    float *dp = gpu_alloc(e, n * 4), *dg = gpu_alloc(e, n * 4), *dm = gpu_alloc(e, n * 4), *dv = gpu_alloc(e, n * 4);
    e->gpu->upload(e->gpu, dp, p, n * 4), e->gpu->upload(e->gpu, dg, g, n * 4);
    e->gpu->upload(e->gpu, dm, m, n * 4), e->gpu->upload(e->gpu, dv, v, n * 4);
    // step 3 of lr 1e-4, torch's defaults (the scalars as src/train/optim.c rounds them)
    const double lr = 1e-4, b1 = 0.9, b2 = 0.999, wd = 1e-2;
    const int step = 3;
    AdamWScalars s = {.decay = (float)(1 - lr * wd), .w1 = (float)(1 - b1), .b2 = (float)b2, .w2 = (float)(1 - b2),
                      .bc2_sqrt = (float)sqrt(1 - pow(b2, step)), .eps = 1e-8f,
                      .neg_step = (float)(-lr / (1 - pow(b1, step)))};
    e->cpu->adamw(e->cpu, p, g, m, v, n, &s);
    e->gpu->adamw(e->gpu, dp, dg, dm, dv, n, &s);
    e->gpu->sync(e->gpu);
    float *hs[3] = {p, m, v}, *ds[3] = {dp, dm, dv};
    const char *names[3] = {"param", "exp_avg", "exp_avg_sq"};
    for (int i = 0; i < 3; i++) {
        e->gpu->download(e->gpu, got, ds[i], n * 4);
        size_t diff = 0;
        for (size_t j = 0; j < n; j++) diff += memcmp(&got[j], &hs[i][j], 4) != 0;
        check_true(e->t, diff == 0, "adamw %-10s bit-identical to the CPU: %zu of %zu differ", names[i], diff, n);
    }
    // EMA of the updated parameters into the gradients' buffer as the shadow
    e->cpu->ema(e->cpu, g, p, n, 1 - 0.9999f);
    e->gpu->ema(e->gpu, dg, dp, n, 1 - 0.9999f);
    e->gpu->download(e->gpu, got, dg, n * 4);
    size_t diff = 0;
    for (size_t j = 0; j < n; j++) diff += memcmp(&got[j], &g[j], 4) != 0;
    check_true(e->t, diff == 0, "ema bit-identical to the CPU: %zu of %zu differ", diff, n);
    // sum of squares (clip_grad_norm_), in double: a different order than the CPU's, so 1e-12
    const double sc = e->cpu->sum_squares(e->cpu, p, n), sg = e->gpu->sum_squares(e->gpu, dp, n);
    const double sg2 = e->gpu->sum_squares(e->gpu, dp, n);
    check_true(e->t, fabs(sg - sc) <= 1e-12 * sc, "sum_squares %.17g vs CPU %.17g (rel %.2e, tol 1e-12)", sg, sc,
               fabs(sg - sc) / sc);
    check_true(e->t, !memcmp(&sg, &sg2, sizeof sg), "sum_squares deterministic");
    check_status(e, "optimizer");
    e->gpu->free(e->gpu, dp), e->gpu->free(e->gpu, dg), e->gpu->free(e->gpu, dm), e->gpu->free(e->gpu, dv);
    free(p), free(g), free(m), free(v), free(got);
}

static void run_all(Env *e) {
    printf("-- CUDA backward, activations %s\n", dtype_name(e->dt));
    test_linear(e, "linear bwd (4096,320)->320", 4096, 320, 320, 1, 1);
    test_linear(e, "linear bwd (154,768)->3072", 154, 768, 3072, 1, 1);
    test_linear(e, "linear bwd (154,768)->320 no dx, no db", 154, 768, 320, 0, 0);
    test_linear(e, "linear bwd (8192,1280)->5120 (GEGLU proj)", 8192, 1280, 5120, 1, 1);
    test_matmul(e);
    test_conv(e, "conv bwd 3x3 (2,320,64,64)->320", 2, 320, 64, 64, 320, 3, 1, 1, 1);
    test_conv(e, "conv bwd 3x3 conv_in (2,4,64,64)->320 no dx", 2, 4, 64, 64, 320, 3, 1, 1, 0);
    test_conv(e, "conv bwd 3x3 s2 (2,640,16,16)->640", 2, 640, 16, 16, 640, 3, 2, 1, 1);
    test_conv(e, "conv bwd 1x1 (2,960,32,32)->640", 2, 960, 32, 32, 640, 1, 1, 0, 1);
    test_conv(e, "conv bwd 3x3 odd (1,3,37,29)->5", 1, 3, 37, 29, 5, 3, 1, 1, 1);
    test_attention(e, "attn bwd self D=40 (2,1024,320) h8", 2, 1024, 1024, 8, 40, 0);
    test_attention(e, "attn bwd cross D=80 (2,256,640) Lk77 h8", 2, 256, 77, 8, 80, 0);
    test_attention(e, "attn bwd self D=64 (2,1024,320) h5", 2, 1024, 1024, 5, 64, 0);
    test_attention(e, "attn bwd causal D=64 (2,77,768) h12", 2, 77, 77, 12, 64, 1);
    test_attention(e, "attn bwd tiny D=4 (3,37,8) Lk19 h2", 3, 37, 19, 2, 4, 0);
    test_attention(e, "attn bwd tiny causal D=2 (2,33,4) h2", 2, 33, 33, 2, 2, 1);
    // P + dP over 256 MiB: query blocks of 510 and a last one of 13 (dK, dV added across blocks)
    test_attention(e, "attn bwd causal 5 blocks D=8 (1,2053,256) h32", 1, 2053, 2053, 32, 8, 1);
    test_group_norm(e, "gn bwd (2,320,64,64) g32", 2, 320, 64, 64, 32, 1e-5f, 0, 0);
    test_group_norm(e, "gn+silu bwd (2,640,32,32) g32", 2, 640, 32, 32, 32, 1e-6f, 1, 0);
    test_group_norm(e, "gn+silu bwd (1,96,7,9) g32 in place", 1, 96, 7, 9, 32, 1e-5f, 1, 1);
    test_layer_norm(e, "ln bwd (8192,320)", 8192, 320, 0);
    test_layer_norm(e, "ln bwd (154,768) in place", 154, 768, 1);
    test_softmax(e, "softmax bwd (4096,77)", 4096, 77);
    test_softmax(e, "softmax bwd (64,4096)", 64, 4096);
    test_act(e, "silu bwd (2,320,64,64)", offsetof(Backend, silu_backward));
    test_act(e, "gelu bwd (2,320,64,64)", offsetof(Backend, gelu_backward));
    test_act(e, "quick_gelu bwd (2,320,64,64)", offsetof(Backend, quick_gelu_backward));
    test_geglu(e);
    test_layout(e);
    test_embedding(e);
    test_mse(e);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *gpu = NULL;
    // SDC_TEST_GPU_IS_CPU=1: a second CPU backend stands in for the GPU (F32 only), to check the harness
    // itself without a GPU: every comparison must pass with error 0
    const char *standin = getenv("SDC_TEST_GPU_IS_CPU");
    if (standin && standin[0] == '1') {
        if (backend_cpu_create(&gpu, 0, &err) != SDC_OK) {
            printf("FAILED: CPU backend: %s\n", err.msg);
            return 1;
        }
        printf("-- the CPU backend stands in for the GPU (SDC_TEST_GPU_IS_CPU=1): a check of the harness\n");
    } else {
        const int gpu_rc = test_cuda_backend(&gpu, DT_F32);
        if (gpu_rc >= 0) return gpu_rc;
    }
    Backend *cpu = NULL;
    if (backend_cpu_create(&cpu, 0, &err) != SDC_OK) {
        printf("FAILED: CPU backend: %s\n", err.msg);
        return 1;
    }
    Env e = {.t = &t, .cpu = cpu, .gpu = gpu, .dt = DT_F32, .dt_tol = 0};
    double t0 = now_s();
    run_all(&e);
    test_optim(&e);
    backend_destroy(gpu);
    const DType low[2] = {DT_F16, DT_BF16};
    const double low_tol[2] = {2e-3, 1e-2};
    for (int k = 0; k < 2 && !(standin && standin[0] == '1'); k++) {
        Backend *g = NULL;
        if (backend_cuda_create(&g, 0, low[k], &err) != SDC_OK) {
            check_true(&t, 0, "create CUDA backend %s: %s", dtype_name(low[k]), err.msg);
            continue;
        }
        e.gpu = g, e.dt = low[k], e.dt_tol = low_tol[k];
        run_all(&e);
        backend_destroy(g);
    }
    printf("(%.1f s)\n", now_s() - t0);
    backend_destroy(cpu);
    return test_summary(&t);
}
