// test_ops_cpu.c: every op of the CPU backend against a naive reference
// written here (direct loops in double precision: direct convolution,
// attention with the full score matrix, two-pass norms, libm activations) on
// random inputs, over several shapes each: odd sizes, stride 2, batch > 1,
// causal and cross attention, shapes that span several conv tiles and
// attention query blocks. Also: the fast exp against libm, dtype copies, the
// timestep embedding against values printed by torch, and that the measure
// backend does nothing while a measuring arena counts.
//
// Tolerance 1e-5 (max |got - ref| / max |ref|) unless stated: fp32 sums of
// up to a few thousand products land near 1e-7..1e-6 against a double
// reference.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/backend.h"
#include "cpu/ops_cpu.h"
#include "testutil.h"

#define TOL 1e-5

static uint64_t g_seed = 1;

static float *rnd(size_t n, float lo, float hi) {
    float *p = malloc(n * sizeof(float) + 4);
    fill_uniform(p, n, g_seed++, lo, hi);
    return p;
}

static Tensor t4(float *d, int64_t a, int64_t b, int64_t c, int64_t e) {
    return tensor_f32(d, 4, (int64_t[]){a, b, c, e});
}
static Tensor t3(float *d, int64_t a, int64_t b, int64_t c) {
    return tensor_f32(d, 3, (int64_t[]){a, b, c});
}
static Tensor t2(float *d, int64_t a, int64_t b) { return tensor_f32(d, 2, (int64_t[]){a, b}); }
static Tensor t1(float *d, int64_t a) { return tensor_f32(d, 1, (int64_t[]){a}); }

// ---- conv2d ------------------------------------------------------------------

static void ref_conv2d(float *out, const float *x, const float *w, const float *b, int N, int C,
                       int H, int W, int OC, int KH, int KW, int s, int p) {
    int OH = (H + 2 * p - KH) / s + 1, OW = (W + 2 * p - KW) / s + 1;
    for (int n = 0; n < N; n++)
        for (int oc = 0; oc < OC; oc++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double acc = b ? b[oc] : 0.0;
                    for (int c = 0; c < C; c++)
                        for (int kh = 0; kh < KH; kh++)
                            for (int kw = 0; kw < KW; kw++) {
                                int iy = oy * s - p + kh, ix = ox * s - p + kw;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                acc += (double)x[((n * C + c) * H + iy) * W + ix] *
                                       w[((oc * C + c) * KH + kh) * KW + kw];
                            }
                    out[((n * OC + oc) * OH + oy) * OW + ox] = (float)acc;
                }
}

static void test_conv2d(TestCtx *t, Backend *be, int N, int C, int H, int W, int OC, int KH,
                        int KW, int s, int p, int bias) {
    int OH = (H + 2 * p - KH) / s + 1, OW = (W + 2 * p - KW) / s + 1;
    size_t nx = (size_t)N * C * H * W, nw = (size_t)OC * C * KH * KW, no = (size_t)N * OC * OH * OW;
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -1, 1), *b = rnd(OC, -1, 1);
    float *got = rnd(no, -9, 9), *ref = malloc(no * sizeof(float));
    Tensor tx = t4(x, N, C, H, W), tw = t4(w, OC, C, KH, KW), tb = t1(b, OC);
    Tensor to = t4(got, N, OC, OH, OW);
    be->conv2d(be, &to, &tx, &tw, bias ? &tb : NULL, s, p);
    ref_conv2d(ref, x, w, bias ? b : NULL, N, C, H, W, OC, KH, KW, s, p);
    char name[96];
    snprintf(name, sizeof name, "conv2d x(%d,%d,%d,%d) w(%d,%d,%d,%d) s%d p%d%s", N, C, H, W, OC,
             C, KH, KW, s, p, bias ? "" : " nobias");
    check_rel(t, name, got, ref, no, TOL);
    free(x); free(w); free(b); free(got); free(ref);
}

// ---- linear ------------------------------------------------------------------

