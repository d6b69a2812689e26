// test_backward_cpu.c: every CPU backward kernel (kernels/cpu/ops_cpu_bwd.h)
// against central finite differences.
//
// For each op: random inputs (never zeros), a fixed random R of the output's
// shape and the scalar loss L = sum(out * R), so dL/dout = R is what the
// backward kernel gets as dy. The finite differences are taken on a DOUBLE
// precision reference forward written here (direct loops), with step
// h = 1e-4: truncation error ~ h^2 |f'''| / 6 ~ 1e-9 and rounding ~ 1e-16 |L|
// / h ~ 1e-10, so the FD gradient is exact to ~1e-8 and the figure printed
// is the fp32 kernel's own error. That reference forward is first checked
// against the fp32 forward kernel ("fwd"), so the FD is of the same function.
//
// Parameter gradients are accumulated by the kernels: they start from a
// random base and the test compares (after - base) with the FD gradient.
// Each tiled kernel (conv2d, attention) also runs with a scratch just big
// enough for tiny tiles / query blocks, so small shapes cross tile borders
// (conv2d: tiles of 2 output rows, and small images 2 to a tile).
//
// Tolerance 1e-5 (max |got - fd| / max |fd|): fp32 sums of at most a few
// thousand terms land near 1e-7; the norms' dx = rstd (g - mean g - xhat
// mean(g xhat)) may lose a digit to cancellation. Seen: at most 6e-7.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops_cpu.h"
#include "cpu/ops_cpu_bwd.h"
#include "testutil.h"

#define TOL 1e-5
#define FWD_TOL 1e-5
#define FD_H 1e-4

static uint64_t g_seed = 7;

static float *rnd(size_t n, float lo, float hi) {
    float *p = malloc(n * sizeof(float) + 4);
    fill_uniform(p, n, g_seed++, lo, hi);
    return p;
}
static double *dcopy(const float *x, size_t n) {
    double *d = malloc(n * sizeof(double) + 8);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static float *fzeros(size_t n) { return calloc(n + 1, sizeof(float)); }

// ---- finite differences --------------------------------------------------------

typedef double (*LossFn)(void *ctx); // L = sum(ref_forward(ctx) * R), in double

// Above this many elements a gradient is checked at about FD_SAMPLES evenly
// spaced positions (and the last one): the big shapes that run the kernels'
// threaded loops would otherwise cost minutes of double forwards.
#define FD_ALL_MAX 512
#define FD_SAMPLES 61

// The analytic gradient `got` (n) against the FD of f w.r.t. p; base (n) or
// NULL is what an accumulated gradient started from.
static void check_grad(TestCtx *t, const char *what, const char *tensor, const float *got,
                       const float *base, double *p, size_t n, LossFn f, void *ctx) {
    size_t step = n > FD_ALL_MAX ? n / FD_SAMPLES : 1;
    float *fd = malloc((n / step + 2) * sizeof(float)), *g = malloc((n / step + 2) * sizeof(float));
    size_t m = 0;
    for (size_t i = 0; i < n; i += step) {
        if (step > 1 && i + step >= n) i = n - 1; // the last element, not one short of it
        double save = p[i];
        p[i] = save + FD_H;
        double lp = f(ctx);
        p[i] = save - FD_H;
        double lm = f(ctx);
        p[i] = save;
        fd[m] = (float)((lp - lm) / (2 * FD_H));
        g[m++] = base ? got[i] - base[i] : got[i];
    }
    char name[160];
    if (step > 1) snprintf(name, sizeof name, "%s %s (%zu of %zu)", what, tensor, m, n);
    else snprintf(name, sizeof name, "%s %s", what, tensor);
    check_rel(t, name, g, fd, m, TOL);
    free(fd);
    free(g);
}

// sum(out * R) of a float output, for the forward check.
static void check_fwd(TestCtx *t, const char *what, const float *out, const double *ref, size_t n) {
    float *r = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) r[i] = (float)ref[i];
    char name[128];
    snprintf(name, sizeof name, "%s fwd", what);
    check_rel(t, name, out, r, n, FWD_TOL);
    free(r);
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// ---- linear --------------------------------------------------------------------

typedef struct {
    double *x, *w, *b, *R, *out; // x (M, K), w (N, K), b (N), R and out (M, N)
    int M, K, N;
} LinCtx;

static double lin_loss(void *c_) {
    LinCtx *c = c_;
    for (int m = 0; m < c->M; m++)
        for (int n = 0; n < c->N; n++) {
            double a = c->b[n];
            for (int k = 0; k < c->K; k++) a += c->x[m * c->K + k] * c->w[n * c->K + k];
            c->out[m * c->N + n] = a;
        }
    return dot(c->out, c->R, (size_t)c->M * c->N);
}

static void test_linear(TestCtx *t, int M, int K, int N) {
    size_t nx = (size_t)M * K, nw = (size_t)N * K, no = (size_t)M * N;
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -1, 1), *b = rnd(N, -1, 1), *R = rnd(no, -1, 1);
    float *out = fzeros(no), *dx = rnd(nx, -9, 9), *dw0 = rnd(nw, -1, 1), *db0 = rnd(N, -1, 1);
    float *dw = malloc(nw * 4), *db = malloc(N * 4);
    memcpy(dw, dw0, nw * 4);
    memcpy(db, db0, N * 4);
    LinCtx c = {dcopy(x, nx), dcopy(w, nw), dcopy(b, N), dcopy(R, no), calloc(no, 8), M, K, N};
    char what[96];
    snprintf(what, sizeof what, "linear x(%d,%d) w(%d,%d)", M, K, N, K);
    cpu_linear(out, x, w, b, M, K, N);
    lin_loss(&c);
    check_fwd(t, what, out, c.out, no);
    cpu_linear_backward(dx, dw, db, R, x, w, M, K, N);
    check_grad(t, what, "dx", dx, NULL, c.x, nx, lin_loss, &c);
    check_grad(t, what, "dw (+=)", dw, dw0, c.w, nw, lin_loss, &c);
    check_grad(t, what, "db (+=)", db, db0, c.b, N, lin_loss, &c);
    free(x); free(w); free(b); free(R); free(out); free(dx); free(dw0); free(db0); free(dw);
    free(db); free(c.x); free(c.w); free(c.b); free(c.R); free(c.out);
}

