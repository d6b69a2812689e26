// bench_backward_cpu.c: time of the CPU backward kernels (ops_cpu_bwd.h)
// next to their forward, same shapes, same invocation, at SD 1.5 UNet
// shapes (64x64 latent, first level: 320 channels, 8 heads of 40).
// Prints per op: forward ms, backward ms, their ratio and the backward's
// GFLOP/s. The FLOP ratio to aim at: 2 for conv2d and linear (two products
// of the forward's size), 2.5 for attention (Q.K^T recomputed, then dO.V^T,
// dS.K, dS^T.Q, P^T.dO, against the forward's two).
//
// Usage: bench_backward_cpu [--only SUBSTRING]   Times: best of >= 3 runs.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/ops_cpu.h"
#include "cpu/ops_cpu_bwd.h"

#include "benchutil.h"

typedef struct {
    const char *name;
    // shapes
    int N, C, H, W, OC, K, B, Lq, Lk, Hh, D, M, Kd, Nd;
    // buffers
    float *x, *w, *b, *y, *dy, *dx, *dw, *db, *scr, *q, *k, *v, *dq, *dk, *dv;
    size_t scr_f;
} Ctx;

typedef void (*Fn)(Ctx *c);

static double time_best(Fn fn, Ctx *c) {
    fn(c); // warm-up
    double best = 1e30, total = 0;
    for (int r = 0; r < 20 && (r < 3 || total < 1.0); r++) {
        double t0 = now_sec();
        fn(c);
        double dt = now_sec() - t0;
        total += dt;
        if (dt < best) best = dt;
    }
    return best;
}

static void conv_fwd(Ctx *c) {
    cpu_conv2d(c->y, c->x, c->w, c->b, c->N, c->C, c->H, c->W, c->OC, c->K, c->K, 1, c->K / 2,
               c->scr, c->scr_f);
}
static void conv_bwd(Ctx *c) {
    cpu_conv2d_backward(c->dx, c->dw, c->db, c->dy, c->x, c->w, c->N, c->C, c->H, c->W, c->OC,
                        c->K, c->K, 1, c->K / 2, c->scr, c->scr_f);
}
static void att_fwd(Ctx *c) {
    cpu_attention(c->y, c->q, c->k, c->v, c->B, c->Lq, c->Lk, c->Hh, c->D, 0, c->scr, c->scr_f);
}
static void att_bwd(Ctx *c) {
    cpu_attention_backward(c->dq, c->dk, c->dv, c->dy, c->q, c->k, c->v, c->B, c->Lq, c->Lk, c->Hh,
                           c->D, 0, c->scr, c->scr_f);
}
static void lin_fwd(Ctx *c) { cpu_linear(c->y, c->x, c->w, c->b, c->M, c->Kd, c->Nd); }
static void lin_bwd(Ctx *c) {
    cpu_linear_backward(c->dx, c->dw, c->db, c->dy, c->x, c->w, c->M, c->Kd, c->Nd);
}
static void gn_fwd(Ctx *c) {
    cpu_group_norm(c->y, c->x, c->w, c->b, c->N, c->C, (int64_t)c->H * c->W, 32, 1e-5f, 1);
}
static void gn_bwd(Ctx *c) {
    cpu_group_norm_backward(c->dx, c->dw, c->db, c->dy, c->x, c->w, c->b, c->N, c->C,
                            (int64_t)c->H * c->W, 32, 1e-5f, 1);
}

static void ln_fwd(Ctx *c) { cpu_layer_norm(c->y, c->x, c->w, c->b, c->M, c->Kd, 1e-5f); }
static void ln_bwd(Ctx *c) {
    cpu_layer_norm_backward(c->dx, c->dw, c->db, c->dy, c->x, c->w, c->M, c->Kd, 1e-5f, c->scr,
                            2 * (size_t)c->M);
}

static void report(const char *name, Ctx *c, Fn f, Fn b, double bwd_flop) {
    double tf = time_best(f, c), tb = time_best(b, c);
    printf("%-34s fwd %8.1f ms  bwd %8.1f ms  bwd/fwd %5.2f", name, tf * 1e3, tb * 1e3, tb / tf);
    if (bwd_flop > 0) printf("  bwd %6.1f GFLOP/s", bwd_flop / tb * 1e-9);
    printf("\n");
    fflush(stdout);
}

static int want(const char *only, const char *name) { return !only || strstr(name, only); }

