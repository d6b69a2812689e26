// bench_ops_cpu.c: speed of the CPU backend's heavy ops at SD 1.5 UNet
// shapes, each printed next to a peer run in the same invocation:
// - compute-bound ops (conv2d, attention, linear): achieved GFLOP/s and the
//   ratio to a plain square cblas_sgemm of the same FLOPs (the roofline the
//   ops are built on; conv also shows its own-shape sgemm, i.e. the cost of
//   im2col);
// - memory-bound ops (group norm, geglu, transposes): GB/s moved and the
//   ratio to memcpy of the same bytes.
// With --torch it also runs bench/ops_torch.py --only <op> (same op, same
// threads, in PyTorch) right before timing each op here, so both see the
// same load, and prints sdc time / torch time per op.
//
// Usage: bench_ops_cpu [--threads N] [--torch] [--only SUBSTRING]   (from the repo root)
// Times are the best of several runs (the machine may be shared).
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend.h"

#include "benchutil.h"

// ---- timing ------------------------------------------------------------------

typedef void (*BenchFn)(void *ctx);

// Best time of repeated runs: at least 3 runs and ~0.6 s, at most 50 runs.
static double time_best(BenchFn fn, void *ctx) {
    fn(ctx); // warm-up (sizes the backend scratch)
    double best = 1e30, total = 0;
    for (int r = 0; r < 50 && (r < 3 || total < 0.6); r++) {
        double t0 = now_sec();
        fn(ctx);
        double dt = now_sec() - t0;
        total += dt;
        if (dt < best) best = dt;
    }
    return best;
}

typedef struct GemmCtx {
    int M, N, K;
    float *a, *b, *c;
} GemmCtx;

static void run_gemm(void *p) {
    GemmCtx *g = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->M, g->N, g->K, 1.0f, g->a, g->K, g->b,
                g->N, 0.0f, g->c, g->N);
}

static double gemm_gflops(int M, int N, int K) {
    GemmCtx g = {M, N, K, buf((size_t)M * K, 1), buf((size_t)K * N, 2), buf((size_t)M * N, 3)};
    double t = time_best(run_gemm, &g);
    free(g.a); free(g.b); free(g.c);
    return 2.0 * M * N * K / t * 1e-9;
}

// Square sgemm doing about `flops` (n a multiple of 16).
static double square_gemm_gflops(double flops) {
    int n = (int)(cbrt(flops / 2.0) / 16.0 + 0.5) * 16;
    if (n < 64) n = 64;
    return gemm_gflops(n, n, n);
}

typedef struct CopyCtx {
    float *dst, *src;
    size_t n;
} CopyCtx;

static void run_copy(void *p) {
    CopyCtx *c = p;
    memcpy(c->dst, c->src, c->n * sizeof(float));
}

// memcpy bandwidth (read + write bytes per second) over `bytes` moved.
static double memcpy_gbs(double bytes) {
    size_t n = (size_t)(bytes / 8);
    CopyCtx c = {buf(n, 4), buf(n, 5), n};
    double t = time_best(run_copy, &c);
    free(c.dst); free(c.src);
    return 2.0 * n * sizeof(float) / t * 1e-9;
}

// ---- ops ---------------------------------------------------------------------

typedef struct OpCtx {
    Backend *be;
    int kind; // 0 conv, 1 attention, 2 group_norm, 3 linear, 4 geglu, 5 nchw_to_nlc
    Tensor out, x, w, b, k, v;
    int stride, pad, heads;
} OpCtx;

static void run_op(void *p) {
    OpCtx *o = p;
    Backend *be = o->be;
    switch (o->kind) {
    case 0: be->conv2d(be, &o->out, &o->x, &o->w, &o->b, o->stride, o->pad); break;
    case 1: be->attention(be, &o->out, &o->x, &o->k, &o->v, o->heads, 0); break;
    case 2: be->group_norm(be, &o->out, &o->x, &o->w, &o->b, 32, 1e-5f, 1); break;
    case 3: be->linear(be, &o->out, &o->x, &o->w, &o->b); break;
    case 4: be->geglu(be, &o->out, &o->x); break;
    case 5: be->nchw_to_nlc(be, &o->out, &o->x); break;
    }
}

