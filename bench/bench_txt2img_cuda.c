// bench_txt2img_cuda.c: whole text-to-image generations (sd_generate) on the
// CUDA backend in BF16 against diffusers' StableDiffusionPipeline on the same
// GPU, in the same invocation.
//
// Request: SD 1.5 shapes, 512x512, DPM++ 2M (dpm++2m), guidance 7.5, the
// same given prompt embeddings (2, 77, 768) for every item (text encoding is
// not timed on either side), `steps` steps, batch B = 1, 8, 32 items per
// call (UNet batch 2B). Weights: random, SD 1.5 shapes, bf16 on disk, the
// diffusers folder the PyTorch peer (bench/txt2img_cuda_torch.py, which runs
// first) writes when absent; bench_unet_cuda uses the same folder.
//
// Per batch, one call after a 2-step warm-up at batch 1:
// - s/step: median interval between progress callbacks (each step ends with
//   the UNet output downloaded, so the interval is the step's full time);
// - img/s: B / the whole call (latents, denoising, VAE decode of every item,
//   images on the host);
// - MiB: device memory in use (cudaMemGetInfo, plain cudaMalloc), largest
//   over the call's steps and end, less what was in use before the model
//   was loaded: parameters, activations, workspaces; torch: its
//   max_memory_allocated (weights included, allocator cache excluded);
// - MFU: 0.803 TFLOP per UNet pass per image at 64x64 (77 tokens), 2B rows
//   per step, per s/step, over the card's bf16 GEMM rate (SDC_BENCH_PEAK_TFLOPS,
//   default 645: cuBLAS's best in bench_ops_cuda on the H100 of the
//   2026-11-25 run, docs/gpu.md). UNet only: the VAE decode is not counted.
// - torch/sdc: the ratio of whole-call times (> 1: sdc faster).
// If the BF16 generation fails, the error is printed and the run falls back
// to an F32 backend for batches up to 8 (labelled as such), so that a run
// still yields end-to-end figures.
//
//   bench_txt2img_cuda [model dir, default $SDC_BENCH_SD15_DIR or /tmp/sdc-sd15-random]
//   env: SDC_BENCH_STEPS (default 20), SDC_BENCH_BATCHES (default 1,8,32),
//        SDC_BENCH_PEAK_TFLOPS (default 645)
//
// Without a GPU it prints "SKIPPED: no CUDA device (...)" and exits 0.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend.h"
#include "pipeline/sd.h"
#ifdef SDC_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cuda/ops_cuda.h"
#endif

#define MAX_B 8
#define SD15_TFLOP 0.803 // per UNet pass per image at 64x64, 77 tokens
#define SIZE 512

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Device memory in use, bytes (0 without CUDA).
static double mem_used(void) {
#ifdef SDC_HAVE_CUDA
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) return (double)(total_b - free_b);
#endif
    return 0;
}

// What the progress callback records during one call.
typedef struct Probe {
    double *ends; // (steps) time of each step's end
    int n, cap;
    double peak; // largest mem_used seen
} Probe;

static void on_step(void *user, int step, int total) {
    Probe *p = user;
    if (p->n < p->cap) p->ends[p->n++] = now();
    double u = mem_used();
    if (u > p->peak) p->peak = u;
}

typedef struct Figures {
    double s_step, s_total, mib; // 0 when not run
} Figures;

typedef struct Peer {
    Figures f[MAX_B];
} Peer;

static int parse_batches(const char *s, int *out) {
    int n = 0;
    while (s && *s && n < MAX_B) {
        int b = atoi(s);
        if (b > 0) out[n++] = b;
        s = strchr(s, ',');
        if (s) s++;
    }
    return n;
}

// Runs the PyTorch peer (which also writes the model folder when absent) and
// parses its "torch_txt2img batch=B s_per_step=S s_total=T peak_mib=M" lines.
static int run_peer(const char *dir, const char *batches, int steps, const int *bs, int nb, Peer *p) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "python3 bench/txt2img_cuda_torch.py --out '%s' --batches %s --steps %d", dir,
             batches, steps);
    printf("peer: %s\n", cmd);
    fflush(stdout);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        int b;
        double s, t, m;
        if (sscanf(line, "torch_txt2img batch=%d s_per_step=%lf s_total=%lf peak_mib=%lf", &b, &s, &t, &m) == 4)
            for (int i = 0; i < nb; i++)
                if (bs[i] == b) p->f[i] = (Figures){s, t, m};
        fputs(line, stdout);
    }
    fflush(stdout);
    return pclose(f);
}