int main(int argc, char **argv) {
    const char *only = NULL;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    int threads = omp_get_max_threads();
    printf("bench_backward_cpu: %d threads\n", threads);

    const char *n1 = "conv2d 320->320 3x3 64x64";
    if (want(only, n1)) {
        Ctx c = {.N = 1, .C = 320, .H = 64, .W = 64, .OC = 320, .K = 3};
        size_t nx = (size_t)c.C * 4096, nw = (size_t)c.OC * c.C * 9;
        size_t sf = cpu_conv2d_scratch_floats(c.C, 64, 64, c.OC, 3, 3, 1, 1);
        size_t sb = cpu_conv2d_backward_scratch_floats(c.C, 64, 64, c.OC, 3, 3, 1, 1);
        c.scr_f = sf > sb ? sf : sb;
        c.x = buf(nx, 1), c.w = buf(nw, 2), c.b = buf(c.OC, 3), c.y = buf(nx, 4);
        c.dy = buf(nx, 5), c.dx = buf(nx, 6), c.dw = buf(nw, 7), c.db = buf(c.OC, 8);
        c.scr = buf(c.scr_f, 9);
        report(n1, &c, conv_fwd, conv_bwd, 2.0 * 2 * c.OC * 9.0 * c.C * 4096);
        free(c.x); free(c.w); free(c.b); free(c.y); free(c.dy); free(c.dx); free(c.dw);
        free(c.db); free(c.scr);
    }
    const char *n2 = "conv2d 1280->1280 3x3 8x8 batch 2";
    if (want(only, n2)) {
        Ctx c = {.N = 2, .C = 1280, .H = 8, .W = 8, .OC = 1280, .K = 3};
        size_t nx = (size_t)c.N * c.C * 64, nw = (size_t)c.OC * c.C * 9;
        size_t sf = cpu_conv2d_scratch_floats(c.C, 8, 8, c.OC, 3, 3, 1, 1);
        size_t sb = cpu_conv2d_backward_scratch_floats(c.C, 8, 8, c.OC, 3, 3, 1, 1);
        c.scr_f = sf > sb ? sf : sb;
        c.x = buf(nx, 1), c.w = buf(nw, 2), c.b = buf(c.OC, 3), c.y = buf(nx, 4);
        c.dy = buf(nx, 5), c.dx = buf(nx, 6), c.dw = buf(nw, 7), c.db = buf(c.OC, 8);
        c.scr = buf(c.scr_f, 9);
        report(n2, &c, conv_fwd, conv_bwd, 2.0 * 2 * c.OC * 9.0 * c.C * 64 * c.N);
        free(c.x); free(c.w); free(c.b); free(c.y); free(c.dy); free(c.dx); free(c.dw);
        free(c.db); free(c.scr);
    }
    const char *names[2] = {"attention self 4096 x 8 x 40", "attention cross 4096 x 77, 8 x 40"};
    int lks[2] = {4096, 77};
    for (int a = 0; a < 2; a++) {
        if (!want(only, names[a])) continue;
        Ctx c = {.B = 1, .Lq = 4096, .Lk = lks[a], .Hh = 8, .D = 40};
        size_t nq = (size_t)c.Lq * 320, nk = (size_t)c.Lk * 320;
        size_t sf = cpu_attention_scratch_floats(c.Lq, c.Lk, c.D, threads);
        size_t sb = cpu_attention_backward_scratch_floats(c.Lq, c.Lk, c.D, threads);
        c.scr_f = sf > sb ? sf : sb;
        c.q = buf(nq, 1), c.k = buf(nk, 2), c.v = buf(nk, 3), c.y = buf(nq, 4), c.dy = buf(nq, 5);
        c.dq = buf(nq, 6), c.dk = buf(nk, 7), c.dv = buf(nk, 8), c.scr = buf(c.scr_f, 9);
        report(names[a], &c, att_fwd, att_bwd, 5 * 2.0 * c.Lq * c.Lk * 320);
        free(c.q); free(c.k); free(c.v); free(c.y); free(c.dy); free(c.dq); free(c.dk);
        free(c.dv); free(c.scr);
    }
    const char *n3 = "linear 4096x320 -> 1280";
    if (want(only, n3)) {
        Ctx c = {.M = 4096, .Kd = 320, .Nd = 1280};
        c.x = buf((size_t)c.M * c.Kd, 1), c.w = buf((size_t)c.Nd * c.Kd, 2), c.b = buf(c.Nd, 3);
        c.y = buf((size_t)c.M * c.Nd, 4), c.dy = buf((size_t)c.M * c.Nd, 5);
        c.dx = buf((size_t)c.M * c.Kd, 6), c.dw = buf((size_t)c.Nd * c.Kd, 7), c.db = buf(c.Nd, 8);
        report(n3, &c, lin_fwd, lin_bwd, 2 * 2.0 * c.M * c.Kd * c.Nd);
        free(c.x); free(c.w); free(c.b); free(c.y); free(c.dy); free(c.dx); free(c.dw);
        free(c.db);
    }
    const char *n4 = "group_norm+silu (1,320,64x64) g32";
    if (want(only, n4)) {
        Ctx c = {.N = 1, .C = 320, .H = 64, .W = 64};
        size_t nx = (size_t)c.C * 4096;
        c.x = buf(nx, 1), c.w = buf(c.C, 2), c.b = buf(c.C, 3), c.y = buf(nx, 4);
        c.dy = buf(nx, 5), c.dx = buf(nx, 6), c.dw = buf(c.C, 7), c.db = buf(c.C, 8);
        report(n4, &c, gn_fwd, gn_bwd, 0);
        free(c.x); free(c.w); free(c.b); free(c.y); free(c.dy); free(c.dx); free(c.dw);
        free(c.db);
    }
    const char *n5 = "layer_norm (4096, 320)";
    if (want(only, n5)) {
        Ctx c = {.M = 4096, .Kd = 320};
        size_t nx = (size_t)c.M * c.Kd;
        c.x = buf(nx, 1), c.w = buf(c.Kd, 2), c.b = buf(c.Kd, 3), c.y = buf(nx, 4);
        c.dy = buf(nx, 5), c.dx = buf(nx, 6), c.dw = buf(c.Kd, 7), c.db = buf(c.Kd, 8);
        c.scr = buf(2 * (size_t)c.M, 9);
        report(n5, &c, ln_fwd, ln_bwd, 0);
        free(c.x); free(c.w); free(c.b); free(c.y); free(c.dy); free(c.dx); free(c.dw);
        free(c.db); free(c.scr);
    }
    return 0;
}
