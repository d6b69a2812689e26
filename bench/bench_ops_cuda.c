// bench_ops_cuda.c: speed of the CUDA backend's first ops on SD shapes.
//
// GEMM (be->linear, no bias) in TFLOP/s for F32 (TF32 off, then on), F16 and
// BF16, with BF16 / F32 as the ratio. Memory-bound ops (group norm, group
// norm + silu, silu, layer norm) in GB/s of one read plus one write of the
// tensor, against the peer run in the same invocation: a device-to-device
// copy of the same bytes (be->copy), which is what such an op can at best
// reach. Without a GPU it prints "SKIPPED: no CUDA device (...)" and exits 0.
//
//   bench_ops_cuda [seconds per case, default 0.3]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/tensor.h"
#ifdef SDC_HAVE_CUDA
#include "cuda/ops_cuda.h"
#endif

#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct Case {
    const Backend *be;
    Tensor out, a, b, c; // per op
    int kind;
} Case;

enum { K_LINEAR, K_GN, K_GN_SILU, K_SILU, K_LN, K_COPY };

static void run_once(Case *c) {
    const Backend *be = c->be;
    switch (c->kind) {
    case K_LINEAR: be->linear(be, &c->out, &c->a, &c->b, NULL); break;
    case K_GN: be->group_norm(be, &c->out, &c->a, &c->b, &c->c, 32, 1e-5f, 0); break;
    case K_GN_SILU: be->group_norm(be, &c->out, &c->a, &c->b, &c->c, 32, 1e-5f, 1); break;
    case K_SILU: be->silu(be, &c->out, &c->a); break;
    case K_LN: be->layer_norm(be, &c->out, &c->a, &c->b, &c->c, 1e-5f); break;
    case K_COPY: be->copy(be, &c->out, &c->a); break;
    }
}

// Seconds per call: 3 warm-up calls, then batches until `budget` seconds.
static double time_case(Case *c, double budget) {
    for (int i = 0; i < 3; i++) run_once(c);
    c->be->sync(c->be);
    int iters = 0, batch = 5;
    double t0 = now(), t;
    do {
        for (int i = 0; i < batch; i++) run_once(c);
        c->be->sync(c->be);
        iters += batch;
        t = now() - t0;
    } while (t < budget && iters < 10000);
    return t / iters;
}

// A device tensor filled with small non-zero values (uploaded from the host).
static Tensor dev_tensor(const Backend *be, int ndim, const int64_t *shape, float *host_scratch) {
    Tensor t = tensor_make(be->act_dtype, DEV_CUDA, NULL, ndim, shape);
    t.data = be->alloc(be, tensor_bytes(&t));
    if (!t.data) {
        fprintf(stderr, "bench_ops_cuda: out of GPU memory\n");
        exit(2);
    }
    size_t n = (size_t)tensor_numel(&t);
    for (size_t i = 0; i < n; i++) host_scratch[i] = 0.001f * (float)((i * 2654435761u) % 2001) - 1.0f;
    backend_upload_f32(be, &t, host_scratch, n);
    return t;
}

static void free_case(Case *c) {
    Tensor *ts[4] = {&c->out, &c->a, &c->b, &c->c};
    for (int i = 0; i < 4; i++)
        if (ts[i]->data) c->be->free(c->be, ts[i]->data);
}

static float *g_host; // host staging for uploads, sized for the largest tensor
#define HOST_FLOATS ((size_t)64 << 20)

static double bench_gemm(const Backend *be, int64_t M, int64_t K, int64_t N, double budget) {
    Case c = {.be = be, .kind = K_LINEAR};
    c.a = dev_tensor(be, 2, (int64_t[]){M, K}, g_host); // x (M, K)
    c.b = dev_tensor(be, 2, (int64_t[]){N, K}, g_host); // w (N, K)
    c.out = dev_tensor(be, 2, (int64_t[]){M, N}, g_host);
    double s = time_case(&c, budget);
    free_case(&c);
    return 2.0 * M * N * K / s / 1e12;
}

// GB/s of one read + one write of x (N, C, H, W)
static double bench_mem(const Backend *be, int kind, int ndim, const int64_t *shape, double budget) {
    Case c = {.be = be, .kind = kind};
    c.a = dev_tensor(be, ndim, shape, g_host);
    c.out = dev_tensor(be, ndim, shape, g_host);
    int64_t ch = kind == K_LN ? shape[ndim - 1] : shape[1];
    if (kind == K_GN || kind == K_GN_SILU || kind == K_LN) {
        c.b = dev_tensor(be, 1, (int64_t[]){ch}, g_host);
        c.c = dev_tensor(be, 1, (int64_t[]){ch}, g_host);
    }
    double s = time_case(&c, budget);
    double bytes = 2.0 * tensor_bytes(&c.a);
    free_case(&c);
    return bytes / s / 1e9;
}