static void test_linear(TestCtx *t, Backend *be, int B, int L, int K, int N, int bias) {
    int M = B * L;
    float *x = rnd((size_t)M * K, -1, 1), *w = rnd((size_t)N * K, -1, 1), *b = rnd(N, -1, 1);
    float *got = rnd((size_t)M * N, -9, 9), *ref = malloc(sizeof(float) * M * N);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = bias ? b[n] : 0.0;
            for (int k = 0; k < K; k++) acc += (double)x[m * K + k] * w[n * K + k];
            ref[m * N + n] = (float)acc;
        }
    Tensor tx = t3(x, B, L, K), tw = t2(w, N, K), tb = t1(b, N), to = t3(got, B, L, N);
    be->linear(be, &to, &tx, &tw, bias ? &tb : NULL);
    char name[96];
    snprintf(name, sizeof name, "linear (%d,%d,%d) x w(%d,%d)%s", B, L, K, N, K, bias ? "" : " nobias");
    check_rel(t, name, got, ref, (size_t)M * N, TOL);
    free(x); free(w); free(b); free(got); free(ref);
}

// ---- attention ---------------------------------------------------------------

static void ref_attention(float *out, const float *q, const float *k, const float *v, int B, int Lq,
                          int Lk, int H, int D, int causal) {
    double *s = malloc(sizeof(double) * Lq * Lk); // (Lq, Lk) full matrix, one head
    int ld = H * D;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < Lq; i++) {
                double mx = -INFINITY;
                for (int j = 0; j < Lk; j++) {
                    double acc = 0;
                    for (int d = 0; d < D; d++)
                        acc += (double)q[((size_t)b * Lq + i) * ld + h * D + d] *
                               k[((size_t)b * Lk + j) * ld + h * D + d];
                    acc /= sqrt((double)D);
                    if (causal && j > i) acc = -INFINITY;
                    s[(size_t)i * Lk + j] = acc;
                    if (acc > mx) mx = acc;
                }
                double sum = 0;
                for (int j = 0; j < Lk; j++) {
                    double e = exp(s[(size_t)i * Lk + j] - mx);
                    s[(size_t)i * Lk + j] = e;
                    sum += e;
                }
                for (int d = 0; d < D; d++) {
                    double acc = 0;
                    for (int j = 0; j < Lk; j++)
                        acc += s[(size_t)i * Lk + j] / sum * v[((size_t)b * Lk + j) * ld + h * D + d];
                    out[((size_t)b * Lq + i) * ld + h * D + d] = (float)acc;
                }
            }
        }
    free(s);
}

static void test_attention(TestCtx *t, Backend *be, int B, int Lq, int Lk, int H, int D,
                           int causal) {
    size_t nq = (size_t)B * Lq * H * D, nk = (size_t)B * Lk * H * D;
    float *q = rnd(nq, -2, 2), *k = rnd(nk, -2, 2), *v = rnd(nk, -1, 1);
    float *got = rnd(nq, -9, 9), *ref = malloc(nq * sizeof(float));
    Tensor tq = t3(q, B, Lq, H * D), tk = t3(k, B, Lk, H * D), tv = t3(v, B, Lk, H * D);
    Tensor to = t3(got, B, Lq, H * D);
    be->attention(be, &to, &tq, &tk, &tv, H, causal);
    ref_attention(ref, q, k, v, B, Lq, Lk, H, D, causal);
    char name[96];
    snprintf(name, sizeof name, "attention B%d Lq%d Lk%d H%d D%d%s", B, Lq, Lk, H, D,
             causal ? " causal" : "");
    check_rel(t, name, got, ref, nq, TOL);
    free(q); free(k); free(v); free(got); free(ref);
}

// ---- norms and softmax ---------------------------------------------------------