// ---- conv2d --------------------------------------------------------------------

typedef struct {
    double *x, *w, *b, *R, *out; // x (N, C, H, W), w (OC, C, KH, KW), b (OC), out (N, OC, OH, OW)
    int N, C, H, W, OC, KH, KW, s, p, OH, OW;
} ConvCtx;

static double conv_loss(void *c_) {
    ConvCtx *c = c_;
    for (int n = 0; n < c->N; n++)
        for (int oc = 0; oc < c->OC; oc++)
            for (int oy = 0; oy < c->OH; oy++)
                for (int ox = 0; ox < c->OW; ox++) {
                    double a = c->b[oc];
                    for (int ci = 0; ci < c->C; ci++)
                        for (int kh = 0; kh < c->KH; kh++)
                            for (int kw = 0; kw < c->KW; kw++) {
                                int iy = oy * c->s - c->p + kh, ix = ox * c->s - c->p + kw;
                                if (iy < 0 || iy >= c->H || ix < 0 || ix >= c->W) continue;
                                a += c->x[((n * c->C + ci) * c->H + iy) * c->W + ix] *
                                     c->w[((oc * c->C + ci) * c->KH + kh) * c->KW + kw];
                            }
                    c->out[((n * c->OC + oc) * c->OH + oy) * c->OW + ox] = a;
                }
    return dot(c->out, c->R, (size_t)c->N * c->OC * c->OH * c->OW);
}

// small_scratch 1: a scratch of two output rows, so the tiles are two rows;
// 2: a scratch of two whole images (cols and staged dy), so small images go
// two to a tile.
static void test_conv2d(TestCtx *t, int N, int C, int H, int W, int OC, int K, int s, int p,
                        int small_scratch) {
    int OH = (H + 2 * p - K) / s + 1, OW = (W + 2 * p - K) / s + 1;
    size_t nx = (size_t)N * C * H * W, nw = (size_t)OC * C * K * K, no = (size_t)N * OC * OH * OW;
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -1, 1), *b = rnd(OC, -1, 1), *R = rnd(no, -1, 1);
    float *out = fzeros(no), *dx = rnd(nx, -9, 9), *dw0 = rnd(nw, -1, 1), *db0 = rnd(OC, -1, 1);
    float *dw = malloc(nw * 4), *db = malloc(OC * 4);
    memcpy(dw, dw0, nw * 4);
    memcpy(db, db0, OC * 4);
    size_t fs = cpu_conv2d_scratch_floats(C, H, W, OC, K, K, s, p);
    size_t bs = cpu_conv2d_backward_scratch_floats(C, H, W, OC, K, K, s, p);
    if (small_scratch == 1) bs = 2 * cpu_conv2d_backward_scratch_min_floats(C, H, W, OC, K, K, s, p);
    if (small_scratch == 2) bs = 2 * ((size_t)C * K * K + OC) * OH * OW;
    float *fscr = fzeros(fs), *bscr = fzeros(bs);
    ConvCtx c = {dcopy(x, nx), dcopy(w, nw), dcopy(b, OC), dcopy(R, no), calloc(no, 8), N, C, H,
                 W, OC, K, K, s, p, OH, OW};
    char what[128];
    snprintf(what, sizeof what, "conv2d x(%d,%d,%d,%d) w(%d,%d,%d,%d) s%d p%d%s", N, C, H, W, OC,
             C, K, K, s, p, small_scratch == 1 ? " 2-row tiles" : small_scratch == 2 ? " 2-image tiles" : "");
    cpu_conv2d(out, x, w, b, N, C, H, W, OC, K, K, s, p, fscr, fs);
    conv_loss(&c);
    check_fwd(t, what, out, c.out, no);
    cpu_conv2d_backward(dx, dw, db, R, x, w, N, C, H, W, OC, K, K, s, p, bscr, bs);
    check_grad(t, what, "dx", dx, NULL, c.x, nx, conv_loss, &c);
    check_grad(t, what, "dw (+=)", dw, dw0, c.w, nw, conv_loss, &c);
    check_grad(t, what, "db (+=)", db, db0, c.b, OC, conv_loss, &c);
    // Only dw asked for (dx, db NULL): the same dw.
    float *dw2 = malloc(nw * 4);
    memcpy(dw2, dw0, nw * 4);
    cpu_conv2d_backward(NULL, dw2, NULL, R, x, w, N, C, H, W, OC, K, K, s, p, bscr, bs);
    check_true(t, max_abs_diff(dw2, dw, nw) == 0.0, "%s dw alone == dw with dx, db", what);
    free(dw2);
    free(x); free(w); free(b); free(R); free(out); free(dx); free(dw0); free(db0); free(dw);
    free(db); free(fscr); free(bscr); free(c.x); free(c.w); free(c.b); free(c.R); free(c.out);
}

