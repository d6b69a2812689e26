// bench_conv_cuda.c: the prepared CUDA paths against the ones sdc runs
// today, BF16, in the same invocation:
//   - conv2d: im2col + cuBLAS (cuda_conv2d_im2col) vs cuDNN with the
//     algorithm from its heuristics (SDC_CUDA_CONV=cudnn) and with the one it
//     timed fastest (=cudnn-find), on SD 1.5 UNet shapes at batch 2, 16, 64
//     and VAE decoder shapes at batch 1 (512 px). Every method gets the
//     workspace the backend would hand over (the im2col size, capped at
//     256 MiB). ms per call and TFLOP/s of the best.
//   - group norm + SiLU (32 groups): the chunked kernel (default) vs the fast
//     one (SDC_CUDA_GN=fast), GB/s of one read + one write, with a device
//     copy of the same bytes as the peer (what such an op can at best reach).
// Ends with one "summary:" line (tests/gpu/run.sh prints it). Without a GPU
// it prints "SKIPPED: no CUDA device (...)" and exits 0.
//
//   bench_conv_cuda [seconds per measurement, default 0.08]
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "benchutil.h"
#include "core/backend.h"
#include "core/tensor.h"
#ifdef SDC_HAVE_CUDA
#include "cuda/ops_cuda.h"
#endif

#ifdef SDC_HAVE_CUDA

static float *g_host; // host staging for uploads, sized for the largest tensor
#define HOST_FLOATS ((size_t)96 << 20)
#define CONV_WS_CAP ((size_t)256 << 20) // the backend's cap (backend_cuda.c)

// A device tensor of n values, small and non-zero (uploaded from the host).
static void *dev_fill(const Backend *be, size_t n) {
    Tensor t = tensor_make(be->act_dtype, DEV_CUDA, NULL, 1, (int64_t[]){(int64_t)n});
    t.data = be->alloc(be, tensor_bytes(&t));
    if (!t.data || n > HOST_FLOATS) {
        fprintf(stderr, "bench_conv_cuda: out of GPU memory (%zu values)\n", n);
        exit(2);
    }
    for (size_t i = 0; i < n; i++) g_host[i] = 0.001f * (float)((i * 2654435761u) % 2001) - 1.0f;
    backend_upload_f32(be, &t, g_host, n);
    return t.data;
}

// ---- conv ---------------------------------------------------------------------------

enum { M_IM2COL, M_CUDNN, M_FIND, M_COUNT };

typedef struct Conv {
    const Backend *be;
    CudaCtx *ctx;
    int N, C, H, W, OC, K, stride, pad;
    void *x, *w, *b, *out, *ws; // x (N, C, H, W), w (OC, C, K, K), b (OC), out (N, OC, OH, OW)
    size_t ws_bytes;
} Conv;

static void conv_run(Conv *c, int method) {
    if (method == M_IM2COL)
        cuda_conv2d_im2col(c->ctx, c->be->act_dtype, c->out, c->x, c->w, c->b, c->N, c->C, c->H, c->W,
                           c->OC, c->K, c->K, c->stride, c->pad, c->ws, c->ws_bytes);
    else
        cuda_conv2d_cudnn(c->ctx, c->be->act_dtype, c->out, c->x, c->w, c->b, c->N, c->C, c->H, c->W,
                          c->OC, c->K, c->K, c->stride, c->pad, c->ws, c->ws_bytes);
}

// Seconds per call: 2 warm-up calls (the first makes the cuDNN plan), then
// batches until `budget` seconds.
static double conv_time(Conv *c, int method, double budget, int *algo) {
    cuda_ctx_set_conv_algo(c->ctx, method == M_FIND ? CUDA_CONV_CUDNN_FIND : CUDA_CONV_CUDNN);
    for (int i = 0; i < 2; i++) conv_run(c, method);
    cuda_ctx_sync(c->ctx);
    CudaConvChoice ch;
    cuda_conv2d_cudnn_last(c->ctx, &ch);
    *algo = method == M_IM2COL ? -1 : ch.algo;
    int iters = 0, batch = 3;
    double t0 = now_sec(), t;
    do {
        for (int i = 0; i < batch; i++) conv_run(c, method);
        cuda_ctx_sync(c->ctx);
        iters += batch;
        t = now_sec() - t0;
    } while (t < budget && iters < 5000);
    return t / iters;
}