static void test_group_norm(TestCtx *t, Backend *be, int N, int C, int H, int W, int G, int silu) {
    size_t n = (size_t)N * C * H * W, S = (size_t)H * W;
    float *x = rnd(n, 0.5f, 3.0f), *g = rnd(C, 0.5f, 1.5f), *b = rnd(C, -1, 1);
    float *got = rnd(n, -9, 9), *ref = malloc(n * sizeof(float));
    int cg = C / G;
    for (int i = 0; i < N; i++)
        for (int gr = 0; gr < G; gr++) {
            const float *xg = x + ((size_t)i * C + gr * cg) * S;
            double mean = 0, var = 0;
            for (size_t j = 0; j < cg * S; j++) mean += xg[j];
            mean /= cg * S;
            for (size_t j = 0; j < cg * S; j++) var += (xg[j] - mean) * (xg[j] - mean);
            var /= cg * S;
            for (int c = 0; c < cg; c++)
                for (size_t j = 0; j < S; j++) {
                    int ch = gr * cg + c;
                    double y = (xg[c * S + j] - mean) / sqrt(var + 1e-5) * g[ch] + b[ch];
                    if (silu) y = y / (1 + exp(-y));
                    ref[((size_t)i * C + ch) * S + j] = (float)y;
                }
        }
    Tensor tx = t4(x, N, C, H, W), tg = t1(g, C), tb = t1(b, C), to = t4(got, N, C, H, W);
    be->group_norm(be, &to, &tx, &tg, &tb, G, 1e-5f, silu);
    char name[96];
    snprintf(name, sizeof name, "group_norm (%d,%d,%d,%d) G%d%s", N, C, H, W, G, silu ? " +silu" : "");
    check_rel(t, name, got, ref, n, TOL);
    free(x); free(g); free(b); free(got); free(ref);
}

static void test_layer_norm(TestCtx *t, Backend *be, int B, int L, int D) {
    size_t n = (size_t)B * L * D;
    float *x = rnd(n, 1.0f, 4.0f), *g = rnd(D, 0.5f, 1.5f), *b = rnd(D, -1, 1);
    float *got = rnd(n, -9, 9), *ref = malloc(n * sizeof(float));
    for (size_t r = 0; r < (size_t)B * L; r++) {
        double mean = 0, var = 0;
        for (int i = 0; i < D; i++) mean += x[r * D + i];
        mean /= D;
        for (int i = 0; i < D; i++) var += (x[r * D + i] - mean) * (x[r * D + i] - mean);
        var /= D;
        for (int i = 0; i < D; i++)
            ref[r * D + i] = (float)((x[r * D + i] - mean) / sqrt(var + 1e-5) * g[i] + b[i]);
    }
    Tensor tx = t3(x, B, L, D), tg = t1(g, D), tb = t1(b, D), to = t3(got, B, L, D);
    be->layer_norm(be, &to, &tx, &tg, &tb, 1e-5f);
    char name[96];
    snprintf(name, sizeof name, "layer_norm (%d,%d,%d)", B, L, D);
    check_rel(t, name, got, ref, n, TOL);
    free(x); free(g); free(b); free(got); free(ref);
}

static void test_softmax(TestCtx *t, Backend *be, int M, int D) {
    size_t n = (size_t)M * D;
    float *x = rnd(n, -30, 30), *got = rnd(n, -9, 9), *ref = malloc(n * sizeof(float));
    for (int m = 0; m < M; m++) {
        double mx = -INFINITY, s = 0;
        for (int i = 0; i < D; i++) mx = fmax(mx, x[m * D + i]);
        for (int i = 0; i < D; i++) s += exp(x[m * D + i] - mx);
        for (int i = 0; i < D; i++) ref[m * D + i] = (float)(exp(x[m * D + i] - mx) / s);
    }
    Tensor tx = t2(x, M, D), to = t2(got, M, D);
    be->softmax(be, &to, &tx);
    char name[96];
    snprintf(name, sizeof name, "softmax (%d,%d)", M, D);
    check_rel(t, name, got, ref, n, TOL);
    free(x); free(got); free(ref);
}

// ---- activations and elementwise ---------------------------------------------------

static double ref_act(int which, double x) {
    switch (which) {
    case 0: return x / (1 + exp(-x));                  // silu
    case 1: return 0.5 * x * (1 + erf(x / sqrt(2.0))); // gelu
    default: return x / (1 + exp(-1.702 * x));         // quick_gelu
    }
}