// ---- attention -----------------------------------------------------------------

typedef struct {
    double *q, *k, *v, *R, *out; // q, out (B, Lq, H*D); k, v (B, Lk, H*D)
    int B, Lq, Lk, H, D, causal;
} AttCtx;

static double att_loss(void *c_) {
    AttCtx *c = c_;
    int ld = c->H * c->D;
    double *srow = malloc(sizeof(double) * c->Lk);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < c->Lq; i++) {
                const double *qi = c->q + ((size_t)b * c->Lq + i) * ld + h * c->D;
                int nk = c->causal ? (i + 1 < c->Lk ? i + 1 : c->Lk) : c->Lk;
                double mx = -1e300, sum = 0;
                for (int j = 0; j < nk; j++) {
                    const double *kj = c->k + ((size_t)b * c->Lk + j) * ld + h * c->D;
                    srow[j] = dot(qi, kj, c->D) / sqrt((double)c->D);
                    if (srow[j] > mx) mx = srow[j];
                }
                for (int j = 0; j < nk; j++) sum += srow[j] = exp(srow[j] - mx);
                double *o = c->out + ((size_t)b * c->Lq + i) * ld + h * c->D;
                for (int d = 0; d < c->D; d++) {
                    double a = 0;
                    for (int j = 0; j < nk; j++)
                        a += srow[j] * c->v[((size_t)b * c->Lk + j) * ld + h * c->D + d];
                    o[d] = a / sum;
                }
            }
    free(srow);
    return dot(c->out, c->R, (size_t)c->B * c->Lq * ld);
}

// bq > 0: scratch for query blocks of bq rows on every thread.
static void test_attention(TestCtx *t, int B, int Lq, int Lk, int H, int D, int causal, int bq) {
    int ld = H * D;
    size_t nq = (size_t)B * Lq * ld, nk = (size_t)B * Lk * ld;
    float *q = rnd(nq, -1.5f, 1.5f), *k = rnd(nk, -1.5f, 1.5f), *v = rnd(nk, -1, 1);
    float *R = rnd(nq, -1, 1), *out = fzeros(nq);
    float *dq = rnd(nq, -9, 9), *dk = rnd(nk, -9, 9), *dv = rnd(nk, -9, 9);
    int threads = omp_get_max_threads();
    size_t fs = cpu_attention_scratch_floats(Lq, Lk, D, 64);
    size_t bs = bq > 0 ? (size_t)threads * 2 * bq * Lk
                       : cpu_attention_backward_scratch_floats(Lq, Lk, D, 64);
    float *fscr = fzeros(fs), *bscr = fzeros(bs);
    AttCtx c = {dcopy(q, nq), dcopy(k, nk), dcopy(v, nk), dcopy(R, nq), calloc(nq, 8),
                B, Lq, Lk, H, D, causal};
    char what[128];
    snprintf(what, sizeof what, "attention B%d Lq%d Lk%d H%d D%d%s%s", B, Lq, Lk, H, D,
             causal ? " causal" : "", bq > 0 ? " small blocks" : "");
    cpu_attention(out, q, k, v, B, Lq, Lk, H, D, causal, fscr, fs);
    att_loss(&c);
    check_fwd(t, what, out, c.out, nq);
    cpu_attention_backward(dq, dk, dv, R, q, k, v, B, Lq, Lk, H, D, causal, bscr, bs);
    check_grad(t, what, "dq", dq, NULL, c.q, nq, att_loss, &c);
    check_grad(t, what, "dk", dk, NULL, c.k, nk, att_loss, &c);
    check_grad(t, what, "dv", dv, NULL, c.v, nk, att_loss, &c);
    free(q); free(k); free(v); free(R); free(out); free(dq); free(dk); free(dv); free(fscr);
    free(bscr); free(c.q); free(c.k); free(c.v); free(c.R); free(c.out);
}