static Tensor mk(int ndim, int64_t a, int64_t b, int64_t c, int64_t d, unsigned seed) {
    int64_t shape[4] = {a, b, c, d};
    Tensor t = tensor_f32(NULL, ndim, shape);
    t.data = buf((size_t)tensor_numel(&t), seed);
    return t;
}

static void free_ctx(OpCtx *o) {
    free(o->out.data); free(o->x.data); free(o->w.data); free(o->b.data);
    free(o->k.data); free(o->v.data);
}

// --torch: the torch time of the op being benchmarked (0 = none).
static int g_torch, g_threads;
static const char *g_only; // --only: run the ops whose name contains this
static double g_torch_ms;

// Runs bench/ops_torch.py for one op; sets g_torch_ms (0 when unavailable).
static void torch_measure(const char *name) {
    g_torch_ms = 0;
    if (!g_torch) return;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 %s/../bench/ops_torch.py --threads %d --only %s 2>/dev/null",
             SDC_DATA_DIR, g_threads, name);
    FILE *f = popen(cmd, "r");
    if (!f) return;
    char line[256], got[64];
    double ms;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%63s %lf", got, &ms) == 2 && !strcmp(got, name)) g_torch_ms = ms;
    if (pclose(f) != 0) g_torch_ms = 0;
}

static double torch_time(const char *name) {
    (void)name;
    return g_torch_ms;
}

static void report_flops(const char *name, double t, double flops, double peer, const char *extra) {
    double gf = flops / t * 1e-9, tm = torch_time(name);
    printf("%-28s %8.2f ms %7.1f GFLOP/s  sgemm %6.1f  ratio %.2f", name, t * 1e3, gf, peer, gf / peer);
    if (tm > 0) printf("  torch %8.2f ms  sdc/torch %.2f", tm, t * 1e3 / tm);
    printf("%s\n", extra ? extra : "");
}

static void report_bytes(const char *name, double t, double bytes, double peer) {
    double gbs = bytes / t * 1e-9, tm = torch_time(name);
    printf("%-28s %8.2f ms %7.1f GB/s     memcpy %5.1f  ratio %.2f", name, t * 1e3, gbs, peer, gbs / peer);
    if (tm > 0) printf("  torch %8.2f ms  sdc/torch %.2f", tm, t * 1e3 / tm);
    printf("\n");
}

static void bench_conv(Backend *be, const char *name, int N, int C, int H, int OC, int stride) {
    if (g_only && !strstr(name, g_only)) return;
    torch_measure(name);
    int OH = (H + 2 - 3) / stride + 1;
    OpCtx o = {.be = be, .kind = 0, .stride = stride, .pad = 1};
    o.x = mk(4, N, C, H, H, 1);
    o.w = mk(4, OC, C, 3, 3, 2);
    o.b = mk(1, OC, 1, 1, 1, 3);
    o.out = mk(4, N, OC, OH, OH, 4);
    double t = time_best(run_op, &o);
    double flops = 2.0 * N * OC * (double)C * 9 * OH * OH;
    double own = gemm_gflops(OC, N * OH * OH, C * 9);
    char extra[96];
    snprintf(extra, sizeof extra, "  (own-shape sgemm %.1f, ratio %.2f)", own, flops / t * 1e-9 / own);
    report_flops(name, t, flops, square_gemm_gflops(flops), extra);
    free_ctx(&o);
}

static void bench_attention(Backend *be, const char *name, int B, int Lq, int Lk, int H, int D) {
    if (g_only && !strstr(name, g_only)) return;
    torch_measure(name);
    OpCtx o = {.be = be, .kind = 1, .heads = H};
    o.x = mk(3, B, Lq, H * D, 1, 1);
    o.k = mk(3, B, Lk, H * D, 1, 2);
    o.v = mk(3, B, Lk, H * D, 1, 3);
    o.out = mk(3, B, Lq, H * D, 1, 4);
    double t = time_best(run_op, &o);
    double flops = 4.0 * B * H * (double)Lq * Lk * D;
    report_flops(name, t, flops, square_gemm_gflops(flops), NULL);
    free_ctx(&o);
}

