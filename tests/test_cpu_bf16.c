// test_cpu_bf16.c: the CPU's bf16 ops (backend_cpu_create_bf16, oneDNN)
// against their fp32 twins (the reference CPU backend), on random inputs of
// SD-like shapes. On a CPU with AVX512-BF16 or AMX oneDNN computes them; on
// one without (oneDNN 2.x implements no bf16 there) sdc's emulation does
// (kernels/cpu/bf16_cpu.c); the last lines name what ran. Skipped (exit 77)
// in a build without oneDNN, after checking that bf16 is refused there.
//
// Per conv2d / linear / attention case, three results:
//   bf16  the bf16 op (inputs and weights rounded to bf16, fp32 accumulation)
//   ref   the fp32 op on the fp32 inputs
//   rnd   the fp32 op on the inputs and weights rounded to bf16 first
// and four checks:
//   bf16 vs rnd, tol 2^-16 (conv2d, linear): once the inputs are rounded, both
//     multiply exactly (a bf16 x bf16 product fits in fp32) and accumulate in
//     fp32; only the order of the K additions differs, each rounding by 2^-24
//     relative, which stays far below 2^-16 of the largest output for
//     K <= 1280. Attention rounds its softmax probabilities p_j to bf16 as
//     well (P.V in bf16), which rnd does not: each by at most u p_j (u =
//     2^-8, see below), so an output moves by at most u sum_j p_j |v_j| <=
//     u max|v|; tol u max|v| / max|rnd| + 2^-16, computed per case. This is
//     what shows the op computes what it says.
//   bf16 vs ref, tol 2^-7 (conv2d, linear): bf16 keeps 8 significant bits
//     (7 stored), so rounding to nearest moves a value by at most u = 2^-8
//     of itself, and a product of two rounded factors by at most 2u. Over K
//     products of random sign these errors add as a random walk (~ sqrt(K)
//     u |x w|) while the output grows like sqrt(K) |x w|, so the error
//     relative to the largest output stays below u whatever K (about 0.7u
//     measured); 2u = 2^-7 (7.8e-3) is asserted. A worst case adding every
//     error with one sign, 2u K |x w| over an output of sqrt(K) |x w|, would
//     allow 2^-7 sqrt(K) (0.28 for K = 1280): far looser than anything
//     measured, so not what is asserted.
//     Attention, tol 2^-6: three roundings (q and k into the logits, which
//     the softmax turns into relative errors of p; p itself; v), each about
//     u relative per term, and an output that averages v over the keys is
//     smaller than the v it averages, so relative to max|out| the error is a
//     few u (4u = 2^-6 allowed).
//   bf16 != ref bit for bit, and bf16 vs ref above 2^-16: the op really ran
//     in bf16 (fp32 alone differs from the reference by reordering only).
// Parameter vectors (bias, norm affine, embedding rows) are bf16 on the bf16
// backend and widened to fp32: group_norm, layer_norm and embedding must equal
// the fp32 op on the rounded parameters bit for bit.
//
// The mixed-precision variant (training: fp32 master weights): its forward
// with fp32 weights equals the bf16 variant's with the weights rounded, bit
// for bit; its backward of linear, conv2d and attention gets the same four
// checks against the fp32 backward (on rounded operands: dy, x, w, or dout,
// q, k, v), with the same tolerances (the backward's reductions are matmuls
// of the same kind: over N for dx, over M or the pixels for dw; attention's
// against rounded operands: TOL_ATT_BWD_RND), and the bias
// gradient, a sum of the unrounded dy, equals fp32's bit for bit.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/tensor.h"
#include "testutil.h"