// ---- group norm, layer norm, softmax -------------------------------------------

typedef struct {
    double *x, *gamma, *beta, *R, *out; // x, out (N, C, S); gamma, beta (C)
    int N, C, S, groups, silu;
    double eps;
} GnCtx;

static double gn_loss(void *c_) {
    GnCtx *c = c_;
    int cg = c->C / c->groups, gs = cg * c->S;
    for (int n = 0; n < c->N; n++)
        for (int g = 0; g < c->groups; g++) {
            const double *xg = c->x + ((size_t)n * c->groups + g) * gs;
            double *og = c->out + ((size_t)n * c->groups + g) * gs;
            double m = 0, v = 0;
            for (int i = 0; i < gs; i++) m += xg[i];
            m /= gs;
            for (int i = 0; i < gs; i++) v += (xg[i] - m) * (xg[i] - m);
            v /= gs;
            double rs = 1 / sqrt(v + c->eps);
            for (int i = 0; i < gs; i++) {
                int ch = g * cg + i / c->S;
                double y = (xg[i] - m) * rs * c->gamma[ch] + c->beta[ch];
                og[i] = c->silu ? y / (1 + exp(-y)) : y;
            }
        }
    return dot(c->out, c->R, (size_t)c->N * c->C * c->S);
}

static void test_group_norm(TestCtx *t, int N, int C, int S, int groups, int silu) {
    size_t nx = (size_t)N * C * S;
    float *x = rnd(nx, -1, 2), *gm = rnd(C, 0.5f, 1.5f), *bt = rnd(C, -1, 1), *R = rnd(nx, -1, 1);
    float *out = fzeros(nx), *dx = rnd(nx, -9, 9), *dg0 = rnd(C, -1, 1), *db0 = rnd(C, -1, 1);
    float *dg = malloc(C * 4), *db = malloc(C * 4);
    memcpy(dg, dg0, C * 4);
    memcpy(db, db0, C * 4);
    const float eps = 1e-5f;
    GnCtx c = {dcopy(x, nx), dcopy(gm, C), dcopy(bt, C), dcopy(R, nx), calloc(nx, 8),
               N, C, S, groups, silu, eps};
    char what[96];
    snprintf(what, sizeof what, "group_norm%s x(%d,%d,%d) g%d", silu ? "+silu" : "", N, C, S,
             groups);
    cpu_group_norm(out, x, gm, bt, N, C, S, groups, eps, silu);
    gn_loss(&c);
    check_fwd(t, what, out, c.out, nx);
    cpu_group_norm_backward(dx, dg, db, R, x, gm, bt, N, C, S, groups, eps, silu);
    check_grad(t, what, "dx", dx, NULL, c.x, nx, gn_loss, &c);
    check_grad(t, what, "dgamma (+=)", dg, dg0, c.gamma, C, gn_loss, &c);
    check_grad(t, what, "dbeta (+=)", db, db0, c.beta, C, gn_loss, &c);
    // dx may equal dy: in place gives the same dx.
    float *io = malloc(nx * 4);
    memcpy(io, R, nx * 4);
    memcpy(dg, dg0, C * 4);
    cpu_group_norm_backward(io, dg, NULL, io, x, gm, bt, N, C, S, groups, eps, silu);
    check_true(t, max_abs_diff(io, dx, nx) == 0.0, "%s in place (dx == dy) gives the same dx", what);
    free(io);
    free(x); free(gm); free(bt); free(R); free(out); free(dx); free(dg0); free(db0); free(dg);
    free(db); free(c.x); free(c.gamma); free(c.beta); free(c.R); free(c.out);
}

typedef struct {
    double *x, *gamma, *beta, *R, *out; // x, out (M, D); gamma, beta (D)
    int M, D;
    double eps;
} LnCtx;

static double ln_loss(void *c_) {
    LnCtx *c = c_;
    for (int m = 0; m < c->M; m++) {
        const double *xr = c->x + (size_t)m * c->D;
        double mu = 0, v = 0;
        for (int i = 0; i < c->D; i++) mu += xr[i];
        mu /= c->D;
        for (int i = 0; i < c->D; i++) v += (xr[i] - mu) * (xr[i] - mu);
        v /= c->D;
        double rs = 1 / sqrt(v + c->eps);
        for (int i = 0; i < c->D; i++)
            c->out[(size_t)m * c->D + i] = (xr[i] - mu) * rs * c->gamma[i] + c->beta[i];
    }
    return dot(c->out, c->R, (size_t)c->M * c->D);
}