// Times the three methods on one shape; returns cuDNN / im2col speed-ups in su[2].
static void conv_case(const Backend *be, const char *what, int N, int C, int H, int W, int OC, int K,
                      int stride, int pad, double budget, double su[2]) {
    Conv c = {.be = be, .ctx = (CudaCtx *)be->impl, .N = N, .C = C, .H = H, .W = W, .OC = OC,
              .K = K, .stride = stride, .pad = pad};
    int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    size_t es = dtype_size(be->act_dtype);
    c.x = dev_fill(be, (size_t)N * C * H * W);
    c.w = dev_fill(be, (size_t)OC * C * K * K);
    c.b = dev_fill(be, (size_t)OC);
    c.out = dev_fill(be, (size_t)N * OC * OH * OW);
    size_t least = (size_t)C * K * K * 32 * es;
    c.ws_bytes = cuda_conv2d_workspace_bytes(be->act_dtype, N, C, H, W, OC, K, K, stride, pad);
    if (c.ws_bytes > CONV_WS_CAP) c.ws_bytes = CONV_WS_CAP;
    if (c.ws_bytes < least) c.ws_bytes = least;
    c.ws = be->alloc(be, c.ws_bytes);
    if (!c.ws) {
        fprintf(stderr, "bench_conv_cuda: out of GPU memory (workspace)\n");
        exit(2);
    }
    double s[M_COUNT];
    int algo[M_COUNT];
    for (int m = 0; m < M_COUNT; m++) s[m] = conv_time(&c, m, budget, &algo[m]);
    double best = s[0] < s[1] ? (s[0] < s[2] ? s[0] : s[2]) : (s[1] < s[2] ? s[1] : s[2]);
    double flop = 2.0 * N * OC * (double)OH * OW * C * K * K;
    char shape[64];
    snprintf(shape, sizeof shape, "(%d,%d,%d,%d)->%d k%d s%d", N, C, H, W, OC, K, stride);
    printf("%-10s %-30s | %8.3f %8.3f %8.3f | %6.0f | %5.2fx %5.2fx | %s / %s\n", what, shape,
           s[0] * 1e3, s[1] * 1e3, s[2] * 1e3, flop / best / 1e12, s[0] / s[1], s[0] / s[2],
           cuda_conv_algo_name(algo[1]), cuda_conv_algo_name(algo[2]));
    fflush(stdout);
    su[0] = s[0] / s[1];
    su[1] = s[0] / s[2];
    void *ps[5] = {c.x, c.w, c.b, c.out, c.ws};
    for (int i = 0; i < 5; i++) be->free(be, ps[i]);
}

// ---- group norm ---------------------------------------------------------------------

enum { G_CHUNKED, G_FAST, G_COPY };

// GB/s of one read + one write of x (N, C, S)
static double gn_gbs(const Backend *be, int kind, int N, int C, int64_t S, float eps, double budget) {
    CudaCtx *ctx = (CudaCtx *)be->impl;
    int dt = be->act_dtype;
    size_t n = (size_t)N * C * S, bytes = n * dtype_size(be->act_dtype);
    void *x = dev_fill(be, n), *out = dev_fill(be, n), *g = dev_fill(be, C), *b = dev_fill(be, C);
    int iters = 0;
    double t0 = 0, t = 0;
    for (int i = -2; t < budget && iters < 10000; i++) {
        if (i == 0) {
            cuda_ctx_sync(ctx);
            t0 = now_sec();
        }
        if (kind == G_CHUNKED)
            cuda_group_norm_chunked(ctx, dt, out, x, g, b, N, C, S, 32, eps, 1);
        else if (kind == G_FAST)
            cuda_group_norm_fast(ctx, dt, out, x, g, b, N, C, S, 32, eps, 1);
        else
            cuda_copy_bytes(ctx, out, x, bytes);
        if (i >= 0 && (++iters % 5) == 0) {
            cuda_ctx_sync(ctx);
            t = now_sec() - t0;
        }
    }
    be->free(be, x), be->free(be, out), be->free(be, g), be->free(be, b);
    return 2.0 * bytes / (t / iters) / 1e9;
}