static void test_activations(TestCtx *t, Backend *be) {
    static const char *names[] = {"silu", "gelu", "quick_gelu"};
    size_t n = 100003; // odd, above the threading threshold
    float *x = rnd(n, -12, 12);
    x[0] = -100.0f; x[1] = 100.0f; x[2] = 0.0f; x[3] = -9.5f; // tails and zero
    float *got = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float));
    Tensor tx = t1(x, n), to = t1(got, n);
    for (int a = 0; a < 3; a++) {
        for (size_t i = 0; i < n; i++) ref[i] = (float)ref_act(a, x[i]);
        void (*op)(const Backend *, Tensor *, const Tensor *) =
            a == 0 ? be->silu : a == 1 ? be->gelu : be->quick_gelu;
        op(be, &to, &tx);
        char name[64];
        snprintf(name, sizeof name, "%s (%zu) in [-12, 12]", names[a], n);
        check_rel(t, name, got, ref, n, TOL);
        // the negative tail, relative to its own (tiny) magnitude
        float tail_got[64], tail_ref[64], xs[64];
        for (int i = 0; i < 64; i++) xs[i] = -1.0f - 0.1f * i;
        Tensor tt = t1(xs, 64), tg = t1(tail_got, 64);
        op(be, &tg, &tt);
        for (int i = 0; i < 64; i++) tail_ref[i] = (float)ref_act(a, xs[i]);
        snprintf(name, sizeof name, "%s tail x in [-7.3, -1]", names[a]);
        check_rel(t, name, tail_got, tail_ref, 64, 1e-5);
        // in place
        memcpy(got, x, n * sizeof(float));
        op(be, &to, &to);
        for (size_t i = 0; i < n; i++) ref[i] = (float)ref_act(a, x[i]);
        snprintf(name, sizeof name, "%s in place", names[a]);
        check_rel(t, name, got, ref, n, TOL);
    }
    free(x); free(got); free(ref);
}

static void test_fast_exp(TestCtx *t) {
    size_t n = 200001;
    float *x = rnd(n, -87.0f, 88.0f), *got = malloc(n * sizeof(float));
    cpu_vexp(got, x, (int64_t)n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)got[i] - exp((double)x[i])) / exp((double)x[i]);
        if (!(r <= worst)) worst = r;
    }
    // libm expf itself is within 0.5 ulp (6e-8); the approximation stays within 3e-7
    check_true(t, worst < 3e-7, "fast exp: max relative error %.3e over [-87, 88] (tol 3e-7)", worst);
    free(x); free(got);
}

static void test_geglu(TestCtx *t, Backend *be, int B, int L, int F) {
    size_t M = (size_t)B * L;
    float *x = rnd(M * 2 * F, -5, 5), *got = rnd(M * F, -9, 9), *ref = malloc(M * F * sizeof(float));
    for (size_t m = 0; m < M; m++)
        for (int i = 0; i < F; i++)
            ref[m * F + i] = (float)(x[m * 2 * F + i] * ref_act(1, x[m * 2 * F + F + i]));
    Tensor tx = t3(x, B, L, 2 * F), to = t3(got, B, L, F);
    be->geglu(be, &to, &tx);
    char name[64];
    snprintf(name, sizeof name, "geglu (%d,%d,%d)", B, L, 2 * F);
    check_rel(t, name, got, ref, M * F, TOL);
    free(x); free(got); free(ref);
}