static void test_layer_norm(TestCtx *t, int M, int D) {
    size_t nx = (size_t)M * D;
    float *x = rnd(nx, -1, 2), *gm = rnd(D, 0.5f, 1.5f), *bt = rnd(D, -1, 1), *R = rnd(nx, -1, 1);
    float *out = fzeros(nx), *dx = rnd(nx, -9, 9), *dg0 = rnd(D, -1, 1), *db0 = rnd(D, -1, 1);
    float *dg = malloc(D * 4), *db = malloc(D * 4), *scr = fzeros(2 * M);
    memcpy(dg, dg0, D * 4);
    memcpy(db, db0, D * 4);
    const float eps = 1e-5f;
    LnCtx c = {dcopy(x, nx), dcopy(gm, D), dcopy(bt, D), dcopy(R, nx), calloc(nx, 8), M, D, eps};
    char what[96];
    snprintf(what, sizeof what, "layer_norm x(%d,%d)", M, D);
    cpu_layer_norm(out, x, gm, bt, M, D, eps);
    ln_loss(&c);
    check_fwd(t, what, out, c.out, nx);
    cpu_layer_norm_backward(dx, dg, db, R, x, gm, M, D, eps, scr,
                            cpu_layer_norm_backward_scratch_floats(M));
    check_grad(t, what, "dx", dx, NULL, c.x, nx, ln_loss, &c);
    check_grad(t, what, "dgamma (+=)", dg, dg0, c.gamma, D, ln_loss, &c);
    check_grad(t, what, "dbeta (+=)", db, db0, c.beta, D, ln_loss, &c);
    // In place (dx == dy) with the parameter gradients: same results.
    float *io = malloc(nx * 4), *dg2 = malloc(D * 4), *db2 = malloc(D * 4);
    memcpy(io, R, nx * 4);
    memcpy(dg2, dg0, D * 4);
    memcpy(db2, db0, D * 4);
    cpu_layer_norm_backward(io, dg2, db2, io, x, gm, M, D, eps, scr, 2 * (size_t)M);
    check_true(t, max_abs_diff(io, dx, nx) == 0.0 && max_abs_diff(dg2, dg, D) == 0.0 &&
                      max_abs_diff(db2, db, D) == 0.0,
               "%s in place (dx == dy) gives the same dx, dgamma, dbeta", what);
    free(io); free(dg2); free(db2);
    free(x); free(gm); free(bt); free(R); free(out); free(dx); free(dg0); free(db0); free(dg);
    free(db); free(scr); free(c.x); free(c.gamma); free(c.beta); free(c.R); free(c.out);
}

typedef struct {
    double *x, *R, *out; // (M, D)
    int M, D;
} SmCtx;

static double sm_loss(void *c_) {
    SmCtx *c = c_;
    for (int m = 0; m < c->M; m++) {
        const double *xr = c->x + (size_t)m * c->D;
        double *o = c->out + (size_t)m * c->D, mx = -1e300, s = 0;
        for (int i = 0; i < c->D; i++) mx = xr[i] > mx ? xr[i] : mx;
        for (int i = 0; i < c->D; i++) s += o[i] = exp(xr[i] - mx);
        for (int i = 0; i < c->D; i++) o[i] /= s;
    }
    return dot(c->out, c->R, (size_t)c->M * c->D);
}

static void test_softmax(TestCtx *t, int M, int D) {
    size_t n = (size_t)M * D;
    float *x = rnd(n, -3, 3), *R = rnd(n, -1, 1), *y = fzeros(n), *dx = rnd(n, -9, 9);
    SmCtx c = {dcopy(x, n), dcopy(R, n), calloc(n, 8), M, D};
    char what[64];
    snprintf(what, sizeof what, "softmax x(%d,%d)", M, D);
    cpu_softmax(y, x, M, D);
    sm_loss(&c);
    check_fwd(t, what, y, c.out, n);
    cpu_softmax_backward(dx, R, y, M, D);
    check_grad(t, what, "dx", dx, NULL, c.x, n, sm_loss, &c);
    free(x); free(R); free(y); free(dx); free(c.x); free(c.R); free(c.out);
}

// ---- elementwise ---------------------------------------------------------------

enum { ACT_SILU, ACT_GELU, ACT_QUICK_GELU };

static double act_d(int kind, double x) {
    switch (kind) {
    case ACT_SILU: return x / (1 + exp(-x));
    case ACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    default: return x / (1 + exp(-1.702 * x));
    }
}

typedef struct {
    double *x, *R, *out; // (n) for the activations; x (M, 2F), out (M, F) for geglu
    int n, kind, M, F;
} ActCtx;

static double act_loss(void *c_) {
    ActCtx *c = c_;
    for (int i = 0; i < c->n; i++) c->out[i] = act_d(c->kind, c->x[i]);
    return dot(c->out, c->R, c->n);
}

