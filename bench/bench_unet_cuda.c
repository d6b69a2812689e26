// bench_unet_cuda.c: one SD 1.5 UNet pass on the CUDA backend in BF16 against
// diffusers on the same GPU, in the same invocation.
//
// Shape: latent 64x64 (512x512 images), context (B, 77, 768), t = 999, for
// batches 1, 2 and 8. Weights: random, SD 1.5 shapes, bf16, written as a
// diffusers folder by the PyTorch peer (bench/unet_cuda_torch.py, which runs
// first, then times diffusers' UNet2DConditionModel on the same weights:
// bf16, SDPA attention, no_grad). Per batch: 2 warm-up passes, then the
// median of `repeat` passes, each ended by be->sync. Prints s/pass, TFLOP/s
// (0.803 TFLOP per batch-1 pass; also our own count from unet_block_flops),
// device memory (sdc: parameters + planned activations + conv workspace;
// torch: max_memory_allocated), and torch/sdc (> 1: sdc faster). For the
// largest batch also one pass block by block with a sync after each block,
// summed per block kind (where the time goes).
//
//   bench_unet_cuda [model dir, default $SDC_BENCH_SD15_DIR or /tmp/sdc-sd15-random]
//                   [repeat, default 10]
//
// Without a GPU it prints "SKIPPED: no CUDA device (...)" and exits 0.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/unet.h"
#ifdef SDC_HAVE_CUDA
#include "cuda/ops_cuda.h"
#endif

#define MAX_B 3
static const int BATCHES[MAX_B] = {1, 2, 8};
#define SD15_TFLOP 0.803 // per batch-1 pass at 64x64, 77 tokens

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct Peer {
    double s[MAX_B], mib[MAX_B]; // 0 when the peer gave no figure
} Peer;

// Runs the PyTorch peer (which also writes the model folder when absent)
// and parses its "torch_unet batch=B s_per_pass=S peak_mib=M" lines.
static int run_peer(const char *dir, int repeat, Peer *p) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "python3 bench/unet_cuda_torch.py --out '%s' --batches 1,2,8 --repeat %d",
             dir, repeat);
    printf("peer: %s\n", cmd);
    fflush(stdout);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        int b;
        double s, m;
        if (sscanf(line, "torch_unet batch=%d s_per_pass=%lf peak_mib=%lf", &b, &s, &m) == 3) {
            for (int i = 0; i < MAX_B; i++)
                if (BATCHES[i] == b) p->s[i] = s, p->mib[i] = m;
        }
        fputs(line, stdout);
    }
    return pclose(f);
}