static void test_elementwise(TestCtx *t, Backend *be) {
    int N = 2, C = 5, H = 7, W = 3;
    size_t n = (size_t)N * C * H * W;
    float *a = rnd(n, -1, 1), *b = rnd(n, -1, 1), *bias = rnd(N * C, -1, 1);
    float *got = rnd(n, -9, 9), *ref = malloc(n * sizeof(float));
    Tensor ta = t4(a, N, C, H, W), tb = t4(b, N, C, H, W), to = t4(got, N, C, H, W);
    Tensor tbias = t2(bias, N, C);

    for (size_t i = 0; i < n; i++) ref[i] = a[i] + b[i];
    be->add(be, &to, &ta, &tb);
    check_rel(t, "add (2,5,7,3)", got, ref, n, 0);

    for (size_t i = 0; i < n; i++) ref[i] = a[i] * -0.37f;
    be->scale(be, &to, &ta, -0.37f);
    check_rel(t, "scale (2,5,7,3)", got, ref, n, 0);

    for (size_t i = 0; i < n; i++) ref[i] = a[i] + bias[i / (H * W)];
    be->add_channel_bias(be, &to, &ta, &tbias);
    check_rel(t, "add_channel_bias (2,5,7,3) + (2,5)", got, ref, n, 0);

    memcpy(got, a, n * sizeof(float)); // in place
    for (size_t i = 0; i < n; i++) ref[i] = a[i] + b[i];
    be->add(be, &to, &to, &tb);
    check_rel(t, "add in place", got, ref, n, 0);

    // upsample (N, C, H, W) -> (N, C, 2H, 2W)
    float *up = rnd(4 * n, -9, 9), *upref = malloc(4 * n * sizeof(float));
    for (int p = 0; p < N * C; p++)
        for (int y = 0; y < 2 * H; y++)
            for (int xx = 0; xx < 2 * W; xx++)
                upref[((size_t)p * 2 * H + y) * 2 * W + xx] = a[((size_t)p * H + y / 2) * W + xx / 2];
    Tensor tup = t4(up, N, C, 2 * H, 2 * W);
    be->upsample_nearest2x(be, &tup, &ta);
    check_rel(t, "upsample_nearest2x (2,5,7,3)", up, upref, 4 * n, 0);
    // to an odd size (2H - 1, 2W): torch's nearest interpolate gives in[y / 2]
    for (int p = 0; p < N * C; p++)
        for (int y = 0; y < 2 * H - 1; y++)
            for (int xx = 0; xx < 2 * W; xx++)
                upref[((size_t)p * (2 * H - 1) + y) * 2 * W + xx] = a[((size_t)p * H + y / 2) * W + xx / 2];
    Tensor tup_odd = t4(up, N, C, 2 * H - 1, 2 * W);
    be->upsample_nearest2x(be, &tup_odd, &ta);
    check_rel(t, "upsample_nearest2x (2,5,7,3) -> (13, 6)", up, upref, (size_t)N * C * (2 * H - 1) * 2 * W, 0);

    // concat a (N, C, H, W) and b' (N, 3, H, W)
    int Cb = 3;
    size_t S = (size_t)H * W, nc = (size_t)N * (C + Cb) * S;
    float *cat = rnd(nc, -9, 9), *catref = malloc(nc * sizeof(float));
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C + Cb; c++)
            for (size_t j = 0; j < S; j++)
                catref[((size_t)i * (C + Cb) + c) * S + j] =
                    c < C ? a[((size_t)i * C + c) * S + j] : b[((size_t)i * Cb + c - C) * S + j];
    Tensor tb3 = t4(b, N, Cb, H, W), tcat = t4(cat, N, C + Cb, H, W);
    be->concat_channels(be, &tcat, &ta, &tb3);
    check_rel(t, "concat_channels (2,5,7,3)+(2,3,7,3)", cat, catref, nc, 0);

    // NCHW <-> NLC on a shape larger than one 32x32 transpose tile
    int TN = 2, TC = 70, TH = 9, TW = 11;
    size_t tn = (size_t)TN * TC * TH * TW, TS = (size_t)TH * TW;
    float *tx = rnd(tn, -1, 1), *tl = rnd(tn, -9, 9), *tr = malloc(tn * sizeof(float));
    float *back = rnd(tn, -9, 9);
    for (int i = 0; i < TN; i++)
        for (int c = 0; c < TC; c++)
            for (size_t j = 0; j < TS; j++) tr[((size_t)i * TS + j) * TC + c] = tx[((size_t)i * TC + c) * TS + j];
    Tensor ttx = t4(tx, TN, TC, TH, TW), ttl = t3(tl, TN, TH * TW, TC), tback = t4(back, TN, TC, TH, TW);
    be->nchw_to_nlc(be, &ttl, &ttx);
    check_rel(t, "nchw_to_nlc (2,70,9,11)", tl, tr, tn, 0);
    be->nlc_to_nchw(be, &tback, &ttl);
    check_rel(t, "nlc_to_nchw back", back, tx, tn, 0);

    free(a); free(b); free(bias); free(got); free(ref); free(up); free(upref);
    free(cat); free(catref); free(tx); free(tl); free(tr); free(back);
}