static void bench_linear(Backend *be, const char *name, int M, int K, int N) {
    if (g_only && !strstr(name, g_only)) return;
    torch_measure(name);
    OpCtx o = {.be = be, .kind = 3};
    o.x = mk(2, M, K, 1, 1, 1);
    o.w = mk(2, N, K, 1, 1, 2);
    o.b = mk(1, N, 1, 1, 1, 3);
    o.out = mk(2, M, N, 1, 1, 4);
    double t = time_best(run_op, &o);
    double flops = 2.0 * M * N * (double)K;
    report_flops(name, t, flops, square_gemm_gflops(flops), NULL);
    free_ctx(&o);
}

static void bench_memop(Backend *be, const char *name, int kind, int N, int C, int H) {
    if (g_only && !strstr(name, g_only)) return;
    torch_measure(name);
    OpCtx o = {.be = be, .kind = kind};
    size_t n = (size_t)N * C * H * H;
    double bytes = 2.0 * n * sizeof(float);
    if (kind == 2) {
        o.x = mk(4, N, C, H, H, 1);
        o.w = mk(1, C, 1, 1, 1, 2);
        o.b = mk(1, C, 1, 1, 1, 3);
        o.out = mk(4, N, C, H, H, 4);
        bytes = 3.0 * n * sizeof(float); // stats pass + normalise pass
    } else if (kind == 4) { // (N, H*H, 2C) -> (N, H*H, C)
        o.x = mk(3, N, (int64_t)H * H, 2 * C, 1, 1);
        o.out = mk(3, N, (int64_t)H * H, C, 1, 4);
        bytes = 3.0 * n * sizeof(float);
    } else { // nchw_to_nlc
        o.x = mk(4, N, C, H, H, 1);
        o.out = mk(3, N, (int64_t)H * H, C, 1, 4);
    }
    double t = time_best(run_op, &o);
    report_bytes(name, t, bytes, memcpy_gbs(bytes));
    free_ctx(&o);
}

int main(int argc, char **argv) {
    int threads = 0, torch = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--torch")) torch = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) g_only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--threads N] [--torch] [--only SUBSTRING]\n", argv[0]);
            return 2;
        }
    }
    Backend *be;
    SdcError err = {0};
    if (backend_cpu_create(&be, threads, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("bench_ops_cpu: %d threads; %s\n", be->threads, openblas_get_config());
    g_torch = torch;
    g_threads = be->threads;

    bench_conv(be, "conv3x3_320_64x64", 1, 320, 64, 320, 1);
    bench_conv(be, "conv3x3_320_64x64_b2", 2, 320, 64, 320, 1);
    bench_conv(be, "conv3x3_1280_8x8", 1, 1280, 8, 1280, 1);
    bench_conv(be, "conv3x3_1280_8x8_b2", 2, 1280, 8, 1280, 1);
    bench_conv(be, "conv3x3s2_320_64x64", 1, 320, 64, 320, 2);
    bench_attention(be, "attn_self_4096x8x40", 1, 4096, 4096, 8, 40);
    bench_attention(be, "attn_cross_4096x77x8x40", 1, 4096, 77, 8, 40);
    bench_attention(be, "attn_self_256x8x160", 1, 256, 256, 8, 160);
    bench_linear(be, "linear_4096x320_to_2560", 4096, 320, 2560);
    bench_linear(be, "linear_4096x1280_to_320", 4096, 1280, 320);
    bench_memop(be, "group_norm_silu_320_64x64", 2, 1, 320, 64);
    bench_memop(be, "geglu_4096x1280", 4, 1, 1280, 64);
    bench_memop(be, "nchw_to_nlc_320_64x64", 5, 1, 320, 64);

    backend_destroy(be);
    return 0;
}