static double geglu_loss(void *c_) {
    ActCtx *c = c_;
    for (int m = 0; m < c->M; m++)
        for (int i = 0; i < c->F; i++) {
            const double *r = c->x + (size_t)m * 2 * c->F;
            c->out[(size_t)m * c->F + i] = r[i] * act_d(ACT_GELU, r[c->F + i]);
        }
    return dot(c->out, c->R, (size_t)c->M * c->F);
}

static void test_activation(TestCtx *t, int kind, int n) {
    static const char *names[] = {"silu", "gelu", "quick_gelu"};
    float *x = rnd(n, -5, 5), *R = rnd(n, -1, 1), *out = fzeros(n), *dx = rnd(n, -9, 9);
    ActCtx c = {dcopy(x, n), dcopy(R, n), calloc(n, 8), n, kind, 0, 0};
    char what[64];
    snprintf(what, sizeof what, "%s n%d", names[kind], n);
    if (kind == ACT_SILU) cpu_silu(out, x, n);
    else if (kind == ACT_GELU) cpu_gelu(out, x, n);
    else cpu_quick_gelu(out, x, n);
    act_loss(&c);
    check_fwd(t, what, out, c.out, n);
    if (kind == ACT_SILU) cpu_silu_backward(dx, R, x, n);
    else if (kind == ACT_GELU) cpu_gelu_backward(dx, R, x, n);
    else cpu_quick_gelu_backward(dx, R, x, n);
    check_grad(t, what, "dx", dx, NULL, c.x, n, act_loss, &c);
    free(x); free(R); free(out); free(dx); free(c.x); free(c.R); free(c.out);
}

static void test_geglu(TestCtx *t, int M, int F) {
    size_t nx = (size_t)M * 2 * F, no = (size_t)M * F;
    float *x = rnd(nx, -4, 4), *R = rnd(no, -1, 1), *out = fzeros(no), *dx = rnd(nx, -9, 9);
    ActCtx c = {dcopy(x, nx), dcopy(R, no), calloc(no, 8), 0, ACT_GELU, M, F};
    char what[64];
    snprintf(what, sizeof what, "geglu x(%d,%d)", M, 2 * F);
    cpu_geglu(out, x, M, F);
    geglu_loss(&c);
    check_fwd(t, what, out, c.out, no);
    cpu_geglu_backward(dx, R, x, M, F);
    check_grad(t, what, "dx", dx, NULL, c.x, nx, geglu_loss, &c);
    free(x); free(R); free(out); free(dx); free(c.x); free(c.R); free(c.out);
}

// ---- layout and bias -------------------------------------------------------------

typedef struct {
    double *x, *R, *out; // x (N, C, H, W), out (N, C, OH, OW)
    int N, C, H, W, OH, OW;
} UpCtx;

static double up_loss(void *c_) {
    UpCtx *c = c_;
    for (int p = 0; p < c->N * c->C; p++)
        for (int y = 0; y < c->OH; y++)
            for (int x = 0; x < c->OW; x++)
                c->out[((size_t)p * c->OH + y) * c->OW + x] =
                    c->x[((size_t)p * c->H + y / 2) * c->W + x / 2];
    return dot(c->out, c->R, (size_t)c->N * c->C * c->OH * c->OW);
}

static void test_upsample(TestCtx *t, int N, int C, int H, int W, int OH, int OW) {
    size_t nx = (size_t)N * C * H * W, no = (size_t)N * C * OH * OW;
    float *x = rnd(nx, -1, 1), *R = rnd(no, -1, 1), *out = fzeros(no), *dx = rnd(nx, -9, 9);
    UpCtx c = {dcopy(x, nx), dcopy(R, no), calloc(no, 8), N, C, H, W, OH, OW};
    char what[96];
    snprintf(what, sizeof what, "upsample_nearest2x (%d,%d,%d,%d)->(%d,%d)", N, C, H, W, OH, OW);
    cpu_upsample_nearest2x(out, x, N, C, H, W, OH, OW);
    up_loss(&c);
    check_fwd(t, what, out, c.out, no);
    cpu_upsample_nearest2x_backward(dx, R, N, C, H, W, OH, OW);
    check_grad(t, what, "dx", dx, NULL, c.x, nx, up_loss, &c);
    free(x); free(R); free(out); free(dx); free(c.x); free(c.R); free(c.out);
}

typedef struct {
    double *x, *bias, *R, *out; // x, out (N, C, S); bias (N, C)
    int N, C, S;
} BiasCtx;

static double bias_loss(void *c_) {
    BiasCtx *c = c_;
    for (int r = 0; r < c->N * c->C; r++)
        for (int i = 0; i < c->S; i++)
            c->out[(size_t)r * c->S + i] = c->x[(size_t)r * c->S + i] + c->bias[r];
    return dot(c->out, c->R, (size_t)c->N * c->C * c->S);
}

