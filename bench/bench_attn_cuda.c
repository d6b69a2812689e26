// bench_attn_cuda.c: speed of the CUDA attention kernels on SD 1.5 shapes,
// BF16: the WMMA kernel (cuda_attention's default, attn_mma) against the
// FlashAttention-2-style kernel (cuda_attention_fa2), both run here.
//
// Shapes: SD 1.5 at 512x512 (64x64 latent), 8 heads: self attention
// Lq = Lk = 4096 (D 40), 1024 (D 80), 256 (D 160), and cross attention with
// the same queries and Lk = 77, at batch 2, 16 and 64 (guidance doubles the
// batch). Per shape: ms per call and TFLOP/s (4*B*H*Lq*Lk*D flops: Q.K^T and
// P.V) of each kernel, fa2/wmma (speedup, > 1 is faster), and the max
// difference of the two outputs relative to max |wmma| over the first
// sample(s) (both round P and the output to bf16: ~1e-2 at most; a broken
// kernel shows here before its speed is believed).
// Without a GPU it prints "SKIPPED: no CUDA device (...)" and exits 0.
//
//   bench_attn_cuda [seconds per case, default 0.15]
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

typedef struct Shape {
    const char *name;
    int Lq, Lk, D;
} Shape;

#define HEADS 8
#define MAX_ELEMS ((size_t)64 * 4096 * 320) // q / out at batch 64, 64x64 level
#define CHECK_ELEMS ((size_t)8 << 20)      // compared elements per case

typedef struct Bufs {
    CudaCtx *ctx;
    void *q, *k, *v, *o_old, *o_new; // (B, Lq, H*D) / (B, Lk, H*D) bf16, MAX_ELEMS each
} Bufs;

static void run(const Bufs *b, int fa2, int B, const Shape *s) {
    if (fa2)
        cuda_attention_fa2(b->ctx, CDT_BF16, b->o_new, b->q, b->k, b->v, B, s->Lq, s->Lk, HEADS,
                           s->D, 0);
    else
        cuda_attention(b->ctx, CDT_BF16, b->o_old, b->q, b->k, b->v, B, s->Lq, s->Lk, HEADS, s->D,
                       0);
}

// Seconds per call: 2 warm-up calls, then batches until `budget` seconds.
static double time_kernel(const Bufs *b, int fa2, int B, const Shape *s, double budget) {
    for (int i = 0; i < 2; i++) run(b, fa2, B, s);
    cuda_ctx_sync(b->ctx);
    int iters = 0, batch = 3;
    double t0 = now_sec(), t;
    do {
        for (int i = 0; i < batch; i++) run(b, fa2, B, s);
        cuda_ctx_sync(b->ctx);
        iters += batch;
        t = now_sec() - t0;
    } while (t < budget && iters < 1000);
    return t / iters;
}

// max |new - old| / max |old| over the first n elements of the outputs
static double compare(const Bufs *b, size_t n, uint16_t *h16, float *fo, float *fn) {
    cuda_download(b->ctx, h16, b->o_old, n * 2);
    convert_to_f32(fo, h16, DT_BF16, n);
    cuda_download(b->ctx, h16, b->o_new, n * 2);
    convert_to_f32(fn, h16, DT_BF16, n);
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)fn[i] - fo[i]);
        if (!(d <= md)) md = d; // NaN propagates
        if (fabs(fo[i]) > mr) mr = fabs(fo[i]);
    }
    return md / (mr > 0 ? mr : 1e-30);
}