static void test_embedding(TestCtx *t, Backend *be) {
    int V = 13, D = 6, B = 2, L = 5;
    float *table = rnd((size_t)V * D, -1, 1), *got = rnd((size_t)B * L * D, -9, 9);
    float *ref = malloc(sizeof(float) * B * L * D);
    int32_t ids[10] = {0, 12, 5, 5, 7, 1, 2, 3, 11, 0};
    for (int i = 0; i < B * L; i++) memcpy(ref + i * D, table + ids[i] * D, sizeof(float) * D);
    Tensor tids = tensor_make(DT_I32, DEV_CPU, ids, 2, (int64_t[]){B, L});
    Tensor ttab = t2(table, V, D), to = t3(got, B, L, D);
    be->embedding(be, &to, &tids, &ttab);
    check_rel(t, "embedding ids(2,5) table(13,6)", got, ref, (size_t)B * L * D, 0);
    int32_t bad[2] = {3, 13};
    check_true(t, cpu_embedding(got, bad, table, 2, V, D) == 1, "embedding reports id 13 >= V=13");
    free(table); free(got); free(ref);
}

static void test_timestep(TestCtx *t, Backend *be) {
    // Printed by torch 2.x running diffusers' get_timestep_embedding (float32).
    static const float ref8[32] = {
        1.000000000e+00f, 1.000000000e+00f, 1.000000000e+00f, 1.000000000e+00f, 0.000000000e+00f,
        0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 5.403023362e-01f, 9.950041771e-01f,
        9.999499917e-01f, 9.999995232e-01f, 8.414709568e-01f, 9.983341396e-02f, 9.999833070e-03f,
        9.999998147e-04f, 7.654140592e-01f, -8.481001258e-01f, 9.323273301e-01f, 9.993155599e-01f,
        -6.435381174e-01f, -5.298359990e-01f, 3.616154492e-01f, 3.699155524e-02f, 9.996498227e-01f,
        8.074550629e-01f, -8.444697857e-01f, 5.411435366e-01f, -2.646075189e-02f, -5.899291039e-01f,
        -5.356031656e-01f, 8.409302235e-01f};
    static const float ref7[28] = {
        0.000000000e+00f, 0.000000000e+00f, 0.000000000e+00f, 1.000000000e+00f, 1.000000000e+00f,
        1.000000000e+00f, 0.000000000e+00f, 8.414709568e-01f, 9.999833070e-03f, 9.999999020e-05f,
        5.403023362e-01f, 9.999499917e-01f, 1.000000000e+00f, 0.000000000e+00f, -6.435381174e-01f,
        3.616154492e-01f, 3.699991154e-03f, 7.654140592e-01f, 9.323273301e-01f, 9.999931455e-01f,
        0.000000000e+00f, -2.646075189e-02f, -5.356031656e-01f, 9.973391145e-02f, 9.996498227e-01f,
        -8.444697857e-01f, 9.950141311e-01f, 0.000000000e+00f};
    float ts[4] = {0, 1, 37, 999};
    float got[32];
    Tensor o8 = t2(got, 4, 8);
    be->timestep_embedding(be, &o8, ts, 1, 0.0f);
    // t = 999 puts the sin/cos argument near 1000 rad, where one float ulp is
    // 6e-5: torch and libm may round exp() one ulp apart, hence 1e-4.
    check_rel(t, "timestep_embedding dim 8 flip vs torch", got, ref8, 32, 1e-4);
    Tensor o7 = t2(got, 4, 7);
    be->timestep_embedding(be, &o7, ts, 0, 1.0f);
    check_rel(t, "timestep_embedding dim 7 shift 1 vs torch", got, ref7, 28, 1e-4);
    // a real SD size against the formula in double (same float32 caveat)
    int dim = 320, half = 160;
    float tt[2] = {981, 1}, *big = malloc(sizeof(float) * 2 * dim), *bref = malloc(sizeof(float) * 2 * dim);
    for (int n = 0; n < 2; n++)
        for (int i = 0; i < half; i++) {
            double arg = tt[n] * exp(-log(10000.0) * i / half);
            bref[n * dim + i] = (float)cos(arg);
            bref[n * dim + half + i] = (float)sin(arg);
        }
    Tensor ob = t2(big, 2, dim);
    be->timestep_embedding(be, &ob, tt, 1, 0.0f);
    check_rel(t, "timestep_embedding dim 320 vs double formula", big, bref, 2 * dim, 2e-4);
    free(big); free(bref);
}