// One sd_generate call of `batch` items; fills fig. 0 on success.
static int run_one(SdModel *m, const float *ctx, int batch, int steps, double base, Figures *fig, SdcError *err) {
    GenParams p = {.mode = GEN_TXT2IMG, .steps = steps, .cfg_scale = 7.5f, .sampler = SAMPLER_DPMPP_2M,
                   .seed = 1, .width = SIZE, .height = SIZE, .batch = batch};
    size_t nimg = (size_t)batch * 3 * SIZE * SIZE;
    float *img = malloc(nimg * sizeof *img); // (B, 3, 512, 512)
    double *ends = malloc((size_t)(steps + 1) * sizeof *ends);
    if (!img || !ends) {
        free(img), free(ends);
        return sdc_err(err, SDC_ERR_OOM, "bench buffers for batch %d", batch);
    }
    Probe pr = {.ends = ends, .cap = steps + 1, .peak = mem_used()};
    double t0 = now();
    int rc = sd_generate(m, &p, ctx, NULL, img, on_step, &pr, err);
    double t1 = now();
    double u = mem_used();
    if (u > pr.peak) pr.peak = u;
    if (!rc) {
        int finite = 1;
        for (size_t i = 0; i < nimg; i++) finite &= img[i] == img[i] && img[i] - img[i] == 0.f;
        if (!finite) printf("sdc: WARNING: non-finite pixels at batch %d\n", batch);
        // intervals between step ends; the first step (plans, grows the arenas) is left out
        int ng = pr.n - 1;
        for (int i = 0; i < ng; i++) ends[i] = ends[i + 1] - ends[i];
        if (ng > 0) qsort(ends, (size_t)ng, sizeof *ends, cmp_double);
        fig->s_step = ng > 0 ? ends[ng / 2] : (t1 - t0) / steps;
        fig->s_total = t1 - t0;
        fig->mib = (pr.peak - base) / 1048576.0;
    }
    free(img), free(ends);
    return rc;
}

// Loads the model on a new CUDA backend of dtype dt and runs the warm-up.
static int setup(Backend **be, SdModel *m, DType dt, const char *dir, const float *ctx, double *base,
                 SdcError *err) {
    SDC_TRY(backend_cuda_create(be, 0, dt, err));
    *base = mem_used();
    double t0 = now();
    int rc = sd_model_load(m, dir, NULL, -1, *be, err);
    if (rc) {
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, "\n---> the peer writes the model: python3 "
                 "bench/txt2img_cuda_torch.py --out %s --batches 1 --steps 2", dir);
        backend_destroy(*be), *be = NULL;
        return rc;
    }
    (*be)->sync(*be);
    printf("sdc [%s]: loaded the model in %.1f s, %.0f MiB on the device\n", dtype_name(dt), now() - t0,
           (mem_used() - *base) / 1048576.0);
    Figures w;
    rc = run_one(m, ctx, 1, 2, *base, &w, err);
    if (rc) {
        sd_model_free(m);
        backend_destroy(*be), *be = NULL;
    }
    return rc;
}