#define TOL_EXACT (1.0 / 65536) // 2^-16
#define TOL_BF16 (1.0 / 128)    // 2^-7
#define TOL_ATT_BF16 (1.0 / 64) // 2^-6
// Attention's backward against fp32 on rounded operands: where oneDNN computes
// bf16 it also rounds the softmax's P (for dV = P^T dO) and dS (for dQ = dS K,
// dK = dS^T Q) to bf16, as PyTorch's bf16 attention backward does; the fp32
// reference keeps them fp32. Each term of those sums moves by at most u (2^-8)
// of itself, but dS's rows sum to zero, so dQ and dK cancel and the error
// relative to their largest entry can exceed u: measured 0.4-0.65 u (AMD
// Zen 5, oneDNN 2.6.3); 2u is asserted. The emulation (no bf16 CPU) keeps P
// and dS fp32 and meets it with 0.
#define TOL_ATT_BWD_RND (1.0 / 128) // 2^-7

static Backend *f32be, *bfbe, *mixbe;

static float *rnd_floats(size_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc(n * sizeof *x);
    fill_uniform(x, n, seed, lo, hi);
    return x;
}
// x rounded to bf16 (tensor.c's nearest-even), back in f32
static float *rounded(const float *x, size_t n) {
    float *r = malloc(n * sizeof *r);
    for (size_t i = 0; i < n; i++) r[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return r;
}
static uint16_t *to_bf16(const float *x, size_t n) {
    uint16_t *r = malloc(n * sizeof *r);
    for (size_t i = 0; i < n; i++) r[i] = f32_to_bf16(x[i]);
    return r;
}
static Tensor T(DType dt, void *data, int nd, const int64_t *shape) { return tensor_make(dt, DEV_CPU, data, nd, shape); }

// The four checks of one case (see the top of the file).
static void compare(TestCtx *t, const char *name, const float *bf, const float *ref, const float *rnd, size_t n,
                    double tol_rnd, double tol_ref) {
    char what[160];
    snprintf(what, sizeof what, "%s: bf16 vs fp32 on rounded inputs", name);
    check_rel(t, what, bf, rnd, n, tol_rnd);
    snprintf(what, sizeof what, "%s: bf16 vs fp32", name);
    check_rel(t, what, bf, ref, n, tol_ref);
    const double e = rel_err(bf, ref, n);
    check_true(t, memcmp(bf, ref, n * sizeof *bf) != 0 && e > TOL_EXACT,
               "%s: not fp32 (rel_err %.3e > 2^-16, not bit-equal)", name, e);
}

static void linear_case(TestCtx *t, const char *name, int64_t M, int64_t K, int64_t N, uint64_t seed) {
    float *x = rnd_floats(M * K, seed, -1, 1), *w = rnd_floats(N * K, seed + 1, -0.1f, 0.1f);
    float *b = rnd_floats(N, seed + 2, -0.5f, 0.5f);
    float *xr = rounded(x, M * K), *wr = rounded(w, N * K), *br = rounded(b, N);
    uint16_t *wb = to_bf16(w, N * K), *bb = to_bf16(b, N);
    float *ref = malloc(M * N * 4), *rnd = malloc(M * N * 4), *bf = malloc(M * N * 4);
    Tensor to = T(DT_F32, ref, 2, (int64_t[]){M, N}), tx = T(DT_F32, x, 2, (int64_t[]){M, K});
    Tensor tw = T(DT_F32, w, 2, (int64_t[]){N, K}), tb = T(DT_F32, b, 1, (int64_t[]){N});
    f32be->linear(f32be, &to, &tx, &tw, &tb);
    to.data = rnd, tx.data = xr, tw.data = wr, tb.data = br;
    f32be->linear(f32be, &to, &tx, &tw, &tb);
    to.data = bf, tx.data = x;
    Tensor twb = T(DT_BF16, wb, 2, (int64_t[]){N, K}), tbb = T(DT_BF16, bb, 1, (int64_t[]){N});
    bfbe->linear(bfbe, &to, &tx, &twb, &tbb);
    SdcError err = {0};
    check_true(t, backend_status(bfbe, &err) == 0, "%s: the bf16 op ran%s%s", name, err.code ? ": " : "", err.msg);
    compare(t, name, bf, ref, rnd, M * N, TOL_EXACT, TOL_BF16);
    free(x), free(w), free(b), free(xr), free(wr), free(br), free(wb), free(bb), free(ref), free(rnd), free(bf);
}

static void conv_case(TestCtx *t, const char *name, int N, int C, int H, int W, int OC, int KS, int stride, int pad,
                      uint64_t seed) {
    const int OH = (H + 2 * pad - KS) / stride + 1, OW = (W + 2 * pad - KS) / stride + 1;
    const size_t nx = (size_t)N * C * H * W, nw = (size_t)OC * C * KS * KS, no = (size_t)N * OC * OH * OW;
    float *x = rnd_floats(nx, seed, -1, 1), *w = rnd_floats(nw, seed + 1, -0.1f, 0.1f);
    float *b = rnd_floats(OC, seed + 2, -0.5f, 0.5f);
    float *xr = rounded(x, nx), *wr = rounded(w, nw), *br = rounded(b, OC);
    uint16_t *wb = to_bf16(w, nw), *bb = to_bf16(b, OC);
    float *ref = malloc(no * 4), *rnd = malloc(no * 4), *bf = malloc(no * 4);
    Tensor to = T(DT_F32, ref, 4, (int64_t[]){N, OC, OH, OW}), tx = T(DT_F32, x, 4, (int64_t[]){N, C, H, W});
    Tensor tw = T(DT_F32, w, 4, (int64_t[]){OC, C, KS, KS}), tb = T(DT_F32, b, 1, (int64_t[]){OC});
    f32be->conv2d(f32be, &to, &tx, &tw, &tb, stride, pad);
    to.data = rnd, tx.data = xr, tw.data = wr, tb.data = br;
    f32be->conv2d(f32be, &to, &tx, &tw, &tb, stride, pad);
    to.data = bf, tx.data = x;
    Tensor twb = T(DT_BF16, wb, 4, (int64_t[]){OC, C, KS, KS}), tbb = T(DT_BF16, bb, 1, (int64_t[]){OC});
    bfbe->conv2d(bfbe, &to, &tx, &twb, &tbb, stride, pad);
    SdcError err = {0};
    check_true(t, backend_status(bfbe, &err) == 0, "%s: the bf16 op ran%s%s", name, err.code ? ": " : "", err.msg);
    compare(t, name, bf, ref, rnd, no, TOL_EXACT, TOL_BF16);
    free(x), free(w), free(b), free(xr), free(wr), free(br), free(wb), free(bb), free(ref), free(rnd), free(bf);
}

// q (B, Lq, H*D), k and v (B, Lk, H*D); q and k spread as SD's are after
// their projections, so the softmax is neither flat nor one-hot.
static void attention_case(TestCtx *t, const char *name, int B, int Lq, int Lk, int heads, int D, int causal,
                           uint64_t seed) {
    const size_t nq = (size_t)B * Lq * heads * D, nk = (size_t)B * Lk * heads * D;
    float *q = rnd_floats(nq, seed, -2, 2), *k = rnd_floats(nk, seed + 1, -2, 2), *v = rnd_floats(nk, seed + 2, -1, 1);
    float *qr = rounded(q, nq), *kr = rounded(k, nk), *vr = rounded(v, nk);
    float *ref = malloc(nq * 4), *rnd = malloc(nq * 4), *bf = malloc(nq * 4);
    Tensor to = T(DT_F32, ref, 3, (int64_t[]){B, Lq, heads * D}), tq = T(DT_F32, q, 3, (int64_t[]){B, Lq, heads * D});
    Tensor tk = T(DT_F32, k, 3, (int64_t[]){B, Lk, heads * D}), tv = T(DT_F32, v, 3, (int64_t[]){B, Lk, heads * D});
    f32be->attention(f32be, &to, &tq, &tk, &tv, heads, causal);
    to.data = rnd, tq.data = qr, tk.data = kr, tv.data = vr;
    f32be->attention(f32be, &to, &tq, &tk, &tv, heads, causal);
    to.data = bf, tq.data = q, tk.data = k, tv.data = v;
    bfbe->attention(bfbe, &to, &tq, &tk, &tv, heads, causal);
    SdcError err = {0};
    check_true(t, backend_status(bfbe, &err) == 0, "%s: the bf16 op ran%s%s", name, err.code ? ": " : "", err.msg);
    double mv = 0, mo = 1e-30; // max|v|, max|rnd|
    for (size_t i = 0; i < nk; i++) mv = fmax(mv, fabs(vr[i]));
    for (size_t i = 0; i < nq; i++) mo = fmax(mo, fabs(rnd[i]));
    compare(t, name, bf, ref, rnd, nq, mv / mo / 256 + TOL_EXACT, TOL_ATT_BF16);
    free(q), free(k), free(v), free(qr), free(kr), free(vr), free(ref), free(rnd), free(bf);
}

// group_norm (+SiLU), layer_norm and embedding with bf16 parameters: the fp32
// op on the rounded parameters, bit for bit.
static void param_ops(TestCtx *t) {
    const int N = 2, C = 64, S = 64, G = 8, V = 50, Dm = 48, L = 7;
    float *x = rnd_floats((size_t)N * C * S, 11, -2, 2), *g = rnd_floats(C, 12, 0.5f, 1.5f);
    float *be_ = rnd_floats(C, 13, -0.5f, 0.5f), *gr = rounded(g, C), *br = rounded(be_, C);
    uint16_t *gb = to_bf16(g, C), *bb = to_bf16(be_, C);
    float *o1 = malloc((size_t)N * C * S * 4), *o2 = malloc((size_t)N * C * S * 4);
    Tensor tx = T(DT_F32, x, 3, (int64_t[]){N, C, S}), to = T(DT_F32, o1, 3, (int64_t[]){N, C, S});
    Tensor tg = T(DT_F32, gr, 1, (int64_t[]){C}), tb = T(DT_F32, br, 1, (int64_t[]){C});
    Tensor tgb = T(DT_BF16, gb, 1, (int64_t[]){C}), tbb = T(DT_BF16, bb, 1, (int64_t[]){C});
    f32be->group_norm(f32be, &to, &tx, &tg, &tb, G, 1e-5f, 1);
    to.data = o2;
    bfbe->group_norm(bfbe, &to, &tx, &tgb, &tbb, G, 1e-5f, 1);
    check_true(t, !memcmp(o1, o2, (size_t)N * C * S * 4), "group_norm+silu, bf16 gamma/beta == fp32 on them rounded");
    // layer norm over the last dim C of (N*S, C)
    Tensor lx = T(DT_F32, x, 2, (int64_t[]){N * S, C}), lo = T(DT_F32, o1, 2, (int64_t[]){N * S, C});
    f32be->layer_norm(f32be, &lo, &lx, &tg, &tb, 1e-5f);
    lo.data = o2;
    bfbe->layer_norm(bfbe, &lo, &lx, &tgb, &tbb, 1e-5f);
    check_true(t, !memcmp(o1, o2, (size_t)N * S * C * 4), "layer_norm, bf16 gamma/beta == fp32 on them rounded");
    float *tab = rnd_floats((size_t)V * Dm, 14, -1, 1), *tabr = rounded(tab, (size_t)V * Dm);
    uint16_t *tabb = to_bf16(tab, (size_t)V * Dm);
    int32_t ids[7] = {0, 49, 3, 3, 17, 25, 1};
    Tensor ti = T(DT_I32, ids, 2, (int64_t[]){1, L}), eo = T(DT_F32, o1, 3, (int64_t[]){1, L, Dm});
    Tensor tt = T(DT_F32, tabr, 2, (int64_t[]){V, Dm}), ttb = T(DT_BF16, tabb, 2, (int64_t[]){V, Dm});
    f32be->embedding(f32be, &eo, &ti, &tt);
    eo.data = o2;
    bfbe->embedding(bfbe, &eo, &ti, &ttb);
    check_true(t, !memcmp(o1, o2, (size_t)L * Dm * 4), "embedding, bf16 table == fp32 table rounded");
    SdcError err = {0};
    check_true(t, backend_status(bfbe, &err) == 0, "parameter ops ran%s%s", err.code ? ": " : "", err.msg);
    free(x), free(g), free(be_), free(gr), free(br), free(gb), free(bb), free(o1), free(o2), free(tab), free(tabr),
        free(tabb);
}

// The gradients of one backward on be: dx and dw (added to zeros), db.
typedef struct Grads {
    float *dx, *dw, *db;
} Grads;
static Grads grads(size_t nx, size_t nw, size_t nb) {
    return (Grads){calloc(nx, 4), calloc(nw, 4), nb ? calloc(nb, 4) : NULL};
}
static void grads_free(Grads g) { free(g.dx), free(g.dw), free(g.db); }

static void backward_checks(TestCtx *t, const char *name, Grads bf, Grads ref, Grads rnd, size_t nx, size_t nw,
                            size_t nb) {
    char what[160];
    snprintf(what, sizeof what, "%s backward dx", name);
    compare(t, what, bf.dx, ref.dx, rnd.dx, nx, TOL_EXACT, TOL_BF16);
    snprintf(what, sizeof what, "%s backward dw", name);
    compare(t, what, bf.dw, ref.dw, rnd.dw, nw, TOL_EXACT, TOL_BF16);
    if (nb) check_true(t, !memcmp(bf.db, ref.db, nb * 4), "%s backward db == fp32's (unrounded dy)", name);
    SdcError err = {0};
    check_true(t, backend_status(mixbe, &err) == 0, "%s backward ran%s%s", name, err.code ? ": " : "", err.msg);
}

static void linear_backward_case(TestCtx *t, const char *name, int64_t M, int64_t K, int64_t N, uint64_t seed) {
    float *x = rnd_floats(M * K, seed, -1, 1), *w = rnd_floats(N * K, seed + 1, -0.1f, 0.1f);
    float *dy = rnd_floats(M * N, seed + 2, -1, 1);
    float *xr = rounded(x, M * K), *wr = rounded(w, N * K), *dyr = rounded(dy, M * N);
    Grads ref = grads(M * K, N * K, N), rnd = grads(M * K, N * K, N), bf = grads(M * K, N * K, N);
    Tensor tx = T(DT_F32, x, 2, (int64_t[]){M, K}), tw = T(DT_F32, w, 2, (int64_t[]){N, K});
    Tensor tdy = T(DT_F32, dy, 2, (int64_t[]){M, N});
    Tensor dx = T(DT_F32, ref.dx, 2, (int64_t[]){M, K}), dw = T(DT_F32, ref.dw, 2, (int64_t[]){N, K});
    Tensor db = T(DT_F32, ref.db, 1, (int64_t[]){N});
    f32be->linear_backward(f32be, &dx, &dw, &db, &tdy, &tx, &tw);
    dx.data = bf.dx, dw.data = bf.dw, db.data = bf.db;
    mixbe->linear_backward(mixbe, &dx, &dw, &db, &tdy, &tx, &tw);
    dx.data = rnd.dx, dw.data = rnd.dw, db.data = rnd.db, tx.data = xr, tw.data = wr, tdy.data = dyr;
    f32be->linear_backward(f32be, &dx, &dw, &db, &tdy, &tx, &tw);
    backward_checks(t, name, bf, ref, rnd, M * K, N * K, N);
    // the mixed forward rounds its fp32 weights per call: the bf16 variant's result on them rounded
    float *o1 = malloc(M * N * 4), *o2 = malloc(M * N * 4);
    uint16_t *wb = to_bf16(w, N * K);
    Tensor to = T(DT_F32, o1, 2, (int64_t[]){M, N}), twb = T(DT_BF16, wb, 2, (int64_t[]){N, K});
    tx.data = x, tw.data = w;
    mixbe->linear(mixbe, &to, &tx, &tw, NULL);
    to.data = o2;
    bfbe->linear(bfbe, &to, &tx, &twb, NULL);
    check_true(t, !memcmp(o1, o2, M * N * 4), "%s: mixed forward (fp32 weights) == bf16 forward", name);
    free(o1), free(o2), free(wb);
    grads_free(ref), grads_free(rnd), grads_free(bf);
    free(x), free(w), free(dy), free(xr), free(wr), free(dyr);
}

static void conv_backward_case(TestCtx *t, const char *name, int N, int C, int H, int W, int OC, int KS, int stride,
                               int pad, uint64_t seed) {
    const int OH = (H + 2 * pad - KS) / stride + 1, OW = (W + 2 * pad - KS) / stride + 1;
    const size_t nx = (size_t)N * C * H * W, nw = (size_t)OC * C * KS * KS, no = (size_t)N * OC * OH * OW;
    float *x = rnd_floats(nx, seed, -1, 1), *w = rnd_floats(nw, seed + 1, -0.1f, 0.1f);
    float *dy = rnd_floats(no, seed + 2, -1, 1);
    float *xr = rounded(x, nx), *wr = rounded(w, nw), *dyr = rounded(dy, no);
    Grads ref = grads(nx, nw, OC), rnd = grads(nx, nw, OC), bf = grads(nx, nw, OC);
    Tensor tx = T(DT_F32, x, 4, (int64_t[]){N, C, H, W}), tw = T(DT_F32, w, 4, (int64_t[]){OC, C, KS, KS});
    Tensor tdy = T(DT_F32, dy, 4, (int64_t[]){N, OC, OH, OW});
    Tensor dx = T(DT_F32, ref.dx, 4, (int64_t[]){N, C, H, W}), dw = T(DT_F32, ref.dw, 4, (int64_t[]){OC, C, KS, KS});
    Tensor db = T(DT_F32, ref.db, 1, (int64_t[]){OC});
    f32be->conv2d_backward(f32be, &dx, &dw, &db, &tdy, &tx, &tw, stride, pad);
    dx.data = bf.dx, dw.data = bf.dw, db.data = bf.db;
    mixbe->conv2d_backward(mixbe, &dx, &dw, &db, &tdy, &tx, &tw, stride, pad);
    dx.data = rnd.dx, dw.data = rnd.dw, db.data = rnd.db, tx.data = xr, tw.data = wr, tdy.data = dyr;
    f32be->conv2d_backward(f32be, &dx, &dw, &db, &tdy, &tx, &tw, stride, pad);
    backward_checks(t, name, bf, ref, rnd, nx, nw, OC);
    grads_free(ref), grads_free(rnd), grads_free(bf);
    free(x), free(w), free(dy), free(xr), free(wr), free(dyr);
}

static void attention_backward_case(TestCtx *t, const char *name, int B, int Lq, int Lk, int heads, int D,
                                    int causal, uint64_t seed) {
    const size_t nq = (size_t)B * Lq * heads * D, nk = (size_t)B * Lk * heads * D;
    float *in[4] = {rnd_floats(nq, seed, -2, 2), rnd_floats(nk, seed + 1, -2, 2), rnd_floats(nk, seed + 2, -1, 1),
                    rnd_floats(nq, seed + 3, -1, 1)}; // q, k, v, dout
    float *r[4] = {rounded(in[0], nq), rounded(in[1], nk), rounded(in[2], nk), rounded(in[3], nq)};
    float *g[3][3]; // [ref, rnd, bf16][dq, dk, dv]
    for (int i = 0; i < 3; i++) g[i][0] = malloc(nq * 4), g[i][1] = malloc(nk * 4), g[i][2] = malloc(nk * 4);
    const int64_t HD = (int64_t)heads * D;
    for (int run = 0; run < 3; run++) {
        float *const *src = run == 1 ? r : in;
        Backend *be = run == 2 ? mixbe : f32be;
        Tensor tq = T(DT_F32, src[0], 3, (int64_t[]){B, Lq, HD}), tk = T(DT_F32, src[1], 3, (int64_t[]){B, Lk, HD});
        Tensor tv = T(DT_F32, src[2], 3, (int64_t[]){B, Lk, HD}), tdo = T(DT_F32, src[3], 3, (int64_t[]){B, Lq, HD});
        Tensor dq = T(DT_F32, g[run][0], 3, (int64_t[]){B, Lq, HD}), dk = T(DT_F32, g[run][1], 3, (int64_t[]){B, Lk, HD});
        Tensor dv = T(DT_F32, g[run][2], 3, (int64_t[]){B, Lk, HD});
        be->attention_backward(be, &dq, &dk, &dv, &tdo, &tq, &tk, &tv, heads, causal);
    }
    const char *gn[3] = {"dq", "dk", "dv"};
    const size_t n[3] = {nq, nk, nk};
    for (int i = 0; i < 3; i++) {
        char what[160];
        snprintf(what, sizeof what, "%s backward %s", name, gn[i]);
        compare(t, what, g[2][i], g[0][i], g[1][i], n[i], TOL_ATT_BWD_RND, TOL_ATT_BF16);
    }
    SdcError err = {0};
    check_true(t, backend_status(mixbe, &err) == 0, "%s backward ran%s%s", name, err.code ? ": " : "", err.msg);
    for (int i = 0; i < 4; i++) free(in[i]), free(r[i]);
    for (int i = 0; i < 3; i++) free(g[i][0]), free(g[i][1]), free(g[i][2]);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    if (!backend_cpu_bf16_available()) {
        // the refusal a user gets is part of what a build without oneDNN promises
        Backend *none = NULL;
        const int rc = backend_cpu_create_bf16(&none, 1, &err);
        printf("SKIPPED: built without oneDNN (backend_cpu_create_bf16: %d, %s)\n", rc, err.msg);
        return rc == SDC_ERR_UNSUPPORTED && strstr(err.msg, "oneDNN") ? TEST_SKIP_EXIT : 1;
    }
    if (backend_cpu_create(&f32be, 0, &err) || backend_cpu_create_bf16(&bfbe, 0, &err) ||
        backend_cpu_create_bf16_mixed(&mixbe, 0, &err)) {
        printf("cannot create the backends: %s\n", err.msg);
        return 1;
    }
    check_true(&t, bfbe->param_dtype == DT_BF16 && bfbe->act_dtype == DT_F32,
               "bf16 backend: parameters bf16, activations fp32");
    // SD shapes at a 16x16 latent (128 px): attention projections, the
    // feed-forward's way down (K = 1280), the text context's projections
    linear_case(&t, "linear 512x320 -> 320 (attn proj)", 512, 320, 320, 100);
    linear_case(&t, "linear 512x1280 -> 320 (ff out)", 512, 1280, 320, 200);
    linear_case(&t, "linear 154x768 -> 320 (cross k)", 154, 768, 320, 300);
    linear_case(&t, "linear 77x64 -> 130 (odd N)", 77, 64, 130, 350);
    // conv_in, a ResNet conv, the downsampler (stride 2), a 1x1 shortcut
    conv_case(&t, "conv 4->32 3x3 16x16 (conv_in)", 2, 4, 16, 16, 32, 3, 1, 1, 400);
    conv_case(&t, "conv 64->64 3x3 16x16", 1, 64, 16, 16, 64, 3, 1, 1, 500);
    conv_case(&t, "conv 64->64 3x3 s2 16x16 (down)", 1, 64, 16, 16, 64, 3, 2, 1, 600);
    conv_case(&t, "conv 128->64 1x1 8x8 (shortcut)", 2, 128, 8, 8, 64, 1, 1, 0, 700);
    // self-attention at 16x16 (SD 1.x: 8 heads of 40), cross-attention on
    // 77 tokens, CLIP's causal self-attention (12 heads of 64)
    attention_case(&t, "attention self 2x256, 8x40", 2, 256, 256, 8, 40, 0, 800);
    attention_case(&t, "attention cross 2x256 -> 77, 8x40", 2, 256, 77, 8, 40, 0, 900);
    attention_case(&t, "attention causal 1x77, 12x64", 1, 77, 77, 12, 64, 1, 1000);
    // head dim above the key count (SD 1.5's deepest cross-attention: 8 x 160 over 77 keys)
    attention_case(&t, "attention cross 1x64 -> 77, 8x160", 1, 64, 77, 8, 160, 0, 1050);
    param_ops(&t);
    // the mixed-precision variant (training)
    check_true(&t, mixbe->param_dtype == DT_F32 && mixbe->act_dtype == DT_F32,
               "mixed backend: fp32 master weights, fp32 activations");
    linear_backward_case(&t, "mixed linear 512x320 -> 320", 512, 320, 320, 1100);
    linear_backward_case(&t, "mixed linear 154x768 -> 320", 154, 768, 320, 1200);
    conv_backward_case(&t, "mixed conv 64->64 3x3 16x16", 2, 64, 16, 16, 64, 3, 1, 1, 1300);
    conv_backward_case(&t, "mixed conv 64->64 3x3 s2", 1, 64, 16, 16, 64, 3, 2, 1, 1400);
    conv_backward_case(&t, "mixed conv 128->64 1x1 8x8", 2, 128, 8, 8, 64, 1, 1, 0, 1500);
    attention_backward_case(&t, "mixed attention self 2x256, 8x40", 2, 256, 256, 8, 40, 0, 1600);
    attention_backward_case(&t, "mixed attention causal 1x77, 12x64", 1, 77, 77, 12, 64, 1, 1700);
    char info[512];
    backend_cpu_bf16_info(bfbe, info, sizeof info);
    printf("  %s\n", info);
    check_true(&t, strstr(info, "conv2d") && strstr(info, "linear") && strstr(info, "attention"),
               "implementations named for every bf16 op");
    { // which conv2d kernels ran: oneDNN's blocked ones from 256 output pixels where it computes bf16
      // (the 16x16 cases), its plain-layout ones below (8x8) and under SDC_BF16_GENERIC=1 (every shape)
        const char *g = getenv("SDC_BF16_GENERIC");
        const int generic = g && !strcmp(g, "1"), emulated = strstr(info, "emulation") != NULL;
        if (emulated)
            check_true(&t, !strstr(info, "brgconv"), "no blocked conv2d where oneDNN computes no bf16");
        else if (generic)
            check_true(&t, !strstr(info, "brgconv") && !strstr(info, "reorder"),
                       "SDC_BF16_GENERIC=1: every conv2d in the plain layouts (no blocked kernel, no reorder)");
        else
            check_true(&t, strstr(info, "brgconv") && strstr(info, "gemm:jit"),
                       "conv2d blocked (brgconv) at 16x16 and plain (gemm:jit) at 8x8");
        char minfo[512];
        backend_cpu_bf16_info(mixbe, minfo, sizeof minfo);
        printf("  mixed: %s\n", minfo);
        if (!emulated)
            check_true(&t, strstr(minfo, "conv2d backward data") && strstr(minfo, "linear backward") &&
                               strstr(minfo, "attention backward"),
                       "the mixed variant's backward ran through oneDNN");
    }
    backend_destroy(f32be);
    backend_destroy(bfbe);
    backend_destroy(mixbe);
    return test_summary(&t);
}