static void test_copy(TestCtx *t, Backend *be) {
    size_t n = 3001;
    float *x = rnd(n, -100, 100), *back = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float));
    uint16_t *h = malloc(n * 2), *bf = malloc(n * 2);
    Tensor tx = t1(x, n), tback = t1(back, n);
    Tensor th = tensor_make(DT_F16, DEV_CPU, h, 1, (int64_t[]){n});
    Tensor tbf = tensor_make(DT_BF16, DEV_CPU, bf, 1, (int64_t[]){n});
    be->copy(be, &th, &tx);
    be->copy(be, &tback, &th);
    for (size_t i = 0; i < n; i++) ref[i] = f16_to_f32(f32_to_f16(x[i]));
    check_rel(t, "copy F32 -> F16 -> F32", back, ref, n, 0);
    check_rel(t, "copy F16 round trip vs input (fp16 rounding 2^-11)", back, x, n, 1e-3);
    be->copy(be, &tbf, &th); // F16 -> BF16
    be->copy(be, &tback, &tbf);
    for (size_t i = 0; i < n; i++) ref[i] = bf16_to_f32(f32_to_bf16(f16_to_f32(f32_to_f16(x[i]))));
    check_rel(t, "copy F16 -> BF16 -> F32", back, ref, n, 0);
    Tensor t2d = t2(back, 1, n);
    be->copy(be, &t2d, &tx);
    check_rel(t, "copy F32 -> F32", back, x, n, 0);
    // backend_upload_f32 / download_f32 on the CPU convert the same way
    backend_upload_f32(be, &th, x, n);
    backend_download_f32(be, back, &th, n);
    for (size_t i = 0; i < n; i++) ref[i] = f16_to_f32(f32_to_f16(x[i]));
    check_rel(t, "backend_upload_f32 / download_f32 via F16", back, ref, n, 0);
    free(x); free(back); free(ref); free(h); free(bf);
}

static void test_measure(TestCtx *t) {
    const Backend *m = backend_measure();
    check_true(t, m->device == DEV_CPU && m->act_dtype == DT_F32 && m->param_dtype == DT_F32,
               "measure backend: device CPU, F32");
    float x[24], w[18], o[24], keep[24];
    fill_uniform(x, 24, 5, -1, 1);
    fill_uniform(w, 18, 6, -1, 1);
    fill_uniform(o, 24, 7, -1, 1);
    memcpy(keep, o, sizeof o);
    Tensor tx = t4(x, 1, 2, 3, 4), tw = t4(w, 1, 2, 3, 3), to = t4(o, 1, 1, 3, 4);
    m->conv2d(m, &to, &tx, &tw, NULL, 1, 1);
    Tensor to2 = t4(o, 1, 2, 3, 4);
    m->silu(m, &to2, &tx);
    m->add(m, &to2, &tx, &tx);
    check_true(t, memcmp(o, keep, sizeof o) == 0, "measure backend ops leave outputs untouched");

    Arena a;
    arena_init_measure(&a);
    size_t mark = arena_mark(&a);
    Tensor big = ARENA_F32(&a, 2, 320, 64, 64); // never dereferenced
    Tensor small = ARENA_F32(&a, 3);
    m->silu(m, &big, &big);
    size_t expect = (size_t)2 * 320 * 64 * 64 * 4 + ARENA_ALIGN;
    check_true(t, a.peak == expect && small.data != big.data,
               "measuring arena: peak %zu bytes (expect %zu)", a.peak, expect);
    arena_reset(&a, mark);
    (void)ARENA_F32(&a, 10);
    check_true(t, a.used == ARENA_ALIGN && a.peak == expect, "measuring arena: reset keeps the peak");
    backend_destroy((Backend *)m); // no-op on the static measure backend
}