int main(int argc, char **argv) {
    double budget = argc > 1 ? atof(argv[1]) : 0.08;
    if (budget <= 0) budget = 0.08;
    SdcError err = {0};
    Backend *be = NULL;
    if (!backend_cuda_available() || backend_cuda_create(&be, 0, DT_BF16, &err) != SDC_OK) {
        printf("SKIPPED: no CUDA device (%s)\n",
               backend_cuda_available() ? err.msg : "sdc was built without CUDA");
        return 0;
    }
    g_host = malloc(HOST_FLOATS * sizeof(float));
    if (!g_host) return 2;
    char dev[320];
    cuda_ctx_describe((const CudaCtx *)be->impl, dev, sizeof dev);
    printf("device: %s\n", dev);
    double t_start = now_sec();

    // ---- conv2d ---------------------------------------------------------------------
    printf("\nconv2d bf16, ms per call: im2col + cuBLAS | cuDNN heuristics | cuDNN timed (find)\n");
    printf("%-10s %-30s | %8s %8s %8s | %6s | %6s %6s | %s\n", "", "shape", "im2col", "cudnn",
           "find", "TFLOPs", "cudnn", "find", "algorithms (heuristics / find)");
    typedef struct { const char *what; int C, H, W, OC, K, stride, pad; } Shape;
    static const Shape unet[] = {
        {"3x3", 320, 64, 64, 320, 3, 1, 1},   {"3x3", 640, 32, 32, 640, 3, 1, 1},
        {"3x3", 1280, 16, 16, 1280, 3, 1, 1}, {"3x3", 1280, 8, 8, 1280, 3, 1, 1},
        {"conv_in", 4, 64, 64, 320, 3, 1, 1}, {"down s2", 320, 64, 64, 320, 3, 2, 1},
        {"1x1", 960, 32, 32, 640, 1, 1, 0},   {"1x1", 640, 64, 64, 320, 1, 1, 0},
    };
    static const Shape vae[] = {
        {"VAE 3x3", 512, 64, 64, 512, 3, 1, 1},    {"VAE 3x3", 512, 128, 128, 512, 3, 1, 1},
        {"VAE 3x3", 512, 256, 256, 512, 3, 1, 1},  {"VAE 3x3", 256, 256, 256, 256, 3, 1, 1},
        {"VAE 3x3", 256, 512, 512, 256, 3, 1, 1},  {"VAE 3x3", 128, 512, 512, 128, 3, 1, 1},
    };
    const int batches[3] = {2, 16, 64};
    double gm[4][2] = {{0}}; // log-sum of speed-ups: b2, b16, b64, VAE x (heuristics, find)
    int nu = (int)(sizeof unet / sizeof unet[0]), nv = (int)(sizeof vae / sizeof vae[0]);
    for (int bi = 0; bi < 3; bi++)
        for (int i = 0; i < nu; i++) {
            const Shape *s = &unet[i];
            double su[2];
            conv_case(be, s->what, batches[bi], s->C, s->H, s->W, s->OC, s->K, s->stride, s->pad,
                      budget, su);
            gm[bi][0] += log(su[0]) / nu;
            gm[bi][1] += log(su[1]) / nu;
        }
    for (int i = 0; i < nv; i++) {
        const Shape *s = &vae[i];
        double su[2];
        conv_case(be, s->what, 1, s->C, s->H, s->W, s->OC, s->K, s->stride, s->pad, budget, su);
        gm[3][0] += log(su[0]) / nv;
        gm[3][1] += log(su[1]) / nv;
    }
    cuda_ctx_set_conv_algo((CudaCtx *)be->impl, CUDA_CONV_IM2COL);

    // ---- group norm -----------------------------------------------------------------
    printf("\ngroup_norm g32 + silu bf16, GB/s (1 read + 1 write); peer: device copy\n");
    printf("%-22s | %8s %8s | %6s | %8s\n", "shape", "chunked", "fast", "fast/c", "fast/copy");
    typedef struct { int N, C, H, W; float eps; } GnShape;
    static const GnShape gs[] = {
        {2, 320, 64, 64, 1e-5f},  {16, 320, 64, 64, 1e-5f}, {64, 320, 64, 64, 1e-5f},
        {2, 1280, 16, 16, 1e-5f}, {16, 960, 64, 64, 1e-5f}, {2, 2560, 8, 8, 1e-5f},
        {1, 512, 64, 64, 1e-6f},  {1, 512, 256, 256, 1e-6f}, {1, 128, 512, 512, 1e-6f},
    };
    int ng = (int)(sizeof gs / sizeof gs[0]);
    double copy = gn_gbs(be, G_COPY, 16, 320, 64 * 64, 0, budget);
    double gn_gm = 0, best_fast = 0;
    for (int i = 0; i < ng; i++) {
        int64_t S = (int64_t)gs[i].H * gs[i].W;
        double a = gn_gbs(be, G_CHUNKED, gs[i].N, gs[i].C, S, gs[i].eps, budget);
        double f = gn_gbs(be, G_FAST, gs[i].N, gs[i].C, S, gs[i].eps, budget);
        char shape[48];
        snprintf(shape, sizeof shape, "(%d,%d,%d,%d)", gs[i].N, gs[i].C, gs[i].H, gs[i].W);
        printf("%-22s | %8.0f %8.0f | %5.2fx | %8.2f\n", shape, a, f, f / a, f / copy);
        fflush(stdout);
        gn_gm += log(f / a) / ng;
        if (f > best_fast) best_fast = f;
    }
    printf("copy (16,320,64,64): %.0f GB/s\n", copy);

    printf("\nsummary: conv bf16 cuDNN/im2col geomean b2=%.2fx b16=%.2fx b64=%.2fx vae=%.2fx "
           "(find: %.2fx %.2fx %.2fx %.2fx); gn+silu bf16 fast/chunked geomean %.2fx, "
           "fast best %.0f GB/s, copy %.0f GB/s (%.0f s)\n",
           exp(gm[0][0]), exp(gm[1][0]), exp(gm[2][0]), exp(gm[3][0]), exp(gm[0][1]),
           exp(gm[1][1]), exp(gm[2][1]), exp(gm[3][1]), exp(gn_gm), best_fast, copy,
           now_sec() - t_start);
    backend_destroy(be);
    free(g_host);
    return 0;
}

#else

int main(void) {
    printf("SKIPPED: no CUDA device (sdc was built without CUDA)\n");
    return 0;
}

#endif