int main(int argc, char **argv) {
    SdcError err = {0};
    Backend *be = NULL;
    if (!backend_cuda_available() || backend_cuda_create(&be, 0, DT_BF16, &err) != SDC_OK) {
        printf("SKIPPED: no CUDA device (%s)\n", backend_cuda_available() ? err.msg : "sdc was built without CUDA");
        return 0;
    }
    char dev[256] = "?";
#ifdef SDC_HAVE_CUDA
    cuda_ctx_describe((const CudaCtx *)be->impl, dev, sizeof dev);
#endif
    backend_destroy(be), be = NULL;
    const char *env = getenv("SDC_BENCH_SD15_DIR");
    const char *dir = argc > 1 ? argv[1] : env && env[0] ? env : "/tmp/sdc-sd15-random";
    const char *es = getenv("SDC_BENCH_STEPS"), *eb = getenv("SDC_BENCH_BATCHES");
    const char *ep = getenv("SDC_BENCH_PEAK_TFLOPS");
    const int steps = es && atoi(es) > 1 ? atoi(es) : 20;
    const char *batches = eb && eb[0] ? eb : "1,8,32";
    const double peak_tflops = ep && atof(ep) > 0 ? atof(ep) : 645.0;
    int bs[MAX_B];
    int nb = parse_batches(batches, bs);
    printf("bench_txt2img_cuda: SD 1.5 txt2img %dx%d, %d steps dpm++2m, guidance 7.5, batches %s, on %s\n", SIZE,
           SIZE, steps, batches, dev);

    Peer peer = {0};
    int prc = run_peer(dir, batches, steps, bs, nb, &peer);
    if (prc != 0) printf("peer: exit status %d (no torch/diffusers?); sdc figures only\n", prc);

    // the same given embeddings for every item: (2, 77, 768), [negative, prompt]
    const int L = 77, D = 768;
    float *ctx = malloc((size_t)2 * L * D * sizeof *ctx);
    for (int i = 0; i < 2 * L * D; i++) ctx[i] = (float)((i * 2654435761u) % 2001) / 1000.f - 1.f;

    SdModel m;
    DType dt = DT_BF16;
    double base = 0;
    int rc = setup(&be, &m, dt, dir, ctx, &base, &err);
    if (rc) {
        printf("sdc: BF16 generation failed: %s\n---> falling back to F32 for batches up to 8\n", err.msg);
        dt = DT_F32;
        int k = 0; // keep batches up to 8, and the peer's figures with them
        for (int i = 0; i < nb; i++)
            if (bs[i] <= 8) bs[k] = bs[i], peer.f[k++] = peer.f[i];
        nb = k;
        rc = setup(&be, &m, dt, dir, ctx, &base, &err);
        if (rc) {
            fprintf(stderr, "bench_txt2img_cuda: %s\n", err.msg);
            free(ctx);
            return 1;
        }
    }

    Figures sdc[MAX_B] = {0};
    for (int i = 0; i < nb; i++) {
        if (run_one(&m, ctx, bs[i], steps, base, &sdc[i], &err)) {
            printf("sdc [%s]: batch %d failed: %s\n", dtype_name(dt), bs[i], err.msg);
            continue;
        }
        printf("sdc [%s]: batch %d: %.4f s/step, %.2f s per call, %.2f img/s, %.0f MiB\n", dtype_name(dt), bs[i],
               sdc[i].s_step, sdc[i].s_total, bs[i] / sdc[i].s_total, sdc[i].mib);
    }

    printf("\nsdc %s vs diffusers bf16, %d steps, %dx%d, on %s; MFU against %.0f TFLOP/s\n", dtype_name(dt), steps, SIZE, SIZE,
           dev, peak_tflops);
    printf("%-6s %10s %9s %8s %7s %10s %9s %9s %7s %9s\n", "batch", "sdc s/step", "sdc img/s", "sdc MiB", "sdc MFU",
           "torch s/st", "torch i/s", "torch MiB", "t MFU", "torch/sdc");
    char summary[400] = "";
    for (int i = 0; i < nb; i++) {
        const Figures *s = &sdc[i], *t = &peer.f[i];
        double rows_tf = SD15_TFLOP * 2 * bs[i];
        double mfu = s->s_step > 0 ? rows_tf / s->s_step / peak_tflops : 0;
        double tmfu = t->s_step > 0 ? rows_tf / t->s_step / peak_tflops : 0;
        double ratio = s->s_total > 0 && t->s_total > 0 ? t->s_total / s->s_total : 0;
        printf("%-6d %10.4f %9.2f %8.0f %6.1f%% %10.4f %9.2f %9.0f %6.1f%% %9.2f\n", bs[i], s->s_step,
               s->s_total > 0 ? bs[i] / s->s_total : 0, s->mib, 100 * mfu, t->s_step,
               t->s_total > 0 ? bs[i] / t->s_total : 0, t->mib, 100 * tmfu, ratio);
        size_t n = strlen(summary);
        snprintf(summary + n, sizeof summary - n, "%sb%d %.3fs/step %.2fimg/s x%.2f", i ? ", " : "", bs[i],
                 s->s_step, s->s_total > 0 ? bs[i] / s->s_total : 0, ratio);
    }
    printf("summary: sdc %s txt2img vs diffusers (torch/sdc): %s\n", dtype_name(dt), summary);
    sd_model_free(&m);
    backend_destroy(be);
    free(ctx);
    return 0;
}