int main(void) {
    TestCtx t = {0};
    Backend *be = NULL;
    SdcError err = {0};
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("test_ops_cpu: %d threads\n", be->threads);
    double t0 = now_s();

    // conv2d: 3x3 pad 1, odd sizes, batch; stride 2 downsample; 1x1 (direct
    // and multi-image); general kernel; multi-tile rows; multi-image tiles
    test_conv2d(&t, be, 2, 3, 7, 9, 5, 3, 3, 1, 1, 1);
    test_conv2d(&t, be, 1, 8, 16, 16, 16, 3, 3, 2, 1, 1);
    test_conv2d(&t, be, 2, 5, 9, 11, 4, 3, 3, 2, 1, 0);
    test_conv2d(&t, be, 2, 6, 5, 5, 4, 1, 1, 1, 0, 1);
    test_conv2d(&t, be, 1, 6, 40, 60, 7, 1, 1, 1, 0, 1);
    test_conv2d(&t, be, 1, 4, 9, 8, 3, 2, 3, 2, 0, 1);
    test_conv2d(&t, be, 1, 16, 70, 40, 8, 3, 3, 1, 1, 1);
    test_conv2d(&t, be, 5, 4, 24, 24, 6, 3, 3, 1, 1, 1);
    test_conv2d(&t, be, 3, 32, 4, 4, 17, 3, 3, 1, 1, 0);
    test_conv2d(&t, be, 1, 16, 6, 6, 96, 3, 3, 1, 1, 1); // thin sgemm cut along OC
    test_conv2d(&t, be, 2, 8, 5, 5, 70, 3, 3, 1, 1, 1);  // thin, multi-image, OC % 16 != 0
    test_conv2d(&t, be, 1, 24, 7, 5, 80, 1, 1, 1, 0, 1); // thin direct 1x1

    test_linear(&t, be, 2, 7, 33, 19, 1);
    test_linear(&t, be, 1, 77, 64, 128, 0);
    test_linear(&t, be, 3, 1, 5, 3, 1);

    test_attention(&t, be, 2, 37, 37, 3, 8, 0);
    test_attention(&t, be, 2, 37, 37, 3, 8, 1);
    test_attention(&t, be, 2, 50, 7, 2, 16, 0);
    test_attention(&t, be, 1, 300, 300, 2, 16, 1); // several query blocks, causal
    test_attention(&t, be, 1, 520, 77, 2, 40, 0);  // cross, several blocks
    test_attention(&t, be, 1, 5, 9, 1, 3, 0);
    test_attention(&t, be, 1, 70, 1030, 2, 40, 0); // long keys, several blocks, row tails
    test_attention(&t, be, 2, 64, 77, 2, 64, 0);   // SD 2.x head dim, cross
    test_attention(&t, be, 1, 40, 40, 2, 80, 1);   // D 80, causal

    test_group_norm(&t, be, 2, 64, 5, 7, 32, 0);
    test_group_norm(&t, be, 2, 64, 5, 7, 32, 1);
    test_group_norm(&t, be, 1, 6, 3, 1, 3, 1);
    test_group_norm(&t, be, 1, 320, 32, 32, 32, 1); // 10240-element groups

    test_layer_norm(&t, be, 2, 77, 768);
    test_layer_norm(&t, be, 1, 3, 5);

    test_softmax(&t, be, 9, 77);
    test_softmax(&t, be, 3, 1);

    test_fast_exp(&t);
    test_activations(&t, be);
    test_geglu(&t, be, 2, 9, 37);
    test_geglu(&t, be, 1, 64, 1280);
    test_elementwise(&t, be);
    test_embedding(&t, be);
    test_timestep(&t, be);
    test_copy(&t, be);
    test_measure(&t);

    printf("test_ops_cpu: %.2f s\n", now_s() - t0);
    backend_destroy(be);
    return test_summary(&t);
}