static void test_channel_bias(TestCtx *t, int N, int C, int S) {
    size_t nx = (size_t)N * C * S, nb = (size_t)N * C;
    float *x = rnd(nx, -1, 1), *bias = rnd(nb, -1, 1), *R = rnd(nx, -1, 1), *out = fzeros(nx);
    float *db = rnd(nb, -9, 9);
    BiasCtx c = {dcopy(x, nx), dcopy(bias, nb), dcopy(R, nx), calloc(nx, 8), N, C, S};
    char what[64];
    snprintf(what, sizeof what, "add_channel_bias x(%d,%d,%d)", N, C, S);
    cpu_add_channel_bias(out, x, bias, N, C, S);
    bias_loss(&c);
    check_fwd(t, what, out, c.out, nx);
    cpu_add_channel_bias_backward(db, R, N, C, S);
    check_grad(t, what, "dbias", db, NULL, c.bias, nb, bias_loss, &c);
    free(x); free(bias); free(R); free(out); free(db); free(c.x); free(c.bias); free(c.R);
    free(c.out);
}

typedef struct {
    double *a, *b, *R, *out; // a (N, Ca, S), b (N, Cb, S), out (N, Ca+Cb, S)
    int N, Ca, Cb, S;
} CatCtx;

static double cat_loss(void *c_) {
    CatCtx *c = c_;
    for (int n = 0; n < c->N; n++) {
        double *o = c->out + (size_t)n * (c->Ca + c->Cb) * c->S;
        memcpy(o, c->a + (size_t)n * c->Ca * c->S, sizeof(double) * c->Ca * c->S);
        memcpy(o + (size_t)c->Ca * c->S, c->b + (size_t)n * c->Cb * c->S,
               sizeof(double) * c->Cb * c->S);
    }
    return dot(c->out, c->R, (size_t)c->N * (c->Ca + c->Cb) * c->S);
}

static void test_concat(TestCtx *t, int N, int Ca, int Cb, int S) {
    size_t na = (size_t)N * Ca * S, nb = (size_t)N * Cb * S, no = na + nb;
    float *a = rnd(na, -1, 1), *b = rnd(nb, -1, 1), *R = rnd(no, -1, 1), *out = fzeros(no);
    float *da = rnd(na, -9, 9), *db = rnd(nb, -9, 9);
    CatCtx c = {dcopy(a, na), dcopy(b, nb), dcopy(R, no), calloc(no, 8), N, Ca, Cb, S};
    char what[64];
    snprintf(what, sizeof what, "concat_channels (%d,%d|%d,%d)", N, Ca, Cb, S);
    cpu_concat_channels(out, a, b, N, Ca, Cb, S);
    cat_loss(&c);
    check_fwd(t, what, out, c.out, no);
    cpu_concat_channels_backward(da, db, R, N, Ca, Cb, S);
    check_grad(t, what, "da", da, NULL, c.a, na, cat_loss, &c);
    check_grad(t, what, "db", db, NULL, c.b, nb, cat_loss, &c);
    free(a); free(b); free(R); free(out); free(da); free(db); free(c.a); free(c.b); free(c.R);
    free(c.out);
}

typedef struct {
    double *table, *R, *out; // table (V, D), out (n, D)
    const int32_t *ids;      // (n)
    int n, V, D;
} EmbCtx;

static double emb_loss(void *c_) {
    EmbCtx *c = c_;
    for (int i = 0; i < c->n; i++)
        memcpy(c->out + (size_t)i * c->D, c->table + (size_t)c->ids[i] * c->D,
               sizeof(double) * c->D);
    return dot(c->out, c->R, (size_t)c->n * c->D);
}

static void test_embedding(TestCtx *t) {
    enum { n = 9, V = 6, D = 5 };
    const int32_t ids[n] = {3, 0, 3, 5, 3, 1, 0, 2, 5}; // repeated ids; id 4 unused
    float *table = rnd(V * D, -1, 1), *R = rnd(n * D, -1, 1), *out = fzeros(n * D);
    float *dt0 = rnd(V * D, -1, 1), *dt = malloc(V * D * 4);
    memcpy(dt, dt0, V * D * 4);
    EmbCtx c = {dcopy(table, V * D), dcopy(R, n * D), calloc(n * D, 8), ids, n, V, D};
    const char *what = "embedding ids(9, repeats) table(6,5)";
    cpu_embedding(out, ids, table, n, V, D);
    emb_loss(&c);
    check_fwd(t, what, out, c.out, n * D);
    int64_t bad = cpu_embedding_backward(dt, ids, R, n, V, D);
    check_true(t, bad == -1, "%s: all ids valid", what);
    check_grad(t, what, "dtable (+=)", dt, dt0, c.table, V * D, emb_loss, &c);
    // An id out of range: its position is returned and dtable is untouched.
    const int32_t bad_ids[3] = {1, 6, 2};
    float *dt2 = malloc(V * D * 4);
    memcpy(dt2, dt0, V * D * 4);
    bad = cpu_embedding_backward(dt2, bad_ids, R, 3, V, D);
    check_true(t, bad == 1 && max_abs_diff(dt2, dt0, V * D) == 0.0,
               "embedding_backward id 6 >= V: returns position 1, dtable untouched");
    free(dt2);
    free(table); free(R); free(out); free(dt0); free(dt); free(c.table); free(c.R); free(c.out);
}