static void *dev_alloc(CudaCtx *ctx, size_t bytes) {
    void *p = cuda_malloc(ctx, bytes);
    if (!p) {
        fprintf(stderr, "bench_attn_cuda: out of GPU memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

// MAX_ELEMS bf16 values in [-1, 1) from an LCG into a device buffer
static void dev_fill(CudaCtx *ctx, void *dst, uint16_t *h16, unsigned seed) {
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < MAX_ELEMS; i++) {
        s = s * 1664525u + 1013904223u;
        h16[i] = f32_to_bf16((float)(s >> 8) / 8388608.0f - 1.0f);
    }
    cuda_upload(ctx, dst, h16, MAX_ELEMS * 2);
}

static int bench(CudaCtx *ctx, double budget) {
    uint16_t *h16 = malloc(MAX_ELEMS * 2);
    float *fo = malloc(CHECK_ELEMS * 4), *fn = malloc(CHECK_ELEMS * 4);
    if (!h16 || !fo || !fn) {
        fprintf(stderr, "bench_attn_cuda: out of host memory\n");
        return 2;
    }
    Bufs b = {.ctx = ctx};
    b.q = dev_alloc(ctx, MAX_ELEMS * 2);
    b.k = dev_alloc(ctx, MAX_ELEMS * 2);
    b.v = dev_alloc(ctx, MAX_ELEMS * 2);
    b.o_old = dev_alloc(ctx, MAX_ELEMS * 2);
    b.o_new = dev_alloc(ctx, MAX_ELEMS * 2);
    dev_fill(ctx, b.q, h16, 1);
    dev_fill(ctx, b.k, h16, 2);
    dev_fill(ctx, b.v, h16, 3);

    static const Shape shapes[] = {
        {"self 64x64", 4096, 4096, 40}, {"cross 64x64", 4096, 77, 40},
        {"self 32x32", 1024, 1024, 80}, {"cross 32x32", 1024, 77, 80},
        {"self 16x16", 256, 256, 160},  {"cross 16x16", 256, 77, 160},
    };
    static const int batches[] = {2, 16, 64};
    const int ns = (int)(sizeof shapes / sizeof shapes[0]);
    const int nb = (int)(sizeof batches / sizeof batches[0]);

    printf("\nattention bf16, %d heads; TFLOP/s = 4*B*H*Lq*Lk*D / time\n", HEADS);
    printf("%-12s %3s %5s %4s %3s | %9s %7s | %9s %7s | %8s | %9s\n", "shape", "B", "Lq", "Lk", "D",
           "wmma ms", "TFLOP/s", "fa2 ms", "TFLOP/s", "fa2/wmma", "rel diff");
    double log_sum = 0, best_fa2 = 0, sp_min = 1e30, sp_max = 0, worst_diff = 0;
    double self40_16[2] = {0, 0}; // wmma, fa2 TFLOP/s at self 64x64, batch 16
    int n = 0;
    for (int bi = 0; bi < nb; bi++) {
        for (int si = 0; si < ns; si++) {
            const Shape *s = &shapes[si];
            const int B = batches[bi];
            const double flops = 4.0 * B * HEADS * s->Lq * (double)s->Lk * s->D;
            double t_old = time_kernel(&b, 0, B, s, budget);
            double t_new = time_kernel(&b, 1, B, s, budget);
            size_t nout = (size_t)B * s->Lq * HEADS * s->D;
            double diff = compare(&b, nout < CHECK_ELEMS ? nout : CHECK_ELEMS, h16, fo, fn);
            double tf_old = flops / t_old / 1e12, tf_new = flops / t_new / 1e12, sp = t_old / t_new;
            printf("%-12s %3d %5d %4d %3d | %9.3f %7.1f | %9.3f %7.1f | %7.2fx | %9.2e%s\n",
                   s->name, B, s->Lq, s->Lk, s->D, t_old * 1e3, tf_old, t_new * 1e3, tf_new, sp, diff,
                   diff <= 3e-2 ? "" : "  <-- fa2 disagrees");
            fflush(stdout);
            log_sum += log(sp);
            n++;
            if (sp < sp_min) sp_min = sp;
            if (sp > sp_max) sp_max = sp;
            if (tf_new > best_fa2) best_fa2 = tf_new;
            if (!(diff <= worst_diff)) worst_diff = diff;
            if (B == 16 && si == 0) self40_16[0] = tf_old, self40_16[1] = tf_new;
        }
    }
    printf("\nsummary: fa2/wmma bf16 speedup geomean %.2fx (min %.2f, max %.2f); self 4096x40 B16 "
           "wmma %.0f -> fa2 %.0f TFLOP/s; best fa2 %.0f TFLOP/s; max rel diff %.1e%s\n",
           exp(log_sum / n), sp_min, sp_max, self40_16[0], self40_16[1], best_fa2, worst_diff,
           worst_diff <= 3e-2 ? "" : " FA2 WRONG");
    cuda_free(ctx, b.q), cuda_free(ctx, b.k), cuda_free(ctx, b.v);
    cuda_free(ctx, b.o_old), cuda_free(ctx, b.o_new);
    free(h16), free(fo), free(fn);
    return worst_diff <= 3e-2 ? 0 : 1;
}

#endif // SDC_HAVE_CUDA

int main(int argc, char **argv) {
    double budget = argc > 1 ? atof(argv[1]) : 0.15;
    if (budget <= 0) budget = 0.15;
    // the "old" column is cuda_attention's default kernel: no SDC_CUDA_ATTN
    // override (it is read once, at the first call)
    unsetenv("SDC_CUDA_ATTN");
    SdcError err = {0};
    Backend *be = NULL;
    if (!backend_cuda_available() || backend_cuda_create(&be, 0, DT_BF16, &err) != SDC_OK) {
        printf("SKIPPED: no CUDA device (%s)\n",
               backend_cuda_available() ? err.msg : "sdc was built without CUDA");
        return 0;
    }
    int rc = 0;
#ifdef SDC_HAVE_CUDA
    char dev[320];
    CudaCtx *ctx = (CudaCtx *)be->impl; // be->impl is the kernels' CudaCtx
    cuda_ctx_describe(ctx, dev, sizeof dev);
    printf("device: %s\n", dev);
    rc = bench(ctx, budget);
#else
    (void)budget;
#endif
    backend_destroy(be);
    return rc;
}