int main(int argc, char **argv) {
    SdcError err = {0};
    Backend *be = NULL;
    if (!backend_cuda_available() || backend_cuda_create(&be, 0, DT_BF16, &err) != SDC_OK) {
        printf("SKIPPED: no CUDA device (%s)\n",
               backend_cuda_available() ? err.msg : "sdc was built without CUDA");
        return 0;
    }
    const char *env = getenv("SDC_BENCH_SD15_DIR");
    const char *dir = argc > 1 ? argv[1] : env && env[0] ? env : "/tmp/sdc-sd15-random";
    int repeat = argc > 2 ? atoi(argv[2]) : 10;
    if (repeat < 1) repeat = 1;
    char dev[256] = "?";
#ifdef SDC_HAVE_CUDA
    cuda_ctx_describe((const CudaCtx *)be->impl, dev, sizeof dev);
#endif
    printf("bench_unet_cuda: SD 1.5 UNet, bf16, latent 64x64, context 77x768, on %s\n", dev);

    Peer peer = {0};
    int prc = run_peer(dir, repeat, &peer);
    if (prc != 0) printf("peer: exit status %d (no torch/diffusers?); sdc figures only\n", prc);

    ModelFiles *mf = NULL;
    Unet *m = NULL;
    double t0 = now();
    if (model_files_open(&mf, dir, NULL, -1, &err) || unet_load(&m, mf, be, &err)) {
        fprintf(stderr, "bench_unet_cuda: %s\n---> the peer writes the model: python3 "
                        "bench/unet_cuda_torch.py --out %s --no-bench\n", err.msg, dir);
        return 1;
    }
    be->sync(be);
    printf("sdc: loaded %.2f GiB of bf16 parameters in %.1f s\n", unet_param_bytes(m) / 1073741824.0,
           now() - t0);

    const int H = 64, L = 77, D = 768, C = 4;
    double sdc_s[MAX_B] = {0};
    double sdc_mib[MAX_B] = {0};
    for (int bi = 0; bi < MAX_B; bi++) {
        int B = BATCHES[bi];
        if (unet_reserve(m, B, H, H, L, &err)) {
            fprintf(stderr, "bench_unet_cuda: reserve batch %d: %s\n", B, err.msg);
            return 1;
        }
        int64_t nx = (int64_t)B * C * H * H, nc = (int64_t)B * L * D;
        Tensor x = tensor_make(DT_BF16, DEV_CUDA, NULL, 4, (int64_t[]){B, C, H, H});  // (B, 4, 64, 64)
        Tensor ctx = tensor_make(DT_BF16, DEV_CUDA, NULL, 3, (int64_t[]){B, L, D});   // (B, 77, 768)
        Tensor out = tensor_make(DT_BF16, DEV_CUDA, NULL, 4, (int64_t[]){B, C, H, H});
        x.data = be->alloc(be, tensor_bytes(&x));
        ctx.data = be->alloc(be, tensor_bytes(&ctx));
        out.data = be->alloc(be, tensor_bytes(&out));
        if (!x.data || !ctx.data || !out.data) {
            fprintf(stderr, "bench_unet_cuda: out of GPU memory for the inputs\n");
            return 1;
        }
        float *h = malloc((size_t)(nx > nc ? nx : nc) * sizeof *h);
        for (int64_t i = 0; i < nx; i++) h[i] = (float)((i * 2654435761u) % 2001) / 1000.f - 1.f;
        backend_upload_f32(be, &x, h, (size_t)nx);
        for (int64_t i = 0; i < nc; i++) h[i] = (float)((i * 40503u) % 2001) / 1000.f - 1.f;
        backend_upload_f32(be, &ctx, h, (size_t)nc);
        float ts[8];
        for (int i = 0; i < B; i++) ts[i] = 999.f;
        double *times = malloc((size_t)repeat * sizeof *times);
        int ok = 1;
        for (int it = -2; it < repeat && ok; it++) {
            double a = now();
            ok = unet_forward(m, &out, &x, ts, &ctx, &err) == 0;
            be->sync(be);
            if (it >= 0) times[it] = now() - a;
        }
        if (!ok) {
            fprintf(stderr, "bench_unet_cuda: forward batch %d: %s\n", B, err.msg);
            return 1;
        }
        // the output must be finite (random weights, bf16)
        backend_download_f32(be, h, &out, (size_t)nx);
        int finite = 1;
        for (int64_t i = 0; i < nx; i++) finite &= h[i] == h[i] && h[i] - h[i] == 0.f;
        if (!finite) printf("sdc: WARNING: non-finite UNet output at batch %d\n", B);
        if (bi == MAX_B - 1) { // where the time goes: one pass block by block, synced per block
            double kind_ms[UNET_BLOCK_OUT + 1] = {0};
            UnetState st;
            ok = unet_begin(m, &st, &out, &x, ts, &ctx, &err) == 0;
            be->sync(be);
            for (int i = 0; ok && i < unet_block_count(m); i++) {
                double a = now();
                ok = unet_block_forward(m, i, &st, &err) == 0;
                be->sync(be);
                kind_ms[unet_block_info(m, i)->kind] += (now() - a) * 1e3;
            }
            if (!ok) fprintf(stderr, "bench_unet_cuda: block-by-block pass: %s\n", err.msg);
            printf("sdc: batch %d by block kind (synced per block), ms:", B);
            for (int k = 0; k <= UNET_BLOCK_OUT; k++)
                printf(" %s %.2f", unet_block_kind_name((UnetBlockKind)k), kind_ms[k]);
            printf("\n");
        }
        qsort(times, (size_t)repeat, sizeof *times, cmp_double);
        sdc_s[bi] = times[repeat / 2];
        double flops = 0;
        for (int i = 0; i < unet_block_count(m); i++) flops += unet_block_flops(m, i, B, H, H, L);
        size_t ws = 0;
#ifdef SDC_HAVE_CUDA
        ws = cuda_conv2d_workspace_bytes(CDT_BF16, B, 320, 64, 64, 320, 3, 3, 1, 1);
        if (ws > ((size_t)256 << 20)) ws = (size_t)256 << 20;
#endif
        sdc_mib[bi] = (unet_param_bytes(m) + unet_activation_bytes(m) + ws + 3 * tensor_bytes(&x)) /
                      1048576.0;
        printf("sdc: batch %d: %.2f ms/pass (min %.2f), %.1f TFLOP/s (0.803 TFLOP/img; own count "
               "%.3f TFLOP), memory %.0f MiB\n",
               B, sdc_s[bi] * 1e3, times[0] * 1e3, SD15_TFLOP * B / sdc_s[bi],
               flops * 1e-12, sdc_mib[bi]);
        free(times);
        free(h);
        be->free(be, x.data), be->free(be, ctx.data), be->free(be, out.data);
    }

    printf("\n%-6s %12s %10s %10s %12s %10s %10s %8s\n", "batch", "sdc ms/pass", "sdc TF/s", "sdc MiB",
           "torch ms", "torch TF/s", "torch MiB", "torch/sdc");
    char summary[256] = "";
    for (int bi = 0; bi < MAX_B; bi++) {
        int B = BATCHES[bi];
        double ps = peer.s[bi];
        printf("%-6d %12.2f %10.1f %10.0f %12.2f %10.1f %10.0f %8.2f\n", B, sdc_s[bi] * 1e3,
               SD15_TFLOP * B / sdc_s[bi], sdc_mib[bi], ps * 1e3, ps > 0 ? SD15_TFLOP * B / ps : 0.0,
               peer.mib[bi], ps > 0 ? ps / sdc_s[bi] : 0.0);
        size_t n = strlen(summary);
        snprintf(summary + n, sizeof summary - n, "%sb%d %.1fms x%.2f", bi ? ", " : "", B,
                 sdc_s[bi] * 1e3, ps > 0 ? ps / sdc_s[bi] : 0.0);
    }
    printf("summary: sdc bf16 UNet vs torch (torch/sdc): %s\n", summary);
    unet_free(m);
    model_files_close(mf);
    backend_destroy(be);
    return 0;
}