// ---- main ----------------------------------------------------------------------

int main(void) {
    TestCtx t = {0};
    double t0 = now_s();
    printf("linear\n");
    test_linear(&t, 6, 9, 67);
    test_linear(&t, 1, 4, 3);

    printf("conv2d\n");
    test_conv2d(&t, 2, 3, 7, 6, 4, 3, 1, 1, 0);  // 3x3 s1, odd height
    test_conv2d(&t, 2, 3, 7, 6, 4, 3, 1, 1, 1);  // same, 2-row tiles (last one short)
    test_conv2d(&t, 1, 2, 9, 7, 3, 3, 2, 1, 0);  // 3x3 s2 p1, odd sizes
    test_conv2d(&t, 1, 2, 9, 7, 3, 3, 2, 1, 1);
    test_conv2d(&t, 2, 2, 8, 8, 3, 3, 2, 0, 1);  // 3x3 s2 p0: last row/col of x unused
    test_conv2d(&t, 2, 5, 3, 4, 3, 1, 1, 0, 0);  // 1x1: direct sgemm path
    test_conv2d(&t, 1, 3, 5, 5, 2, 1, 2, 0, 0);  // 1x1 stride 2 (im2col path)
    test_conv2d(&t, 5, 3, 5, 4, 4, 3, 1, 1, 2);  // small images two to a tile: 2, 2, 1
    test_conv2d(&t, 5, 3, 5, 4, 4, 3, 2, 1, 2);
    test_conv2d(&t, 3, 4, 4, 4, 3, 1, 1, 0, 2);  // 1x1 through the image tiles

    printf("attention\n");
    test_attention(&t, 2, 7, 7, 2, 4, 0, 0);     // self
    test_attention(&t, 2, 7, 7, 2, 4, 0, 3);     // self, blocks of 3 queries
    test_attention(&t, 1, 9, 5, 2, 3, 0, 2);     // cross, Lk != Lq
    test_attention(&t, 2, 6, 6, 3, 4, 1, 0);     // causal
    test_attention(&t, 2, 6, 6, 3, 4, 1, 4);     // causal, blocks of 4
    test_attention(&t, 1, 5, 8, 1, 5, 0, 2);     // one (batch, head): threaded sgemm path

    printf("normalisation\n");
    test_group_norm(&t, 2, 6, 5, 3, 0);
    test_group_norm(&t, 2, 6, 5, 3, 1);
    test_group_norm(&t, 1, 4, 9, 1, 1);
    test_layer_norm(&t, 5, 7);
    test_layer_norm(&t, 3, 70); // two column blocks
    test_softmax(&t, 4, 9);

    printf("elementwise\n");
    test_activation(&t, ACT_SILU, 50);
    test_activation(&t, ACT_GELU, 50);
    test_activation(&t, ACT_QUICK_GELU, 50);
    test_geglu(&t, 3, 7);
    test_channel_bias(&t, 2, 3, 5);

    printf("layout\n");
    test_upsample(&t, 1, 2, 3, 4, 6, 8);
    test_upsample(&t, 2, 1, 3, 3, 5, 5); // odd: 2H - 1
    test_upsample(&t, 1, 2, 3, 3, 5, 6); // odd rows, even columns
    test_concat(&t, 2, 3, 2, 5);
    test_embedding(&t);

    // Shapes big enough that every kernel runs its OpenMP loops threaded (a
    // race would show here, not on the tiny shapes above); FD on samples.
    printf("threaded loops (bigger shapes)\n");
    test_linear(&t, 300, 8, 130);
    test_conv2d(&t, 2, 8, 40, 40, 16, 3, 1, 1, 0);
    test_conv2d(&t, 1, 16, 33, 33, 16, 3, 2, 1, 0);
    test_conv2d(&t, 2, 16, 24, 24, 40, 1, 1, 0, 0);
    test_attention(&t, 1, 300, 300, 2, 8, 0, 0); // query blocks of 256 and 44
    test_attention(&t, 2, 100, 77, 4, 8, 1, 0);
    test_group_norm(&t, 2, 32, 600, 8, 1);
    test_layer_norm(&t, 300, 130);
    test_softmax(&t, 400, 100);
    test_activation(&t, ACT_SILU, 40000);
    test_activation(&t, ACT_GELU, 40000);
    test_activation(&t, ACT_QUICK_GELU, 40000);
    test_geglu(&t, 200, 200);
    test_channel_bias(&t, 2, 20, 1024);
    test_upsample(&t, 2, 20, 16, 16, 32, 31);
    printf("(%.1f s)\n", now_s() - t0);
    return test_summary(&t);
}