int main(int argc, char **argv) {
    double budget = argc > 1 ? atof(argv[1]) : 0.3;
    if (budget <= 0) budget = 0.3;
    SdcError err = {0};
    Backend *f32 = NULL;
    if (!backend_cuda_available() || backend_cuda_create(&f32, 0, DT_F32, &err) != SDC_OK) {
        printf("SKIPPED: no CUDA device (%s)\n",
               backend_cuda_available() ? err.msg : "sdc was built without CUDA");
        return 0;
    }
    g_host = malloc(HOST_FLOATS * sizeof(float));
    if (!g_host) return 2;
    Backend *f16 = NULL, *bf16 = NULL;
    if (backend_cuda_create(&f16, 0, DT_F16, &err) || backend_cuda_create(&bf16, 0, DT_BF16, &err)) {
        fprintf(stderr, "bench_ops_cuda: %s\n", err.msg);
        return 1;
    }
#ifdef SDC_HAVE_CUDA
    char dev[320];
    cuda_ctx_describe((const CudaCtx *)f32->impl, dev, sizeof dev);
    printf("device: %s\n", dev);
#endif

    // ---- GEMM ----------------------------------------------------------------------
    static const int64_t shapes[][3] = {
        // M, K, N: (tokens, in, out) of SD 1.5 UNet linears at 512px, batch 2
        {8192, 320, 320},   // attn q/k/v/out, 64x64 level
        {8192, 320, 1280},  // 4x widening at the 64x64 level
        {8192, 320, 2560},  // GEGLU proj in, 64x64
        {8192, 1280, 320},  // FF out, 64x64
        {2048, 640, 5120},  // GEGLU proj in, 32x32
        {4096, 1280, 5120}, // a large FF-sized GEMM (compute-bound)
        {512, 1280, 10240}, // GEGLU proj in, 16x16
        {154, 768, 320},    // cross-attn k/v from the text context (2 x 77)
    };
    int ns = (int)(sizeof shapes / sizeof shapes[0]);
    double best_f32 = 0, best_tf32 = 0, best_bf16 = 0, best_f16 = 0;
    printf("\nGEMM out(M,N) = x(M,K) w(N,K)^T, TFLOP/s\n");
    printf("%6s %6s %6s | %8s %8s %8s %8s | %9s\n", "M", "K", "N", "f32", "tf32", "f16", "bf16",
           "bf16/f32");
    for (int i = 0; i < ns; i++) {
        int64_t M = shapes[i][0], K = shapes[i][1], N = shapes[i][2];
        double a = bench_gemm(f32, M, K, N, budget);
#ifdef SDC_HAVE_CUDA
        cuda_ctx_set_tf32((CudaCtx *)f32->impl, 1);
        double b = bench_gemm(f32, M, K, N, budget);
        cuda_ctx_set_tf32((CudaCtx *)f32->impl, 0);
#else
        double b = 0;
#endif
        double h = bench_gemm(f16, M, K, N, budget);
        double bb = bench_gemm(bf16, M, K, N, budget);
        printf("%6lld %6lld %6lld | %8.1f %8.1f %8.1f %8.1f | %8.1fx\n", (long long)M, (long long)K,
               (long long)N, a, b, h, bb, bb / a);
        fflush(stdout);
        if (a > best_f32) best_f32 = a;
        if (b > best_tf32) best_tf32 = b;
        if (h > best_f16) best_f16 = h;
        if (bb > best_bf16) best_bf16 = bb;
    }

    // ---- memory-bound ops -------------------------------------------------------------
    printf("\nmemory-bound ops, GB/s (1 read + 1 write); peer: device copy of the same bytes\n");
    printf("%-28s %-18s | %8s %8s | %7s\n", "op", "shape", "f32", "bf16", "f32/copy");
    typedef struct { const char *name; int kind; int ndim; int64_t shape[4]; const char *sh; } MemCase;
    static const MemCase mc[] = {
        {"group_norm g32", K_GN, 4, {2, 320, 64, 64}, "(2,320,64,64)"},
        {"group_norm g32 + silu", K_GN_SILU, 4, {2, 320, 64, 64}, "(2,320,64,64)"},
        {"group_norm g32 + silu", K_GN_SILU, 4, {2, 1280, 16, 16}, "(2,1280,16,16)"},
        {"group_norm g32 + silu", K_GN_SILU, 4, {16, 320, 64, 64}, "(16,320,64,64)"},
        {"silu", K_SILU, 4, {2, 320, 64, 64}, "(2,320,64,64)"},
        {"silu", K_SILU, 4, {16, 320, 64, 64}, "(16,320,64,64)"},
        {"layer_norm", K_LN, 3, {2, 4096, 320}, "(2,4096,320)"},
        {"copy (peer)", K_COPY, 4, {16, 320, 64, 64}, "(16,320,64,64)"},
    };
    int nm = (int)(sizeof mc / sizeof mc[0]);
    double copy_f32 = bench_mem(f32, K_COPY, mc[nm - 1].ndim, mc[nm - 1].shape, budget);
    double gn_f32 = 0, silu_f32 = 0;
    for (int i = 0; i < nm; i++) {
        double a = bench_mem(f32, mc[i].kind, mc[i].ndim, mc[i].shape, budget);
        double b = bench_mem(bf16, mc[i].kind, mc[i].ndim, mc[i].shape, budget);
        printf("%-28s %-18s | %8.0f %8.0f | %7.2f\n", mc[i].name, mc[i].sh, a, b, a / copy_f32);
        fflush(stdout);
        if (mc[i].kind == K_GN_SILU && a > gn_f32) gn_f32 = a;
        if (mc[i].kind == K_SILU && a > silu_f32) silu_f32 = a;
    }

    printf("\nsummary: gemm TFLOP/s best f32=%.1f tf32=%.1f f16=%.1f bf16=%.1f; "
           "group_norm+silu f32=%.0f GB/s, silu f32=%.0f GB/s, copy=%.0f GB/s\n",
           best_f32, best_tf32, best_f16, best_bf16, gn_f32, silu_f32, copy_f32);
    backend_destroy(f32);
    backend_destroy(f16);
    backend_destroy(bf16);
    free(g_host);
    return 0;
}
