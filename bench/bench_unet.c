// bench_unet.c: seconds per UNet pass on the CPU backend.
//
//   bench_unet MODEL [--config DIR] [--threads N] [--repeat R] [--latent 64] [--batch 1]
//                    [--blocks] [--warmup-latent L] [--precision fp32|bf16]
//
// MODEL is a single .safetensors file or a diffusers folder (e.g. the
// full-size random SD 1.5 from `python3 tools/make_fixtures.py --full-sd15
// /tmp/sd15.safetensors`). One warm-up pass, then the median of R passes at
// a (batch, Cin, latent, latent) input with a (batch, 77, cross_dim) context.
// Prints `sdc_unet_s_per_pass=<float> peak_rss_mb=<float>`, the planned
// activation and parameter bytes, and GFLOP/s; --blocks adds the time of
// each block (one block-by-block pass) next to its FLOP estimate.
// SDXL (an added text_time embedding): the pooled text embedding is random
// like the inputs, the six time ids (latent*8, latent*8, 0, 0, latent*8,
// latent*8). --warmup-latent L: the warm-up pass at latent L instead (a
// 1024 px SDXL pass is minutes on a small CPU; --repeat 1 then times one).
// --precision bf16: the CPU's bf16 variant (backend_cpu_create_bf16); the
// CPU model and what computed the bf16 ops (oneDNN's implementation names,
// or sdc's emulation) are printed with the result.
// PyTorch's figure for the same shape comes from bench/unet_torch.py.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/arena.h"
#include "core/backend.h"
#include "io/weights.h"
#include "models/unet.h"

static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; // ru_maxrss is in KiB on Linux
}

static void usage(void) {
    fprintf(stderr, "usage: bench_unet MODEL [--config DIR] [--threads N] [--repeat R] "
                    "[--latent 64] [--batch 1] [--blocks] [--warmup-latent L] [--precision fp32|bf16]\n");
}

int main(int argc, char **argv) {
    const char *model = NULL, *config = NULL;
    int threads = 0, repeat = 3, latent = 64, batch = 1, per_block = 0, ctx_len = 77, warm_latent = 0, bf16 = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--threads") && has) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--repeat") && has) repeat = atoi(argv[++i]);
        else if (!strcmp(a, "--latent") && has) latent = atoi(argv[++i]);
        else if (!strcmp(a, "--batch") && has) batch = atoi(argv[++i]);
        else if (!strcmp(a, "--config") && has) config = argv[++i];
        else if (!strcmp(a, "--warmup-latent") && has) warm_latent = atoi(argv[++i]);
        else if (!strcmp(a, "--blocks")) per_block = 1;
        else if (!strcmp(a, "--precision") && has && (!strcmp(argv[i + 1], "fp32") || !strcmp(argv[i + 1], "bf16")))
            bf16 = !strcmp(argv[++i], "bf16");
        else if (a[0] != '-' && !model) model = a;
        else {
            usage();
            return 2;
        }
    }
    if (!model || repeat < 1 || latent < 8 || batch < 1) {
        usage();
        return 2;
    }

    SdcError err = {0};
    Backend *be = NULL;
    ModelFiles *mf = NULL;
    Unet *m = NULL;
    Arena io = {0};
    double *times = NULL;
    float *ts = NULL, *tids = NULL;
    int rc = 1;
    if (bf16 ? backend_cpu_create_bf16(&be, threads, &err) : backend_cpu_create(&be, threads, &err)) goto fail;
    FILE *ci = fopen("/proc/cpuinfo", "r"); // the CPU the figure belongs to
    char line[512], cpu[256] = "unknown CPU";
    while (ci && fgets(line, sizeof line, ci))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
            cpu[strcspn(cpu, "\n")] = 0;
            break;
        }
    if (ci) fclose(ci);
    printf("cpu: %s; precision %s\n", cpu, bf16 ? "bf16" : "fp32");
    double t0 = now_sec();
    if (model_files_open(&mf, model, config, -1, &err)) goto fail;
    if (unet_load(&m, mf, be, &err)) goto fail;
    const UnetConfig *c = unet_config(m);
    printf("loaded %s in %.2f s: %zu parameters, threads %d\n", model, now_sec() - t0,
           unet_param_count(m), be->threads);
    if (unet_reserve(m, batch, latent, latent, ctx_len, &err)) goto fail;
    unet_print_plan(m, stdout);

    // inputs: deterministic values in [-1, 1)
    int64_t nx = (int64_t)batch * c->in_channels * latent * latent;
    int64_t nctx = (int64_t)batch * ctx_len * c->cross_dim;
    int64_t nout = (int64_t)batch * c->out_channels * latent * latent;
    int n_tid = unet_n_time_ids(m);
    int64_t ntext = n_tid > 0 ? (int64_t)batch * (c->add_in_dim - n_tid * c->add_time_dim) : 0;
    size_t io_bytes = (size_t)(nx + nctx + nout + ntext) * dtype_size(be->act_dtype) + 8 * ARENA_ALIGN;
    if (arena_init(&io, be, io_bytes, &err)) goto fail;
    Tensor x = arena_tensor(&io, be->act_dtype, 4, (int64_t[]){batch, c->in_channels, latent, latent});
    Tensor ctx = arena_tensor(&io, be->act_dtype, 3, (int64_t[]){batch, ctx_len, c->cross_dim});
    Tensor out = arena_tensor(&io, be->act_dtype, 4, (int64_t[]){batch, c->out_channels, latent, latent});
    float *host = malloc((size_t)(nx > nctx ? nx : nctx) * sizeof *host);
    ts = malloc((size_t)batch * sizeof *ts);
    uint64_t s = 12345;
    for (int64_t i = 0; i < (nx > nctx ? nx : nctx); i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        host[i] = (float)((s >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
    }
    for (int i = 0; i < batch; i++) ts[i] = 999.0f - 100.0f * (float)i;
    backend_upload_f32(be, &x, host, (size_t)nx);
    backend_upload_f32(be, &ctx, host, (size_t)nctx);
    if (n_tid > 0) { // SDXL: pooled text embedding and the six (or five) time ids
        Tensor text = arena_tensor(&io, be->act_dtype, 2, (int64_t[]){batch, ntext / batch});
        backend_upload_f32(be, &text, host + 7, (size_t)ntext);
        tids = malloc((size_t)batch * (size_t)n_tid * sizeof *tids);
        for (int i = 0; i < batch * n_tid; i++) {
            int k = i % n_tid;
            tids[i] = (k == 2 || k == 3) ? 0.0f : (float)(latent * 8);
        }
        if (unet_set_added_cond(m, &text, tids, &err)) goto fail;
        printf("added cond: text_embeds (%d, %lld), %d time ids\n", batch, (long long)(ntext / batch), n_tid);
    }
    free(host);

    double flops = 0;
    for (int i = 0; i < unet_block_count(m); i++) flops += unet_block_flops(m, i, batch, latent, latent, ctx_len);

    // the passes hold the parameters as a sampling loop does (sd_run_begin): the bf16 variant keeps its
    // conv2d weights in oneDNN's blocked layout after the first pass at a shape
    backend_hold_params(be, 1);
    if (warm_latent > 0 && warm_latent < latent) { // warm-up at a smaller latent (views of the inputs)
        Tensor wx = x, wo = out;
        wx.shape[2] = wx.shape[3] = warm_latent;
        wo.shape[2] = wo.shape[3] = warm_latent;
        double t1 = now_sec();
        if (unet_forward(m, &wo, &wx, ts, &ctx, &err)) goto fail;
        be->sync(be);
        printf("warm-up pass at latent %d: %.2f s\n", warm_latent, now_sec() - t1);
    } else {
        if (unet_forward(m, &out, &x, ts, &ctx, &err)) goto fail; // warm-up
        be->sync(be);
    }
    times = malloc((size_t)repeat * sizeof *times);
    for (int r = 0; r < repeat; r++) {
        double t1 = now_sec();
        if (unet_forward(m, &out, &x, ts, &ctx, &err)) goto fail;
        be->sync(be);
        times[r] = now_sec() - t1;
    }
    qsort(times, (size_t)repeat, sizeof *times, cmp_double);
    double med = times[repeat / 2];
    printf("unet batch %d latent %dx%d ctx (%d, %d): %.3f GFLOP, %.1f GFLOP/s\n", batch, latent,
           latent, ctx_len, c->cross_dim, flops * 1e-9, flops * 1e-9 / med);
    const double gemm = backend_cpu_bf16_gemm_gflops(be, 2048, 20);
    if (gemm > 0)
        printf("bf16_gemm_gflops=%.1f (oneDNN matmul 2048^3, best of 20) unet_share_of_gemm=%.3f\n", gemm,
               flops * 1e-9 / med / gemm);
    if (backend_held_bytes(be))
        printf("held: %.1f MiB of conv2d weights in oneDNN's blocked layout\n", backend_held_bytes(be) / 1048576.0);

    if (per_block) {
        UnetState st;
        if (unet_begin(m, &st, &out, &x, ts, &ctx, &err)) goto fail;
        printf("%-4s %-30s %-11s %8s %8s %7s %8s %8s\n", "#", "block", "kind", "GFLOP", "ms", "GF/s",
               "out MiB", "tmp MiB");
        for (int i = 0; i < unet_block_count(m); i++) {
            double t1 = now_sec();
            if (unet_block_forward(m, i, &st, &err)) goto fail;
            be->sync(be);
            double dt = now_sec() - t1, f = unet_block_flops(m, i, batch, latent, latent, ctx_len);
            const UnetBlockInfo *bi = unet_block_info(m, i);
            printf("%-4d %-30s %-11s %8.2f %8.1f %7.1f %8.2f %8.2f\n", i, bi->name,
                   unet_block_kind_name(bi->kind), f * 1e-9, dt * 1e3, f * 1e-9 / dt,
                   bi->out_bytes / 1048576.0, bi->scratch_bytes / 1048576.0);
        }
    }
    printf("sdc_unet_s_per_pass=%.4f peak_rss_mb=%.1f\n", med, peak_rss_mb());
    char info[768];
    backend_cpu_bf16_info(be, info, sizeof info);
    if (info[0]) printf("bf16 ops: %s\n", info);
    printf("activation_bytes=%zu param_bytes=%zu\n", unet_activation_bytes(m), unet_param_bytes(m));
    rc = 0;
fail:
    free(times);
    free(ts);
    free(tids);
    if (rc) fprintf(stderr, "bench_unet: %s\n", err.msg);
    arena_free(&io);
    unet_free(m);
    if (mf) model_files_close(mf);
    if (be) backend_destroy(be);
    return rc;
}
